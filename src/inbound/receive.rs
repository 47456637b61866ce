//! The HTTP edge of inbound webhooks: one request -> checks -> JetStream publish (ack awaited) -> answer.
//!
//! Order of checks, each with its answer: unknown path 404, not POST 405, content type not
//! JSON 415, body over the limit 413 (slow body 408), signature 401, not JSON 400, mapping
//! 422, NATS unavailable 503; 200 only after JetStream acknowledged the event (a duplicate
//! within the stream's duplicate window is answered 200 too and stored once). A CloudEvents
//! connector (`source.format: cloudevents`) takes any content type in binary mode, answers
//! 415 to a request that is no CloudEvent and 400 to an invalid one, stores every entry of a
//! batch before its 200, and answers the validation handshake (`OPTIONS`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use super::mapping::{self, MapError};
use super::table::Webhooks;
use crate::bus::Bus;
use crate::cloudevents::{CeError, Mode};
use crate::connector::{InboundConnector, InboundFormat};
use crate::metrics::{WEBHOOK_RECEIVED_TOTAL, WEBHOOK_REJECTED_TOTAL};
use crate::services::Auditor;
use crate::signature::{self, SignatureError};
use crate::template::Secrets;

/// How long a sender may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long we wait for JetStream's ack before answering 503.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Receiver {
    webhooks: Webhooks,
    bus: Bus,
    audit: Option<Auditor>,
}

/// Routes of inbound webhooks: every path not served by the status routes is looked up in
/// `webhooks` (so connectors can come and go without rebuilding the router), plus
/// `GET /api/webhooks` (JSON list). Merge into the server's router.
pub fn router(webhooks: Webhooks, bus: Bus, audit: Option<Auditor>) -> Router {
    let (hooks, api) = routers(webhooks, bus, audit);
    hooks.merge(api)
}

/// The same routes in two routers: the webhook paths (the fallback, for the public listener)
/// and `GET /api/webhooks` (for the admin listener).
pub fn routers(webhooks: Webhooks, bus: Bus, audit: Option<Auditor>) -> (Router, Router) {
    let state = Receiver {
        webhooks,
        bus,
        audit,
    };
    (
        Router::new().fallback(receive).with_state(state.clone()),
        Router::new()
            .route("/api/webhooks", get(list))
            .with_state(state),
    )
}

/// Why a webhook was not accepted; each maps to one status code and one metric reason.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("method {0} not allowed: webhooks are POSTed")]
    Method(Method),
    #[error("content type `{0}`: expected JSON (application/json)")]
    ContentType(String),
    #[error("body over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("body not received within {0:?}")]
    SlowBody(Duration),
    #[error("body could not be read: {0}")]
    BodyRead(String),
    #[error("signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("{0}")]
    CloudEvent(#[from] CeError),
    #[error("origin `{0}` is not among the allowed origins (source.allowedOrigins)")]
    Origin(String),
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Mapping(#[from] MapError),
    #[error("event could not be stored: {0}")]
    Unavailable(String),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::BodyRead(_) | Rejection::Json(_) => StatusCode::BAD_REQUEST,
            Rejection::Signature(_) => StatusCode::UNAUTHORIZED,
            Rejection::CloudEvent(CeError::NotCloudEvent) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::CloudEvent(_) => StatusCode::BAD_REQUEST,
            Rejection::Origin(_) => StatusCode::FORBIDDEN,
            Rejection::Mapping(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` label of `webhook_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Method(_) => "method",
            Rejection::ContentType(_) => "content_type",
            Rejection::TooLarge(_) => "too_large",
            Rejection::SlowBody(_) => "slow_body",
            Rejection::BodyRead(_) => "body_read",
            Rejection::Signature(e) => e.reason(),
            Rejection::CloudEvent(CeError::NotCloudEvent) => "content_type",
            Rejection::CloudEvent(_) => "malformed_cloudevent",
            Rejection::Origin(_) => "origin",
            Rejection::Json(_) => "malformed_json",
            Rejection::Mapping(_) => "mapping",
            Rejection::Unavailable(_) => "unavailable",
        }
    }
}

