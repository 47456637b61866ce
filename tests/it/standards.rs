//! The ecosystem's standards end to end, each against an implementation that is not ours:
//! signed outbound calls verified with the `standardwebhooks` crate, CloudEvents both ways
//! with the CloudEvents Rust SDK, and a target that announces its budget in `RateLimit` /
//! `X-RateLimit-*` headers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use cloudevents::binding::http::{to_event, Builder, Serializer};
use cloudevents::message::BinaryDeserializer;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use serde_json::json;

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

/// A Standard Webhooks secret (the specification's example key).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request a loopback server received, and what it answered.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    status: u16,
}

/// What a server answers to (path, headers, body, requests before): status, headers, body.
type Answerer = Arc<
    dyn Fn(&str, &HeaderMap, &Bytes, usize) -> (u16, Vec<(String, String)>, String) + Send + Sync,
>;

/// A loopback HTTP server whose answers a test computes from each request.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    async fn start(answer: Answerer) -> Server {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let (log, answer) = (log.clone(), answer.clone());
                async move {
                    let n = log.lock().unwrap().len();
                    let (status, extra, text) = answer(uri.path(), &headers, &body, n);
                    log.lock().unwrap().push(Seen {
                        method,
                        headers,
                        body,
                        status,
                    });
                    let mut resp = (StatusCode::from_u16(status).unwrap(), text).into_response();
                    for (k, v) in extra {
                        resp.headers_mut().insert(
                            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                            v.parse().unwrap(),
                        );
                    }
                    resp
                }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn outbound(id: &str, topic: &str, url: &str, to_extra: &str, extra: &str) -> String {
    format!(
        "id: {id}\ntype: outbound\ntrigger:\n  topic: {topic}\nmap:\n  to:\n    url: \"{url}/hooks/{{permitId}}\"\n    method: POST\n    body:\n      permitId: \"{{{{ permitId }}}}\"\n      n: \"{{{{ n }}}}\"\n{to_extra}{extra}"
    )
}

