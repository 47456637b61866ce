//! Validation of the `auth:`, `lookup:` and `responseCheck:` blocks of an outbound connector,
//! and the `allowHosts` rule that `map.to` and `lookup` share.

use std::path::Path;
use std::sync::Arc;

use super::model::{Lookup, LookupAuth};
use super::problems::Report;
use super::raw::{RawAuth, RawCheck, RawLookup};
use super::rules::{allow_hosts_problem, authority_of, url_problem, METHODS};
use super::yaml_pos::Positions;
use crate::auth::{Auth, ClientAuth, KeySource, Provider};
use crate::check::{Check, OnFailure, ResponseCheck};
use crate::policy::HostPort;
use crate::template::{Flavor, StringTemplate};
use crate::wire::{HeaderName, Method};

/// Compiles an `auth:` block found at `at` (a dotted path).
pub fn compile_auth(
    raw: &RawAuth,
    at: &str,
    file: &str,
    pos: &Positions,
    r: &mut Report<'_>,
) -> Option<Arc<Auth>> {
    let before = r.count();
    let p = |k: &str| pos.value(&format!("{at}.{k}"));
    let need = |r: &mut Report<'_>, v: &Option<String>, key: &str| -> Option<String> {
        if v.as_deref().is_none_or(str::is_empty) {
            r.at(
                pos.key(at),
                format!("auth type `{}` needs `{key}`", raw.kind),
            );
        }
        v.clone()
    };
    // A secret must come from the environment, never sit in the file.
    let secret = |r: &mut Report<'_>, v: &str, key: &str| -> Option<StringTemplate> {
        let t = r.template(v, Flavor::Text, p(key))?;
        if t.secrets().next().is_none() {
            r.at(
                p(key),
                format!("`{key}` must be `${{VAR}}` (a secret is read from the environment, not written in the file)"),
            );
            return None;
        }
        Some(t)
    };
    let http_url = |r: &mut Report<'_>, u: &str, key: &str| match url::Url::parse(u) {
        Ok(url) if url.scheme() == "https" || url.scheme() == "http" => {}
        _ => r.at(p(key), format!("`{key}` `{u}` is not an http(s) URL")),
    };
    let provider = match raw.kind.as_str() {
        "bearer" => {
            let tok = need(r, &raw.token, "token")?;
            Provider::Bearer {
                token: secret(r, &tok, "token")?,
            }
        }
        "oauth2-client-credentials" => {
            let token_url = need(r, &raw.token_url, "tokenUrl");
            let id = need(r, &raw.client_id, "clientId");
            let sec = need(r, &raw.client_secret, "clientSecret");
            let (Some(token_url), Some(id), Some(sec)) = (token_url, id, sec) else {
                return None;
            };
            http_url(r, &token_url, "tokenUrl");
            let client_auth = match raw.client_auth.as_deref() {
                None | Some("basic") => ClientAuth::Basic,
                Some("body") => ClientAuth::Body,
                Some(o) => {
                    r.at(
                        p("clientAuth"),
                        format!("clientAuth `{o}`: expected `basic` or `body`"),
                    );
                    ClientAuth::Basic
                }
            };
            Provider::OAuth2 {
                token_url,
                client_id: r.template(&id, Flavor::Text, p("clientId"))?,
                client_secret: secret(r, &sec, "clientSecret")?,
                scopes: raw.scopes.clone(),
                client_auth,
            }
        }
        "google-service-account" => {
            let key_file = need(r, &raw.key_file, "keyFile")?;
            if raw.scopes.is_empty() {
                r.at(
                    pos.key(at),
                    "google-service-account needs `scopes` (e.g. https://www.googleapis.com/auth/calendar.events)",
                );
            }
            let key = match key_file
                .strip_prefix("${")
                .and_then(|s| s.strip_suffix('}'))
            {
                Some(var) if var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                    KeySource::Env(var.to_string())
                }
                _ => {
                    let base = Path::new(file).parent().unwrap_or(Path::new("."));
                    KeySource::File(base.join(&key_file))
                }
            };
            Provider::Google {
                key,
                scopes: raw.scopes.clone(),
                subject: raw.subject.clone(),
            }
        }
        "arcgis-token" => match (&raw.api_key, &raw.username, &raw.password) {
            (Some(k), None, None) => Provider::ArcgisApiKey {
                key: secret(r, k, "apiKey")?,
            },
            (None, Some(u), Some(pw)) => {
                let url = raw
                    .url
                    .clone()
                    .unwrap_or_else(|| "https://www.arcgis.com/sharing/rest/generateToken".into());
                http_url(r, &url, "url");
                let expiration_min = raw.expiration_minutes.unwrap_or(60);
                if expiration_min == 0 {
                    r.at(p("expirationMinutes"), "expirationMinutes must be above 0");
                }
                Provider::ArcgisGenerate {
                    url,
                    username: r.template(u, Flavor::Text, p("username"))?,
                    password: secret(r, pw, "password")?,
                    referer: raw.referer.clone(),
                    expiration_min,
                }
            }
            _ => {
                r.at(
                    pos.key(at),
                    "arcgis-token needs either `apiKey`, or `username` and `password` (generateToken)",
                );
                return None;
            }
        },
        other => {
            r.at(
                p("type"),
                format!("auth type `{other}`: expected bearer, oauth2-client-credentials, google-service-account or arcgis-token"),
            );
            return None;
        }
    };
    let header = match raw.header.as_deref() {
        None => http::header::AUTHORIZATION,
        Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                r.at(p("header"), format!("`{h}` is not a valid header name"));
                return None;
            }
        },
    };
    let rejected_when = match &raw.rejected_when {
        None => None,
        Some(s) => match Check::compile(s) {
            Ok(c) => Some(c),
            Err(e) => {
                r.at(
                    p("rejectedWhen"),
                    format!("rejectedWhen does not compile: {e}"),
                );
                None
            }
        },
    };
    if r.count() != before {
        return None;
    }
    Some(Arc::new(Auth {
        provider,
        header,
        prefix: raw.prefix.clone().unwrap_or_else(|| "Bearer ".into()),
        rejected_when,
    }))
}