/// What an accepted webhook leaves behind on the audit trail (`HMS_AUDIT`, chain of the
/// connector's consumer name). Holds no secret and no body.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookRecord {
    pub connector: String,
    pub path: String,
    pub subject: String,
    pub msg_id: Option<String>,
    pub stream: String,
    pub sequence: u64,
    pub duplicate: bool,
    pub received_at: String,
}

/// The console line, and the audit record (never waited for).
fn record(r: &WebhookRecord, audit: Option<&Auditor>) {
    if let Some(a) = audit {
        let mut value = serde_json::to_value(r).unwrap_or_default();
        if let Some(o) = value.as_object_mut() {
            o.insert("kind".into(), json!("webhook"));
            o.insert("at".into(), json!(r.received_at));
        }
        let route = a.route(&crate::connector::consumer_name(&r.connector));
        a.record(&route, crate::audit::AuditRecord::Other(value));
    }
    let dup = if r.duplicate { ", duplicate" } else { "" };
    tracing::info!(
        "[{}] webhook POST {} -> {} 200 OK ({} #{}{dup})",
        r.connector,
        r.path,
        r.subject,
        r.stream,
        r.sequence
    );
}

async fn list(State(s): State<Receiver>) -> Json<serde_json::Value> {
    let all: Vec<_> = s
        .webhooks
        .list()
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "webhookUrl": c.webhook_url,
                "scheme": c.signature.scheme.name(),
                "format": match c.format {
                    InboundFormat::Json => "json",
                    InboundFormat::CloudEvents { .. } => "cloudevents",
                },
                "topic": c.publish.topic.source(),
                "maxBodyBytes": c.max_body_bytes,
                "origin": c.origin,
            })
        })
        .collect();
    Json(json!(all))
}

async fn receive(
    State(s): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(c) = s.webhooks.get(uri.path()) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("nothing is served at {}", uri.path()) })),
        )
            .into_response();
    };
    let received_at = crate::clock::now_rfc3339();
    let handshake = match (&method, &c.format) {
        (&Method::OPTIONS, InboundFormat::CloudEvents { .. }) => Some(validation(&c, &headers)),
        _ => None,
    };
    let outcome = match handshake {
        Some(Ok(resp)) => return resp,
        Some(Err(rej)) => Err(rej),
        None => accept(&s.bus, s.audit.as_ref(), &c, &method, &headers, body).await,
    };
    match outcome {
        Ok(accepted) => {
            metrics::counter!(WEBHOOK_RECEIVED_TOTAL, "connector" => c.id.clone()).increment(1);
            let mut duplicates = 0;
            for (event, ack) in &accepted.events {
                let rec = WebhookRecord {
                    connector: c.id.clone(),
                    path: c.webhook_url.clone(),
                    subject: event.subject.clone(),
                    msg_id: event.msg_id.clone(),
                    stream: ack.stream.clone(),
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                    received_at: received_at.clone(),
                };
                duplicates += usize::from(ack.duplicate);
                record(&rec, s.audit.as_ref());
            }
            let answer = if accepted.batch {
                json!({ "accepted": true, "events": accepted.events.len(), "duplicates": duplicates })
            } else {
                json!({ "accepted": true, "duplicate": duplicates > 0 })
            };
            (StatusCode::OK, Json(answer)).into_response()
        }
        Err(rej) => {
            let reason = rej.reason();
            metrics::counter!(WEBHOOK_REJECTED_TOTAL, "connector" => c.id.clone(), "reason" => reason)
                .increment(1);
            let status = rej.status();
            tracing::warn!(
                "[{}] webhook {method} {} {} ({reason}): {rej}",
                c.id,
                c.webhook_url,
                status.as_u16()
            );
            let mut resp = (status, Json(json!({ "error": rej.to_string() }))).into_response();
            if matches!(rej, Rejection::Unavailable(_)) {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            }
            resp
        }
    }
}

