//! Delivery outcomes: retries with backoff, parking with a review alert, idempotency keys.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::harness::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_the_same_idempotency_key() {
    init_logs();
    let nats = Nats::start().await;
    let target = Target::start().await;
    // First two identical requests fail with 503, then 200.
    target.respond(|_, n| if n < 2 { (503, vec![]) } else { (200, vec![]) });
    let setup = Setup::new(
        &nats,
        &[(
            "c.yaml",
            simple_connector(
                "retry.v1",
                "retry.in",
                &target,
                "retry:\n  max: 5\n  backoffMs: 100\n",
            ),
        )],
        "",
    );
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish(&js, "retry.in", json!({"id": "e1", "n": 1})).await;
    eventually(T, "three attempts", || async { target.count() == 3 }).await;
    let reqs = target.requests();
    let keys: Vec<_> = reqs.iter().map(|r| r.header("idempotency-key")).collect();
    assert!(keys[0].is_some());
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    // Spaced by the backoff (100 ms, then 200 ms, within -20 %).
    assert!(reqs[1].at - reqs[0].at >= Duration::from_millis(80));
    assert!(reqs[2].at - reqs[1].at >= Duration::from_millis(160));
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    eventually(T, "acked", || {
        let stream = stream.clone();
        async move {
            stream
                .consumer_info("retry_v1")
                .await
                .unwrap()
                .num_ack_pending
                == 0
        }
    })
    .await;
    assert!(stream_messages(&js, "HMS_SYNC_PARKED").await.is_empty());
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_and_permanent_errors_are_parked_with_a_review_alert() {
    init_logs();
    let nats = Nats::start().await;
    let target = Target::start().await;
    target.respond(|r, _| {
        if r.path.contains("bad") {
            (400, vec![])
        } else {
            (500, vec![])
        }
    });
    let setup = Setup::new(
        &nats,
        &[(
            "c.yaml",
            simple_connector(
                "park.v1",
                "park.in",
                &target,
                "retry:\n  max: 3\n  backoffMs: 50\n",
            ),
        )],
        "",
    );
    let rt = setup.start().await;
    let client = nats.client().await;
    let mut reviews = client.subscribe("hitl.review.requested").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    publish(&js, "park.in", json!({"id": "down", "n": 1})).await;
    publish(&js, "park.in", json!({"id": "bad", "n": 2})).await;
    js.publish("park.in", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();

    eventually(T, "three parked jobs", || async {
        stream_messages(&js, "HMS_SYNC_PARKED").await.len() == 3
    })
    .await;
    let parked = stream_messages(&js, "HMS_SYNC_PARKED").await;
    let by_payload = |needle: &str| {
        parked
            .iter()
            .find(|p| {
                p["event"]["payload"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(needle)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no parked job for {needle}: {parked:#?}"))
    };
    let down = by_payload("down");
    assert_eq!(down["connector"], "park.v1");
    assert_eq!(down["attempts"].as_array().unwrap().len(), 3, "{down:#}");
    assert_eq!(down["attempts"][2]["status"], 500);
    assert!(down["idempotencyKey"].as_str().unwrap().len() == 32);
    let bad = by_payload("bad");
    assert_eq!(bad["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(bad["attempts"][0]["status"], 400);
    let invalid = by_payload("not json");
    assert!(
        invalid["error"].as_str().unwrap().contains("not JSON"),
        "{invalid:#}"
    );
    // Exactly 3 attempts for the 500, 1 for the 400, none for the invalid payload.
    let attempts = |id: &str| {
        target
            .requests()
            .iter()
            .filter(|r| r.path.ends_with(id))
            .count()
    };
    assert_eq!(attempts("down"), 3);
    assert_eq!(attempts("bad"), 1);
    assert_eq!(target.count(), 4);
    // One review alert each, naming the parked id.
    let mut alerts = Vec::new();
    while alerts.len() < 3 {
        let m = tokio::time::timeout(T, reviews.next())
            .await
            .expect("review alert")
            .unwrap();
        alerts.push(serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap());
    }
    assert!(alerts
        .iter()
        .all(|a| a["connector"] == "park.v1" && a["parkedId"].as_u64().is_some()));
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    let info = stream.consumer_info("park_v1").await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    rt.shutdown().await;
}
