//! One verified webhook -> the event to publish (subject, `Nats-Msg-Id`, headers, body): pure.
//!
//! Same rendering rules as outbound bodies (`template.rs`): values are data, never syntax. A
//! rendered subject is checked token by token, so a webhook value cannot add a wildcard, an
//! empty token or a space; `${VAR}` is refused at load time in every `publish` template, so no
//! secret can reach the bus.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value as Json;

use crate::cloudevents::CloudEvent;
use crate::connector::rules::subject_problem;
use crate::connector::InboundConnector;
use crate::signature::Scheme;
use crate::template::{RenderError, Secrets};

/// Header naming the inbound connector that published an event.
pub const CONNECTOR_HEADER: &str = "Hms-Webhook-Connector";
/// Header with the webhook's event type (`X-GitHub-Event`, or the JSON `type` field).
pub const TYPE_HEADER: &str = "Hms-Webhook-Type";
/// JetStream's dedup header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Original headers kept, per scheme (sent under their original names).
fn kept_headers(scheme: &Scheme) -> &'static [&'static str] {
    match scheme {
        Scheme::Github => &["X-GitHub-Event", "X-GitHub-Delivery", "X-GitHub-Hook-ID"],
        Scheme::StandardWebhooks => &["webhook-id", "webhook-timestamp"],
        Scheme::Stripe | Scheme::HmacSha256(_) => &[],
    }
}

/// The event an accepted webhook becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub subject: String,
    /// Dedup key (`Nats-Msg-Id`), when one is known.
    pub msg_id: Option<String>,
    /// NATS headers, `Nats-Msg-Id` included.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Why a verified webhook could not be mapped into an event (answered 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("publish.topic: {0}")]
    Topic(RenderError),
    #[error("publish.topic renders to `{subject}`: {why}")]
    Subject { subject: String, why: &'static str },
    #[error("publish.idFrom: {0}")]
    Id(RenderError),
    #[error("the dedup id is empty, longer than 256 bytes, or has control characters")]
    BadId,
    #[error("publish.body: {0}")]
    Body(RenderError),
}

/// The subject an event of `json` is published on.
fn subject_of(c: &InboundConnector, json: &Json) -> Result<String, MapError> {
    // `publish` templates cannot name secrets (checked at load): Masked never shows up.
    let subject = c
        .publish
        .topic
        .render_text(json, Secrets::Masked)
        .map_err(MapError::Topic)?;
    if let Some(why) = subject_problem(&subject) {
        return Err(MapError::Subject { subject, why });
    }
    if subject
        .split('.')
        .any(|t| t == "*" || t == ">" || t.chars().any(char::is_control))
    {
        return Err(MapError::Subject {
            subject,
            why: "wildcards or control characters",
        });
    }
    Ok(subject)
}

fn check_id(id: &str) -> Result<(), MapError> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(MapError::BadId);
    }
    Ok(())
}

/// Maps one verified CloudEvent into its event: `publish` templates read the event as
/// [`CloudEvent::view`] shows it (`{{ type }}`, `{{ data.permitId }}`); the dedup id is
/// `idFrom`, else the event's `source` and `id` (which identify a CloudEvent together); the
/// attributes become `ce-*` headers and the data the body.
pub fn cloud_event(
    c: &InboundConnector,
    headers: &HeaderMap,
    e: &CloudEvent,
) -> Result<Event, MapError> {
    let view = e.view();
    let subject = subject_of(c, &view)?;
    let msg_id = match &c.publish.id_from {
        Some(t) => t
            .render_text(&view, Secrets::Masked)
            .map_err(MapError::Id)?,
        None => cloudevent_id(e),
    };
    check_id(&msg_id)?;
    let mut out = vec![
        (CONNECTOR_HEADER.to_string(), c.id.clone()),
        (MSG_ID_HEADER.to_string(), msg_id.clone()),
        (TYPE_HEADER.to_string(), e.event_type().to_string()),
    ];
    for name in kept_headers(&c.signature.scheme) {
        if let Some(v) = header(headers, name) {
            out.push((name.to_string(), v));
        }
    }
    let body = match &c.publish.body {
        None => {
            out.extend(e.headers());
            e.data.clone().unwrap_or_default()
        }
        Some(b) => {
            let v = b.render(&view, Secrets::Masked).map_err(MapError::Body)?;
            out.extend(e.headers().into_iter().filter(|(k, _)| k != "Content-Type"));
            out.push(("Content-Type".into(), "application/json".into()));
            Bytes::from(v.to_string())
        }
    };
    Ok(Event {
        subject,
        msg_id: Some(msg_id),
        headers: out,
        body,
    })
}

