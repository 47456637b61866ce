//! The flood bench's scenarios: what each asks for, and one run of it.
//!
//! A run: nats-server, target, published events, the three systems one after the other.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use hms_sync::bus::Bus;
use hms_sync::flood::{EventTemplate, FloodPlan, Vary, VaryKind, DEFAULT_WINDOW};
use hms_sync::nats_server::NatsServer;
use hms_sync::sink::{OrderBy, Sink, SinkOptions};
use tokio::runtime::Handle;

use crate::baselines::run_baseline;
use crate::hms::run_hms;
use crate::opts::{Opts, MAX_ACK_PENDING};
use crate::procfs::uptime_line;
use crate::report::{add_ratios, median_rounds, PhaseResult};

/// The header that carries an event's ordering key to the target (`ordered` scenario).
pub const PERMIT_HEADER: &str = "X-Permit-Id";

/// What one scenario asks for.
#[derive(Clone)]
pub struct Scenario {
    pub name: &'static str,
    /// Connectors with events (one topic each).
    pub busy: usize,
    /// Connectors deployed without events (idle scenario).
    pub idle: usize,
    /// Events in total (spread round-robin over the busy topics).
    pub events: u64,
    /// Published before the consumers run (backlog drain), else while they run.
    pub backlog: bool,
    /// Events per second while publishing live (`None`: as fast as possible).
    pub rate: Option<f64>,
    pub fail: f64,
    /// Distinct `permitId`s (ordering keys); 0: one per event.
    pub keys: u64,
    pub ordered: bool,
}

pub fn scenario(name: &str, o: &Opts) -> Scenario {
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
    let sc = match name {
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
    };
    match (o.busy, sc.name) {
        (Some(busy), "drain" | "fanout" | "flaky" | "ordered") => Scenario { busy, ..sc },
        _ => sc,
    }
}

pub fn topic(i: usize) -> String {
    format!("flood.t{i}")
}

pub async fn run_all(o: &Opts, sys: Handle, tgt: Handle) -> Vec<PhaseResult> {
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

/// The nats-server to run: `NATS_SERVER_BIN`, else the project's pinned one.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/nats-server/bin/nats-server");
    if local.exists() {
        local
    } else {
        PathBuf::from("nats-server")
    }
}

/// A nats-server of this scenario alone (own port and store), killed on drop.
pub async fn start_nats() -> Result<NatsServer, String> {
    NatsServer::builder()
        .bin(nats_server_bin())
        .start()
        .await
        .map_err(|e| e.to_string())
}

/// The loopback target, on `rt` (the `fl-tgt` threads): 200 for every request (503 for the
/// phase's fail fraction, see [`answer_with`]); events told apart by `Idempotency-Key`, else
/// by the flood stamp's sequence; per-key order by [`PERMIT_HEADER`].
async fn start_target(rt: &Handle) -> Result<Sink, String> {
    rt.spawn(Sink::start(SinkOptions {
        timeline: true,
        order_by: Some(OrderBy::Header(PERMIT_HEADER.into())),
        ..Default::default()
    }))
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Forgets the last phase and answers 503 for a fraction `fail` of the requests.
fn answer_with(sink: &Sink, fail: f64) {
    sink.reset();
    sink.respond(move |_, _| {
        if fail > 0.0 && rand::random::<f64>() < fail {
            (503, vec![])
        } else {
            (200, vec![])
        }
    });
}

async fn run_scenario(
    sc: &Scenario,
    o: &Opts,
    sys: &Handle,
    tgt: &Handle,
) -> Result<Vec<PhaseResult>, String> {
    let nats = start_nats().await?;
    let sink = start_target(tgt).await?;
    let target_addr = sink.addr();
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let bus = Bus::connect(nats.url()).await.map_err(|e| e.to_string())?;
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
                .create_consumer(pull_config(
                    &name,
                    vec![t.clone(), format!("hms.replay.{name}")],
                    consumer::DeliverPolicy::All,
                ))
                .await
                .map_err(|e| format!("create consumer {name}: {e}"))?;
        }
        let t0 = Instant::now();
        publish(&bus, &topics, sc, o.payload_bytes, None, "publish").await?;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "   published {} events in {secs:.2} s ({:.0}/s, JetStream async publish)",
            sc.events,
            sc.events as f64 / secs
        );
    }
    let mut out = Vec::new();
    for system in ["ceiling", "naive", "hms-sync"] {
        if !o.systems.iter().any(|s| s == system) {
            continue;
        }
        answer_with(&sink, sc.fail);
        let run = Run {
            sc,
            o,
            nats: &nats,
            bus: &bus,
            js: &js,
            topics: &topics,
            target: target_addr,
            sink: &sink,
        };
        let r = match system {
            "hms-sync" => run_hms(&run, dir.path()).await,
            _ => run_baseline(system, &run, sys).await,
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

/// A durable pull consumer as hms-sync makes them: explicit acks, 30 s ack wait, no
/// delivery limit, [`MAX_ACK_PENDING`].
pub fn pull_config(
    durable: &str,
    filter_subjects: Vec<String>,
    deliver_policy: consumer::DeliverPolicy,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(durable.to_string()),
        filter_subjects,
        deliver_policy,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    }
}

/// What a system's phase of a scenario runs against.
pub struct Run<'a> {
    pub sc: &'a Scenario,
    pub o: &'a Opts,
    pub nats: &'a NatsServer,
    pub bus: &'a Bus,
    pub js: &'a jetstream::Context,
    pub topics: &'a [String],
    pub target: std::net::SocketAddr,
    pub sink: &'a Sink,
}

