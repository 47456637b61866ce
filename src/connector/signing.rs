//! Validation shared by `source.signature` (inbound) and `map.to.sign` (outbound): the scheme
//! with its header, encoding and prefix, and the secrets (each exactly one `${VAR}`).

use super::problems::Report;
use super::raw::RawSignature;
use super::yaml_pos::Positions;
use crate::signature::{HmacSpec, Scheme, SigEncoding};
use crate::template::{Flavor, StringTemplate};

/// Compiles the scheme of the block at `at` (a dotted path); `allowed` lists the scheme names
/// this block accepts.
pub fn compile_scheme(
    block: &RawSignature,
    at: &str,
    allowed: &[&str],
    pos: &Positions,
    r: &mut Report<'_>,
) -> Option<Scheme> {
    let path = |k: &str| format!("{at}.{k}");
    let scheme = match block.scheme.as_str() {
        s if !allowed.contains(&s) => {
            r.at(
                pos.value(&path("scheme")),
                format!("scheme `{s}`: expected one of {}", allowed.join(", ")),
            );
            None
        }
        "stripe" => Some(Scheme::Stripe),
        "github" => Some(Scheme::Github),
        "standard-webhooks" => Some(Scheme::StandardWebhooks),
        _ => {
            let encoding = match block.encoding.as_deref() {
                None | Some("hex") => SigEncoding::Hex,
                Some("base64") => SigEncoding::Base64,
                Some(other) => {
                    r.at(
                        pos.value(&path("encoding")),
                        format!("encoding `{other}`: expected `hex` or `base64`"),
                    );
                    SigEncoding::Hex
                }
            };
            match block.header.as_deref() {
                None => {
                    r.at(
                        pos.key(at),
                        "scheme `hmac-sha256` needs `header` (the header carrying the signature)",
                    );
                    None
                }
                Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                    r.at(
                        pos.value(&path("header")),
                        format!("header `{h}` is not a valid HTTP header name"),
                    );
                    None
                }
                Some(h) => Some(Scheme::HmacSha256(HmacSpec {
                    header: h.to_ascii_lowercase(),
                    encoding,
                    prefix: block.prefix.clone().unwrap_or_default(),
                })),
            }
        }
    };
    if let Some(sc) = &scheme {
        if !matches!(sc, Scheme::HmacSha256(_)) {
            for key in ["header", "encoding", "prefix"] {
                if pos.children(at).iter().any(|(k, _)| k == key) {
                    r.at(
                        pos.key(&path(key)),
                        format!(
                            "`{key}` applies to scheme `hmac-sha256` only; `{}` fixes its headers",
                            sc.name()
                        ),
                    );
                }
            }
        }
    }
    scheme
}

/// Compiles `secret` and `secrets` of the block at `at`: at least one, each exactly `${VAR}`.
pub fn compile_secrets(
    secret: Option<&str>,
    secrets: Option<&[String]>,
    at: &str,
    pos: &Positions,
    r: &mut Report<'_>,
) -> Vec<StringTemplate> {
    let mut written: Vec<(String, String)> = Vec::new();
    if let Some(one) = secret {
        written.push((one.to_string(), format!("{at}.secret")));
    }
    for (i, one) in secrets.into_iter().flatten().enumerate() {
        written.push((one.clone(), format!("{at}.secrets[{i}]")));
    }
    if written.is_empty() {
        r.at(
            pos.key(at),
            "a signature needs `secret: ${VAR}` or `secrets: [${OLD}, ${NEW}]`",
        );
    }
    let mut out = Vec::new();
    for (text, path) in written {
        let compiled = is_one_var(&text)
            .then(|| StringTemplate::compile(&text, Flavor::Text).ok())
            .flatten();
        match compiled {
            Some(t) => out.push(t),
            None => r.at(
                pos.value(&path),
                "a secret is read from the environment: write exactly `${NAME}` (never the secret itself)",
            ),
        }
    }
    out
}

fn is_one_var(text: &str) -> bool {
    text.strip_prefix("${")
        .and_then(|t| t.strip_suffix('}'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}
