//! The compiled connector model: what a validated connector file becomes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::check::ResponseCheck;
use crate::filter::Filter;
use crate::outcome::Retry;
use crate::policy::HostPort;
use crate::schema::InputSchema;
use crate::signature::Scheme;
use crate::template::{BodyTemplate, StringTemplate};
use crate::tls::ClientIdentity;
use crate::wire::{Encoding, HeaderName, Method};

/// Direction of a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Outbound,
    Inbound,
}

/// What triggers an outbound connector.
#[derive(Debug)]
pub struct Trigger {
    pub topic: String,
    pub filter: Option<Filter>,
    pub ordering_key: Option<StringTemplate>,
}

/// The HTTP call an outbound connector makes.
#[derive(Debug)]
pub struct Target {
    pub method: Method,
    pub url: StringTemplate,
    pub headers: Vec<(HeaderName, StringTemplate)>,
    pub body: Option<BodyTemplate>,
    pub encoding: Encoding,
    /// `map.to.allowHosts`: the hosts a templated scheme/host/port may produce (`None`: the
    /// URL's scheme, host and port are written out, fixed at load).
    pub allow_hosts: Option<Vec<HostPort>>,
    /// `map.to.tls`: the client certificate presented to the target.
    pub identity: Option<Arc<ClientIdentity>>,
    /// `map.to.format`: the body as rendered, or a CloudEvent.
    pub format: Format,
    /// `map.to.sign`: how the request is signed for the target, right before it is sent.
    pub sign: Option<Sign>,
}

/// How an outbound request carries its event (`map.to.format`).
#[derive(Debug)]
pub enum Format {
    /// The body as rendered (the default).
    Plain,
    /// A CloudEvent in binary mode: `ce-*` headers, the body as rendered.
    CloudEvents(CloudEventsSpec),
    /// A CloudEvent in structured mode: one JSON envelope whose `data` is the body.
    CloudEventsStructured(CloudEventsSpec),
}

impl Format {
    /// The CloudEvents attributes, for either CloudEvents mode.
    pub fn cloudevents(&self) -> Option<&CloudEventsSpec> {
        match self {
            Format::Plain => None,
            Format::CloudEvents(s) | Format::CloudEventsStructured(s) => Some(s),
        }
    }
}

/// Templates of an outgoing CloudEvent's attributes (`map.to.cloudevents`); `id` is the
/// idempotency key and `time` the event's publish time.
#[derive(Debug)]
pub struct CloudEventsSpec {
    /// `ce-source` (default `urn:hms-sync:<connector id>`).
    pub source: StringTemplate,
    /// `ce-type`; `None`: the event's topic.
    pub event_type: Option<StringTemplate>,
    /// `ce-subject`, when set.
    pub subject: Option<StringTemplate>,
    /// Extension attributes.
    pub extensions: Vec<(String, StringTemplate)>,
}

/// `map.to.sign`: the scheme and the secrets (each one `${VAR}`, read at each send; several
/// during a rotation, standard-webhooks only).
#[derive(Debug)]
pub struct Sign {
    /// `standard-webhooks` or `hmac-sha256` (with its header, encoding and prefix).
    pub scheme: Scheme,
    /// Each exactly one `${VAR}`.
    pub secrets: Vec<StringTemplate>,
}

/// `lookup:` — a request made before the main one; its JSON answer is bound under `bind`
/// for the main request's templates.
#[derive(Debug)]
pub struct Lookup {
    pub method: Method,
    pub url: StringTemplate,
    pub headers: Vec<(HeaderName, StringTemplate)>,
    /// Query parameters (values are data: form-encoded).
    pub query: Vec<(String, StringTemplate)>,
    pub auth: LookupAuth,
    /// Name of the answer in the main templates (`lookup`).
    pub bind: String,
    pub check: Option<ResponseCheck>,
    /// `lookup.allowHosts`, as for the target.
    pub allow_hosts: Option<Vec<HostPort>>,
}

/// Which auth a lookup uses.
#[derive(Debug)]
pub enum LookupAuth {
    /// The connector's `auth:` (the default).
    Inherit,
    None,
    Own(Arc<Auth>),
}

impl Lookup {
    /// The auth this lookup sends with, given its connector's.
    pub fn effective_auth<'a>(&'a self, connector: Option<&'a Arc<Auth>>) -> Option<&'a Arc<Auth>> {
        match &self.auth {
            LookupAuth::Inherit => connector,
            LookupAuth::None => None,
            LookupAuth::Own(a) => Some(a),
        }
    }
}

