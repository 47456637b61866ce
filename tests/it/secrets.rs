//! Secrets (issue 15, point 5): hms-sync runs with known secret values in every place one can
//! live, against targets and token endpoints that echo what they were sent; every output is
//! then searched for each secret, raw, URL-encoded, base64 and hex: logs, streams, the tools,
//! and every answer of the HTTP side (the review API's too: parked jobs listed and in full,
//! traces, a replay and a discard, behind an admin token that is itself one of the secrets).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use hms_sync::sink::{Reply, Sink, SinkOptions};
use serde_json::json;

use crate::harness::*;
use crate::lifecycle::Up;

const NATS_PW: &str = "nats-P4ss/w0rd+x1&y";
const HOOK_SECRET: &str = "hook-S3cret-9f8e7d6c";
const TARGET_TOKEN: &str = "tgt-T0ken+/abcdef123";
const URL_KEY: &str = "urlkey-Q7w8e9r0t1y2";
const OAUTH_SECRET: &str = "oauth-Cl1ent-S3cret-zz9";
const ISSUED_TOKEN: &str = "at-Issued-Acc3ss-Tok3n-77";
const PROXY_PW: &str = "proxy-Pw-55aa66bb";
const GOOGLE_KEY_ID: &str = "gkey-id-Secr3t-4412";
const ADMIN_TOKEN: &str = "adm-T0ken-Secr3t-8c7b6a5d";
/// The reviewer named in `X-Hms-Operator` for the review actions.
const REVIEWER: &str = "sec-reviewer";

/// Every form of `secret` that would give it away: itself, URL- and form-encoded, base64
/// (standard and URL-safe, at the three alignments it can take inside a longer text) and hex.
fn needles(secret: &str) -> Vec<(String, String)> {
    let b = secret.as_bytes();
    let mut out = vec![
        ("raw".to_string(), secret.to_string()),
        (
            "URL-encoded".into(),
            percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        ),
        (
            "form-encoded".into(),
            form_urlencoded::byte_serialize(b).collect(),
        ),
        ("hex".into(), hex::encode(b)),
        ("HEX".into(), hex::encode_upper(b)),
    ];
    for (name, engine) in [
        ("base64", base64::engine::general_purpose::STANDARD),
        ("base64url", base64::engine::general_purpose::URL_SAFE),
    ] {
        for shift in 0..3 {
            let mut shifted = vec![b'.'; shift];
            shifted.extend_from_slice(b);
            let enc = engine.encode(&shifted);
            // Drop the characters that depend on what comes before or after the secret.
            let skip = if shift == 0 { 0 } else { 4 };
            let core = &enc[skip..enc.len().saturating_sub(4)];
            if core.len() >= 8 {
                out.push((format!("{name}@{shift}"), core.to_string()));
            }
        }
    }
    out
}

/// What was collected, by where it came from.
#[derive(Default)]
struct Outputs(BTreeMap<String, String>);

impl Outputs {
    fn add(&mut self, place: impl Into<String>, text: impl AsRef<[u8]>) {
        let entry = self.0.entry(place.into()).or_default();
        entry.push_str(&String::from_utf8_lossy(text.as_ref()));
        entry.push('\n');
    }

    /// Panics naming each secret found, where, and in which form.
    fn assert_clean(&self, secrets: &[(&str, String)]) {
        let mut found = Vec::new();
        for (name, secret) in secrets {
            for (form, needle) in needles(secret) {
                for (place, text) in &self.0 {
                    if let Some(i) = text.find(&needle) {
                        let from = text[..i].char_indices().rev().nth(80).map_or(0, |(j, _)| j);
                        let to = (i + needle.len() + 80).min(text.len());
                        let to = (to..=text.len())
                            .find(|j| text.is_char_boundary(*j))
                            .unwrap_or(text.len());
                        found.push(format!("{name} ({form}) in {place}: …{}…", &text[from..to]));
                    }
                }
            }
        }
        assert!(found.is_empty(), "secrets found:\n{}", found.join("\n"));
    }
}

/// `GET url` with the admin token: its status (0: no answer) and body.
async fn get_answer(url: &str) -> (u16, String) {
    match reqwest::Client::new()
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, format!("error {e}")),
    }
}

/// `GET url` with the admin token: status and body as one text.
async fn get(url: &str) -> String {
    let (status, body) = get_answer(url).await;
    format!("{status} {body}")
}

