//! Outbound auth providers (`auth:`): the token requests they make, how answers become tokens and how a token goes on a request. Pure: fetching is the token actor's.
//!
//! The clock and every secret are arguments; nothing here reads the environment except through
//! [`Secrets::Env`], which the token actor uses when it is about to fetch.

use std::time::Duration;

use base64::Engine as _;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value as Json;

use crate::check::{AnswerView, Check};
use crate::template::{RenderError, Secrets, StringTemplate};
use crate::wire::Request;

/// A secret value whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: String) -> Self {
        SecretString(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// How an OAuth2 client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(id:secret)` (the RFC's recommendation; the default).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// Where the Google service account key comes from.
#[derive(Debug)]
pub enum KeySource {
    /// A JSON key file (already resolved against the connector file's folder).
    File(std::path::PathBuf),
    /// `${VAR}`: the variable holds the key JSON itself, or a path to it.
    Env(String),
}

/// One auth provider as declared.
#[derive(Debug)]
pub enum Provider {
    /// A static token (`${VAR}`), e.g. a Stripe secret key.
    Bearer { token: StringTemplate },
    /// OAuth2 client credentials grant (RFC 6749 §4.4).
    OAuth2 {
        token_url: String,
        client_id: StringTemplate,
        client_secret: StringTemplate,
        scopes: Vec<String>,
        client_auth: ClientAuth,
    },
    /// Google service account: an RS256 JWT assertion exchanged at the key's `token_uri`.
    Google {
        key: KeySource,
        scopes: Vec<String>,
        subject: Option<String>,
    },
    /// ArcGIS `generateToken` with a named user's username and password.
    ArcgisGenerate {
        url: String,
        username: StringTemplate,
        password: StringTemplate,
        referer: Option<String>,
        expiration_min: u32,
    },
    /// An ArcGIS API key, used as the token.
    ArcgisApiKey { key: StringTemplate },
}

/// A compiled `auth:` block.
#[derive(Debug)]
pub struct Auth {
    pub provider: Provider,
    /// Header the token goes in (default `Authorization`).
    pub header: HeaderName,
    /// Text before the token (default `Bearer `).
    pub prefix: String,
    /// When an answer means "token refused" (default: status 401).
    pub rejected_when: Option<Check>,
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A secret or key is missing or unusable: fixing it needs a person.
    #[error("{0}")]
    Config(String),
    /// The token endpoint refused (bad credentials, 4xx, an `error` answer).
    #[error("token endpoint refused: {0}")]
    Refused(String),
    /// The token endpoint could not be reached or failed (5xx, timeout): try again later.
    #[error("token endpoint unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    pub fn is_transient(&self) -> bool {
        matches!(self, AuthError::Unavailable(_))
    }
}

impl From<RenderError> for AuthError {
    fn from(e: RenderError) -> Self {
        AuthError::Config(e.to_string())
    }
}

/// A token as the token endpoint granted it.
#[derive(Debug, Clone)]
pub struct Granted {
    pub token: SecretString,
    pub lifetime: Duration,
}

/// Lifetime assumed when an endpoint does not say (`expires_in` absent).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