/// Compiles a `responseCheck:` found at `at`.
pub fn compile_check(
    raw: &RawCheck,
    at: &str,
    pos: &Positions,
    r: &mut Report<'_>,
) -> Option<ResponseCheck> {
    let (src, on_failure, src_at) = match raw {
        RawCheck::Expr(s) => (s, None, at.to_string()),
        RawCheck::Full {
            success,
            on_failure,
        } => (success, on_failure.as_deref(), format!("{at}.success")),
    };
    let on_failure = match on_failure {
        None | Some("permanent") => OnFailure::Permanent,
        Some("transient") => OnFailure::Transient,
        Some(o) => {
            r.at(
                pos.value(&format!("{at}.onFailure")),
                format!("onFailure `{o}`: expected `permanent` or `transient`"),
            );
            return None;
        }
    };
    match Check::compile(src) {
        Ok(success) => Some(ResponseCheck {
            success,
            on_failure,
        }),
        Err(e) => {
            r.at(
                pos.value(&src_at),
                format!("responseCheck does not compile: {e}"),
            );
            None
        }
    }
}

/// Compiles `lookup:`.
pub fn compile_lookup(
    raw: &RawLookup,
    file: &str,
    pos: &Positions,
    r: &mut Report<'_>,
) -> Option<Lookup> {
    let before = r.count();
    let method = raw.method.clone().unwrap_or_else(|| "GET".into());
    if !METHODS.contains(&method.as_str()) {
        r.at(
            pos.value("lookup.method"),
            format!("method `{method}`: expected one of {}", METHODS.join(", ")),
        );
    }
    let url = r.template(&raw.url, Flavor::Url, pos.value("lookup.url"));
    if url.is_some() {
        if let Some(msg) = url_problem(&raw.url) {
            r.at(pos.value("lookup.url"), format!("url `{}`: {msg}", raw.url));
        }
    }
    let allow_hosts = compile_allow_hosts(&raw.url, raw.allow_hosts.as_deref(), "lookup", pos, r);
    let mut headers = Vec::new();
    for (name, value) in &raw.headers {
        let path = format!("lookup.headers.{name}");
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => {
                if let Some(t) = r.template(value, Flavor::Text, pos.value(&path)) {
                    headers.push((h, t));
                }
            }
            Err(_) => r.at(
                pos.key(&path),
                format!("header name `{name}` is not a valid HTTP header name"),
            ),
        }
    }
    let mut query = Vec::new();
    for (name, value) in &raw.query {
        let path = format!("lookup.query.{name}");
        if let Some(t) = r.template(value, Flavor::Text, pos.value(&path)) {
            query.push((name.clone(), t));
        }
    }
    let auth = match &raw.auth {
        None => LookupAuth::Inherit,
        Some(serde_yaml::Value::String(s)) if s == "inherit" => LookupAuth::Inherit,
        Some(serde_yaml::Value::String(s)) if s == "none" => LookupAuth::None,
        Some(v @ serde_yaml::Value::Mapping(_)) => {
            match serde_yaml::from_value::<RawAuth>(v.clone()) {
                Ok(a) => compile_auth(&a, "lookup.auth", file, pos, r)
                    .map(LookupAuth::Own)
                    .unwrap_or(LookupAuth::None),
                Err(e) => {
                    r.at(pos.value("lookup.auth"), format!("lookup.auth: {e}"));
                    LookupAuth::None
                }
            }
        }
        Some(_) => {
            r.at(
                pos.value("lookup.auth"),
                "lookup.auth: expected `inherit`, `none` or an auth block",
            );
            LookupAuth::None
        }
    };
    let bind = raw.bind.clone().unwrap_or_else(|| "lookup".into());
    if bind.is_empty()
        || !bind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || bind.as_bytes()[0].is_ascii_digit()
    {
        r.at(
            pos.value("lookup.as"),
            format!("as `{bind}`: a name of letters, digits and `_`"),
        );
    }
    let check = raw
        .response_check
        .as_ref()
        .and_then(|c| compile_check(c, "lookup.responseCheck", pos, r));
    if r.count() != before {
        return None;
    }
    Some(Lookup {
        method: Method::from_bytes(method.as_bytes()).ok()?,
        url: url?,
        headers,
        query,
        auth,
        bind,
        check,
        allow_hosts,
    })
}

/// A URL's scheme, host and port must be written out, unless `allowHosts` (at `at`) lists the
/// hosts its template may produce.
pub(super) fn compile_allow_hosts(
    url: &str,
    allow: Option<&[String]>,
    at: &str,
    pos: &Positions,
    r: &mut Report<'_>,
) -> Option<Vec<HostPort>> {
    let (authority, templated) = authority_of(url);
    match allow {
        None if templated => {
            r.at(
                pos.value(&format!("{at}.url")),
                format!(
                    "url `{url}`: the scheme, host and port (`{authority}`) must be written out: templates, {{field}} and ${{VAR}} go only in the path and the query (or list the hosts the template may produce in `{at}.allowHosts`)"
                ),
            );
            None
        }
        None => None,
        Some(list) => match allow_hosts_problem(list) {
            Some(msg) => {
                r.at(pos.value(&format!("{at}.allowHosts")), msg);
                None
            }
            None => Some(list.iter().filter_map(|e| HostPort::parse(e)).collect()),
        },
    }
}
