//! Hostile input (issue 15, point 3): connector files, events and webhooks built to break
//! parsers, each answered with a position or a reason, never a crash or a hang.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Runs the binary with `args`, killing it after `limit`; (exit code, stdout + stderr, took).
fn run_bounded(args: &[&std::ffi::OsStr], limit: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let readers = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hms-sync {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (code, readers.join().unwrap(), started.elapsed())
}

fn validate(path: &Path) -> (Option<i32>, String) {
    let (code, out, _) = run_bounded(
        &["validate".as_ref(), path.as_os_str()],
        Duration::from_secs(30),
    );
    assert!(!out.contains("panicked"), "{out}");
    (code, out)
}

const HEAD: &str = "id: hostile.v1\ntype: outbound\ntrigger:\n  topic: t\nmap:\n  to:\n    url: http://127.0.0.1:9/x\n    method: PUT\n";

#[test]
fn hostile_connector_files_get_a_position_never_a_crash_or_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let deep_block: String = (0..500)
        .map(|i| format!("{}k{i}:\n", "  ".repeat(i + 3)))
        .collect();
    let mut big = String::from(HEAD);
    big.push_str("    body:\n");
    let mut i = 0;
    while big.len() < 10 * 1024 * 1024 {
        big.push_str(&format!("      f{i}: \"{{{{ x }}}}\"\n"));
        i += 1;
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "syntax.yaml",
            b"id: a\ntype: outbound\ntrigger:\n  topic: [t\n".to_vec(),
            ":5:1: YAML syntax",
        ),
        (
            "types.yaml",
            b"id: a\ntype: outbound\ntrigger:\n  topic: {a: 1}\n".to_vec(),
            ":4:10: trigger.topic: invalid type: map",
        ),
        (
            "retry-type.yaml",
            format!("{HEAD}retry:\n  max: many\n").into_bytes(),
            ":10:8: retry.max: invalid type: string",
        ),
        (
            "deep-block.yaml",
            format!("{HEAD}    body:\n{deep_block}").into_bytes(),
            ":135:257: recursion limit exceeded",
        ),
        (
            "deep-flow.yaml",
            format!(
                "{HEAD}    body: {}{}\n",
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
            .into_bytes(),
            ":9:266: YAML syntax: recursion limit exceeded",
        ),
        ("big.yaml", big.into_bytes(), ":1:1: the file is 104"),
        (
            "dup-id.yaml",
            format!("id: first.v1\n{HEAD}").into_bytes(),
            ":2:1: duplicate key `id` (first written at 1:1)",
        ),
        (
            "dup-header.yaml",
            format!("{HEAD}    headers: {{ A: x, A: y }}\n").into_bytes(),
            ":9:22: duplicate key `map.to.headers.A` (first written at 9:16)",
        ),
        (
            "non-utf8.yaml",
            b"id: a\ntype: outbound\ntrigger:\n  topic: t\xff\xfe\n".to_vec(),
            ":4:11: not UTF-8 text",
        ),
        ("empty.yaml", Vec::new(), ":1:1: missing field `id`"),
        (
            "not-a-map.yaml",
            b"- 1\n- 2\n".to_vec(),
            ":1:1: invalid type: sequence, expected a connector",
        ),
        (
            "nul.yaml",
            b"id: a\x00\ntype: outbound\n".to_vec(),
            ":1:6: control characters are not allowed",
        ),
    ];
    for (name, bytes, want) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let (code, out) = validate(&path);
        assert_eq!(code, Some(2), "{name}: {out}");
        assert!(
            out.contains(&format!("{}{want}", path.display())),
            "{name}: expected `{want}` in:\n{}",
            &out[..out.len().min(2000)]
        );
    }
    // `up` refuses a folder holding such a file (naming it), and neither crashes nor hangs.
    let setup = Setup::at("nats://127.0.0.1:9", &[], "");
    std::fs::write(
        setup.dir.path().join("connectors/bad.yaml"),
        b"id: a\ntype: outbound\ntrigger:\n  topic: t\xff\n",
    )
    .unwrap();
    let (code, out, _) = run_bounded(
        &[
            "up".as_ref(),
            "--config".as_ref(),
            setup.config_path().as_os_str(),
        ],
        Duration::from_secs(30),
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("bad.yaml:4:11: not UTF-8 text"), "{out}");
    let _ = std::io::stdout().flush();
}

