//! Pure request building: one connector + one event -> the HTTP request to send.

use http::header::CONTENT_TYPE;
use serde_json::Value as Json;

use crate::cloudevents;
use crate::connector::{Connector, Format, Lookup, Sign};
use crate::policy::HostPort;
use crate::signature::{self, Scheme};
use crate::template::{RenderError, Secrets};
pub use crate::wire::Request;
use crate::wire::{Encoding, HeaderName, HeaderValue};

/// Builds the request for one event. With [`Secrets::Masked`] every `${VAR}` shows as `***`.
pub fn build(
    c: &Connector,
    event: &Json,
    idempotency_key: Option<&str>,
    secrets: Secrets,
) -> Result<Request, RenderError> {
    let t = &c.target;
    let url = t.url.render_text(event, secrets)?;
    check_allowed_host(&url, t.allow_hosts.as_deref(), "map.to.allowHosts")?;
    let mut headers = Vec::with_capacity(t.headers.len() + 2);
    for (name, tpl) in &t.headers {
        let value = tpl.render_text(event, secrets)?;
        headers.push((name.clone(), header_value(name, &value)?));
    }
    let body = match &t.body {
        None => None,
        Some(b) => {
            let rendered = b.render(event, secrets)?;
            Some(encode(&rendered, t.encoding)?)
        }
    };
    if body.is_some() && !headers.iter().any(|(n, _)| *n == CONTENT_TYPE) {
        headers.push((
            CONTENT_TYPE,
            HeaderValue::from_static(t.encoding.content_type()),
        ));
    }
    if let (Some(key), Some(name)) = (idempotency_key, &c.idempotency_header) {
        if !headers.iter().any(|(n, _)| n == name) {
            headers.push((name.clone(), header_value(name, key)?));
        }
    }
    Ok(Request {
        method: t.method.clone(),
        url,
        headers,
        body,
    })
}

/// A URL whose host comes from a template must name one of `allowed` (`None`: the host is
/// written out in the connector). The message names the rule, not the host the event chose.
fn check_allowed_host(
    url: &str,
    allowed: Option<&[HostPort]>,
    key: &str,
) -> Result<(), RenderError> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    let invalid = |reason: String| RenderError::Invalid {
        path: "url".into(),
        reason,
    };
    let parsed =
        url::Url::parse(url).map_err(|_| invalid("the rendered URL is not valid".into()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the rendered URL is not http(s)".into()));
    }
    let host = parsed.host_str().unwrap_or_default();
    if allowed
        .iter()
        .any(|h| h.matches(host, parsed.port(), parsed.scheme()))
    {
        Ok(())
    } else {
        Err(invalid(format!(
            "the host the template produced is not in {key}"
        )))
    }
}

fn header_value(name: &HeaderName, value: &str) -> Result<HeaderValue, RenderError> {
    if value.contains(['\r', '\n']) {
        return Err(RenderError::Invalid {
            path: format!("header {name}"),
            reason: "value contains CR or LF".into(),
        });
    }
    HeaderValue::from_str(value).map_err(|_| RenderError::Invalid {
        path: format!("header {name}"),
        reason: "value contains a character not allowed in a header".into(),
    })
}

fn encode(body: &Json, encoding: Encoding) -> Result<Vec<u8>, RenderError> {
    match encoding {
        Encoding::Json => serde_json::to_vec(body).map_err(|e| RenderError::Invalid {
            path: "body".into(),
            reason: e.to_string(),
        }),
        Encoding::Form => serde_qs::to_string(body)
            .map(String::into_bytes)
            .map_err(|e| RenderError::Invalid {
                path: "body".into(),
                reason: format!("cannot form-encode: {e}"),
            }),
    }
}

/// What a CloudEvent takes from the bus message besides the payload: its topic (`ce-type` by
/// default) and its publish time (`ce-time`, RFC 3339).
#[derive(Debug, Clone, Copy)]
pub struct EventOrigin<'a> {
    /// The subject the event arrived on (the original one, for a replay).
    pub topic: &'a str,
    /// When it was published, RFC 3339.
    pub time: &'a str,
}

