//! The whole actor tree is supervised: a killed audit or token actor is restarted, deliveries
//! never wait for it, and what the audit actor lost is on record as a sealed gap.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

fn verify_json(nats: &Nats) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(["audit", "verify", "--json", "--nats-url", &nats.url()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "audit verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_audit_actor_is_restarted_and_its_loss_is_a_sealed_gap() {
    let (nats, target) = nats_and_target().await;
    // With HMS_AUDIT away, the records of the first events wait in the actor's memory: killing
    // it loses them for sure.
    let (_setup, rt, js) = start_without_audit(&nats, &target, "audkill", "w", 50).await;
    eventually(T, "records wait in memory", || async {
        metric(&rt, "sync_audit_pending").await >= 50.0
    })
    .await;
    let first = rt.services().audit.actor().expect("an audit actor runs");
    first.kill();
    audit_stream_back(&js).await;
    // Kill the next one mid-flood too.
    let n = 3_000;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish_many(&js, "audkill.in", numbered("e", 0..n)).await;
        })
    };
    let n = n + 50;
    eventually(T, "deliveries under way", || async {
        target.count() >= 300
    })
    .await;
    eventually(T, "the killed actor was replaced", || async {
        rt.services()
            .audit
            .actor()
            .is_some_and(|a| a.get_id() != first.get_id())
    })
    .await;
    let second = rt.services().audit.actor().expect("an audit actor runs");
    second.kill();
    // Deliveries never wait for the audit actor: every event is delivered and acked.
    publisher.await.unwrap();
    eventually(T, "all delivered", || async { target.count() >= n }).await;
    wait_idle(&js, "audkill_v1", T).await;
    eventually(T, "a new audit actor runs", || async {
        rt.services()
            .audit
            .actor()
            .is_some_and(|a| a.get_id() != second.get_id())
    })
    .await;
    assert!(metric(&rt, "sync_service_restarts_total{service=\"audit\"}").await >= 2.0);
    rt.shutdown().await;
    // Every attempt is on record: stored, or declared lost in a sealed gap record.
    let records = audit_records(&js).await;
    // Each (chain, position) once: a store retried after a lost confirmation may store twice.
    let attempts = records
        .iter()
        .filter(|r| r["kind"] == "attempt")
        .map(|r| (r["chain"].to_string(), r["n"].as_u64()))
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let gaps: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "gap").collect();
    let declared: u64 = gaps.iter().map(|g| g["dropped"].as_u64().unwrap()).sum();
    assert!(
        declared >= 50,
        "the records held at the first kill are declared lost"
    );
    assert_eq!(
        attempts + declared,
        target.count() as u64,
        "{attempts} stored + {declared} declared lost: every attempt, and no more"
    );
    eprintln!(
        "audit after the kill: {attempts} stored, {declared} declared lost in {} gaps",
        gaps.len()
    );
    for g in &gaps {
        assert!(g["reason"].as_str().unwrap().contains("audit actor"), "{g}");
    }
    let v = verify_json(&nats);
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["gaps"].as_u64(), Some(gaps.len() as u64), "{v}");
    assert_eq!(v["lost"].as_u64(), Some(declared), "{v}");
}

/// A token endpoint on loopback: every grant is a new token.
async fn token_endpoint(grants: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || {
            let g = grants.clone();
            async move {
                let n = g.fetch_add(1, Ordering::SeqCst) + 1;
                axum::Json(json!({
                    "access_token": format!("tok-{n}"),
                    "token_type": "Bearer",
                    "expires_in": 3600
                }))
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_token_actor_is_restarted_and_the_next_request_gets_a_token() {
    std::env::set_var("HMS_T_SUPERVISED_SECRET", "s3cret");
    let (nats, target) = nats_and_target().await;
    let grants = Arc::new(AtomicUsize::new(0));
    let token_url = token_endpoint(grants.clone()).await;
    let connector = format!(
        "id: tokkill.v1\ntype: outbound\ntrigger: {{ topic: tokkill.in }}\nauth:\n  type: oauth2-client-credentials\n  tokenUrl: {token_url}/token\n  clientId: hms-sync\n  clientSecret: ${{HMS_T_SUPERVISED_SECRET}}\nmap:\n  to:\n    url: \"{}/items/{{id}}\"\n    method: PUT\n    body: {{ n: \"{{{{ n }}}}\" }}\nretry: {{ max: 3, backoffMs: 100 }}\n",
        target.url()
    );
    let setup = Setup::new(&nats, &[("c.yaml", connector)], "");
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish(&js, "tokkill.in", json!({"id": "a", "n": 1})).await;
    eventually(T, "first delivered", || async { target.count() == 1 }).await;
    let first = rt.services().tokens.actor().expect("a token actor runs");
    first.kill();
    // The next event needs a token: the restarted actor fetches one (its cache died with it).
    publish(&js, "tokkill.in", json!({"id": "b", "n": 2})).await;
    eventually(T, "second delivered", || async { target.count() == 2 }).await;
    let reqs = target.requests();
    assert_eq!(reqs.len(), 2, "no attempt failed for want of a token");
    assert_eq!(
        reqs[0].header("authorization").as_deref(),
        Some("Bearer tok-1")
    );
    assert_eq!(
        reqs[1].header("authorization").as_deref(),
        Some("Bearer tok-2"),
        "the new token actor fetched a token of its own"
    );
    assert_eq!(grants.load(Ordering::SeqCst), 2);
    assert!(rt
        .services()
        .tokens
        .actor()
        .is_some_and(|a| a.get_id() != first.get_id()));
    assert!(metric(&rt, "sync_service_restarts_total{service=\"tokens\"}").await >= 1.0);
    rt.shutdown().await;
}