#[tokio::test]
async fn signed_calls_verify_with_the_standard_webhooks_library_on_every_attempt() {
    init_logs();
    std::env::set_var("HMS_IT_PARTNER_SECRET", SECRET);
    let wh = Arc::new(standardwebhooks::Webhook::new(SECRET).unwrap());
    let verifier = wh.clone();
    // Verifies every request with the library; the first attempt of each event fails (500).
    let target = Server::start(Arc::new(move |_, h, body, _| {
        if verifier.verify(body, h).is_err() {
            return (401, vec![], String::new());
        }
        let retried = !FIRST_SEEN.lock().unwrap().insert(header(h, "webhook-id"));
        (if retried { 200 } else { 500 }, vec![], String::new())
    }))
    .await;
    static FIRST_SEEN: Mutex<std::collections::BTreeSet<String>> =
        Mutex::new(std::collections::BTreeSet::new());
    let nats = Nats::start().await;
    let c = outbound(
        "partner.signed.v1",
        "permit.signed",
        &target.url(),
        "    sign:\n      scheme: standard-webhooks\n      secret: ${HMS_IT_PARTNER_SECRET}\n",
        "retry:\n  max: 3\n  backoffMs: 1500\n",
    );
    let setup = Setup::new(&nats, &[("c.yaml", c)], "");
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish_many(
        &js,
        "permit.signed",
        (0..3).map(|i| json!({"permitId": format!("RW-{i}"), "n": 1.5})),
    )
    .await;
    eventually(T, "3 events delivered on their second attempt", || async {
        target.seen().iter().filter(|s| s.status == 200).count() == 3
    })
    .await;
    let seen = target.seen();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.status != 401),
        "every attempt verifies"
    );
    for s in &seen {
        assert_eq!(
            header(&s.headers, "webhook-id"),
            header(&s.headers, "idempotency-key"),
            "webhook-id is the idempotency key"
        );
        let sig = header(&s.headers, "webhook-signature");
        assert!(sig.starts_with("v1,"), "{sig}");
        // The signature covers the exact bytes: one byte changed and the library refuses it.
        let mut tampered = s.body.to_vec();
        let i = tampered.iter().position(|b| *b == b'1').unwrap();
        tampered[i] = b'2';
        assert!(wh.verify(&tampered, &s.headers).is_err());
        assert!(wh.verify(&s.body, &s.headers).is_ok());
    }
    // Sent to the receiver, a tampered copy is refused by it.
    let s = &seen[0];
    let mut tampered = s.body.to_vec();
    let i = tampered.iter().position(|b| *b == b'1').unwrap();
    tampered[i] = b'2';
    let mut req = reqwest::Client::new()
        .post(format!("{}/hooks/RW-0", target.url()))
        .body(tampered);
    for name in [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
    ] {
        req = req.header(name, header(&s.headers, name));
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 401);
    // Each attempt is signed when it is sent: the retry (1.5 s ± 20 % later, so over a second)
    // carries a new timestamp and a new signature.
    for id in seen.iter().map(|s| header(&s.headers, "webhook-id")) {
        let attempts: Vec<&Seen> = seen
            .iter()
            .filter(|s| header(&s.headers, "webhook-id") == id)
            .collect();
        assert_eq!(attempts.len(), 2);
        let ts = |s: &Seen| {
            header(&s.headers, "webhook-timestamp")
                .parse::<i64>()
                .unwrap()
        };
        assert!(ts(attempts[1]) > ts(attempts[0]), "fresh timestamp");
        assert_ne!(
            header(&attempts[0].headers, "webhook-signature"),
            header(&attempts[1].headers, "webhook-signature")
        );
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn the_resend_after_a_token_refresh_is_signed_afresh() {
    init_logs();
    std::env::set_var("HMS_IT_REFRESH_SECRET", SECRET);
    std::env::set_var("HMS_IT_REFRESH_CLIENT", "client-secret");
    let wh = standardwebhooks::Webhook::new(SECRET).unwrap();
    let tokens = Arc::new(AtomicUsize::new(0));
    let issued = tokens.clone();
    // The token endpoint issues tok-1, tok-2, ...; the API refuses tok-1 (401) and checks the
    // signature of everything else.
    let server = Server::start(Arc::new(move |path, h, body, _| {
        if path == "/oauth/token" {
            let n = issued.fetch_add(1, SeqCst) + 1;
            let token =
                format!(r#"{{"access_token":"tok-{n}","expires_in":3600,"token_type":"Bearer"}}"#);
            let json = vec![("content-type".into(), "application/json".into())];
            return (200, json, token);
        }
        if header(h, "authorization") == "Bearer tok-1" {
            return (401, vec![], String::new());
        }
        let status = if wh.verify(body, h).is_ok() { 200 } else { 400 };
        (status, vec![], String::new())
    }))
    .await;
    let nats = Nats::start().await;
    let url = server.url();
    let c = format!(
        "id: partner.refresh.v1\ntype: outbound\ntrigger: {{ topic: permit.refresh }}\nauth:\n  type: oauth2-client-credentials\n  tokenUrl: {url}/oauth/token\n  clientId: hms-sync\n  clientSecret: ${{HMS_IT_REFRESH_CLIENT}}\nmap:\n  to:\n    url: \"{url}/hooks/{{permitId}}\"\n    method: POST\n    body: {{ permitId: \"{{{{ permitId }}}}\" }}\n    sign: {{ scheme: standard-webhooks, secret: \"${{HMS_IT_REFRESH_SECRET}}\" }}\nretry: {{ max: 1 }}\n"
    );
    let setup = Setup::new(&nats, &[("c.yaml", c)], "");
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish(&js, "permit.refresh", json!({"permitId": "RW-7"})).await;
    eventually(T, "the resend delivered", || async {
        server
            .seen()
            .iter()
            .any(|s| s.status == 200 && s.headers.contains_key("webhook-id"))
    })
    .await;
    let calls: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.headers.contains_key("webhook-id"))
        .collect();
    assert_eq!(
        calls.iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![401, 200],
        "refused with the old token, accepted (signature verified) with the new one"
    );
    assert_eq!(header(&calls[1].headers, "authorization"), "Bearer tok-2");
    assert_eq!(
        header(&calls[0].headers, "webhook-id"),
        header(&calls[1].headers, "webhook-id")
    );
    assert_eq!(tokens.load(SeqCst), 2);
    rt.shutdown().await;
}

#[test]
fn test_shows_the_signature_headers_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        outbound(
            "partner.test.v1",
            "permit.updated",
            "https://partner.example",
            "    format: cloudevents\n    sign:\n      scheme: standard-webhooks\n      secret: ${HMS_IT_TEST_SECRET}\n",
            "",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .arg("test")
        .arg(&file)
        .arg("-")
        .env("HMS_IT_TEST_SECRET", SECRET)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(br#"{"permitId":"RW-481","n":2}"#)?;
            child.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "POST https://partner.example/hooks/RW-481",
        "Ce-Specversion: 1.0",
        "Ce-Source: urn:hms-sync:partner.test.v1",
        "Ce-Type: permit.updated",
        "Ce-Id: <idempotency-key>",
        "Ce-Time: <publish-time>",
        "Webhook-Timestamp: <unix time at send>",
        "Webhook-Signature: v1,***",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(text.contains("Webhook-Id: <derived per event"), "{text}");
    assert!(!text.contains("MfKQ9r8"), "no secret: {text}");
}

/// The binary-mode request of an SDK event: (headers, body).
fn sdk_binary(event: Event) -> (Vec<(String, String)>, Vec<u8>) {
    #[derive(Default)]
    struct Collect(Vec<(String, String)>);
    impl Builder<(Vec<(String, String)>, Vec<u8>)> for Collect {
        fn header(&mut self, key: &str, value: axum::http::HeaderValue) {
            self.0
                .push((key.to_string(), value.to_str().unwrap().to_string()));
        }
        fn body(
            &mut self,
            bytes: Vec<u8>,
        ) -> cloudevents::message::Result<(Vec<(String, String)>, Vec<u8>)> {
            Ok((std::mem::take(&mut self.0), bytes))
        }
        fn finish(&mut self) -> cloudevents::message::Result<(Vec<(String, String)>, Vec<u8>)> {
            self.body(Vec::new())
        }
    }
    BinaryDeserializer::deserialize_binary(event, Serializer::new(Collect::default())).unwrap()
}

fn sdk_event(id: &str, ty: &str, data: serde_json::Value) -> Event {
    EventBuilderV10::new()
        .id(id)
        .ty(ty)
        .source("https://permits.example/ddot")
        .time("2024-05-10T08:00:00Z")
        .subject("RW-481")
        .extension("agency", "DDOT")
        .data("application/json", data)
        .build()
        .unwrap()
}

/// Standard Webhooks headers for `body`, made with the library.
fn signed(id: &str, body: &[u8]) -> Vec<(String, String)> {
    let wh = standardwebhooks::Webhook::new(SECRET).unwrap();
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), ts.to_string()),
        ("webhook-signature".into(), wh.sign(id, ts, body).unwrap()),
    ]
}

