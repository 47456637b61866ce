//! An HTTP server safe to expose (issue 13 point 4): `http.adminListen` puts the status page,
//! `/metrics` and `/api/*` on a second address, `http.adminToken` puts them behind a bearer
//! token; webhooks, `/healthz` and `/readyz` stay on `http.listen`; clients pass the token.

use std::process::{Command, Stdio};
use std::time::Duration;

use hms_sync::inbound::signature::{sign, SigEncoding};
use serde_json::json;

use crate::harness::*;

/// A token that is checked for in every output (it must never show).
const TOKEN: &str = "adm1n-t0ken-for-the-tests-7f3a9c";

fn hook() -> String {
    "id: pay.admin.v1\ntype: inbound\nsource:\n  webhookUrl: /webhooks/pay\n  signature:\n    scheme: hmac-sha256\n    header: X-Signature\n    secret: \"${HMS_IT_ADMIN_HMAC}\"\npublish:\n  topic: payment.admin\n  idFrom: \"{{ paymentId }}\"\n".to_string()
}

async fn get(url: &str, token: Option<&str>) -> (u16, String, Option<String>) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.text().await.unwrap(), challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_side_on_its_own_address_behind_the_token() {
    std::env::set_var("HMS_IT_ADMIN_HMAC", "portal-secret");
    let (nats, target) = nats_and_target().await;
    let setup = Setup::with_http(
        &nats,
        &[
            ("hook.yaml", hook()),
            (
                "out.yaml",
                simple_connector("admin.out.v1", "admin.out", &target, ""),
            ),
        ],
        &format!("  adminListen: 127.0.0.1:0\n  adminToken: {TOKEN}\n"),
        "",
    );
    let rt = setup.start().await;
    let public = format!("http://{}", rt.http_addr());
    let admin = format!("http://{}", rt.admin_addr());
    assert_ne!(public, admin, "two addresses");

    // The public side: health, readiness and webhooks only.
    assert_eq!(get(&format!("{public}/healthz"), None).await.0, 200);
    eventually(Duration::from_secs(10), "ready", || async {
        get(&format!("{public}/readyz"), None).await.0 == 200
    })
    .await;
    for path in [
        "/",
        "/metrics",
        "/api/connectors",
        "/api/overview",
        "/api/webhooks",
        "/api/parked",
    ] {
        let (status, body, _) = get(&format!("{public}{path}"), Some(TOKEN)).await;
        assert_eq!(status, 404, "{path} is not on http.listen: {body}");
    }
    let body = br#"{"paymentId":"PAY-9"}"#;
    let sig = sign::hmac_sha256("portal-secret", body, SigEncoding::Hex);
    let a = post_webhook(
        &format!("{public}/webhooks/pay"),
        &[
            ("Content-Type", "application/json".into()),
            ("X-Signature", sig.clone()),
        ],
        body,
    )
    .await;
    assert_eq!(
        a.status, 200,
        "webhooks are answered on http.listen: {}",
        a.body
    );

    // The admin side: 401 without the token or with a wrong one, 200 with it.
    for path in [
        "/",
        "/metrics",
        "/api/connectors",
        "/api/overview",
        "/api/webhooks",
        "/api/history",
        "/api/parked",
        "/api/session",
    ] {
        let url = format!("{admin}{path}");
        let (status, body, challenge) = get(&url, None).await;
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"hms-sync\""),
            "{path}"
        );
        assert!(!body.contains(TOKEN));
        let (status, _, _) = get(&url, Some("adm1n-t0ken-for-the-tests-7f3a9d")).await;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _, _) = get(&url, Some(&TOKEN[..TOKEN.len() - 1])).await;
        assert_eq!(status, 401, "{path} with a prefix of the token");
        let (status, body, _) = get(&url, Some(TOKEN)).await;
        assert_eq!(status, 200, "{path} with the token: {body}");
        assert!(!body.contains(TOKEN), "{path} shows the token");
    }
    // Without the token, `/` is the page itself (no data in it), which asks for the token.
    let (_, page, _) = get(&format!("{admin}/"), None).await;
    assert!(
        page.contains("id=\"login\"") && page.contains("sessionStorage"),
        "{page}"
    );
    let (_, metrics, _) = get(&format!("{admin}/metrics"), Some(TOKEN)).await;
    assert!(metrics.contains("webhook_received_total"), "{metrics}");
    let (_, session, _) = get(&format!("{admin}/api/session"), Some(TOKEN)).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&session).unwrap()["actions"],
        true
    );
    // Webhooks are not served on the admin side.
    let a = post_webhook(
        &format!("{admin}/webhooks/pay"),
        &[
            ("Content-Type", "application/json".into()),
            ("X-Signature", sig),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, 401, "no webhook on the admin side: {}", a.body);
    // Review actions need a name.
    let r = reqwest::Client::new()
        .post(format!("{admin}/api/parked/1/replay"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "no X-Hms-Operator");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_one_address_no_token_and_no_review_actions() {
    let (nats, target) = nats_and_target().await;
    let (_setup, rt, _js) = start_simple(&nats, &target, "plain.v1", "plain.topic", "", "").await;
    assert_eq!(rt.http_addr(), rt.admin_addr());
    let base = format!("http://{}", rt.http_addr());
    for path in [
        "/",
        "/metrics",
        "/api/connectors",
        "/healthz",
        "/api/session",
    ] {
        assert_eq!(get(&format!("{base}{path}"), None).await.0, 200, "{path}");
    }
    let (_, session, _) = get(&format!("{base}/api/session"), None).await;
    let s: serde_json::Value = serde_json::from_str(&session).unwrap();
    assert_eq!(s["actions"], false);
    assert_eq!(s["token_required"], false);
    let r = reqwest::Client::new()
        .post(format!("{base}/api/parked/1/replay"))
        .header("X-Hms-Operator", "rosa")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "review actions need http.adminToken"
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/api/parked/1/discard"))
        .header("X-Hms-Operator", "rosa")
        .header("Content-Type", "application/json")
        .body(r#"{"reason": "no token"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "discarding needs http.adminToken too"
    );
    rt.shutdown().await;
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hms-sync"));
    c.env_remove("NATS_URL").env_remove("HMS_ADMIN_TOKEN");
    c
}

fn output(c: &mut Command) -> (i32, String, String) {
    let out = c.stdin(Stdio::null()).output().unwrap();
    code_and_text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pass_the_token_and_nothing_prints_it() {
    hms_sync::http_client::install_crypto();
    let nats = Nats::start().await;
    let target = Target::start().await;
    let http_port = free_port();
    let admin_port = free_port();
    let setup = Setup::new(
        &nats,
        &[(
            "c.yaml",
            simple_connector("tok.v1", "tok.topic", &target, ""),
        )],
        "",
    );
    // A config with the token as ${VAR}, on fixed ports the clients find in it.
    let cfg = std::fs::read_to_string(setup.config_path()).unwrap().replace(
        "http:\n  listen: 127.0.0.1:0\n",
        &format!(
            "http:\n  listen: 127.0.0.1:{http_port}\n  adminListen: 127.0.0.1:{admin_port}\n  adminToken: ${{HMS_ADMIN_TOKEN}}\n"
        ),
    );
    std::fs::write(setup.config_path(), cfg).unwrap();
    let mut child = bin()
        .args(["--log-format", "json", "up", "--config"])
        .arg(setup.config_path())
        .env("HMS_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = read_all(child.stderr.take().unwrap());
    let admin = format!("http://127.0.0.1:{admin_port}");
    eventually(
        Duration::from_secs(20),
        "up serves the admin side",
        || async {
            reqwest::get(format!("{admin}/api/overview"))
                .await
                .is_ok_and(|r| r.status().as_u16() == 401)
        },
    )
    .await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish(&js, "tok.topic", json!({"id": "T-1", "n": 1})).await;
    eventually(Duration::from_secs(20), "delivered", || async {
        target.count() == 1
    })
    .await;

    // `hms-sync ARGS --config <setup>` with these variables set.
    let on_setup = |args: &[&str], envs: &[(&str, &str)]| {
        output(
            bin()
                .args(args)
                .arg("--config")
                .arg(setup.config_path())
                .envs(envs.iter().copied()),
        )
    };
    // `status` with HMS_ADMIN_TOKEN (or --admin-token) reads the instance.
    let (code, out, err) = on_setup(&["status"], &[("HMS_ADMIN_TOKEN", TOKEN)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("tok.v1") && out.contains("running"),
        "{out}\n{err}"
    );
    assert!(!err.contains("no running instance"), "{err}");
    let (code, out, err) = on_setup(&["status", "--admin-token", TOKEN, "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"delivered\": 1"), "{out}");
    // Without it: the instance says 401, status says so and shows what NATS knows.
    let (code, out, err) = on_setup(&["status"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "the instance at {admin} wants its admin token (set HMS_ADMIN_TOKEN or pass --admin-token)"
        )),
        "{err}"
    );
    assert!(out.contains("unknown (the instance at"), "{out}");
    let (code, _, err) = on_setup(&["status", "--admin-token", "wrong-token-0123456789"], &[]);
    assert_eq!(code, 0);
    assert!(err.contains("refused the admin token"), "{err}");
    // `config` shows the token as ***.
    let (code, out, err) = on_setup(&["config"], &[("HMS_ADMIN_TOKEN", TOKEN)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("adminToken: '***'"), "{out}");
    assert!(
        out.contains(&format!("adminListen: 127.0.0.1:{admin_port}")),
        "{out}"
    );
    // --help with HMS_ADMIN_TOKEN set does not show its value.
    let (_, help, _) = output(
        bin()
            .args(["status", "--help"])
            .env("HMS_ADMIN_TOKEN", TOKEN),
    );
    assert!(
        help.contains("HMS_ADMIN_TOKEN") && !help.contains(TOKEN),
        "{help}"
    );

    let status = terminate(child).await;
    assert!(status.success());
    let text = stderr.join().unwrap();
    assert!(!text.contains(TOKEN), "up printed the admin token:\n{text}");
    assert!(text.contains("hms-sync up: http://"), "{text}");
}

/// Reads a pipe to its end in a thread.
fn read_all(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = r.read_to_string(&mut text);
        text
    })
}

#[test]
fn validate_checks_the_admin_keys_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hms-sync.yaml");
    // Writes the config file, then validates it.
    let validate = |text: &str| {
        std::fs::write(&file, text).unwrap();
        output(bin().args(["validate", "--config"]).arg(&file))
    };
    let (code, out, _) = validate("nats:\n  embedded: false\nhttp:\n  listen: 0.0.0.0:7500\n  adminListen: 127.0.0.1:7500\n  adminToken: short\n  chartSampleMs: 5\n");
    assert_eq!(code, 2, "{out}");
    let f = file.display().to_string();
    assert!(
        out.contains(&format!(
            "{f}:5:16: http.adminListen: 127.0.0.1:7500 overlaps http.listen 0.0.0.0:7500"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{f}:6:15: http.adminToken: at least 16 characters"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{f}:7:18: http.chartSampleMs: 5 (at least 100)")),
        "{out}"
    );
    let (code, out, _) = validate("nats:\n  embedded: false\nhttp:\n  listen: 0.0.0.0:7500\n  adminListen: 127.0.0.1:7501\n  adminToken: ${HMS ADMIN}\n");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("{f}:6:15: http.adminToken: `${{HMS ADMIN}}`")),
        "{out}"
    );
    let (code, out, err) = validate("nats:\n  embedded: false\nhttp:\n  listen: 0.0.0.0:7500\n  adminListen: 127.0.0.1:7501\n  adminToken: ${HMS_ADMIN_TOKEN}\n");
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = validate("http:\n  adminListen: nowhere\n");
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains(&format!(
            "{f}:2:16: http.adminListen: invalid socket address"
        )),
        "{out}"
    );
}