/// `rateLimit: { perSecond, burst }`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// A validated, compiled outbound connector.
#[derive(Debug)]
pub struct Connector {
    pub id: String,
    /// Durable consumer name (see [`consumer_name`]).
    pub consumer: String,
    pub kind: Kind,
    pub trigger: Trigger,
    pub target: Target,
    pub retry: Retry,
    pub rate_limit: Option<RateLimit>,
    pub timeout: Duration,
    /// Header carrying the idempotency key (`None`: turned off with `idempotencyHeader: none`).
    pub idempotency_header: Option<HeaderName>,
    /// Input schema checked before a request is built (generated or `map.schema`).
    pub schema: InputSchema,
    /// How requests authenticate (`auth:`); shared with the token actor.
    pub auth: Option<Arc<Auth>>,
    /// A request made first whose JSON answer feeds the templates (`lookup:`).
    pub lookup: Option<Lookup>,
    /// When a 2xx answer really is a success (`responseCheck:`).
    pub response_check: Option<ResponseCheck>,
    /// Where it was loaded from (a file path, or `hms_sync_connectors/<key>@<revision>`).
    pub origin: String,
}

/// Default limit of a webhook body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// A validated, compiled inbound connector: webhook at `webhook_url` -> event on the bus.
#[derive(Debug)]
pub struct InboundConnector {
    pub id: String,
    /// Path served by `up` (`source.webhookUrl`).
    pub webhook_url: String,
    /// Largest body accepted (`source.maxBodyBytes`, default 1 MiB); larger ones get 413.
    pub max_body_bytes: usize,
    pub signature: Signature,
    /// `source.format`: plain JSON webhooks, or CloudEvents.
    pub format: InboundFormat,
    pub publish: Publish,
    /// Where it was loaded from (a file path, or `hms_sync_connectors/<key>@<revision>`).
    pub origin: String,
}

/// What an inbound connector accepts (`source.format`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundFormat {
    /// One JSON document per webhook (the default).
    Json,
    /// CloudEvents in binary, structured or batched mode; OPTIONS answers the validation
    /// handshake.
    CloudEvents {
        /// Origins granted in the handshake; `None`: any (the requested origin is echoed).
        allowed_origins: Option<Vec<String>>,
        /// `WebHook-Allowed-Rate` (requests per minute); `None`: `*`.
        allowed_rate: Option<u32>,
    },
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

/// Any connector file's content.
#[derive(Debug)]
pub enum AnyConnector {
    Outbound(Box<Connector>),
    Inbound(Box<InboundConnector>),
}

impl AnyConnector {
    pub fn id(&self) -> &str {
        match self {
            AnyConnector::Outbound(c) => &c.id,
            AnyConnector::Inbound(c) => &c.id,
        }
    }

    pub fn origin(&self) -> &str {
        match self {
            AnyConnector::Outbound(c) => &c.origin,
            AnyConnector::Inbound(c) => &c.origin,
        }
    }
}

/// The JetStream durable consumer name of a connector: every character outside
/// `[A-Za-z0-9_-]` replaced by `_` (`ddot.gis.outbound.v1` -> `ddot_gis_outbound_v1`).
pub fn consumer_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Secret names used anywhere in an outbound connector (for start-up warnings).
pub fn secrets_used(c: &Connector) -> Vec<String> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut add = |t: &StringTemplate| names.extend(t.secrets().map(str::to_string));
    add(&c.target.url);
    c.target.headers.iter().for_each(|(_, t)| add(t));
    if let Some(b) = &c.target.body {
        b.leaves().into_iter().for_each(&mut add);
    }
    if let Some(s) = &c.target.sign {
        s.secrets.iter().for_each(&mut add);
    }
    if let Some(l) = &c.lookup {
        add(&l.url);
        l.headers.iter().for_each(|(_, t)| add(t));
        l.query.iter().for_each(|(_, t)| add(t));
    }
    let auths = c
        .auth
        .iter()
        .chain(c.lookup.as_ref().and_then(|l| match &l.auth {
            LookupAuth::Own(a) => Some(a),
            _ => None,
        }));
    for a in auths {
        names.extend(a.secrets());
    }
    names.into_iter().collect()
}