async fn post(
    url: &str,
    method: Method,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, HeaderMap, String) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap_or_default())
}

/// The stored NATS message as an HTTP header map (what a binary-mode reader sees).
fn nats_headers(m: &async_nats::jetstream::message::StreamMessage) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, values) in m.headers.iter() {
        for v in values {
            h.append(
                axum::http::HeaderName::from_bytes(k.to_string().as_bytes()).unwrap(),
                v.as_str().parse().unwrap(),
            );
        }
    }
    h
}

#[tokio::test]
async fn cloudevents_from_the_sdk_are_stored_with_their_attributes_in_every_mode() {
    init_logs();
    std::env::set_var("HMS_IT_CE_SECRET", SECRET);
    let nats = Nats::start().await;
    let c = "id: permits.ce.inbound\ntype: inbound\nsource:\n  webhookUrl: /webhooks/ce\n  format: cloudevents\n  allowedOrigins: [permits.example]\n  allowedRate: 120\n  signature:\n    scheme: standard-webhooks\n    secret: ${HMS_IT_CE_SECRET}\npublish:\n  topic: \"ce.{{ type }}\"\n".to_string();
    let open = "id: any.ce.inbound\ntype: inbound\nsource:\n  webhookUrl: /webhooks/ce-any\n  format: cloudevents\n  signature:\n    scheme: standard-webhooks\n    secret: ${HMS_IT_CE_SECRET}\npublish:\n  topic: ce.any\n".to_string();
    let setup = Setup::new(&nats, &[("c.yaml", c), ("open.yaml", open)], "");
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    let url = format!("http://{}/webhooks/ce", rt.http_addr());

    // The validation handshake.
    let ask = |origin: &str| {
        vec![
            ("WebHook-Request-Origin".to_string(), origin.to_string()),
            ("WebHook-Request-Rate".to_string(), "500".to_string()),
        ]
    };
    let (status, h, _) = post(&url, Method::OPTIONS, &ask("permits.example"), b"").await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "webhook-allowed-origin"), "permits.example");
    assert_eq!(header(&h, "webhook-allowed-rate"), "120");
    assert!(header(&h, "allow").contains("POST"));
    let (status, h, _) = post(&url, Method::OPTIONS, &ask("spam.example"), b"").await;
    assert_eq!(status, 403);
    assert!(h.get("webhook-allowed-origin").is_none());
    let any = format!("http://{}/webhooks/ce-any", rt.http_addr());
    let (status, h, _) = post(&any, Method::OPTIONS, &ask("anyone.example"), b"").await;
    assert_eq!(
        (status, header(&h, "webhook-allowed-origin")),
        (200, "anyone.example".into())
    );
    assert_eq!(header(&h, "webhook-allowed-rate"), "*");

    // Binary mode, built by the SDK.
    let binary = sdk_event(
        "A-1",
        "permit.updated",
        json!({"permitId": "RW-481", "n": 1.50}),
    );
    let (mut headers, body) = sdk_binary(binary.clone());
    headers.extend(signed("msg_a1", &body));
    let (status, _, text) = post(&url, Method::POST, &headers, &body).await;
    assert_eq!(status, 200, "{text}");
    // The same delivery again: stored once.
    let (status, _, text) = post(&url, Method::POST, &headers, &body).await;
    assert_eq!(
        (status, text.contains("\"duplicate\":true")),
        (200, true),
        "{text}"
    );

    // Structured mode.
    let structured = sdk_event("S-1", "permit.closed", json!({"permitId": "RW-9"}));
    let body = serde_json::to_vec(&structured).unwrap();
    let mut headers = vec![(
        "Content-Type".to_string(),
        "application/cloudevents+json; charset=utf-8".to_string(),
    )];
    headers.extend(signed("msg_s1", &body));
    let (status, _, text) = post(&url, Method::POST, &headers, &body).await;
    assert_eq!(status, 200, "{text}");

    // Batched mode: every entry stored.
    let batch = vec![
        sdk_event("B-1", "permit.opened", json!({"permitId": "RW-10"})),
        sdk_event("B-2", "permit.opened", json!({"permitId": "RW-11"})),
    ];
    let body = serde_json::to_vec(&batch).unwrap();
    let mut headers = vec![(
        "Content-Type".to_string(),
        "application/cloudevents-batch+json".to_string(),
    )];
    headers.extend(signed("msg_b", &body));
    let (status, _, text) = post(&url, Method::POST, &headers, &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"events\":2"), "{text}");

    // What is refused: a bad signature, no CloudEvent, an invalid one.
    let (mut headers, body) = sdk_binary(sdk_event("X-1", "permit.updated", json!({})));
    headers.extend(signed("msg_x", b"something else"));
    assert_eq!(post(&url, Method::POST, &headers, &body).await.0, 401);
    let plain = b"{\"permitId\":\"RW-1\"}";
    let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    headers.extend(signed("msg_p", plain));
    assert_eq!(post(&url, Method::POST, &headers, plain).await.0, 415);
    let broken = br#"{"specversion":"1.0","id":"1","type":"t"}"#;
    let mut headers = vec![(
        "Content-Type".to_string(),
        "application/cloudevents+json".to_string(),
    )];
    headers.extend(signed("msg_z", broken));
    let (status, _, text) = post(&url, Method::POST, &headers, broken).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("missing attribute `source`"), "{text}");

    // Each stored event reads back, with the SDK, as the event that was sent.
    let stored = stream_raw(&js, "HMS_EVENTS").await;
    let ours: Vec<_> = stored
        .iter()
        .filter(|m| m.subject.starts_with("ce."))
        .collect();
    assert_eq!(ours.len(), 4, "binary (once), structured, two batched");
    let sent = [binary, structured, batch[0].clone(), batch[1].clone()];
    for (m, want) in ours.iter().zip(sent.iter()) {
        let h = nats_headers(m);
        assert_eq!(m.subject.as_str(), format!("ce.{}", want.ty()));
        assert_eq!(
            header(&h, "nats-msg-id"),
            format!("https://permits.example/ddot {}", want.id())
        );
        assert_eq!(header(&h, "ce-agency"), "DDOT");
        let back = to_event(&h, m.payload.to_vec()).unwrap();
        assert_eq!(back.id(), want.id());
        assert_eq!(back.ty(), want.ty());
        assert_eq!(back.source(), want.source());
        assert_eq!(back.time(), want.time());
        assert_eq!(back.subject(), want.subject());
        assert_eq!(back.extension("agency"), want.extension("agency"));
        let data: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let sent_data: serde_json::Value = match want.data() {
            Some(cloudevents::Data::Json(v)) => v.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(data, sent_data, "the data is the body");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn outbound_cloudevents_parse_with_the_sdk_in_both_modes() {
    init_logs();
    let target = Target::start().await;
    let nats = Nats::start().await;
    let binary = outbound(
        "ce.binary.v1",
        "permit.ce",
        &target.url(),
        "    format: cloudevents\n    cloudevents:\n      subject: \"{{ permitId }}\"\n",
        "",
    );
    let structured = outbound(
        "ce.structured.v1",
        "permit.ce",
        &target.url(),
        "    format: cloudevents-structured\n    cloudevents: { source: /ddot/permits, type: gov.ddot.permit.changed }\n",
        "",
    );
    let setup = Setup::new(&nats, &[("b.yaml", binary), ("s.yaml", structured)], "");
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    let before = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
    publish(&js, "permit.ce", json!({"permitId": "RW-481", "n": 1.5})).await;
    let after = time::OffsetDateTime::now_utc() + Duration::from_secs(1);
    eventually(T, "both requests", || async { target.count() == 2 }).await;
    for r in target.requests() {
        let event = to_event(&r.headers, r.body.to_vec()).unwrap();
        let key = r.header("idempotency-key").unwrap();
        assert_eq!(event.id(), key, "ce-id is the idempotency key");
        let time = event.time().copied().unwrap();
        let ts = time::OffsetDateTime::from_unix_timestamp(time.timestamp()).unwrap();
        assert!(
            ts >= before && ts <= after,
            "ce-time is the publish time: {time}"
        );
        let data = match event.data() {
            Some(cloudevents::Data::Json(v)) => v.clone(),
            Some(cloudevents::Data::Binary(b)) => serde_json::from_slice(b).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(data, json!({"permitId": "RW-481", "n": 1.5}));
        assert_eq!(event.datacontenttype(), Some("application/json"));
        if r.header("ce-specversion").is_some() {
            assert_eq!(event.source().to_string(), "urn:hms-sync:ce.binary.v1");
            assert_eq!(event.ty(), "permit.ce", "ce-type is the topic");
            assert_eq!(event.subject(), Some("RW-481"));
            assert_eq!(
                r.header("content-type").as_deref(),
                Some("application/json")
            );
        } else {
            assert_eq!(event.source().to_string(), "/ddot/permits");
            assert_eq!(event.ty(), "gov.ddot.permit.changed");
            assert!(r
                .header("content-type")
                .unwrap()
                .starts_with("application/cloudevents+json"));
        }
    }
    rt.shutdown().await;
}

/// Which rate-limit headers the budgeted target sends.
#[derive(Clone, Copy, Debug)]
enum Family {
    /// `RateLimit: "default";r=..;t=..` and `RateLimit-Policy`.
    Ietf,
    /// `X-RateLimit-Remaining` and `X-RateLimit-Reset` as a Unix time.
    XUnix,
}

/// A target allowing `quota` requests per window of `window_s` seconds (windows aligned to the
/// wall clock), announcing what is left with every answer and answering 429 beyond it.
async fn budgeted_target(family: Family, quota: u64, window_s: u64) -> (Server, Arc<AtomicUsize>) {
    let too_many = Arc::new(AtomicUsize::new(0));
    let counter = too_many.clone();
    let windows: Arc<Mutex<(u64, u64)>> = Arc::default();
    let server = Server::start(Arc::new(move |_, _, _, _| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let window = now.as_secs() / window_s;
        let end = (window + 1) * window_s;
        let mut w = windows.lock().unwrap();
        if w.0 != window {
            *w = (window, 0);
        }
        w.1 += 1;
        let used = w.1;
        let remaining = quota.saturating_sub(used);
        let reset = (end as f64 - now.as_secs_f64()).ceil() as u64;
        let headers = match family {
            Family::Ietf => vec![
                (
                    "RateLimit".into(),
                    format!("\"default\";r={remaining};t={reset}"),
                ),
                (
                    "RateLimit-Policy".into(),
                    format!("\"default\";q={quota};w={window_s}"),
                ),
            ],
            Family::XUnix => vec![
                ("X-RateLimit-Limit".into(), quota.to_string()),
                ("X-RateLimit-Remaining".into(), remaining.to_string()),
                ("X-RateLimit-Reset".into(), end.to_string()),
            ],
        };
        if used > quota {
            counter.fetch_add(1, SeqCst);
            return (429, headers, String::new());
        }
        (200, headers, String::new())
    }))
    .await;
    (server, too_many)
}

async fn budget_is_honoured(family: Family, events: usize) {
    init_logs();
    let (target, too_many) = budgeted_target(family, 5, 2).await;
    let nats = Nats::start().await;
    let id = format!("budget.{family:?}").to_lowercase();
    let topic = format!("permit.budget.{family:?}").to_lowercase();
    let c = outbound(&id, &topic, &target.url(), "", "");
    let setup = Setup::new(&nats, &[("c.yaml", c)], "");
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish_many(
        &js,
        &topic,
        (0..events).map(|i| json!({"permitId": format!("RW-{i}"), "n": i})),
    )
    .await;
    eventually(
        Duration::from_secs(90),
        &format!("{events} events delivered"),
        || async { target.seen().iter().filter(|s| s.status == 200).count() == events },
    )
    .await;
    wait_idle(&js, &hms_sync::connector::consumer_name(&id), T).await;
    assert_eq!(
        too_many.load(SeqCst),
        0,
        "no 429: {:?}",
        target.seen().iter().map(|s| s.status).collect::<Vec<_>>()
    );
    assert_eq!(target.seen().len(), events, "one request per event");
    assert!(target.seen().iter().all(|s| s.method == Method::POST));
    let waits = metric(&rt, "sync_endpoint_budget_waits_total").await;
    assert!(waits >= 1.0, "the endpoint waited for resets: {waits}");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_target_announcing_5_per_2_s_in_ratelimit_headers_sees_no_429() {
    budget_is_honoured(Family::Ietf, 20).await;
}

#[tokio::test]
async fn a_target_announcing_its_reset_as_a_unix_time_sees_no_429() {
    budget_is_honoured(Family::XUnix, 10).await;
}
