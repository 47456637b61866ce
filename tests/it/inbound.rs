//! Inbound webhooks end to end: every signature scheme, every answer, dedup, hot deploy, and the Stripe round trip.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use hms_sync::inbound::signature::{sign, SigEncoding};
use serde_json::json;

use crate::harness::*;

const T: Duration = Duration::from_secs(20);

/// A refused webhook: what it is, its headers, its body.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a [u8]);

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A runtime serving `connectors`, and what a test needs to talk to it.
struct Inbound {
    nats: Nats,
    _setup: Setup,
    rt: hms_sync::Runtime,
    js: async_nats::jetstream::Context,
}

impl Inbound {
    async fn start(connectors: &[(&str, String)]) -> Inbound {
        init_logs();
        let nats = Nats::start().await;
        let (setup, rt, js) = start_with(&nats, connectors, "").await;
        Inbound {
            nats,
            _setup: setup,
            rt,
            js,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.rt.http_addr())
    }

    async fn post(&self, path: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
        post_webhook(&self.url(path), headers, body).await
    }

    async fn stored(&self) -> Vec<StreamMessage> {
        stream_raw(&self.js, "HMS_EVENTS").await
    }

    async fn metrics(&self) -> String {
        get_text(&self.url("/metrics")).await
    }
}

fn header(m: &StreamMessage, name: &str) -> Option<String> {
    m.headers.get(name).map(|v| v.as_str().to_string())
}

fn json_ct() -> (&'static str, String) {
    ("Content-Type", "application/json".to_string())
}

fn assert_status(a: &Answer, want: u16, what: &str) {
    assert_eq!(a.status, want, "{what}: {}", a.body);
}

fn stripe_connector(id: &str, secrets: &str, publish: &str) -> String {
    format!(
        "id: {id}\ntype: inbound\nsource:\n  webhookUrl: /webhooks/{id}\n  signature:\n    scheme: stripe\n    {secrets}\n    toleranceSec: 300\npublish:\n{publish}"
    )
}

fn stripe_event(id: &str, fee: &str) -> Vec<u8> {
    json!({
        "id": id, "object": "event", "type": "invoice.paid",
        "data": {"object": {"id": "in_1", "amount_paid": 12500, "currency": "usd",
                            "metadata": {"feeId": fee}}}
    })
    .to_string()
    .into_bytes()
}

