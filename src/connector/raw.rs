//! Connector YAML as written (camelCase keys): the serde structs, before any validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    pub auth: Option<RawAuth>,
    /// Outbound: a request made first whose JSON answer feeds the templates.
    #[serde(default)]
    pub lookup: Option<RawLookup>,
    /// Outbound: when an answer counts as success beyond its status code (CEL).
    #[serde(default)]
    pub response_check: Option<RawCheck>,
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
    /// The hosts a templated scheme/host/port may produce (`api.example.com`, `*.arcgis.com`,
    /// `host:8443`); checked on every request before any connection.
    #[serde(default, rename = "allowHosts")]
    pub allow_hosts: Option<Vec<String>>,
    /// A client certificate presented to the target (mutual TLS).
    #[serde(default)]
    pub tls: Option<RawClientTls>,
    /// `cloudevents` (binary mode) or `cloudevents-structured`; default: the body as rendered.
    #[serde(default)]
    pub format: Option<String>,
    /// CloudEvents attributes of the request (with `format: cloudevents...`).
    #[serde(default)]
    pub cloudevents: Option<RawCloudEvents>,
    /// How the request is signed for the target (`standard-webhooks` or `hmac-sha256`); the
    /// keys of `source.signature` but `toleranceSec` (refused here as an unknown key).
    #[serde(default)]
    pub sign: Option<RawSignature>,
}

/// `map.to.cloudevents` as written: templates of the outgoing event's attributes.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RawCloudEvents {
    /// `ce-source` (default `urn:hms-sync:<connector id>`).
    #[serde(default)]
    pub source: Option<String>,
    /// `ce-type` (default: the event's topic).
    #[serde(default, rename = "type")]
    pub event_type: Option<String>,
    /// `ce-subject` (default: none).
    #[serde(default)]
    pub subject: Option<String>,
    /// Extension attributes: name (lower-case letters and digits) -> template.
    #[serde(default)]
    pub extensions: BTreeMap<String, String>,
}

/// `map.to.tls`: certificate and key files (PEM), relative to the connector file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawClientTls {
    pub cert_file: String,
    pub key_file: String,
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
    /// `json` (default) or `cloudevents` (binary, structured and batched CloudEvents).
    #[serde(default)]
    pub format: Option<String>,
    /// cloudevents: origins granted in the validation handshake (default: any).
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// cloudevents: requests per minute granted in the validation handshake (default `*`).
    #[serde(default)]
    pub allowed_rate: Option<u32>,
}

/// A signing block as written: `source.signature` (how a sender signs its webhooks) and
/// `map.to.sign` (how a request is signed for its target).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawSignature {
    /// `stripe`, `github`, `standard-webhooks` or `hmac-sha256` (outbound: the last two).
    pub scheme: String,
    /// The signing secret, as `${VAR}` (read from the environment when a webhook arrives, or
    /// at each send).
    #[serde(default)]
    pub secret: Option<String>,
    /// Several secrets valid at once (rotation), each `${VAR}`; combined with `secret`
    /// (outbound standard-webhooks: one signature each).
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    /// Inbound only: largest age (or lead) of the signed timestamp, in seconds (stripe,
    /// standard-webhooks; default 300).
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

/// `auth:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawAuth {
    /// `bearer`, `oauth2-client-credentials`, `google-service-account` or `arcgis-token`.
    #[serde(rename = "type")]
    pub kind: String,
    /// bearer: the token, as `${VAR}`.
    #[serde(default)]
    pub token: Option<String>,
    /// oauth2-client-credentials: the token endpoint.
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    /// oauth2-client-credentials: `${VAR}`.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// `basic` (default) or `body`: how the client authenticates at the token endpoint.
    #[serde(default)]
    pub client_auth: Option<String>,
    /// OAuth2 / Google scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// google-service-account: the JSON key file (relative to the connector file), or
    /// `${VAR}` holding the key JSON (or a path to it).
    #[serde(default)]
    pub key_file: Option<String>,
    /// google-service-account: the user to impersonate (domain-wide delegation).
    #[serde(default)]
    pub subject: Option<String>,
    /// arcgis-token: the generateToken URL (default ArcGIS Online's).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// arcgis-token: `${VAR}`.
    #[serde(default)]
    pub password: Option<String>,
    /// arcgis-token: the referer the token is bound to (sent as `Referer` with each request).
    #[serde(default)]
    pub referer: Option<String>,
    /// arcgis-token: token lifetime asked for, minutes (default 60).
    #[serde(default)]
    pub expiration_minutes: Option<u32>,
    /// arcgis-token: an API key (`${VAR}`) used as the token instead of generateToken.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Header carrying the token (default `Authorization`).
    #[serde(default)]
    pub header: Option<String>,
    /// Text before the token (default `Bearer `).
    #[serde(default)]
    pub prefix: Option<String>,
    /// CEL over `status`, `headers`, `body`: this answer means "token refused" (default
    /// `status == 401`; arcgis-token also error codes 498/499 in the body).
    #[serde(default)]
    pub rejected_when: Option<String>,
}

/// `responseCheck:` as written: an expression, or `{ success, onFailure }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawCheck {
    Expr(String),
    Full {
        success: String,
        #[serde(default, rename = "onFailure")]
        on_failure: Option<String>,
    },
}

/// `lookup:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RawLookup {
    pub url: String,
    /// Default GET.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameters; values are templates, form-encoded as data.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// `inherit` (default: the connector's auth), `none`, or an auth block of its own.
    #[serde(default)]
    pub auth: Option<serde_yaml::Value>,
    /// Name the JSON answer is bound under for the main templates (default `lookup`).
    #[serde(default, rename = "as")]
    pub bind: Option<String>,
    #[serde(default)]
    pub response_check: Option<RawCheck>,
    /// The hosts a templated lookup URL may produce.
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
}
