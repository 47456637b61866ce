//! Endpoint protection (rate limits, 429 slow-down, circuit breaker) and the audit trail.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::harness::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_slows_the_whole_endpoint() {
    let (nats, target) = nats_and_target().await;
    let first = Arc::new(AtomicBool::new(true));
    let f = first.clone();
    target.respond(move |_, _| {
        if f.swap(false, Ordering::SeqCst) {
            (429, vec![("Retry-After".into(), "1".into())])
        } else {
            (200, vec![])
        }
    });
    let cfg = format!(
        "endpoints:\n  \"http://{}\":\n    maxInFlight: 1\n",
        target.addr
    );
    let (_setup, rt, js) = start_simple(
        &nats,
        &target,
        "slow.v1",
        "slow.in",
        "retry:\n  max: 3\n  backoffMs: 10\n",
        &cfg,
    )
    .await;
    publish_numbered(&js, "slow.in", "e", 0..5).await;
    eventually(T, "all five delivered", || async {
        target.requests().iter().filter(|r| r.status == 200).count() == 5
    })
    .await;
    let reqs = target.requests();
    assert_eq!(reqs[0].status, 429);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "the endpoint was called again {gap:?} after a 429 with Retry-After: 1"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_pauses_probes_and_resumes() {
    let (nats, target) = nats_and_target().await;
    let down = target.outage();
    let cfg = format!(
        "endpoints:\n  \"http://{}\":\n    maxInFlight: 4\n    breaker: {{ failures: 3, probeIntervalMs: 300 }}\n",
        target.addr
    );
    let setup = Setup::new(
        &nats,
        &[(
            "c.yaml",
            simple_connector(
                "breaker.v1",
                "breaker.in",
                &target,
                "retry:\n  max: 5\n  backoffMs: 10\n  maxBackoffMs: 20\n",
            ),
        )],
        &cfg,
    );
    let rt = setup.start().await;
    let client = nats.client().await;
    let mut alerts = client.subscribe("hitl.review.requested").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    publish_numbered(&js, "breaker.in", "e", 0..20).await;
    let paused = tokio::time::timeout(T, alerts.next())
        .await
        .expect("pause alert")
        .unwrap();
    let paused: serde_json::Value = serde_json::from_slice(&paused.payload).unwrap();
    assert_eq!(paused["kind"], "endpoint.paused", "{paused}");
    // While paused: at most one probe per interval, so few calls for 20 waiting events.
    let at_pause = target.count();
    tokio::time::sleep(Duration::from_millis(1000)).await; // observation window, not synchronisation
    let during = target.count() - at_pause;
    assert!(
        during <= 5,
        "{during} calls in 1 s while paused (probe every 300 ms)"
    );
    down.store(false, Ordering::SeqCst);
    let resumed = tokio::time::timeout(T, alerts.next())
        .await
        .expect("resume alert")
        .unwrap();
    let resumed: serde_json::Value = serde_json::from_slice(&resumed.payload).unwrap();
    assert_eq!(resumed["kind"], "endpoint.resumed", "{resumed}");
    eventually(T, "all 20 delivered", || async {
        let ok: std::collections::HashSet<_> = target
            .requests()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.path.clone())
            .collect();
        ok.len() == 20
    })
    .await;
    assert!(
        stream_messages(&js, "HMS_SYNC_PARKED").await.is_empty(),
        "waiting did not burn the retries"
    );
    rt.shutdown().await;
}