/// Makes `req` the CloudEvent of `map.to.format` (nothing for the plain format): `ce-id` is the
/// idempotency key; binary mode adds the `ce-*` headers, structured mode wraps the body in the
/// JSON envelope (its `Content-Type` becomes `datacontenttype`).
pub fn cloud_event(
    c: &Connector,
    req: &mut Request,
    ctx: &Json,
    key: &str,
    origin: EventOrigin<'_>,
) -> Result<(), RenderError> {
    let Some(spec) = c.target.format.cloudevents() else {
        return Ok(());
    };
    // Attribute templates cannot name secrets (checked at load).
    let render = |t: &crate::template::StringTemplate| t.render_text(ctx, Secrets::Masked);
    let attributes = cloudevents::Outgoing {
        id: key.to_string(),
        source: render(&spec.source)?,
        event_type: match &spec.event_type {
            Some(t) => render(t)?,
            None => origin.topic.to_string(),
        },
        time: origin.time.to_string(),
        subject: spec.subject.as_ref().map(render).transpose()?,
        extensions: spec
            .extensions
            .iter()
            .map(|(k, t)| Ok((k.clone(), render(t)?)))
            .collect::<Result<_, RenderError>>()?,
    };
    match &c.target.format {
        Format::Plain => {}
        Format::CloudEvents(_) => {
            for (name, value) in cloudevents::binary_headers(&attributes) {
                let name =
                    HeaderName::from_bytes(name.as_bytes()).map_err(|_| RenderError::Invalid {
                        path: "map.to.cloudevents".into(),
                        reason: format!("`{name}` is not a header name"),
                    })?;
                let value = header_value(&name, &value)?;
                req.headers.push((name, value));
            }
        }
        Format::CloudEventsStructured(_) => {
            let content_type = req
                .headers
                .iter()
                .find(|(n, _)| *n == CONTENT_TYPE)
                .and_then(|(_, v)| v.to_str().ok())
                .map(str::to_string);
            req.headers.retain(|(n, _)| *n != CONTENT_TYPE);
            let body = cloudevents::structured_body(
                &attributes,
                content_type.as_deref(),
                req.body.as_deref(),
            );
            req.body = Some(body);
            req.headers.push((
                CONTENT_TYPE,
                HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
            ));
        }
    }
    Ok(())
}

/// Signs `req` as `map.to.sign` says, over its exact body, with `id` (the idempotency key) and
/// `timestamp` (Unix seconds, now): the secrets are read from the environment here, at send
/// time, and never kept. Unset secrets are skipped (a rotation); none set is an error.
pub fn sign(s: &Sign, req: &mut Request, id: &str, timestamp: i64) -> Result<(), RenderError> {
    let mut values = Vec::with_capacity(s.secrets.len());
    let mut unset = None;
    for t in &s.secrets {
        match t.render_text(&Json::Null, Secrets::Env) {
            Ok(v) if !v.is_empty() => {
                if s.scheme == Scheme::StandardWebhooks
                    && !signature::is_standard_webhooks_secret(v.as_bytes())
                {
                    return Err(RenderError::Invalid {
                        path: "map.to.sign".into(),
                        reason: format!(
                            "secret `{}` is not a Standard Webhooks secret (whsec_<base64>)",
                            t.source()
                        ),
                    });
                }
                values.push(v);
            }
            Ok(_) | Err(_) => {
                unset.get_or_insert_with(|| t.secrets().next().unwrap_or_default().to_string());
            }
        }
    }
    if values.is_empty() {
        return Err(RenderError::MissingSecret(unset.unwrap_or_default()));
    }
    let keys: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    let body = req.body.as_deref().unwrap_or_default();
    let headers = signature::sign(&s.scheme, &keys, id, timestamp, body).map_err(|e| {
        RenderError::Invalid {
            path: "map.to.sign".into(),
            reason: e.to_string(),
        }
    })?;
    put_headers(req, headers)
}

