//! The `hms-sync` binary: test, validate and publish outputs and exit codes.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hms-sync"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn run(cmd: &mut Command, stdin: &str) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    code_and_text(&out)
}

#[test]
fn test_prints_the_seed_patch_and_sends_nothing() {
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/connectors/sample_event.json"
    ))
    .unwrap();
    let (code, out, _) = run(
        bin()
            .args(["test", "connectors/gis-ddot.yaml"])
            .env("ARC_TOKEN", "do-not-print"),
        &sample,
    );
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("PATCH https://services.arcgis.com/item/roadwork/RW-481")
    );
    assert!(out.contains("\nAuthorization: Bearer ***\n"), "{out}");
    assert!(
        out.contains("\n\n{\"start_date\":\"2024-05-10\",\"status\":\"APPROVED\"}\n"),
        "{out}"
    );
    assert!(!out.contains("do-not-print"));
}

#[test]
fn test_exit_codes() {
    let (code, out, err) = run(
        bin().args(["test", "connectors/gis-ddot.yaml"]),
        r#"{"agency":"NYC","permitId":"1"}"#,
    );
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("filtered out"), "{err}");
    let (code, _, err) = run(
        bin().args(["test", "connectors/gis-ddot.yaml"]),
        "{not json",
    );
    assert_eq!(code, 2);
    assert!(err.contains("stdin:1:2: event is not valid JSON"), "{err}");
    let (code, _, err) = run(
        bin().args(["test", "connectors/gis-ddot.yaml"]),
        r#"{"agency":"DDOT"}"#,
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("schema check failed") && err.contains("`permitId` is required"),
        "{err}"
    );
}

#[test]
fn validate_reports_every_problem_with_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "id: x.v1\ntype: outbound\ntrigger:\n  topik: a.b\nmap:\n  to:\n    url: \"nope\"\n    method: FETCH\n",
    )
    .unwrap();
    let dup = dir.path().join("dup.yaml");
    std::fs::write(&dup, include_str!("../../connectors/gis-ddot.yaml")).unwrap();
    let (code, out, _) = run(
        bin()
            .arg("validate")
            .arg(&bad)
            .arg("connectors/gis-ddot.yaml")
            .arg(&dup),
        "",
    );
    assert_eq!(code, 2, "{out}");
    let b = bad.display().to_string();
    assert!(
        out.contains(&format!(
            "{b}:4:3: unknown key `topik` in `trigger` (did you mean `topic`?)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}:2:5: duplicate connector id `ddot.gis.outbound.v1`",
            dup.display()
        )),
        "{out}"
    );
    let (code, out, _) = run(bin().args(["validate", "connectors/gis-ddot.yaml"]), "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (ddot.gis.outbound.v1)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_a_running_connector() {
    let (nats, target) = nats_and_target().await;
    let setup = Setup::new(
        &nats,
        &[("c.yaml", simple_connector("pub.v1", "pub.in", &target, ""))],
        "",
    );
    let rt = setup.start().await;
    let (code, out, err) = run(
        bin().args([
            "publish",
            "pub.in",
            "--data",
            r#"{"id":"p1","n":1}"#,
            "--nats-url",
            &nats.url(),
        ]),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stream HMS_EVENTS seq 1"), "{out}");
    eventually(Duration::from_secs(20), "delivered", || async {
        target.count() == 1
    })
    .await;
    assert_eq!(target.requests()[0].json(), json!({"id": "p1", "n": 1}));
    rt.shutdown().await;
}

#[test]
fn test_shows_the_saas_examples_with_auth_masked_and_form_bodies_decoded() {
    let (code, out, err) = run(
        bin()
            .args([
                "test",
                "connectors/stripe-lane-fee.outbound.yaml",
                "connectors/sample_fee_created.json",
            ])
            .env("STRIPE_SECRET_KEY", "sk_live_do_not_print"),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("POST https://api.stripe.com/v1/invoiceitems\n"),
        "{out}"
    );
    assert!(out.contains("\nAuthorization: Bearer ***\n"), "{out}");
    assert!(
        out.contains("\nContent-Type: application/x-www-form-urlencoded\n"),
        "{out}"
    );
    assert!(out.contains("&metadata[feeId]=FEE-2024-0193&"), "{out}");
    assert!(out.contains("\n# form body, decoded:\n"), "{out}");
    assert!(out.contains("\nmetadata[feeId] = FEE-2024-0193\n"), "{out}");
    assert!(out.contains("\namount = 25000\n"), "{out}");
    assert!(!out.contains("sk_live"), "{out}");

    let (code, out, err) = run(
        bin().args([
            "test",
            "connectors/arcgis-roadwork.outbound.yaml",
            "connectors/sample_schedule_changed.json",
        ]),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("# lookup, sent first"), "{out}");
    assert!(
        out.contains("FeatureServer/0/query?f=json&outFields=OBJECTID&returnGeometry=false&where=PERMIT_ID+%3D+%27RW-481%27\n"),
        "{out}"
    );
    assert!(
        out.contains("\nX-Esri-Authorization: Bearer ***\n"),
        "{out}"
    );
    assert!(out.contains("\nPOST https://services.arcgis.com/"), "{out}");
    assert!(
        out.contains("\nupdates = [{\"attributes\":{\"END_DATE\":\"2024-05-24\",\"OBJECTID\":\"<lookup.features.0.attributes.OBJECTID>\""),
        "{out}"
    );

    let (code, out, err) = run(
        bin().args([
            "test",
            "connectors/google-calendar-crew.outbound.yaml",
            "connectors/sample_schedule_changed.json",
        ]),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("PATCH https://www.googleapis.com/calendar/v3/calendars/crew-7%40ddot.example.gov/events/7kq3m0s1p9fbd2rj5a6l?sendUpdates=all\n"),
        "{out}"
    );
    assert!(out.contains("\nAuthorization: Bearer ***\n"), "{out}");
}
