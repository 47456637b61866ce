//! Validation of an inbound connector (`type: inbound`): `source` and `publish` into an [`InboundConnector`].

use super::model::{InboundConnector, InboundFormat, Publish, Signature, DEFAULT_MAX_BODY_BYTES};
use super::problems::Report;
use super::raw::{RawConnector, RawPublish, RawSignature, RawSource};
use super::rules::subject_problem;
use super::signing::{compile_scheme, compile_secrets};
use super::yaml_pos::Positions;
use crate::signature::DEFAULT_TOLERANCE_SEC;
use crate::template::{BodyTemplate, Flavor, StringTemplate};

/// Paths the HTTP server of `up` serves itself; a webhook cannot take them.
const RESERVED_PATHS: [&str; 5] = ["/", "/metrics", "/healthz", "/readyz", "/api"];

/// Subjects hms-sync uses itself (parked jobs, review alerts, audit): not publish topics.
const RESERVED_SUBJECTS: [&str; 3] = ["sync.parked", "hitl.review.requested", "external.sync"];

/// Validates the inbound part of a connector; pushes every problem found.
pub fn compile(
    raw: &RawConnector,
    pos: &Positions,
    r: &mut Report<'_>,
) -> Option<InboundConnector> {
    let before = r.count();
    let Some(source) = &raw.source else {
        r.at(
            pos.key(""),
            "an inbound connector needs `source.webhookUrl` and `source.signature`",
        );
        return None;
    };
    let url = &source.webhook_url;
    if !url.starts_with('/') {
        r.at(
            pos.value("source.webhookUrl"),
            format!("webhookUrl `{url}` must be a path starting with '/'"),
        );
    } else if url.contains(['?', '#', ' ']) || url.len() > 1 && url.ends_with('/') {
        r.at(
            pos.value("source.webhookUrl"),
            format!(
                "webhookUrl `{url}`: a plain path, without query, fragment, spaces or trailing '/'"
            ),
        );
    } else if RESERVED_PATHS
        .iter()
        .any(|p| url == p || (*p == "/api" && url.starts_with("/api/")))
    {
        r.at(
            pos.value("source.webhookUrl"),
            format!("webhookUrl `{url}` is served by hms-sync itself; use e.g. `/webhooks/<name>`"),
        );
    }
    let max_body_bytes = match source.max_body_bytes {
        Some(0) => {
            r.at(
                pos.value("source.maxBodyBytes"),
                "maxBodyBytes must be above 0",
            );
            0
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => DEFAULT_MAX_BODY_BYTES,
    };
    let signature = match &source.signature {
        Some(s) => signature(s, pos, r),
        None => {
            r.at(
                pos.key("source"),
                "an inbound connector needs `source.signature` (scheme and secret): unsigned webhooks are not accepted",
            );
            None
        }
    };
    let publish = match &raw.publish {
        Some(p) => publish(p, pos, r),
        None => {
            r.at(pos.key(""), "an inbound connector needs `publish.topic`");
            None
        }
    };
    let format = inbound_format(source, pos, r);
    for key in ["trigger", "map", "retry", "rateLimit", "timeoutMs"] {
        if !pos.children("").iter().any(|(k, _)| k == key) {
            continue;
        }
        r.at(
            pos.key(key),
            format!(
                "`{key}` belongs to outbound connectors; an inbound one has `source` and `publish`"
            ),
        );
    }
    if r.count() != before {
        return None;
    }
    Some(InboundConnector {
        id: raw.id.clone(),
        webhook_url: url.clone(),
        max_body_bytes,
        signature: signature?,
        format,
        publish: publish?,
        origin: r.file.to_string(),
    })
}

fn signature(s: &RawSignature, pos: &Positions, r: &mut Report<'_>) -> Option<Signature> {
    let at = "source.signature";
    let scheme = compile_scheme(s, at, &INBOUND_SCHEMES, pos, r);
    if let Some(sc) = &scheme {
        if !sc.has_timestamp() && s.tolerance_sec.is_some() {
            r.at(
                pos.key(&format!("{at}.toleranceSec")),
                format!(
                    "scheme `{}` signs no timestamp: `toleranceSec` does not apply",
                    sc.name()
                ),
            );
        }
    }
    if s.tolerance_sec == Some(0) {
        r.at(
            pos.value(&format!("{at}.toleranceSec")),
            "toleranceSec must be above 0",
        );
    }
    let secrets = compile_secrets(s.secret.as_deref(), s.secrets.as_deref(), at, pos, r);
    Some(Signature {
        scheme: scheme?,
        secrets,
        tolerance_sec: s.tolerance_sec.unwrap_or(DEFAULT_TOLERANCE_SEC),
    })
}

/// `source.format` with the CloudEvents handshake's `allowedOrigins` and `allowedRate`.
fn inbound_format(source: &RawSource, pos: &Positions, r: &mut Report<'_>) -> InboundFormat {
    let cloudevents = match source.format.as_deref() {
        None | Some("json") => false,
        Some("cloudevents") => true,
        Some(other) => {
            r.at(
                pos.value("source.format"),
                format!("format `{other}`: expected `json` (default) or `cloudevents`"),
            );
            false
        }
    };
    if !cloudevents {
        for key in ["allowedOrigins", "allowedRate"] {
            if pos.children("source").iter().any(|(k, _)| k == key) {
                r.at(
                    pos.key(&format!("source.{key}")),
                    format!("`{key}` belongs to the CloudEvents handshake: it needs `format: cloudevents`"),
                );
            }
        }
        return InboundFormat::Json;
    }
    if source.allowed_rate == Some(0) {
        r.at(
            pos.value("source.allowedRate"),
            "allowedRate is requests per minute: above 0 (leave it out for any rate)",
        );
    }
    let origins = source.allowed_origins.as_ref().map(|list| {
        for (i, o) in list.iter().enumerate() {
            if o.is_empty() || o.chars().any(|c| c.is_whitespace() || c.is_control()) {
                r.at(
                    pos.value(&format!("source.allowedOrigins[{i}]")),
                    format!("origin `{o}`: a host name such as `eventemitter.example.com`, or `*`"),
                );
            }
        }
        list.iter().map(|o| o.to_ascii_lowercase()).collect()
    });
    InboundFormat::CloudEvents {
        allowed_origins: origins,
        allowed_rate: source.allowed_rate,
    }
}

/// Schemes a webhook may be signed with.
const INBOUND_SCHEMES: [&str; 4] = ["stripe", "github", "standard-webhooks", "hmac-sha256"];

fn publish(p: &RawPublish, pos: &Positions, r: &mut Report<'_>) -> Option<Publish> {
    let no_secrets = |t: &StringTemplate| t.secrets().next().is_none();
    let topic = r.template(&p.topic, Flavor::Text, pos.value("publish.topic"));
    let mut capture = None;
    if let Some(reserved) = RESERVED_SUBJECTS
        .iter()
        .find(|x| p.topic == **x || p.topic.starts_with(&format!("{x}.")))
    {
        r.at(
            pos.value("publish.topic"),
            format!(
                "topic `{}`: `{reserved}` is hms-sync's own subject",
                p.topic
            ),
        );
    }
    if let Some(t) = &topic {
        if !no_secrets(t) {
            r.at(
                pos.value("publish.topic"),
                "publish.topic cannot use `${VAR}`: secrets never go on the bus",
            );
        } else if t.is_constant() {
            match subject_problem(&p.topic) {
                Some(msg) => r.at(
                    pos.value("publish.topic"),
                    format!("topic `{}`: {msg}", p.topic),
                ),
                None if p.topic.split('.').any(|x| x == "*" || x == ">") => r.at(
                    pos.value("publish.topic"),
                    format!(
                        "topic `{}`: an event is published on one subject: no wildcards",
                        p.topic
                    ),
                ),
                None => capture = Some(p.topic.clone()),
            }
        } else {
            match template_capture(&p.topic) {
                Some(c) => capture = Some(c),
                None => r.at(
                    pos.value("publish.topic"),
                    format!(
                        "topic `{}`: a templated topic starts with literal tokens, e.g. `stripe.{{{{ type }}}}`, so that HMS_EVENTS captures `stripe.>`",
                        p.topic
                    ),
                ),
            }
        }
    }
    let id_from = p.id_from.as_deref().and_then(|s| {
        let t = r.template(s, Flavor::Text, pos.value("publish.idFrom"))?;
        if no_secrets(&t) {
            Some(t)
        } else {
            r.at(
                pos.value("publish.idFrom"),
                "publish.idFrom cannot use `${VAR}`: secrets never go on the bus",
            );
            None
        }
    });
    let body = match &p.body {
        None => None,
        Some(b) => match BodyTemplate::compile(b) {
            Ok(t) => {
                if t.leaves().into_iter().any(|l| !no_secrets(l)) {
                    r.at(
                        pos.value("publish.body"),
                        "publish.body cannot use `${VAR}`: secrets never go on the bus",
                    );
                }
                Some(t)
            }
            Err(errs) => {
                for (path, e) in errs {
                    r.at(
                        pos.value(&format!("publish.body.{path}")),
                        format!("body `{path}`: {}", e.0),
                    );
                }
                None
            }
        },
    };
    Some(Publish {
        topic: topic?,
        capture: capture?,
        id_from,
        body,
    })
}

/// The stream subject capturing every subject a templated topic renders to: its complete
/// literal leading tokens plus `>` (`stripe.{{ type }}` -> `stripe.>`); `None` without any.
pub fn template_capture(topic: &str) -> Option<String> {
    let first = topic.find("{{").unwrap_or(topic.len());
    let literal = &topic[..first];
    let end = literal.rfind('.')?;
    let prefix = &literal[..end];
    if subject_problem(prefix).is_some() || prefix.split('.').any(|x| x == "*" || x == ">") {
        return None;
    }
    Some(format!("{prefix}.>"))
}