/// What an accepted webhook became: its events with JetStream's acks (one, or a CloudEvents
/// batch's entries).
struct Accepted {
    events: Vec<(mapping::Event, crate::bus::Stored)>,
    batch: bool,
}

/// The CloudEvents validation handshake (`OPTIONS` with `WebHook-Request-Origin`): grants the
/// origin when `source.allowedOrigins` lists it (or is not set), with `WebHook-Allowed-Rate`.
fn validation(c: &InboundConnector, headers: &HeaderMap) -> Result<Response, Rejection> {
    let InboundFormat::CloudEvents {
        allowed_origins,
        allowed_rate,
    } = &c.format
    else {
        return Err(Rejection::Method(Method::OPTIONS));
    };
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ALLOW,
        header::HeaderValue::from_static("POST, OPTIONS"),
    );
    let Some(origin) = headers.get("webhook-request-origin").cloned() else {
        return Ok(resp);
    };
    // Visible ASCII only (a header value); kept to a host name's length for logs and answers.
    let text: String = origin
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .chars()
        .take(253)
        .collect();
    let granted = allowed_origins
        .as_ref()
        .is_none_or(|list| list.iter().any(|o| o == "*" || *o == text));
    if !granted || text.is_empty() {
        return Err(Rejection::Origin(text));
    }
    let requested = headers
        .get("webhook-request-rate")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|r| *r > 0);
    let rate = match (allowed_rate, requested) {
        (Some(a), Some(r)) => (*a).min(r).to_string(),
        (Some(a), None) => a.to_string(),
        (None, _) => "*".to_string(),
    };
    h.insert("webhook-allowed-origin", origin);
    if let Ok(v) = header::HeaderValue::from_str(&rate) {
        h.insert("webhook-allowed-rate", v);
    }
    tracing::info!(
        "[{}] CloudEvents handshake: origin {text} granted at {rate} requests per minute",
        c.id
    );
    Ok(resp)
}

/// Every check of one webhook, then the publish of its event (or of every event of a
/// CloudEvents batch, each awaited). Returns the events and JetStream's acks.
async fn accept(
    bus: &Bus,
    audit: Option<&Auditor>,
    c: &InboundConnector,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, Rejection> {
    if method != Method::POST {
        return Err(Rejection::Method(method.clone()));
    }
    let cloudevents = matches!(c.format, InboundFormat::CloudEvents { .. });
    // A CloudEvent in binary mode carries data of any type.
    if !cloudevents {
        check_content_type(headers)?;
    }
    let raw = read_body(headers, body, c.max_body_bytes).await?;
    let secrets = resolve_secrets(c);
    let keys: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
    signature::verify(
        &c.signature.scheme,
        c.signature.tolerance_sec,
        headers,
        &raw,
        &keys,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    )?;
    drop(secrets);
    let (events, batch) = if cloudevents {
        let (mode, parsed) = crate::cloudevents::parse(headers, &raw)?;
        let events = parsed
            .iter()
            .map(|e| mapping::cloud_event(c, headers, e))
            .collect::<Result<Vec<_>, _>>()?;
        (events, mode == Mode::Batch)
    } else {
        let json: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| Rejection::Json(e.to_string()))?;
        (vec![mapping::event(c, headers, &raw, &json)?], false)
    };
    if !bus.is_connected() {
        return Err(Rejection::Unavailable("NATS is not connected".into()));
    }
    if audit.is_some_and(Auditor::holds_back) {
        return Err(Rejection::Unavailable(
            "the audit trail (HMS_AUDIT) refuses records".into(),
        ));
    }
    let publish_all = async {
        let mut stored = Vec::with_capacity(events.len());
        for event in events {
            let ack = bus
                .publish_stored(&event.subject, &event.headers, event.body.clone())
                .await
                .map_err(|e| Rejection::Unavailable(e.to_string()))?;
            stored.push((event, ack));
        }
        Ok::<_, Rejection>(stored)
    };
    let events = tokio::time::timeout(PUBLISH_TIMEOUT, publish_all)
        .await
        .map_err(|_| {
            Rejection::Unavailable(format!("no JetStream ack within {PUBLISH_TIMEOUT:?}"))
        })??;
    Ok(Accepted { events, batch })
}