/// `POST url` with the admin token, a reviewer's name and `body` (a review action): its
/// status and body.
async fn post_review(url: &str, body: &str) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .header("X-Hms-Operator", REVIEWER);
    if !body.is_empty() {
        req = req
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    match req.send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, format!("error {e}")),
    }
}

/// `hms-sync ARGS` with the secrets in its environment: stdout and stderr.
fn cli(args: &[&str], env: &[(&str, String)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    format!(
        "exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every message of a stream, subject, headers and payload, as text.
async fn stream_text(js: &async_nats::jetstream::Context, stream: &str) -> String {
    let mut out = String::new();
    for m in stream_raw(js, stream).await {
        out.push_str(&m.subject);
        for (k, vs) in m.headers.iter() {
            for v in vs {
                out.push_str(&format!(" {k}: {}", v.as_str()));
            }
        }
        out.push(' ');
        out.push_str(&String::from_utf8_lossy(&m.payload));
        out.push('\n');
    }
    out
}

/// Everything an instance serves over HTTP.
async fn http_outputs(out: &mut Outputs, up: &Up, tag: &str) {
    for path in [
        "/",
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/connectors",
        "/api/overview",
        "/api/webhooks",
        "/api/session",
        "/api/history",
    ] {
        out.add(
            format!("{tag} GET {path}"),
            get(&format!("{}{path}", up.http)).await,
        );
    }
}

/// The review side of an instance: `/api/parked`, each job in full (`/api/parked/{id}`) and
/// traced by its idempotency key (`/api/trace?key=`), and the events of `rounds` traced by
/// their id (`/api/trace?where=`). Returns each listed job in full.
async fn review_outputs(
    out: &mut Outputs,
    up: &Up,
    tag: &str,
    rounds: &[&str],
) -> Vec<serde_json::Value> {
    let (status, text) = get_answer(&format!("{}/api/parked", up.http)).await;
    out.add(format!("{tag} GET /api/parked"), format!("{status} {text}"));
    assert_eq!(status, 200, "/api/parked: {text}");
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut jobs = Vec::new();
    for j in list["jobs"].as_array().cloned().unwrap_or_default() {
        let id = j["id"].as_u64().expect("a job id");
        let path = format!("/api/parked/{id}");
        let (status, text) = get_answer(&format!("{}{path}", up.http)).await;
        out.add(format!("{tag} GET {path}"), format!("{status} {text}"));
        assert_eq!(status, 200, "{path}: {text}");
        jobs.push(serde_json::from_str(&text).unwrap());
        if let Some(key) = j["idempotencyKey"].as_str() {
            let path = format!("/api/trace?key={key}&since=1h");
            out.add(
                format!("{tag} GET {path}"),
                get(&format!("{}{path}", up.http)).await,
            );
        }
    }
    for round in rounds {
        for topic in ["sec.token", "sec.oauth.good", "sec.google"] {
            let path = format!("/api/trace?where=id%3D{round}-{topic}&since=1h");
            out.add(
                format!("{tag} GET {path}"),
                get(&format!("{}{path}", up.http)).await,
            );
        }
    }
    jobs
}

/// The jobs of connector `id` among `jobs` (as `/api/parked/{id}` shows them).
fn jobs_of<'a>(jobs: &'a [serde_json::Value], id: &str) -> Vec<&'a serde_json::Value> {
    jobs.iter().filter(|j| j["connector"] == id).collect()
}

/// A target answering 500 with everything it was sent (headers, path, body), like a debug
/// endpoint or a chatty error page would.
fn echoing(sink: &Sink) {
    sink.reply_with(|r, _| {
        let headers: Vec<String> = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        Reply {
            status: 500,
            headers: vec![],
            body: format!(
                "error for {} {} {:?} {}",
                r.method,
                r.path,
                headers,
                String::from_utf8_lossy(&r.body)
            )
            .into(),
        }
    });
}

/// Token endpoints: `/oauth/bad` refuses, quoting the credentials it got; `/oauth/good`
/// grants ISSUED_TOKEN; `/google/token` refuses, quoting the assertion. The API answers 200
/// to ISSUED_TOKEN only, once 401 first (a refresh), and echoes what it got otherwise.
fn token_endpoints(sink: &Sink, assertions: Arc<Mutex<Vec<String>>>) {
    sink.reply_with(move |r, n| {
        let form: BTreeMap<String, String> = form_urlencoded::parse(&r.body).into_owned().collect();
        let auth = r.header("authorization").unwrap_or_default();
        let json_reply = |status: u16, body: serde_json::Value| Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into(),
        };
        match r.path.as_str() {
            "/oauth/bad" => json_reply(
                401,
                json!({"error": "invalid_client",
                    "error_description": format!("client {auth} / {form:?} is not known")}),
            ),
            "/oauth/good" => json_reply(
                200,
                json!({"access_token": ISSUED_TOKEN, "token_type": "bearer", "expires_in": 3600}),
            ),
            "/google/token" => {
                if let Some(a) = form.get("assertion") {
                    assertions.lock().unwrap().push(a.clone());
                }
                json_reply(
                    400,
                    json!({"error": "invalid_grant",
                        "error_description": format!("assertion {:?} rejected", form.get("assertion"))}),
                )
            }
            _ if auth == format!("Bearer {ISSUED_TOKEN}") && n > 0 => json_reply(200, json!({})),
            _ => json_reply(401, json!({"error": format!("token {auth} refused")})),
        }
    });
}