impl Auth {
    /// Short name of the provider (for messages and keys).
    pub fn kind(&self) -> &'static str {
        match &self.provider {
            Provider::Bearer { .. } => "bearer",
            Provider::OAuth2 { .. } => "oauth2-client-credentials",
            Provider::Google { .. } => "google-service-account",
            Provider::ArcgisGenerate { .. } | Provider::ArcgisApiKey { .. } => "arcgis-token",
        }
    }

    /// Whether tokens are fetched from a token endpoint (and so cached and refreshed).
    pub fn is_fetched(&self) -> bool {
        matches!(
            self.provider,
            Provider::OAuth2 { .. } | Provider::Google { .. } | Provider::ArcgisGenerate { .. }
        )
    }

    /// The key under which the token actor shares a token: provider, token URL and client
    /// id / user as written in the connector (templates unrendered: never a secret's value).
    pub fn cache_key(&self) -> String {
        match &self.provider {
            Provider::Bearer { token } => format!("bearer|{}", token.source()),
            Provider::ArcgisApiKey { key } => format!("arcgis-api-key|{}", key.source()),
            Provider::OAuth2 {
                token_url,
                client_id,
                scopes,
                ..
            } => format!(
                "oauth2|{token_url}|{}|{}",
                client_id.source(),
                scopes.join(" ")
            ),
            Provider::Google {
                key,
                scopes,
                subject,
            } => format!(
                "google|{}|{}|{}",
                match key {
                    KeySource::File(p) => p.display().to_string(),
                    KeySource::Env(v) => format!("${{{v}}}"),
                },
                scopes.join(" "),
                subject.as_deref().unwrap_or("")
            ),
            Provider::ArcgisGenerate {
                url,
                username,
                referer,
                ..
            } => format!(
                "arcgis|{url}|{}|{}",
                username.source(),
                referer.as_deref().unwrap_or("")
            ),
        }
    }

    /// Names of the `${VAR}` secrets it reads.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |t: &StringTemplate| out.extend(t.secrets().map(str::to_string));
        match &self.provider {
            Provider::Bearer { token } => add(token),
            Provider::ArcgisApiKey { key } => add(key),
            Provider::OAuth2 {
                client_id,
                client_secret,
                ..
            } => {
                add(client_id);
                add(client_secret);
            }
            Provider::ArcgisGenerate {
                username, password, ..
            } => {
                add(username);
                add(password);
            }
            Provider::Google { key, .. } => {
                if let KeySource::Env(v) = key {
                    out.push(v.clone());
                }
            }
        }
        out
    }

    /// A static provider's token (bearer, API key); `None` for fetched providers.
    pub fn static_token(&self, secrets: Secrets) -> Option<Result<SecretString, AuthError>> {
        let t = match &self.provider {
            Provider::Bearer { token } => token,
            Provider::ArcgisApiKey { key } => key,
            _ => return None,
        };
        Some(
            t.render_text(&Json::Null, secrets)
                .map(SecretString::new)
                .map_err(AuthError::from),
        )
    }

    /// Puts the token on a request (replacing any header of the same name); an ArcGIS token
    /// generated for a referer also sends that `Referer`, as generateToken requires.
    pub fn apply(&self, req: &mut Request, token: &str) -> Result<(), AuthError> {
        let value = HeaderValue::from_str(&format!("{}{token}", self.prefix))
            .map_err(|_| AuthError::Config("the token is not a valid header value".into()))?;
        let mut value = value;
        value.set_sensitive(true);
        req.headers.retain(|(n, _)| *n != self.header);
        req.headers.push((self.header.clone(), value));
        if let Provider::ArcgisGenerate {
            referer: Some(r), ..
        } = &self.provider
        {
            if let Ok(v) = HeaderValue::from_str(r) {
                req.headers.retain(|(n, _)| *n != http::header::REFERER);
                req.headers.push((http::header::REFERER, v));
            }
        }
        Ok(())
    }

    /// Whether an answer says the token was refused (then: one refresh, one immediate retry).
    pub fn rejected(&self, a: AnswerView<'_>) -> bool {
        match &self.rejected_when {
            Some(c) => c.holds(a).unwrap_or(false),
            None => match self.provider {
                // ArcGIS answers an invalid or expired token with HTTP 200 and
                // {"error":{"code":498|499}} (REST API "Error codes" page).
                Provider::ArcgisGenerate { .. } => {
                    a.status == 401
                        || a.status == 498
                        || a.status == 499
                        || matches!(
                            a.body.pointer("/error/code").and_then(Json::as_i64),
                            Some(498 | 499)
                        )
                }
                _ => a.status == 401,
            },
        }
    }

    /// The request that fetches a token. `key_json`: the Google key (read by the caller);
    /// `now_unix`: seconds since the epoch (JWT `iat`).
    pub fn token_request(
        &self,
        secrets: Secrets,
        key_json: Option<&str>,
        now_unix: u64,
    ) -> Result<Request, AuthError> {
        let form = |pairs: &[(&str, &str)]| -> Vec<u8> {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
                .into_bytes()
        };
        let form_type = HeaderValue::from_static("application/x-www-form-urlencoded");
        match &self.provider {
            Provider::Bearer { .. } | Provider::ArcgisApiKey { .. } => Err(AuthError::Config(
                "a static token is not fetched".to_string(),
            )),
            Provider::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scopes,
                client_auth,
            } => {
                let id = client_id.render_text(&Json::Null, secrets)?;
                let secret = client_secret.render_text(&Json::Null, secrets)?;
                let scope = scopes.join(" ");
                let mut pairs = vec![("grant_type", "client_credentials")];
                if !scope.is_empty() {
                    pairs.push(("scope", &scope));
                }
                let mut headers = vec![(CONTENT_TYPE, form_type)];
                match client_auth {
                    ClientAuth::Basic => {
                        // RFC 6749 §2.3.1: form-urlencode id and secret before Basic.
                        let enc = |s: &str| {
                            form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                        };
                        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                            "{}:{}",
                            enc(&id),
                            enc(&secret)
                        ));
                        let mut v = HeaderValue::from_str(&format!("Basic {basic}"))
                            .map_err(|_| AuthError::Config("bad client credentials".into()))?;
                        v.set_sensitive(true);
                        headers.push((AUTHORIZATION, v));
                    }
                    ClientAuth::Body => {
                        pairs.push(("client_id", &id));
                        pairs.push(("client_secret", &secret));
                    }
                }
                Ok(Request {
                    method: http::Method::POST,
                    url: token_url.clone(),
                    headers,
                    body: Some(form(&pairs)),
                })
            }
            Provider::Google {
                scopes, subject, ..
            } => {
                let key =
                    key_json.ok_or_else(|| AuthError::Config("no service account key".into()))?;
                let key = ServiceAccountKey::parse(key)?;
                let jwt = google_assertion(&key, scopes, subject.as_deref(), now_unix)?;
                Ok(Request {
                    method: http::Method::POST,
                    url: key.token_uri.clone(),
                    headers: vec![(CONTENT_TYPE, form_type)],
                    body: Some(form(&[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", &jwt),
                    ])),
                })
            }
            Provider::ArcgisGenerate {
                url,
                username,
                password,
                referer,
                expiration_min,
            } => {
                let user = username.render_text(&Json::Null, secrets)?;
                let pass = password.render_text(&Json::Null, secrets)?;
                let expiration = expiration_min.to_string();
                let mut pairs = vec![
                    ("username", user.as_str()),
                    ("password", pass.as_str()),
                    ("expiration", expiration.as_str()),
                    ("f", "json"),
                ];
                match referer {
                    Some(r) => {
                        pairs.push(("client", "referer"));
                        pairs.push(("referer", r));
                    }
                    None => pairs.push(("client", "requestip")),
                }
                Ok(Request {
                    method: http::Method::POST,
                    url: url.clone(),
                    headers: vec![(CONTENT_TYPE, form_type)],
                    body: Some(form(&pairs)),
                })
            }
        }
    }

    /// Turns the token endpoint's answer into a token. `now_ms`: milliseconds since the epoch
    /// (ArcGIS answers an absolute `expires`).
    pub fn parse_answer(
        &self,
        status: u16,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Granted, AuthError> {
        let json: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
        let snippet = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        if !(200..300).contains(&status) {
            let what = match (json.get("error"), json.get("error_description")) {
                (Some(Json::String(e)), Some(Json::String(d))) => format!("{e}: {d}"),
                (Some(Json::String(e)), _) => e.clone(),
                _ => snippet(),
            };
            let msg = format!("HTTP {status}: {what}");
            return Err(if status == 408 || status == 429 || status >= 500 {
                AuthError::Unavailable(msg)
            } else {
                AuthError::Refused(msg)
            });
        }
        if let Provider::ArcgisGenerate { .. } = self.provider {
            if let Some(err) = json.get("error") {
                let code = err.get("code").and_then(Json::as_i64).unwrap_or(0);
                let msg = format!(
                    "ArcGIS error {code}: {} {}",
                    err.get("message").and_then(Json::as_str).unwrap_or(""),
                    err.get("details")
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                );
                return Err(if code >= 500 {
                    AuthError::Unavailable(msg)
                } else {
                    AuthError::Refused(msg)
                });
            }
            let token = json
                .get("token")
                .and_then(Json::as_str)
                .ok_or_else(|| AuthError::Refused("answer without `token`".into()))?;
            let lifetime = json
                .get("expires")
                .and_then(Json::as_u64)
                .map(|e| Duration::from_millis(e.saturating_sub(now_ms)))
                .unwrap_or(DEFAULT_LIFETIME);
            return Ok(Granted {
                token: SecretString::new(token.to_string()),
                lifetime,
            });
        }
        let token = json
            .get("access_token")
            .and_then(Json::as_str)
            .ok_or_else(|| AuthError::Refused("answer without `access_token`".into()))?;
        let lifetime = json
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(Granted {
            token: SecretString::new(token.to_string()),
            lifetime,
        })
    }
}

