//! Shared rules of connector files: known keys, methods, ids, NATS subjects and URLs.

pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

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
pub const KNOWN_KEYS: &[(&str, &[&str])] = &[
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
            "allowHosts",
        ],
    ),
    ("responseCheck", &["success", "onFailure"]),
    ("lookup.responseCheck", &["success", "onFailure"]),
    ("trigger", &["topic", "filter", "orderingKey"]),
    ("map", &["from", "to", "schema"]),
    (
        "map.to",
        &[
            "url",
            "method",
            "headers",
            "body",
            "encoding",
            "allowHosts",
            "tls",
            "format",
            "cloudevents",
            "sign",
        ],
    ),
    ("map.to.tls", &["certFile", "keyFile"]),
    (
        "map.to.cloudevents",
        &["source", "type", "subject", "extensions"],
    ),
    (
        "map.to.sign",
        &[
            "scheme", "secret", "secrets", "header", "encoding", "prefix",
        ],
    ),
    ("retry", &["max", "backoffMs", "maxBackoffMs", "statuses"]),
    ("retry.statuses", &["success", "transient", "permanent"]),
    ("rateLimit", &["perSecond", "burst"]),
    (
        "source",
        &[
            "webhookUrl",
            "maxBodyBytes",
            "signature",
            "format",
            "allowedOrigins",
            "allowedRate",
        ],
    ),
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

/// Why a connector id is not usable, if it isn't.
pub fn id_problem(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    (!ok).then(|| format!("id `{id}`: use letters, digits, '.', '_' and '-' only"))
}

/// The known key closest to `key`, when one is close enough to be a likely typo.
pub fn strsim_hint<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
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
pub fn url_problem(template: &str) -> Option<String> {
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
    match url::Url::parse(&probe) {
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

/// The `scheme://host:port` part of a URL template (up to the first `/`, `?` or `#` after
/// `://`), and whether anything in it is a template, a `{field}` or a `${VAR}`. No `://` at
/// all counts as templated (the template writes the scheme and host).
pub fn authority_of(template: &str) -> (&str, bool) {
    let Some(start) = template.find("://") else {
        return (template, true);
    };
    let after = start + 3;
    let end = template[after..]
        .find(['/', '?', '#'])
        .map_or(template.len(), |i| after + i);
    let authority = &template[..end];
    (authority, authority.contains(['{', '$', '}']))
}

/// Why `allowHosts` entries are not usable, if one isn't: a host pattern, `:port` optional.
pub fn allow_hosts_problem(entries: &[String]) -> Option<String> {
    if entries.is_empty() {
        return Some("allowHosts is empty: list the hosts the URL template may produce".into());
    }
    entries
        .iter()
        .find(|e| crate::policy::HostPort::parse(e).is_none())
        .map(|e| format!("allowHosts `{e}`: expected a host name (`*.` allowed in front) or an IP address, with an optional `:port`"))
}
