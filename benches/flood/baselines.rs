//! The flood bench's baselines: `ceiling` and `naive`.
//!
//! (a) `ceiling`, a pull consumer that only acks; (b) `naive`, pull -> string-replace template
//! -> reqwest PATCH -> ack, 64 in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use hms_sync::flood::{scan_u64, Stamp, SENT_FIELD, SENT_HEADER, SEQ_FIELD, SEQ_HEADER};
use hms_sync::sink::Sink;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::opts::{FLAKY_BACKOFF_MS, PULL_BATCH};
use crate::procfs::{pid_cpu, threads_cpu};
use crate::report::PhaseResult;
use crate::scenarios::{phase_limit, publish, pull_config, wait_drained, Run, PERMIT_HEADER};

const NAIVE_TEMPLATE: &str =
    r#"{"start_date":"{{startDate}}","end_date":"{{endDate}}","status":"{{status}}"}"#;

/// A JSON value as text (a string without its quotes).
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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
    let permit = text(&v["permitId"]);
    let url = format!("{base}/item/roadwork/{permit}");
    let sent = http
        .patch(url)
        .header("content-type", "application/json")
        .header(SEQ_HEADER, v[SEQ_FIELD].to_string())
        .header(SENT_HEADER, v[SENT_FIELD].to_string())
        .header(PERMIT_HEADER, permit)
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

/// The ceiling's record of an acked event: its stamp and ordering key, read by text.
fn ceiling_record(sink: &Sink, payload: &[u8]) {
    let permit = scan_u64(payload, "permitId").map(|p| p.to_string());
    sink.record_arrival(None, permit.as_deref(), Stamp::scan(payload));
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
            .create_consumer(pull_config(
                &format!("bench_{system}_{i}"),
                vec![t.clone()],
                if backlog {
                    consumer::DeliverPolicy::All
                } else {
                    consumer::DeliverPolicy::New
                },
            ))
            .await
            .map_err(|e| format!("create consumer: {e}"))?;
        out.push(c);
    }
    Ok(out)
}

pub async fn run_baseline(system: &str, run: &Run<'_>, rt: &Handle) -> Result<PhaseResult, String> {
    let sc = run.sc;
    let label = format!("{} {system}", sc.name);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let (url, sys, topics_owned, backlog) = (
        run.nats.url().to_string(),
        system.to_string(),
        run.topics.to_vec(),
        sc.backlog,
    );
    let s = run.sink.clone();
    let base = format!("http://{}", run.target);
    let backoff = Duration::from_millis(FLAKY_BACKOFF_MS);
    let nats_pid = run.nats.pid();
    let (cpu0, nats0, tgt0) = (
        threads_cpu("fl-sys"),
        pid_cpu(nats_pid),
        threads_cpu("fl-tgt"),
    );
    let in_flight = run.o.in_flight;
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
        let permits = Arc::new(Semaphore::new(in_flight));
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
                            let _ = m.ack().await;
                            ceiling_record(&s, &m.payload);
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
        publish(
            run.bus,
            run.topics,
            sc,
            run.o.payload_bytes,
            sc.rate,
            &label,
        )
        .await?;
    }
    let timed_out = wait_drained(&label, run.sink, sc.events, phase_limit(sc)).await;
    let wall = t0.elapsed().as_secs_f64();
    task.abort();
    let _ = task.await;
    // Leave the stream's consumer count to hms-sync (the idle scenario deploys 1,000).
    if let Ok(stream) = run.js.get_stream("HMS_EVENTS").await {
        for i in 0..run.topics.len() {
            let _ = stream.delete_consumer(&format!("bench_{system}_{i}")).await;
        }
    }
    let mut r = PhaseResult::from_sink(sc, system, run.sink, timed_out);
    r.cpu_s = threads_cpu("fl-sys") - cpu0;
    r.nats_cpu_s = pid_cpu(nats_pid) - nats0;
    r.target_cpu_s = threads_cpu("fl-tgt") - tgt0;
    r.finish(wall);
    Ok(r)
}
