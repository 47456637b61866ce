//! Inbound connectors (`type: inbound`): validation of `source` and `publish` into an [`InboundConnector`].

use super::raw::{subject_problem, RawConnector, RawPublish, RawSignature};
use super::yaml_pos::Positions;
use super::{AnyConnector, Report};
use crate::inbound::signature::{HmacSpec, Scheme, SigEncoding, DEFAULT_TOLERANCE_SEC};
use crate::template::{BodyTemplate, Flavor, StringTemplate};

/// Default limit of a webhook body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Paths the HTTP server of `up` serves itself; a webhook cannot take them.
const RESERVED_PATHS: [&str; 5] = ["/", "/metrics", "/healthz", "/readyz", "/api"];

/// Subjects hms-sync uses itself (parked jobs, review alerts, audit): not publish topics.
const RESERVED_SUBJECTS: [&str; 3] = ["sync.parked", "hitl.review.requested", "external.sync"];

/// A validated, compiled inbound connector: webhook at `webhook_url` -> event on the bus.
#[derive(Debug)]
pub struct InboundConnector {
    pub id: String,
    /// Path served by `up` (`source.webhookUrl`).
    pub webhook_url: String,
    /// Largest body accepted (`source.maxBodyBytes`, default 1 MiB); larger ones get 413.
    pub max_body_bytes: usize,
    pub signature: Signature,
    pub publish: Publish,
    /// Where it was loaded from (a file path, or `kv:<key>` later).
    pub origin: String,
}

/// How a webhook proves where it comes from (`source.signature`).
#[derive(Debug)]
pub struct Signature {
    pub scheme: Scheme,
    /// Every valid secret (rotation), each exactly one `${VAR}`, read when a webhook arrives.
    pub secrets: Vec<StringTemplate>,
    /// Largest distance between the signed timestamp and now (schemes with a timestamp).
    pub tolerance_sec: u64,
}

/// What an accepted webhook becomes (`publish`).
#[derive(Debug)]
pub struct Publish {
    /// Subject template (`fee.paid`, `stripe.{{ type }}`).
    pub topic: StringTemplate,
    /// The subject `HMS_EVENTS` must capture: the topic itself, or its literal leading tokens
    /// followed by `>` when it is a template.
    pub capture: String,
    /// Dedup key template, sent as `Nats-Msg-Id`; default: the scheme's own delivery id.
    pub id_from: Option<StringTemplate>,
    /// Body mapping; `None`: the webhook JSON is published unchanged (exact bytes).
    pub body: Option<BodyTemplate>,
}