/// When to fetch a new token: at 80 % of its lifetime, or 60 s before it expires if that is
/// sooner.
pub fn refresh_after(lifetime: Duration) -> Duration {
    let at80 = lifetime.mul_f64(0.8);
    match lifetime.checked_sub(Duration::from_secs(60)) {
        Some(d) if !d.is_zero() => at80.min(d),
        _ => at80,
    }
}

/// The fields of a Google service account JSON key that signing needs.
#[derive(serde::Deserialize)]
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key: SecretPem,
    #[serde(default)]
    pub private_key_id: Option<String>,
    #[serde(default = "google_token_uri")]
    pub token_uri: String,
}

/// A PEM private key that never prints.
#[derive(serde::Deserialize)]
#[serde(transparent)]
pub struct SecretPem(String);

fn google_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

impl ServiceAccountKey {
    pub fn parse(text: &str) -> Result<ServiceAccountKey, AuthError> {
        serde_json::from_str(text).map_err(|e| {
            AuthError::Config(format!(
                "the service account key is not a Google JSON key ({})",
                e.to_string().split(" at line").next().unwrap_or("")
            ))
        })
    }
}

#[derive(serde::Serialize)]
struct GoogleClaims<'a> {
    iss: &'a str,
    scope: String,
    aud: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
}

