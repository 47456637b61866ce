//! Discard (issue 18 point 3): a parked job dropped for good, from the API (the admin token and
//! a name needed) or with `hms-sync parked discard`. It leaves the review queue, its target
//! never gets it again, and the action is recorded: on `sync.resolved.<consumer>` with the job
//! itself, and on the audit trail with who, how, from where, when and why.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const ID: &str = "discard.gis.v1";
const TOPIC: &str = "discard.permit";
const TOKEN: &str = "discard-admin-token-3e9f1a7c";
const T: Duration = Duration::from_secs(30);

/// `POST {base}/api/parked/{id}/discard` with this token, `X-Hms-Operator` and body: the
/// status and the answer as JSON (`Null` when it is not).
async fn discard(
    base: &str,
    id: u64,
    token: Option<&str>,
    operator: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{base}/api/parked/{id}/discard"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(o) = operator {
        req = req.header("X-Hms-Operator", o);
    }
    if !body.is_empty() {
        req = req
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// `GET url` with the admin token: the status and the answer as JSON.
async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The jobs waiting on `HMS_SYNC_PARKED`: (id, the URL their request went to).
async fn waiting(js: &async_nats::jetstream::Context) -> Vec<(u64, String)> {
    stream_raw(js, "HMS_SYNC_PARKED")
        .await
        .into_iter()
        .filter(|m| m.subject.starts_with("sync.parked."))
        .map(|m| {
            let job: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            (
                m.sequence,
                job["url"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The records of review actions on `sync.resolved.<consumer>` (`HMS_SYNC_PARKED`).
async fn resolved(js: &async_nats::jetstream::Context, consumer: &str) -> Vec<Value> {
    let subject = format!("sync.resolved.{consumer}");
    stream_raw(js, "HMS_SYNC_PARKED")
        .await
        .into_iter()
        .filter(|m| *m.subject == *subject)
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

/// The audit record (`kind: review`) of the action on parked job `id`.
async fn review_record(js: &async_nats::jetstream::Context, id: u64) -> Value {
    eventually_some(
        T,
        &format!("the audit record of parked job {id}"),
        || async {
            audit_records(js)
                .await
                .into_iter()
                .find(|r| r["kind"] == "review" && r["parkedId"] == id)
        },
    )
    .await
}

/// Requests the target got for `/items/<item>`.
fn requests_for(target: &Target, item: &str) -> usize {
    let path = format!("/items/{item}");
    target.requests().iter().filter(|r| r.path == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_drops_a_parked_job_for_good_and_records_who_when_and_why() {
    let (nats, target) = nats_and_target().await;
    // The target refuses the D-* events for good (422: parked at the first attempt).
    target.respond(|r, _| {
        if r.path.starts_with("/items/D-") {
            (422, vec![])
        } else {
            (200, vec![])
        }
    });
    let setup = Setup::with_http(
        &nats,
        &[("c.yaml", simple_connector(ID, TOPIC, &target, ""))],
        &format!("  adminListen: 127.0.0.1:0\n  adminToken: {TOKEN}\n"),
        "",
    );
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    let base = format!("http://{}", rt.admin_addr());
    let consumer = hms_sync::connector::consumer_name(ID);
    publish(&js, TOPIC, json!({"id": "D-1", "n": 1})).await;
    publish(&js, TOPIC, json!({"id": "D-2", "n": 2})).await;
    let jobs = eventually_some(T, "D-1 and D-2 parked", || async {
        let w = waiting(&js).await;
        (w.len() == 2 && target.count() == 2).then_some(w)
    })
    .await;
    let id_of = |item: &str| {
        jobs.iter()
            .find(|(_, url)| url.ends_with(&format!("/items/{item}")))
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("no parked job for {item}: {jobs:?}"))
    };
    let (d1, d2) = (id_of("D-1"), id_of("D-2"));
    let key = target
        .requests()
        .into_iter()
        .find(|r| r.path == "/items/D-1")
        .unwrap()
        .headers["idempotency-key"]
        .to_str()
        .unwrap()
        .to_string();

    // Without the admin token, or with a wrong one: 401. With it but without a name, or with
    // a body that is not JSON: 400. The job stays.
    for token in [None, Some("discard-admin-token-3e9f1a7d")] {
        let (status, body) = discard(&base, d1, token, Some("rosa"), "").await;
        assert_eq!(status, 401, "token {token:?}: {body}");
        assert!(!body.to_string().contains(TOKEN), "{body}");
    }
    let (status, body) = discard(&base, d1, Some(TOKEN), None, "").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("X-Hms-Operator"),
        "{body}"
    );
    let (status, body) = discard(&base, d1, Some(TOKEN), Some("rosa"), "not json").await;
    assert_eq!(status, 400, "{body}");
    let (status, job) = get_json(&format!("{base}/api/parked/{d1}")).await;
    assert_eq!(status, 200, "still parked: {job}");
    assert_eq!(job["idempotencyKey"], key.as_str(), "{job:#}");
    assert_eq!(waiting(&js).await.len(), 2);
    assert!(resolved(&js, &consumer).await.is_empty());

    // Discarded from the API: the answer is the record of the action, with the job in it.
    let (status, record) = discard(
        &base,
        d1,
        Some(TOKEN),
        Some("Rosa%20Ram%C3%ADrez"),
        r#"{"reason": "  a duplicate of D-2  "}"#,
    )
    .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["action"], "discarded", "{record:#}");
    assert_eq!(record["parkedId"], d1, "{record:#}");
    assert_eq!(record["connector"], ID, "{record:#}");
    assert_eq!(record["idempotencyKey"], key.as_str(), "{record:#}");
    assert_eq!(record["reason"], "a duplicate of D-2", "{record:#}");
    assert_eq!(record["by"], "Rosa Ramírez", "{record:#}");
    assert_eq!(record["via"], "status page", "{record:#}");
    assert_eq!(record["from"], "127.0.0.1", "{record:#}");
    let at = record["at"].as_str().unwrap_or_default();
    assert!(hms_sync::clock::parse(at).is_some(), "at: {record:#}");
    assert!(
        record["job"]["url"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/items/D-1"),
        "{record:#}"
    );
    assert!(
        record["job"]["event"]["payload"]
            .as_str()
            .unwrap_or_default()
            .contains("D-1"),
        "the job is kept in the record: {record:#}"
    );

    // Gone from the queue: the API, `parked list`, the stream.
    let (status, body) = get_json(&format!("{base}/api/parked/{d1}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, list) = get_json(&format!("{base}/api/parked")).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<u64> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_u64())
        .collect();
    assert_eq!(ids, [d2], "{list:#}");
    assert_eq!(list["total"], 1, "{list:#}");
    let (code, out, err) = hms_sync_on(&setup, &["parked", "list", "--json"], &[]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let cli_ids: Vec<u64> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect();
    assert_eq!(cli_ids, [d2], "{out}");
    assert_eq!(waiting(&js).await.len(), 1);
    // Discarding it again: there is nothing to discard.
    let (status, body) = discard(&base, d1, Some(TOKEN), Some("rosa"), "").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("already replayed or discarded"),
        "{body}"
    );

    // Recorded on sync.resolved.<consumer> (with the job) and on the audit trail.
    let records = resolved(&js, &consumer).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["action"], "discarded");
    assert_eq!(records[0]["parkedId"], d1);
    assert_eq!(records[0]["by"], "Rosa Ramírez");
    assert_eq!(records[0]["job"]["idempotencyKey"], key.as_str());
    let review = review_record(&js, d1).await;
    assert_eq!(review["action"], "discarded", "{review:#}");
    assert_eq!(review["connector"], ID, "{review:#}");
    assert_eq!(review["idempotencyKey"], key.as_str(), "{review:#}");
    assert_eq!(review["reason"], "a duplicate of D-2", "{review:#}");
    assert_eq!(review["by"], "Rosa Ramírez", "{review:#}");
    assert_eq!(review["via"], "status page", "{review:#}");
    assert_eq!(review["from"], "127.0.0.1", "{review:#}");
    assert_eq!(review["at"], at, "{review:#}");
    assert!(review["hash"].is_string(), "{review:#}");
    // "Where is my event?" tells it was discarded, by whom and why.
    let (status, trace) = get_json(&format!("{base}/api/trace?key={key}&since=1h")).await;
    assert_eq!(status, 200, "{trace}");
    let seen = trace["events"][0]["connectors"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == ID))
        .cloned()
        .unwrap_or_else(|| panic!("no {ID} in {trace:#}"));
    let resolution = &seen["parked"][0]["resolution"];
    assert_eq!(resolution["action"], "discarded", "{seen:#}");
    assert_eq!(resolution["by"], "Rosa Ramírez", "{seen:#}");
    assert_eq!(resolution["reason"], "a duplicate of D-2", "{seen:#}");

    // Nothing sends it again: no replay on HMS_EVENTS, and an event published after the
    // discard is delivered while D-1 stays at its one attempt.
    publish(&js, TOPIC, json!({"id": "OK-1", "n": 3})).await;
    eventually(T, "OK-1 delivered", || async {
        target
            .requests()
            .iter()
            .any(|r| r.path == "/items/OK-1" && r.status == 200)
    })
    .await;
    wait_idle(&js, &consumer, T).await;
    assert_eq!(requests_for(&target, "D-1"), 1, "D-1 was sent again");
    let replays = stream_raw(&js, "HMS_EVENTS")
        .await
        .into_iter()
        .filter(|m| m.subject.starts_with("hms.replay."))
        .count();
    assert_eq!(replays, 0, "a discard publishes nothing");

    // Discarded on the command line: `hms-sync parked discard <id>`.
    let d2s = d2.to_string();
    let (code, out, err) = hms_sync_on(
        &setup,
        &["parked", "discard", &d2s, "--reason", "test data", "--json"],
        &[("USER", "rosa")],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let record: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(record["action"], "discarded", "{record:#}");
    assert_eq!(record["parkedId"], d2, "{record:#}");
    assert_eq!(record["connector"], ID, "{record:#}");
    assert_eq!(record["reason"], "test data", "{record:#}");
    assert_eq!(record["by"], "rosa", "{record:#}");
    assert_eq!(record["via"], "cli", "{record:#}");
    assert!(record["from"].is_null(), "{record:#}");
    assert!(record["at"].is_string(), "{record:#}");
    let (code, out, err) = hms_sync_on(&setup, &["parked", "list"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "no parked jobs\n");
    let (code, _, err) = hms_sync_on(&setup, &["parked", "show", &d2s], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains(&format!("no parked job {d2}")), "{err}");
    let (code, _, err) = hms_sync_on(&setup, &["parked", "discard", &d2s], &[]).await;
    assert_eq!(code, 1, "nothing to discard twice");
    assert!(err.contains(&format!("no parked job {d2}")), "{err}");
    let (status, list) = get_json(&format!("{base}/api/parked")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 0, "{list:#}");
    assert!(waiting(&js).await.is_empty());
    let review = review_record(&js, d2).await;
    assert_eq!(review["action"], "discarded", "{review:#}");
    assert_eq!(review["reason"], "test data", "{review:#}");
    assert_eq!(review["by"], "rosa", "{review:#}");
    assert_eq!(review["via"], "cli", "{review:#}");
    assert!(
        review["at"].is_string() && review["hash"].is_string(),
        "{review:#}"
    );
    assert_eq!(resolved(&js, &consumer).await.len(), 2);
    assert_eq!(requests_for(&target, "D-2"), 1, "D-2 was sent again");
    // Both actions are on a trail that verifies.
    let (code, out, err) = hms_sync_on(&setup, &["audit", "verify"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    rt.shutdown().await;
}
