//! The only module that sends HTTP: one shared reqwest client per client certificate
//! (keep-alive, timeouts), with the process's trusted roots, proxy and outbound address policy.
//!
//! **Architecture invariant:** every outbound call (targets, lookups, token endpoints) goes
//! through [`HttpClient::exchange_on`], which checks the address policy before any connection
//! and again on every address a name resolves to, at connect time (a custom resolver).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::{resolve_vars, OutboundConfig};
use crate::outcome::{parse_retry_after, Outcome};
use crate::policy::{AddressPolicy, Denied, NoProxy};
use crate::tls::{self, ClientIdentity};
use crate::wire::Request;

/// Bytes of a response body kept for parked jobs and logs.
pub const BODY_SNIPPET: usize = 2048;

/// The answer to one attempt.
#[derive(Debug, Clone)]
pub struct Answer {
    pub outcome: Outcome,
    /// Reason phrase (`OK`), or the error text when there was no answer.
    pub reason: String,
    /// The start of the response body (lossy UTF-8, at most [`BODY_SNIPPET`] bytes).
    pub body: String,
}

/// Why the HTTP client could not be built, or a tool's request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP client: {0}")]
    Build(String),
    #[error("{0}")]
    Transport(String),
    #[error("answered {0}")]
    Status(String),
    #[error("answer is not JSON: {0}")]
    NotJson(String),
}

/// Which proxy a target goes through: `outbound.proxy`, else `HTTPS_PROXY` / `HTTP_PROXY`;
/// hosts of `outbound.noProxy` (else `NO_PROXY`) go straight.
#[derive(Clone, Default)]
pub struct ProxyRules {
    https: Option<reqwest::Url>,
    http: Option<reqwest::Url>,
    no_proxy: NoProxy,
}

impl std::fmt::Debug for ProxyRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ProxyRules(https: {:?}, http: {:?})",
            self.https.as_ref().map(shown_proxy),
            self.http.as_ref().map(shown_proxy)
        )
    }
}

