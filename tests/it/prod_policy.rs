//! The event never chooses the server (issue 13, point 5), error texts without event values
//! (point 6), the outbound address policy (point 7), and `validate --config` (done-when).

use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, get_text, publish, stream_messages, Nats, Setup, Target};
use crate::prod_support::{connector, run_cli};

fn config(nats: &Nats, extra: &str) -> String {
    format!(
        "nats:\n  url: {}\n  embedded: false\nhttp:\n  listen: 127.0.0.1:0\nconnectors:\n  dir: connectors\n{extra}",
        nats.url()
    )
}

async fn parked_jobs(js: &async_nats::jetstream::Context, n: usize) -> Vec<serde_json::Value> {
    eventually(Duration::from_secs(15), "parked jobs", || async {
        stream_messages(js, "HMS_SYNC_PARKED").await.len() >= n
    })
    .await;
    stream_messages(js, "HMS_SYNC_PARKED").await
}

/// A name that resolves to a denied address is refused at connect time: the event is parked
/// at once (first attempt) with the reason, and the target never sees a connection. The same
/// for a token endpoint.
#[tokio::test]
async fn a_name_resolving_to_a_denied_address_parks_at_once_without_a_connection() {
    let nats = Nats::start().await;
    let target = Target::start().await;
    let by_name = format!("http://localhost:{}", target.addr.port());
    let token_url = format!("http://localhost:{}/token", target.addr.port());
    std::env::set_var("HMS_T_POLICY_SECRET", "s");
    let with_token = format!(
        "id: policy.token.v1\ntype: outbound\ntrigger: {{ topic: policy.token }}\nauth:\n  type: oauth2-client-credentials\n  tokenUrl: {token_url}\n  clientId: hms\n  clientSecret: ${{HMS_T_POLICY_SECRET}}\nmap:\n  to:\n    url: \"https://api.example.com/items/{{id}}\"\n    method: PUT\n    body: {{ id: \"{{{{ id }}}}\" }}\nretry: {{ max: 5, backoffMs: 100 }}\n"
    );
    let dir = Setup::from_config(
        &config(&nats, "outbound:\n  deny: [\"127.0.0.0/8\"]\n"),
        &[
            (
                "a.yaml",
                connector(
                    "policy.v1",
                    "policy.in",
                    &by_name,
                    "",
                    "retry: { max: 5, backoffMs: 100 }\n",
                ),
            ),
            ("b.yaml", with_token),
        ],
    );
    let rt = dir.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish(&js, "policy.in", json!({"id": "S-1"})).await;
    let jobs = parked_jobs(&js, 1).await;
    let job = &jobs[0];
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused by the outbound address policy: localhost (127.0.0.1) is in 127.0.0.0/8 of outbound.deny"),
        "{error}"
    );
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "{job}");
    publish(&js, "policy.token", json!({"id": "S-2"})).await;
    let jobs = parked_jobs(&js, 2).await;
    let error = jobs[1]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused by the outbound address policy"),
        "{error}"
    );
    assert_eq!(target.count(), 0, "no connection reached the target");
    rt.shutdown().await;
}

