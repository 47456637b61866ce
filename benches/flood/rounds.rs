//! The rounds of each scenario: a fresh nats-server, the target and the backlog, then each
//! system in turn (the ceiling, the naive loop, hms-sync), their results and ratios.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use hms_sync::bus::Bus;
use hms_sync::sink::{OrderBy, Sink, SinkOptions};
use tokio::runtime::Handle;

use crate::baselines::run_baseline;
use crate::hms::run_hms;
use crate::opts::Opts;
use crate::procfs::uptime_line;
use crate::report::{add_ratios, median_rounds, PhaseResult};
use crate::scenarios::{
    publish, pull_config, scenario, start_nats, topic, Run, Scenario, PERMIT_HEADER,
};

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
