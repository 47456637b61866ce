//! HTTPS targets (issue 13, point 3): a CA made here trusted with `outbound.caFile`; an
//! untrusted certificate parks the event saying why; a target demanding a client certificate
//! gets one only from `map.to.tls`; delivery through a loopback CONNECT proxy.

use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, publish, stream_messages, Nats, Setup};
use crate::prod_support::{connector, ConnectProxy, HttpsTarget, Pki};

fn config(nats: &Nats, extra: &str) -> String {
    format!(
        "nats:\n  url: {}\n  embedded: false\nhttp:\n  listen: 127.0.0.1:0\nconnectors:\n  dir: connectors\n{extra}",
        nats.url()
    )
}

async fn parked(js: &async_nats::jetstream::Context, n: usize) -> Vec<serde_json::Value> {
    eventually(Duration::from_secs(15), "parked jobs", || async {
        stream_messages(js, "HMS_SYNC_PARKED").await.len() >= n
    })
    .await;
    stream_messages(js, "HMS_SYNC_PARKED").await
}

#[tokio::test]
async fn a_ca_trusted_with_ca_file_delivers_and_an_untrusted_one_parks_saying_why() {
    let nats = Nats::start().await;
    let pki = Pki::new("agency");
    let target = HttpsTarget::start(&pki.server("gis"), None).await;
    let trusted = Setup::from_config(
        &config(
            &nats,
            &format!("outbound:\n  caFile: {}\n", pki.ca_file().display()),
        ),
        &[(
            "c.yaml",
            connector("https.ok.v1", "https.ok", &target.url(), "", ""),
        )],
    );
    let rt = trusted.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish(&js, "https.ok", json!({"id": "T-1"})).await;
    eventually(Duration::from_secs(10), "delivered over HTTPS", || async {
        target.requests().len() == 1
    })
    .await;
    assert!(target.requests()[0]
        .head
        .starts_with("PUT /items/T-1 HTTP/1.1"));
    assert_eq!(target.requests()[0].body, br#"{"id":"T-1"}"#);
    rt.shutdown().await;

    // The same target without the CA: not delivered; the parked job says why.
    let untrusted = Setup::from_config(
        &config(&nats, ""),
        &[(
            "c.yaml",
            connector(
                "https.untrusted.v1",
                "https.untrusted",
                &target.url(),
                "",
                "retry: { max: 1 }\n",
            ),
        )],
    );
    let rt = untrusted.start().await;
    publish(&js, "https.untrusted", json!({"id": "T-2"})).await;
    let jobs = parked(&js, 1).await;
    let error = jobs[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("certificate"), "{error}");
    assert!(
        error.contains("not signed by a trusted certificate authority"),
        "{error}"
    );
    assert_eq!(target.requests().len(), 1, "nothing more was delivered");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_target_demanding_a_client_certificate_gets_it_from_map_to_tls() {
    let nats = Nats::start().await;
    let pki = Pki::new("mtls");
    let clients = Pki::new("clients");
    let target = HttpsTarget::start(&pki.server("api"), Some(&clients)).await;
    let client = clients.client("hms-sync-client");
    let out = format!("outbound:\n  caFile: {}\n", pki.ca_file().display());
    // Without map.to.tls: refused by the target, parked with the reason.
    let without = Setup::from_config(
        &config(&nats, &out),
        &[(
            "c.yaml",
            connector(
                "mtls.no.v1",
                "mtls.no",
                &target.url(),
                "",
                "retry: { max: 1 }\n",
            ),
        )],
    );
    let rt = without.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish(&js, "mtls.no", json!({"id": "M-1"})).await;
    let jobs = parked(&js, 1).await;
    let error = jobs[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("certificate"), "{error}");
    assert!(target.requests().is_empty());
    rt.shutdown().await;

    // With it (paths relative to the connector file): delivered, the certificate presented.
    let with = Setup::from_config(&config(&nats, &out), &[]);
    std::fs::copy(&client.cert, with.path("connectors/client.pem")).unwrap();
    std::fs::copy(&client.key, with.path("connectors/client.key")).unwrap();
    with.write(
        "connectors/c.yaml",
        &connector(
            "mtls.yes.v1",
            "mtls.yes",
            &target.url(),
            "    tls: { certFile: client.pem, keyFile: client.key }\n",
            "",
        ),
    );
    let rt = with.start().await;
    publish(&js, "mtls.yes", json!({"id": "M-2"})).await;
    eventually(
        Duration::from_secs(10),
        "delivered with the client certificate",
        || async { target.requests().len() == 1 },
    )
    .await;
    assert!(target.requests()[0].client_cert);
    rt.shutdown().await;

    // A key that does not belong to the certificate is refused at load, with its position.
    let other = clients.client("other");
    std::fs::copy(&other.key, with.path("connectors/client.key")).unwrap();
    let (code, out, _) = crate::prod_support::run_cli(
        &["validate", with.path("connectors/c.yaml").to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("c.yaml:11:"), "{out}");
    assert!(out.contains("does not belong to the certificate"), "{out}");
}

#[tokio::test]
async fn https_through_a_connect_proxy() {
    let nats = Nats::start().await;
    let pki = Pki::new("proxied");
    let target = HttpsTarget::start(&pki.server("behind-proxy"), None).await;
    let proxy = ConnectProxy::start().await;
    std::env::set_var("HMS_T_PROXY_PW", "pr0xy-pw");
    let dir = Setup::from_config(
        &config(
            &nats,
            &format!(
                "outbound:\n  caFile: {}\n  proxy: \"http://hms:${{HMS_T_PROXY_PW}}@{}\"\n",
                pki.ca_file().display(),
                proxy.addr
            ),
        ),
        &[(
            "c.yaml",
            connector("proxied.v1", "proxied.in", &target.url(), "", ""),
        )],
    );
    let rt = dir.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish(&js, "proxied.in", json!({"id": "P-1"})).await;
    eventually(
        Duration::from_secs(10),
        "delivered through the proxy",
        || async { target.requests().len() == 1 },
    )
    .await;
    let tunnels = proxy.tunnels();
    assert_eq!(tunnels.len(), 1, "{tunnels:?}");
    assert_eq!(
        tunnels[0].target,
        format!("localhost:{}", target.addr.port())
    );
    // Basic hms:pr0xy-pw
    assert_eq!(
        tunnels[0].proxy_authorization.as_deref(),
        Some("Basic aG1zOnByMHh5LXB3")
    );
    rt.shutdown().await;
}

/// `SSL_CERT_FILE` adds roots to the system's (it does not replace them).
#[tokio::test]
async fn ssl_cert_file_adds_roots() {
    let nats = Nats::start().await;
    let pki = Pki::new("ssl-cert-file");
    let target = HttpsTarget::start(&pki.server("env-trusted"), None).await;
    // Only this test's CA is in it, and no other test's target is signed by it.
    std::env::set_var("SSL_CERT_FILE", pki.ca_file());
    let roots = hms_sync::tls::root_store(&[]).unwrap();
    std::env::remove_var("SSL_CERT_FILE");
    let system = hms_sync::tls::root_store(&[]).unwrap();
    assert_eq!(roots.len(), system.len() + 1, "added to the system's roots");
    std::env::set_var("SSL_CERT_FILE", pki.ca_file());
    let dir = Setup::from_config(
        &config(&nats, ""),
        &[(
            "c.yaml",
            connector("envca.v1", "envca.in", &target.url(), "", ""),
        )],
    );
    let rt = dir.start().await;
    std::env::remove_var("SSL_CERT_FILE");
    let js = async_nats::jetstream::new(nats.client().await);
    publish(&js, "envca.in", json!({"id": "E-1"})).await;
    eventually(
        Duration::from_secs(10),
        "delivered with SSL_CERT_FILE's CA",
        || async { target.requests().len() == 1 },
    )
    .await;
    rt.shutdown().await;
}
