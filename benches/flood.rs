//! Flood bench (issue 8): hms-sync against synthetic event floods, beside two baselines.
//!
//! Run: `cargo bench --bench flood -- <scenario>|all [--events N] [--payload-bytes B] [--json FILE]`
//! (more options: `--help`). Scenarios: `drain`, `fanout`, `steady`, `flaky`, `ordered`, `idle`.
//!
//! Per scenario the bench starts its own nats-server (free port, temp store, killed at the end)
//! and a loopback target (200 for every request, or 503 for a fraction of them; records when
//! each event arrived), then runs, one after the other on the same events:
//! (a) `ceiling`: a durable pull consumer acking each message, nothing else;
//! (b) `naive`: pull -> string-replace template -> reqwest PATCH -> ack, 64 in flight;
//! (c) `hms-sync`: the release binary `hms-sync up` as a child process, every guarantee on
//!     (durable consumers, explicit acks, audit, metrics, per-endpoint permits).
//! hms-sync runs as a child so that its CPU time and peak RSS (`/proc/<pid>/stat`, `VmHWM`) are
//! its own; the baselines run in this process on their own 2-thread runtime, whose threads'
//! CPU time is read from `/proc/self/task`. nats-server and the target share the machine with
//! whichever system runs; their CPU time is reported in their own columns.
//!
//! Traffic goes to 127.0.0.1 only; every wait is bounded, and the bench stops by itself.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream, AckKind};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const SCENARIOS: [&str; 6] = ["drain", "fanout", "steady", "flaky", "ordered", "idle"];
/// Requests in flight: hms-sync's default `delivery.maxInFlight` and endpoint `maxInFlight`.
const IN_FLIGHT: usize = 64;
/// Messages per pull request, as hms-sync's default `delivery.pullBatch`.
const PULL_BATCH: usize = 128;
const MAX_ACK_PENDING: i64 = 10_000;
/// Retry delay of the `flaky` scenario (connector `backoffMs`, naive NAK delay).
const FLAKY_BACKOFF_MS: u64 = 50;

const USAGE: &str =
    "usage: cargo bench --bench flood -- <drain|fanout|steady|flaky|ordered|idle|all>...
       cargo bench --bench flood -- audit-store   (what storing one audit record costs, by way
                      of storing: JetStream publish with Nats-Msg-Id and ack / without the id /
                      plain publish; CPU of nats-server and of the publisher per record)
  --events N          events per scenario (drain 100000, fanout 100000 over 10 connectors,
                      flaky/ordered/idle 20000; steady: rate x seconds)
  --payload-bytes B   size of each event (default 256)
  --rate R            steady: events per second (default 2000)
  --seconds S         steady: duration (default 20)
  --fail F            flaky: fraction answered 503 (default 0.1)
  --connectors C      idle: connectors deployed (default 1000)
  --idle-seconds S    idle: measuring window of the idle connectors (default 10)
  --only SYSTEMS      comma list of ceiling,naive,hms-sync (default all three)
  --hms-log FILTER    HMS_SYNC_LOG for the hms-sync child (default: its own default, info)
  --perf DIR          record `perf record -F 199 --call-graph dwarf` of the hms-sync child into DIR
                      (FLOOD_PERF_HZ sets the frequency)
