//! The connector model: YAML as written (raw serde structs) -> validated, compiled [`Connector`].
//!
//! Loading happens in two stages so that every problem of every file is reported at once as
//! `file:line:col: message`: the raw parse (serde_yaml) and a validation pass that knows the
//! position of every key (see [`yaml_pos`]).

pub mod extras;
pub mod inbound;
pub mod raw;
pub mod yaml_pos;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::filter::Filter;
use crate::template::{BodyTemplate, Flavor, StringTemplate};
use yaml_pos::{Pos, Positions};

pub use inbound::InboundConnector;
pub use raw::RawConnector;

/// One problem in a connector file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )
    }
}

/// Every problem found while loading one or more connector files.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Direction of a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Outbound,
    Inbound,
}

/// How the body is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Form,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Form => "application/x-www-form-urlencoded",
        }
    }
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
    pub method: reqwest::Method,
    pub url: StringTemplate,
    pub headers: Vec<(reqwest::header::HeaderName, StringTemplate)>,
    pub body: Option<BodyTemplate>,
    pub encoding: Encoding,
}

/// `lookup:` — a request made before the main one; its JSON answer is bound under `bind`
/// for the main request's templates.
#[derive(Debug)]
pub struct Lookup {
    pub method: reqwest::Method,
    pub url: StringTemplate,
    pub headers: Vec<(reqwest::header::HeaderName, StringTemplate)>,
    /// Query parameters (values are data: form-encoded).
    pub query: Vec<(String, StringTemplate)>,
    pub auth: LookupAuth,
    /// Name of the answer in the main templates (`lookup`).
    pub bind: String,
    pub check: Option<crate::check::ResponseCheck>,
}

/// Which auth a lookup uses.
#[derive(Debug)]
pub enum LookupAuth {
    /// The connector's `auth:` (the default).
    Inherit,
    None,
    Own(std::sync::Arc<crate::auth::Auth>),
}

impl Lookup {
    /// The auth this lookup sends with, given its connector's.
    pub fn effective_auth<'a>(
        &'a self,
        connector: Option<&'a std::sync::Arc<crate::auth::Auth>>,
    ) -> Option<&'a std::sync::Arc<crate::auth::Auth>> {
        match &self.auth {
            LookupAuth::Inherit => connector,
            LookupAuth::None => None,
            LookupAuth::Own(a) => Some(a),
        }
    }
}

/// Retry rules (`retry:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in total; after the last failure the job is parked.
    pub max: u32,
    /// Delay after attempt n is `backoff * 2^(n-1)`, within ±20 %, capped by `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Overrides of which statuses count as success, transient or permanent.
    pub statuses: crate::outcome::StatusRules,
}

/// Default cap of one backoff delay (and of a `Retry-After`): 10 minutes.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(600);

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max: 5,
            backoff: Duration::from_millis(3000),
            max_backoff: DEFAULT_MAX_BACKOFF,
            statuses: Default::default(),
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
    pub idempotency_header: Option<reqwest::header::HeaderName>,
    /// Input schema checked before a request is built (generated or `map.schema`).
    pub schema: crate::schema::InputSchema,
    /// How requests authenticate (`auth:`); shared with the token actor.
    pub auth: Option<std::sync::Arc<crate::auth::Auth>>,
    /// A request made first whose JSON answer feeds the templates (`lookup:`).
    pub lookup: Option<Lookup>,
    /// When a 2xx answer really is a success (`responseCheck:`).
    pub response_check: Option<crate::check::ResponseCheck>,
    /// Where it was loaded from (a file path, or `kv:<key>` later).
    pub origin: String,
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

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

const AUTH_KEYS: &[&str] = &[
    "type",
    "token",
    "tokenUrl",
    "clientId",
    "clientSecret",
    "clientAuth",
    "scopes",
    "keyFile",
    "subject",
    "url",
    "username",
    "password",
    "referer",
    "expirationMinutes",
    "apiKey",
    "header",
    "prefix",
    "rejectedWhen",
];

/// Keys allowed in each structural mapping (headers and body are free-form).
const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "id",
            "type",
            "description",
            "trigger",
            "map",
            "retry",
            "rateLimit",
            "timeoutMs",
            "idempotencyHeader",
            "source",
            "publish",
            "auth",
            "lookup",
            "responseCheck",
        ],
    ),
    ("auth", AUTH_KEYS),
    ("lookup.auth", AUTH_KEYS),
    (
        "lookup",
        &[
            "url",
            "method",
            "headers",
            "query",
            "auth",
            "as",
            "responseCheck",
        ],
    ),
    ("responseCheck", &["success", "onFailure"]),
    ("lookup.responseCheck", &["success", "onFailure"]),
    ("trigger", &["topic", "filter", "orderingKey"]),
    ("map", &["from", "to", "schema"]),
    ("map.to", &["url", "method", "headers", "body", "encoding"]),
    ("retry", &["max", "backoffMs", "maxBackoffMs", "statuses"]),
    ("retry.statuses", &["success", "transient", "permanent"]),
    ("rateLimit", &["perSecond", "burst"]),
    ("source", &["webhookUrl", "maxBodyBytes", "signature"]),
    (
        "source.signature",
        &[
            "scheme",
            "secret",
            "secrets",
            "toleranceSec",
            "header",
            "encoding",
            "prefix",
        ],
    ),
    ("publish", &["topic", "idFrom", "body"]),
];

