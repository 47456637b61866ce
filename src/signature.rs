//! Webhook signature schemes (Stripe, GitHub, Standard Webhooks, plain HMAC-SHA256): pure, byte-exact verification.
//!
//! Every scheme is HMAC-SHA256 over the exact bytes received; the comparison is constant time
//! (`hmac`'s `verify_slice`). Several secrets may be valid at once (rotation) and several
//! signatures may be sent at once (Stripe `v1=..,v1=..`, Standard Webhooks `v1,a v1,b`): one
//! match of any secret with any signature is enough. No I/O: the clock and the secrets are
//! arguments.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Default tolerance of schemes that sign a timestamp (Stripe's and Standard Webhooks' default).
pub const DEFAULT_TOLERANCE_SEC: u64 = 300;

/// A signature scheme, as compiled from `source.signature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, HMAC over `{t}.{body}`; the secret
    /// (`whsec_...`) is used as written.
    Stripe,
    /// `X-Hub-Signature-256: sha256=<hex>`, HMAC over the body.
    Github,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> [v1,<base64>...]`,
    /// HMAC over `{id}.{timestamp}.{body}`; the secret is `whsec_<base64 key>`.
    StandardWebhooks,
    /// One header carrying the HMAC of the body, hex or base64, after an optional prefix.
    HmacSha256(HmacSpec),
}

/// How the generic `hmac-sha256` scheme finds its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacSpec {
    /// Header name (matched case-insensitively).
    pub header: String,
    pub encoding: SigEncoding,
    /// Text before the signature in the header value (e.g. `sha256=`); empty for none.
    pub prefix: String,
}

/// Text encoding of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigEncoding {
    Hex,
    Base64,
}

impl Scheme {
    /// The name as written in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Stripe => "stripe",
            Scheme::Github => "github",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::HmacSha256(_) => "hmac-sha256",
        }
    }

    /// Whether the scheme signs a timestamp (and so `toleranceSec` applies).
    pub fn has_timestamp(&self) -> bool {
        matches!(self, Scheme::Stripe | Scheme::StandardWebhooks)
    }
}

/// Why a webhook's signature was not accepted. Every variant is answered 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing header `{0}`")]
    Missing(String),
    #[error("malformed header `{header}`: {why}")]
    Malformed { header: String, why: &'static str },
    #[error("no usable secret (unset environment variable, or not `whsec_<base64>`)")]
    NoSecret,
    #[error("signature does not match")]
    Mismatch,
    #[error("timestamp is {0} s old, beyond the tolerance")]
    Stale(i64),
    #[error("timestamp is {0} s in the future, beyond the tolerance")]
    Future(i64),
}

impl SignatureError {
    /// The `reason` label of `webhook_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Missing(_) => "missing_signature",
            SignatureError::Malformed { .. } | SignatureError::Mismatch => "bad_signature",
            SignatureError::NoSecret => "no_secret",
            SignatureError::Stale(_) | SignatureError::Future(_) => "timestamp",
        }
    }
}