/// The default dedup id of a CloudEvent: `<source> <id>` (a space cannot occur in a URI
/// reference, so no two pairs give the same text), or its SHA-256 when that is over 256 bytes.
pub fn cloudevent_id(e: &CloudEvent) -> String {
    let id = format!("{} {}", e.source(), e.id());
    if id.len() <= 256 {
        return id;
    }
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(id.as_bytes()))
    )
}

/// Maps a verified webhook (`raw` bytes, parsed as `json`) into its event.
pub fn event(
    c: &InboundConnector,
    headers: &HeaderMap,
    raw: &Bytes,
    json: &Json,
) -> Result<Event, MapError> {
    let p = &c.publish;
    let subject = subject_of(c, json)?;
    let msg_id = match &p.id_from {
        Some(t) => Some(t.render_text(json, Secrets::Masked).map_err(MapError::Id)?),
        None => scheme_id(&c.signature.scheme, headers, json),
    };
    if let Some(id) = &msg_id {
        check_id(id)?;
    }
    let body = match &p.body {
        None => raw.clone(),
        Some(b) => {
            let v = b.render(json, Secrets::Masked).map_err(MapError::Body)?;
            Bytes::from(v.to_string())
        }
    };
    let mut out = vec![(CONNECTOR_HEADER.to_string(), c.id.clone())];
    if let Some(id) = &msg_id {
        out.push((MSG_ID_HEADER.to_string(), id.clone()));
    }
    let event_type = match &c.signature.scheme {
        Scheme::Github => header(headers, "x-github-event"),
        _ => json.get("type").and_then(Json::as_str).map(str::to_string),
    };
    if let Some(t) = event_type.filter(|t| !t.is_empty() && !t.chars().any(char::is_control)) {
        out.push((TYPE_HEADER.to_string(), t));
    }
    for name in kept_headers(&c.signature.scheme) {
        if let Some(v) = header(headers, name) {
            out.push((name.to_string(), v));
        }
    }
    Ok(Event {
        subject,
        msg_id,
        headers: out,
        body,
    })
}

/// Text form of an event, as `hms-sync test` prints it: `PUBLISH <subject>`, the NATS
/// headers, a blank line, the body.
pub fn to_text(c: &InboundConnector, e: &Event) -> String {
    let mut out = format!("PUBLISH {}\n", e.subject);
    for (k, v) in &e.headers {
        out.push_str(&format!("{k}: {v}\n"));
    }
    if e.msg_id.is_none() {
        if let Some(h) = scheme_id_header(&c.signature.scheme) {
            out.push_str(&format!(
                "{MSG_ID_HEADER}: <from the {h} header at receipt>\n"
            ));
        }
    }
    out.push('\n');
    out.push_str(&String::from_utf8_lossy(&e.body));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The header a scheme's own delivery id comes from, if it comes from a header.
pub fn scheme_id_header(scheme: &Scheme) -> Option<&'static str> {
    match scheme {
        Scheme::Github => Some("X-GitHub-Delivery"),
        Scheme::StandardWebhooks => Some("webhook-id"),
        Scheme::Stripe | Scheme::HmacSha256(_) => None,
    }
}

