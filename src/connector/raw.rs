//! Connector YAML as written (camelCase keys), and its validation into a compiled connector.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::yaml_pos::Positions;
use super::{
    consumer_name, AnyConnector, Connector, Encoding, Kind, RateLimit, Report, Retry, Target,
    Trigger, DEFAULT_MAX_BACKOFF, METHODS,
};
use crate::filter::Filter;
use crate::template::{BodyTemplate, Flavor};

/// A connector file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawConnector {
    /// Unique id: letters, digits, '.', '_', '-'.
    pub id: String,
    /// `outbound` (bus -> HTTP) or `inbound` (webhook -> bus).
    #[serde(rename = "type")]
    pub kind: String,
    /// Free text shown by `list` and `status`.
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub trigger: Option<RawTrigger>,
    #[serde(default)]
    pub map: Option<RawMap>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    /// Per-request timeout in milliseconds (default 10000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Header for the idempotency key (default `Idempotency-Key`; `none` turns it off).
    #[serde(default)]
    pub idempotency_header: Option<String>,
    /// Inbound: where webhooks arrive and how they are signed.
    #[serde(default)]
    pub source: Option<RawSource>,
    /// Inbound: what an accepted webhook becomes on the bus.
    #[serde(default)]
    pub publish: Option<RawPublish>,
    /// Outbound: how requests authenticate (bearer, OAuth2, Google, ArcGIS).
    #[serde(default)]
    pub auth: Option<super::extras::RawAuth>,
    /// Outbound: a request made first whose JSON answer feeds the templates.
    #[serde(default)]
    pub lookup: Option<super::extras::RawLookup>,
    /// Outbound: when an answer counts as success beyond its status code (CEL).
    #[serde(default)]
    pub response_check: Option<super::extras::RawCheck>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawTrigger {
    /// NATS subject; wildcards allowed.
    pub topic: String,
    /// Optional CEL expression; `object` is the payload, `event` its metadata.
    #[serde(default)]
    pub filter: Option<String>,
    /// Optional template: same key => delivered one at a time, in stream order.
    #[serde(default)]
    pub ordering_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RawMap {
    #[serde(default)]
    pub from: Option<String>,
    /// Input JSON Schema: a file path (relative to the connector file) or an inline schema.
    /// Default: generated from what the URL, headers, body and filter read.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    pub to: RawTo,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RawTo {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    #[serde(default)]
    pub encoding: Option<String>,
}

fn default_method() -> String {
    "POST".to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawRetry {
    pub max: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    /// Overrides: `{ success: [409], transient: [423, "4xx"], permanent: [503] }`.
    #[serde(default)]
    pub statuses: BTreeMap<String, Vec<serde_yaml::Value>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawRateLimit {
    pub per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawSource {
    /// Path served by `up`, e.g. `/webhooks/stripe`.
    pub webhook_url: String,
    /// Largest body accepted, in bytes (default 1 MiB); larger ones are answered 413.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// How the sender signs its webhooks.
    #[serde(default)]
    pub signature: Option<RawSignature>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawSignature {
    /// `stripe`, `github`, `standard-webhooks` or `hmac-sha256`.
    pub scheme: String,
    /// The signing secret, as `${VAR}` (read from the environment when a webhook arrives).
    #[serde(default)]
    pub secret: Option<String>,
    /// Several secrets valid at once (rotation), each `${VAR}`; combined with `secret`.
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    /// Largest age (or lead) of the signed timestamp, in seconds (stripe, standard-webhooks; default 300).
    #[serde(default)]
    pub tolerance_sec: Option<u64>,
    /// hmac-sha256: the header carrying the signature.
    #[serde(default)]
    pub header: Option<String>,
    /// hmac-sha256: `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: Option<String>,
    /// hmac-sha256: text before the signature in the header value, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawPublish {
    /// Subject of the event; may be a template (`stripe.{{ type }}`).
    pub topic: String,
    /// Template of the dedup key, sent as `Nats-Msg-Id` (default: the scheme's delivery id).
    #[serde(default)]
    pub id_from: Option<String>,
    /// Maps the webhook JSON into the event; default: the webhook JSON unchanged.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

impl RawConnector {
    /// Validates and compiles; pushes every problem found. Returns `None` when it can't build.
    pub(super) fn compile(self, pos: &Positions, r: &mut Report<'_>) -> Option<AnyConnector> {
        let file = r.file;
        let before = r.count();
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            r.at(
                pos.value("id"),
                format!(
                    "id `{}`: use letters, digits, '.', '_' and '-' only",
                    self.id
                ),
            );
        }
        let kind = match self.kind.as_str() {
            "outbound" => Kind::Outbound,
            "inbound" => Kind::Inbound,
            other => {
                r.at(
                    pos.value("type"),
                    format!("type `{other}`: expected `outbound` or `inbound`"),
                );
                return None;
            }
        };
        if kind == Kind::Inbound {
            return super::inbound::compile(&self, pos, r);
        }

        // Outbound.
        let Some(trigger) = &self.trigger else {
            r.at(pos.key(""), "an outbound connector needs `trigger.topic`");
            return None;
        };
        let Some(map) = &self.map else {
            r.at(
                pos.key(""),
                "an outbound connector needs `map.to` (url, method, body)",
            );
            return None;
        };
        if let Some(msg) = subject_problem(&trigger.topic) {
            r.at(
                pos.value("trigger.topic"),
                format!("topic `{}`: {msg}", trigger.topic),
            );
        }
        let filter = trigger
            .filter
            .as_deref()
            .and_then(|f| match Filter::compile(f) {
                Ok(f) => Some(f),
                Err(e) => {
                    r.at(
                        pos.value("trigger.filter"),
                        format!("filter does not compile: {e}"),
                    );
                    None
                }
            });
        let ordering_key = trigger
            .ordering_key
            .as_deref()
            .and_then(|k| r.template(k, Flavor::Text, pos.value("trigger.orderingKey")));

        let to = &map.to;
        let method_upper = to.method.to_ascii_uppercase();
        let method = if METHODS.contains(&method_upper.as_str()) && method_upper == to.method {
            reqwest::Method::from_bytes(method_upper.as_bytes()).ok()
        } else {
            let hint = METHODS
                .iter()
                .find(|m| **m == method_upper)
                .map(|m| format!(" (did you mean `{m}`?)"))
                .unwrap_or_default();
            r.at(
                pos.value("map.to.method"),
                format!(
                    "method `{}`: expected one of {}{hint}",
                    to.method,
                    METHODS.join(", ")
                ),
            );
            None
        };
        let url = r.template(&to.url, Flavor::Url, pos.value("map.to.url"));
        if url.is_some() {
            if let Some(msg) = url_problem(&to.url) {
                r.at(pos.value("map.to.url"), format!("url `{}`: {msg}", to.url));
            }
        }
        let mut headers = Vec::new();
        for (name, value) in &to.headers {
            let path = format!("map.to.headers.{name}");
            match reqwest::header::HeaderName::from_bytes(name.as_bytes()) {
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
        if let Some(from) = &map.from {
            if from != "canonical" {
                r.at(
                    pos.value("map.from"),
                    format!("from `{from}`: only `canonical` (the event payload as published) is supported"),
                );
            }
        }
        let mut retry = Retry::default();
        if let Some(rr) = &self.retry {
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
                    let Some(p) = crate::outcome::StatusPattern::parse(&text) else {
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
        }
        let rate_limit = match &self.rate_limit {
            None => None,
            Some(rl) if !(rl.per_second.is_finite() && rl.per_second > 0.0) => {
                r.at(
                    pos.value("rateLimit.perSecond"),
                    "rateLimit.perSecond must be above 0",
                );
                None
            }
            Some(rl) => Some(RateLimit {
                per_second: rl.per_second,
                burst: rl
                    .burst
                    .unwrap_or_else(|| rl.per_second.ceil().max(1.0) as u32)
                    .max(1),
            }),
        };
        let timeout = Duration::from_millis(self.timeout_ms.unwrap_or(10_000));
        if self.timeout_ms == Some(0) {
            r.at(pos.value("timeoutMs"), "timeoutMs must be above 0");
        }
        let idempotency_header = match self.idempotency_header.as_deref() {
            None => Some(reqwest::header::HeaderName::from_static("idempotency-key")),
            Some("none") | Some("") => None,
            Some(h) => match reqwest::header::HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    r.at(
                        pos.value("idempotencyHeader"),
                        format!("`{h}` is not a valid header name (or `none`)"),
                    );
                    None
                }
            },
        };
        let auth = self
            .auth
            .as_ref()
            .and_then(|a| super::extras::compile_auth(a, "auth", file, pos, r));
        let lookup = self
            .lookup
            .as_ref()
            .and_then(|l| super::extras::compile_lookup(l, file, pos, r));
        let response_check = self
            .response_check
            .as_ref()
            .and_then(|c| super::extras::compile_check(c, "responseCheck", pos, r));
        if r.count() != before {
            return None;
        }
        let (Some(method), Some(url)) = (method, url) else {
            return None;
        };
        let schema_json = match &map.schema {
            None => {
                let mut required: Vec<String> = url.fields();
                headers
                    .iter()
                    .for_each(|(_, t)| required.extend(t.fields()));
                if let Some(l) = &lookup {
                    required.extend(l.url.fields());
                    let templates = l
                        .headers
                        .iter()
                        .map(|(_, t)| t)
                        .chain(l.query.iter().map(|(_, t)| t));
                    templates.for_each(|t| required.extend(t.fields()));
                }
                let mut optional: Vec<String> = body
                    .as_ref()
                    .map(|b| b.leaves().iter().flat_map(|t| t.fields()).collect())
                    .unwrap_or_default();
                if let Some(f) = &filter {
                    optional.extend(f.object_fields());
                }
                // What the lookup's answer supplies is not the event's to carry.
                if let Some(l) = &lookup {
                    let prefix = format!("{}.", l.bind);
                    let ours = |f: &String| *f == l.bind || f.starts_with(&prefix);
                    required.retain(|f| !ours(f));
                    optional.retain(|f| !ours(f));
                }
                crate::schema::generate(&self.id, &required, &optional)
            }
            Some(serde_json::Value::String(path)) => {
                let base = std::path::Path::new(file)
                    .parent()
                    .unwrap_or(std::path::Path::new("."));
                let full = base.join(path);
                match std::fs::read_to_string(&full)
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
        let schema = match crate::schema::InputSchema::compile(schema_json) {
            Ok(s) => s,
            Err(e) => {
                r.at(pos.value("map.schema"), e);
                return None;
            }
        };
        Some(AnyConnector::Outbound(Box::new(Connector {
            consumer: consumer_name(&self.id),
            id: self.id,
            kind,
            trigger: Trigger {
                topic: trigger.topic.clone(),
                filter,
                ordering_key,
            },
            target: Target {
                method,
                url,
                headers,
                body,
                encoding,
            },
            retry,
            rate_limit,
            timeout,
            idempotency_header,
            schema,
            auth,
            lookup,
            response_check,
            origin: file.to_string(),
        })))
    }
}

/// Why a NATS subject is not usable as a trigger topic, if it isn't.
pub fn subject_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("empty subject");
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Some("empty token (two dots, or a leading/trailing dot)");
        }
        if t.chars().any(|c| c.is_whitespace()) {
            return Some("subjects cannot contain spaces");
        }
        if *t == ">" && i != tokens.len() - 1 {
            return Some("`>` must be the last token");
        }
        if t.len() > 1 && (t.contains('*') || t.contains('>')) {
            return Some("wildcards `*` and `>` must be whole tokens");
        }
    }
    if s.starts_with("$JS.") || s.starts_with("_INBOX.") {
        return Some("reserved subject");
    }
    None
}

/// Why a URL template does not make an http(s) URL, if it doesn't.
pub(super) fn url_problem(template: &str) -> Option<String> {
    // Replace placeholders with a harmless value and parse what is left.
    let mut probe = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '$']) {
        probe.push_str(&rest[..i]);
        let tail = &rest[i..];
        let close = if tail.starts_with("{{") {
            tail.find("}}").map(|e| e + 2)
        } else if tail.starts_with("${") || tail.starts_with('{') {
            tail.find('}').map(|e| e + 1)
        } else {
            None
        };
        match close {
            Some(end) => {
                // A secret may hold a scheme/host prefix; assume the common case of a value.
                probe.push('x');
                rest = &tail[end..];
            }
            None => {
                probe.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    probe.push_str(rest);
    match reqwest::Url::parse(&probe) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
            if u.host_str().is_none_or(|h| h.is_empty()) {
                Some("no host".into())
            } else {
                None
            }
        }
        Ok(u) => Some(format!("scheme `{}`: expected http or https", u.scheme())),
        Err(e) => Some(format!("not a valid URL ({e})")),
    }
}