/// The configured secrets that are set in the environment now (unset ones are skipped; with
/// none the webhook gets 401 `no_secret`). Never logged.
fn resolve_secrets(c: &InboundConnector) -> Vec<String> {
    c.signature
        .secrets
        .iter()
        .filter_map(
            |t| match t.render_text(&serde_json::Value::Null, Secrets::Env) {
                Ok(s) if !s.is_empty() => Some(s),
                _ => {
                    tracing::debug!("[{}] secret {} is not set", c.id, t.source());
                    None
                }
            },
        )
        .collect()
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(Rejection::ContentType(if value.is_empty() {
            "(none)".into()
        } else {
            value
        }))
    }
}

/// Reads the exact bytes of the body, at most `limit` of them.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Rejection> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > limit as u64) {
        drain(&mut stream).await;
        return Err(Rejection::TooLarge(limit));
    }
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Rejection::BodyRead(e.to_string()))?;
            if buf.len() + chunk.len() > limit {
                drain(&mut stream).await;
                return Err(Rejection::TooLarge(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| Rejection::SlowBody(BODY_TIMEOUT))?
}

/// Most of a refused body read (and dropped) before answering, and for how long.
const DRAIN_MAX: usize = 8 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads and drops what is left of a refused body (bounded), so that a sender still writing it
/// reads our 413 instead of a connection closed under it.
async fn drain(stream: &mut axum::body::BodyDataStream) {
    let rest = async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DRAIN_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, rest).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let cases = [
            (Some("application/json"), true),
            (Some("application/json; charset=utf-8"), true),
            (Some("Application/JSON"), true),
            (Some("application/cloudevents+json"), true),
            (Some("application/x-www-form-urlencoded"), false),
            (Some("text/plain"), false),
            (None, false),
        ];
        for (ct, ok) in cases {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            }
            assert_eq!(check_content_type(&h).is_ok(), ok, "{ct:?}");
        }
    }

    #[test]
    fn every_rejection_has_its_status() {
        let cases: Vec<(Rejection, u16, &str)> = vec![
            (Rejection::Method(Method::GET), 405, "method"),
            (
                Rejection::ContentType("text/plain".into()),
                415,
                "content_type",
            ),
            (Rejection::TooLarge(1), 413, "too_large"),
            (
                Rejection::Signature(SignatureError::Mismatch),
                401,
                "bad_signature",
            ),
            (
                Rejection::Signature(SignatureError::Stale(400)),
                401,
                "timestamp",
            ),
            (
                Rejection::Signature(SignatureError::Missing("x".into())),
                401,
                "missing_signature",
            ),
            (
                Rejection::Signature(SignatureError::NoSecret),
                401,
                "no_secret",
            ),
            (Rejection::Json("eof".into()), 400, "malformed_json"),
            (Rejection::Mapping(MapError::BadId), 422, "mapping"),
            (Rejection::Unavailable("down".into()), 503, "unavailable"),
        ];
        for (r, status, reason) in cases {
            assert_eq!((r.status().as_u16(), r.reason()), (status, reason), "{r}");
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let h = HeaderMap::new();
        assert_eq!(
            read_body(&h, Body::from(vec![b'x'; 10]), 10).await.unwrap(),
            Bytes::from(vec![b'x'; 10])
        );
        assert!(matches!(
            read_body(&h, Body::from(vec![b'x'; 11]), 10).await,
            Err(Rejection::TooLarge(10))
        ));
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        assert!(matches!(
            read_body(&declared, Body::empty(), 10).await,
            Err(Rejection::TooLarge(10))
        ));
    }
}
