//! Overload without duplicates (issue 15, point 2): events that wait in hms-sync longer than
//! the ack wait (for a rate-limit permit, an in-flight slot, a key's turn) are never
//! redelivered meanwhile, so every Idempotency-Key reaches the target exactly once.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// Every key the target saw, with how many times.
fn keys(target: &Target) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in target.requests() {
        *seen
            .entry(r.header("Idempotency-Key").unwrap_or_default())
            .or_default() += 1;
    }
    seen
}

/// Publishes `events` for the connector `yaml` (topic `<id>.in`, id `id`) and checks that each
/// reached the target once and that JetStream redelivered nothing.
async fn exactly_once(
    yaml: impl Fn(&Target) -> String,
    config: &str,
    delay: Duration,
    events: usize,
    id: &str,
) {
    let (nats, target) = nats_and_target().await;
    target.set_delay(delay);
    let topic = format!("{id}.in");
    let (_setup, rt, js) = start_with(&nats, &[("c.yaml", yaml(&target))], config).await;
    publish_many(
        &js,
        &topic,
        (0..events).map(|i| json!({"id": format!("e{i}"), "n": i, "k": format!("k{}", i % 7)})),
    )
    .await;
    let consumer = id.replace('.', "_");
    eventually(
        Duration::from_secs(120),
        "every event delivered",
        || async { keys(&target).len() == events },
    )
    .await;
    wait_idle(&js, &consumer, Duration::from_secs(30)).await;
    let seen = keys(&target);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} keys reached the target more than once: {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(target.count(), events, "one request per event");
    let info = consumer_info(&js, &consumer).await;
    assert_eq!(info.num_redelivered, 0, "nothing was redelivered: {info:?}");
    rt.shutdown().await;
}

/// 400 events for a target limited to 20 requests/s with a 2 s ack wait: most wait far longer
/// than the ack wait for their permit or for a delivery slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_past_the_ack_wait_for_a_rate_limit_are_delivered_exactly_once() {
    let id = "overload.rate.v1";
    exactly_once(
        |t| {
            format!(
                "{}rateLimit: {{ perSecond: 20 }}\n",
                simple_connector(id, "overload.rate.v1.in", t, "retry:\n  max: 5\n")
            )
        },
        "delivery:\n  ackWaitMs: 2000\n",
        Duration::ZERO,
        400,
        id,
    )
    .await;
}

/// Few delivery slots, a slow target and per-key order: events wait for a slot and for their
/// key's turn (longer than the ack wait), not for a permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_for_a_slot_or_their_key_are_delivered_exactly_once() {
    let id = "overload.keyed.v1";
    exactly_once(
        |t| {
            format!(
                "id: {id}\ntype: outbound\ntrigger:\n  topic: {id}.in\n  orderingKey: \"{{{{ k }}}}\"\nmap:\n  to:\n    url: \"{}/items/{{id}}\"\n    method: PUT\n    body:\n      id: \"{{{{ id }}}}\"\n",
                t.url()
            )
        },
        "delivery:\n  ackWaitMs: 1000\n  maxInFlight: 3\n  pinTimeoutMs: 2000\n",
        Duration::from_millis(50),
        120,
        id,
    )
    .await;
}

/// Plain connector, few slots, slow target: events wait for a slot far past the ack wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_for_a_delivery_slot_are_delivered_exactly_once() {
    let id = "overload.slots.v1";
    exactly_once(
        |t| simple_connector(id, "overload.slots.v1.in", t, "retry:\n  max: 5\n"),
        "delivery:\n  ackWaitMs: 1000\n  maxInFlight: 2\n",
        Duration::from_millis(40),
        150,
        id,
    )
    .await;
}