/// The headers [`sign`] would add, with the signatures masked (`hms-sync test`).
pub fn sign_masked(s: &Sign, req: &mut Request, id: &str) -> Result<(), RenderError> {
    let headers = signature::sign_masked(&s.scheme, s.secrets.len(), id, "<unix time at send>");
    put_headers(req, headers)
}

fn put_headers(req: &mut Request, headers: Vec<(String, String)>) -> Result<(), RenderError> {
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| RenderError::Invalid {
            path: "map.to.sign".into(),
            reason: format!("`{name}` is not a header name"),
        })?;
        let value = header_value(&name, &value)?;
        req.headers.retain(|(n, _)| *n != name);
        req.headers.push((name, value));
    }
    Ok(())
}

/// Why a request could not be shown ([`preview`]).
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The lookup's request cannot be rendered for this event.
    #[error("cannot render the lookup: {0}")]
    Lookup(RenderError),
    /// The request cannot be rendered for this event.
    #[error("cannot render: {0}")]
    Request(RenderError),
}

/// The request a connector would send for an event, as `hms-sync test` prints it: the lookup
/// first when there is one (values from its answer shown as `<...>`), every secret and
/// signature as `***`, `key` as the idempotency key (`ce_id` as the CloudEvent's id, where the
/// key is shown as a placeholder with spaces), `origin` for CloudEvents attributes. Sends
/// nothing.
pub fn preview(
    c: &Connector,
    event: &Json,
    key: &str,
    ce_id: &str,
    origin: EventOrigin<'_>,
) -> Result<String, PreviewError> {
    let mut out = String::new();
    let bound;
    let ctx = match &c.lookup {
        None => event,
        Some(l) => {
            let mut r = build_lookup(l, event, Secrets::Masked).map_err(PreviewError::Lookup)?;
            if let Some(a) = l.effective_auth(c.auth.as_ref()) {
                let _ = a.apply(&mut r, "***");
            }
            out.push_str(&format!(
                "# lookup, sent first; its JSON answer is bound as `{}`\n",
                l.bind
            ));
            out.push_str(&r.to_text());
            out.push_str("\n# request (values from the lookup shown as <...>)\n");
            bound = bind(event, &l.bind, placeholder_answer(c, &l.bind));
            &bound
        }
    };
    let mut r = build(c, ctx, Some(key), Secrets::Masked).map_err(PreviewError::Request)?;
    cloud_event(c, &mut r, ctx, ce_id, origin).map_err(PreviewError::Request)?;
    if let Some(a) = &c.auth {
        let _ = a.apply(&mut r, "***");
    }
    if let Some(s) = &c.target.sign {
        sign_masked(s, &mut r, key).map_err(PreviewError::Request)?;
    }
    out.push_str(&r.to_text());
    Ok(out)
}

/// Builds a connector's lookup request for one event (query values are form-encoded data).
pub fn build_lookup(l: &Lookup, event: &Json, secrets: Secrets) -> Result<Request, RenderError> {
    let mut url = l.url.render_text(event, secrets)?;
    if !l.query.is_empty() {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (name, tpl) in &l.query {
            q.append_pair(name, &tpl.render_text(event, secrets)?);
        }
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&q.finish());
    }
    check_allowed_host(&url, l.allow_hosts.as_deref(), "lookup.allowHosts")?;
    let mut headers = Vec::with_capacity(l.headers.len());
    for (name, tpl) in &l.headers {
        let value = tpl.render_text(event, secrets)?;
        headers.push((name.clone(), header_value(name, &value)?));
    }
    Ok(Request {
        method: l.method.clone(),
        url,
        headers,
        body: None,
    })
}

/// The context of the main templates: the event with the lookup's answer under `name`
/// (which shadows an event field of that name).
pub fn bind(event: &Json, name: &str, answer: Json) -> Json {
    let mut out = match event {
        Json::Object(o) => o.clone(),
        _ => serde_json::Map::new(),
    };
    out.insert(name.to_string(), answer);
    Json::Object(out)
}

