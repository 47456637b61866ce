//! The flood bench's command line: scenarios, systems and their knobs.

use std::path::PathBuf;

pub const SCENARIOS: [&str; 6] = ["drain", "fanout", "steady", "flaky", "ordered", "idle"];
/// Requests in flight (`--in-flight`): hms-sync's default `delivery.maxInFlight` and endpoint
/// `maxInFlight`.
pub const IN_FLIGHT: usize = 64;
/// Messages per pull request, as hms-sync's default `delivery.pullBatch`.
pub const PULL_BATCH: usize = 128;
pub const MAX_ACK_PENDING: i64 = 10_000;
/// Retry delay of the `flaky` scenario (connector `backoffMs`, naive NAK delay).
pub const FLAKY_BACKOFF_MS: u64 = 50;

pub const USAGE: &str =
    "usage: cargo bench --bench flood -- <drain|fanout|steady|flaky|ordered|idle|all>...
       cargo bench --bench flood -- overload [--events N] [--seconds S]   (a backlog of N
                      (100000) events for a target limited to 20 requests/s, ackWaitMs 2000,
                      for S (60) seconds: peak RSS, /healthz and /metrics answer times,
                      duplicates at the target, JetStream redeliveries)
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
  --busy N            drain/fanout/flaky/ordered: connectors with events, one topic each
                      (default drain 1, fanout 10)
  --in-flight N       requests in flight: hms-sync's delivery.maxInFlight and the endpoint's
                      maxInFlight, the naive loop's permits (default 64)
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
pub struct Opts {
    pub scenarios: Vec<String>,
    pub events: Option<u64>,
    pub payload_bytes: usize,
    pub rate: f64,
    pub seconds: f64,
    pub fail: f64,
    pub connectors: usize,
    pub busy: Option<usize>,
    pub in_flight: usize,
    pub idle_seconds: f64,
    pub systems: Vec<String>,
    pub hms_log: Option<String>,
    pub perf: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub repeat: usize,
    pub audit_store: bool,
    pub overload: bool,
}

pub fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        scenarios: vec![],
        events: None,
        payload_bytes: 256,
        rate: 2000.0,
        seconds: 20.0,
        fail: 0.1,
        connectors: 1000,
        busy: None,
        in_flight: IN_FLIGHT,
        idle_seconds: 10.0,
        systems: vec!["ceiling".into(), "naive".into(), "hms-sync".into()],
        hms_log: None,
        perf: None,
        json: None,
        repeat: 1,
        audit_store: false,
        overload: false,
    };
    let mut seconds_given = false;
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
            "--seconds" => {
                o.seconds = num(val(&a)?)?;
                seconds_given = true;
            }
            "--fail" => o.fail = num(val(&a)?)?,
            "--connectors" => o.connectors = (num(val(&a)?)? as usize).max(1),
            "--busy" => o.busy = Some((num(val(&a)?)? as usize).max(1)),
            "--in-flight" => o.in_flight = (num(val(&a)?)? as usize).max(1),
            "--idle-seconds" => o.idle_seconds = num(val(&a)?)?,
            "--only" => o.systems = val(&a)?.split(',').map(str::to_string).collect(),
            "--hms-log" => o.hms_log = Some(val(&a)?),
            "--perf" => o.perf = Some(PathBuf::from(val(&a)?)),
            "--json" => o.json = Some(PathBuf::from(val(&a)?)),
            "--repeat" => o.repeat = (num(val(&a)?)? as usize).max(1),
            "all" => o.scenarios.extend(SCENARIOS.iter().map(|s| s.to_string())),
            "audit-store" => o.audit_store = true,
            "overload" => o.overload = true,
            s if SCENARIOS.contains(&s) => o.scenarios.push(s.to_string()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.overload && !seconds_given {
        o.seconds = 60.0;
    }
    if o.scenarios.is_empty() && !o.audit_store && !o.overload {
        return Err("name a scenario, or all".into());
    }
    Ok(o)
}
