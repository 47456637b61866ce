//! Contract tests of the example SaaS connectors against local fakes of ArcGIS, Google Calendar and Stripe (and their token endpoints), built from the vendors' documentation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::HeaderMap;
use hms_sync::sink::{Reply, Sink, SinkOptions};
use serde_json::{json, Value as Json};

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

/// One request a fake received.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Req {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
    fn form(&self) -> HashMap<String, String> {
        assert_eq!(
            self.header("content-type"),
            "application/x-www-form-urlencoded",
            "{} {}",
            self.method,
            self.path
        );
        form_urlencoded::parse(&self.body).into_owned().collect()
    }
    fn bearer(&self, header: &str) -> String {
        self.header(header)
            .strip_prefix("Bearer ")
            .unwrap_or_default()
            .to_string()
    }
}

type Handler = Arc<dyn Fn(&Req) -> (u16, Vec<(&'static str, String)>, Json) + Send + Sync>;

impl From<&Recorded> for Req {
    fn from(r: &Recorded) -> Req {
        let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
        Req {
            method: r.method.clone(),
            path: path.to_string(),
            query: form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
            headers: r.headers.clone(),
            body: r.body.clone(),
        }
    }
}

/// A loopback fake (the library's sink, keeping every request): every request goes to
/// `handler`, which answers with a JSON body.
struct Fake {
    url: String,
    sink: Sink,
}

impl Fake {
    async fn start(handler: Handler) -> Fake {
        let sink = Sink::start(SinkOptions {
            keep_requests: true,
            ..Default::default()
        })
        .await
        .unwrap();
        sink.reply_with(move |r, _| {
            let (status, extra, body) = handler(&Req::from(r));
            let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
            headers.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
            Reply {
                status,
                headers,
                body: body.to_string().into(),
            }
        });
        Fake {
            url: sink.url(),
            sink,
        }
    }

    fn requests(&self, path_contains: &str) -> Vec<Req> {
        self.sink
            .requests()
            .iter()
            .map(Req::from)
            .filter(|r| r.path.contains(path_contains))
            .collect()
    }
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/connectors/{name}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace("backoffMs: 3000", "backoffMs: 100")
}

async fn parked(js: &async_nats::jetstream::Context) -> Vec<Json> {
    stream_messages(js, "HMS_SYNC_PARKED").await
}

async fn acked_all(js: &async_nats::jetstream::Context, consumer: &str) {
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    eventually(T, &format!("{consumer}: nothing pending"), || {
        let stream = stream.clone();
        async move {
            let i = stream.consumer_info(consumer).await.unwrap();
            i.num_ack_pending == 0 && i.num_pending == 0
        }
    })
    .await;
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Stripe: form-encoded invoice items with `metadata[feeId]`, bearer secret key, and the
/// documented idempotency behaviour (the first answer replayed for a repeated key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_invoice_items_are_created_once_per_fee() {
    init_logs();
    std::env::set_var("HMS_T_STRIPE_KEY", "sk_test_51hms");
    let nats = Nats::start().await;
    // Idempotency key -> the first answer; created items.
    let replays: Arc<Mutex<HashMap<String, (u16, Json)>>> = Arc::default();
    let items: Arc<Mutex<Vec<Json>>> = Arc::default();
    let lost_once: Arc<Mutex<bool>> = Arc::default();
    let (r2, i2, lost2) = (replays.clone(), items.clone(), lost_once.clone());
    let stripe = Fake::start(Arc::new(move |req: &Req| {
        let err = |status: u16, typ: &str, code: &str, msg: &str, param: &str| {
            (
                status,
                vec![],
                json!({"error": {"type": typ, "code": code, "message": msg, "param": param}}),
            )
        };
        if req.method != "POST" || req.path != "/v1/invoiceitems" {
            return err(404, "invalid_request_error", "", "Unrecognized request URL", "");
        }
        if req.bearer("authorization") != "sk_test_51hms" {
            return err(401, "invalid_request_error", "", "Invalid API Key provided", "");
        }
        let key = req.header("idempotency-key");
        if let Some((status, body)) = r2.lock().unwrap().get(&key).cloned() {
            return (status, vec![("idempotent-replayed", "true".into())], body);
        }
        let f = req.form();
        let answer = match (f.get("customer"), f.get("amount").map(|a| a.parse::<i64>())) {
            (None, _) => err(
                400,
                "invalid_request_error",
                "parameter_missing",
                "Missing required param: customer.",
                "customer",
            ),
            (_, Some(Err(_))) => err(
                400,
                "invalid_request_error",
                "parameter_invalid_integer",
                "Invalid integer",
                "amount",
            ),
            (Some(customer), Some(Ok(amount))) => {
                let mut items = i2.lock().unwrap();
                let item = json!({
                    "id": format!("ii_{}", items.len() + 1), "object": "invoiceitem",
                    "customer": customer, "amount": amount, "currency": f["currency"],
                    "description": f.get("description"),
                    "metadata": {"feeId": f.get("metadata[feeId]"), "permitId": f.get("metadata[permitId]")},
                });
                items.push(item.clone());
                (200, vec![], item)
            }
            _ => err(400, "invalid_request_error", "parameter_missing", "Missing amount", "amount"),
        };
        r2.lock()
            .unwrap()
            .insert(key, (answer.0, answer.2.clone()));
        // The first success is lost on its way back (a proxy answers 502): the retry must
        // carry the same key and get the replayed answer, not a second item.
        let mut lost = lost2.lock().unwrap();
        if answer.0 == 200 && !*lost {
            *lost = true;
            return (502, vec![], json!({"error": {"message": "bad gateway"}}));
        }
        answer
    }))
    .await;
    let yaml = example("stripe-lane-fee.outbound.yaml")
        .replace("https://api.stripe.com", &stripe.url)
        .replace("${STRIPE_SECRET_KEY}", "${HMS_T_STRIPE_KEY}");
    let (_setup, rt, js) = start_with(&nats, &[("stripe.yaml", yaml)], "").await;
    let fee = |id: &str, customer: Option<&str>| {
        let mut v = json!({"feeId": id, "permitId": "RW-481", "kind": "special-lane",
            "amountCents": 25000, "currency": "usd"});
        if let Some(c) = customer {
            v["stripeCustomerId"] = json!(c);
        }
        v
    };
    publish(&js, "fee.created", fee("FEE-1", Some("cus_A"))).await;
    publish(&js, "fee.created", fee("FEE-2", Some("cus_B"))).await;
    publish(&js, "fee.created", fee("FEE-3", None)).await;
    publish(
        &js,
        "fee.created",
        json!({"feeId": "FEE-4", "kind": "permit"}),
    )
    .await;
    acked_all(&js, "ddot_stripe_lanefee_v1").await;

    let items = items.lock().unwrap().clone();
    assert_eq!(items.len(), 2, "one item per fee: {items:#?}");
    let mut fees: Vec<_> = items
        .iter()
        .map(|i| i["metadata"]["feeId"].as_str().unwrap().to_string())
        .collect();
    fees.sort();
    assert_eq!(fees, ["FEE-1", "FEE-2"]);
    assert_eq!(items[0]["amount"], 25000);
    let reqs = stripe.requests("/v1/invoiceitems");
    assert_eq!(
        reqs.len(),
        4,
        "two fees, one retried after the lost answer, one refused"
    );
    let keys: Vec<String> = reqs.iter().map(|r| r.header("idempotency-key")).collect();
    assert!(keys.iter().all(|k| k.len() == 32), "{keys:?}");
    assert_eq!(
        keys.iter().collect::<std::collections::HashSet<_>>().len(),
        3,
        "the retry reused its key: {keys:?}"
    );
    let parked = parked(&js).await;
    assert_eq!(parked.len(), 1, "{parked:#?}");
    assert!(parked[0]["event"]["payload"]
        .as_str()
        .unwrap()
        .contains("FEE-3"));
    assert_eq!(parked[0]["attempts"][0]["status"], 400);
    assert!(
        parked[0]["attempts"][0]["body"]
            .as_str()
            .unwrap()
            .contains("parameter_missing"),
        "{parked:#?}"
    );
    let text = serde_json::to_string(&parked).unwrap();
    assert!(!text.contains("sk_test_51hms"));
    rt.shutdown().await;
}

/// Google: the JWT assertion is verified with the service account's public key; a token
/// with a short `expires_in` is refreshed before it expires; events.patch moves the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_calendar_events_are_patched_with_service_account_tokens() {
    init_logs();
    let nats = Nats::start().await;
    let public = include_str!("../fixtures/test-service-account.pub.pem");
    // token -> expiry
    let tokens: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let events: Arc<Mutex<HashMap<String, Json>>> = Arc::default();
    events.lock().unwrap().insert(
        "crew-7@ddot.example.gov/evt1".into(),
        json!({"summary": "Crew 7"}),
    );
    let token_url: Arc<Mutex<String>> = Arc::default();
    let (tk, ev, tu) = (tokens.clone(), events.clone(), token_url.clone());
    let google = Fake::start(Arc::new(move |req: &Req| {
        let gerr = |code: u16, status: &str, msg: &str| {
            (
                code,
                vec![],
                json!({"error": {"code": code, "message": msg, "status": status,
                    "errors": [{"message": msg, "domain": "global", "reason": status}]}}),
            )
        };
        if req.path == "/token" {
            let f = req.form();
            if f.get("grant_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
            {
                return (400, vec![], json!({"error": "unsupported_grant_type"}));
            }
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            v.set_audience(&[tu.lock().unwrap().clone()]);
            v.set_issuer(&["hms-sync@ddot-test.iam.gserviceaccount.com"]);
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
            let Ok(claims) = jsonwebtoken::decode::<Json>(&f["assertion"], &key, &v) else {
                return (
                    400,
                    vec![],
                    json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
                );
            };
            let c = claims.claims;
            assert_eq!(c["scope"], "https://www.googleapis.com/auth/calendar.events");
            assert!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap() <= 3600);
            assert_eq!(claims.header.kid.as_deref(), Some("test-key-1"));
            let mut t = tk.lock().unwrap();
            let token = format!("ya29.test-{}", t.len() + 1);
            t.insert(token.clone(), Instant::now() + Duration::from_secs(3));
            return (
                200,
                vec![],
                json!({"access_token": token, "expires_in": 3, "token_type": "Bearer"}),
            );
        }
        let Some(rest) = req.path.strip_prefix("/calendar/v3/calendars/") else {
            return gerr(404, "notFound", "Not Found");
        };
        let valid = tk
            .lock()
            .unwrap()
            .get(&req.bearer("authorization"))
            .is_some_and(|exp| Instant::now() < *exp);
        if !valid {
            return gerr(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.");
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let [cal, "events", id] = parts.as_slice() else {
            return gerr(404, "notFound", "Not Found");
        };
        assert_eq!(req.method, "PATCH");
        assert_eq!(req.query.get("sendUpdates").map(String::as_str), Some("all"));
        let cal = percent_decode(cal);
        let mut events = ev.lock().unwrap();
        let Some(e) = events.get_mut(&format!("{cal}/{id}")) else {
            return gerr(404, "notFound", "Not Found");
        };
        let patch: Json = serde_json::from_slice(&req.body).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            e[k] = v.clone();
        }
        (200, vec![], e.clone())
    }))
    .await;
    *token_url.lock().unwrap() = format!("{}/token", google.url);
    let key = json!({
        "type": "service_account", "project_id": "ddot-test",
        "private_key_id": "test-key-1",
        "private_key": include_str!("../fixtures/test-service-account.key.pem"),
        "client_email": "hms-sync@ddot-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": format!("{}/token", google.url),
    });
    std::env::set_var("HMS_T_GOOGLE_KEY", key.to_string());
    let yaml = example("google-calendar-crew.outbound.yaml")
        .replace(
            "https://www.googleapis.com/calendar",
            &format!("{}/calendar", google.url),
        )
        .replace("${GOOGLE_SERVICE_ACCOUNT_KEY}", "${HMS_T_GOOGLE_KEY}");
    let (_setup, rt, js) = start_with(&nats, &[("gcal.yaml", yaml)], "").await;
    let event = |start: &str| {
        json!({"permitId": "RW-481", "agency": "DDOT",
            "startDateTime": start, "endDateTime": "2024-05-24T17:00:00-04:00",
            "crew": {"calendarId": "crew-7@ddot.example.gov", "eventId": "evt1"}})
    };
    publish(
        &js,
        "permit.schedule.changed",
        event("2024-05-10T07:00:00-04:00"),
    )
    .await;
    eventually(T, "first patch", || async {
        google.requests("/calendar/").len() == 1
    })
    .await;
    // Past 80 % of the token's 3 s life, still before its end: the next request still works
    // with it, and a new token is fetched meanwhile; the one after uses the new token.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    publish(
        &js,
        "permit.schedule.changed",
        event("2024-05-10T08:00:00-04:00"),
    )
    .await;
    eventually(T, "refreshed before expiry", || async {
        google.requests("/token").len() == 2
    })
    .await;
    // The refresh was asked for; its answer reaches the token actor a moment later: the next
    // request carries the new token once it is there (one more event per check until then).
    eventually(T, "a request with the refreshed token", || async {
        let calls = google.requests("/calendar/");
        let newest = calls.last().map(|r| r.header("authorization"));
        if newest.as_deref() == Some("Bearer ya29.test-2") {
            return true;
        }
        publish(
            &js,
            "permit.schedule.changed",
            event("2024-05-11T07:00:00-04:00"),
        )
        .await;
        false
    })
    .await;
    acked_all(&js, "ddot_gcal_crew_v1").await;
    let calls = google.requests("/calendar/");
    assert!(calls.len() >= 3, "{} calls", calls.len());
    assert!(calls
        .iter()
        .all(|r| r.header("content-type") == "application/json"));
    assert_eq!(
        google.requests("/token").len(),
        2,
        "fetched once, refreshed once"
    );
    assert_eq!(calls[0].header("authorization"), "Bearer ya29.test-1");
    assert_eq!(
        calls[1].header("authorization"),
        "Bearer ya29.test-1",
        "the old token still worked"
    );
    let e = events.lock().unwrap()["crew-7@ddot.example.gov/evt1"].clone();
    assert_eq!(e["start"]["dateTime"], "2024-05-11T07:00:00-04:00");
    assert_eq!(e["start"]["timeZone"], "America/New_York");
    assert_eq!(e["summary"], "Crew 7", "patch keeps what it does not send");
    assert!(parked(&js).await.is_empty());
    rt.shutdown().await;
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// ArcGIS: generateToken, the OBJECTID lookup, form-encoded applyEdits, 200 answers carrying
/// `error` or per-feature `success:false`, and a token revoked in the middle of a flood
/// (answered with error 498): exactly one refresh, nothing lost or parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arcgis_features_are_updated_through_lookup_and_apply_edits() {
    init_logs();
    std::env::set_var("HMS_T_ARC_USER", "ddot_sync");
    std::env::set_var("HMS_T_ARC_PASS", "p@ss w0rd&");
    let nats = Nats::start().await;
    const FLOOD: usize = 40;
    const REVOKE_AFTER: usize = 15;
    // OBJECTID by permit id; attributes by OBJECTID.
    let layer: Arc<Mutex<HashMap<i64, Json>>> = Arc::default();
    let mut by_permit = HashMap::new();
    for i in 0..FLOOD as i64 {
        by_permit.insert(format!("RW-{i}"), 1000 + i);
        layer
            .lock()
            .unwrap()
            .insert(1000 + i, json!({"OBJECTID": 1000 + i}));
    }
    by_permit.insert("RW-BAD".into(), 999);
    layer.lock().unwrap().insert(999, json!({"OBJECTID": 999}));
    let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
    let revoked: Arc<Mutex<bool>> = Arc::default();
    let edits: Arc<Mutex<usize>> = Arc::default();
    let (l2, t2, rv2, e2) = (
        layer.clone(),
        tokens.clone(),
        revoked.clone(),
        edits.clone(),
    );
    let arcgis = Fake::start(Arc::new(move |req: &Req| {
        let error = |code: i64, msg: &str| {
            (
                200,
                vec![],
                json!({"error": {"code": code, "message": msg, "details": []}}),
            )
        };
        if req.path == "/sharing/rest/generateToken" {
            let f = req.form();
            assert_eq!(f["f"], "json");
            assert_eq!(f["client"], "referer");
            assert_eq!(f["referer"], "https://hms.ddot.example.gov");
            assert_eq!(f["expiration"], "120");
            if f["username"] != "ddot_sync" || f["password"] != "p@ss w0rd&" {
                return (
                    200,
                    vec![],
                    json!({"error": {"code": 400,
                    "message": "Unable to generate token.",
                    "details": ["Invalid username or password."]}}),
                );
            }
            let mut t = t2.lock().unwrap();
            let token = format!("arc-token-{}", t.len() + 1);
            t.push(token.clone());
            return (
                200,
                vec![],
                json!({"token": token,
                "expires": now_ms() + 120 * 60_000, "ssl": true}),
            );
        }
        // Every service request: a token that is current, from the referer it was made for.
        let token = req.bearer("x-esri-authorization");
        let current = t2.lock().unwrap().last().cloned();
        if token.is_empty() {
            return error(499, "Token Required");
        }
        if req.header("referer") != "https://hms.ddot.example.gov"
            || Some(&token) != current.as_ref()
            || (*rv2.lock().unwrap() && token == "arc-token-1")
        {
            return error(498, "Invalid token.");
        }
        let base = "/ORG_ID/arcgis/rest/services/RoadWork/FeatureServer/0/";
        if req.path == format!("{base}query") {
            assert_eq!(req.method, "GET");
            assert_eq!(req.query["f"], "json");
            let w = &req.query["where"];
            let permit = w
                .strip_prefix("PERMIT_ID = '")
                .and_then(|s| s.strip_suffix('\''))
                .unwrap_or_default();
            let features: Vec<Json> = by_permit
                .get(permit)
                .map(|oid| json!({"attributes": {"OBJECTID": oid}}))
                .into_iter()
                .collect();
            return (
                200,
                vec![],
                json!({"objectIdFieldName": "OBJECTID", "features": features}),
            );
        }
        if req.path == format!("{base}applyEdits") {
            let f = req.form();
            assert_eq!(f["f"], "json");
            let updates: Json = serde_json::from_str(&f["updates"]).unwrap();
            if updates[0]["attributes"]["STATUS"] == "ERROR" {
                return error(400, "Unable to complete operation.");
            }
            {
                let mut n = e2.lock().unwrap();
                *n += 1;
                if *n == REVOKE_AFTER {
                    *rv2.lock().unwrap() = true;
                }
            }
            let mut layer = l2.lock().unwrap();
            let results: Vec<Json> = updates
                .as_array()
                .unwrap()
                .iter()
                .map(|u| {
                    let a = &u["attributes"];
                    let oid = a["OBJECTID"].as_i64().unwrap_or(-1);
                    if a["STATUS"] == "BOGUS" {
                        return json!({"objectId": oid, "success": false,
                            "error": {"code": 1000, "description": "Invalid value for STATUS"}});
                    }
                    match layer.get_mut(&oid) {
                        Some(f) => {
                            for (k, v) in a.as_object().unwrap() {
                                f[k] = v.clone();
                            }
                            json!({"objectId": oid, "success": true})
                        }
                        None => json!({"objectId": oid, "success": false,
                            "error": {"code": 1019, "description": "Feature not found"}}),
                    }
                })
                .collect();
            return (
                200,
                vec![],
                json!({"addResults": [], "updateResults": results, "deleteResults": []}),
            );
        }
        error(400, "Invalid URL")
    }))
    .await;
    let yaml = example("arcgis-roadwork.outbound.yaml")
        .replace("https://www.arcgis.com", &arcgis.url)
        .replace("https://services.arcgis.com", &arcgis.url)
        .replace("${ARCGIS_USERNAME}", "${HMS_T_ARC_USER}")
        .replace("${ARCGIS_PASSWORD}", "${HMS_T_ARC_PASS}");
    let (_setup, rt, js) = start_with(&nats, &[("arcgis.yaml", yaml)], "").await;
    for i in 0..FLOOD {
        publish(
            &js,
            "permit.schedule.changed",
            json!({"permitId": format!("RW-{i}"),
            "agency": "DDOT", "startDate": "2024-05-10", "endDate": "2024-05-24",
            "status": "APPROVED"}),
        )
        .await;
    }
    acked_all(&js, "ddot_arcgis_roadwork_v1").await;
    assert!(*revoked.lock().unwrap());
    assert_eq!(
        tokens.lock().unwrap().len(),
        2,
        "one token, then exactly one refresh after the revocation"
    );
    let parked_now = parked(&js).await;
    assert!(parked_now.is_empty(), "{parked_now:#?}");
    for i in 0..FLOOD as i64 {
        let f = layer.lock().unwrap()[&(1000 + i)].clone();
        assert_eq!(f["STATUS"], "APPROVED", "{f}");
        assert_eq!(f["START_DATE"], "2024-05-10");
    }

    // 200 answers that are failures: an unknown permit (no feature), a per-feature failure.
    publish(
        &js,
        "permit.schedule.changed",
        json!({"permitId": "RW-NONE", "agency": "DDOT",
        "status": "APPROVED"}),
    )
    .await;
    publish(
        &js,
        "permit.schedule.changed",
        json!({"permitId": "RW-BAD", "agency": "DDOT",
        "status": "BOGUS"}),
    )
    .await;
    publish(
        &js,
        "permit.schedule.changed",
        json!({"permitId": "RW-BAD", "agency": "DDOT",
        "status": "ERROR"}),
    )
    .await;
    eventually(T, "three parked", || async { parked(&js).await.len() == 3 }).await;
    let p = parked(&js).await;
    let text = serde_json::to_string(&p).unwrap();
    assert!(text.contains("lookup"), "{text}");
    assert!(text.contains("size(body.features) == 1"), "{text}");
    assert!(text.contains("Invalid value for STATUS"), "{text}");
    assert!(text.contains("Unable to complete operation."), "{text}");
    assert!(!text.contains("arc-token-"), "no token in parked jobs");
    assert!(!text.contains("p@ss"), "no password in parked jobs");
    rt.shutdown().await;
}

/// With their secrets unset, the examples still load and `up` starts; their events are parked
/// with a reason that names the missing variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_without_secrets_start_and_park_with_a_clear_reason() {
    init_logs();
    let nats = Nats::start().await;
    let nowhere = "http://127.0.0.1:9";
    let conns: Vec<(&str, String)> = vec![
        (
            "a.yaml",
            example("arcgis-roadwork.outbound.yaml")
                .replace("https://www.arcgis.com", nowhere)
                .replace("https://services.arcgis.com", nowhere)
                .replace("${ARCGIS_USERNAME}", "${HMS_T_UNSET_ARC}")
                .replace("${ARCGIS_PASSWORD}", "${HMS_T_UNSET_ARC}"),
        ),
        (
            "g.yaml",
            example("google-calendar-crew.outbound.yaml")
                .replace("https://www.googleapis.com", nowhere)
                .replace("${GOOGLE_SERVICE_ACCOUNT_KEY}", "${HMS_T_UNSET_GOOGLE}"),
        ),
        (
            "s.yaml",
            example("stripe-lane-fee.outbound.yaml")
                .replace("https://api.stripe.com", nowhere)
                .replace("${STRIPE_SECRET_KEY}", "${HMS_T_UNSET_STRIPE}"),
        ),
    ];
    let (_setup, rt, js) = start_with(&nats, &conns, "").await;
    let sample = |f: &str| -> Json {
        serde_json::from_str(
            &std::fs::read_to_string(format!("{}/connectors/{f}", env!("CARGO_MANIFEST_DIR")))
                .unwrap(),
        )
        .unwrap()
    };
    publish(
        &js,
        "permit.schedule.changed",
        sample("sample_schedule_changed.json"),
    )
    .await;
    publish(&js, "fee.created", sample("sample_fee_created.json")).await;
    eventually(T, "three parked", || async { parked(&js).await.len() == 3 }).await;
    let text = serde_json::to_string(&parked(&js).await).unwrap();
    for var in [
        "HMS_T_UNSET_ARC",
        "HMS_T_UNSET_GOOGLE",
        "HMS_T_UNSET_STRIPE",
    ] {
        assert!(
            text.contains(&format!("`{var}` is not set")),
            "{var}: {text}"
        );
    }
    rt.shutdown().await;
}

