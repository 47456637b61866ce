//! Faulty targets (issue 15, point 1): one that never answers, one whose answer never ends or
//! is huge, one that resets connections mid-answer. Small raw-TCP fakes on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// What a fake does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    /// Reads it and never answers (the connection stays open).
    Hang,
    /// 500 with a chunked body that never ends (written as fast as it is read).
    EndlessFast,
    /// 200 with a body that trickles forever.
    EndlessSlow,
    /// 200 declaring (and sending) a 100 MB body.
    Huge,
    /// Writes half an answer, then resets the connection.
    ResetMidAnswer,
    /// Resets the connection before answering anything.
    ResetAtOnce,
    /// A plain 200.
    Ok,
}

/// One request a fake received: its path and `Idempotency-Key`.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    key: String,
}

/// A raw HTTP/1.1 target whose answers `plan` picks (by request and how many came before with
/// the same key).
#[derive(Clone)]
struct Fake {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    /// Body bytes written in all.
    written: Arc<AtomicU64>,
}

type Plan = Arc<dyn Fn(&Got, usize) -> Act + Send + Sync>;

impl Fake {
    async fn start(plan: impl Fn(&Got, usize) -> Act + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Fake {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            open: Arc::default(),
            written: Arc::default(),
        };
        let plan: Plan = Arc::new(plan);
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (f, plan) = (f.clone(), plan.clone());
                tokio::spawn(async move {
                    f.open.fetch_add(1, SeqCst);
                    f.serve(s, plan).await;
                    f.open.fetch_sub(1, SeqCst);
                });
            }
        });
        fake
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Serves one connection (keep-alive) until it closes.
    async fn serve(&self, mut s: TcpStream, plan: Plan) {
        let mut buf = Vec::new();
        loop {
            let Some(got) = read_request(&mut s, &mut buf).await else {
                return;
            };
            let before = {
                let mut all = self.got.lock().unwrap();
                let n = all.iter().filter(|g| g.key == got.key).count();
                all.push(got.clone());
                n
            };
            let act = plan(&got, before);
            let chunk = vec![b'x'; 64 << 10];
            match act {
                Act::Ok => {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                        .await;
                }
                Act::Hang => {
                    // Hold the connection until the client gives up.
                    let mut sink = [0u8; 1024];
                    while let Ok(n) = s.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                    return;
                }
                Act::EndlessFast => {
                    let _ = s
                        .write_all(b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await;
                    let first = b"FIRST-BYTES-OF-AN-ENDLESS-ANSWER ";
                    let _ = s
                        .write_all(format!("{:x}\r\n", first.len()).as_bytes())
                        .await;
                    let _ = s.write_all(first).await;
                    let _ = s.write_all(b"\r\n").await;
                    loop {
                        let head = format!("{:x}\r\n", chunk.len());
                        if s.write_all(head.as_bytes()).await.is_err()
                            || s.write_all(&chunk).await.is_err()
                            || s.write_all(b"\r\n").await.is_err()
                        {
                            return;
                        }
                        self.written.fetch_add(chunk.len() as u64, SeqCst);
                    }
                }
                Act::EndlessSlow => {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await;
                    loop {
                        if s.write_all(b"1\r\nx\r\n").await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await; // the trickle
                    }
                }
                Act::Huge => {
                    let total: u64 = 100 << 20;
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                    let mut sent = 0;
                    while sent < total {
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                        sent += chunk.len() as u64;
                        self.written.fetch_add(chunk.len() as u64, SeqCst);
                    }
                }
                Act::ResetMidAnswer => {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half\":")
                        .await;
                    let _ = s.flush().await;
                    reset(s);
                    return;
                }
                Act::ResetAtOnce => {
                    reset(s);
                    return;
                }
            }
        }
    }
}

/// Closes `s` with a TCP reset (SO_LINGER 0).
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// Reads one request (head and `Content-Length` body); `None` when the connection closed.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Got> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap_or(0);
    while buf.len() < head_end + len {
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let got = Got {
        path,
        key: header("idempotency-key"),
    };
    buf.drain(..head_end + len);
    Some(got)
}