/// A proxy URL without its credentials.
fn shown_proxy(u: &reqwest::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

impl ProxyRules {
    /// The proxy for `url`, if it goes through one.
    pub fn for_url(&self, url: &reqwest::Url) -> Option<&reqwest::Url> {
        let proxy = match url.scheme() {
            "https" => self.https.as_ref(),
            _ => self.http.as_ref(),
        }?;
        let host = url.host_str()?;
        (!self.no_proxy.bypasses(host)).then_some(proxy)
    }

    /// Host names of the proxies (the resolver lets them through: the operator chose them).
    fn hosts(&self) -> Vec<String> {
        [&self.https, &self.http]
            .into_iter()
            .flatten()
            .filter_map(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
            .collect()
    }
}

/// How outbound calls leave the process: trusted roots, proxy, address policy.
#[derive(Clone)]
pub struct Outbound {
    roots: Arc<rustls::RootCertStore>,
    proxy: ProxyRules,
    policy: Arc<AddressPolicy>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbound({} roots, {:?})", self.roots.len(), self.proxy)
    }
}

impl Outbound {
    /// From the runtime config's `outbound` block; `env` reads `${VAR}` (in the proxy URL) and
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` when the config sets no proxy.
    pub fn from_config(
        cfg: &OutboundConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Outbound, HttpError> {
        let extra: Vec<&std::path::Path> = cfg.ca_file.iter().map(|p| p.as_path()).collect();
        let roots = tls::root_store(&extra).map_err(|e| HttpError::Build(e.to_string()))?;
        let parse_proxy = |raw: &str, what: &str| -> Result<reqwest::Url, HttpError> {
            let url = reqwest::Url::parse(raw)
                .map_err(|e| HttpError::Build(format!("{what}: not a valid proxy URL ({e})")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(HttpError::Build(format!(
                    "{what}: expected http://host:port"
                )));
            }
            Ok(url)
        };
        let env_any = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
        let proxy = match &cfg.proxy {
            Some(p) => {
                let raw = resolve_vars(p, "outbound.proxy", env).map_err(HttpError::Build)?;
                let u = parse_proxy(&raw, "outbound.proxy")?;
                ProxyRules {
                    https: Some(u.clone()),
                    http: Some(u),
                    no_proxy: NoProxy::default(),
                }
            }
            None => ProxyRules {
                https: env_any(&["HTTPS_PROXY", "https_proxy"])
                    .map(|v| parse_proxy(&v, "HTTPS_PROXY"))
                    .transpose()?,
                http: env_any(&["HTTP_PROXY", "http_proxy"])
                    .map(|v| parse_proxy(&v, "HTTP_PROXY"))
                    .transpose()?,
                no_proxy: NoProxy::default(),
            },
        };
        let no_proxy = match &cfg.no_proxy {
            Some(list) => NoProxy::parse(&list.join(",")),
            None => NoProxy::parse(&env_any(&["NO_PROXY", "no_proxy"]).unwrap_or_default()),
        };
        let policy = AddressPolicy::new(&cfg.deny, cfg.allow.as_deref())
            .map_err(|e| HttpError::Build(format!("outbound: {}", e.join("; "))))?;
        Ok(Outbound {
            roots: Arc::new(roots),
            proxy: ProxyRules { no_proxy, ..proxy },
            policy: Arc::new(policy),
        })
    }

    /// The defaults: the system's roots, the environment's proxy, the built-in deny list.
    pub fn from_env() -> Result<Outbound, HttpError> {
        Outbound::from_config(&OutboundConfig::default(), &|n| std::env::var(n).ok())
    }

    /// The address policy in force.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }
}

/// Resolves names for reqwest and refuses any name that resolves to an address the policy
/// denies (so a name that changes its answer between checks is caught where it connects).
struct PolicyResolver {
    policy: Arc<AddressPolicy>,
    /// Proxy hosts: resolved without the policy.
    exempt: Vec<String>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let policy = self.policy.clone();
        let exempt = self.exempt.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !exempt {
                let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
                policy.check(&host, &ips)?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// One client for the whole process (and one more per client certificate in use).
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    outbound: Arc<Outbound>,
    /// Clients presenting a client certificate, by identity.
    by_identity: Arc<Mutex<HashMap<[u8; 32], reqwest::Client>>>,
}

impl HttpClient {
    /// A client with the defaults ([`Outbound::from_env`]): for tools.
    pub fn new() -> Result<HttpClient, HttpError> {
        HttpClient::with_outbound(Outbound::from_env()?)
    }

    /// A client for the runtime: the config's roots, proxy and address policy.
    pub fn with_outbound(outbound: Outbound) -> Result<HttpClient, HttpError> {
        install_crypto();
        let client = build_client(&outbound, None)?;
        Ok(HttpClient {
            client,
            outbound: Arc::new(outbound),
            by_identity: Arc::default(),
        })
    }

    /// The same client, presenting `identity` to servers that ask for a client certificate
    /// (one reqwest client per identity, built once).
    pub fn with_identity(&self, identity: &ClientIdentity) -> Result<HttpClient, HttpError> {
        let mut map = self
            .by_identity
            .lock()
            .map_err(|_| HttpError::Build("client table poisoned".into()))?;
        let client = match map.get(&identity.fingerprint) {
            Some(c) => c.clone(),
            None => {
                let c = build_client(&self.outbound, Some(identity))?;
                map.insert(identity.fingerprint, c.clone());
                c
            }
        };
        Ok(HttpClient {
            client,
            outbound: self.outbound.clone(),
            by_identity: self.by_identity.clone(),
        })
    }

    /// The outbound settings in force.
    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// Sends `req`; never fails: every failure is an [`Outcome`].
    pub async fn send(&self, req: Request, timeout: Duration) -> Answer {
        self.exchange(req, timeout).await.answer
    }
    /// Sends `req` and keeps the answer's headers and body (at most [`MAX_BODY`] bytes), for
    /// response checks, lookups and token endpoints. Never fails: every failure is an
    /// [`Outcome`].
    pub async fn exchange(&self, req: Request, timeout: Duration) -> Exchange {
        self.exchange_on(req, None, timeout).await
    }

    /// Like [`HttpClient::exchange`]; `base` (the URL's fixed `scheme://authority`, parsed once)
    /// spares parsing the host of every request again.
    pub async fn exchange_on(
        &self,
        req: Request,
        base: Option<&UrlBase>,
        timeout: Duration,
    ) -> Exchange {
        let url = match base.and_then(|b| b.join(&req.url)) {
            Some(url) => url,
            None => match reqwest::Url::parse(&req.url) {
                Ok(u) => u,
                Err(e) => {
                    return Exchange::failed(Answer {
                        outcome: Outcome::Invalid(format!("the URL is not valid ({e})")),
                        reason: "invalid URL".into(),
                        body: String::new(),
                    })
                }
            },
        };
        if let Err(denied) = self.precheck(&url).await {
            return Exchange::failed(refused(&denied));
        }
        // The request built directly (what the builder does, without its per-header checks).
        let mut request = reqwest::Request::new(req.method, url);
        *request.timeout_mut() = Some(timeout);
        let headers = request.headers_mut();
        headers.reserve(req.headers.len());
        for (name, value) in req.headers {
            headers.append(name, value);
        }
        if let Some(body) = req.body {
            *request.body_mut() = Some(body.into());
        }
        match self.client.execute(request).await {
            Ok(mut resp) => {
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let headers = std::mem::take(resp.headers_mut());
                let reason = status.canonical_reason().unwrap_or("").to_string();
                let (body, cut) = read_bounded(&mut resp).await;
                if let Some(cut) = cut {
                    // The answer broke off, or did not end in time: no answer to judge. The
                    // first bytes go to the parked job.
                    let (outcome, why) = match cut {
                        Cut::Timeout => (
                            Outcome::Timeout,
                            format!(
                                "timeout after {} ms while reading the answer (HTTP {}, {} bytes read)",
                                timeout.as_millis(),
                                status.as_u16(),
                                body.len()
                            ),
                        ),
                        Cut::Broken(e) => {
                            let why = format!(
                                "the answer broke off (HTTP {}, {} bytes read): {e}",
                                status.as_u16(),
                                body.len()
                            );
                            (Outcome::Connect(why.clone()), why)
                        }
                    };
                    return Exchange {
                        answer: Answer {
                            outcome,
                            reason: why,
                            body: snippet(&body),
                        },
                        headers,
                        body,
                    };
                }
                let snippet = if status.is_success() {
                    String::new()
                } else {
                    snippet(&body)
                };
                Exchange {
                    answer: Answer {
                        outcome: Outcome::Status {
                            code: status.as_u16(),
                            retry_after,
                        },
                        reason,
                        body: snippet,
                    },
                    headers,
                    body,
                }
            }
            Err(e) if e.is_timeout() => Exchange::failed(Answer {
                outcome: Outcome::Timeout,
                reason: format!("timeout after {} ms", timeout.as_millis()),
                body: String::new(),
            }),
            Err(e) => {
                if let Some(denied) = find_denied(&e) {
                    return Exchange::failed(refused(denied));
                }
                let text = connect_error_text(&e);
                Exchange::failed(Answer {
                    outcome: Outcome::Connect(text.clone()),
                    reason: text,
                    body: String::new(),
                })
            }
        }
    }

    /// The policy checks that come before any connection: the host as written (an IP address
    /// the policy refuses, a denied name) and, when the request goes through a proxy (which
    /// resolves the name itself), the addresses the name resolves to here, when it does.
    async fn precheck(&self, url: &reqwest::Url) -> Result<(), Denied> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let policy = &self.outbound.policy;
        let is_ip = policy.check_host(host)?;
        if is_ip || self.outbound.proxy.for_url(url).is_none() {
            // Direct: the resolver checks every address at connect time.
            return Ok(());
        }
        let lookup = tokio::net::lookup_host((host, 0));
        if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(2), lookup).await {
            let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            if !ips.is_empty() {
                policy.check(host, &ips)?;
                return Ok(());
            }
        }
        // Not resolvable here: the proxy resolves it. The name rules apply; an allow list
        // passes it only by name (its networks cannot be checked without an address).
        policy.check(host, &[])
    }
}