/// `validate` refuses a denied literal address (the built-in list, and the config's) with its
/// position and exit code 2; `deploy` too.
#[tokio::test]
async fn validate_and_deploy_refuse_a_denied_literal_address() {
    let nats = Nats::start().await;
    let dir = Setup::from_config(
        &config(&nats, "outbound:\n  deny: [\"127.0.0.0/8\"]\n"),
        &[],
    );
    let metadata = dir.write(
        "meta.yaml",
        &connector(
            "meta.v1",
            "meta.in",
            "http://169.254.169.254/latest",
            "",
            "",
        ),
    );
    let (code, out, _) = run_cli(&["validate", metadata.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "meta.yaml:7:10: map.to.url: refused by the outbound address policy: 169.254.169.254"
        ),
        "{out}"
    );
    assert!(out.contains("built-in deny list"), "{out}");
    let loopback = dir.write(
        "loop.yaml",
        &connector("loop.v1", "loop.in", "http://127.0.0.1:9", "", ""),
    );
    let cfg = dir.config_path();
    let (code, out, _) = run_cli(
        &[
            "validate",
            "--config",
            cfg.to_str().unwrap(),
            loopback.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("loop.yaml:7:10:"), "{out}");
    assert!(out.contains("outbound.deny"), "{out}");
    let (code, _, err) = run_cli(
        &[
            "deploy",
            "--config",
            cfg.to_str().unwrap(),
            loopback.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("loop.yaml:7:10:"), "{err}");
    // Without the config's deny rule, loopback is fine.
    let (code, out, _) = run_cli(&["validate", loopback.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}");
}

/// A URL template may not put event data in the scheme, host or port, unless the connector
/// lists the hosts it may produce; a host outside the list parks the event before any
/// connection.
#[tokio::test]
async fn the_event_never_chooses_the_server() {
    let nats = Nats::start().await;
    let target = Target::start().await;
    let port = target.addr.port();
    let templated = |allow: &str| {
        format!(
            "id: hosts.v1\ntype: outbound\ntrigger: {{ topic: hosts.in }}\nmap:\n  to:\n    url: \"http://{{{{ host }}}}:{port}/items/{{id}}\"\n    method: PUT\n    body: {{ id: \"{{{{ id }}}}\" }}\n{allow}"
        )
    };
    let dir = Setup::from_config(&config(&nats, ""), &[]);
    let bad = dir.write("bad.yaml", &templated(""));
    let (code, out, _) = run_cli(&["validate", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("bad.yaml:6:10:"), "{out}");
    assert!(out.contains("must be written out"), "{out}");
    assert!(out.contains("allowHosts"), "{out}");
    let dir = Setup::from_config(
        &config(&nats, ""),
        &[(
            "c.yaml",
            templated(&format!("    allowHosts: [\"localhost:{port}\"]\n")),
        )],
    );
    let rt = dir.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish(&js, "hosts.in", json!({"id": "H-1", "host": "localhost"})).await;
    eventually(
        Duration::from_secs(10),
        "an allowed host is called",
        || async { target.count() == 1 },
    )
    .await;
    publish(&js, "hosts.in", json!({"id": "H-2", "host": "127.0.0.1"})).await;
    let jobs = parked_jobs(&js, 1).await;
    let error = jobs[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("not in map.to.allowHosts"), "{error}");
    assert!(!error.contains("127.0.0.1"), "{error}");
    assert_eq!(target.count(), 1, "the other host was never called");
    rt.shutdown().await;
}

/// A schema violation tells the field and the rule in `/api/connectors`, `/metrics` and the
/// console, never the value; the value stays in the parked job.
#[tokio::test]
async fn failures_name_the_field_and_the_rule_never_the_value() {
    let nats = Nats::start().await;
    let target = Target::start().await;
    let yaml = format!(
        "id: pii.v1\ntype: outbound\ntrigger: {{ topic: pii.in }}\nmap:\n  schema:\n    type: object\n    properties:\n      ssn: {{ type: string, pattern: \"^[0-9]{{3}}$\" }}\n      age: {{ type: integer, maximum: 150 }}\n  to:\n    url: \"{}/items/{{id}}\"\n    method: PUT\n    body: {{ ssn: \"{{{{ ssn }}}}\" }}\n",
        target.url()
    );
    let dir = Setup::from_config(&config(&nats, ""), &[("c.yaml", yaml)]);
    let rt = dir.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish(
        &js,
        "pii.in",
        json!({"id": "P-1", "ssn": "123-45-6789", "age": 40001}),
    )
    .await;
    let jobs = parked_jobs(&js, 1).await;
    let error = jobs[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("/ssn: does not match the pattern"),
        "{error}"
    );
    assert!(error.contains("/age: is more than 150"), "{error}");
    assert!(
        !error.contains("123-45-6789") && !error.contains("40001"),
        "{error}"
    );
    assert!(jobs[0]["event"]["payload"]
        .as_str()
        .unwrap()
        .contains("123-45-6789"));
    let base = format!("http://{}", rt.http_addr());
    let api = get_text(&format!("{base}/api/connectors")).await;
    assert!(api.contains("/ssn: does not match the pattern"), "{api}");
    assert!(
        !api.contains("123-45-6789") && !api.contains("40001"),
        "{api}"
    );
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert!(!metrics.contains("123-45-6789"));
    rt.shutdown().await;
}

/// `validate --config FILE` checks a runtime config: unknown keys and wrong types (serde, with
/// positions), unreadable certificate files, invalid networks, conflicting auth, all with
/// `file:line:col`.
#[tokio::test]
async fn validate_checks_a_runtime_config() {
    let dir = Setup::from_config("", &[]);
    let check = |text: &str| {
        let cfg = dir.write("hms-sync.yaml", text);
        run_cli(&["validate", "--config", cfg.to_str().unwrap()], &[])
    };
    let (code, out, _) = check("nats:\n  url: nats://127.0.0.1:4222\n  tls:\n    caFile: nowhere/ca.pem\noutbound:\n  deny: [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n  allow: [\"*.arcgis.com\", \"not a host\"]\n");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("hms-sync.yaml:4:13: ") && out.contains("ca.pem: cannot read"),
        "{out}"
    );
    assert!(
        out.contains("hms-sync.yaml:6:24: outbound.deny[1]"),
        "{out}"
    );
    assert!(
        out.contains("hms-sync.yaml:7:27: outbound.allow[1]"),
        "{out}"
    );
    let (code, out, _) = check("nats:\n  replicas: many\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("hms-sync.yaml:2:13:"), "{out}");
    let (code, out, _) = check("outbound:\n  prxy: http://p:3128\n");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("hms-sync.yaml:2:3: outbound: unknown field `prxy`"),
        "{out}"
    );
    let (code, out, _) = check("nats:\n  token: ${TOK}\n  user: u\n  password: p\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("choose one way to authenticate"), "{out}");
    let (code, out, _) = check("nats:\n  url: nats://n1:4222,nats://n2:4222\n  replicas: 3\n  token: ${HMS_T_UNSET_TOKEN}\noutbound:\n  proxy: http://proxy.agency.example:3128\n  allow: [\"*.arcgis.com\", \"10.20.0.0/16\"]\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (runtime config)"), "{out}");
}