environment: NATS_SERVER_BIN (nats-server to run), FLOOD_HMS_BIN (hms-sync binary to measure
                      instead of this build's, e.g. an older build for an A/B comparison)
  --repeat N          run each scenario N times (fresh nats-server each time) and report, per
                      system, the round with the median result (events/s; steady: p99) with
                      the medians of the per-round ratios and the spread (default 1)
  --json FILE         also write every result as JSON";

#[derive(Clone)]
struct Opts {
    scenarios: Vec<String>,
    events: Option<u64>,
    payload_bytes: usize,
    rate: f64,
    seconds: f64,
    fail: f64,
    connectors: usize,
    idle_seconds: f64,
    systems: Vec<String>,
    hms_log: Option<String>,
    perf: Option<PathBuf>,
    json: Option<PathBuf>,
    repeat: usize,
    audit_store: bool,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        scenarios: vec![],
        events: None,
        payload_bytes: 256,
        rate: 2000.0,
        seconds: 20.0,
        fail: 0.1,
        connectors: 1000,
        idle_seconds: 10.0,
        systems: vec!["ceiling".into(), "naive".into(), "hms-sync".into()],
        hms_log: None,
        perf: None,
        json: None,
        repeat: 1,
        audit_store: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let num = |s: String| s.parse::<f64>().map_err(|e| format!("{s}: {e}"));
        match a.as_str() {
            "--bench" => {} // added by `cargo bench`
            "--help" | "-h" => return Err(String::new()),
            "--events" => o.events = Some(num(val(&a)?)? as u64),
            "--payload-bytes" => o.payload_bytes = num(val(&a)?)? as usize,
            "--rate" => o.rate = num(val(&a)?)?,
            "--seconds" => o.seconds = num(val(&a)?)?,
            "--fail" => o.fail = num(val(&a)?)?,
            "--connectors" => o.connectors = (num(val(&a)?)? as usize).max(1),
            "--idle-seconds" => o.idle_seconds = num(val(&a)?)?,
            "--only" => o.systems = val(&a)?.split(',').map(str::to_string).collect(),
            "--hms-log" => o.hms_log = Some(val(&a)?),
            "--perf" => o.perf = Some(PathBuf::from(val(&a)?)),
            "--json" => o.json = Some(PathBuf::from(val(&a)?)),
            "--repeat" => o.repeat = (num(val(&a)?)? as usize).max(1),
            "all" => o.scenarios.extend(SCENARIOS.iter().map(|s| s.to_string())),
            "audit-store" => o.audit_store = true,
            s if SCENARIOS.contains(&s) => o.scenarios.push(s.to_string()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.scenarios.is_empty() && !o.audit_store {
        return Err("name a scenario, or all".into());
    }
    Ok(o)
}

fn main() -> std::process::ExitCode {
    // `cargo test --all-targets` runs bench binaries too (without `--bench`): not a bench run.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("flood: a bench; run it with `cargo bench --bench flood -- <scenario>|all`");
        return std::process::ExitCode::SUCCESS;
    }
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("tokio runtime")
    };
    // Baselines and target each on their own threads, so that their CPU time can be told apart.
    let (sys, tgt) = (runtime("fl-sys"), runtime("fl-tgt"));
    let ctl = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if opts.audit_store {
        // On the fl-sys threads, whose CPU time is the publisher's.
        let run = sys.spawn(audit_store(opts.events.unwrap_or(60_000)));
        match sys.block_on(run) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("audit-store: {e}");
                return std::process::ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("audit-store: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    if opts.scenarios.is_empty() {
        return std::process::ExitCode::SUCCESS;
    }
    let results = ctl.block_on(run_all(&opts, sys.handle().clone(), tgt.handle().clone()));
    print_table(&results);
    if let Some(path) = &opts.json {
        let json = serde_json::to_string_pretty(&results).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("{}: {e}", path.display());
        } else {
            eprintln!("results written to {}", path.display());
        }
    }
    sys.shutdown_timeout(Duration::from_secs(2));
    tgt.shutdown_timeout(Duration::from_secs(2));
    std::process::ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// What one scenario asks for.
#[derive(Clone)]
struct Scenario {
    name: &'static str,
    /// Connectors with events (one topic each).
    busy: usize,
    /// Connectors deployed without events (idle scenario).
    idle: usize,
    /// Events in total (spread round-robin over the busy topics).
    events: u64,
    /// Published before the consumers run (backlog drain), else while they run.
    backlog: bool,
    /// Events per second while publishing live (`None`: as fast as possible).
    rate: Option<f64>,
    fail: f64,
    /// Distinct `permitId`s (ordering keys); 0: one per event.
    keys: u64,
    ordered: bool,
}

fn scenario(name: &str, o: &Opts) -> Scenario {
    let base = Scenario {
        name: "drain",
        busy: 1,
        idle: 0,
        events: o.events.unwrap_or(100_000),
        backlog: true,
        rate: None,
        fail: 0.0,
        keys: 0,
        ordered: false,
    };
    match name {
        "fanout" => Scenario {
            name: "fanout",
            busy: 10,
            ..base
        },
        "steady" => Scenario {
            name: "steady",
            events: (o.rate * o.seconds) as u64,
            backlog: false,
            rate: Some(o.rate),
            ..base
        },
        "flaky" => Scenario {
            name: "flaky",
            events: o.events.unwrap_or(20_000),
            fail: o.fail,
            ..base
        },
        "ordered" => Scenario {
            name: "ordered",
            events: o.events.unwrap_or(20_000),
            keys: 100,
            ordered: true,
            ..base
        },
        "idle" => Scenario {
            name: "idle",
            idle: o.connectors - 1,
            events: o.events.unwrap_or(20_000),
            backlog: false,
            ..base
        },
        _ => base,
    }
}

fn topic(i: usize) -> String {
    format!("flood.t{i}")
}

async fn run_all(o: &Opts, sys: Handle, tgt: Handle) -> Vec<PhaseResult> {
    let mut all = Vec::new();
    for name in &o.scenarios {
        let sc = scenario(name, o);
        eprintln!(
            "== {}: {} events, {} busy + {} idle connectors, {} ({})",
            sc.name,
            sc.events,
            sc.busy,
            sc.idle,
            if sc.backlog {
                "backlog drain"
            } else {
                "published live"
            },
            uptime_line()
        );
        let mut rounds = Vec::new();
        for round in 0..o.repeat {
            if o.repeat > 1 {
                eprintln!(
                    "-- {} round {}/{} ({})",
                    sc.name,
                    round + 1,
                    o.repeat,
                    uptime_line()
                );
            }
            match run_scenario(&sc, o, &sys, &tgt).await {
                Ok(mut rs) => {
                    add_ratios(&mut rs);
                    rounds.push(rs);
                }
                Err(e) => {
                    eprintln!("{}: cannot run: {e}", sc.name);
                    all.push(PhaseResult {
                        scenario: sc.name.into(),
                        system: "error".into(),
                        note: e,
                        ..Default::default()
                    });
                }
            }
        }
        all.extend(median_rounds(rounds, sc.rate.is_some()));
    }
    all
}

/// Per system, the round with the median result (events/s; `by_p99`: p99 latency), carrying the
/// medians of the per-round ratios (each ratio is between systems of the same round, seconds
/// apart) and a note with the spread. One round: unchanged.
fn median_rounds(rounds: Vec<Vec<PhaseResult>>, by_p99: bool) -> Vec<PhaseResult> {
    if rounds.len() <= 1 {
        return rounds.into_iter().flatten().collect();
    }
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let systems: Vec<String> = rounds[0].iter().map(|r| r.system.clone()).collect();
    let mut out = Vec::new();
    for system in systems {
        let mut of: Vec<PhaseResult> = rounds
            .iter()
            .filter_map(|rs| rs.iter().find(|r| r.system == system).cloned())
            .collect();
        let key = |r: &PhaseResult| if by_p99 { r.p99_ms } else { r.events_per_s };
        of.sort_by(|a, b| key(a).total_cmp(&key(b)));
        let Some(mut m) = of.get(of.len() / 2).cloned() else {
            continue;
        };
        let ratios = |f: fn(&PhaseResult) -> Option<f64>| median(of.iter().filter_map(f).collect());
        m.vs_ceiling = ratios(|r| r.vs_ceiling);
        m.vs_naive = ratios(|r| r.vs_naive);
        m.p99_vs_naive = ratios(|r| r.p99_vs_naive);
        m.cpu_per_event_vs_naive = ratios(|r| r.cpu_per_event_vs_naive);
        let list = |f: fn(&PhaseResult) -> f64, digits: usize| {
            of.iter()
                .map(|r| format!("{:.digits$}", f(r)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut note = format!(
            "median of {} rounds; events/s {}; p99 ms {}; us/evt {}",
            of.len(),
            list(|r| r.events_per_s, 0),
            list(|r| r.p99_ms, 1),
            list(|r| r.cpu_us_per_event, 1)
        );
        if system == "hms-sync" {
            let per_round = of
                .iter()
                .map(|r| opt(r.vs_naive, 2))
                .collect::<Vec<_>>()
                .join(" ");
            note.push_str(&format!("; x naiv per round {per_round}"));
        }
        m.note = if m.note.is_empty() {
            note
        } else {
            format!("{}; {note}", m.note)
        };
        out.push(m);
    }
    out
}

async fn run_scenario(
    sc: &Scenario,
    o: &Opts,
    sys: &Handle,
    tgt: &Handle,
) -> Result<Vec<PhaseResult>, String> {
    let nats = NatsServer::start().await?;
    let sink = Arc::new(Sink::new(sc.events as usize));
    let target_addr = start_target(tgt, sink.clone()).await?;
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let js = jetstream::new(client.clone());
    let events_stream = js
        .get_or_create_stream(stream::Config {
            name: "HMS_EVENTS".into(),
            subjects: vec!["flood.>".into(), "hms.replay.>".into()],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create HMS_EVENTS: {e}"))?;
    if sc.idle > 0 {
        let account = js.query_account().await.ok();
        eprintln!(
            "   limits: HMS_EVENTS max_consumers {} (0/-1: none of its own), account max_consumers {:?}",
            events_stream.cached_info().config.max_consumers,
            account.map(|a| a.limits.max_consumers)
        );
    }
    let topics: Vec<String> = (0..sc.busy).map(topic).collect();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    if sc.backlog {
        // hms-sync keeps the position of a consumer that exists: made here, it reads the backlog.
        for (i, t) in topics.iter().enumerate() {
            let name = format!("flood_c{i}");
            events_stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subjects: vec![t.clone(), format!("hms.replay.{name}")],
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_deliver: -1,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("create consumer {name}: {e}"))?;
        }
        let t0 = Instant::now();
        publish(&js, &topics, sc, o.payload_bytes, None, "publish").await?;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "   published {} events in {secs:.2} s ({:.0}/s, JetStream async publish)",
            sc.events,
            sc.events as f64 / secs
        );
    }
    let mut out = Vec::new();
    let fail_ppm = (sc.fail * 1e6) as u32;
    for system in ["ceiling", "naive", "hms-sync"] {
        if !o.systems.iter().any(|s| s == system) {
            continue;
        }
        sink.reset(fail_ppm, if sc.ordered { sc.keys } else { 0 });
        let r = match system {
            "hms-sync" => run_hms(sc, o, &nats, &js, &topics, target_addr, &sink, dir.path()).await,
            _ => run_baseline(system, sc, o, &nats, &js, &topics, target_addr, &sink, sys).await,
        };
        match r {
            Ok(r) => out.push(r),
            Err(e) => {
                eprintln!("   {system}: {e}");
                out.push(PhaseResult {
                    scenario: sc.name.into(),
                    system: system.into(),
                    note: e,
                    ..Default::default()
                });
            }
        }
    }
    drop(client);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Publishing

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A permit event like the seed's, with its sequence and publish time, padded to `bytes`.
fn payload(seq: u64, keys: u64, bytes: usize) -> Bytes {
    let permit = if keys > 0 { seq % keys } else { seq };
    let mut s = format!(
        r#"{{"permitId":"RW-{permit}","agency":"DDOT","startDate":"2024-05-10","endDate":"2024-05-12","status":"APPROVED","seq":{seq},"sentAtNs":{},"note":""#,
        now_ns()
    );
    while s.len() + 2 < bytes {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

/// Publishes `sc.events` events round-robin over `topics` with JetStream async publish (at
/// most 4096 acks outstanding), paced at `rate` per second when given.
async fn publish(
    js: &jetstream::Context,
    topics: &[String],
    sc: &Scenario,
    bytes: usize,
    rate: Option<f64>,
    label: &str,
) -> Result<(), String> {
    let mut acks = VecDeque::new();
    let start = Instant::now();
    let mut last_print = Instant::now();
    for seq in 0..sc.events {
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(seq as f64 / rate);
            let elapsed = start.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
        let subject = topics[(seq as usize) % topics.len()].clone();
        let ack = js
            .publish(subject, payload(seq, sc.keys, bytes))
            .await
            .map_err(|e| format!("publish: {e}"))?;
        acks.push_back(ack);
        if acks.len() >= 4096 {
            if let Some(a) = acks.pop_front() {
                a.await.map_err(|e| format!("publish ack: {e}"))?;
            }
        }
        if last_print.elapsed() > Duration::from_millis(250) {
            last_print = Instant::now();
            progress(&format!("{label}: {seq}/{}", sc.events));
        }
    }
    for a in acks {
        a.await.map_err(|e| format!("publish ack: {e}"))?;
    }
    progress("");
    Ok(())
}

fn progress(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "\r{line:<100}\r");
    let _ = e.flush();
}

// ---------------------------------------------------------------------------------------------
// The target (and the ceiling's record of acks)

/// What arrived, per event sequence: publish->arrival latency in µs + 1 (0: not yet).
struct Sink {
    latency: Vec<AtomicU64>,
    expected: AtomicU64,
    unique: AtomicU64,
    duplicates: AtomicU64,
    answered_503: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    fail_ppm: AtomicU32,
    /// Per ordering key, the last sequence + 1 seen (order check of the `ordered` scenario).
    keys: AtomicU64,
    key_last: Vec<AtomicU64>,
    order_violations: AtomicU64,
}

impl Sink {
    fn new(n: usize) -> Sink {
        Sink {
            latency: (0..n).map(|_| AtomicU64::new(0)).collect(),
            expected: AtomicU64::new(n as u64),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            answered_503: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            fail_ppm: AtomicU32::new(0),
            keys: AtomicU64::new(0),
            key_last: (0..1024).map(|_| AtomicU64::new(0)).collect(),
            order_violations: AtomicU64::new(0),
        }
    }

    fn reset(&self, fail_ppm: u32, keys: u64) {
        for a in self.latency.iter().chain(&self.key_last) {
            a.store(0, Relaxed);
        }
        for a in [
            &self.unique,
            &self.duplicates,
            &self.answered_503,
            &self.last_ns,
            &self.order_violations,
        ] {
            a.store(0, Relaxed);
        }
        self.first_ns.store(u64::MAX, Relaxed);
        self.fail_ppm.store(fail_ppm, Relaxed);
        self.keys.store(keys.min(1024), Relaxed);
    }

    /// Whether this request should fail (503).
    fn fails(&self) -> bool {
        let ppm = self.fail_ppm.load(Relaxed);
        ppm > 0 && rand::random::<u32>() % 1_000_000 < ppm
    }

    fn record(&self, seq: u64, sent_ns: u64) {
        let now = now_ns();
        let Some(slot) = self.latency.get(seq as usize) else {
            return;
        };
        let us = now.saturating_sub(sent_ns) / 1000 + 1;
        if slot.compare_exchange(0, us, Relaxed, Relaxed).is_err() {
            self.duplicates.fetch_add(1, Relaxed);
            return;
        }
        self.first_ns.fetch_min(now, Relaxed);
        self.last_ns.fetch_max(now, Relaxed);
        let keys = self.keys.load(Relaxed);
        if keys > 0 {
            let prev = self.key_last[(seq % keys) as usize].fetch_max(seq + 1, Relaxed);
            if prev > seq + 1 {
                self.order_violations.fetch_add(1, Relaxed);
            }
        }
        self.unique.fetch_add(1, Relaxed);
    }

    fn done(&self) -> bool {
        self.unique.load(Relaxed) >= self.expected.load(Relaxed)
    }

    /// Live scenarios: the worst latency per second of publishing (events are published
    /// in sequence at `rate`), to tell a start-up stall from periodic ones.
    fn timeline(&self, rate: f64) -> Vec<f64> {
        let per = rate.max(1.0) as usize;
        self.latency
            .chunks(per)
            .map(|c| c.iter().map(|a| a.load(Relaxed)).max().unwrap_or(0) as f64 / 1000.0)
            .collect()
    }

    fn histogram(&self) -> hdrhistogram::Histogram<u64> {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("histogram bounds");
        for a in &self.latency {
            let v = a.load(Relaxed);
            if v > 0 {
                h.saturating_record(v);
            }
        }
        h
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

/// Starts the loopback target on `rt`: 200 for every request (503 for the sink's fail
/// fraction), recording the event in `X-Seq` sent at `X-Sent-At-Ns`.
async fn start_target(rt: &Handle, sink: Arc<Sink>) -> Result<std::net::SocketAddr, String> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new().fallback(move |headers: HeaderMap, _body: Bytes| {
        let sink = sink.clone();
        async move {
            if sink.fails() {
                sink.answered_503.fetch_add(1, Relaxed);
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            if let (Some(seq), Some(sent)) = (
                header_u64(&headers, "x-seq"),
                header_u64(&headers, "x-sent-at-ns"),
            ) {
                sink.record(seq, sent);
            }
            StatusCode::OK
        }
    });
    rt.spawn(async move {
        match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => {
                let _ = axum::serve(l, app).await;
            }
            Err(e) => eprintln!("target: {e}"),
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// nats-server

fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/nats-server/bin/nats-server");
    if local.exists() {
        local
    } else {
        PathBuf::from("nats-server")
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// A nats-server of this scenario alone (own port and store), killed on drop.
struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    async fn start() -> Result<NatsServer, String> {
        let store = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port()?;
        let child = Command::new(nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-js",
                "--store_dir",
            ])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start nats-server (scripts/install-nats-server.sh): {e}"))?;
        let server = NatsServer {
            child,
            port,
            _store: store,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("nats-server did not answer within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn cpu(&self) -> f64 {
        proc_cpu(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// CPU and memory from /proc

/// User + system CPU seconds from a `/proc/.../stat` file (0 when unreadable).
fn proc_cpu(path: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(3) ... utime(14) stime(15).
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

/// CPU seconds of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|t| proc_cpu(&t.path().join("stat").to_string_lossy()))
        .sum()
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in MB.
fn status_mb(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn uptime_line() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| {
            let l: Vec<&str> = s.split_whitespace().take(3).collect();
            format!("load {}", l.join(" "))
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Waiting for a phase to finish

/// Waits until every event arrived or `limit` passed, with a progress line.
async fn wait_drained(label: &str, sink: &Sink, limit: Duration) -> bool {
    let start = Instant::now();
    let n = sink.expected.load(Relaxed);
    let (mut last_n, mut last_t) = (0u64, Instant::now());
    loop {
        if sink.done() {
            progress("");
            return false;
        }
        if start.elapsed() > limit {
            progress("");
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let got = sink.unique.load(Relaxed);
        let rate = (got - last_n) as f64 / last_t.elapsed().as_secs_f64();
        (last_n, last_t) = (got, Instant::now());
        progress(&format!(
            "   {label}: {got}/{n} delivered, {rate:.0}/s, 503s {}, {:.0} s",
            sink.answered_503.load(Relaxed),
            start.elapsed().as_secs_f64()
        ));
    }
}

fn phase_limit(sc: &Scenario) -> Duration {
    let publish = sc.rate.map_or(0.0, |r| sc.events as f64 / r);
    Duration::from_secs_f64(60.0 + publish + sc.events as f64 / 2000.0)
}

// ---------------------------------------------------------------------------------------------
// Baselines

const NAIVE_TEMPLATE: &str =
    r#"{"start_date":"{{startDate}}","end_date":"{{endDate}}","status":"{{status}}"}"#;

/// Value of a numeric JSON field, found by text (the ceiling parses nothing else).
fn field_u64(payload: &[u8], key: &str) -> Option<u64> {
    let s = std::str::from_utf8(payload).ok()?;
    let at = s.find(key)? + key.len();
    let digits: String = s[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One naive delivery: parse, string-replace the template, PATCH, ack (NAK with delay on
/// failure).
async fn naive_one(http: &reqwest::Client, base: &str, m: jetstream::Message, backoff: Duration) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) else {
        let _ = m.ack().await;
        return;
    };
    if v["agency"] != "DDOT" {
        let _ = m.ack().await;
        return;
    }
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let body = NAIVE_TEMPLATE
        .replace("{{startDate}}", &s("startDate"))
        .replace("{{endDate}}", &s("endDate"))
        .replace("{{status}}", &s("status"));
    let url = format!("{base}/item/roadwork/{}", s("permitId"));
    let sent = http
        .patch(url)
        .header("content-type", "application/json")
        .header("x-seq", v["seq"].to_string())
        .header("x-sent-at-ns", v["sentAtNs"].to_string())
        .body(body)
        .send()
        .await;
    let ok = match sent {
        Ok(r) => {
            let ok = r.status().is_success();
            let _ = r.bytes().await;
            ok
        }
        Err(_) => false,
    };
    if ok {
        let _ = m.ack().await;
    } else {
        let _ = m.ack_with(AckKind::Nak(Some(backoff))).await;
    }
}

/// The baseline's consumers: one per topic, created now (backlog: from the start of the
/// stream; live: new messages only).
async fn baseline_consumers(
    url: &str,
    system: &str,
    topics: &[String],
    backlog: bool,
) -> Result<Vec<consumer::PullConsumer>, String> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream("HMS_EVENTS")
        .await
        .map_err(|e| format!("HMS_EVENTS: {e}"))?;
    let mut out = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let c: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("bench_{system}_{i}")),
                filter_subject: t.clone(),
                deliver_policy: if backlog {
                    consumer::DeliverPolicy::All
                } else {
                    consumer::DeliverPolicy::New
                },
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: -1,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("create consumer: {e}"))?;
        out.push(c);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn run_baseline(
    system: &str,
    sc: &Scenario,
    o: &Opts,
    nats: &NatsServer,
    js: &jetstream::Context,
    topics: &[String],
    target: std::net::SocketAddr,
    sink: &Arc<Sink>,
    rt: &Handle,
) -> Result<PhaseResult, String> {
    let label = format!("{} {system}", sc.name);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let (url, sys, topics_owned, backlog) =
        (nats.url(), system.to_string(), topics.to_vec(), sc.backlog);
    let s = sink.clone();
    let base = format!("http://{target}");
    let backoff = Duration::from_millis(FLAKY_BACKOFF_MS);
    let (cpu0, nats0, tgt0) = (threads_cpu("fl-sys"), nats.cpu(), threads_cpu("fl-tgt"));
    let task = rt.spawn(async move {
        let streams = match baseline_consumers(&url, &sys, &topics_owned, backlog).await {
            Ok(s) => s,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        let mut loops = JoinSet::new();
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let http = reqwest::Client::new();
        for c in streams {
            let (s, permits, http, base, sys) = (
                s.clone(),
                permits.clone(),
                http.clone(),
                base.clone(),
                sys.clone(),
            );
            loops.spawn(async move {
                if sys == "ceiling" {
                    // One pull request per batch: the continuous pull stream stalled now and
                    // then for the ceiling's fast acks (see BENCHMARKS.md).
                    loop {
                        let batch = c
                            .batch()
                            .max_messages(PULL_BATCH)
                            .expires(Duration::from_millis(500))
                            .messages()
                            .await;
                        let Ok(mut batch) = batch else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        while let Some(Ok(m)) = batch.next().await {
                            let seq = field_u64(&m.payload, "\"seq\":");
                            let sent = field_u64(&m.payload, "\"sentAtNs\":");
                            let _ = m.ack().await;
                            if let (Some(seq), Some(sent)) = (seq, sent) {
                                s.record(seq, sent);
                            }
                        }
                    }
                }
                // The naive loop pulls like hms-sync (`Bus::open_consumer`).
                let Ok(mut messages) = c
                    .stream()
                    .max_messages_per_batch(PULL_BATCH)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
                else {
                    return;
                };
                let mut inflight = JoinSet::new();
                loop {
                    while inflight.try_join_next().is_some() {}
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let Some(Ok(m)) = messages.next().await else {
                        return;
                    };
                    let (http, base) = (http.clone(), base.clone());
                    inflight.spawn(async move {
                        naive_one(&http, &base, m, backoff).await;
                        drop(permit);
                    });
                }
            });
        }
        while loops.join_next().await.is_some() {}
    });
    let ready = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
    match ready {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        _ => {
            task.abort();
            return Err("consumers not ready within 30 s".into());
        }
    }
    let t0 = Instant::now();
    if !sc.backlog {
        publish(js, topics, sc, o.payload_bytes, sc.rate, &label).await?;
    }
    let timed_out = wait_drained(&label, sink, phase_limit(sc)).await;
    let wall = t0.elapsed().as_secs_f64();
    task.abort();
    let _ = task.await;
    // Leave the stream's consumer count to hms-sync (the idle scenario deploys 1,000).
    if let Ok(stream) = js.get_stream("HMS_EVENTS").await {
        for i in 0..topics.len() {
            let _ = stream.delete_consumer(&format!("bench_{system}_{i}")).await;
        }
    }
    let mut r = PhaseResult::from_sink(sc, system, sink, timed_out);
    r.cpu_s = threads_cpu("fl-sys") - cpu0;
    r.nats_cpu_s = nats.cpu() - nats0;
    r.target_cpu_s = threads_cpu("fl-tgt") - tgt0;
    r.finish(wall);
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// hms-sync as a child process

fn connector_yaml(i: usize, sc: &Scenario, target: std::net::SocketAddr) -> String {
    let ordering = if sc.ordered {
        "\n  orderingKey: \"{{ permitId }}\""
    } else {
        ""
    };
    let retry = if sc.fail > 0.0 {
        format!("retry:\n  max: 10\n  backoffMs: {FLAKY_BACKOFF_MS}\n")
    } else {
        "retry:\n  max: 5\n  backoffMs: 3000\n".to_string()
    };
    format!(
        r#"id: flood.c{i}
type: outbound
trigger:
  topic: {topic}
  filter: object.agency == "DDOT"{ordering}
map:
  from: canonical
  to:
    url: "http://{target}/item/roadwork/{{permitId}}"
    method: PATCH
    headers:
      X-Seq: "{{{{ seq }}}}"
      X-Sent-At-Ns: "{{{{ sentAtNs }}}}"
    body:
      start_date: "{{{{ startDate }}}}"
      end_date: "{{{{ endDate }}}}"
      status: "{{{{ status }}}}"
{retry}"#,
        topic = topic(i)
    )
}

/// The hms-sync child: SIGTERM (it drains), then killed if it has not stopped within 30 s.
struct HmsChild {
    child: Child,
    perf: Option<Child>,
}

impl HmsChild {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn cpu(&self) -> f64 {
        proc_cpu(&format!("/proc/{}/stat", self.pid()))
    }
    fn stop(&mut self) {
        if let Some(p) = &mut self.perf {
            // SAFETY: plain signal to our own child.
            unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
            let _ = p.wait();
        }
        self.perf = None;
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HmsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_hms(
    sc: &Scenario,
    o: &Opts,
    nats: &NatsServer,
    js: &jetstream::Context,
    topics: &[String],
    target: std::net::SocketAddr,
    sink: &Arc<Sink>,
    dir: &Path,
) -> Result<PhaseResult, String> {
    let label = format!("{} hms-sync", sc.name);
    let conn_dir = dir.join("connectors");
    let _ = std::fs::remove_dir_all(&conn_dir);
    std::fs::create_dir_all(&conn_dir).map_err(|e| e.to_string())?;
    for i in 0..sc.busy + sc.idle {
        std::fs::write(
            conn_dir.join(format!("c{i:04}.yaml")),
            connector_yaml(i, sc, target),
        )
        .map_err(|e| e.to_string())?;
    }
    let http_port = free_port()?;
    let cfg = dir.join("hms-sync.yaml");
    std::fs::write(
        &cfg,
        format!(
            "nats:\n  url: {}\n  embedded: false\nhttp:\n  listen: 127.0.0.1:{http_port}\nconnectors:\n  dir: connectors\ndelivery:\n  maxInFlight: {IN_FLIGHT}\n  pullBatch: {PULL_BATCH}\n  maxAckPending: {MAX_ACK_PENDING}\n",
            nats.url()
        ),
    )
    .map_err(|e| e.to_string())?;
    let log_path = dir.join("hms-sync.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(hms_bin());
    cmd.arg("--config")
        .arg(&cfg)
        .arg("up")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(filter) = &o.hms_log {
        cmd.env("HMS_SYNC_LOG", filter);
    }
    if !sc.backlog {
        // A new consumer starts 1 s before `up` started (Runtime::start's margin): let the
        // baselines' live events fall out of that window.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let (nats0, tgt0) = (nats.cpu(), threads_cpu("fl-tgt"));
    let spawned = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("start {}: {e}", hms_bin().display()))?;
    let mut hms = HmsChild { child, perf: None };
    eprintln!("   hms-sync pid {}", hms.pid());
    if let Some(perf_dir) = &o.perf {
        let _ = std::fs::create_dir_all(perf_dir);
        hms.perf = Command::new("perf")
            .args([
                "record",
                "-F",
                &perf_hz(),
                "--call-graph",
                "dwarf,8192",
                "-o",
            ])
            .arg(perf_dir.join(format!("{}.perf.data", sc.name)))
            .args(["-p", &hms.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("   perf: {e}"))
            .ok();
    }
    // Ready: every connector runs with its consumer in place.
    let http = reqwest::Client::new();
    let ready_url = format!("http://127.0.0.1:{http_port}/readyz");
    let startup = loop {
        if let Ok(Some(status)) = hms.child.try_wait() {
            return Err(format!(
                "hms-sync exited ({status}); see its log:\n{}",
                tail(&log_path, 20)
            ));
        }
        if spawned.elapsed() > Duration::from_secs(180) {
            return Err(format!(
                "not ready within 180 s; log:\n{}",
                tail(&log_path, 20)
            ));
        }
        let ok = tokio::time::timeout(Duration::from_secs(10), http.get(&ready_url).send())
            .await
            .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()));
        if ok {
            break spawned.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "   ready after {startup:.2} s ({} connectors)",
        sc.busy + sc.idle
    );
    let mut idle = None;
    if sc.idle > 0 {
        // Settle, then the idle window: nothing is published.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (c0, n0, t0) = (hms.cpu(), nats.cpu(), Instant::now());
        let secs = o.idle_seconds.max(1.0);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            progress(&format!(
                "   idle window: {:.0}/{secs:.0} s",
                t0.elapsed().as_secs_f64()
            ));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        progress("");
        let w = t0.elapsed().as_secs_f64();
        idle = Some((
            (hms.cpu() - c0) / w * 100.0,
            (nats.cpu() - n0) / w * 100.0,
            status_mb(hms.pid(), "VmRSS:"),
        ));
    }
    let t0 = Instant::now();
    if !sc.backlog {
        publish(js, topics, sc, o.payload_bytes, sc.rate, &label).await?;
    }
    let timed_out = wait_drained(&label, sink, phase_limit(sc)).await;
    let wall = t0.elapsed().as_secs_f64();
    let mut r = PhaseResult::from_sink(sc, "hms-sync", sink, timed_out);
    r.cpu_s = hms.cpu();
    r.peak_rss_mb = status_mb(hms.pid(), "VmHWM:");
    r.nats_cpu_s = nats.cpu() - nats0;
    r.target_cpu_s = threads_cpu("fl-tgt") - tgt0;
    r.startup_s = Some(startup);
    if let Some((cpu_pct, nats_pct, rss)) = idle {
        r.idle_cpu_pct_of_core = Some(cpu_pct);
        r.idle_nats_cpu_pct_of_core = Some(nats_pct);
        r.idle_rss_mb = rss;
    }
    r.note = if sc.backlog {
        "CPU from spawn (start-up included)".into()
    } else {
        "CPU from spawn (start-up, idle window included)".into()
    };
    hms.stop();
    r.log_lines = std::fs::read(&log_path)
        .ok()
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64);
    r.finish(wall);
    Ok(r)
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Default, Serialize)]
struct PhaseResult {
    scenario: String,
    system: String,
    events: u64,
    delivered: u64,
    duplicates: u64,
    answered_503: u64,
    order_violations: u64,
    timed_out: bool,
    /// First to last arrival at the target (ceiling: first to last ack).
    seconds: f64,
    events_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// CPU seconds of the system under test (hms-sync child process; baseline threads).
    cpu_s: f64,
    cpu_us_per_event: f64,
    nats_cpu_s: f64,
    target_cpu_s: f64,
    peak_rss_mb: Option<f64>,
    startup_s: Option<f64>,
    idle_cpu_pct_of_core: Option<f64>,
    idle_nats_cpu_pct_of_core: Option<f64>,
    idle_rss_mb: Option<f64>,
    /// Lines hms-sync wrote to its log (stderr).
    log_lines: Option<u64>,
    /// events/s relative to the ceiling and to the naive loop of the same scenario.
    vs_ceiling: Option<f64>,
    vs_naive: Option<f64>,
    p99_vs_naive: Option<f64>,
    cpu_per_event_vs_naive: Option<f64>,
    note: String,
    /// Steady: the worst publish->target latency of each second of publishing (ms).
    worst_ms_per_second: Vec<f64>,
}

impl PhaseResult {
    fn from_sink(sc: &Scenario, system: &str, sink: &Sink, timed_out: bool) -> PhaseResult {
        let h = sink.histogram();
        let ms = |v: u64| v.saturating_sub(1) as f64 / 1000.0;
        let first = sink.first_ns.load(Relaxed);
        let last = sink.last_ns.load(Relaxed);
        let delivered = sink.unique.load(Relaxed);
        let seconds = if last > first {
            (last - first) as f64 / 1e9
        } else {
            0.0
        };
        PhaseResult {
            scenario: sc.name.into(),
            system: system.into(),
            events: sc.events,
            delivered,
            duplicates: sink.duplicates.load(Relaxed),
            answered_503: sink.answered_503.load(Relaxed),
            order_violations: sink.order_violations.load(Relaxed),
            timed_out,
            seconds,
            events_per_s: if seconds > 0.0 {
                delivered as f64 / seconds
            } else {
                0.0
            },
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            worst_ms_per_second: sc.rate.map(|r| sink.timeline(r)).unwrap_or_default(),
            ..Default::default()
        }
    }

    fn finish(&mut self, wall: f64) {
        if self.delivered > 0 {
            self.cpu_us_per_event = self.cpu_s * 1e6 / self.delivered as f64;
        }
        eprintln!(
            "   {:<9} {:>9.0} events/s  p99 {:>8.2} ms  CPU {:>6.2} s  ({} of {} in {wall:.1} s{})",
            self.system,
            self.events_per_s,
            self.p99_ms,
            self.cpu_s,
            self.delivered,
            self.events,
            if self.timed_out { ", TIMED OUT" } else { "" }
        );
    }
}

fn add_ratios(rs: &mut [PhaseResult]) {
    let find = |name: &str| {
        rs.iter()
            .find(|r| r.system == name && r.delivered > 0)
            .cloned()
    };
    let (ceiling, naive) = (find("ceiling"), find("naive"));
    for r in rs.iter_mut().filter(|r| r.system == "hms-sync") {
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        if let Some(c) = &ceiling {
            r.vs_ceiling = ratio(r.events_per_s, c.events_per_s);
        }
        if let Some(n) = &naive {
            r.vs_naive = ratio(r.events_per_s, n.events_per_s);
            r.p99_vs_naive = ratio(r.p99_ms, n.p99_ms);
            r.cpu_per_event_vs_naive = ratio(r.cpu_us_per_event, n.cpu_us_per_event);
        }
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn print_table(rs: &[PhaseResult]) {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n{:<8} {:<9} {:>9} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>7} {:>7} {:>7}",
        "scenario",
        "system",
        "events/s",
        "x ceil",
        "x naiv",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "CPU s",
        "us/evt",
        "x naiv",
        "nats s",
        "tgt s",
        "RSS MB"
    );
    for r in rs {
        let _ = writeln!(
            t,
            "{:<8} {:<9} {:>9.0} {:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>7.1} {:>6} {:>7.2} {:>7.2} {:>7}{}",
            r.scenario,
            r.system,
            r.events_per_s,
            opt(r.vs_ceiling, 2),
            opt(r.vs_naive, 2),
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.cpu_s,
            r.cpu_us_per_event,
            opt(r.cpu_per_event_vs_naive, 2),
            r.nats_cpu_s,
            r.target_cpu_s,
            opt(r.peak_rss_mb, 1),
            if r.timed_out || r.delivered < r.events {
                format!("  ({} of {} delivered)", r.delivered, r.events)
            } else {
                String::new()
            }
        );
        let mut extra = Vec::new();
        if let Some(s) = r.startup_s {
            extra.push(format!("start-up {s:.2} s"));
        }
        if let Some(c) = r.idle_cpu_pct_of_core {
            extra.push(format!(
                "idle CPU {c:.2} % of a core (nats-server {} %), idle RSS {} MB",
                opt(r.idle_nats_cpu_pct_of_core, 2),
                opt(r.idle_rss_mb, 1)
            ));
        }
        if r.answered_503 > 0 {
            extra.push(format!("{} answered 503", r.answered_503));
        }
        if r.scenario == "ordered" {
            extra.push(format!("{} order violations", r.order_violations));
        }
        if r.duplicates > 0 {
            extra.push(format!("{} duplicates", r.duplicates));
        }
        if let Some(l) = r.log_lines {
            extra.push(format!("{l} log lines"));
        }
        if !r.worst_ms_per_second.is_empty() {
            let w: Vec<String> = r
                .worst_ms_per_second
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect();
            extra.push(format!("worst ms per second: {}", w.join(" ")));
        }
        if !r.note.is_empty() {
            extra.push(r.note.clone());
        }
        if !extra.is_empty() {
            let _ = writeln!(t, "{:<18} {}", "", extra.join("; "));
        }
    }
    let _ = writeln!(
        t,
        "\nevents/s: first to last arrival at the target (ceiling: ack); latency: publish -> target \
         (backlog scenarios include the wait in the backlog). x ceil / x naiv: hms-sync relative \
         to the ceiling and the naive loop of the same scenario. CPU s: the system under test only \
         (hms-sync child process; baseline runtime threads); nats-server and the target share the \
         2 cores and are shown apart. RSS: hms-sync's VmHWM."
    );
    print!("{t}");
}

/// The hms-sync binary under test: this build's, or `FLOOD_HMS_BIN` (to compare two builds).
fn hms_bin() -> PathBuf {
    std::env::var_os("FLOOD_HMS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hms-sync")))
}

/// Sampling frequency of `--perf` (`FLOOD_PERF_HZ`, default 199).
fn perf_hz() -> String {
    std::env::var("FLOOD_PERF_HZ").unwrap_or_else(|_| "199".into())
}

// ---------------------------------------------------------------------------------------------
// What one audit record costs to store, by way of storing

/// Stores `n` audit-sized records (450 bytes) on a fresh stream three ways, in batches of 512
/// as the audit actor does, twice each: (1) JetStream publish with `Nats-Msg-Id`, every ack
/// awaited (hms-sync's careful store); (2) the same without the id; (3) plain publishes, then a
/// flush (what hms-sync sends between a batch's first and last acked record). Prints the CPU
/// of nats-server and of this publisher per record.
async fn audit_store(n: u64) -> Result<(), String> {
    let nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let js = jetstream::new(client.clone());
    let body = Bytes::from(vec![b'x'; 450]);
    eprintln!(
        "audit-store: {n} records per way, batches of 512 ({})",
        uptime_line()
    );
    println!(
        "\n{:<22} {:>8} {:>14} {:>14} {:>12}",
        "way", "wall s", "nats-server us", "publisher us", "total us"
    );
    let modes = ["acked + Nats-Msg-Id", "acked", "plain"];
    for (round, mode) in modes.iter().chain(modes.iter()).enumerate() {
        let name = format!("AUDIT{round}");
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("audit{round}.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create stream: {e}"))?;
        let subject = format!("audit{round}.consumer");
        let (s0, c0, t0) = (nats.cpu(), threads_cpu("fl-sys"), Instant::now());
        let mut i = 0;
        while i < n {
            let end = (i + 512).min(n);
            if *mode == "plain" {
                for _ in i..end {
                    client
                        .publish(subject.clone(), body.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                client.flush().await.map_err(|e| e.to_string())?;
            } else {
                let mut acks = Vec::with_capacity(512);
                for k in i..end {
                    let ack = if *mode == "acked" {
                        js.publish(subject.clone(), body.clone()).await
                    } else {
                        let mut h = async_nats::HeaderMap::new();
                        h.insert("Nats-Msg-Id", format!("chain/run:{k}").as_str());
                        js.publish_with_headers(subject.clone(), h, body.clone())
                            .await
                    };
                    acks.push(ack.map_err(|e| e.to_string())?);
                }
                for a in acks {
                    a.await.map_err(|e| e.to_string())?;
                }
            }
            i = end;
        }
        let mut st = js.get_stream(&name).await.map_err(|e| e.to_string())?;
        while st.info().await.map_err(|e| e.to_string())?.state.messages < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (server, publisher) = (
            (nats.cpu() - s0) / n as f64 * 1e6,
            (threads_cpu("fl-sys") - c0) / n as f64 * 1e6,
        );
        println!(
            "{mode:<22} {:>8.2} {server:>14.1} {publisher:>14.1} {:>12.1}",
            t0.elapsed().as_secs_f64(),
            server + publisher
        );
    }
    Ok(())
}
