//! Validation of an outbound connector (`type: outbound`), one step per block of the file.
//!
//! Every step reports its problems with their positions and returns what it could build; the
//! connector is assembled only when no step reported anything.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::extras;
use super::model::{consumer_name, Connector, Kind, Lookup, RateLimit, Target, Trigger};
use super::problems::Report;
use super::raw::{RawClientTls, RawConnector, RawMap, RawRateLimit, RawRetry, RawTo, RawTrigger};
use super::rules::{subject_problem, url_problem, METHODS};
use super::standards;
use super::yaml_pos::Positions;
use crate::filter::Filter;
use crate::outcome::{Retry, StatusPattern, DEFAULT_MAX_BACKOFF};
use crate::schema::InputSchema;
use crate::template::{BodyTemplate, Flavor};
use crate::tls::{ClientIdentity, TlsError};
use crate::wire::{Encoding, HeaderName, Method};

/// Reads a file named by a connector (`map.schema`), relative paths already resolved.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

/// Validates and compiles an outbound connector; `None` when any problem was reported.
pub fn compile(
    raw: RawConnector,
    pos: &Positions,
    r: &mut Report<'_>,
    read: ReadFile<'_>,
) -> Option<Connector> {
    let before = r.count();
    let Some(trigger) = &raw.trigger else {
        r.at(pos.key(""), "an outbound connector needs `trigger.topic`");
        return None;
    };
    let Some(map) = &raw.map else {
        r.at(
            pos.key(""),
            "an outbound connector needs `map.to` (url, method, body)",
        );
        return None;
    };
    let trigger = compile_trigger(trigger, pos, r);
    let target = compile_target(&map.to, &raw.id, pos, r, read);
    check_from(map, pos, r);
    let retry = compile_retry(raw.retry.as_ref(), pos, r);
    let rate_limit = compile_rate_limit(raw.rate_limit.as_ref(), pos, r);
    let timeout = Duration::from_millis(raw.timeout_ms.unwrap_or(10_000));
    if raw.timeout_ms == Some(0) {
        r.at(pos.value("timeoutMs"), "timeoutMs must be above 0");
    }
    let idempotency_header = compile_idempotency_header(raw.idempotency_header.as_deref(), pos, r);
    let file = r.file;
    let auth = raw
        .auth
        .as_ref()
        .and_then(|a| extras::compile_auth(a, "auth", file, pos, r));
    let lookup = raw
        .lookup
        .as_ref()
        .and_then(|l| extras::compile_lookup(l, file, pos, r));
    let response_check = raw
        .response_check
        .as_ref()
        .and_then(|c| extras::compile_check(c, "responseCheck", pos, r));
    if r.count() != before {
        return None;
    }
    let (trigger, target) = (trigger?, target?);
    let schema = compile_schema(
        &raw.id,
        map.schema.as_ref(),
        &trigger,
        &target,
        lookup.as_ref(),
        pos,
        r,
        read,
    )?;
    Some(Connector {
        consumer: consumer_name(&raw.id),
        id: raw.id,
        kind: Kind::Outbound,
        trigger,
        target,
        retry,
        rate_limit,
        timeout,
        idempotency_header,
        schema,
        auth,
        lookup,
        response_check,
        origin: file.to_string(),
    })
}

/// `trigger`: topic, CEL filter, ordering key.
fn compile_trigger(t: &RawTrigger, pos: &Positions, r: &mut Report<'_>) -> Option<Trigger> {
    let before = r.count();
    if let Some(msg) = subject_problem(&t.topic) {
        r.at(
            pos.value("trigger.topic"),
            format!("topic `{}`: {msg}", t.topic),
        );
    }
    let filter = t.filter.as_deref().and_then(|f| match Filter::compile(f) {
        Ok(f) => Some(f),
        Err(e) => {
            r.at(
                pos.value("trigger.filter"),
                format!("filter does not compile: {e}"),
            );
            None
        }
    });
    let ordering_key = t
        .ordering_key
        .as_deref()
        .and_then(|k| r.template(k, Flavor::Text, pos.value("trigger.orderingKey")));
    (r.count() == before).then(|| Trigger {
        topic: t.topic.clone(),
        filter,
        ordering_key,
    })
}