pub const WEBHOOK: &str = "id: hostile.hook.v1\ntype: inbound\nsource:\n  webhookUrl: /webhooks/hostile\n  signature:\n    scheme: hmac-sha256\n    header: X-Signature\n    encoding: hex\n    secret: \"${HMS_IT_HOSTILE_HOOK}\"\npublish:\n  topic: hostile.hook\n  idFrom: \"{{ id }}\"\n";
pub const HOOK_SECRET: &str = "hostile-hook-secret";

pub fn signed(body: &[u8]) -> Vec<(&'static str, String)> {
    use hms_sync::inbound::signature::{sign, SigEncoding};
    vec![
        ("Content-Type", "application/json".to_string()),
        (
            "X-Signature",
            sign::hmac_sha256(HOOK_SECRET, body, SigEncoding::Hex),
        ),
    ]
}

/// A valid webhook, answered 200, within `limit`.
async fn valid_webhook_answered(url: &str, n: usize, limit: Duration) {
    let body = format!("{{\"id\":\"ok-{n}\"}}");
    let started = Instant::now();
    let a = tokio::time::timeout(
        limit,
        post_webhook(url, &signed(body.as_bytes()), body.as_bytes()),
    )
    .await
    .unwrap_or_else(|_| panic!("a valid webhook was not answered within {limit:?}"));
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(started.elapsed() < limit);
}