/// Parses and validates one connector from its text. `file` names it in messages.
pub fn parse(file: &str, text: &str) -> Result<AnyConnector, Problems> {
    let mut problems = Vec::new();
    let at = |pos: Pos, message: String| Problem {
        file: file.to_string(),
        pos,
        message,
    };
    let positions = match Positions::scan(text) {
        Ok(p) => p,
        Err((pos, msg)) => return Err(Problems(vec![at(pos, format!("YAML syntax: {msg}"))])),
    };
    for (path, known) in KNOWN_KEYS {
        for (key, pos) in positions.children(path) {
            if !known.contains(&key.as_str()) {
                let hint = strsim_hint(key, known)
                    .map(|h| format!(" (did you mean `{h}`?)"))
                    .unwrap_or_default();
                let place = if path.is_empty() {
                    String::new()
                } else {
                    format!(" in `{path}`")
                };
                problems.push(at(*pos, format!("unknown key `{key}`{place}{hint}")));
            }
        }
    }
    let raw: RawConnector = match serde_yaml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let pos = e
                .location()
                .map(|l| Pos {
                    line: l.line(),
                    col: l.column(),
                })
                .unwrap_or_default();
            let msg = e.to_string();
            // serde_yaml appends " at line L column C"; the prefix already says where.
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            problems.push(at(pos, msg));
            return Err(Problems(problems));
        }
    };
    let result = raw.compile(
        &positions,
        &mut Report {
            file,
            problems: &mut problems,
        },
    );
    match result {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(Problems(problems)),
    }
}

fn strsim_hint<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| {
            (
                strsim::damerau_levenshtein(&key.to_lowercase(), &k.to_lowercase()),
                *k,
            )
        })
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Reads and validates connector files; duplicate ids across files are errors too.
pub fn load_files(files: &[PathBuf]) -> Result<Vec<AnyConnector>, Problems> {
    load_sources(files).map(|v| v.into_iter().map(|(c, _)| c).collect())
}

/// Like [`load_files`], keeping each connector's text as written (what `deploy` stores).
pub fn load_sources(files: &[PathBuf]) -> Result<Vec<(AnyConnector, String)>, Problems> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for path in files {
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem {
                    file,
                    pos: Pos { line: 1, col: 1 },
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match parse(&file, &text) {
            Ok(c) => {
                if let Some(first) = seen.get(c.id()) {
                    let pos = Positions::scan(&text)
                        .map(|p| p.value("id"))
                        .unwrap_or_default();
                    problems.push(Problem {
                        file: file.clone(),
                        pos,
                        message: format!(
                            "duplicate connector id `{}` (also defined in {first})",
                            c.id()
                        ),
                    });
                } else if let Some(first) = webhook_path_taken(&c, &out) {
                    let pos = Positions::scan(&text)
                        .map(|p| p.value("source.webhookUrl"))
                        .unwrap_or_default();
                    problems.push(Problem {
                        file: file.clone(),
                        pos,
                        message: format!("webhookUrl already served by connector `{first}`"),
                    });
                } else {
                    seen.insert(c.id().to_string(), file.clone());
                    out.push((c, text));
                }
            }
            Err(Problems(p)) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

/// The id of a connector in `others` that already serves `c`'s webhook path, if any.
fn webhook_path_taken<'a>(
    c: &AnyConnector,
    others: &'a [(AnyConnector, String)],
) -> Option<&'a str> {
    let AnyConnector::Inbound(c) = c else {
        return None;
    };
    others.iter().find_map(|(o, _)| match o {
        AnyConnector::Inbound(o) if o.webhook_url == c.webhook_url => Some(o.id.as_str()),
        _ => None,
    })
}

/// Every `*.yaml` / `*.yml` file in `dir`, sorted by name.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Collects the problems of one file.
pub(crate) struct Report<'a> {
    pub file: &'a str,
    problems: &'a mut Vec<Problem>,
}

impl Report<'_> {
    pub fn at(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            pos,
            message: message.into(),
        });
    }

    pub fn count(&self) -> usize {
        self.problems.len()
    }

    /// Compiles a string template, reporting a compile error at `pos`.
    pub fn template(&mut self, source: &str, flavor: Flavor, pos: Pos) -> Option<StringTemplate> {
        StringTemplate::compile(source, flavor)
            .map_err(|e| self.at(pos, e.0))
            .ok()
    }
}

/// Secret names used anywhere in an outbound connector (for start-up warnings).
pub fn secrets_used(c: &Connector) -> Vec<String> {
    let mut names: BTreeMap<String, ()> = BTreeMap::new();
    let mut add = |t: &StringTemplate| {
        for s in t.secrets() {
            names.insert(s.to_string(), ());
        }
    };
    add(&c.target.url);
    c.target.headers.iter().for_each(|(_, t)| add(t));
    if let Some(b) = &c.target.body {
        b.leaves().into_iter().for_each(&mut add);
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
        for s in a.secrets() {
            names.insert(s, ());
        }
    }
    names.into_keys().collect()
}

#[cfg(test)]
mod tests;
