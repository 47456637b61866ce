//! The only module that sends HTTP: one shared reqwest client (keep-alive, timeouts).

use std::time::{Duration, SystemTime};

use crate::outcome::{parse_retry_after, Outcome};
use crate::request::Request;

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

/// One client for the whole process.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl HttpClient {
    pub fn new() -> Result<HttpClient, String> {
        install_crypto();
        let client = reqwest::Client::builder()
            .user_agent(concat!("hms-sync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(HttpClient { client })
    }

    /// Sends `req`; never fails: every failure is an [`Outcome`].
    pub async fn send(&self, req: Request, timeout: Duration) -> Answer {
        let mut builder = self.client.request(req.method, &req.url).timeout(timeout);
        for (name, value) in req.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        match builder.send().await {
            Ok(resp) => {
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let reason = status.canonical_reason().unwrap_or("").to_string();
                let body = if status.is_success() {
                    // Read (and so free) the connection for keep-alive, but keep nothing.
                    let _ = resp.bytes().await;
                    String::new()
                } else {
                    match resp.bytes().await {
                        Ok(b) => {
                            String::from_utf8_lossy(&b[..b.len().min(BODY_SNIPPET)]).into_owned()
                        }
                        Err(_) => String::new(),
                    }
                };
                Answer {
                    outcome: Outcome::Status {
                        code: status.as_u16(),
                        retry_after,
                    },
                    reason,
                    body,
                }
            }
            Err(e) if e.is_timeout() => Answer {
                outcome: Outcome::Timeout,
                reason: format!("timeout after {} ms", timeout.as_millis()),
                body: String::new(),
            },
            Err(e) => {
                let text = error_chain(&e);
                Answer {
                    outcome: Outcome::Connect(text.clone()),
                    reason: text,
                    body: String::new(),
                }
            }
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
    ) -> Result<serde_json::Value, String> {
        let resp = self
            .client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let bytes = resp.bytes().await.map_err(|e| error_chain(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))
    }
}