fn connectors(echo: &Sink, tokens: &Sink) -> Vec<(&'static str, String)> {
    let e = echo.url();
    let t = tokens.url();
    vec![
        (
            "a-token.yaml",
            format!("id: sec.token.v1\ntype: outbound\ntrigger:\n  topic: sec.token\nmap:\n  to:\n    url: \"{e}/items/{{id}}?key=${{S_URL_KEY}}\"\n    method: PUT\n    headers: {{ Authorization: \"Bearer ${{S_TARGET_TOKEN}}\", X-Api-Key: \"${{S_URL_KEY}}\" }}\n    body:\n      id: \"{{{{ id }}}}\"\nretry: {{ max: 2, backoffMs: 50 }}\n"),
        ),
        (
            "b-oauth-bad.yaml",
            format!("id: sec.oauth.bad.v1\ntype: outbound\ntrigger:\n  topic: sec.oauth.bad\nauth:\n  type: oauth2-client-credentials\n  tokenUrl: {t}/oauth/bad\n  clientId: hms-sync\n  clientSecret: ${{S_OAUTH_SECRET}}\nmap:\n  to:\n    url: \"{t}/api/{{id}}\"\n    method: PUT\nretry: {{ max: 2, backoffMs: 50 }}\n"),
        ),
        (
            "c-oauth-body.yaml",
            format!("id: sec.oauth.body.v1\ntype: outbound\ntrigger:\n  topic: sec.oauth.body\nauth:\n  type: oauth2-client-credentials\n  tokenUrl: {t}/oauth/bad\n  clientId: hms-sync\n  clientSecret: ${{S_OAUTH_SECRET}}\n  clientAuth: body\nmap:\n  to:\n    url: \"{t}/api/{{id}}\"\n    method: PUT\nretry: {{ max: 2, backoffMs: 50 }}\n"),
        ),
        (
            "d-oauth-good.yaml",
            format!("id: sec.oauth.good.v1\ntype: outbound\ntrigger:\n  topic: sec.oauth.good\nauth:\n  type: oauth2-client-credentials\n  tokenUrl: {t}/oauth/good\n  clientId: hms-sync\n  clientSecret: ${{S_OAUTH_SECRET}}\nmap:\n  to:\n    url: \"{t}/api/{{id}}\"\n    method: PUT\nretry: {{ max: 3, backoffMs: 50 }}\n"),
        ),
        (
            "e-google.yaml",
            format!("id: sec.google.v1\ntype: outbound\ntrigger:\n  topic: sec.google\nauth:\n  type: google-service-account\n  keyFile: ${{S_GOOGLE_KEY}}\n  scopes: [https://www.googleapis.com/auth/calendar.events]\nmap:\n  to:\n    url: \"{t}/calendar/{{id}}\"\n    method: PATCH\nretry: {{ max: 2, backoffMs: 50 }}\n"),
        ),
        (
            "w-hook.yaml",
            "id: sec.hook.v1\ntype: inbound\nsource:\n  webhookUrl: /webhooks/sec\n  signature:\n    scheme: hmac-sha256\n    header: X-Signature\n    encoding: hex\n    secret: \"${S_HOOK_SECRET}\"\npublish:\n  topic: sec.hooked\n  idFrom: \"{{ id }}\"\n".to_string(),
        ),
    ]
}

