//! `hms-sync flood` and `hms-sync sink`, as a platform engineer runs them.
//!
//! Sink, `up` with a connector pointed at it, flood; the sink's summary says what arrived.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(90);

fn hms() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hms-sync"));
    c.env_remove("NATS_URL");
    c
}

/// A child process of a test, killed if the test ends without stopping it (a failed assertion).
struct Running(Option<Child>);

impl Running {
    fn take(mut self) -> Child {
        self.0.take().expect("running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `hms-sync sink --json --every 1` with `args`, on a free port; returns it and its URL.
fn start_sink(args: &[&str]) -> (Running, String) {
    let mut child = hms()
        .args(["sink", "--listen", "127.0.0.1:0", "--json", "--every", "1"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Running(Some(child));
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("sink listening on ")
        .unwrap_or_else(|| panic!("sink's first line: {line:?}"))
        .to_string();
    (child, url)
}

/// SIGTERM, then every JSON line it printed (the last one is the final summary).
fn stop_sink(child: Running) -> Vec<Value> {
    let child = child.take();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The README's load-test connector (docs/load-test/), pointed at `sink`.
fn load_connector(sink: &str) -> String {
    include_str!("../../docs/load-test/connectors/load-sink.yaml")
        .replace("http://127.0.0.1:8080", sink)
}

/// `up` as a child on `setup`, once its consumer is in place.
async fn start_up(setup: &Setup, nats: &Nats) -> Running {
    let log = std::fs::File::create(setup.dir.path().join("up.log")).unwrap();
    let up = hms()
        .arg("--config")
        .arg(setup.config_path())
        .arg("up")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let up = Running(Some(up));
    let js = async_nats::jetstream::new(nats.client().await);
    eventually(T, "up created its consumer", || {
        let js = js.clone();
        async move {
            match js.get_stream("HMS_EVENTS").await {
                Ok(s) => s.consumer_info("load_sink_v1").await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    up
}

fn flood(setup: &Setup, args: &[&str]) -> Output {
    hms()
        .arg("--config")
        .arg(setup.config_path())
        .args(["flood", "load.test", "--json", "--from"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/load-test/event.json"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_at_2000_per_s_arrive_once_each_with_a_latency_summary() {
    let nats = Nats::start().await;
    let (sink, url) = start_sink(&["--order-key", "header:X-Permit-Id"]);
    let setup = Setup::new(&nats, &[("load.yaml", load_connector(&url))], "");
    let up = start_up(&setup, &nats).await;
    let out = tokio::task::block_in_place(|| {
        flood(
            &setup,
            &[
                "--count",
                "10000",
                "--rate",
                "2000",
                "--vary",
                "permitId=seq%100",
            ],
        )
    });
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["published"], 10000);
    assert_eq!(report["errors"], 0);
    // The flood honoured --rate: event i is not published before i / rate, so 10000 at
    // 2000/s take at least ~5 s. Lower bounds only (a loaded machine can only make it
    // slower), with 10 % to spare.
    assert_eq!(report["rate"], 2000.0, "{report}");
    let seconds = report["seconds"].as_f64().unwrap();
    let per_s = report["published_per_s"].as_f64().unwrap();
    assert!(
        seconds >= 0.9 * 10000.0 / 2000.0,
        "faster than --rate 2000: {report}"
    );
    assert!(per_s <= 1.1 * 2000.0, "faster than --rate 2000: {report}");
    assert!(report["ack_p99_ms"].as_f64().unwrap() >= report["ack_p50_ms"].as_f64().unwrap());
    let js = async_nats::jetstream::new(nats.client().await);
    wait_idle(&js, "load_sink_v1", T).await;
    terminate(up.take()).await;
    let lines = stop_sink(sink);
    let last = lines.last().unwrap();
    assert_eq!(last["final"], true);
    assert_eq!(last["requests"], 10000);
    assert_eq!(last["delivered"], 10000);
    assert_eq!(last["duplicates"], 0);
    assert_eq!(last["by_status"]["200"], 10000);
    assert_eq!(last["order_violations"], 0);
    let latency = &last["latency"];
    assert_eq!(latency["count"], 10000);
    let (p50, p99) = (
        latency["p50_ms"].as_f64().unwrap(),
        latency["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{latency}");
    assert!(
        lines
            .iter()
            .any(|l| l["final"] == false && l["arrivals_per_s"].as_f64() > Some(0.0)),
        "a progress line while the flood ran: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fail_rate_retries_show_as_duplicates_by_key_and_every_event_arrives() {
    let nats = Nats::start().await;
    let (sink, url) = start_sink(&["--fail-rate", "0.1"]);
    let setup = Setup::new(&nats, &[("load.yaml", load_connector(&url))], "");
    let up = start_up(&setup, &nats).await;
    let out = tokio::task::block_in_place(|| {
        flood(&setup, &["--count", "2000", "--vary", "permitId=seq"])
    });
    assert!(out.status.success(), "{out:?}");
    let js = async_nats::jetstream::new(nats.client().await);
    wait_idle(&js, "load_sink_v1", T).await;
    terminate(up.take()).await;
    let last = stop_sink(sink).pop().unwrap();
    assert_eq!(last["delivered"], 2000, "{last}");
    let failed = last["by_status"]["503"].as_u64().unwrap_or(0);
    assert!(failed > 0, "some requests were answered 503: {last}");
    let duplicates = last["duplicates"].as_u64().unwrap();
    assert!(
        duplicates >= failed,
        "every 503 was retried with the same Idempotency-Key: {last}"
    );
    assert_eq!(last["by_status"]["200"], 2000);
}

#[test]
fn bad_arguments_are_named_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let not_object = dir.path().join("list.json");
    std::fs::write(&not_object, "[1, 2]").unwrap();
    let not_object = not_object.to_string_lossy().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["flood", "t"], "--count"),
        (
            &["flood", "t", "--count", "0"],
            "--count must be at least 1",
        ),
        (&["flood", "t", "--count", "5", "--rate", "-3"], "--rate -3"),
        (&["flood", "t", "--count", "5", "--vary", "id"], "--vary id"),
        (&["flood", "t.*", "--count", "5"], "plain subject"),
        (
            &["flood", "t", "--count", "5", "--from", "/nonexistent.json"],
            "--from",
        ),
        (
            &["flood", "t", "--count", "5", "--from", &not_object],
            "JSON object",
        ),
        (&["sink", "--fail-rate", "1.5"], "--fail-rate 1.5"),
        (&["sink", "--status", "99"], "--status 99"),
        (&["sink", "--listen", "nowhere"], "--listen"),
        (&["sink", "--every", "0"], "--every"),
    ];
    for (args, says) in cases {
        let out = hms().args(*args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} says {says:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_answers_late_with_the_status_asked_and_counts_a_repeated_key() {
    // reqwest here is built without a default crypto provider: give it one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (sink, url) = start_sink(&["--latency-ms", "100", "--status", "202"]);
    let http = reqwest::Client::new();
    let sent = hms_sync::flood::now_ns().to_string();
    for _ in 0..2 {
        let t0 = std::time::Instant::now();
        let r = http
            .put(format!("{url}/permits/RW-1"))
            .header("Idempotency-Key", "k-1")
            .header("X-Flood-Seq", "0")
            .header("X-Flood-Sent-At-Ns", &sent)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        assert!(
            t0.elapsed() >= Duration::from_millis(100),
            "answered after --latency-ms"
        );
    }
    let last = stop_sink(sink).pop().unwrap();
    assert_eq!(last["requests"], 2, "{last}");
    assert_eq!(last["delivered"], 1);
    assert_eq!(last["duplicates"], 1);
    assert_eq!(last["after_success"], 1);
    assert_eq!(last["latency"]["count"], 1);
}
