//! `overload` (issue 15, point 2): a backlog of 100,000 events for a target limited to 20
//! requests/s, with a 2 s ack wait. For `--seconds` it samples hms-sync's memory and how long
//! `/healthz` and `/metrics` take, then reports the peak RSS, the worst and p99 answer times,
//! and whether any event reached the target twice or was redelivered by JetStream meanwhile.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use hms_sync::bus::Bus;
use hms_sync::sink::{Sink, SinkOptions};

use crate::hms::hms_bin;
use crate::opts::Opts;
use crate::procfs::{status_mb, uptime_line};
use crate::scenarios::{progress, publish, pull_config, scenario, start_nats, topic, Scenario};

/// Requests per second the target's connector may make.
const RATE: u32 = 20;
/// The ack wait of the run (far shorter than the time an event waits for its permit).
const ACK_WAIT_MS: u64 = 2000;

/// One timed GET: milliseconds, or `None` when it failed or took over 2 s.
async fn timed(http: &reqwest::Client, url: &str) -> Option<f64> {
    let t = Instant::now();
    let ok = tokio::time::timeout(Duration::from_secs(2), http.get(url).send())
        .await
        .ok()?
        .ok()?
        .status()
        .is_success();
    ok.then(|| t.elapsed().as_secs_f64() * 1000.0)
}

fn worst_and_p99(mut v: Vec<f64>) -> (f64, f64, usize) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let p99 = v
        .get((n * 99 / 100).min(n.saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    (v.last().copied().unwrap_or(0.0), p99, n)
}

pub async fn overload(o: &Opts) -> Result<(), String> {
    let events = o.events.unwrap_or(100_000);
    let seconds = if o.seconds > 0.0 { o.seconds } else { 60.0 };
    let sc = Scenario {
        name: "overload",
        events,
        ..scenario("drain", o)
    };
    eprintln!(
        "== overload: {events} events backlog, target limited to {RATE}/s, ackWait {ACK_WAIT_MS} ms, {seconds:.0} s ({})",
        uptime_line()
    );
    let nats = start_nats().await?;
    let sink = Sink::start(SinkOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let js = jetstream::new(client);
    let bus = Bus::connect(nats.url()).await.map_err(|e| e.to_string())?;
    let s = js
        .get_or_create_stream(stream::Config {
            name: "HMS_EVENTS".into(),
            subjects: vec!["flood.>".into(), "hms.replay.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create HMS_EVENTS: {e}"))?;
    let name = "flood_c0";
    let mut config = pull_config(
        name,
        vec![topic(0), format!("hms.replay.{name}")],
        consumer::DeliverPolicy::All,
    );
    config.ack_wait = Duration::from_millis(ACK_WAIT_MS);
    s.create_consumer(config)
        .await
        .map_err(|e| format!("create consumer: {e}"))?;
    publish(&bus, &[topic(0)], &sc, o.payload_bytes, None, "publish").await?;
    eprintln!("   published {events} events");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.path().join("connectors")).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.path().join("connectors/c0.yaml"),
        format!(
            "id: flood.c0\ntype: outbound\ntrigger:\n  topic: {}\nmap:\n  to:\n    url: \"{}/item/roadwork/{{permitId}}\"\n    method: PATCH\n    body:\n      status: \"{{{{ status }}}}\"\nrateLimit: {{ perSecond: {RATE} }}\n",
            topic(0),
            sink.url()
        ),
    )
    .map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    let cfg = dir.path().join("hms-sync.yaml");
    std::fs::write(
        &cfg,
        format!(
            "nats:\n  url: {}\n  embedded: false\nhttp:\n  listen: 127.0.0.1:{port}\nconnectors:\n  dir: connectors\ndelivery:\n  ackWaitMs: {ACK_WAIT_MS}\n",
            nats.url()
        ),
    )
    .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.path().join("hms-sync.log")).map_err(|e| e.to_string())?;
    let mut child = Command::new(hms_bin())
        .args(["--config"])
        .arg(&cfg)
        .arg("up")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start hms-sync: {e}"))?;
    let pid = child.id();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while timed(&http, &format!("{base}/readyz")).await.is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            return Err("hms-sync not ready within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = Instant::now();
    let (mut healthz, mut metrics, mut failed) = (Vec::new(), Vec::new(), 0u64);
    while t0.elapsed().as_secs_f64() < seconds {
        match timed(&http, &format!("{base}/healthz")).await {
            Some(ms) => healthz.push(ms),
            None => failed += 1,
        }
        match timed(&http, &format!("{base}/metrics")).await {
            Some(ms) => metrics.push(ms),
            None => failed += 1,
        }
        progress(&format!(
            "   {:.0}/{seconds:.0} s: {} delivered, RSS {:.1} MB",
            t0.elapsed().as_secs_f64(),
            sink.delivered(),
            status_mb(pid, "VmRSS:").unwrap_or(0.0)
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress("");
    let peak = status_mb(pid, "VmHWM:").unwrap_or(0.0);
    let info = js
        .get_stream("HMS_EVENTS")
        .await
        .map_err(|e| e.to_string())?
        .consumer_info(name)
        .await
        .map_err(|e| e.to_string())?;
    let summary = sink.summary();
    let stop = Instant::now();
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let stopped = stop.elapsed().as_secs_f64();
    let (h_worst, h_p99, hn) = worst_and_p99(healthz);
    let (m_worst, m_p99, mn) = worst_and_p99(metrics);
    let elapsed = t0.elapsed().as_secs_f64();
    println!("overload: {events} events backlog, rateLimit {RATE}/s, ackWaitMs {ACK_WAIT_MS}, {elapsed:.0} s");
    println!(
        "  delivered            {} ({:.1}/s)",
        sink.delivered(),
        sink.delivered() as f64 / elapsed
    );
    println!("  duplicates at target {}", summary.duplicates);
    println!(
        "  JetStream            delivered seq {} (consumer seq {}), redelivered now {}, ack pending {}",
        info.delivered.stream_sequence,
        info.delivered.consumer_sequence,
        info.num_redelivered,
        info.num_ack_pending
    );
    println!("  peak RSS             {peak:.1} MB");
    println!("  /healthz             worst {h_worst:.1} ms, p99 {h_p99:.1} ms ({hn} samples)");
    println!("  /metrics             worst {m_worst:.1} ms, p99 {m_p99:.1} ms ({mn} samples)");
    println!("  failed or over 2 s   {failed}");
    println!("  SIGTERM to exit      {stopped:.2} s");
    Ok(())
}
