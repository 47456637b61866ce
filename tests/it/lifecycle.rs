//! Start, stop and reload under fire (issue 15, point 1): SIGTERM in the middle of a flood,
//! NATS not there yet at start, SIGHUP re-reading the connectors folder.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

/// `hms-sync up` as a child process on its own HTTP port, its console in a file.
struct Up {
    child: Option<Child>,
    http: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Up {
    fn start(setup: &Setup) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("up.log");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
            .args(["up", "--config"])
            .arg(setup.config_path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("HMS_SYNC_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Up {
            child: Some(child),
            http: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    async fn ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.http))
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Sends SIGTERM; (exit status, how long it took).
    async fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
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

async fn consumer(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::consumer::Info {
    js.get_stream("HMS_EVENTS")
        .await
        .unwrap()
        .consumer_info(name)
        .await
        .unwrap()
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
    init_logs();
    let nats = Nats::start().await;
    let target = Target::start().await;
    target.set_delay(Duration::from_millis(200));
    let setup = Setup::new(
        &nats,
        &[(
            "c.yaml",
            simple_connector("term.flood.v1", "term.flood", &target, ""),
        )],
        "delivery:\n  maxInFlight: 16\n  shutdownTimeoutMs: 4000\n",
    );
    // The stream and the consumer exist before anything is published.
    setup.start().await.shutdown().await;
    let mut up = Up::start(&setup);
    eventually(Duration::from_secs(30), "up ready", || up.ready()).await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish_many(
        &js,
        "term.flood",
        (0..400).map(|i| json!({"id": format!("e{i}"), "n": i})),
    )
    .await;
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
    // Everything it delivered is acked; nothing waits for an ack timeout.
    let info = consumer(&js, "term_flood_v1").await;
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    let first_run = per_key(&target);
    assert!(first_run.len() < 400, "the flood was still under way");
    // The rest is delivered by the next run; what the first delivered is not sent again.
    let rt = setup.start().await;
    wait_idle(&js, "term_flood_v1", Duration::from_secs(60)).await;
    let all = per_key(&target);
    assert_eq!(all.len(), 400, "every event delivered");
    let twice: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent again after the restart: {twice:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_target_that_never_answers_hands_back_and_exits_in_time() {
    init_logs();
    let nats = Nats::start().await;
    let target = Target::start().await;
    target.set_delay(Duration::from_secs(300));
    let setup = Setup::new(
        &nats,
        &[(
            "c.yaml",
            simple_connector("term.hang.v1", "term.hang", &target, "timeoutMs: 600000\n"),
        )],
        "delivery:\n  shutdownTimeoutMs: 3000\n",
    );
    setup.start().await.shutdown().await;
    let mut up = Up::start(&setup);
    eventually(Duration::from_secs(30), "up ready", || up.ready()).await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish_many(
        &js,
        "term.hang",
        (0..10).map(|i| json!({"id": format!("h{i}"), "n": i})),
    )
    .await;
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
    let info = consumer(&js, "term_hang_v1").await;
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