/// Runtime config turning the circuit breaker of `url`'s endpoint off (these tests look at
/// each failed attempt, not at the endpoint pausing after 20 failures in a row).
fn no_breaker(url: &str) -> String {
    format!("endpoints:\n  \"{url}\":\n    breaker: {{ failures: 0 }}\n")
}

/// A connector `id` on `topic` calling `url`, with `extra` lines (timeout, retry).
fn connector(id: &str, topic: &str, url: &str, extra: &str) -> String {
    format!(
        "id: {id}\ntype: outbound\ntrigger:\n  topic: {topic}\nmap:\n  to:\n    url: \"{url}/items/{{id}}\"\n    method: PUT\n    body:\n      id: \"{{{{ id }}}}\"\n{extra}"
    )
}

async fn parked(js: &async_nats::jetstream::Context, connector: &str) -> Vec<serde_json::Value> {
    stream_messages(js, "HMS_SYNC_PARKED")
        .await
        .into_iter()
        .filter(|j| j["connector"] == connector)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_answers_times_out_and_holds_up_no_one_else() {
    init_logs();
    let nats = Nats::start().await;
    let hang = Fake::start(|_, _| Act::Hang).await;
    let fine = Target::start().await;
    let (_setup, rt, js) = start_with(
        &nats,
        &[
            (
                "hang.yaml",
                connector(
                    "fault.hang.v1",
                    "fault.hang",
                    &hang.url(),
                    "timeoutMs: 400\nretry:\n  max: 2\n  backoffMs: 50\n",
                ),
            ),
            (
                "fine.yaml",
                simple_connector("fault.fine.v1", "fault.fine", &fine, ""),
            ),
        ],
        &no_breaker(&hang.url()),
    )
    .await;
    publish_many(
        &js,
        "fault.hang",
        (0..100).map(|i| json!({"id": format!("h{i}")})),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "requests hanging at the silent target",
        || async { hang.open.load(SeqCst) >= 20 },
    )
    .await;
    // Meanwhile the other connector, to another endpoint, delivers as usual.
    let started = Instant::now();
    publish_many(&js, "fault.fine", numbered("f", 0..300)).await;
    eventually(
        Duration::from_secs(30),
        "the other connector delivers",
        || async { fine.count() >= 300 },
    )
    .await;
    let took = started.elapsed();
    // Timeouts fired: the silent target's events are retried, then parked, with the reason.
    eventually(
        Duration::from_secs(60),
        "silent target's events parked",
        || async { parked(&js, "fault.hang.v1").await.len() == 100 },
    )
    .await;
    let jobs = parked(&js, "fault.hang.v1").await;
    assert!(jobs.iter().all(|j| j["error"] == "timeout"), "{}", jobs[0]);
    assert!(
        metric(
            &rt,
            "sync_fail_total{connector=\"fault.hang.v1\",reason=\"timeout\"}"
        )
        .await
            >= 200.0
    );
    // Not a timed assertion on speed: a bound far above a normal run (a few hundred ms),
    // far below what waiting on the silent target would take (100 events x 2 x 400 ms).
    assert!(
        took < Duration::from_secs(15),
        "the other connector took {took:?} for 300 events"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_endless_answers_are_read_in_bounds_and_their_first_bytes_kept() {
    init_logs();
    let nats = Nats::start().await;
    let endless = Fake::start(|_, _| Act::EndlessFast).await;
    let huge = Fake::start(|_, _| Act::Huge).await;
    let slow = Fake::start(|_, _| Act::EndlessSlow).await;
    let retry = "retry:\n  max: 2\n  backoffMs: 50\n";
    let (_setup, rt, js) = start_with(
        &nats,
        &[
            (
                "endless.yaml",
                connector("fault.endless.v1", "fault.endless", &endless.url(), retry),
            ),
            (
                "huge.yaml",
                connector("fault.huge.v1", "fault.huge", &huge.url(), retry),
            ),
            (
                "slow.yaml",
                connector(
                    "fault.slow.v1",
                    "fault.slow",
                    &slow.url(),
                    &format!("timeoutMs: 700\n{retry}"),
                ),
            ),
        ],
        "",
    )
    .await;
    publish(&js, "fault.endless", json!({"id": "e1"})).await;
    publish(&js, "fault.huge", json!({"id": "g1"})).await;
    publish(&js, "fault.slow", json!({"id": "s1"})).await;
    // Endless 500: two attempts, each read up to 1 MiB, then parked with the first bytes.
    eventually(Duration::from_secs(30), "endless answer parked", || async {
        parked(&js, "fault.endless.v1").await.len() == 1
    })
    .await;
    let job = &parked(&js, "fault.endless.v1").await[0];
    assert_eq!(job["error"], "HTTP 500", "{job}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job}");
    for a in attempts {
        let body = a["body"].as_str().unwrap();
        assert!(body.starts_with("FIRST-BYTES-OF-AN-ENDLESS-ANSWER "), "{a}");
        assert!(body.len() <= 2048 + 4, "{} bytes kept", body.len());
    }
    // Huge 200: delivered once, after reading at most 1 MiB of its 100 MB.
    eventually(Duration::from_secs(30), "huge answer delivered", || async {
        metric(&rt, "sync_ok_total{connector=\"fault.huge.v1\"}").await == 1.0
    })
    .await;
    assert_eq!(huge.got().len(), 1);
    assert!(parked(&js, "fault.huge.v1").await.is_empty());
    // Slow endless 200: the timeout covers the body; retried, then parked, first bytes kept.
    eventually(Duration::from_secs(30), "slow answer parked", || async {
        parked(&js, "fault.slow.v1").await.len() == 1
    })
    .await;
    let job = &parked(&js, "fault.slow.v1").await[0];
    let error = job["error"].as_str().unwrap();
    assert_eq!(error, "timeout", "{job}");
    let attempt = &job["attempts"][0];
    assert!(
        attempt["body"].as_str().unwrap().starts_with("xxx"),
        "{job}"
    );
    // What was written: the socket buffers plus at most 1 MiB per attempt, never 100 MB.
    tokio::time::sleep(Duration::from_millis(200)).await; // let the fakes see the closes
    let written = huge.written.load(SeqCst) + endless.written.load(SeqCst);
    assert!(written < 40 << 20, "{written} bytes written to hms-sync");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_mid_answer_are_retried_with_the_same_key() {
    init_logs();
    let nats = Nats::start().await;
    // Per key: reset mid-answer, then reset at once, then 200.
    let fake = Fake::start(|_, before| match before {
        0 => Act::ResetMidAnswer,
        1 => Act::ResetAtOnce,
        _ => Act::Ok,
    })
    .await;
    let (_setup, rt, js) = start_with(
        &nats,
        &[(
            "reset.yaml",
            connector(
                "fault.reset.v1",
                "fault.reset",
                &fake.url(),
                "retry:\n  max: 5\n  backoffMs: 50\n",
            ),
        )],
        &no_breaker(&fake.url()),
    )
    .await;
    publish_many(
        &js,
        "fault.reset",
        (0..20).map(|i| json!({"id": format!("r{i}")})),
    )
    .await;
    eventually(Duration::from_secs(30), "all delivered", || async {
        metric(&rt, "sync_ok_total{connector=\"fault.reset.v1\"}").await == 20.0
    })
    .await;
    wait_idle(&js, "fault_reset_v1", Duration::from_secs(10)).await;
    let mut per_key: HashMap<String, Vec<String>> = HashMap::new();
    for g in fake.got() {
        per_key.entry(g.key).or_default().push(g.path);
    }
    assert_eq!(per_key.len(), 20, "one key per event");
    for (key, paths) in &per_key {
        assert_eq!(paths.len(), 3, "{key}: {paths:?}");
        assert!(paths.iter().all(|p| p == &paths[0]), "{paths:?}");
    }
    assert!(parked(&js, "fault.reset.v1").await.is_empty());
    assert!(
        metric(
            &rt,
            "sync_fail_total{connector=\"fault.reset.v1\",reason=\"connect\"}"
        )
        .await
            >= 40.0
    );
    rt.shutdown().await;
}

/// Review alerts on `hitl.review.requested`, kept as they come.
struct Alerts {
    sub: async_nats::Subscriber,
    seen: Vec<serde_json::Value>,
}

impl Alerts {
    async fn follow(client: &async_nats::Client) -> Alerts {
        Alerts {
            sub: client.subscribe("hitl.review.requested").await.unwrap(),
            seen: Vec::new(),
        }
    }

    /// The first alert of `kind` (seen before or coming within 30 s); taken out of the list.
    async fn of(&mut self, kind: &str) -> serde_json::Value {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) = self.seen.iter().position(|v| v["kind"] == kind) {
                return self.seen.remove(i);
            }
            let m = tokio::time::timeout_at(deadline, self.sub.next())
                .await
                .unwrap_or_else(|_| panic!("no `{kind}` alert within 30 s: {:?}", self.seen))
                .unwrap();
            self.seen
                .push(serde_json::from_slice(&m.payload).unwrap_or_default());
        }
    }
}

async fn acked_up_to(js: &async_nats::jetstream::Context, consumer: &str) -> u64 {
    js.get_stream("HMS_EVENTS")
        .await
        .unwrap()
        .consumer_info(consumer)
        .await
        .unwrap()
        .ack_floor
        .stream_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_parked_stream_keeps_the_event_unacked_and_says_why() {
    use async_nats::jetstream::stream;
    init_logs();
    let nats = Nats::start().await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    // An operator's HMS_SYNC_PARKED that refuses writes beyond 1 kB (discard new).
    js.create_stream(stream::Config {
        name: "HMS_SYNC_PARKED".into(),
        subjects: vec!["sync.parked.>".into(), "sync.resolved.>".into()],
        storage: stream::StorageType::File,
        max_bytes: 1024,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let target = Target::start().await;
    target.respond(|_, _| (400, vec![]));
    let mut alerts = Alerts::follow(&client).await;
    let (_setup, rt, _) =
        start_simple(&nats, &target, "full.parked.v1", "full.parked", "", "").await;
    let pad = "p".repeat(2000);
    publish_many(
        &js,
        "full.parked",
        (0..3).map(|i| json!({"id": format!("e{i}"), "n": i, "pad": pad})),
    )
    .await;
    let alert = alerts.of("sync.park_failed").await;
    assert_eq!(alert["reason"], "limit_reached", "{alert}");
    assert_eq!(alert["connector"], "full.parked.v1");
    assert!(
        metric(
            &rt,
            "sync_park_failures_total{connector=\"full.parked.v1\",reason=\"limit_reached\"}"
        )
        .await
            >= 1.0
    );
    // Offered again (after 5 s, then 10 s, ...), never acked, never dropped; parked again
    // without calling the target again.
    eventually(Duration::from_secs(20), "offered again", || async {
        js.get_stream("HMS_EVENTS")
            .await
            .unwrap()
            .consumer_info("full_parked_v1")
            .await
            .is_ok_and(|i| i.delivered.consumer_sequence >= 6)
    })
    .await;
    assert_eq!(target.count(), 3, "no new call while only parking fails");
    assert_eq!(acked_up_to(&js, "full_parked_v1").await, 0, "nothing acked");
    assert_eq!(
        metric(&rt, "sync_parked_total{connector=\"full.parked.v1\"}").await,
        0.0
    );
    // The operator lifts the limit: the events are parked, then acked.
    let mut parked = js.get_stream("HMS_SYNC_PARKED").await.unwrap();
    let mut config = parked.info().await.unwrap().config.clone();
    config.max_bytes = -1;
    js.update_stream(config).await.unwrap();
    wait_idle(&js, "full_parked_v1", Duration::from_secs(40)).await;
    assert_eq!(target.count(), 3);
    let jobs = parked.info().await.unwrap().state.messages;
    assert_eq!(jobs, 3, "each event parked once");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_jetstream_storage_holds_new_work_back_and_loses_nothing() {
    use async_nats::jetstream::stream;
    init_logs();
    let mut nats_server = hms_sync::nats_server::NatsServer::builder()
        .bin(nats_server_bin())
        .config_text("jetstream {\n  max_file_store: 8MB\n}\n")
        .start()
        .await
        .expect("nats-server");
    let url = nats_server.url().to_string();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let target = Target::start().await;
    target.respond(|r, _| {
        if r.path.contains("/bad") {
            (400, vec![])
        } else {
            (200, vec![])
        }
    });
    target.set_delay(Duration::from_millis(1500));
    let setup = Setup::at(
        &url,
        &[
            (
                "c.yaml",
                simple_connector("full.store.v1", "full.store", &target, ""),
            ),
            ("hook.yaml", crate::hostile::WEBHOOK.to_string()),
        ],
        "",
    );
    std::env::set_var("HMS_IT_HOSTILE_HOOK", crate::hostile::HOOK_SECRET);
    let rt = setup.start().await;
    let mut alerts = Alerts::follow(&client).await;
    // Three events in flight, two to be parked.
    publish_many(
        &js,
        "full.store",
        ["bad1", "bad2", "ok1"].map(|id| json!({"id": id, "n": 1})),
    )
    .await;
    eventually(Duration::from_secs(10), "in flight", || async {
        target.count() + rt.status().await[0].in_process as usize >= 3
    })
    .await;
    // Meanwhile something else fills JetStream's storage.
    js.create_stream(stream::Config {
        name: "FILLER".into(),
        subjects: vec!["filler".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let chunk = bytes::Bytes::from(vec![b'f'; 64 << 10]);
    let mut full = false;
    for _ in 0..400 {
        match js.publish("filler", chunk.clone()).await {
            Ok(ack) => {
                if ack.await.is_err() {
                    full = true;
                    break;
                }
            }
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "JetStream's storage never filled up");
    // Parking fails, the audit trail refuses records: said, counted, new work held back.
    let blocked = alerts.of("audit.blocked").await;
    assert!(
        blocked["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("insufficient")
            || blocked["error"]
                .as_str()
                .unwrap_or_default()
                .contains("10023"),
        "{blocked}"
    );
    let failed = alerts.of("sync.park_failed").await;
    assert_eq!(failed["reason"], "limit_reached", "{failed}");
    assert_eq!(metric(&rt, "sync_audit_holding_back").await, 1.0);
    assert!(
        metric(
            &rt,
            "sync_audit_store_failures_total{reason=\"limit_reached\"}"
        )
        .await
            >= 1.0
    );
    let hook = format!("http://{}/webhooks/hostile", rt.http_addr());
    let body = br#"{"id":"during"}"#;
    let a = post_webhook(&hook, &crate::hostile::signed(body), body).await;
    assert_eq!(a.status, 503, "webhooks wait too: {}", a.body);
    // Room again: the audit trail takes its records, the events are parked, nothing is lost.
    js.get_stream("FILLER")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    alerts.of("audit.resumed").await;
    wait_idle(&js, "full_store_v1", Duration::from_secs(30)).await;
    let parked = stream_messages(&js, "HMS_SYNC_PARKED").await;
    let mut ids: Vec<String> = parked
        .iter()
        .map(|j| {
            j["url"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["bad1", "bad2"]);
    assert_eq!(metric(&rt, "sync_audit_holding_back").await, 0.0);
    assert_eq!(metric(&rt, "sync_audit_dropped_total").await, 0.0);
    rt.shutdown().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(["audit", "verify", "--nats-url", &url])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("gap"), "nothing declared lost: {text}");
    nats_server.kill();
}