fn verify(nats: &Nats) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(["audit", "verify", "--nats-url", &nats.url()])
        .output()
        .unwrap();
    let (code, stdout, _) = code_and_text(&out);
    (code, stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_audited_and_tampering_is_detected() {
    let (nats, target) = nats_and_target().await;
    target.respond(|_, n| if n == 0 { (503, vec![]) } else { (200, vec![]) });
    let setup = Setup::new(
        &nats,
        &[(
            "c.yaml",
            simple_connector(
                "audited.v1",
                "audited.in",
                &target,
                "retry:\n  max: 3\n  backoffMs: 10\n",
            ),
        )],
        "",
    );
    let rt = setup.start().await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    js.publish_with_headers(
        "audited.in",
        headers,
        json!({"id": "t1", "n": 0}).to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    publish_numbered(&js, "audited.in", "e", 1..6).await;
    // 6 events, each failing once then delivered: 12 attempts.
    eventually(T, "12 audit records", || async {
        audit_records(&js).await.len() == 12
    })
    .await;
    let records = audit_records(&js).await;
    let first = &records[0];
    for field in [
        "connector",
        "event",
        "method",
        "url",
        "status",
        "latencyMs",
        "attempt",
        "idempotencyKey",
        "traceparent",
        "hash",
        "prev",
        "chain",
    ] {
        assert!(
            first.get(field).is_some(),
            "audit record lacks {field}: {first:#}"
        );
    }
    let traced: Vec<_> = records
        .iter()
        .filter(|r| {
            r["traceparent"]
                .as_str()
                .unwrap()
                .contains("4bf92f3577b34da6a3ce929d0e0e4736")
        })
        .collect();
    assert_eq!(
        traced.len(),
        2,
        "both attempts of the traced event carry its trace id"
    );
    let sent = target
        .requests()
        .into_iter()
        .find(|r| r.json()["id"] == "t1")
        .unwrap();
    assert!(sent
        .header("traceparent")
        .unwrap()
        .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    rt.shutdown().await;

    let (code, out) = verify(&nats);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 12 records"), "{out}");

    // Rewrite: take the block holding record 5 out and store it again with that record's
    // status changed (its hash left as it was).
    let (subject, seq, block) = block_holding(&js, 5).await;
    let changed: Vec<String> = block
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if r["n"] == 5 {
                r["status"] = json!(200);
            }
            r.to_string()
        })
        .collect();
    store_again(&js, subject, seq, &changed).await;
    let (code, out) = verify(&nats);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at HMS_AUDIT message"), "{out}");
    assert!(out.contains("changed"), "{out}");
}

/// The stored block (subject, stream sequence, records) holding the record at position `n`.
async fn block_holding(
    js: &async_nats::jetstream::Context,
    n: u64,
) -> (String, u64, Vec<serde_json::Value>) {
    for m in stream_raw(js, "HMS_AUDIT").await {
        let records: Vec<serde_json::Value> = hms_sync::bus::records_of(&m.payload)
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        if records.iter().any(|r| r["n"] == n) {
            return (m.subject.to_string(), m.sequence, records);
        }
    }
    panic!("no block holds record {n}");
}

/// Takes the stored block `seq` out of `HMS_AUDIT` and stores `records` (JSON lines) as a new
/// block on `subject`; none left: nothing is stored.
async fn store_again(
    js: &async_nats::jetstream::Context,
    subject: String,
    seq: u64,
    records: &[String],
) {
    js.get_stream("HMS_AUDIT")
        .await
        .unwrap()
        .delete_message(seq)
        .await
        .unwrap();
    if !records.is_empty() {
        js.publish(subject, (records.join("\n") + "\n").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_audit_record_is_detected() {
    let (nats, target) = nats_and_target().await;
    let (_setup, rt, js) = start_simple(&nats, &target, "del.v1", "del.in", "", "").await;
    publish_numbered(&js, "del.in", "e", 0..5).await;
    eventually(T, "5 audit records", || async {
        audit_records(&js).await.len() == 5
    })
    .await;
    rt.shutdown().await;
    assert_eq!(verify(&nats).0, 0);
    // Delete record 3: store its block again without it.
    let (subject, seq, block) = block_holding(&js, 3).await;
    let kept: Vec<String> = block
        .iter()
        .filter(|r| r["n"] != 3)
        .map(|r| r.to_string())
        .collect();
    store_again(&js, subject, seq, &kept).await;
    let (code, out) = verify(&nats);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("found record 4"),
        "the first broken record is the one after the deleted one: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_go_on_while_the_audit_stream_is_unavailable() {
    let (nats, target) = nats_and_target().await;
    let (_setup, rt, js) = start_without_audit(&nats, &target, "noaudit", "e", 20).await;
    eventually(T, "all delivered without an audit stream", || async {
        target.count() == 20
    })
    .await;
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    eventually(T, "all acked", || {
        let stream = stream.clone();
        async move {
            stream
                .consumer_info("noaudit_v1")
                .await
                .unwrap()
                .num_ack_pending
                == 0
        }
    })
    .await;
    eventually(T, "records wait in memory", || async {
        metric(&rt, "sync_audit_pending").await >= 20.0
    })
    .await;
    // The stream comes back: the backlog is stored, and the chain verifies.
    audit_stream_back(&js).await;
    eventually(Duration::from_secs(30), "backlog stored", || async {
        audit_records(&js).await.len() == 20
    })
    .await;
    rt.shutdown().await;
    assert_eq!(verify(&nats).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_attempts_is_audited_whole_in_batches() {
    // Batches of more than two records take the fast store (plain publishes between two acked
    // ones): every record must land once, in chain order.
    let (nats, target) = nats_and_target().await;
    let (_setup, rt, js) = start_simple(&nats, &target, "many.v1", "many.in", "", "").await;
    let n = 2_000;
    publish_many(&js, "many.in", numbered("e", 0..n)).await;
    eventually(T, "all delivered", || async { target.count() >= n }).await;
    eventually(T, "every attempt on HMS_AUDIT", || async {
        audit_records(&js).await.len() >= n
    })
    .await;
    rt.shutdown().await;
    let records = audit_records(&js).await;
    assert_eq!(records.len(), n, "each attempt stored once");
    let positions: Vec<u64> = records.iter().map(|r| r["n"].as_u64().unwrap()).collect();
    assert_eq!(
        positions,
        (1..=n as u64).collect::<Vec<_>>(),
        "one chain, in order, no gap"
    );
    let (code, out) = verify(&nats);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("intact: {n} records in HMS_AUDIT\n")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_in_flight_cap_holds_across_its_connectors() {
    // Two connectors share one endpoint capped at 3 requests at once; the target answers slowly,
    // so 80 events keep the cap busy. Permits come from the endpoint's fast lane while a slot
    // is free and from its actor's queue while full: neither may exceed the cap, and no
    // waiter may be forgotten (every event delivered).
    let (nats, target) = nats_and_target().await;
    target.set_delay(Duration::from_millis(20));
    let (_setup, rt, js) = start_with(
        &nats,
        &[
            ("a.yaml", simple_connector("cap-a.v1", "cap.a", &target, "")),
            ("b.yaml", simple_connector("cap-b.v1", "cap.b", &target, "")),
        ],
        &format!(
            "endpoints:\n  \"http://{}\":\n    maxInFlight: 3\n",
            target.addr
        ),
    )
    .await;
    publish_many(&js, "cap.a", numbered("a", 0..40)).await;
    publish_many(&js, "cap.b", numbered("b", 0..40)).await;
    eventually(T, "all 80 delivered", || async { target.count() >= 80 }).await;
    let max = target.max_concurrent();
    assert!(
        max <= 3,
        "{max} requests at once to an endpoint capped at 3"
    );
    assert!(max >= 2, "the cap was used (max {max} at once)");
    rt.shutdown().await;
}