/// A refused call: permanent (parked at once), no connection opened.
fn refused(denied: &Denied) -> Answer {
    Answer {
        outcome: Outcome::Rejected {
            reason: "address_policy",
            transient: false,
            message: denied.to_string(),
        },
        reason: denied.to_string(),
        body: String::new(),
    }
}

/// The policy's refusal somewhere in an error's chain (raised by the resolver).
fn find_denied<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Denied> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(d) = x.downcast_ref::<Denied>() {
            return Some(d);
        }
        cur = x.source();
    }
    None
}

/// Why a request got no answer: a TLS failure in plain words, else the error chain.
fn connect_error_text(e: &reqwest::Error) -> String {
    match tls::explain(e) {
        Some(why) => why,
        None => reqwest_error_text(e),
    }
}

/// A reqwest error's chain without the URL reqwest puts in its text (a URL may hold a secret
/// in its query or path, and the request's URL is shown masked elsewhere).
fn reqwest_error_text(e: &reqwest::Error) -> String {
    let text = error_chain(e);
    match e.url() {
        Some(u) => text.replace(&format!(" for url ({u})"), ""),
        None => text,
    }
}

/// A reqwest client with `outbound`'s roots, proxy and resolver, presenting `identity`.
fn build_client(
    outbound: &Outbound,
    identity: Option<&ClientIdentity>,
) -> Result<reqwest::Client, HttpError> {
    let tls = tls::client_config(outbound.roots.clone(), identity)
        .map_err(|e| HttpError::Build(e.to_string()))?;
    let rules = outbound.proxy.clone();
    let exempt = rules.hosts();
    let builder = if exempt.is_empty() && rules.https.is_none() && rules.http.is_none() {
        // No proxy at all: reqwest then skips its per-request proxy match (which parses the
        // URL again).
        reqwest::Client::builder().no_proxy()
    } else {
        reqwest::Client::builder().proxy(reqwest::Proxy::custom(move |url| {
            rules.for_url(url).cloned()
        }))
    };
    builder
        .user_agent(concat!("hms-sync/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls)
        .dns_resolver(PolicyResolver {
            policy: outbound.policy.clone(),
            exempt,
        })
        .build()
        .map_err(|e| HttpError::Build(e.to_string()))
}

/// A URL template's fixed `scheme://authority` part, parsed once.
#[derive(Debug, Clone)]
pub struct UrlBase {
    prefix: String,
    base: reqwest::Url,
}

impl UrlBase {
    /// `prefix`: `scheme://authority` without a path (`https://gis.example:8443`).
    pub fn new(prefix: &str) -> Option<UrlBase> {
        let base = reqwest::Url::parse(prefix).ok()?;
        (base.path() == "/" && base.query().is_none() && !prefix.ends_with('/')).then(|| UrlBase {
            prefix: prefix.to_string(),
            base,
        })
    }

    /// `full` parsed, when it starts with this base followed by an absolute path (only its
    /// path and query are parsed): the same URL `Url::parse(full)` gives. `None` when it does
    /// not fit (the caller parses it whole), notably for `//` or `/\` after the authority,
    /// which a relative parse would read as another host.
    pub fn join(&self, full: &str) -> Option<reqwest::Url> {
        let rest = full.strip_prefix(&self.prefix)?;
        let b = rest.as_bytes();
        if b.first() != Some(&b'/') || matches!(b.get(1), Some(b'/' | b'\\')) {
            return None;
        }
        reqwest::Url::options()
            .base_url(Some(&self.base))
            .parse(rest)
            .ok()
    }
}

/// Largest answer body read and kept by [`HttpClient::exchange`]; reading stops there (the
/// connection is then not reused).
pub const MAX_BODY: usize = 1 << 20;

/// Why reading an answer's body stopped before its end.
enum Cut {
    /// The request's timeout passed (it covers the whole exchange, body included).
    Timeout,
    /// The connection failed (reset, closed early, a malformed chunk).
    Broken(String),
}

/// Reads an answer's body: to its end, or its first [`MAX_BODY`] bytes when it is longer (the
/// rest is not read: an endless or huge answer costs at most that), within the request's
/// timeout. `Some(cut)` when it stopped short for another reason.
async fn read_bounded(resp: &mut reqwest::Response) -> (Vec<u8>, Option<Cut>) {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(None) => return (body, None),
            Ok(Some(chunk)) => {
                let room = MAX_BODY - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() >= room {
                    // Enough: what follows is not read.
                    return (body, None);
                }
            }
            Err(e) if e.is_timeout() => return (body, Some(Cut::Timeout)),
            Err(e) => return (body, Some(Cut::Broken(reqwest_error_text(&e)))),
        }
    }
}

