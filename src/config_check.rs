//! Checks a loaded runtime config beyond its types: the NATS URLs and credentials, the files it
//! names (readable, and what they should hold), the outbound address rules and proxy. Every
//! problem at once, as `file:line:col: message`; `${VAR}` references are checked for form only
//! (their values are read when `up` starts).

use std::path::Path;

use crate::config::{resolve_vars, RuntimeConfig};
use crate::connector::yaml_pos::{Pos, Positions};
use crate::connector::{Problem, Problems};
use crate::policy::AddressPolicy;
use crate::tls;

/// Every problem of `cfg` (its `source` gives the positions).
pub fn check(cfg: &RuntimeConfig) -> Result<(), Problems> {
    let (file, text) = match &cfg.source {
        Some((f, t)) => (f.display().to_string(), t.as_str()),
        None => ("(defaults)".to_string(), ""),
    };
    let positions = Positions::scan(text).ok();
    let at = |key: &str| -> Pos { positions.as_ref().map(|p| p.value(key)).unwrap_or_default() };
    let mut problems = Vec::new();
    let mut report = |key: &str, message: String| {
        problems.push(Problem {
            file: file.clone(),
            pos: at(key),
            message,
        })
    };
    // Credentials and URLs: `${VAR}` stands for any value here.
    let any = |_: &str| Some("x".to_string());
    if let Err(e) = cfg.nats.connect_options(&any) {
        let key = e
            .split(':')
            .next()
            .filter(|k| k.starts_with("nats.") && !k.contains(' '))
            .unwrap_or("nats")
            .to_string();
        report(&key, e);
    }
    let n = &cfg.nats;
    if let Some(f) = &n.nkey_seed_file {
        match std::fs::read_to_string(f) {
            Err(e) => report(
                "nats.nkeySeedFile",
                format!("{}: cannot read: {e}", f.display()),
            ),
            Ok(t) if !t.lines().any(|l| l.trim().starts_with("SU")) => report(
                "nats.nkeySeedFile",
                format!(
                    "{}: no user NKey seed (a line starting with SU) in it",
                    f.display()
                ),
            ),
            Ok(_) => {}
        }
    }
    if let Some(f) = &n.creds_file {
        match std::fs::read_to_string(f) {
            Err(e) => report("nats.credsFile", format!("{}: cannot read: {e}", f.display())),
            Ok(t) if !(t.contains("BEGIN NATS USER JWT") && t.contains("BEGIN USER NKEY SEED")) => {
                report(
                    "nats.credsFile",
                    format!(
                        "{}: not a .creds file (it needs a NATS USER JWT and a USER NKEY SEED block)",
                        f.display()
                    ),
                )
            }
            Ok(_) => {}
        }
    }
    if let Some(t) = &n.tls {
        if let Some(ca) = &t.ca_file {
            if let Err(e) = tls::load_ca(ca) {
                report("nats.tls.caFile", e.to_string());
            }
        }
        identity(
            &mut report,
            "nats.tls",
            t.cert_file.as_deref(),
            t.key_file.as_deref(),
        );
    }
    let o = &cfg.outbound;
    if let Some(ca) = &o.ca_file {
        if let Err(e) = tls::load_ca(ca) {
            report("outbound.caFile", e.to_string());
        }
    }
    if let Some(p) = &o.proxy {
        match resolve_vars(p, "outbound.proxy", &any) {
            Err(e) => report("outbound.proxy", e),
            Ok(raw) => match url::Url::parse(&raw) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => report(
                    "outbound.proxy",
                    "outbound.proxy: expected http://host:port (credentials and ${VAR} allowed)"
                        .into(),
                ),
            },
        }
    }
    let h = &cfg.http;
    let long = |_: &str| Some("x".repeat(crate::config::ADMIN_TOKEN_MIN));
    if let Err(e) = h.admin_token(&long) {
        report("http.adminToken", e);
    } else if let Some(t) = h.admin_token.as_deref().filter(|t| !t.contains("${")) {
        if t.chars().count() < crate::config::ADMIN_TOKEN_MIN {
            report(
                "http.adminToken",
                format!(
                    "http.adminToken: at least {} characters (e.g. `openssl rand -hex 16`); better `${{VAR}}`, read from the environment at start",
                    crate::config::ADMIN_TOKEN_MIN
                ),
            );
        }
    }
    if let Some(a) = h.admin_listen {
        let l = h.listen;
        let overlap = a.port() == l.port()
            && a.port() != 0
            && (a.ip() == l.ip() || a.ip().is_unspecified() || l.ip().is_unspecified());
        if overlap {
            report(
                "http.adminListen",
                format!("http.adminListen: {a} overlaps http.listen {l}: give the admin side its own address"),
            );
        }
    }
    if h.chart_sample_ms < 100 {
        report(
            "http.chartSampleMs",
            format!("http.chartSampleMs: {} (at least 100)", h.chart_sample_ms),
        );
    }
    if let Err(errors) = AddressPolicy::new(&o.deny, o.allow.as_deref()) {
        for e in errors {
            // "deny[1]: ..." -> outbound.deny[1]
            let key = e.split(':').next().unwrap_or("outbound");
            report(&format!("outbound.{key}"), format!("outbound.{e}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Problems(problems))
    }
}

/// A certificate and its key, both or neither, readable and belonging together.
fn identity(
    report: &mut impl FnMut(&str, String),
    at: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
) {
    match (cert, key) {
        (Some(c), Some(k)) => {
            if let Err(e) = tls::ClientIdentity::load(c, k) {
                let which = match &e {
                    tls::TlsError::Read { path, .. } | tls::TlsError::Invalid { path, .. }
                        if path == k =>
                    {
                        "keyFile"
                    }
                    tls::TlsError::NoKey(_) => "keyFile",
                    _ => "certFile",
                };
                report(&format!("{at}.{which}"), e.to_string());
            }
        }
        (Some(_), None) => report(
            &format!("{at}.certFile"),
            format!("{at}.certFile needs {at}.keyFile"),
        ),
        (None, Some(_)) => report(
            &format!("{at}.keyFile"),
            format!("{at}.keyFile needs {at}.certFile"),
        ),
        (None, None) => {}
    }
}

/// The outbound address policy of `cfg` (the built-in list alone when its rules are invalid:
/// [`check`] reports those).
pub fn policy(cfg: &RuntimeConfig) -> AddressPolicy {
    AddressPolicy::new(&cfg.outbound.deny, cfg.outbound.allow.as_deref()).unwrap_or_default()
}