/// Checks the signature of one webhook. `secrets` are the configured secrets as written
/// (`whsec_...` included), `now` is the receiving time in Unix seconds.
pub fn verify(
    scheme: &Scheme,
    tolerance_sec: u64,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&[u8]],
    now: i64,
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    match scheme {
        Scheme::Stripe => {
            let value = header(headers, "stripe-signature")?;
            let mut timestamp = None;
            let mut signatures = Vec::new();
            for item in value.split(',') {
                match item.trim().split_once('=') {
                    Some(("t", t)) if timestamp.is_none() => timestamp = Some(t),
                    Some(("v1", s)) => signatures.extend(hex::decode(s).ok()),
                    _ => {}
                }
            }
            let malformed = |why| SignatureError::Malformed {
                header: "Stripe-Signature".into(),
                why,
            };
            let t_text = timestamp.ok_or(malformed("no `t=` timestamp"))?;
            let t: i64 = t_text
                .parse()
                .map_err(|_| malformed("`t=` is not a number"))?;
            if signatures.is_empty() {
                return Err(malformed("no `v1=` signature"));
            }
            matches_any(secrets, &[t_text.as_bytes(), b".", body], &signatures)?;
            within_tolerance(t, now, tolerance_sec)
        }
        Scheme::Github => {
            let value = header(headers, "x-hub-signature-256")?;
            let malformed = |why| SignatureError::Malformed {
                header: "X-Hub-Signature-256".into(),
                why,
            };
            let hex_sig = value
                .strip_prefix("sha256=")
                .ok_or(malformed("expected `sha256=<hex>`"))?;
            let sig = hex::decode(hex_sig.trim()).map_err(|_| malformed("not hex"))?;
            matches_any(secrets, &[body], &[sig])
        }
        Scheme::StandardWebhooks => {
            let id = header(headers, "webhook-id").or_else(|_| header(headers, "svix-id"))?;
            let ts_text = header(headers, "webhook-timestamp")
                .or_else(|_| header(headers, "svix-timestamp"))?;
            let value = header(headers, "webhook-signature")
                .or_else(|_| header(headers, "svix-signature"))?;
            let t: i64 = ts_text
                .trim()
                .parse()
                .map_err(|_| SignatureError::Malformed {
                    header: "webhook-timestamp".into(),
                    why: "not a number",
                })?;
            let signatures: Vec<Vec<u8>> = value
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .collect();
            if signatures.is_empty() {
                return Err(SignatureError::Malformed {
                    header: "webhook-signature".into(),
                    why: "no `v1,<base64>` signature",
                });
            }
            let keys: Vec<Vec<u8>> = secrets
                .iter()
                .filter_map(|s| standard_webhooks_key(s))
                .collect();
            if keys.is_empty() {
                return Err(SignatureError::NoSecret);
            }
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            matches_any(
                &keys,
                &[id.as_bytes(), b".", ts_text.as_bytes(), b".", body],
                &signatures,
            )?;
            within_tolerance(t, now, tolerance_sec)
        }
        Scheme::HmacSha256(spec) => {
            let value = header(headers, &spec.header)?;
            let malformed = |why| SignatureError::Malformed {
                header: spec.header.clone(),
                why,
            };
            let text = value
                .strip_prefix(spec.prefix.as_str())
                .ok_or_else(|| malformed("does not start with the configured prefix"))?
                .trim();
            let sig = match spec.encoding {
                SigEncoding::Hex => hex::decode(text).map_err(|_| malformed("not hex"))?,
                SigEncoding::Base64 => base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| malformed("not base64"))?,
            };
            matches_any(secrets, &[body], &[sig])
        }
    }
}

/// The HMAC key of a Standard Webhooks secret: base64 after an optional `whsec_` prefix
/// (as the reference libraries do).
fn standard_webhooks_key(secret: &[u8]) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix(b"whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, SignatureError> {
    let v = headers
        .get(name)
        .ok_or_else(|| SignatureError::Missing(name.to_string()))?;
    v.to_str().map_err(|_| SignatureError::Malformed {
        header: name.to_string(),
        why: "not visible ASCII",
    })
}