impl InboundConnector {
    /// Names of the `${VAR}` secrets (for start-up warnings).
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .signature
            .secrets
            .iter()
            .flat_map(|t| t.secrets().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Validates the inbound part of a connector; pushes every problem found.
pub(super) fn compile(
    raw: &RawConnector,
    pos: &Positions,
    r: &mut Report<'_>,
) -> Option<AnyConnector> {
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
    Some(AnyConnector::Inbound(Box::new(InboundConnector {
        id: raw.id.clone(),
        webhook_url: url.clone(),
        max_body_bytes,
        signature: signature?,
        publish: publish?,
        origin: r.file.to_string(),
    })))
}

fn signature(s: &RawSignature, pos: &Positions, r: &mut Report<'_>) -> Option<Signature> {
    let at = |k: &str| format!("source.signature.{k}");
    let scheme = match s.scheme.as_str() {
        "stripe" => Some(Scheme::Stripe),
        "github" => Some(Scheme::Github),
        "standard-webhooks" => Some(Scheme::StandardWebhooks),
        "hmac-sha256" => {
            let encoding = match s.encoding.as_deref() {
                None | Some("hex") => SigEncoding::Hex,
                Some("base64") => SigEncoding::Base64,
                Some(other) => {
                    r.at(
                        pos.value(&at("encoding")),
                        format!("encoding `{other}`: expected `hex` or `base64`"),
                    );
                    SigEncoding::Hex
                }
            };
            match &s.header {
                None => {
                    r.at(
                        pos.key("source.signature"),
                        "scheme `hmac-sha256` needs `header` (the header carrying the signature)",
                    );
                    None
                }
                Some(h) if axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                    r.at(
                        pos.value(&at("header")),
                        format!("header `{h}` is not a valid HTTP header name"),
                    );
                    None
                }
                Some(h) => Some(Scheme::HmacSha256(HmacSpec {
                    header: h.to_ascii_lowercase(),
                    encoding,
                    prefix: s.prefix.clone().unwrap_or_default(),
                })),
            }
        }
        other => {
            r.at(
                pos.value(&at("scheme")),
                format!("scheme `{other}`: expected one of stripe, github, standard-webhooks, hmac-sha256"),
            );
            None
        }
    };
    if let Some(sc) = &scheme {
        if !matches!(sc, Scheme::HmacSha256(_)) {
            for key in ["header", "encoding", "prefix"] {
                if pos
                    .children("source.signature")
                    .iter()
                    .any(|(k, _)| k == key)
                {
                    r.at(
                        pos.key(&at(key)),
                        format!(
                            "`{key}` applies to scheme `hmac-sha256` only; `{}` fixes its headers",
                            sc.name()
                        ),
                    );
                }
            }
        }
        if !sc.has_timestamp() && s.tolerance_sec.is_some() {
            r.at(
                pos.key(&at("toleranceSec")),
                format!(
                    "scheme `{}` signs no timestamp: `toleranceSec` does not apply",
                    sc.name()
                ),
            );
        }
    }
    if s.tolerance_sec == Some(0) {
        r.at(
            pos.value(&at("toleranceSec")),
            "toleranceSec must be above 0",
        );
    }
    let mut written: Vec<(String, String)> = Vec::new();
    if let Some(one) = &s.secret {
        written.push((one.clone(), at("secret")));
    }
    for (i, one) in s.secrets.iter().flatten().enumerate() {
        written.push((one.clone(), format!("{}[{i}]", at("secrets"))));
    }
    if written.is_empty() {
        r.at(
            pos.key("source.signature"),
            "a signature needs `secret: ${VAR}` or `secrets: [${OLD}, ${NEW}]`",
        );
    }
    let mut secrets = Vec::new();
    for (text, path) in written {
        let compiled = is_one_var(&text)
            .then(|| StringTemplate::compile(&text, Flavor::Text).ok())
            .flatten();
        match compiled {
            Some(t) => secrets.push(t),
            None => r.at(
                pos.value(&path),
                "a secret is read from the environment: write exactly `${NAME}` (never the secret itself)",
            ),
        }
    }
    Some(Signature {
        scheme: scheme?,
        secrets,
        tolerance_sec: s.tolerance_sec.unwrap_or(DEFAULT_TOLERANCE_SEC),
    })
}

fn is_one_var(text: &str) -> bool {
    text.strip_prefix("${")
        .and_then(|t| t.strip_suffix('}'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::{parse, Problems};

    const STRIPE: &str = "\
id: stripe.fees.inbound.v1
type: inbound
source:
  webhookUrl: /webhooks/stripe
  signature:
    scheme: stripe
    secret: ${STRIPE_WEBHOOK_SECRET}
    toleranceSec: 300
publish:
  topic: fee.paid
  idFrom: \"{{ id }}\"
  body: { feeId: \"{{ data.object.metadata.feeId }}\" }
";

    fn problems(text: &str) -> Vec<String> {
        match parse("c.yaml", text) {
            Ok(_) => vec![],
            Err(Problems(p)) => p.into_iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn the_product_example_compiles() {
        let AnyConnector::Inbound(c) = parse("c.yaml", STRIPE).unwrap() else {
            panic!("inbound expected")
        };
        assert_eq!(c.webhook_url, "/webhooks/stripe");
        assert_eq!(c.signature.scheme, Scheme::Stripe);
        assert_eq!(c.signature.tolerance_sec, 300);
        assert_eq!(c.publish.capture, "fee.paid");
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.secret_names(), ["STRIPE_WEBHOOK_SECRET"]);
    }

    #[test]
    fn captures_of_templated_topics() {
        let cases = [
            ("stripe.{{ type }}", Some("stripe.>")),
            ("hms.github.{{ event.kind }}.x", Some("hms.github.>")),
            ("{{ type }}", None),
            ("stripe{{ type }}", None),
            ("a.*.{{ type }}", None),
        ];
        for (topic, want) in cases {
            assert_eq!(template_capture(topic).as_deref(), want, "{topic}");
        }
    }

    #[test]
    fn inbound_problems_are_reported_with_their_position() {
        let cases: Vec<(String, &str)> = vec![
            (
                STRIPE.replace("scheme: stripe", "scheme: stripey"),
                "c.yaml:6:13: scheme `stripey`: expected one of stripe, github, standard-webhooks, hmac-sha256",
            ),
            (
                STRIPE.replace("${STRIPE_WEBHOOK_SECRET}", "whsec_literal"),
                "c.yaml:7:13: a secret is read from the environment: write exactly `${NAME}` (never the secret itself)",
            ),
            (
                STRIPE.replace("toleranceSec: 300", "toleranceSec: 0"),
                "c.yaml:8:19: toleranceSec must be above 0",
            ),
            (
                STRIPE.replace("topic: fee.paid", "topic: \"{{ type }}\""),
                "c.yaml:10:10: topic `{{ type }}`: a templated topic starts with literal tokens, e.g. `stripe.{{ type }}`, so that HMS_EVENTS captures `stripe.>`",
            ),
            (
                STRIPE.replace("topic: fee.paid", "topic: sync.parked.x"),
                "c.yaml:10:10: topic `sync.parked.x`: `sync.parked` is hms-sync's own subject",
            ),
            (
                STRIPE.replace("topic: fee.paid", "topic: fee.*"),
                "c.yaml:10:10: topic `fee.*`: an event is published on one subject: no wildcards",
            ),
            (
                STRIPE.replace("\"{{ id }}\"", "\"{{ id \""),
                "c.yaml:11:11: unclosed `{{`",
            ),
            (
                STRIPE.replace("/webhooks/stripe", "webhooks/stripe"),
                "c.yaml:4:15: webhookUrl `webhooks/stripe` must be a path starting with '/'",
            ),
            (
                STRIPE.replace("/webhooks/stripe", "/metrics"),
                "c.yaml:4:15: webhookUrl `/metrics` is served by hms-sync itself; use e.g. `/webhooks/<name>`",
            ),
            (
                STRIPE.replace("    toleranceSec: 300\n", "    header: X-Sig\n"),
                "c.yaml:8:5: `header` applies to scheme `hmac-sha256` only; `stripe` fixes its headers",
            ),
            (
                STRIPE.replace("scheme: stripe", "scheme: github"),
                "c.yaml:8:5: scheme `github` signs no timestamp: `toleranceSec` does not apply",
            ),
            (
                STRIPE.replace("scheme: stripe", "scheme: hmac-sha256")
                    .replace("    toleranceSec: 300\n", ""),
                "c.yaml:5:3: scheme `hmac-sha256` needs `header` (the header carrying the signature)",
            ),
            (
                STRIPE.replace("scheme: stripe", "scheme: hmac-sha256")
                    .replace("    toleranceSec: 300\n", "    header: X-Sig\n    encoding: base32\n"),
                "c.yaml:9:15: encoding `base32`: expected `hex` or `base64`",
            ),
            (
                STRIPE.replace("secret: ${STRIPE_WEBHOOK_SECRET}", "secrets: [\"${A}\", \"oops\"]"),
                "c.yaml:7:23: a secret is read from the environment: write exactly `${NAME}` (never the secret itself)",
            ),
            (
                STRIPE.replace("feeId: \"{{ data.object.metadata.feeId }}\"", "k: \"${SECRET}\""),
                "c.yaml:12:9: publish.body cannot use `${VAR}`: secrets never go on the bus",
            ),
            (
                STRIPE.replace("    toleranceSec: 300\n", "    tolerance: 300\n"),
                "c.yaml:8:5: unknown key `tolerance` in `source.signature` (did you mean `toleranceSec`?)",
            ),
            (
                format!("{STRIPE}trigger: {{ topic: x }}\n"),
                "c.yaml:13:1: `trigger` belongs to outbound connectors; an inbound one has `source` and `publish`",
            ),
        ];
        for (text, want) in cases {
            let got = problems(&text);
            assert!(
                got.iter().any(|g| g == want),
                "missing {want:?} in {got:#?}"
            );
        }
        let no_sig = "id: a\ntype: inbound\nsource:\n  webhookUrl: /w\npublish:\n  topic: x\n";
        assert_eq!(
            problems(no_sig),
            ["c.yaml:3:1: an inbound connector needs `source.signature` (scheme and secret): unsigned webhooks are not accepted"]
        );
    }

    #[test]
    fn hmac_sha256_with_rotation_compiles() {
        let text = "\
id: shop.orders.inbound.v1
type: inbound
source:
  webhookUrl: /webhooks/shop
  maxBodyBytes: 65536
  signature:
    scheme: hmac-sha256
    header: X-Shopify-Hmac-Sha256
    encoding: base64
    secrets: [\"${SHOP_OLD}\", \"${SHOP_NEW}\"]
publish:
  topic: \"shop.{{ topic }}\"
";
        let AnyConnector::Inbound(c) = parse("c.yaml", text).unwrap() else {
            panic!("inbound expected")
        };
        assert_eq!(c.max_body_bytes, 65536);
        assert_eq!(c.publish.capture, "shop.>");
        assert_eq!(c.secret_names(), ["SHOP_NEW", "SHOP_OLD"]);
        assert_eq!(
            c.signature.scheme,
            Scheme::HmacSha256(HmacSpec {
                header: "x-shopify-hmac-sha256".into(),
                encoding: SigEncoding::Base64,
                prefix: String::new()
            })
        );
    }
}
