//! Start, stop and reload under fire (issue 15, point 1): SIGTERM in the middle of a flood,
//! NATS not there yet at start, SIGHUP re-reading the connectors folder.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

/// `hms-sync up` as a child process on its own HTTP port, its console in a file.
pub struct Up {
    child: Option<Child>,
    pub http: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Up {
    pub fn start(setup: &Setup) -> Up {
        Up::start_with(setup, &[], "info")
    }

    /// With more arguments for `up` and this `HMS_SYNC_LOG` filter.
    pub fn start_with(setup: &Setup, args: &[&str], log_filter: &str) -> Up {
        // The test's own HTTP calls (reqwest with rustls) need the process's crypto provider.
        hms_sync::http_client::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("up.log");
        let port = free_port();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
            .args(args)
            .args(["up", "--config"])
            .arg(setup.config_path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("HMS_SYNC_LOG", log_filter)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Up {
            child: Some(child),
            http: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    /// What it printed so far (stdout and stderr).
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub async fn ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.http))
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Sends SIGTERM; (exit status, how long it took).
    pub async fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let child = self.child.take().unwrap();
        let status = terminate(child).await;
        (status, started.elapsed())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `hms-sync up` (a child process) with `connector` as `c.yaml` and `config` appended, ready,
/// then `n` events `{"id": "<prefix><i>", "n": i}` published on `topic`. The stream and the
/// consumer exist before anything is published (a runtime in this process made them).
async fn up_and_published(
    nats: &Nats,
    connector: String,
    config: &str,
    topic: &str,
    prefix: &str,
    n: usize,
) -> (Setup, Up, async_nats::jetstream::Context) {
    let setup = Setup::new(nats, &[("c.yaml", connector)], config);
    setup.start().await.shutdown().await;
    let up = Up::start(&setup);
    eventually(Duration::from_secs(30), "up ready", || up.ready()).await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish_many(&js, topic, numbered(prefix, 0..n)).await;
    (setup, up, js)
}

/// Requests per Idempotency-Key the target answered.
fn per_key(target: &Target) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in target.requests() {
        *m.entry(r.header("Idempotency-Key").unwrap_or_default())
            .or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_flood_finishes_what_is_in_flight_acks_it_and_exits_in_time() {
    let (nats, target) = nats_and_target().await;
    target.set_delay(Duration::from_millis(200));
    let connector = simple_connector("term.flood.v1", "term.flood", &target, "");
    let config = "delivery:\n  maxInFlight: 16\n  shutdownTimeoutMs: 4000\n";
    let (setup, mut up, js) =
        up_and_published(&nats, connector, config, "term.flood", "e", 400).await;
    eventually(Duration::from_secs(30), "a flood under way", || async {
        target.count() >= 40
    })
    .await;
    let (status, took) = up.terminate().await;
    assert!(status.success(), "{status:?}\n{}", up.console());
    assert!(
        took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM (shutdownTimeoutMs: 4000)\n{}",
        up.console()
    );
    // Everything it delivered is acked; what it had received and not started is handed back
    // (NAK: JetStream counts such an event as pending until it offers it again, at once).
    // Nothing waits for the 30 s ack wait: the next run delivers the rest well within it.
    let info = consumer_info(&js, "term_flood_v1").await;
    let first_run = per_key(&target);
    assert!(first_run.len() < 400, "the flood was still under way");
    // The rest is delivered by the next run; what the first delivered is not sent again.
    let restarted = Instant::now();
    let rt = setup.start().await;
    wait_idle(&js, "term_flood_v1", Duration::from_secs(60)).await;
    assert!(
        restarted.elapsed() < Duration::from_secs(20),
        "the next run waited {:?}: events left unacked wait out the ack wait (30 s); after the first run: {info:?}",
        restarted.elapsed()
    );
    let all = per_key(&target);
    assert_eq!(all.len(), 400, "every event delivered");
    let twice: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent again after the restart: {twice:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_target_that_never_answers_hands_back_and_exits_in_time() {
    let (nats, target) = nats_and_target().await;
    target.set_delay(Duration::from_secs(300));
    let connector = simple_connector("term.hang.v1", "term.hang", &target, "timeoutMs: 600000\n");
    let config = "delivery:\n  shutdownTimeoutMs: 3000\n";
    let (setup, mut up, js) =
        up_and_published(&nats, connector, config, "term.hang", "h", 10).await;
    eventually(Duration::from_secs(30), "ten requests hanging", || async {
        target.concurrent() == 10
    })
    .await;
    let (status, took) = up.terminate().await;
    assert!(status.success(), "{status:?}\n{}", up.console());
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM (shutdownTimeoutMs: 3000)\n{}",
        up.console()
    );
    assert!(up.console().contains("handed back"), "{}", up.console());
    // Handed back (NAK): offered again at once to the next run, not after the 30 s ack wait.
    target.set_delay(Duration::ZERO);
    let restarted = Instant::now();
    let rt = setup.start().await;
    eventually(
        Duration::from_secs(20),
        "delivered by the next run",
        || async { metric(&rt, "sync_ok_total{connector=\"term.hang.v1\"}").await == 10.0 },
    )
    .await;
    assert!(
        restarted.elapsed() < Duration::from_secs(20),
        "not waiting for the ack wait (30 s)"
    );
    let info = consumer_info(&js, "term_hang_v1").await;
    assert_eq!(
        info.delivered.consumer_sequence, 20,
        "each delivered twice (handed back once): {info:?}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_waits_for_nats_saying_so_and_starts_once_it_answers() {
    init_logs();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let target = Target::start().await;
    let setup = Setup::at(
        &url,
        &[(
            "c.yaml",
            simple_connector("wait.nats.v1", "wait.nats", &target, ""),
        )],
        "",
    );
    let up = Up::start(&setup);
    eventually(
        Duration::from_secs(20),
        "two lines about the missing NATS",
        || async { up.console().matches(&format!("127.0.0.1:{port}")).count() >= 2 },
    )
    .await;
    let console = up.console();
    assert!(console.contains("nats.embedded is off"), "{console}");
    assert!(!up.ready().await, "not serving before NATS is there");
    // NATS comes: up starts its work.
    let nats = hms_sync::nats_server::NatsServer::builder()
        .bin(nats_server_bin())
        .port(port)
        .start()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "up ready once NATS answers",
        || up.ready(),
    )
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    publish(&js, "wait.nats", json!({"id": "w1", "n": 1})).await;
    eventually(Duration::from_secs(20), "delivered", || async {
        target.count() == 1
    })
    .await;
}

/// A connector on `topic` calling `target` at `/{path}/{id}`.
fn to_path(id: &str, topic: &str, target: &Target, path: &str) -> String {
    format!(
        "id: {id}\ntype: outbound\ntrigger:\n  topic: {topic}\nmap:\n  to:\n    url: \"{}/{path}/{{id}}\"\n    method: PUT\n    body:\n      id: \"{{{{ id }}}}\"\n",
        target.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_connectors_folder_without_dropping_anything() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let (nats, target) = nats_and_target().await;
    target.set_delay(Duration::from_millis(5));
    let setup = Setup::new(
        &nats,
        &[
            ("a.yaml", to_path("hup.a.v1", "hup.a", &target, "a")),
            ("b.yaml", to_path("hup.b.v1", "hup.b", &target, "b")),
        ],
        "",
    );
    setup.start().await.shutdown().await;
    let up = Up::start(&setup);
    eventually(Duration::from_secs(30), "up ready", || up.ready()).await;
    let js = async_nats::jetstream::new(nats.client().await);
    // A flood on both topics, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (js, stop, sent) = (js.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                for topic in ["hup.a", "hup.b"] {
                    publish(&js, topic, json!({"id": format!("{topic}-{n}")})).await;
                }
                n += 1;
                sent.store(n, SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await; // the flood's pace
            }
            n
        })
    };
    eventually(Duration::from_secs(30), "the flood under way", || async {
        target.count() >= 100
    })
    .await;
    // Change a, remove b, add c and an inbound connector; then SIGHUP.
    setup.write_connector("a.yaml", &to_path("hup.a.v1", "hup.a", &target, "a2"));
    std::fs::remove_file(setup.dir.path().join("connectors/b.yaml")).unwrap();
    setup.write_connector("c.yaml", &to_path("hup.c.v1", "hup.c", &target, "c"));
    setup.write_connector(
        "hook.yaml",
        "id: hup.hook.v1\ntype: inbound\nsource:\n  webhookUrl: /webhooks/hup\n  signature:\n    scheme: hmac-sha256\n    header: X-Signature\n    encoding: hex\n    secret: \"${HMS_IT_HUP_HOOK}\"\npublish:\n  topic: hup.hooked\n",
    );
    up.signal(libc::SIGHUP);
    eventually(Duration::from_secs(30), "the folder applied", || async {
        up.console().contains("connectors folder applied")
    })
    .await;
    let console = up.console();
    assert!(
        console.contains("added [\"hup.c.v1\"], changed [\"hup.a.v1\"], removed [\"hup.b.v1\"]"),
        "{console}"
    );
    publish(&js, "hup.c", json!({"id": "c-1"})).await;
    let hook = reqwest::Client::new()
        .post(format!("{}/webhooks/hup", up.http))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        hook.status().as_u16(),
        401,
        "the new webhook path is served"
    );
    // A folder with a broken file changes nothing.
    setup.write_connector("d.yaml", "id: [broken\n");
    up.signal(libc::SIGHUP);
    eventually(
        Duration::from_secs(30),
        "the broken folder refused",
        || async { up.console().contains("connectors folder not applied") },
    )
    .await;
    assert!(up.console().contains("d.yaml:2:1"), "{}", up.console());
    tokio::time::sleep(Duration::from_millis(300)).await; // more of the flood after the reload
    stop.store(true, SeqCst);
    let rounds = flood.await.unwrap();
    std::fs::remove_file(setup.dir.path().join("connectors/d.yaml")).unwrap();
    // Still the same process (SIGHUP used to end it with 129).
    assert!(up.ready().await, "{}", up.console());
    wait_idle(&js, "hup_a_v1", Duration::from_secs(60)).await;
    eventually(Duration::from_secs(20), "c delivered", || async {
        target.requests().iter().any(|r| r.path == "/c/c-1")
    })
    .await;
    let reqs = target.requests();
    // Every a event delivered, each once; the old definition never after the new one.
    let a: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/a/") || r.path.starts_with("/a2/"))
        .collect();
    let mut ids: Vec<&str> = a
        .iter()
        .map(|r| r.path.rsplit('/').next().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, rounds, "every a event delivered");
    assert_eq!(a.len() as u64, rounds, "each once");
    let last_old = a
        .iter()
        .filter(|r| r.path.starts_with("/a/"))
        .map(|r| r.at)
        .max();
    let first_new = a
        .iter()
        .filter(|r| r.path.starts_with("/a2/"))
        .map(|r| r.at)
        .min();
    assert!(first_new.is_some(), "the new definition runs");
    assert!(
        last_old < first_new,
        "no old-definition call after the swap"
    );
    // b: what was not delivered before it stopped waits on its consumer (nothing dropped).
    let b_delivered = reqs.iter().filter(|r| r.path.starts_with("/b/")).count() as u64;
    let b = consumer_info(&js, "hup_b_v1").await;
    assert_eq!(
        b_delivered + b.num_pending + b.num_ack_pending as u64,
        rounds,
        "b: delivered {b_delivered}, waiting {} + {}",
        b.num_pending,
        b.num_ack_pending
    );
    assert_eq!(b.config.inactive_threshold, Duration::from_secs(24 * 3600));
    assert!(b_delivered < rounds, "b stopped");
}