/// Publishes one event per connector and sends webhooks (valid, and with the secret itself as
/// the signature), then waits until each connector settled its event.
async fn traffic(js: &async_nats::jetstream::Context, up: &Up, round: &str) {
    for topic in [
        "sec.token",
        "sec.oauth.bad",
        "sec.oauth.body",
        "sec.oauth.good",
        "sec.google",
    ] {
        publish(js, topic, json!({"id": format!("{round}-{topic}")})).await;
    }
    let hook = format!("{}/webhooks/sec", up.http);
    let body = format!("{{\"id\":\"{round}-hook\"}}");
    let sig = hms_sync::inbound::signature::sign::hmac_sha256(
        HOOK_SECRET,
        body.as_bytes(),
        hms_sync::inbound::signature::SigEncoding::Hex,
    );
    let ct = ("Content-Type", "application/json".to_string());
    assert_eq!(
        post_webhook(&hook, &[ct.clone(), ("X-Signature", sig)], body.as_bytes())
            .await
            .status,
        200
    );
    let bad = post_webhook(
        &hook,
        &[ct, ("X-Signature", HOOK_SECRET.to_string())],
        body.as_bytes(),
    )
    .await;
    assert_eq!(bad.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_secrets_appear_in_no_output_in_any_encoding() {
    init_logs();
    let nats = crate::prod_support::ConfNats::start(|port, store| {
        format!(
            "host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ user: hms, password: \"{NATS_PW}\" }}\n",
            store.display()
        )
    })
    .await;
    let port = nats.port;
    let url = format!("nats://127.0.0.1:{port}");
    let client = async_nats::ConnectOptions::with_user_and_password("hms".into(), NATS_PW.into())
        .connect(&url)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut alerts = client.subscribe("hitl.review.requested").await.unwrap();
    let echo = Sink::start(SinkOptions::default()).await.unwrap();
    echoing(&echo);
    let tokens = Sink::start(SinkOptions {
        keep_requests: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let assertions: Arc<Mutex<Vec<String>>> = Arc::default();
    token_endpoints(&tokens, assertions.clone());
    let key_pem = include_str!("../fixtures/test-service-account.key.pem");
    let google_key = json!({
        "type": "service_account", "project_id": "sec-test",
        "private_key_id": GOOGLE_KEY_ID,
        "private_key": key_pem,
        "client_email": "hms-sync@sec-test.iam.gserviceaccount.com",
        "token_uri": format!("{}/google/token", tokens.url()),
    })
    .to_string();
    let env: Vec<(&str, String)> = vec![
        ("S_NATS_USER", "hms".into()),
        ("S_NATS_PW", NATS_PW.into()),
        ("S_HOOK_SECRET", HOOK_SECRET.into()),
        ("S_TARGET_TOKEN", TARGET_TOKEN.into()),
        ("S_URL_KEY", URL_KEY.into()),
        ("S_OAUTH_SECRET", OAUTH_SECRET.into()),
        ("S_PROXY_PW", PROXY_PW.into()),
        ("S_GOOGLE_KEY", google_key.clone()),
        ("S_ADMIN_TOKEN", ADMIN_TOKEN.into()),
    ];
    for (k, v) in &env {
        std::env::set_var(k, v);
    }
    let setup = Setup::at(
        &url,
        &connectors(&echo, &tokens)
            .iter()
            .map(|(n, y)| (*n, y.clone()))
            .collect::<Vec<_>>(),
        "outbound:\n  proxy: \"http://proxyuser:${S_PROXY_PW}@127.0.0.1:9\"\n  noProxy: [127.0.0.1, localhost]\n",
    );
    // NATS credentials from the environment.
    let cfg = std::fs::read_to_string(setup.config_path())
        .unwrap()
        .replace(
            "  embedded: false\n",
            "  embedded: false\n  user: ${S_NATS_USER}\n  password: ${S_NATS_PW}\n",
        );
    std::fs::write(setup.config_path(), cfg).unwrap();
    // The admin side behind a token (from the environment): review actions are allowed.
    setup.set_http("adminToken: ${S_ADMIN_TOKEN}");
    let cfg_path = setup.config_path().display().to_string();
    let mut out = Outputs::default();

    // Round 1: text logs (debug for hms-sync itself).
    let mut up = Up::start_with(&setup, &[], "info,hms_sync=debug");
    eventually(Duration::from_secs(30), "up ready", || up.ready()).await;
    traffic(&js, &up, "r1").await;
    let settled = |n: usize| {
        let js = js.clone();
        async move { stream_messages(&js, "HMS_SYNC_PARKED").await.len() >= n }
    };
    // Parked: token (500 x2), oauth bad (basic), oauth body, google.
    eventually(Duration::from_secs(60), "round 1 settled", || settled(4)).await;
    eventually(
        Duration::from_secs(30),
        "the good oauth call delivered",
        || async {
            tokens
                .requests()
                .iter()
                .any(|r| r.status == 200 && r.path.starts_with("/api/"))
        },
    )
    .await;
    http_outputs(&mut out, &up, "text").await;
    let jobs = review_outputs(&mut out, &up, "text", &["r1"]).await;
    // A job whose target echoed the request it got (its secrets): shown in full.
    let echoed = jobs_of(&jobs, "sec.token.v1");
    assert!(
        !echoed.is_empty(),
        "a parked job of sec.token.v1: {jobs:#?}"
    );
    let j = echoed[0];
    assert!(
        j["request"]["text"].is_string(),
        "the request it would send: {j:#}"
    );
    let bodies: Vec<&str> = j["attempts"]
        .as_array()
        .map(|a| a.iter().filter_map(|a| a["body"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        bodies.iter().any(|b| b.contains("error for")),
        "the echoed answer is kept with the attempts: {j:#}"
    );
    // The tools, with the same environment and config.
    let event = setup.dir.path().join("event.json");
    std::fs::write(&event, r#"{"id":"t1"}"#).unwrap();
    let conn_a = setup
        .dir
        .path()
        .join("connectors/a-token.yaml")
        .display()
        .to_string();
    let event_s = event.display().to_string();
    for args in [
        vec!["test", conn_a.as_str(), event_s.as_str()],
        vec!["status", "--config", &cfg_path],
        vec!["parked", "list", "--config", &cfg_path],
        vec!["parked", "list", "--json", "--config", &cfg_path],
        vec!["list", "--config", &cfg_path],
        vec!["deploy", conn_a.as_str(), "--config", &cfg_path],
        vec!["audit", "verify", "--config", &cfg_path],
        vec!["validate", conn_a.as_str(), "--config", &cfg_path],
    ] {
        out.add(format!("hms-sync {}", args.join(" ")), cli(&args, &env));
    }
    for job in hms_sync::parked::list(
        &hms_sync::bus::Bus::connect_with(&hms_sync::config::NatsConnect {
            auth: hms_sync::config::NatsAuth::UserPassword {
                user: "hms".into(),
                password: hms_sync::auth::SecretString::new(NATS_PW.to_string()),
            },
            ..hms_sync::config::NatsConnect::plain(&url)
        })
        .await
        .unwrap(),
        None,
    )
    .await
    .unwrap()
    {
        let id = job.id.to_string();
        out.add(
            format!("hms-sync parked show {id}"),
            cli(&["parked", "show", &id, "--config", &cfg_path], &env),
        );
        if job
            .job
            .as_ref()
            .is_some_and(|p| p.connector == "sec.oauth.bad.v1")
        {
            let args: [&str; 6] = ["parked", "discard", &id, "--json", "--config", &cfg_path];
            let answer = cli(&args, &env);
            assert!(answer.contains("\"discarded\""), "{answer}");
            out.add(format!("hms-sync {}", args.join(" ")), answer);
        }
    }
    // A password in the URL, and a wrong one: never shown either.
    let in_url = format!(
        "nats://hms:{}@127.0.0.1:{port}",
        percent_encoding::utf8_percent_encode(NATS_PW, percent_encoding::NON_ALPHANUMERIC)
    );
    out.add(
        "hms-sync list --nats-url <with password>",
        cli(&["list", "--nats-url", &in_url], &[]),
    );
    let wrong = format!("nats://hms:wrong-{}@127.0.0.1:{port}", "Wr0ngPw-0912");
    out.add(
        "hms-sync list --nats-url <wrong password>",
        cli(&["list", "--nats-url", &wrong], &[]),
    );
    let (status, _) = up.terminate().await;
    assert!(status.success());
    out.add("text console", up.console());

    // Round 2: JSON logs.
    let mut up = Up::start_with(&setup, &["--log-format", "json"], "info,hms_sync=debug");
    eventually(Duration::from_secs(30), "up ready", || up.ready()).await;
    traffic(&js, &up, "r2").await;
    eventually(Duration::from_secs(60), "round 2 settled", || settled(8)).await;
    http_outputs(&mut out, &up, "json").await;
    let jobs = review_outputs(&mut out, &up, "json", &["r1", "r2"]).await;
    // Review actions from the API on the jobs whose target echoed their secrets: one
    // discarded, one replayed (it fails again at the echoing target and is parked again).
    let echoed = jobs_of(&jobs, "sec.token.v1");
    assert!(
        echoed.len() >= 2,
        "two parked jobs of sec.token.v1: {jobs:#?}"
    );
    let (discarded, replayed) = (
        echoed[0]["id"].as_u64().unwrap(),
        echoed[1]["id"].as_u64().unwrap(),
    );
    let path = format!("/api/parked/{discarded}/discard");
    let (status, text) = post_review(
        &format!("{}{path}", up.http),
        r#"{"reason": "the secrets test discards it"}"#,
    )
    .await;
    out.add(format!("POST {path}"), format!("{status} {text}"));
    assert_eq!(status, 200, "{path}: {text}");
    assert!(text.contains("\"discarded\""), "{text}");
    let path = format!("/api/parked/{replayed}/replay");
    let (status, text) = post_review(&format!("{}{path}", up.http), "").await;
    out.add(format!("POST {path}"), format!("{status} {text}"));
    assert_eq!(status, 200, "{path}: {text}");
    let replay_seq = serde_json::from_str::<serde_json::Value>(&text).unwrap()["replaySequence"]
        .as_u64()
        .unwrap_or_else(|| panic!("a replay sequence: {text}"));
    eventually(
        Duration::from_secs(60),
        "the replayed job parked again",
        || async {
            stream_messages(&js, "HMS_SYNC_PARKED")
                .await
                .iter()
                .any(|j| j["event"]["streamSequence"] == replay_seq)
        },
    )
    .await;
    // The answers once more: the job parked again, the resolved ones traced.
    review_outputs(&mut out, &up, "json after review", &["r2"]).await;
    for path in [
        format!("/api/parked/{discarded}"),
        format!("/api/parked/{replayed}"),
    ] {
        out.add(
            format!("after review GET {path}"),
            get(&format!("{}{path}", up.http)).await,
        );
    }
    let (status, _) = up.terminate().await;
    assert!(status.success());
    let console = up.console();
    assert!(
        console.lines().any(|l| l.starts_with('{')),
        "JSON logs: {console}"
    );
    out.add("JSON console", console);

    // What NATS holds: parked jobs, audit records, events, registry and limits buckets.
    for stream in [
        "HMS_SYNC_PARKED",
        "HMS_AUDIT",
        "HMS_EVENTS",
        "KV_hms_sync_connectors",
        "KV_hms_sync_limits",
    ] {
        out.add(format!("stream {stream}"), stream_text(&js, stream).await);
    }
    let mut review = String::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), alerts.next()).await {
        review.push_str(&String::from_utf8_lossy(&m.payload));
        review.push('\n');
    }
    assert!(review.contains("sync.parked"), "{review}");
    out.add("review alerts", review);
    // The secrets were used where they belong (else the test proves nothing).
    assert!(echo.count() >= 4, "the echoing target was called");
    let assertions = assertions.lock().unwrap().clone();
    assert!(!assertions.is_empty(), "a Google assertion was made");
    assert!(
        out.0.values().any(|t| t.contains("token endpoint refused")),
        "the failed token requests are reported"
    );

    // The PEM body of the key, line by line (each a 64-character base64 run).
    let mut secrets: Vec<(&str, String)> = vec![
        ("NATS password", NATS_PW.into()),
        ("webhook secret", HOOK_SECRET.into()),
        ("target token", TARGET_TOKEN.into()),
        ("URL key", URL_KEY.into()),
        ("OAuth client secret", OAUTH_SECRET.into()),
        ("issued access token", ISSUED_TOKEN.into()),
        ("proxy password", PROXY_PW.into()),
        ("Google key id", GOOGLE_KEY_ID.into()),
        ("admin token", ADMIN_TOKEN.into()),
    ];
    for line in key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .take(3)
    {
        secrets.push(("Google private key", line.to_string()));
    }
    for a in &assertions {
        secrets.push(("Google assertion", a.clone()));
    }
    out.assert_clean(&secrets);
    drop(nats);
}