/// `map.to`: method, URL, headers, body, encoding, format, signature.
fn compile_target(
    to: &RawTo,
    id: &str,
    pos: &Positions,
    r: &mut Report<'_>,
    read: ReadFile<'_>,
) -> Option<Target> {
    let method = compile_method(&to.method, pos, r);
    let url = r.template(&to.url, Flavor::Url, pos.value("map.to.url"));
    if url.is_some() {
        if let Some(msg) = url_problem(&to.url) {
            r.at(pos.value("map.to.url"), format!("url `{}`: {msg}", to.url));
        }
    }
    let allow_hosts =
        extras::compile_allow_hosts(&to.url, to.allow_hosts.as_deref(), "map.to", pos, r);
    let identity = to
        .tls
        .as_ref()
        .and_then(|t| compile_identity(t, pos, r, read));
    let mut headers = Vec::new();
    for (name, value) in &to.headers {
        let path = format!("map.to.headers.{name}");
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => {
                if value.contains(['\r', '\n']) {
                    r.at(
                        pos.value(&path),
                        format!("header `{name}`: value contains CR or LF"),
                    );
                } else if let Some(t) = r.template(value, Flavor::Text, pos.value(&path)) {
                    headers.push((h, t));
                }
            }
            Err(_) => r.at(
                pos.key(&path),
                format!("header name `{name}` is not a valid HTTP header name"),
            ),
        }
    }
    let body = match &to.body {
        None => None,
        Some(b) => match BodyTemplate::compile(b) {
            Ok(t) => Some(t),
            Err(errs) => {
                for (p, e) in errs {
                    r.at(
                        pos.value(&format!("map.to.body.{p}")),
                        format!("body `{p}`: {}", e.0),
                    );
                }
                None
            }
        },
    };
    let encoding = match to.encoding.as_deref() {
        None | Some("json") => Encoding::Json,
        Some("form") => Encoding::Form,
        Some(other) => {
            r.at(
                pos.value("map.to.encoding"),
                format!("encoding `{other}`: expected `json` or `form`"),
            );
            Encoding::Json
        }
    };
    let format = standards::compile_format(to, id, encoding, &headers, pos, r);
    let sign = standards::compile_sign(to, &headers, pos, r);
    Some(Target {
        method: method?,
        url: url?,
        headers,
        body,
        encoding,
        allow_hosts,
        identity,
        format,
        sign,
    })
}

/// `map.to.tls`: read the certificate and key (relative to the connector file) and check
/// that they belong together.
fn compile_identity(
    t: &RawClientTls,
    pos: &Positions,
    r: &mut Report<'_>,
    read: ReadFile<'_>,
) -> Option<Arc<ClientIdentity>> {
    let base = Path::new(r.file).parent().unwrap_or(Path::new("."));
    let (cert, key) = (base.join(&t.cert_file), base.join(&t.key_file));
    let cert_pem = match read(&cert) {
        Ok(s) => s,
        Err(e) => {
            r.at(
                pos.value("map.to.tls.certFile"),
                format!("certFile {}: cannot read: {e}", cert.display()),
            );
            return None;
        }
    };
    let key_pem = match read(&key) {
        Ok(s) => s,
        Err(e) => {
            r.at(
                pos.value("map.to.tls.keyFile"),
                format!("keyFile {}: cannot read: {e}", key.display()),
            );
            return None;
        }
    };
    match ClientIdentity::from_pem(cert_pem.as_bytes(), &cert, key_pem.as_bytes(), &key) {
        Ok(id) => Some(Arc::new(id)),
        Err(e) => {
            let at = match e {
                TlsError::NoKey(_) => "map.to.tls.keyFile",
                TlsError::Invalid { ref path, .. } if *path == key => "map.to.tls.keyFile",
                _ => "map.to.tls.certFile",
            };
            r.at(pos.value(at), e.to_string());
            None
        }
    }
}

/// An upper-case method of [`METHODS`].
fn compile_method(method: &str, pos: &Positions, r: &mut Report<'_>) -> Option<Method> {
    let upper = method.to_ascii_uppercase();
    if METHODS.contains(&upper.as_str()) && upper == method {
        return Method::from_bytes(upper.as_bytes()).ok();
    }
    let hint = METHODS
        .iter()
        .find(|m| **m == upper)
        .map(|m| format!(" (did you mean `{m}`?)"))
        .unwrap_or_default();
    r.at(
        pos.value("map.to.method"),
        format!(
            "method `{method}`: expected one of {}{hint}",
            METHODS.join(", ")
        ),
    );
    None
}

/// `map.from`: only the canonical event is supported.
fn check_from(map: &RawMap, pos: &Positions, r: &mut Report<'_>) {
    if let Some(from) = &map.from {
        if from != "canonical" {
            r.at(
                pos.value("map.from"),
                format!(
                    "from `{from}`: only `canonical` (the event payload as published) is supported"
                ),
            );
        }
    }
}