/// A stand-in for a lookup's answer when nothing is sent (`hms-sync test`): every field the
/// main templates read from it holds `<lookup.path>`.
pub fn placeholder_answer(c: &Connector, name: &str) -> Json {
    let t = &c.target;
    let mut fields: Vec<String> = t.url.fields();
    t.headers
        .iter()
        .for_each(|(_, h)| fields.extend(h.fields()));
    if let Some(b) = &t.body {
        b.leaves().iter().for_each(|l| fields.extend(l.fields()));
    }
    let prefix = format!("{name}.");
    let mut root = Json::Null;
    for f in fields {
        if let Some(rest) = f.strip_prefix(&prefix) {
            insert_path(&mut root, &rest.split('.').collect::<Vec<_>>(), &f);
        }
    }
    root
}

fn insert_path(node: &mut Json, path: &[&str], full: &str) {
    let Some((first, rest)) = path.split_first() else {
        *node = Json::String(format!("<{full}>"));
        return;
    };
    if let Ok(i) = first.parse::<usize>() {
        if !node.is_array() {
            *node = Json::Array(vec![]);
        }
        if let Json::Array(a) = node {
            while a.len() <= i.min(100) {
                a.push(Json::Null);
            }
            if let Some(slot) = a.get_mut(i) {
                insert_path(slot, rest, full);
            }
        }
    } else {
        if !node.is_object() {
            *node = Json::Object(serde_json::Map::new());
        }
        if let Json::Object(o) = node {
            insert_path(o.entry(first.to_string()).or_insert(Json::Null), rest, full);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::{parse, AnyConnector};
    use serde_json::json;

    fn seed() -> Connector {
        match parse("seed", include_str!("../connectors/gis-ddot.yaml")).unwrap() {
            AnyConnector::Outbound(c) => *c,
            AnyConnector::Inbound(_) => unreachable!(),
        }
    }

    #[test]
    fn the_seed_request() {
        let ev = json!({"permitId":"RW-481","agency":"DDOT","startDate":"2024-05-10","status":"APPROVED"});
        let r = build(&seed(), &ev, Some("k1"), Secrets::Masked).unwrap();
        assert_eq!(
            r.to_text(),
            "PATCH https://services.arcgis.com/item/roadwork/RW-481\n\
             Authorization: Bearer ***\n\
             Content-Type: application/json\n\
             Idempotency-Key: k1\n\
             \n\
             {\"start_date\":\"2024-05-10\",\"status\":\"APPROVED\"}\n"
        );
    }

    #[test]
    fn crlf_in_a_header_is_refused() {
        let yaml = include_str!("../connectors/gis-ddot.yaml")
            .replace("Bearer ${ARC_TOKEN}", "Bearer {{ token }}");
        let AnyConnector::Outbound(c) = parse("x", &yaml).unwrap() else {
            unreachable!()
        };
        let ev = json!({"permitId": "1", "token": "abc\r\nX-Evil: 1"});
        let err = build(&c, &ev, None, Secrets::Masked).unwrap_err();
        assert!(matches!(err, RenderError::Invalid { .. }), "{err:?}");
        let ev = json!({"permitId": "1"});
        assert_eq!(
            build(&c, &ev, None, Secrets::Masked).unwrap_err(),
            RenderError::Missing("token".into())
        );
    }

    #[test]
    fn form_encoding_nests_with_brackets() {
        let yaml = "id: s\ntype: outbound\ntrigger: { topic: fee.created }\nmap:\n  to:\n    url: https://api.stripe.com/v1/invoiceitems\n    method: POST\n    encoding: form\n    body:\n      amount: \"{{ amount }}\"\n      metadata: { feeId: \"{{ id }}\" }\n";
        let AnyConnector::Outbound(c) = parse("x", yaml).unwrap() else {
            unreachable!()
        };
        let r = build(
            &c,
            &json!({"amount": 500, "id": "F 1&x"}),
            None,
            Secrets::Masked,
        )
        .unwrap();
        let body = String::from_utf8(r.body.unwrap()).unwrap();
        assert_eq!(body, "amount=500&metadata[feeId]=F+1%26x");
    }
}