/// OAuth2 client credentials: one token shared by two connectors with the same credentials
/// (client authenticated with HTTP Basic), and a 401 after a revocation in the middle of a
/// flood: exactly one refresh, every event delivered once, nothing parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_shared_and_refreshed_once_after_a_401() {
    init_logs();
    std::env::set_var("HMS_T_OAUTH_SECRET", "s3cr&t");
    let nats = Nats::start().await;
    let issued: Arc<Mutex<Vec<String>>> = Arc::default();
    let served: Arc<Mutex<Vec<String>>> = Arc::default();
    let (is2, sv2) = (issued.clone(), served.clone());
    let fake = Fake::start(Arc::new(move |req: &Req| {
        if req.path == "/oauth/token" {
            use base64::Engine as _;
            let want = base64::engine::general_purpose::STANDARD.encode("hms-sync:s3cr%26t");
            if req.header("authorization") != format!("Basic {want}") {
                return (401, vec![], json!({"error": "invalid_client"}));
            }
            let f = req.form();
            assert_eq!(f["grant_type"], "client_credentials");
            assert_eq!(f["scope"], "permits.read permits.write");
            let mut t = is2.lock().unwrap();
            let token = format!("tok-{}", t.len() + 1);
            t.push(token.clone());
            return (
                200,
                vec![],
                json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
            );
        }
        let token = req.bearer("authorization");
        let mut served = sv2.lock().unwrap();
        let current = is2.lock().unwrap().last().cloned();
        // The first token is revoked after 8 accepted requests.
        if Some(&token) != current.as_ref() || (token == "tok-1" && served.len() >= 8) {
            return (
                401,
                vec![("www-authenticate", "Bearer error=\"invalid_token\"".into())],
                json!({"error": "invalid_token"}),
            );
        }
        served.push(req.header("idempotency-key"));
        (200, vec![], json!({"ok": true}))
    }))
    .await;
    let connector = |id: &str, topic: &str| {
        format!(
            "id: {id}\ntype: outbound\ntrigger: {{ topic: {topic} }}\nauth:\n  type: oauth2-client-credentials\n  tokenUrl: {url}/oauth/token\n  clientId: hms-sync\n  clientSecret: ${{HMS_T_OAUTH_SECRET}}\n  scopes: [permits.read, permits.write]\nmap:\n  to:\n    url: \"{url}/api/{{id}}\"\n    method: PUT\n    body: {{ n: \"{{{{ n }}}}\" }}\nretry: {{ max: 3, backoffMs: 100 }}\n",
            url = fake.url
        )
    };
    let (_setup, rt, js) = start_with(
        &nats,
        &[
            ("a.yaml", connector("oauth.a", "oauth.a")),
            ("b.yaml", connector("oauth.b", "oauth.b")),
        ],
        "",
    )
    .await;
    for i in 0..15 {
        publish(&js, "oauth.a", json!({"id": format!("a{i}"), "n": i})).await;
        publish(&js, "oauth.b", json!({"id": format!("b{i}"), "n": i})).await;
    }
    acked_all(&js, "oauth_a").await;
    acked_all(&js, "oauth_b").await;
    assert_eq!(*issued.lock().unwrap(), ["tok-1", "tok-2"]);
    let served = served.lock().unwrap().clone();
    assert_eq!(served.len(), 30, "every event delivered once");
    assert_eq!(
        served
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        30
    );
    assert!(parked(&js).await.is_empty());
    rt.shutdown().await;
}