/// Whether the server closed `s` (EOF or reset) within `limit`; what it sent before.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> (bool, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (false, String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// What the server answered on `s` up to the end of its head (or until it closed, or `limit`).
async fn answer_head(s: &mut tokio::net::TcpStream, limit: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_webhooks_are_refused_in_bounded_time_while_valid_ones_are_answered() {
    use tokio::io::AsyncWriteExt;
    init_logs();
    std::env::set_var("HMS_IT_HOSTILE_HOOK", HOOK_SECRET);
    let nats = Nats::start().await;
    let setup = Setup::new(&nats, &[("hook.yaml", WEBHOOK.to_string())], "");
    setup.set_http("headerTimeoutMs: 1000");
    let rt = setup.start().await;
    let addr = rt.http_addr();
    let url = format!("http://{addr}/webhooks/hostile");
    valid_webhook_answered(&url, 0, Duration::from_secs(10)).await;

    // Oversized, declared: 413 at once, without reading 10 MB. The body is never sent: a
    // client still writing it when the server answers and closes may see a broken pipe
    // instead of the answer (an HTTP client's race, not the server's).
    let big = vec![b'x'; 10 << 20];
    let started = Instant::now();
    let mut declared = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST /webhooks/hostile HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        big.len()
    );
    for (k, v) in signed(&big) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    declared.write_all(head.as_bytes()).await.unwrap();
    let said = answer_head(&mut declared, Duration::from_secs(10)).await;
    assert!(said.starts_with("HTTP/1.1 413"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Oversized, streamed without a length (chunked): 413 once the limit is passed.
    let mut chunked = tokio::net::TcpStream::connect(addr).await.unwrap();
    chunked
        .write_all(b"POST /webhooks/hostile HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
    for _ in 0..40 {
        if chunked.write_all(chunk.as_bytes()).await.is_err() {
            break; // closed under a sender still writing: refused all the same
        }
    }
    let (_, said) = closed_within(&mut chunked, Duration::from_secs(10)).await;
    assert!(said.starts_with("HTTP/1.1 413"), "{said}");
    // Malformed JSON, well signed: 400. Not even HTTP: 400 and closed. A head over 64 KiB: 431.
    let bad = b"{\"id\": \"x\",";
    assert_eq!(post_webhook(&url, &signed(bad), bad).await.status, 400);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(
        post_webhook(&url, &signed(deep.as_bytes()), deep.as_bytes())
            .await
            .status,
        400,
        "10,000-deep JSON"
    );
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01 NOT HTTP AT ALL\r\n\r\n")
        .await
        .unwrap();
    let (closed, said) = closed_within(&mut garbage, Duration::from_secs(5)).await;
    assert!(closed && said.starts_with("HTTP/1.1 400"), "{said}");
    let mut huge_head = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhooks/hostile HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    let _ = huge_head.write_all(head.as_bytes()).await;
    let (closed, said) = closed_within(&mut huge_head, Duration::from_secs(5)).await;
    assert!(closed && said.starts_with("HTTP/1.1 431"), "{said}");

    // Slowloris: a head trickled a byte at a time is cut off after the header timeout, while
    // valid webhooks are answered.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        let head = b"POST /webhooks/hostile HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let started = Instant::now();
        for b in head {
            if slow.write_all(&[*b]).await.is_err() {
                return (true, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // the attacker's pace
        }
        let (closed, _) = closed_within(&mut slow, Duration::from_secs(5)).await;
        (closed, started.elapsed())
    });
    for n in 1..5 {
        valid_webhook_answered(&url, n, Duration::from_secs(5)).await;
    }
    let (cut, after) = trickle.await.unwrap();
    assert!(cut, "the slow client was never cut off");
    assert!(
        after < Duration::from_secs(8),
        "cut off after {after:?} (header timeout 1 s; the whole head takes 12 s)"
    );
    assert!(metric(&rt, "sync_http_header_timeouts_total").await >= 1.0);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_are_closed_in_bounded_time_and_memory() {
    init_logs();
    raise_open_files();
    let nats = Nats::start().await;
    let setup = Setup::new(&nats, &[("hook.yaml", WEBHOOK.to_string())], "");
    setup.set_http("headerTimeoutMs: 2000");
    let mut inst = {
        std::env::set_var("HMS_IT_HOSTILE_HOOK", HOOK_SECRET);
        crate::fleet::Instance::start(&setup)
    };
    eventually(Duration::from_secs(30), "instance ready", || inst.ready()).await;
    let url = format!("{}/webhooks/hostile", inst.http);
    valid_webhook_answered(&url, 0, Duration::from_secs(10)).await;
    let pid = inst.child.id();
    let (before, _) = rss_kb(pid);
    let addr: std::net::SocketAddr = inst.http.trim_start_matches("http://").parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Valid webhooks are answered at once while the 2,000 are open.
    for n in 1..4 {
        valid_webhook_answered(&url, n, Duration::from_secs(5)).await;
    }
    let (during, _) = rss_kb(pid);
    assert!(
        during.saturating_sub(before) < 100 * 1024,
        "2,000 idle connections cost {} kB",
        during - before
    );
    // Every idle connection is closed by the server after the header timeout.
    let closes = idle
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_secs(20)));
    let results = futures::future::join_all(closes).await;
    let open = results.iter().filter(|(closed, _)| !closed).count();
    assert_eq!(open, 0, "{open} idle connections still open after 20 s");
    valid_webhook_answered(&url, 9, Duration::from_secs(5)).await;
    let _ = inst.child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_are_parked_with_a_reason_and_their_exact_bytes() {
    let (nats, target) = nats_and_target().await;
    let yaml = format!(
        "id: hostile.events.v1\ntype: outbound\ntrigger:\n  topic: hostile.events\n  filter: object.amount > 10\nmap:\n  to:\n    url: \"{}/items/{{id}}\"\n    method: PUT\n    headers: {{ X-Id: \"{{{{ id }}}}\" }}\n    body:\n      id: \"{{{{ id }}}}\"\nretry:\n  max: 2\n  backoffMs: 50\n",
        target.url()
    );
    let (_setup, rt, js) = start_with(&nats, &[("c.yaml", yaml)], "").await;
    let binary: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + 0x80) as u8).collect();
    let mut quoted = br#"{"id":"big","amount":"many","pad":""#.to_vec();
    // Escaped quotes: its JSON record would be twice its size (stored as the body then).
    quoted.extend(b"\\\"".repeat(330_000));
    quoted.extend_from_slice(b"\"}");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not JSON",
            b"hello, not json".to_vec(),
            "payload is not JSON",
        ),
        ("1 MB binary", binary, "payload is not JSON"),
        (
            "1 MB JSON, wrong type",
            quoted,
            "the filter failed on this event",
        ),
        ("10,000 deep", deep, "recursion limit exceeded"),
        (
            "wrong type for the filter",
            br#"{"id":"w1","amount":"lots"}"#.to_vec(),
            "a string cannot be compared to a int",
        ),
        (
            "not an object",
            br#"[1,2,3]"#.to_vec(),
            "the payload is a list, not an object",
        ),
        (
            "non-UTF-8",
            b"{\"id\":\"\xff\xfe\",\"amount\":20}".to_vec(),
            "payload is not JSON",
        ),
        (
            "CR LF into a header",
            br#"{"id":"a\r\nX-Evil: 1","amount":20}"#.to_vec(),
            "CR or LF",
        ),
        ("missing URL variable", br#"{"amount":20}"#.to_vec(), "id"),
    ];
    for (_, bytes, _) in &cases {
        js.publish("hostile.events", bytes.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The connector keeps running: a valid event behind them is delivered.
    publish(
        &js,
        "hostile.events",
        serde_json::json!({"id": "fine", "amount": 20}),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the valid event delivered",
        || async { target.requests().iter().any(|r| r.path == "/items/fine") },
    )
    .await;
    let bus = connect_bus(&nats).await;
    eventually(
        Duration::from_secs(30),
        "every hostile event parked",
        || async { hms_sync::parked::list(&bus, None).await.unwrap().len() == cases.len() },
    )
    .await;
    let jobs = hms_sync::parked::list(&bus, None).await.unwrap();
    for (what, bytes, reason) in &cases {
        let job = jobs
            .iter()
            .filter_map(|r| r.job.as_ref())
            .find(|j| j.event.payload_bytes().as_deref() == Ok(bytes.as_slice()))
            .unwrap_or_else(|| panic!("{what}: no parked job holds its exact bytes"));
        assert!(job.error.contains(reason), "{what}: {}", job.error);
        assert!(job.error.len() < 500, "{what}: the reason holds no payload");
    }
    assert_eq!(target.count(), 1, "no hostile event was sent");
    assert!(
        metric(
            &rt,
            "sync_fail_total{connector=\"hostile.events.v1\",reason=\"filter\"}"
        )
        .await
            >= 3.0
    );
    assert_eq!(
        metric(&rt, "sync_parked_total{connector=\"hostile.events.v1\"}").await,
        cases.len() as f64
    );
    // The binary one is stored as its exact bytes; `parked show` prints it, and a replay sends
    // the same bytes again.
    let binary = jobs
        .iter()
        .find(|r| {
            r.job
                .as_ref()
                .is_some_and(|j| j.event.payload_bytes().map(|b| b.len()) == Ok(1_000_000))
        })
        .unwrap();
    let (code, out, _) = run_bounded(
        &[
            "parked".as_ref(),
            "show".as_ref(),
            binary.id.to_string().as_ref(),
            "--nats-url".as_ref(),
            nats.url().as_ref(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{}", &out[..out.len().min(500)]);
    assert!(out.contains("base64"), "{}", &out[..out.len().min(500)]);
    hms_sync::parked::replay(
        &bus,
        binary,
        &hms_sync::parked::Operator::cli(Some("hostile test".into())),
    )
    .await
    .unwrap();
    let replayed = stream_raw(&js, "HMS_EVENTS")
        .await
        .into_iter()
        .find(|m| m.subject.starts_with("hms.replay."))
        .expect("the replay is on HMS_EVENTS");
    assert_eq!(replayed.payload.len(), 1_000_000);
    assert_eq!(
        Ok(replayed.payload.to_vec()),
        binary.job.as_ref().unwrap().event.payload_bytes()
    );
    rt.shutdown().await;
}
