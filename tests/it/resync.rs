//! "Send it all again" (issue 18 point 2): `hms-sync resync` resends past events through the
//! connector's filter and mapping with their original idempotency keys, without moving its
//! live consumer; `parked replay` with `--connector`, `--since`, `--reason`, `--dry-run`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

async fn hms(setup: &Setup, args: &[&str]) -> (i32, String, String) {
    hms_sync_on(setup, args, &[("USER", "rosa")]).await
}

/// `hms-sync resync resync.r.v1 --since 10m MORE` (the connector and window of the resync
/// test).
async fn resync_r(setup: &Setup, more: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = ["resync", "resync.r.v1", "--since", "10m"]
        .into_iter()
        .chain(more.iter().copied())
        .collect();
    hms(setup, &args).await
}

/// `hms-sync parked replay --connector replay.p.v1 --reason REASON MORE` (the connector of the
/// replay test).
async fn replay_p(setup: &Setup, reason: &str, more: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = [
        "parked",
        "replay",
        "--connector",
        "replay.p.v1",
        "--reason",
        reason,
    ]
    .into_iter()
    .chain(more.iter().copied())
    .collect();
    hms(setup, &args).await
}

/// Idempotency-Key of every request, by path.
fn keys_by_path(target: &Target) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in target.requests() {
        out.entry(r.path.clone())
            .or_default()
            .push(r.headers["idempotency-key"].to_str().unwrap().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_resends_with_the_original_keys_without_moving_the_consumer() {
    let (nats, target) = nats_and_target().await;
    let connector = format!(
        "id: resync.r.v1\ntype: outbound\ntrigger:\n  topic: resync.topic\n  filter: \"!has(object.skip)\"\nmap:\n  to:\n    url: \"{}/items/{{id}}\"\n    method: PUT\n    body:\n      id: \"{{{{ id }}}}\"\n",
        target.url()
    );
    let (setup, rt, js) = start_with(&nats, &[("r.yaml", connector)], "").await;
    for i in 1..=5 {
        publish(&js, "resync.topic", json!({"id": format!("R-{i}")})).await;
    }
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "with-msg-id");
    js.publish_with_headers("resync.topic", h, json!({"id": "R-6"}).to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish(&js, "resync.topic", json!({"id": "R-skip", "skip": true})).await;
    wait_idle(&js, "resync_r_v1", Duration::from_secs(20)).await;
    assert_eq!(target.count(), 6);
    let before = keys_by_path(&target);
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    let info_before = stream.consumer_info("resync_r_v1").await.unwrap();

    // A dry run sends nothing and tells what it would.
    let last_before = js
        .get_stream("HMS_EVENTS")
        .await
        .unwrap()
        .cached_info()
        .state
        .last_sequence;
    let (code, out, err) = resync_r(&setup, &["--dry-run"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("resync.r.v1: 7 events on resync.topic since ")
            && out.contains(": 6 to resend, 1 filtered out by the connector, 0 not matching --where, 0 not JSON\n"),
        "{out}"
    );
    assert!(
        out.contains("  would resend HMS_EVENTS seq 1 (resync.topic, published "),
        "{out}"
    );
    assert!(
        out.contains(&format!("with Idempotency-Key {}", before["/items/R-1"][0])),
        "{out}"
    );
    assert!(out.ends_with("dry run: nothing sent\n"), "{out}");
    let mut s = js.get_stream("HMS_EVENTS").await.unwrap();
    assert_eq!(
        s.info().await.unwrap().state.last_sequence,
        last_before,
        "nothing published"
    );
    assert_eq!(target.count(), 6);

    // One event, by field: delivered again with its original key.
    let (code, out, err) = resync_r(&setup, &["--where", "id=R-3"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("resync.r.v1: resent 1 event (HMS_EVENTS seq "),
        "{out}"
    );
    assert!(out.contains("): 1 delivered, 0 parked, 0 other"), "{out}");
    assert_eq!(
        keys_by_path(&target)["/items/R-3"],
        vec![before["/items/R-3"][0].clone(); 2]
    );

    // Everything, in chunks of 2: each event once more, each with its original key.
    let (code, out, err) = resync_r(&setup, &["--chunk", "2", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["selection"]["selected"], 6, "{v:#}");
    assert_eq!(v["selection"]["filtered_out"], 1);
    assert_eq!(v["sent"]["sent"], 6);
    assert_eq!(v["outcomes"]["delivered"], 6, "{v:#}");
    let after = keys_by_path(&target);
    for (path, keys) in &before {
        let want = if path == "/items/R-3" { 3 } else { 2 };
        assert_eq!(after[path].len(), want, "{path}: {after:#?}");
        assert!(
            after[path].iter().all(|k| *k == keys[0]),
            "{path}: {after:#?}"
        );
    }
    assert!(
        !after.contains_key("/items/R-skip"),
        "filtered out stays out"
    );

    // The live consumer did not move: same deliver policy and no backlog; a live event is
    // delivered once, as usual.
    let info = stream.consumer_info("resync_r_v1").await.unwrap();
    assert_eq!(
        info.config.deliver_policy,
        info_before.config.deliver_policy
    );
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    publish(&js, "resync.topic", json!({"id": "R-live"})).await;
    eventually(Duration::from_secs(10), "the live event", || async {
        keys_by_path(&target).contains_key("/items/R-live")
    })
    .await;
    wait_idle(&js, "resync_r_v1", Duration::from_secs(10)).await;
    assert_eq!(keys_by_path(&target)["/items/R-live"].len(), 1);

    // Bad input: exit 2, saying which argument and why.
    let (code, _, err) = resync_r(&setup, &["--until", "1h"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("--until") && err.contains("is before --since"),
        "{err}"
    );
    let (code, _, err) = hms(&setup, &["resync", "nope.v1", "--since", "10m"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("no outbound connector nope.v1 (in force: resync.r.v1)"),
        "{err}"
    );

    // With no `up` running the connector, it says so (after 10 s without a pull) instead
    // of waiting; what was sent stays queued and goes out once one runs.
    rt.shutdown().await;
    let (code, out, err) = resync_r(&setup, &["--where", "id=R-1"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(
            "no running `hms-sync up` pulls from consumer resync_r_v1 (1 events wait for it)"
        ),
        "{err}"
    );
    let rt = setup.start().await;
    eventually(
        Duration::from_secs(10),
        "delivered once up runs",
        || async { keys_by_path(&target)["/items/R-1"].len() == 3 },
    )
    .await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_replay_by_connector_reason_and_time_with_a_dry_run() {
    let (nats, target) = nats_and_target().await;
    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    target.respond(
        move |r, _| match (f.load(Ordering::SeqCst), r.path.as_str()) {
            (false, p) if p.contains("P-4") => (400, vec![]),
            (false, p) if p.contains("-5") => (503, vec![]),
            _ => (200, vec![]),
        },
    );
    let retry = "retry:\n  max: 1\n  backoffMs: 10\n";
    let (setup, rt, js) = start_with(
        &nats,
        &[
            (
                "p.yaml",
                simple_connector("replay.p.v1", "replay.p", &target, retry),
            ),
            (
                "q.yaml",
                simple_connector("replay.q.v1", "replay.q", &target, retry),
            ),
        ],
        "",
    )
    .await;
    for id in ["P-1", "P-4", "P-5a", "P-5b"] {
        publish(&js, "replay.p", json!({"id": id, "n": 1})).await;
    }
    publish(&js, "replay.q", json!({"id": "Q-5", "n": 1})).await;
    eventually(Duration::from_secs(20), "4 parked", || async {
        stream_messages(&js, "HMS_SYNC_PARKED").await.len() == 4
    })
    .await;
    let first_keys = keys_by_path(&target);

    // A dry run: which would go, nothing sent.
    let (code, out, err) = replay_p(&setup, "http 503", &["--dry-run"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("would replay parked job ")
            && lines[0].contains("(replay.p.v1, parked "),
        "{out}"
    );
    assert!(lines[0].ends_with(", 1 attempts): HTTP 503"), "{out}");
    assert_eq!(
        lines[2],
        "dry run: 2 parked jobs would be replayed; nothing sent"
    );
    assert_eq!(stream_messages(&js, "HMS_SYNC_PARKED").await.len(), 4);
    let (code, _, err) = hms(&setup, &["parked", "replay", "--since", "soon"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("--since: `soon`: expected a duration"),
        "{err}"
    );

    // Fixed: replay the 503s of one connector; the other connector's 503 stays.
    fixed.store(true, Ordering::SeqCst);
    let (code, out, err) = replay_p(&setup, "HTTP 503", &["--since", "1h"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.ends_with(
            "replayed 2 parked jobs: replay.p.v1: 2 delivered, 0 parked again, 0 other\n"
        ),
        "{out}"
    );
    let keys = keys_by_path(&target);
    for p in ["/items/P-5a", "/items/P-5b"] {
        assert_eq!(keys[p].len(), 2, "{keys:#?}");
        assert_eq!(keys[p][1], first_keys[p][0], "the original key");
    }
    assert_eq!(keys["/items/Q-5"].len(), 1, "another connector's job stays");
    assert_eq!(keys["/items/P-4"].len(), 1, "another reason stays");

    // The rest, JSON.
    let (code, out, err) = hms(&setup, &["parked", "replay", "--all", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["replayed"].as_array().unwrap().len(), 2, "{v:#}");
    assert_eq!(v["outcomes"]["replay.p.v1"]["delivered"], 1);
    assert_eq!(v["outcomes"]["replay.q.v1"]["delivered"], 1);
    assert!(v["replayed"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["by"] == "rosa" && r["via"] == "cli"));
    let (_, out, _) = hms(&setup, &["parked", "list"]).await;
    assert_eq!(out, "no parked jobs\n");

    // Every action is on the audit trail, which verifies.
    let reviews: Vec<Value> = audit_records(&js)
        .await
        .into_iter()
        .filter(|r| r["kind"] == "review")
        .collect();
    assert_eq!(reviews.len(), 4, "{reviews:#?}");
    assert!(reviews
        .iter()
        .all(|r| r["action"] == "replayed" && r["by"] == "rosa" && r["at"].is_string()));
    let (code, out, err) = hms(&setup, &["audit", "verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    rt.shutdown().await;
}