fn stripe_headers(secret: &str, t: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        json_ct(),
        ("Stripe-Signature", sign::stripe(secret, t, body)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_scheme() {
    std::env::set_var("HMS_IT_STRIPE_OLD", "whsec_old_one");
    std::env::set_var("HMS_IT_STRIPE_NEW", "whsec_new_one");
    let id = "stripe.it.v1";
    let c = stripe_connector(
        id,
        "secrets: [\"${HMS_IT_STRIPE_OLD}\", \"${HMS_IT_STRIPE_NEW}\"]",
        "  topic: \"stripe.{{ type }}\"\n",
    );
    let s = Inbound::start(&[("s.yaml", c)]).await;
    let path = format!("/webhooks/{id}");
    let body = stripe_event("evt_A", "FEE-1");

    // Valid, with the old secret: stored as sent, on stripe.invoice.paid, dedup id = event id.
    let a = s
        .post(&path, &stripe_headers("whsec_old_one", now(), &body), &body)
        .await;
    assert_status(&a, 200, "valid");
    let stored = s.stored().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].subject.as_str(), "stripe.invoice.paid");
    assert_eq!(stored[0].payload.as_ref(), body.as_slice(), "exact bytes");
    assert_eq!(header(&stored[0], "Nats-Msg-Id").as_deref(), Some("evt_A"));
    assert_eq!(
        header(&stored[0], "Hms-Webhook-Type").as_deref(),
        Some("invoice.paid")
    );
    assert_eq!(
        header(&stored[0], "Hms-Webhook-Connector").as_deref(),
        Some(id)
    );

    // Duplicate delivery: Stripe retries with a new timestamp and signature; stored once.
    let a = s
        .post(
            &path,
            &stripe_headers("whsec_new_one", now() + 1, &body),
            &body,
        )
        .await;
    assert_status(&a, 200, "duplicate");
    assert!(a.body.contains("\"duplicate\":true"), "{}", a.body);
    assert_eq!(s.stored().await.len(), 1);

    // Rotation: the new secret alone works too.
    let body_b = stripe_event("evt_B", "FEE-2");
    let a = s
        .post(
            &path,
            &stripe_headers("whsec_new_one", now(), &body_b),
            &body_b,
        )
        .await;
    assert_status(&a, 200, "new secret");

    let mut tampered = body_b.clone();
    tampered.extend_from_slice(b" ");
    let rejected: Vec<Case> = vec![
        (
            "tampered body",
            stripe_headers("whsec_new_one", now(), &body_b),
            &tampered,
        ),
        (
            "wrong secret",
            stripe_headers("whsec_wrong", now(), &body_b),
            &body_b,
        ),
        (
            "stale",
            stripe_headers("whsec_new_one", now() - 400, &body_b),
            &body_b,
        ),
        (
            "future",
            stripe_headers("whsec_new_one", now() + 400, &body_b),
            &body_b,
        ),
        ("missing header", vec![json_ct()], &body_b),
        (
            "malformed header",
            vec![json_ct(), ("Stripe-Signature", "v1=abc".into())],
            &body_b,
        ),
    ];
    for (what, headers, body) in rejected {
        let a = s.post(&path, &headers, body).await;
        assert_status(&a, 401, what);
    }
    assert_eq!(s.stored().await.len(), 2, "nothing rejected was stored");
    let m = s.metrics().await;
    for line in [
        format!("webhook_received_total{{connector=\"{id}\"}} 3"),
        format!("webhook_rejected_total{{connector=\"{id}\",reason=\"bad_signature\"}} 3"),
        format!("webhook_rejected_total{{connector=\"{id}\",reason=\"timestamp\"}} 2"),
        format!("webhook_rejected_total{{connector=\"{id}\",reason=\"missing_signature\"}} 1"),
    ] {
        assert!(m.contains(&line), "{line} in\n{m}");
    }
    assert!(!m.contains("whsec_"), "no secret in metrics");
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_scheme() {
    std::env::set_var("HMS_IT_GITHUB", "It's a Secret to Everybody");
    std::env::set_var("HMS_IT_GITHUB_NEXT", "the next secret");
    let c = "id: gh.it.v1\ntype: inbound\nsource:\n  webhookUrl: /webhooks/github\n  signature:\n    scheme: github\n    secrets: [\"${HMS_IT_GITHUB}\", \"${HMS_IT_GITHUB_NEXT}\"]\npublish:\n  topic: github.delivery\n  body:\n    repo: \"{{ repository.full_name }}\"\n    action: \"{{ action }}\"\n";
    let s = Inbound::start(&[("g.yaml", c.to_string())]).await;
    let path = "/webhooks/github";
    let gh = |secret: &str, body: &[u8], delivery: &str| {
        vec![
            json_ct(),
            ("X-GitHub-Event", "issues".to_string()),
            ("X-GitHub-Delivery", delivery.to_string()),
            ("X-Hub-Signature-256", sign::github(secret, body)),
        ]
    };

    // GitHub's documented example verifies, and is then refused as not JSON (400).
    let doc = gh("It's a Secret to Everybody", b"Hello, World!", "d-0");
    assert_eq!(
        doc[3].1,
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
    assert_status(&s.post(path, &doc, b"Hello, World!").await, 400, "not JSON");

    let body = br#"{"action":"opened","repository":{"full_name":"dc/permits"}}"#;
    let headers = gh("It's a Secret to Everybody", body, "d-1");
    assert_status(&s.post(path, &headers, body).await, 200, "valid");
    assert_status(&s.post(path, &headers, body).await, 200, "duplicate");
    let stored = s.stored().await;
    assert_eq!(stored.len(), 1, "a redelivery is stored once");
    let m = &stored[0];
    assert_eq!(m.subject.as_str(), "github.delivery");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap(),
        json!({"repo": "dc/permits", "action": "opened"})
    );
    assert_eq!(header(m, "Nats-Msg-Id").as_deref(), Some("d-1"));
    assert_eq!(header(m, "X-GitHub-Delivery").as_deref(), Some("d-1"));
    assert_eq!(header(m, "X-GitHub-Event").as_deref(), Some("issues"));
    assert_eq!(header(m, "Hms-Webhook-Type").as_deref(), Some("issues"));
    assert_eq!(
        header(m, "X-Hub-Signature-256"),
        None,
        "signature not forwarded"
    );

    // Rotation: the next secret is accepted as well.
    let h2 = gh("the next secret", body, "d-2");
    assert_status(&s.post(path, &h2, body).await, 200, "next secret");

    let mut tampered = body.to_vec();
    tampered[2] = b'A';
    let wrong = gh("wrong", body, "d-3");
    let missing: Vec<(&str, String)> = headers[..3].to_vec();
    for (what, h, b) in [
        ("tampered", &headers, tampered.as_slice()),
        ("wrong secret", &wrong, body.as_slice()),
        ("missing header", &missing, body.as_slice()),
    ] {
        assert_status(&s.post(path, h, b).await, 401, what);
    }
    assert_eq!(s.stored().await.len(), 2);
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_scheme() {
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let new = "whsec_bmV3IHNlY3JldCBmb3Igcm90YXRpb24=";
    std::env::set_var("HMS_IT_SW_OLD", old);
    std::env::set_var("HMS_IT_SW_NEW", new);
    let c = "id: sw.it.v1\ntype: inbound\nsource:\n  webhookUrl: /webhooks/sw\n  signature:\n    scheme: standard-webhooks\n    secrets: [\"${HMS_IT_SW_OLD}\", \"${HMS_IT_SW_NEW}\"]\n    toleranceSec: 60\npublish:\n  topic: \"portal.{{ type }}\"\n";
    let s = Inbound::start(&[("sw.yaml", c.to_string())]).await;
    let path = "/webhooks/sw";
    let sw = |secret: &str, id: &str, t: i64, body: &[u8]| {
        vec![
            json_ct(),
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", t.to_string()),
            (
                "webhook-signature",
                sign::standard_webhooks(secret, id, t, body),
            ),
        ]
    };
    let body = br#"{"type":"permit.submitted","data":{"permitId":"RW-9"}}"#;
    assert_status(
        &s.post(path, &sw(old, "msg_1", now(), body), body).await,
        200,
        "valid",
    );
    // The sender's retry: same webhook-id, fresh timestamp and signature.
    assert_status(
        &s.post(path, &sw(new, "msg_1", now() + 2, body), body).await,
        200,
        "duplicate",
    );
    let stored = s.stored().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].subject.as_str(), "portal.permit.submitted");
    assert_eq!(header(&stored[0], "Nats-Msg-Id").as_deref(), Some("msg_1"));
    assert_eq!(header(&stored[0], "webhook-id").as_deref(), Some("msg_1"));
    assert_eq!(stored[0].payload.as_ref(), body.as_slice());
    assert_status(
        &s.post(path, &sw(new, "msg_2", now(), body), body).await,
        200,
        "rotation",
    );

    // Several signatures in one header, one of them valid.
    let mut several = sw(old, "msg_3", now(), body);
    several[3].1 = format!("v1,bm9wZQ== {}", several[3].1);
    assert_status(
        &s.post(path, &several, body).await,
        200,
        "several signatures",
    );

    let good = sw(old, "msg_4", now(), body);
    let cases: Vec<Case> = vec![
        (
            "tampered",
            good.clone(),
            br#"{"type":"permit.submitted","data":{"permitId":"RW-0"}}"#,
        ),
        (
            "wrong secret",
            sw("whsec_d3Jvbmc=", "msg_4", now(), body),
            body,
        ),
        ("stale", sw(old, "msg_4", now() - 120, body), body),
        ("future", sw(old, "msg_4", now() + 120, body), body),
        (
            "missing webhook-id",
            vec![good[0].clone(), good[2].clone(), good[3].clone()],
            body,
        ),
        ("missing signature", good[..3].to_vec(), body),
        (
            "id changed",
            {
                let mut h = good.clone();
                h[1].1 = "msg_5".into();
                h
            },
            body,
        ),
    ];
    for (what, h, b) in cases {
        assert_status(&s.post(path, &h, b).await, 401, what);
    }
    assert_eq!(s.stored().await.len(), 3);
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_sha256_scheme() {
    std::env::set_var("HMS_IT_HMAC_OLD", "old-portal-secret");
    std::env::set_var("HMS_IT_HMAC_NEW", "new-portal-secret");
    let c = "id: pay.it.v1\ntype: inbound\nsource:\n  webhookUrl: /webhooks/pay\n  signature:\n    scheme: hmac-sha256\n    header: X-Signature\n    encoding: hex\n    prefix: \"sha256=\"\n    secrets: [\"${HMS_IT_HMAC_OLD}\", \"${HMS_IT_HMAC_NEW}\"]\npublish:\n  topic: payment.received\n  idFrom: \"{{ paymentId }}\"\n";
    let s = Inbound::start(&[("p.yaml", c.to_string())]).await;
    let path = "/webhooks/pay";
    let h = |secret: &str, body: &[u8]| {
        vec![
            json_ct(),
            (
                "X-Signature",
                format!(
                    "sha256={}",
                    sign::hmac_sha256(secret, body, SigEncoding::Hex)
                ),
            ),
        ]
    };
    let body = br#"{"paymentId":"PAY-1","amount":40}"#;
    assert_status(
        &s.post(path, &h("old-portal-secret", body), body).await,
        200,
        "valid",
    );
    // Same idFrom value, even with other bytes: stored once.
    let again = br#"{"paymentId":"PAY-1","amount":40, "retry": true}"#;
    assert_status(
        &s.post(path, &h("new-portal-secret", again), again).await,
        200,
        "duplicate",
    );
    let stored = s.stored().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(header(&stored[0], "Nats-Msg-Id").as_deref(), Some("PAY-1"));
    let body2 = br#"{"paymentId":"PAY-2","amount":41}"#;
    assert_status(
        &s.post(path, &h("new-portal-secret", body2), body2).await,
        200,
        "rotation",
    );
    let no_prefix = vec![
        json_ct(),
        (
            "X-Signature",
            sign::hmac_sha256("old-portal-secret", body, SigEncoding::Hex),
        ),
    ];
    for (what, hh, b) in [
        ("tampered", h("old-portal-secret", body), &body2[..]),
        ("wrong secret", h("other", body), &body[..]),
        ("missing header", vec![json_ct()], &body[..]),
        ("no prefix", no_prefix, &body[..]),
    ] {
        assert_status(&s.post(path, &hh, b).await, 401, what);
    }
    // A webhook without the idFrom field cannot be mapped: 422, nothing stored.
    let no_id = br#"{"amount":1}"#;
    assert_status(
        &s.post(path, &h("old-portal-secret", no_id), no_id).await,
        422,
        "idFrom missing",
    );
    assert_eq!(s.stored().await.len(), 2);
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_for_every_kind_of_bad_request() {
    std::env::set_var("HMS_IT_ANSWERS", "whsec_answers");
    let small = stripe_connector(
        "small.it.v1",
        "secret: ${HMS_IT_ANSWERS}",
        "  topic: fee.paid\n",
    )
    .replace("  signature:", "  maxBodyBytes: 1024\n  signature:");
    let default = stripe_connector(
        "default.it.v1",
        "secret: ${HMS_IT_ANSWERS}",
        "  topic: fee.paid\n",
    );
    let unset = stripe_connector(
        "unset.it.v1",
        "secret: ${HMS_IT_NEVER_SET_SECRET}",
        "  topic: fee.paid\n",
    );
    let s = Inbound::start(&[("a.yaml", small), ("b.yaml", default), ("c.yaml", unset)]).await;
    let secret = "whsec_answers";
    let path = "/webhooks/small.it.v1";
    let body = stripe_event("evt_1", "F");

    assert_status(
        &s.post("/webhooks/nope", &[json_ct()], b"{}").await,
        404,
        "unknown path",
    );
    let get = reqwest::get(s.url(path)).await.unwrap();
    assert_eq!(get.status(), 405, "GET");
    let form = vec![
        (
            "Content-Type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("Stripe-Signature", sign::stripe(secret, now(), &body)),
    ];
    assert_status(&s.post(path, &form, &body).await, 415, "form content type");
    assert_status(
        &s.post(
            path,
            &[("Stripe-Signature", sign::stripe(secret, now(), &body))],
            &body,
        )
        .await,
        415,
        "no content type",
    );
    let big = vec![b' '; 2048];
    assert_status(
        &s.post(path, &stripe_headers(secret, now(), &big), &big)
            .await,
        413,
        "over maxBodyBytes",
    );
    let at_limit = {
        let mut b = stripe_event("evt_2", "F");
        b.resize(1024, b' ');
        b
    };
    assert_status(
        &s.post(path, &stripe_headers(secret, now(), &at_limit), &at_limit)
            .await,
        200,
        "exactly at the limit",
    );
    let huge = vec![b' '; 1024 * 1024 + 1];
    assert_status(
        &s.post(
            "/webhooks/default.it.v1",
            &stripe_headers(secret, now(), &huge),
            &huge,
        )
        .await,
        413,
        "over the default 1 MiB",
    );
    let not_json = b"{\"id\": ";
    assert_status(
        &s.post(path, &stripe_headers(secret, now(), not_json), not_json)
            .await,
        400,
        "malformed JSON",
    );
    // A secret that is not set: 401, counted as no_secret.
    assert_status(
        &s.post(
            "/webhooks/unset.it.v1",
            &stripe_headers(secret, now(), &body),
            &body,
        )
        .await,
        401,
        "unset secret",
    );
    let m = s.metrics().await;
    for line in [
        "webhook_rejected_total{connector=\"small.it.v1\",reason=\"content_type\"} 2",
        "webhook_rejected_total{connector=\"small.it.v1\",reason=\"too_large\"} 1",
        "webhook_rejected_total{connector=\"small.it.v1\",reason=\"malformed_json\"} 1",
        "webhook_rejected_total{connector=\"small.it.v1\",reason=\"method\"} 1",
        "webhook_rejected_total{connector=\"default.it.v1\",reason=\"too_large\"} 1",
        "webhook_rejected_total{connector=\"unset.it.v1\",reason=\"no_secret\"} 1",
        "webhook_received_total{connector=\"small.it.v1\"} 1",
        "webhook_received_total{connector=\"unset.it.v1\"} 0",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    let list: serde_json::Value =
        serde_json::from_str(&get_text(&s.url("/api/webhooks")).await).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_nats_is_answered_503_so_the_sender_retries() {
    std::env::set_var("HMS_IT_503", "whsec_503");
    let c = stripe_connector("down.it.v1", "secret: ${HMS_IT_503}", "  topic: fee.paid\n");
    let s = Inbound::start(&[("d.yaml", c)]).await;
    let path = "/webhooks/down.it.v1";
    let body = stripe_event("evt_down", "F");
    assert_status(
        &s.post(path, &stripe_headers("whsec_503", now(), &body), &body)
            .await,
        200,
        "up",
    );
    let Inbound {
        nats, rt, _setup, ..
    } = s;
    drop(nats); // kills this test's nats-server
    let url = format!("http://{}{path}", rt.http_addr());
    eventually(T, "503 while NATS is down", || {
        let (url, body) = (url.clone(), body.clone());
        async move {
            let a = post_webhook(&url, &stripe_headers("whsec_503", now(), &body), &body).await;
            a.status == 503
        }
    })
    .await;
    // The runtime is dropped without a drain: its NATS is gone.
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_connectors_can_be_deployed_and_removed_while_running() {
    std::env::set_var("HMS_IT_HOT", "whsec_hot");
    let s = Inbound::start(&[]).await;
    let path = "/webhooks/hot.it.v1";
    let body = stripe_event("evt_hot", "F");
    let h = stripe_headers("whsec_hot", now(), &body);
    assert_status(&s.post(path, &h, &body).await, 404, "before deploy");

    let text = stripe_connector(
        "hot.it.v1",
        "secret: ${HMS_IT_HOT}",
        "  topic: \"hot.{{ type }}\"\n",
    );
    let hms_sync::connector::AnyConnector::Inbound(c) =
        hms_sync::connector::parse("kv:hot", &text).unwrap()
    else {
        panic!("inbound expected")
    };
    let bus = hms_sync::bus::Bus::connect(&s.nats.url()).await.unwrap();
    hms_sync::inbound::deploy(
        s.rt.webhooks(),
        &bus,
        &hms_sync::config::StreamsConfig::default(),
        *c,
    )
    .await
    .unwrap();
    assert_status(&s.post(path, &h, &body).await, 200, "after deploy");
    let stored = s.stored().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].subject.as_str(), "hot.invoice.paid");
    assert!(s.rt.webhooks().remove("hot.it.v1").is_some());
    assert_status(&s.post(path, &h, &body).await, 404, "after undeploy");
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_invoice_paid_marks_the_fee_paid_in_another_system() {
    std::env::set_var("STRIPE_WEBHOOK_SECRET", "whsec_round_trip");
    std::env::set_var("FEES_API_TOKEN", "fees-token");
    let target = Target::start().await;
    let inbound = include_str!("../../connectors/stripe-fees.inbound.yaml").to_string();
    let outbound = include_str!("../../connectors/fees-paid.outbound.yaml")
        .replace("https://fees.example.gov", &target.url());
    let s = Inbound::start(&[("stripe.yaml", inbound), ("fees.yaml", outbound)]).await;
    let body = include_bytes!("../../connectors/sample_stripe_invoice_paid.json");
    let a = s
        .post(
            "/webhooks/stripe",
            &stripe_headers("whsec_round_trip", now(), body),
            body,
        )
        .await;
    assert_status(&a, 200, "webhook");
    // Stripe retries (e.g. our 200 got lost): the fee is marked paid once.
    let a = s
        .post(
            "/webhooks/stripe",
            &stripe_headers("whsec_round_trip", now(), body),
            body,
        )
        .await;
    assert_status(&a, 200, "retried webhook");

    eventually(T, "the fee ledger got its PATCH", || async {
        target.count() >= 1
    })
    .await;
    let stream = s.js.get_stream("HMS_EVENTS").await.unwrap();
    eventually(T, "fee.paid acked by the outbound connector", || {
        let stream = stream.clone();
        async move {
            let info = stream
                .consumer_info("fees_ledger_outbound_v1")
                .await
                .unwrap();
            info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence >= 1
        }
    })
    .await;
    let reqs = target.requests();
    assert_eq!(reqs.len(), 1, "one PATCH for one payment: {reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.method, "PATCH");
    assert_eq!(r.path, "/api/fees/FEE-2024-0042");
    assert_eq!(
        r.header("authorization").as_deref(),
        Some("Bearer fees-token")
    );
    assert!(r.header("idempotency-key").is_some());
    assert_eq!(
        r.json(),
        json!({"status": "PAID", "paidAmount": 12500, "currency": "usd",
               "paymentReference": "in_1PqR2aB3cD4eF5gH"})
    );
    // Both halves are on the audit trail: the accepted webhooks and the outbound call.
    eventually(T, "audit records of the webhooks and the call", || async {
        let audit = audit_records(&s.js).await;
        audit.iter().filter(|r| r["kind"] == "webhook").count() == 2
            && audit
                .iter()
                .any(|r| r["kind"] == "attempt" && r["status"] == 200)
    })
    .await;
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_connector_loads_and_unset_secrets_answer_401() {
    let examples = [
        (
            "gis-ddot.yaml",
            include_str!("../../connectors/gis-ddot.yaml"),
        ),
        (
            "fees-paid.outbound.yaml",
            include_str!("../../connectors/fees-paid.outbound.yaml"),
        ),
        (
            "github.inbound.yaml",
            include_str!("../../connectors/github.inbound.yaml"),
        ),
        (
            "payments-portal.inbound.yaml",
            include_str!("../../connectors/payments-portal.inbound.yaml"),
        ),
        (
            "permits-portal.inbound.yaml",
            include_str!("../../connectors/permits-portal.inbound.yaml"),
        ),
        (
            "stripe-fees.inbound.yaml",
            include_str!("../../connectors/stripe-fees.inbound.yaml"),
        ),
    ];
    let connectors: Vec<(&str, String)> =
        examples.iter().map(|(n, t)| (*n, t.to_string())).collect();
    let s = Inbound::start(&connectors).await;
    // No test sets PORTAL_WEBHOOK_SECRET.
    let body = br#"{"type":"permit.submitted"}"#;
    let h = vec![
        json_ct(),
        ("webhook-id", "msg_x".to_string()),
        ("webhook-timestamp", now().to_string()),
        (
            "webhook-signature",
            sign::standard_webhooks("whsec_c2VjcmV0", "msg_x", now(), body),
        ),
    ];
    let a = s.post("/webhooks/permits-portal", &h, body).await;
    assert_status(&a, 401, "unset secret");
    assert!(a.body.contains("no usable secret"), "{}", a.body);
    let info =
        s.js.get_stream("HMS_EVENTS")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .subjects
            .clone();
    for subject in [
        "fee.paid",
        "github.delivery",
        "payment.received",
        "portal.>",
        "permit.updated",
    ] {
        assert!(info.iter().any(|s| s == subject), "{subject} in {info:?}");
    }
    s.rt.shutdown().await;
}

#[test]
fn test_prints_the_event_an_inbound_connector_would_publish() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "test",
            "connectors/stripe-fees.inbound.yaml",
            "connectors/sample_stripe_invoice_paid.json",
        ])
        .env("STRIPE_WEBHOOK_SECRET", "whsec_do_not_print")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.lines().next(), Some("PUBLISH fee.paid"));
    assert!(
        stdout.contains("\nNats-Msg-Id: evt_1PqR2sT3uV4wX5yZ\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "\n\n{\"amountPaid\":12500,\"currency\":\"usd\",\"feeId\":\"FEE-2024-0042\","
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("do_not_print"));
    let validate = std::process::Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "validate",
            "connectors/gis-ddot.yaml",
            "connectors/fees-paid.outbound.yaml",
            "connectors/github.inbound.yaml",
            "connectors/payments-portal.inbound.yaml",
            "connectors/permits-portal.inbound.yaml",
            "connectors/stripe-fees.inbound.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(
        validate.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&validate.stdout)
    );
}