/// `retry`: attempts, backoff, its cap, and status overrides.
fn compile_retry(raw: Option<&RawRetry>, pos: &Positions, r: &mut Report<'_>) -> Retry {
    let mut retry = Retry::default();
    let Some(rr) = raw else {
        return retry;
    };
    if let Some(max) = rr.max {
        if max == 0 {
            r.at(
                pos.value("retry.max"),
                "retry.max counts attempts in total: at least 1",
            );
        }
        retry.max = max.max(1);
    }
    if let Some(b) = rr.backoff_ms {
        retry.backoff = Duration::from_millis(b);
    }
    retry.max_backoff = rr
        .max_backoff_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_MAX_BACKOFF);
    let mut seen = std::collections::HashMap::new();
    for (class, list) in &rr.statuses {
        for (i, v) in list.iter().enumerate() {
            let path = format!("retry.statuses.{class}[{i}]");
            let text = match v {
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::String(s) => s.clone(),
                _ => String::new(),
            };
            let Some(p) = StatusPattern::parse(&text) else {
                r.at(
                    pos.value(&path),
                    format!("`{text}`: expected a status code (404) or a class (4xx)"),
                );
                continue;
            };
            if let Some(other) = seen.insert(text.clone(), class.clone()) {
                r.at(
                    pos.value(&path),
                    format!("`{text}` is listed under both `{other}` and `{class}`"),
                );
            }
            match class.as_str() {
                "success" => retry.statuses.success.push(p),
                "transient" => retry.statuses.transient.push(p),
                "permanent" => retry.statuses.permanent.push(p),
                _ => {}
            }
        }
    }
    if retry.backoff > retry.max_backoff {
        r.at(
            pos.value("retry.backoffMs"),
            format!(
                "retry.backoffMs ({} ms) is above the maximum backoff ({} ms)",
                retry.backoff.as_millis(),
                retry.max_backoff.as_millis()
            ),
        );
    }
    retry
}

/// `rateLimit`: requests per second above 0; burst defaults to the rate, rounded up.
fn compile_rate_limit(
    raw: Option<&RawRateLimit>,
    pos: &Positions,
    r: &mut Report<'_>,
) -> Option<RateLimit> {
    let rl = raw?;
    if !(rl.per_second.is_finite() && rl.per_second > 0.0) {
        r.at(
            pos.value("rateLimit.perSecond"),
            "rateLimit.perSecond must be above 0",
        );
        return None;
    }
    Some(RateLimit {
        per_second: rl.per_second,
        burst: rl
            .burst
            .unwrap_or_else(|| rl.per_second.ceil().max(1.0) as u32)
            .max(1),
    })
}

/// `idempotencyHeader`: default `Idempotency-Key`; `none` turns it off.
fn compile_idempotency_header(
    raw: Option<&str>,
    pos: &Positions,
    r: &mut Report<'_>,
) -> Option<HeaderName> {
    match raw {
        None => Some(HeaderName::from_static("idempotency-key")),
        Some("none") | Some("") => None,
        Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                r.at(
                    pos.value("idempotencyHeader"),
                    format!("`{h}` is not a valid header name (or `none`)"),
                );
                None
            }
        },
    }
}

/// The input schema: `map.schema` (a file relative to the connector file, or inline), else
/// generated from what the URL, headers, lookup, body and filter read.
#[allow(clippy::too_many_arguments)]
fn compile_schema(
    id: &str,
    given: Option<&serde_json::Value>,
    trigger: &Trigger,
    target: &Target,
    lookup: Option<&Lookup>,
    pos: &Positions,
    r: &mut Report<'_>,
    read: ReadFile<'_>,
) -> Option<InputSchema> {
    let json = match given {
        None => generated_schema(id, trigger, target, lookup),
        Some(serde_json::Value::String(path)) => {
            let base = Path::new(r.file).parent().unwrap_or(Path::new("."));
            let full = base.join(path);
            match read(&full)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            {
                Ok(v) => v,
                Err(e) => {
                    r.at(
                        pos.value("map.schema"),
                        format!("schema {}: {e}", full.display()),
                    );
                    return None;
                }
            }
        }
        Some(inline) => inline.clone(),
    };
    match InputSchema::compile(json) {
        Ok(s) => Some(s),
        Err(e) => {
            r.at(pos.value("map.schema"), e.to_string());
            None
        }
    }
}

/// Fields in the URL, headers and lookup request are required scalars; fields the body and
/// the filter read are optional; what the lookup's answer supplies is not the event's.
fn generated_schema(
    id: &str,
    trigger: &Trigger,
    target: &Target,
    lookup: Option<&Lookup>,
) -> serde_json::Value {
    let mut required: Vec<String> = target.url.fields();
    target
        .headers
        .iter()
        .for_each(|(_, t)| required.extend(t.fields()));
    if let Some(l) = lookup {
        required.extend(l.url.fields());
        let templates = l
            .headers
            .iter()
            .map(|(_, t)| t)
            .chain(l.query.iter().map(|(_, t)| t));
        templates.for_each(|t| required.extend(t.fields()));
    }
    let mut optional: Vec<String> = target
        .body
        .as_ref()
        .map(|b| b.leaves().iter().flat_map(|t| t.fields()).collect())
        .unwrap_or_default();
    if let Some(f) = &trigger.filter {
        optional.extend(f.object_fields());
    }
    if let Some(l) = lookup {
        let prefix = format!("{}.", l.bind);
        let ours = |f: &String| *f == l.bind || f.starts_with(&prefix);
        required.retain(|f| !ours(f));
        optional.retain(|f| !ours(f));
    }
    crate::schema::generate(id, &required, &optional)
}
