//! `hms-sync status`, `/api/connectors` and `/api/overview`: live numbers from a running instance, and what NATS alone knows without one.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// The connector that delivers some events and parks two.
pub const ID: &str = "ddot.gis.outbound.v1";
/// A second connector that delivers one event.
pub const OTHER: &str = "crew.calendar.outbound.v1";
/// Markup in a parked job's error (the event's own data): must show as text, never as HTML.
pub const XSS: &str = "<b id=\"xss\">boom</b>";

/// A runtime whose connector `ID` delivered 3 events and parked 2 (an HTTP 404, and an event
/// that fails the input schema with markup in it), and whose `OTHER` delivered 1.
pub struct Scene {
    pub rt: hms_sync::Runtime,
    pub setup: Setup,
    pub nats: Nats,
}

pub async fn scene() -> Scene {
    let (nats, target) = nats_and_target().await;
    target.respond(|r, _| {
        if r.path.contains("RW-404") {
            (404, vec![])
        } else {
            (200, vec![])
        }
    });
    let retry = "retry:\n  max: 2\n  backoffMs: 10\n";
    let (setup, rt, js) = start_with(
        &nats,
        &[
            (
                "gis.yaml",
                simple_connector(ID, "permit.updated", &target, retry),
            ),
            (
                "calendar.yaml",
                simple_connector(OTHER, "crew.shift", &target, retry),
            ),
        ],
        "",
    )
    .await;
    for i in 1..=3 {
        publish(
            &js,
            "permit.updated",
            json!({"id": format!("RW-48{i}"), "n": i}),
        )
        .await;
    }
    publish(&js, "permit.updated", json!({"id": "RW-404", "n": 4})).await;
    publish(&js, "permit.updated", json!({"id": {"note": XSS}, "n": 5})).await;
    publish(&js, "crew.shift", json!({"id": "S-1", "n": 1})).await;
    eventually(
        Duration::from_secs(30),
        "3 delivered and 2 parked",
        || async {
            let v = rt.status().await;
            let c = v.iter().find(|c| c.id == ID);
            let o = v.iter().find(|c| c.id == OTHER);
            matches!((c, o), (Some(c), Some(o)) if c.delivered == 3 && c.parked == 2 && o.delivered == 1)
        },
    )
    .await;
    Scene { rt, setup, nats }
}

async fn get_json(url: &str) -> Value {
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Runs `hms-sync status ARGS` on the scene's config; (exit code, stdout, stderr).
async fn status(setup: &Setup, args: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = std::iter::once("status")
        .chain(args.iter().copied())
        .collect();
    hms_sync_on(setup, &args, &[]).await
}

fn row<'a>(rows: &'a Value, id: &str) -> &'a Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no row for {id} in {rows:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_from_the_instance_then_from_nats_alone() {
    let Scene {
        rt, setup, nats, ..
    } = scene().await;
    let base = format!("http://{}", rt.http_addr());

    // The JSON API: parked jobs counted on NATS, per connector and in total.
    let api = get_json(&format!("{base}/api/connectors")).await;
    let c = row(&api, ID);
    assert_eq!(c["parked_jobs"], 2, "{c:#}");
    assert_eq!(c["consumer_stats"]["pending"], 0, "{c:#}");
    assert_eq!(row(&api, OTHER)["parked_jobs"], 0);
    let overview = get_json(&format!("{base}/api/overview")).await;
    assert_eq!(overview["parked_total"], 2, "{overview:#}");
    assert_eq!(overview["nats_state"], "connected", "{overview:#}");
    assert_eq!(overview["connectors"], 2, "{overview:#}");

    // `status` asks the running instance: table and JSON.
    let (code, out, err) = status(&setup, &["--url", &base]).await;
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("CONNECTOR") && header.ends_with("LAST ERROR"),
        "{out}"
    );
    let line = out.lines().find(|l| l.starts_with(ID)).unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    // CONNECTOR STATE PENDING ACK-PENDING REDELIVERED PARKED P50 P99 LAST-ERROR...
    assert_eq!(&cols[1..6], ["running", "0", "0", "0", "2"], "{out}");
    assert!(cols[6].parse::<f64>().is_ok(), "p50 latency: {out}");
    assert!(!out.contains(['\u{1b}']), "{out}");
    let (code, out, err) = status(&setup, &["--url", &base, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let r = row(&rows, ID);
    assert_eq!(r["state"], "running");
    assert_eq!(r["consumer"], "ddot_gis_outbound_v1");
    assert_eq!(
        (
            &r["pending"],
            &r["ack_pending"],
            &r["parked"],
            &r["delivered"]
        ),
        (&json!(0), &json!(0), &json!(2), &json!(3))
    );
    assert!(r["latency_p50_ms"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(r["latency_p99_ms"].as_f64().unwrap() >= r["latency_p50_ms"].as_f64().unwrap());
    assert!(
        r["last_error"].as_str().unwrap().contains("items/"),
        "{r:#}"
    );
    assert_eq!(row(&rows, OTHER)["parked"], 0);

    // No instance: what NATS knows, said on stderr and in the state.
    rt.shutdown().await;
    let gone = format!("http://127.0.0.1:{}", free_port());
    let (code, out, err) = status(&setup, &["--url", &gone, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("no running instance at {gone}")),
        "{err}"
    );
    assert!(err.contains(&nats.url()), "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let r = row(&rows, ID);
    assert_eq!(
        r["state"],
        format!("unknown (no running instance at {gone})")
    );
    assert_eq!(r["consumer"], "ddot_gis_outbound_v1");
    assert_eq!((&r["pending"], &r["parked"]), (&json!(0), &json!(2)));
    assert_eq!(r["redelivered"], 0);
    assert!(r["last_error"].is_null() && r["latency_p50_ms"].is_null());
    let (code, out, _) = status(&setup, &["--url", &gone]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with(OTHER) && l.contains("unknown (no running instance at")),
        "{out}"
    );

    // Neither an instance nor NATS: an error, exit 1.
    drop(nats);
    let (code, _, err) = status(&setup, &["--url", &gone]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing answers at"), "{err}");
}
