//! Delivery outcomes: retries with backoff, parking with a review alert, idempotency keys.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::harness::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_the_same_idempotency_key() {
    let (nats, target) = nats_and_target().await;
    // First two identical requests fail with 503, then 200.
    target.respond(|_, n| if n < 2 { (503, vec![]) } else { (200, vec![]) });
    let (_setup, rt, js) = start_simple(
        &nats,
        &target,
        "retry.v1",
        "retry.in",
        "retry:\n  max: 5\n  backoffMs: 100\n",
        "",
    )
    .await;
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
    let (nats, target) = nats_and_target().await;
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
    let times: Vec<_> = target
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("down"))
        .map(|r| r.at)
        .collect();
    assert!(
        times[1] - times[0] >= Duration::from_millis(40),
        "backoff 50 ms (-20 %)"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(80),
        "backoff 100 ms (-20 %)"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_503s_on_2000_events_all_delivered_none_parked() {
    let (nats, target) = nats_and_target().await;
    target.fail_at_random(0.3);
    let (_setup, rt, js) = start_simple(
        &nats,
        &target,
        "flaky.v1",
        "flaky.in",
        "retry:\n  max: 12\n  backoffMs: 10\n  maxBackoffMs: 200\n",
        "",
    )
    .await;
    publish_many(&js, "flaky.in", numbered("e", 0..2000)).await;
    let delivered = || {
        target
            .requests()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.json()["id"].as_str().unwrap_or_default().to_string())
            .collect::<std::collections::HashSet<_>>()
    };
    eventually(
        Duration::from_secs(60),
        "2000 distinct events delivered",
        || async { delivered().len() == 2000 },
    )
    .await;
    wait_idle(&js, "flaky_v1", T).await;
    assert!(stream_messages(&js, "HMS_SYNC_PARKED").await.is_empty());
    assert!(
        target.requests().iter().any(|r| r.status == 503),
        "the target did fail sometimes"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let (nats, target) = nats_and_target().await;
    target.respond(|_, n| {
        if n == 0 {
            (429, vec![("Retry-After".into(), "1".into())])
        } else {
            (200, vec![])
        }
    });
    let (_setup, rt, js) = start_simple(
        &nats,
        &target,
        "ra.v1",
        "ra.in",
        "retry:\n  max: 3\n  backoffMs: 10\n",
        "",
    )
    .await;
    publish(&js, "ra.in", json!({"id": "r1", "n": 1})).await;
    eventually(T, "second attempt", || async { target.count() == 2 }).await;
    let reqs = target.requests();
    assert_eq!(reqs[0].status, 429);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1000),
        "next attempt after {gap:?}, Retry-After said 1 s"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_overrides_and_schema_check() {
    let (nats, target) = nats_and_target().await;
    target.respond(|r, _| {
        if r.path.ends_with("exists") {
            (409, vec![])
        } else if r.path.ends_with("down") {
            (503, vec![])
        } else {
            (200, vec![])
        }
    });
    let retry = "retry:\n  max: 5\n  backoffMs: 10\n  statuses:\n    success: [409]\n    permanent: [503]\n";
    let (_setup, rt, js) = start_simple(&nats, &target, "over.v1", "over.in", retry, "").await;
    publish(&js, "over.in", json!({"id": "exists", "n": 1})).await;
    publish(&js, "over.in", json!({"id": "down", "n": 2})).await;
    // `id` is a URL field: the generated schema requires a scalar.
    publish(&js, "over.in", json!({"id": {"nested": true}, "n": 3})).await;
    eventually(T, "two parked", || async {
        stream_messages(&js, "HMS_SYNC_PARKED").await.len() == 2
    })
    .await;
    let parked = stream_messages(&js, "HMS_SYNC_PARKED").await;
    let down = parked
        .iter()
        .find(|p| p["event"]["payload"].as_str().unwrap().contains("down"))
        .unwrap();
    assert_eq!(
        down["attempts"].as_array().unwrap().len(),
        1,
        "503 overridden as permanent"
    );
    let schema = parked
        .iter()
        .find(|p| p["event"]["payload"].as_str().unwrap().contains("nested"))
        .unwrap();
    assert!(
        schema["error"]
            .as_str()
            .unwrap()
            .contains("schema check failed"),
        "{schema:#}"
    );
    assert!(schema["attempts"][0]["status"].is_null());
    assert_eq!(
        target
            .requests()
            .iter()
            .filter(|r| r.path.contains("nested"))
            .count(),
        0,
        "no call for an invalid event"
    );
    // The 409 runs beside the two parked events: it may still be on its way.
    eventually(T, "409 counted as delivered", || async {
        target
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("exists"))
            .count()
            == 1
    })
    .await;
    eventually(T, "the 409 settled as delivered", || async {
        rt.status()
            .await
            .into_iter()
            .find(|v| v.id == "over.v1")
            .is_some_and(|v| v.delivered == 1)
    })
    .await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_parked_job_is_delivered_once_with_its_original_key() {
    let (nats, target) = nats_and_target().await;
    target.respond(|_, _| (500, vec![]));
    let (_setup, rt, js) = start_with(
        &nats,
        &[
            (
                "c.yaml",
                simple_connector(
                    "replay.v1",
                    "replay.in",
                    &target,
                    "retry:\n  max: 2\n  backoffMs: 10\n",
                ),
            ),
            (
                "d.yaml",
                simple_connector("bystander.v1", "replay.in", &target, "retry:\n  max: 1\n"),
            ),
        ],
        "",
    )
    .await;
    publish(&js, "replay.in", json!({"id": "p1", "n": 1})).await;
    eventually(T, "parked by both", || async {
        stream_messages(&js, "HMS_SYNC_PARKED").await.len() == 2
    })
    .await;
    let original_key = target.requests()[0].header("idempotency-key");
    // Fix the target, then replay only replay.v1's job through the CLI.
    target.respond(|_, _| (200, vec![]));
    let before = target.count();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args([
            "parked",
            "list",
            "--json",
            "--connector",
            "replay.v1",
            "--nats-url",
            &nats.url(),
        ])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    let id = list[0]["id"].as_u64().unwrap();
    let key = list[0]["idempotencyKey"].as_str().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args([
            "parked",
            "replay",
            &id.to_string(),
            "--nats-url",
            &nats.url(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(T, "replayed delivery", || async {
        target.count() == before + 1
    })
    .await;
    let last = target.requests().pop().unwrap();
    assert_eq!(last.status, 200);
    assert_eq!(
        last.header("idempotency-key").as_deref(),
        Some(key.as_str())
    );
    assert!(original_key.is_some());
    // Replayed once, through replay.v1 only; its job is gone, the bystander's stays.
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    eventually(T, "replay acked", || {
        let stream = stream.clone();
        async move {
            stream
                .consumer_info("replay_v1")
                .await
                .unwrap()
                .num_ack_pending
                == 0
        }
    })
    .await;
    assert_eq!(target.count(), before + 1);
    let left = stream_messages(&js, "HMS_SYNC_PARKED").await;
    let parked_left: Vec<_> = left.iter().filter(|p| p.get("event").is_some()).collect();
    assert_eq!(parked_left.len(), 1);
    assert_eq!(parked_left[0]["connector"], "bystander.v1");
    assert!(left
        .iter()
        .any(|p| p["action"] == "replayed" && p["parkedId"] == id));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_ordering_survives_random_503s() {
    let (nats, target) = nats_and_target().await;
    target.fail_at_random(0.3);
    let yaml = format!(
        "id: ordered.v1\ntype: outbound\ntrigger:\n  topic: ordered.in\n  orderingKey: \"{{{{ key }}}}\"\nmap:\n  to:\n    url: \"{}/items/{{key}}\"\n    method: PUT\n    body:\n      key: \"{{{{ key }}}}\"\n      n: \"{{{{ n }}}}\"\nretry:\n  max: 20\n  backoffMs: 5\n  maxBackoffMs: 50\n",
        target.url()
    );
    let (_setup, rt, js) =
        start_with(&nats, &[("c.yaml", yaml)], "delivery:\n  ackWaitMs: 3000\n").await;
    let events =
        (0..50).flat_map(|n| (0..10).map(move |k| json!({"key": format!("k{k}"), "n": n})));
    publish_many(&js, "ordered.in", events).await;
    eventually(
        Duration::from_secs(60),
        "every update of every key delivered",
        || async {
            let m = ok_per_key(&target);
            m.len() == 10 && m.values().all(|v| v.len() >= 50)
        },
    )
    .await;
    for (key, ns) in ok_per_key(&target) {
        assert_eq!(
            ns,
            (0..50).collect::<Vec<i64>>(),
            "{key}: successful deliveries out of order"
        );
    }
    // Attempts of one key (failed ones included) never go back in publish order.
    attempts_keep_publish_order_per_key(&target);
    assert!(target.requests().iter().any(|r| r.status == 503));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_keyed_event_frees_its_key() {
    // One event of key k0 (n = 3) is refused for good: 400 is permanent, so it is parked at
    // its first attempt. Its turn ends like a delivery's: the later events of k0 still go out,
    // in publish order, and the other keys never notice.
    let (nats, target) = nats_and_target().await;
    let refused = |j: &serde_json::Value| j["key"] == "k0" && j["n"].as_i64() == Some(3);
    target.respond(move |r, _| {
        if refused(&r.json()) {
            (400, vec![])
        } else {
            (200, vec![])
        }
    });
    let yaml = format!(
        "id: ordered.park.v1\ntype: outbound\ntrigger:\n  topic: ordered.park.in\n  orderingKey: \"{{{{ key }}}}\"\nmap:\n  to:\n    url: \"{}/items/{{key}}\"\n    method: PUT\n    body:\n      key: \"{{{{ key }}}}\"\n      n: \"{{{{ n }}}}\"\nretry:\n  max: 20\n  backoffMs: 5\n  maxBackoffMs: 50\n",
        target.url()
    );
    let (_setup, rt, js) =
        start_with(&nats, &[("c.yaml", yaml)], "delivery:\n  ackWaitMs: 3000\n").await;
    let events = |ns: std::ops::Range<i64>| {
        ns.flat_map(|n| (0..3).map(move |k| json!({"key": format!("k{k}"), "n": n})))
    };
    let count = |m: &std::collections::BTreeMap<String, Vec<i64>>, key: &str| {
        m.get(key).map_or(0, Vec::len)
    };
    let all = |upto: i64| (0..upto).collect::<Vec<i64>>();
    let without_3 = |upto: i64| (0..upto).filter(|n| *n != 3).collect::<Vec<i64>>();
    let parked_jobs = || async {
        stream_messages(&js, "HMS_SYNC_PARKED")
            .await
            .into_iter()
            .filter(|p| p.get("event").is_some())
            .collect::<Vec<_>>()
    };

    // First 0..5 of every key: k0's n = 3 is parked, k0's n = 4 is delivered after it.
    publish_many(&js, "ordered.park.in", events(0..5)).await;
    eventually(T, "k0's n = 3 parked", || async {
        parked_jobs().await.len() == 1
    })
    .await;
    eventually(T, "the first five of every key settled", || async {
        let m = ok_per_key(&target);
        count(&m, "k0") >= 4 && count(&m, "k1") >= 5 && count(&m, "k2") >= 5
    })
    .await;
    let m = ok_per_key(&target);
    assert_eq!(m["k0"], without_3(5), "k0 before the second batch");
    // Then more of every key, k0 included, published after the park: its lane is free.
    publish_many(&js, "ordered.park.in", events(5..10)).await;
    eventually(T, "every later event of every key delivered", || async {
        let m = ok_per_key(&target);
        count(&m, "k0") >= 9 && count(&m, "k1") >= 10 && count(&m, "k2") >= 10
    })
    .await;
    let m = ok_per_key(&target);
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(
        m["k0"],
        without_3(10),
        "k0: delivered out of order or twice"
    );
    assert_eq!(m["k1"], all(10), "k1");
    assert_eq!(m["k2"], all(10), "k2");

    // The refused event was tried once (a permanent error is not retried) and is the one job
    // on HMS_SYNC_PARKED.
    let tries = target
        .requests()
        .iter()
        .filter(|r| refused(&r.json()))
        .count();
    assert_eq!(tries, 1, "k0's n = 3 attempted once");
    let parked = parked_jobs().await;
    assert_eq!(parked.len(), 1, "{parked:#?}");
    let job = &parked[0];
    assert_eq!(job["connector"], "ordered.park.v1");
    let event: serde_json::Value =
        serde_json::from_str(job["event"]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(event, json!({"key": "k0", "n": 3}), "{job:#}");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1, "{job:#}");
    assert_eq!(job["attempts"][0]["status"], 400, "{job:#}");

    // Attempts of one key never go back in publish order: n = 4 of k0 started after n = 3
    // was refused.
    attempts_keep_publish_order_per_key(&target);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_receives_nothing_while_work_waits_is_reopened() {
    // Events held unacknowledged elsewhere look, to the connector, like a stalled pull: its
    // consumer holds work, nothing arrives, nothing is in process. The stall check re-opens the
    // subscription (counted), and the re-opened one delivers once the events come back.
    let (nats, target) = nats_and_target().await;
    let (setup, rt, js) = start_simple(
        &nats,
        &target,
        "stall.v1",
        "stall.in",
        "",
        // An event that a re-open catches on its way to the old subscription waits for the
        // ack timeout: short enough here to come back within the test's wait.
        "delivery:\n  ackWaitMs: 8000\n  stallCheckMs: 300\n",
    )
    .await; // creates the consumer
    rt.shutdown().await;
    // Its pull request must be gone from the server before events are published, or one may
    // go to it.
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    eventually(T, "no pull request left waiting", || {
        let stream = stream.clone();
        async move { stream.consumer_info("stall_v1").await.unwrap().num_waiting == 0 }
    })
    .await;
    publish_numbered(&js, "stall.in", "s", 0..3).await;
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("HMS_EVENTS")
        .await
        .unwrap()
        .get_consumer("stall_v1")
        .await
        .unwrap();
    let mut held = Vec::new();
    // A batch request waits (up to its expiry) for all 3; `fetch` takes only those ready now.
    let mut batch = consumer
        .batch()
        .max_messages(3)
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .unwrap();
    while let Some(m) = batch.next().await {
        held.push(m.unwrap());
    }
    assert_eq!(
        held.len(),
        3,
        "the events are held, unacknowledged, by another client"
    );

    let rt = setup.start().await;
    eventually(T, "the stalled-looking pull re-opened", || async {
        metric(&rt, "sync_pull_reopened_total{connector=\"stall.v1\"}").await >= 1.0
    })
    .await;
    assert_eq!(target.count(), 0);
    for m in &held {
        m.ack_with(async_nats::jetstream::AckKind::Nak(None))
            .await
            .unwrap();
    }
    eventually(
        T,
        "the 3 events delivered on the re-opened pull",
        || async { target.count() >= 3 },
    )
    .await;
    rt.shutdown().await;
}

/// Attempts of one key (failed ones included) never go back in publish order (`n`).
fn attempts_keep_publish_order_per_key(target: &Target) {
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for r in target.requests() {
        let j = r.json();
        let (k, n) = (
            j["key"].as_str().unwrap().to_string(),
            j["n"].as_i64().unwrap(),
        );
        let prev = last.insert(k.clone(), n).unwrap_or(-1);
        assert!(n >= prev, "{k}: attempt of n={n} after n={prev}");
    }
}

/// The `n`s each key's successful (200) deliveries carried, in arrival order.
fn ok_per_key(target: &Target) -> std::collections::BTreeMap<String, Vec<i64>> {
    let mut m: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for r in target.requests().iter().filter(|r| r.status == 200) {
        let j = r.json();
        m.entry(j["key"].as_str().unwrap().to_string())
            .or_default()
            .push(j["n"].as_i64().unwrap());
    }
    m
}
