//! The only module that sends HTTP: one shared reqwest client (keep-alive, timeouts).

use std::time::{Duration, SystemTime};

use crate::outcome::{parse_retry_after, Outcome};
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

/// One client for the whole process.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl HttpClient {
    pub fn new() -> Result<HttpClient, HttpError> {
        install_crypto();
        let client = reqwest::Client::builder()
            .user_agent(concat!("hms-sync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| HttpError::Build(e.to_string()))?;
        Ok(HttpClient { client })
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
        let builder = match base.and_then(|b| b.join(&req.url)) {
            Some(url) => self.client.request(req.method, url),
            None => self.client.request(req.method, &req.url),
        };
        let mut builder = builder.timeout(timeout);
        for (name, value) in req.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        match builder.send().await {
            Ok(mut resp) => {
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let headers = resp
                    .headers()
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                    })
                    .collect();
                let reason = status.canonical_reason().unwrap_or("").to_string();
                let mut body = Vec::new();
                // Read to the end (so the connection is reused), keeping at most MAX_BODY.
                while let Ok(Some(chunk)) = resp.chunk().await {
                    let room = MAX_BODY.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
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
                let text = error_chain(&e);
                Exchange::failed(Answer {
                    outcome: Outcome::Connect(text.clone()),
                    reason: text,
                    body: String::new(),
                })
            }
        }
    }
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

/// Largest answer body kept by [`HttpClient::exchange`].
pub const MAX_BODY: usize = 1 << 20;

/// The start of a body as text (lossy UTF-8, at most [`BODY_SNIPPET`] bytes).
pub fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(BODY_SNIPPET)]).into_owned()
}

/// An answer with its headers and body.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub answer: Answer,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Exchange {
    fn failed(answer: Answer) -> Exchange {
        Exchange {
            answer,
            headers: vec![],
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
        let resp = self
            .client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| HttpError::Transport(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(HttpError::Status(status.to_string()));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| HttpError::Transport(error_chain(&e)))?;
        serde_json::from_slice(&bytes).map_err(|e| HttpError::NotJson(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::UrlBase;

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
