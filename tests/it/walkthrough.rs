//! The seed's walk-through end to end, and the runtime's supervision.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_walkthrough_patches_ddot_events_and_skips_others() {
    std::env::set_var("ARC_TOKEN", "arc-secret-token");
    let (nats, target) = nats_and_target().await;
    let (_setup, rt, js) =
        start_with(&nats, &[("gis-ddot.yaml", seed_connector(&target))], "").await;

    // Plain core NATS publish, like `nats pub permit.updated '{...}'`.
    let client = nats.client().await;
    publish_plain(&client, "permit.updated", SEED_PERMIT).await;
    publish_plain(
        &client,
        "permit.updated",
        r#"{"permitId":"NY-1","agency":"NYC","startDate":"2024-05-11","status":"APPROVED"}"#,
    )
    .await;
    client.flush().await.unwrap();

    eventually(T, "one PATCH at the target", || async {
        target.count() >= 1
    })
    .await;
    let consumer_name = "ddot_gis_outbound_v1";
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    eventually(T, "both events acked", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info(consumer_name).await.unwrap();
            info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence >= 2
        }
    })
    .await;
    let reqs = target.requests();
    assert_eq!(reqs.len(), 1, "the NYC event must not be sent: {reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.method, "PATCH");
    assert_eq!(r.path, "/item/roadwork/RW-481");
    assert_eq!(
        r.header("authorization").as_deref(),
        Some("Bearer arc-secret-token")
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(r.header("idempotency-key").is_some_and(|k| k.len() == 32));
    assert_eq!(
        r.json(),
        json!({"start_date": "2024-05-10", "status": "APPROVED"})
    );

    // The consumer carries its contract name and description.
    let info = stream.consumer_info(consumer_name).await.unwrap();
    assert_eq!(
        info.config.description.as_deref(),
        Some("ddot.gis.outbound.v1")
    );
    assert_eq!(
        info.config.filter_subjects,
        ["permit.updated", "hms.replay.ddot_gis_outbound_v1"]
    );

    // HTTP surface.
    let base = format!("http://{}", rt.http_addr());
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert!(
        metrics.contains(r#"sync_ok_total{connector="ddot.gis.outbound.v1"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("sync_latency_ms_bucket{connector=\"ddot.gis.outbound.v1\""),
        "{metrics}"
    );
    assert!(!metrics.contains("arc-secret-token"));
    let api: serde_json::Value =
        serde_json::from_str(&get_text(&format!("{base}/api/connectors")).await).unwrap();
    assert_eq!(api[0]["id"], "ddot.gis.outbound.v1");
    assert_eq!(api[0]["state"], "running");
    assert_eq!(api[0]["delivered"], 1);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_stay_data_end_to_end() {
    let (nats, target) = nats_and_target().await;
    let (_setup, rt, js) = start_simple(&nats, &target, "hostile.v1", "hostile.in", "", "").await;
    let values = [
        r#""}, "x": {""#,
        "../../admin?a=b#frag",
        "ünï {{ n }} ${ARC_TOKEN}",
        "a\r\nX-Evil: 1",
    ];
    for v in values {
        publish(&js, "hostile.in", json!({"id": v, "n": v})).await;
    }
    eventually(T, "all hostile events delivered", || async {
        target.count() == values.len()
    })
    .await;
    for v in values {
        let r = target
            .requests()
            .into_iter()
            .find(|r| r.json()["id"] == json!(v))
            .expect("delivered");
        let encoded: String =
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
                .replace("%2D", "-")
                .replace("%2E", ".")
                .replace("%5F", "_")
                .replace("%7E", "~");
        assert_eq!(r.path, format!("/items/{encoded}"), "{v:?}");
        assert_eq!(r.json(), json!({"id": v, "n": v}));
        assert!(r.header("x-evil").is_none());
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connector_actor_is_restarted_and_loses_nothing() {
    let (nats, target) = nats_and_target().await;
    // Slow answers so that events are in flight when the actor dies.
    target.respond(|_, _| {
        std::thread::sleep(Duration::from_millis(5));
        (200, vec![])
    });
    let connectors = [
        (
            "a.yaml",
            simple_connector("crashy.v1", "crash.in", &target, ""),
        ),
        (
            "b.yaml",
            simple_connector("steady.v1", "steady.in", &target, ""),
        ),
    ];
    let (_setup, rt, js) = start_with(
        &nats,
        &connectors,
        "delivery:\n  ackWaitMs: 2000\n  maxInFlight: 8\n",
    )
    .await;
    for i in 0..200 {
        publish(&js, "crash.in", json!({"id": format!("c{i}"), "n": i})).await;
        publish(&js, "steady.in", json!({"id": format!("s{i}"), "n": i})).await;
        if i == 50 {
            let actor = rt.connector_actor("crashy.v1").await.expect("running");
            actor.kill();
        }
    }
    eventually(T, "crashy restarted", || async {
        rt.status().await.iter().any(|v| {
            v.id == "crashy.v1"
                && v.restarts >= 1
                && v.state == hms_sync::actors::supervisor::RunState::Running
        })
    })
    .await;
    let ids = || -> std::collections::HashSet<String> {
        target
            .requests()
            .iter()
            .map(|r| r.json()["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let missing = || -> Vec<String> {
        let s = ids();
        (0..200)
            .flat_map(|i| [format!("c{i}"), format!("s{i}")])
            .filter(|id| !s.contains(id))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !missing().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "never delivered: {:?}",
            missing()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let steady = rt
        .status()
        .await
        .into_iter()
        .find(|v| v.id == "steady.v1")
        .unwrap();
    assert_eq!(steady.restarts, 0, "the other connector kept running");
    rt.shutdown().await;
}