/// The signed JWT assertion of Google's server-to-server OAuth flow: RS256, `iss` the
/// service account, `scope` space-separated, `aud` the token URI, one hour at most.
pub fn google_assertion(
    key: &ServiceAccountKey,
    scopes: &[String],
    subject: Option<&str>,
    now_unix: u64,
) -> Result<String, AuthError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = key.private_key_id.clone();
    let claims = GoogleClaims {
        iss: &key.client_email,
        scope: scopes.join(" "),
        aud: &key.token_uri,
        iat: now_unix,
        exp: now_unix + 3600,
        sub: subject,
    };
    let signing = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.0.as_bytes())
        .map_err(|e| AuthError::Config(format!("the service account private key: {e}")))?;
    jsonwebtoken::encode(&header, &claims, &signing)
        .map_err(|e| AuthError::Config(format!("cannot sign the JWT: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Flavor;

    fn t(s: &str) -> StringTemplate {
        StringTemplate::compile(s, Flavor::Text).unwrap()
    }

    fn auth(provider: Provider) -> Auth {
        Auth {
            provider,
            header: AUTHORIZATION,
            prefix: "Bearer ".into(),
            rejected_when: None,
        }
    }

    #[test]
    fn refresh_before_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(200)),
            Duration::from_secs(140)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(2)),
            Duration::from_millis(1600)
        );
    }

    #[test]
    fn oauth2_token_request_uses_basic_auth_and_the_form() {
        let a = auth(Provider::OAuth2 {
            token_url: "https://login.example/token".into(),
            client_id: t("my id"),
            client_secret: t("s&cret"),
            scopes: vec!["a".into(), "b".into()],
            client_auth: ClientAuth::Basic,
        });
        let r = a.token_request(Secrets::Masked, None, 0).unwrap();
        assert_eq!(
            String::from_utf8(r.body.unwrap()).unwrap(),
            "grant_type=client_credentials&scope=a+b"
        );
        let basic = r.headers.iter().find(|(n, _)| *n == AUTHORIZATION).unwrap();
        let want = base64::engine::general_purpose::STANDARD.encode("my+id:s%26cret");
        assert_eq!(basic.1.to_str().unwrap(), format!("Basic {want}"));
        assert!(format!("{:?}", a.cache_key()).contains("my id"));
        assert!(!a.cache_key().contains("s&cret"));
    }

    #[test]
    fn answers_become_tokens_or_errors() {
        let a = auth(Provider::OAuth2 {
            token_url: "x".into(),
            client_id: t("i"),
            client_secret: t("s"),
            scopes: vec![],
            client_auth: ClientAuth::Body,
        });
        let g = a
            .parse_answer(
                200,
                br#"{"access_token":"tok","expires_in":120,"token_type":"Bearer"}"#,
                0,
            )
            .unwrap();
        assert_eq!(g.token.expose(), "tok");
        assert_eq!(g.lifetime, Duration::from_secs(120));
        assert_eq!(format!("{:?}", g.token), "***");
        assert!(matches!(
            a.parse_answer(400, br#"{"error":"invalid_client"}"#, 0),
            Err(AuthError::Refused(m)) if m.contains("invalid_client")
        ));
        assert!(a.parse_answer(503, b"", 0).unwrap_err().is_transient());

        let arc = auth(Provider::ArcgisGenerate {
            url: "x".into(),
            username: t("u"),
            password: t("p"),
            referer: Some("https://hms.example".into()),
            expiration_min: 60,
        });
        let g = arc
            .parse_answer(
                200,
                br#"{"token":"arc","expires":1000060000,"ssl":true}"#,
                1_000_000_000,
            )
            .unwrap();
        assert_eq!(g.lifetime, Duration::from_secs(60));
        let e = arc
            .parse_answer(
                200,
                br#"{"error":{"code":400,"message":"Unable to generate token.","details":["Invalid username or password."]}}"#,
                0,
            )
            .unwrap_err();
        assert!(matches!(e, AuthError::Refused(m) if m.contains("Invalid username")));
        let body = serde_json::json!({"error": {"code": 498, "message": "Invalid token."}});
        assert!(arc.rejected(AnswerView {
            status: 200,
            headers: &[],
            body: &body
        }));
    }

    #[test]
    fn google_assertion_verifies_with_the_public_key() {
        let pem = include_str!("../tests/fixtures/test-service-account.key.pem");
        let key_json = serde_json::json!({
            "type": "service_account", "client_email": "sync@p.iam.gserviceaccount.com",
            "private_key": pem, "private_key_id": "k1",
            "token_uri": "https://oauth2.googleapis.com/token"
        })
        .to_string();
        let a = auth(Provider::Google {
            key: KeySource::Env("X".into()),
            scopes: vec!["https://www.googleapis.com/auth/calendar.events".into()],
            subject: None,
        });
        let r = a
            .token_request(Secrets::Masked, Some(&key_json), 1_700_000_000)
            .unwrap();
        let body = String::from_utf8(r.body.unwrap()).unwrap();
        let assertion = form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "assertion")
            .unwrap()
            .1
            .into_owned();
        let public = include_str!("../tests/fixtures/test-service-account.pub.pem");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.validate_exp = false;
        v.set_audience(&["https://oauth2.googleapis.com/token"]);
        let data = jsonwebtoken::decode::<Json>(
            &assertion,
            &jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["iss"], "sync@p.iam.gserviceaccount.com");
        assert_eq!(data.claims["exp"], 1_700_003_600u64);
        assert_eq!(data.header.kid.as_deref(), Some("k1"));
    }
}
