//! "Where is my event?" (issue 18 point 1): `hms-sync trace` by stream sequence, Nats-Msg-Id,
//! idempotency key and payload field, per connector (filtered out, each attempt, parked with
//! its id, delivered), as text and `--json`, and the same search at `/api/trace`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const GIS: &str = "trace.gis.v1";
const CAL: &str = "trace.cal.v1";

fn gis(target: &Target) -> String {
    format!(
        "id: {GIS}\ntype: outbound\ntrigger:\n  topic: permit.updated\n  filter: object.agency == \"DDOT\"\nmap:\n  to:\n    url: \"{}/gis/{{permitId}}\"\n    method: PATCH\n    body:\n      status: \"{{{{ status }}}}\"\nretry:\n  max: 3\n  backoffMs: 20\n",
        target.url()
    )
}

fn cal(target: &Target) -> String {
    format!(
        "id: {CAL}\ntype: outbound\ntrigger:\n  topic: permit.updated\nmap:\n  to:\n    url: \"{}/cal/{{permitId}}\"\n    method: PUT\n",
        target.url()
    )
}

async fn publish_with(
    js: &async_nats::jetstream::Context,
    body: Value,
    msg_id: Option<&str>,
) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert("Nats-Msg-Id", id);
    }
    js.publish_with_headers("permit.updated", headers, body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

async fn trace(setup: &Setup, args: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = std::iter::once("trace")
        .chain(args.iter().copied())
        .collect();
    hms_sync_on(setup, &args, &[]).await
}

async fn trace_json(setup: &Setup, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = trace(setup, &a).await;
    assert!(code == 0 || code == 1, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
}

fn connector<'a>(event: &'a Value, id: &str) -> &'a Value {
    event["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {event:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_finds_events_and_tells_what_each_connector_did() {
    let (nats, target) = nats_and_target().await;
    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    target.respond(move |r, before| {
        if r.path.contains("/gis/RW-503") && before == 0 {
            (503, vec![])
        } else if r.path.contains("/gis/RW-400") && !f.load(Ordering::SeqCst) {
            (400, vec![])
        } else {
            (200, vec![])
        }
    });
    let (setup, rt, js) = start_with(
        &nats,
        &[("gis.yaml", gis(&target)), ("cal.yaml", cal(&target))],
        "",
    )
    .await;
    let s1 = publish_with(
        &js,
        json!({"permitId": "RW-1", "agency": "DDOT", "status": "OK"}),
        Some("m-1"),
    )
    .await;
    let s2 = publish_with(
        &js,
        json!({"permitId": "RW-503", "agency": "DDOT", "status": "OK"}),
        None,
    )
    .await;
    let s3 = publish_with(
        &js,
        json!({"permitId": "RW-2", "agency": "NYC", "status": "OK"}),
        None,
    )
    .await;
    let s4 = publish_with(
        &js,
        json!({"permitId": "RW-400", "agency": "DDOT", "status": "OK"}),
        None,
    )
    .await;
    wait_idle(&js, "trace_gis_v1", Duration::from_secs(20)).await;
    wait_idle(&js, "trace_cal_v1", Duration::from_secs(20)).await;

    // By stream sequence: a retry, then a delivery; the other connector delivered at once.
    let report = eventually_some(
        Duration::from_secs(10),
        "both attempts in the audit trail",
        || {
            let setup = &setup;
            async move {
                let r = trace_json(setup, &[&s2.to_string()]).await;
                r["events"][0]["connectors"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().all(|c| c["outcome"] == "delivered"))
                    .then_some(r)
            }
        },
    )
    .await;
    let e = &report["events"][0];
    assert_eq!(e["stream_sequence"], s2);
    assert_eq!(e["subject"], "permit.updated");
    let g = connector(e, GIS);
    let statuses: Vec<&Value> = g["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, [503, 200], "{g:#}");
    assert_eq!(g["attempts"][1]["attempt"], 2);
    assert_eq!(g["attempts"][0]["method"], "PATCH");
    assert_eq!(
        g["attempts"][0]["url"],
        format!("{}/gis/RW-503", target.url())
    );
    let key = g["idempotency_key"].as_str().unwrap().to_string();
    let sent: Vec<_> = target
        .requests()
        .into_iter()
        .filter(|r| r.path == "/gis/RW-503")
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sent,
        [key.clone(), key.clone()],
        "the key the target received"
    );
    assert_eq!(connector(e, CAL)["outcome"], "delivered");

    // The text report.
    let (code, text, err) = trace(&setup, &[&s2.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        text.starts_with(&format!(
            "event HMS_EVENTS seq {s2}  permit.updated  published "
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("  {GIS}  (key {key})\n    attempt 1  ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("PATCH {}/gis/RW-503  HTTP 503", target.url())),
        "{text}"
    );
    assert!(text.contains("    => delivered at "), "{text}");

    // A bounded search says when it stopped at its limit.
    let r = trace_json(&setup, &[&s2.to_string(), "--max-scan", "1"]).await;
    assert_eq!(r["attempts_truncated"], true, "{r:#}");
    let (_, text, _) = trace(&setup, &[&s2.to_string(), "--max-scan", "1"]).await;
    assert!(
        text.contains("attempts may be missing; raise --max-scan"),
        "{text}"
    );

    // By Nats-Msg-Id.
    let r = trace_json(&setup, &["--msg-id", "m-1"]).await;
    assert_eq!(r["events"].as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(r["events"][0]["stream_sequence"], s1);
    assert_eq!(r["events"][0]["msg_id"], "m-1");

    // By payload field: filtered out by one connector, delivered by the other.
    let r = trace_json(&setup, &["--where", "permitId=RW-2", "--since", "1h"]).await;
    let e = &r["events"][0];
    assert_eq!(e["stream_sequence"], s3, "{r:#}");
    assert_eq!(connector(e, GIS)["outcome"], "filtered_out");
    assert!(
        connector(e, GIS)["summary"]
            .as_str()
            .unwrap()
            .contains("object.agency == \"DDOT\""),
        "{e:#}"
    );
    assert_eq!(connector(e, CAL)["outcome"], "delivered");

    // By idempotency key: the 400 was parked, with its id.
    let r = trace_json(&setup, &[&s4.to_string(), "--connector", GIS]).await;
    let g = connector(&r["events"][0], GIS);
    assert_eq!(g["outcome"], "parked", "{g:#}");
    let parked_id = g["parked"][0]["id"].as_u64().unwrap();
    assert!(g["summary"]
        .as_str()
        .unwrap()
        .contains(&format!("parked as job {parked_id}")));
    let key4 = g["idempotency_key"].as_str().unwrap().to_string();
    let r = trace_json(&setup, &["--key", &key4]).await;
    assert_eq!(r["events"][0]["stream_sequence"], s4, "{r:#}");
    assert_eq!(r["events"][0]["connectors"].as_array().unwrap().len(), 2);

    // Replayed after the fix: delivered by the replay, with the original key.
    fixed.store(true, Ordering::SeqCst);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(["parked", "replay", &parked_id.to_string(), "--config"])
        .arg(setup.config_path())
        .env_remove("NATS_URL")
        .env("USER", "rosa")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = eventually_some(Duration::from_secs(10), "delivered by the replay", || {
        let (setup, key4) = (&setup, key4.clone());
        async move {
            let r = trace_json(setup, &["--key", &key4]).await;
            let g = connector(&r["events"][0], GIS).clone();
            (g["outcome"] == "delivered").then_some(g)
        }
    })
    .await;
    let attempts = g["attempts"].as_array().unwrap();
    assert_eq!(attempts.last().unwrap()["replay"], true, "{g:#}");
    assert!(g["summary"].as_str().unwrap().contains("a replay"), "{g:#}");
    assert_eq!(g["parked"][0]["resolution"]["action"], "replayed", "{g:#}");
    assert_eq!(g["parked"][0]["resolution"]["by"], "rosa", "{g:#}");
    let last = target
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/gis/RW-400")
        .unwrap();
    assert_eq!(last.headers["idempotency-key"].to_str().unwrap(), key4);

    // The same search on the status page's API.
    let url = format!(
        "http://{}/api/trace?where=permitId%3DRW-2&since=1h",
        rt.admin_addr()
    );
    let api: Value =
        serde_json::from_slice(&reqwest::get(&url).await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(api["events"][0]["stream_sequence"], s3, "{api:#}");
    assert_eq!(connector(&api["events"][0], GIS)["outcome"], "filtered_out");
    let bad = reqwest::get(format!("http://{}/api/trace?seq=x", rt.admin_addr()))
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    // Not found, and bad input.
    let (code, _, err) = trace(&setup, &["999999"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no event at stream sequence 999999"), "{err}");
    let (code, out, _) = trace(&setup, &["--where", "permitId=RW-nothing"]).await;
    assert_eq!(code, 1);
    assert!(
        out.starts_with("no event with permitId=RW-nothing published since "),
        "{out}"
    );
    let (code, _, err) = trace(&setup, &["--where", "novalue"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("--where: `novalue`: expected FIELD=VALUE"),
        "{err}"
    );
    let (code, _, err) = trace(&setup, &[]).await;
    assert_eq!(code, 2, "{err}");
    rt.shutdown().await;
}