/// The sender's own delivery id: Stripe's event `id`, `webhook-id`, `X-GitHub-Delivery`.
pub fn scheme_id(scheme: &Scheme, headers: &HeaderMap, json: &Json) -> Option<String> {
    match scheme {
        Scheme::Stripe => json.get("id").and_then(Json::as_str).map(str::to_string),
        Scheme::Github => header(headers, "x-github-delivery"),
        Scheme::StandardWebhooks => {
            header(headers, "webhook-id").or_else(|| header(headers, "svix-id"))
        }
        Scheme::HmacSha256(_) => None,
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::{parse, AnyConnector};
    use serde_json::json;

    fn connector(scheme: &str, publish: &str) -> InboundConnector {
        let text = format!(
            "id: t.inbound\ntype: inbound\nsource:\n  webhookUrl: /w\n  signature:\n    scheme: {scheme}\n    secret: ${{S}}\npublish:\n{publish}"
        );
        match parse("c.yaml", &text) {
            Ok(AnyConnector::Inbound(c)) => *c,
            other => panic!("{other:?}"),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn stripe_invoice_paid_becomes_fee_paid() {
        let c = connector(
            "stripe",
            "  topic: fee.paid\n  idFrom: \"{{ id }}\"\n  body:\n    feeId: \"{{ data.object.metadata.feeId }}\"\n    amount: \"{{ data.object.amount_paid }}\"\n    note: \"{{ data.object.missing }}\"\n",
        );
        let raw = Bytes::from_static(
            br#"{"id":"evt_9","type":"invoice.paid","data":{"object":{"amount_paid":2500,"metadata":{"feeId":"FEE-7"}}}}"#,
        );
        let json: Json = serde_json::from_slice(&raw).unwrap();
        let e = event(&c, &HeaderMap::new(), &raw, &json).unwrap();
        assert_eq!(e.subject, "fee.paid");
        assert_eq!(e.msg_id.as_deref(), Some("evt_9"));
        let body: Json = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(body, json!({"feeId": "FEE-7", "amount": 2500}));
        assert!(e
            .headers
            .contains(&("Hms-Webhook-Type".into(), "invoice.paid".into())));
        assert!(e
            .headers
            .contains(&("Hms-Webhook-Connector".into(), "t.inbound".into())));
    }

    #[test]
    fn without_a_body_mapping_the_exact_bytes_are_published() {
        let c = connector("github", "  topic: \"github.{{ action }}\"\n");
        let raw = Bytes::from_static(b"{ \"action\" : \"opened\",\n \"n\": 1.50 }");
        let json: Json = serde_json::from_slice(&raw).unwrap();
        let h = headers(&[
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("x-github-event", "issues"),
            ("x-hub-signature-256", "sha256=00"),
        ]);
        let e = event(&c, &h, &raw, &json).unwrap();
        assert_eq!(e.body, raw);
        assert_eq!(e.subject, "github.opened");
        assert_eq!(
            e.msg_id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        let names: Vec<&str> = e.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "Hms-Webhook-Connector",
                "Nats-Msg-Id",
                "Hms-Webhook-Type",
                "X-GitHub-Event",
                "X-GitHub-Delivery"
            ]
        );
    }

    #[test]
    fn webhook_values_cannot_change_the_subject_structure() {
        let c = connector("standard-webhooks", "  topic: \"sw.{{ type }}\"\n");
        let h = headers(&[("webhook-id", "msg_1")]);
        for (bad, ok) in [
            ("a.>", false),
            ("*", false),
            ("a b", false),
            ("", false),
            ("a..b", false),
            ("x\u{7}", false),
            ("invoice.paid", true),
        ] {
            let json = json!({ "type": bad });
            let raw = Bytes::from(json.to_string());
            let got = event(&c, &h, &raw, &json);
            assert_eq!(got.is_ok(), ok, "{bad:?}: {got:?}");
        }
        let json = json!({});
        assert!(matches!(
            event(&c, &h, &Bytes::from_static(b"{}"), &json),
            Err(MapError::Topic(RenderError::Missing(_)))
        ));
    }

    #[test]
    fn dedup_ids() {
        let c = connector("hmac-sha256\n    header: X-Sig", "  topic: x.y\n");
        let json = json!({"id": "1"});
        let e = event(&c, &HeaderMap::new(), &Bytes::from_static(b"{}"), &json).unwrap();
        assert_eq!(e.msg_id, None, "hmac-sha256 has no id of its own");
        let c = connector(
            "standard-webhooks",
            "  topic: x.y\n  idFrom: \"{{ order.id }}-{{ order.version }}\"\n",
        );
        let json = json!({"order": {"id": "O1", "version": 3}});
        let e = event(&c, &HeaderMap::new(), &Bytes::from_static(b"{}"), &json).unwrap();
        assert_eq!(e.msg_id.as_deref(), Some("O1-3"));
        let json = json!({"order": {"id": "O1\r\nX: y", "version": 3}});
        assert_eq!(
            event(&c, &HeaderMap::new(), &Bytes::from_static(b"{}"), &json),
            Err(MapError::BadId)
        );
    }
}