/// Seed-style permit events (`permitId` = the sequence, or one of `keys`), stamped and padded
/// to `bytes`.
fn events(keys: u64, bytes: usize) -> EventTemplate {
    let base = serde_json::json!({
        "agency": "DDOT",
        "startDate": "2024-05-10",
        "endDate": "2024-05-12",
        "status": "APPROVED",
    });
    let permit = Vary {
        field: "permitId".into(),
        kind: if keys > 0 {
            VaryKind::SeqMod(keys)
        } else {
            VaryKind::Seq
        },
    };
    EventTemplate::new(&base, vec![permit])
        .map(|t| t.pad_to(bytes))
        .unwrap_or_else(|e| unreachable!("a constant object: {e}"))
}

/// Publishes `sc.events` events round-robin over `topics` with the library's flood publisher
/// (JetStream async publish, at most 4096 acks outstanding), paced at `rate` per second when
/// given.
pub async fn publish(
    bus: &Bus,
    topics: &[String],
    sc: &Scenario,
    bytes: usize,
    rate: Option<f64>,
    label: &str,
) -> Result<(), String> {
    let plan = FloodPlan {
        subjects: topics.to_vec(),
        count: sc.events,
        rate,
        window: DEFAULT_WINDOW,
    };
    let template = events(sc.keys, bytes);
    let report = bus
        .flood(
            &plan,
            |seq, sent| template.render(seq, sent),
            |p| progress(&format!("{label}: {}/{}", p.sent, sc.events)),
        )
        .await
        .map_err(|e| e.to_string())?;
    progress("");
    match report.first_error {
        Some(e) if report.errors > 0 => Err(format!("publish: {e} ({} errors)", report.errors)),
        _ => Ok(()),
    }
}

pub fn progress(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "\r{line:<100}\r");
    let _ = e.flush();
}

/// Waits until every event arrived or `limit` passed, with a progress line.
pub async fn wait_drained(label: &str, sink: &Sink, n: u64, limit: Duration) -> bool {
    let start = Instant::now();
    let (mut last_n, mut last_t) = (0u64, Instant::now());
    loop {
        if sink.delivered() >= n {
            progress("");
            return false;
        }
        if start.elapsed() > limit {
            progress("");
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let got = sink.delivered();
        let rate = (got - last_n) as f64 / last_t.elapsed().as_secs_f64();
        (last_n, last_t) = (got, Instant::now());
        progress(&format!(
            "   {label}: {got}/{n} delivered, {rate:.0}/s, 503s {}, {:.0} s",
            sink.answered(503),
            start.elapsed().as_secs_f64()
        ));
    }
}

pub fn phase_limit(sc: &Scenario) -> Duration {
    let publish = sc.rate.map_or(0.0, |r| sc.events as f64 / r);
    Duration::from_secs_f64(60.0 + publish + sc.events as f64 / 2000.0)
}