/// Whether the HMAC of `parts` under any key equals any signature (constant-time compare).
fn matches_any(
    keys: &[&[u8]],
    parts: &[&[u8]],
    signatures: &[Vec<u8>],
) -> Result<(), SignatureError> {
    for key in keys {
        let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
            continue;
        };
        for p in parts {
            mac.update(p);
        }
        for sig in signatures {
            if mac.clone().verify_slice(sig).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

fn within_tolerance(t: i64, now: i64, tolerance_sec: u64) -> Result<(), SignatureError> {
    let tolerance = i64::try_from(tolerance_sec).unwrap_or(i64::MAX);
    let age = now.saturating_sub(t);
    if age > tolerance {
        Err(SignatureError::Stale(age))
    } else if age.saturating_neg() > tolerance {
        Err(SignatureError::Future(age.saturating_neg()))
    } else {
        Ok(())
    }
}

/// The headers that sign one outgoing request (`map.to.sign`): what a receiver verifying with
/// [`verify`] (or any implementation of the scheme) accepts. `secrets` are as written
/// (`whsec_...` for Standard Webhooks); several secrets give several signatures where the
/// scheme carries more than one (Stripe, Standard Webhooks: a rotation), else the first is
/// used. `id` is the message id (Standard Webhooks' `webhook-id`), `timestamp` Unix seconds;
/// `body` the exact bytes sent. Pure: the clock and the secrets are arguments.
pub fn sign(
    scheme: &Scheme,
    secrets: &[&[u8]],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Vec<(String, String)>, SignatureError> {
    let first = *secrets.first().ok_or(SignatureError::NoSecret)?;
    let t = timestamp.to_string();
    Ok(match scheme {
        Scheme::Stripe => {
            let mut value = format!("t={t}");
            for s in secrets {
                value.push_str(",v1=");
                value.push_str(&hex::encode(hmac(s, &[t.as_bytes(), b".", body])));
            }
            vec![("Stripe-Signature".into(), value)]
        }
        Scheme::Github => vec![(
            "X-Hub-Signature-256".into(),
            format!("sha256={}", hex::encode(hmac(first, &[body]))),
        )],
        Scheme::StandardWebhooks => {
            let mut signatures = Vec::with_capacity(secrets.len());
            for s in secrets {
                let key = standard_webhooks_key(s).ok_or(SignatureError::NoSecret)?;
                let mac = hmac(&key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]);
                signatures.push(format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(mac)
                ));
            }
            vec![
                ("webhook-id".into(), id.to_string()),
                ("webhook-timestamp".into(), t),
                ("webhook-signature".into(), signatures.join(" ")),
            ]
        }
        Scheme::HmacSha256(spec) => {
            let mac = hmac(first, &[body]);
            let text = match spec.encoding {
                SigEncoding::Hex => hex::encode(mac),
                SigEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(mac),
            };
            vec![(spec.header.clone(), format!("{}{text}", spec.prefix))]
        }
    })
}

/// The headers [`sign`] adds, with every signature shown as `***` and the id and timestamp as
/// given (for `hms-sync test`: what would be sent, without the secret's fingerprint).
pub fn sign_masked(
    scheme: &Scheme,
    secrets: usize,
    id: &str,
    timestamp: &str,
) -> Vec<(String, String)> {
    let n = secrets.max(1);
    match scheme {
        Scheme::Stripe => vec![(
            "Stripe-Signature".into(),
            format!("t={timestamp}{}", ",v1=***".repeat(n)),
        )],
        Scheme::Github => vec![("X-Hub-Signature-256".into(), "sha256=***".into())],
        Scheme::StandardWebhooks => vec![
            ("webhook-id".into(), id.to_string()),
            ("webhook-timestamp".into(), timestamp.to_string()),
            ("webhook-signature".into(), vec!["v1,***"; n].join(" ")),
        ],
        Scheme::HmacSha256(spec) => vec![(spec.header.clone(), format!("{}***", spec.prefix))],
    }
}

/// Whether `secret` is usable as a Standard Webhooks secret (`whsec_` and base64).
pub fn is_standard_webhooks_secret(secret: &[u8]) -> bool {
    standard_webhooks_key(secret).is_some_and(|k| !k.is_empty())
}

/// HMAC-SHA256 of `parts` under `key` (any key length is valid for HMAC).
fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let Ok(mut m) = HmacSha256::new_from_slice(key) else {
        return Vec::new();
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// Signature helpers for tests and tools: what a sender would put in its headers.
pub mod sign {
    use super::*;

    fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        super::hmac(key, parts)
    }

    /// `Stripe-Signature` value for `body` at `t`.
    pub fn stripe(secret: &str, t: i64, body: &[u8]) -> String {
        let t = t.to_string();
        let sig = mac(secret.as_bytes(), &[t.as_bytes(), b".", body]);
        format!("t={t},v1={}", hex::encode(sig))
    }

    /// `X-Hub-Signature-256` value for `body`.
    pub fn github(secret: &str, body: &[u8]) -> String {
        format!("sha256={}", hex::encode(mac(secret.as_bytes(), &[body])))
    }

    /// `webhook-signature` value (one `v1,<base64>`) for `body`; `secret` is `whsec_<base64>`.
    pub fn standard_webhooks(secret: &str, id: &str, t: i64, body: &[u8]) -> String {
        let key = standard_webhooks_key(secret.as_bytes()).unwrap_or_default();
        let t = t.to_string();
        let sig = mac(&key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(sig)
        )
    }

    /// Plain HMAC-SHA256 of `body`, hex or base64.
    pub fn hmac_sha256(secret: &str, body: &[u8], encoding: SigEncoding) -> String {
        let sig = mac(secret.as_bytes(), &[body]);
        match encoding {
            SigEncoding::Hex => hex::encode(sig),
            SigEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(sig),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// name, headers, body, secrets, expected `reason`.
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a [u8],
        Vec<&'a str>,
        Result<(), &'a str>,
    );
    /// name, headers, body, secrets, now, expected `reason`.
    type TimedCase<'a, H> = (&'a str, H, &'a [u8], Vec<&'a str>, i64, Result<(), &'a str>);

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn check(
        scheme: &Scheme,
        h: &[(&str, &str)],
        body: &[u8],
        secrets: &[&str],
        now: i64,
    ) -> Result<(), SignatureError> {
        let s: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
        verify(scheme, 300, &headers(h), body, &s, now)
    }

    // GitHub's documented example ("Validating webhook deliveries").
    const GH_SECRET: &str = "It's a Secret to Everybody";
    const GH_BODY: &[u8] = b"Hello, World!";
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_documented_example() {
        let g = Scheme::Github;
        let h = [("X-Hub-Signature-256", GH_SIG)];
        let cases: Vec<Case> = vec![
            ("valid", h.to_vec(), GH_BODY, vec![GH_SECRET], Ok(())),
            (
                "tampered body",
                h.to_vec(),
                b"Hello, World?",
                vec![GH_SECRET],
                Err("bad_signature"),
            ),
            (
                "wrong secret",
                h.to_vec(),
                GH_BODY,
                vec!["not it"],
                Err("bad_signature"),
            ),
            (
                "rotation: old and new",
                h.to_vec(),
                GH_BODY,
                vec!["new secret", GH_SECRET],
                Ok(()),
            ),
            (
                "missing header",
                vec![],
                GH_BODY,
                vec![GH_SECRET],
                Err("missing_signature"),
            ),
            (
                "sha1 only",
                vec![("X-Hub-Signature", "sha1=abc")],
                GH_BODY,
                vec![GH_SECRET],
                Err("missing_signature"),
            ),
            (
                "no prefix",
                vec![("X-Hub-Signature-256", &GH_SIG[7..])],
                GH_BODY,
                vec![GH_SECRET],
                Err("bad_signature"),
            ),
            (
                "not hex",
                vec![("X-Hub-Signature-256", "sha256=zz")],
                GH_BODY,
                vec![GH_SECRET],
                Err("bad_signature"),
            ),
            ("no secret", h.to_vec(), GH_BODY, vec![], Err("no_secret")),
        ];
        for (name, h, body, secrets, want) in cases {
            let got = check(&g, &h, body, &secrets, 0).map_err(|e| e.reason());
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(sign::github(GH_SECRET, GH_BODY), GH_SIG);
    }

    // The Standard Webhooks specification's example (also in every reference library's tests).
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1614265330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn standard_webhooks_specification_example() {
        let s = Scheme::StandardWebhooks;
        let h = |sig: &'static str| {
            vec![
                ("webhook-id", SW_ID),
                ("webhook-timestamp", "1614265330"),
                ("webhook-signature", sig),
            ]
        };
        let other_secret = "whsec_dGhlIG90aGVyIG9uZQ==";
        let cases: Vec<TimedCase<Vec<(&str, &str)>>> = vec![
            ("valid", h(SW_SIG), SW_BODY, vec![SW_SECRET], SW_TS, Ok(())),
            (
                "several signatures, one valid",
                h("v1,bm9wZQ== v1a,abc v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
                SW_BODY,
                vec![SW_SECRET],
                SW_TS,
                Ok(()),
            ),
            (
                "secret without whsec_ prefix",
                h(SW_SIG),
                SW_BODY,
                vec!["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
                SW_TS,
                Ok(()),
            ),
            (
                "tampered body",
                h(SW_SIG),
                br#"{"test": 2432232315}"#,
                vec![SW_SECRET],
                SW_TS,
                Err("bad_signature"),
            ),
            (
                "wrong secret",
                h(SW_SIG),
                SW_BODY,
                vec![other_secret],
                SW_TS,
                Err("bad_signature"),
            ),
            (
                "rotation",
                h(SW_SIG),
                SW_BODY,
                vec![other_secret, SW_SECRET],
                SW_TS,
                Ok(()),
            ),
            (
                "stale",
                h(SW_SIG),
                SW_BODY,
                vec![SW_SECRET],
                SW_TS + 301,
                Err("timestamp"),
            ),
            (
                "future",
                h(SW_SIG),
                SW_BODY,
                vec![SW_SECRET],
                SW_TS - 301,
                Err("timestamp"),
            ),
            (
                "edge of tolerance",
                h(SW_SIG),
                SW_BODY,
                vec![SW_SECRET],
                SW_TS + 300,
                Ok(()),
            ),
            (
                "missing id",
                h(SW_SIG)[1..].to_vec(),
                SW_BODY,
                vec![SW_SECRET],
                SW_TS,
                Err("missing_signature"),
            ),
            (
                "missing signature",
                h(SW_SIG)[..2].to_vec(),
                SW_BODY,
                vec![SW_SECRET],
                SW_TS,
                Err("missing_signature"),
            ),
            (
                "secret not base64",
                h(SW_SIG),
                SW_BODY,
                vec!["whsec_***"],
                SW_TS,
                Err("no_secret"),
            ),
            (
                "svix-* names",
                vec![
                    ("svix-id", SW_ID),
                    ("svix-timestamp", "1614265330"),
                    ("svix-signature", SW_SIG),
                ],
                SW_BODY,
                vec![SW_SECRET],
                SW_TS,
                Ok(()),
            ),
        ];
        for (name, h, body, secrets, now, want) in cases {
            let got = check(&s, &h, body, &secrets, now).map_err(|e| e.reason());
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(
            sign::standard_webhooks(SW_SECRET, SW_ID, SW_TS, SW_BODY),
            SW_SIG
        );
    }

    // Stripe publishes no fixed test vector; this one was computed independently (Python's
    // hmac module) over `t.payload` with the secret as written, as Stripe's libraries do.
    const ST_SECRET: &str = "whsec_test_secret";
    const ST_BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"invoice.paid"}"#;
    const ST_SIG: &str = "dfb4777aaaec4ea29ff455dd4df7fe6b2ef71096ad3a93a158db7e100109ea91";
    const ST_T: i64 = 1_700_000_000;

    #[test]
    fn stripe_signature_header() {
        let s = Scheme::Stripe;
        let good = format!("t={ST_T},v1={ST_SIG}");
        let several = format!("t={ST_T},v1={},v1={ST_SIG},v0=abcd", "00".repeat(32));
        let no_t = format!("v1={ST_SIG}");
        let cases: Vec<TimedCase<String>> = vec![
            (
                "valid",
                good.clone(),
                ST_BODY,
                vec![ST_SECRET],
                ST_T,
                Ok(()),
            ),
            (
                "several v1",
                several,
                ST_BODY,
                vec![ST_SECRET],
                ST_T + 10,
                Ok(()),
            ),
            (
                "tampered body",
                good.clone(),
                br#"{"id":"evt_1","object":"event","type":"invoice.paid "}"#,
                vec![ST_SECRET],
                ST_T,
                Err("bad_signature"),
            ),
            (
                "wrong secret",
                good.clone(),
                ST_BODY,
                vec!["whsec_other"],
                ST_T,
                Err("bad_signature"),
            ),
            (
                "rotation",
                good.clone(),
                ST_BODY,
                vec!["whsec_new", ST_SECRET],
                ST_T,
                Ok(()),
            ),
            (
                "stale",
                good.clone(),
                ST_BODY,
                vec![ST_SECRET],
                ST_T + 301,
                Err("timestamp"),
            ),
            (
                "future",
                good.clone(),
                ST_BODY,
                vec![ST_SECRET],
                ST_T - 301,
                Err("timestamp"),
            ),
            (
                "timestamp changed (re-signing needed)",
                format!("t={},v1={ST_SIG}", ST_T + 1),
                ST_BODY,
                vec![ST_SECRET],
                ST_T,
                Err("bad_signature"),
            ),
            (
                "no t",
                no_t,
                ST_BODY,
                vec![ST_SECRET],
                ST_T,
                Err("bad_signature"),
            ),
            (
                "no v1",
                format!("t={ST_T},v0={ST_SIG}"),
                ST_BODY,
                vec![ST_SECRET],
                ST_T,
                Err("bad_signature"),
            ),
        ];
        for (name, header, body, secrets, now, want) in cases {
            let h = [("Stripe-Signature", header.as_str())];
            let got = check(&s, &h, body, &secrets, now).map_err(|e| e.reason());
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(
            check(&s, &[], ST_BODY, &[ST_SECRET], ST_T).map_err(|e| e.reason()),
            Err("missing_signature")
        );
        assert_eq!(sign::stripe(ST_SECRET, ST_T, ST_BODY), good);
    }

    #[test]
    fn generic_hmac_sha256() {
        // Computed independently (Python's hmac module).
        let body = ST_BODY;
        let b64 = "33Pbbdm2oLFjl2FynxctPJyzbm0rHYf9B8Iscs/hmU8=";
        let shopify = Scheme::HmacSha256(HmacSpec {
            header: "x-shopify-hmac-sha256".into(),
            encoding: SigEncoding::Base64,
            prefix: String::new(),
        });
        let secret = "shpss_secret";
        assert_eq!(
            check(
                &shopify,
                &[("X-Shopify-Hmac-Sha256", b64)],
                body,
                &[secret],
                0
            ),
            Ok(())
        );
        assert_eq!(sign::hmac_sha256(secret, body, SigEncoding::Base64), b64);
        assert_eq!(
            check(
                &shopify,
                &[("X-Shopify-Hmac-Sha256", b64)],
                b"{}",
                &[secret],
                0
            )
            .map_err(|e| e.reason()),
            Err("bad_signature")
        );
        assert_eq!(
            check(&shopify, &[], body, &[secret], 0).map_err(|e| e.reason()),
            Err("missing_signature")
        );
        let prefixed = Scheme::HmacSha256(HmacSpec {
            header: "x-signature".into(),
            encoding: SigEncoding::Hex,
            prefix: "sha256=".into(),
        });
        let hex_sig = format!(
            "sha256={}",
            sign::hmac_sha256(secret, body, SigEncoding::Hex)
        );
        assert_eq!(
            check(
                &prefixed,
                &[("X-Signature", &hex_sig)],
                body,
                &["old", secret],
                0
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &prefixed,
                &[("X-Signature", &hex_sig[7..])],
                body,
                &[secret],
                0
            )
            .map_err(|e| e.reason()),
            Err("bad_signature")
        );
    }

    #[test]
    fn what_sign_writes_verify_accepts_for_every_scheme() {
        let hmac_spec = |encoding, prefix: &str| {
            Scheme::HmacSha256(HmacSpec {
                header: "x-signature".into(),
                encoding,
                prefix: prefix.into(),
            })
        };
        let schemes = [
            (Scheme::Stripe, ST_SECRET),
            (Scheme::Github, GH_SECRET),
            (Scheme::StandardWebhooks, SW_SECRET),
            (hmac_spec(SigEncoding::Hex, "sha256="), "s3cret"),
            (hmac_spec(SigEncoding::Base64, ""), "s3cret"),
        ];
        let body = br#"{"permitId":"RW-481"}"#;
        for (scheme, secret) in schemes {
            let signed = sign(&scheme, &[secret.as_bytes()], "msg_1", ST_T, body).unwrap();
            let pairs: Vec<(&str, &str)> = signed
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let name = scheme.name();
            assert_eq!(
                check(&scheme, &pairs, body, &[secret], ST_T),
                Ok(()),
                "{name}"
            );
            assert_eq!(
                check(&scheme, &pairs, b"{}", &[secret], ST_T).map_err(|e| e.reason()),
                Err("bad_signature"),
                "{name}: tampered body"
            );
        }
    }

    #[test]
    fn standard_webhooks_signing_matches_the_specification_example() {
        let signed = sign(
            &Scheme::StandardWebhooks,
            &[SW_SECRET.as_bytes()],
            SW_ID,
            SW_TS,
            SW_BODY,
        )
        .unwrap();
        assert_eq!(
            signed,
            vec![
                ("webhook-id".to_string(), SW_ID.to_string()),
                ("webhook-timestamp".to_string(), SW_TS.to_string()),
                ("webhook-signature".to_string(), SW_SIG.to_string()),
            ]
        );
        // A rotation signs with both secrets; a receiver knowing either accepts.
        let other = "whsec_dGhlIG90aGVyIG9uZQ==";
        let both = sign(
            &Scheme::StandardWebhooks,
            &[other.as_bytes(), SW_SECRET.as_bytes()],
            SW_ID,
            SW_TS,
            SW_BODY,
        )
        .unwrap();
        assert!(both[2].1.ends_with(&format!(" {SW_SIG}")), "{both:?}");
        for secret in [other, SW_SECRET] {
            let h: Vec<(&str, &str)> = both.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(
                check(&Scheme::StandardWebhooks, &h, SW_BODY, &[secret], SW_TS),
                Ok(())
            );
        }
        for bad in ["whsec_***", "not base64!"] {
            assert_eq!(
                sign(
                    &Scheme::StandardWebhooks,
                    &[bad.as_bytes()],
                    SW_ID,
                    SW_TS,
                    SW_BODY
                ),
                Err(SignatureError::NoSecret),
                "{bad}"
            );
            assert!(!is_standard_webhooks_secret(bad.as_bytes()));
        }
        assert!(is_standard_webhooks_secret(SW_SECRET.as_bytes()));
        assert_eq!(
            sign(&Scheme::StandardWebhooks, &[], SW_ID, SW_TS, SW_BODY),
            Err(SignatureError::NoSecret)
        );
    }

    #[test]
    fn masked_signatures_show_no_fingerprint() {
        let m = sign_masked(&Scheme::StandardWebhooks, 2, "<key>", "<time>");
        assert_eq!(m[2], ("webhook-signature".into(), "v1,*** v1,***".into()));
        let h = Scheme::HmacSha256(HmacSpec {
            header: "x-signature".into(),
            encoding: SigEncoding::Hex,
            prefix: "sha256=".into(),
        });
        assert_eq!(
            sign_masked(&h, 1, "", ""),
            vec![("x-signature".into(), "sha256=***".into())]
        );
    }
}