/// The start of a body as text (lossy UTF-8, at most [`BODY_SNIPPET`] bytes).
pub fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(BODY_SNIPPET)]).into_owned()
}

/// An answer with its headers and body.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub answer: Answer,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Exchange {
    fn failed(answer: Answer) -> Exchange {
        Exchange {
            answer,
            headers: http::HeaderMap::new(),
            body: vec![],
        }
    }

    /// The status code, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self.answer.outcome {
            Outcome::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// rustls needs one process-wide crypto provider (ring, as async-nats uses).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Tools asking a running `hms-sync up` over its HTTP server (`status`).
impl HttpClient {
    /// GETs `url` and parses the answer as JSON; any failure (no answer, not 2xx, not JSON)
    /// is an error text.
    pub async fn get_json(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, HttpError> {
        self.get_json_authorized(url, timeout, None).await
    }

    /// [`HttpClient::get_json`] with `Authorization: Bearer <token>` when a token is given
    /// (the admin side of a running `up`).
    pub async fn get_json_authorized(
        &self,
        url: &str,
        timeout: Duration,
        token: Option<&crate::auth::SecretString>,
    ) -> Result<serde_json::Value, HttpError> {
        let mut req = self.client.get(url).timeout(timeout);
        if let Some(t) = token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| HttpError::Transport(reqwest_error_text(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(HttpError::Status(status.to_string()));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| HttpError::Transport(reqwest_error_text(&e)))?;
        serde_json::from_slice(&bytes).map_err(|e| HttpError::NotJson(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::{Outbound, UrlBase};
    use crate::config::OutboundConfig;

    #[test]
    fn the_proxy_comes_from_the_config_else_from_the_environment() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let env = |n: &str| match n {
            "HTTPS_PROXY" => Some("http://env-proxy:3128".to_string()),
            "http_proxy" => Some("http://plain-proxy:8080".to_string()),
            "NO_PROXY" => Some("localhost,.agency.internal,10.0.0.0/8".to_string()),
            "PROXY_PW" => Some("pw".to_string()),
            _ => None,
        };
        let o = Outbound::from_config(&OutboundConfig::default(), &env).unwrap();
        let via = |u: &str| {
            o.proxy
                .for_url(&url(u))
                .map(|p| p.host_str().unwrap().to_string())
        };
        assert_eq!(
            via("https://api.stripe.com/x").as_deref(),
            Some("env-proxy")
        );
        assert_eq!(
            via("http://api.stripe.com/x").as_deref(),
            Some("plain-proxy")
        );
        assert_eq!(via("https://gis.agency.internal/x"), None);
        assert_eq!(via("https://10.1.2.3/x"), None);
        assert_eq!(via("http://localhost:7500/x"), None);
        let cfg = OutboundConfig {
            proxy: Some("http://hms:${PROXY_PW}@cfg-proxy:3128".into()),
            no_proxy: Some(vec!["internal.example".into()]),
            ..OutboundConfig::default()
        };
        let o = Outbound::from_config(&cfg, &env).unwrap();
        let p = o.proxy.for_url(&url("https://api.stripe.com/x")).unwrap();
        assert_eq!(
            (p.host_str(), p.password()),
            (Some("cfg-proxy"), Some("pw"))
        );
        assert!(!format!("{o:?}").contains("pw@"), "{o:?}");
        assert!(o
            .proxy
            .for_url(&url("https://a.internal.example/x"))
            .is_none());
        // The environment's NO_PROXY does not apply once outbound.noProxy is set.
        assert!(o.proxy.for_url(&url("https://localhost/x")).is_some());
        let bad = OutboundConfig {
            proxy: Some("not a url".into()),
            ..OutboundConfig::default()
        };
        assert!(Outbound::from_config(&bad, &env).is_err());
    }

    #[test]
    fn a_url_joined_on_its_parsed_base_equals_the_url_parsed_whole() {
        let base = UrlBase::new("https://gis.example:8443").unwrap();
        for full in [
            "https://gis.example:8443/item/roadwork/RW-1",
            "https://gis.example:8443/",
            "https://gis.example:8443/a/../b/./c?x=1&y=%20z#frag",
            "https://gis.example:8443/caf\u{e9}/\u{1F6A7}?q=a b",
            "https://gis.example:8443/a\\b",
            "https://gis.example:8443/%2F%2Fevil.example/x",
        ] {
            assert_eq!(
                base.join(full).map(|u| u.to_string()),
                Some(reqwest::Url::parse(full).unwrap().to_string()),
                "{full}"
            );
        }
    }

    #[test]
    fn what_could_change_the_host_is_left_to_a_whole_parse() {
        let base = UrlBase::new("https://gis.example").unwrap();
        for full in [
            "https://gis.example//evil.example/x",
            "https://gis.example/\\evil.example/x",
            "https://gis.example.evil/x",
            "https://gis.example:9/x",
            "https://gis.example@evil.example/x",
            "https://gis.example",
            "http://gis.example/x",
        ] {
            assert!(base.join(full).is_none(), "{full}");
        }
        assert!(UrlBase::new("https://gis.example/api").is_none());
        assert!(UrlBase::new("https://gis.example/").is_none());
        assert!(UrlBase::new("not a url").is_none());
    }
}
