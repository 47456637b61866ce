//! A programmable loopback HTTP target: `hms-sync sink`, the harness's `Target`, the bench's.
//!
//! It answers every request (after a delay, with what an answer hook picks), counts requests,
//! duplicates by key and per-key order, measures end-to-end latency from the flood stamp
//! ([`crate::flood`]), and optionally keeps every request.

pub mod stats;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

pub use stats::{Arrival, Latency, OrderBy, Stats, Summary};

use crate::flood::{now_ns, Stamp, SENT_HEADER, SEQ_HEADER};

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The listen address is taken or not ours.
    #[error("sink: cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// What the sink answered.
    pub status: u16,
}

impl Recorded {
    /// The body as JSON; `Null` when it is not JSON (see [`Recorded::try_json`]).
    pub fn json(&self) -> serde_json::Value {
        self.try_json().unwrap_or(serde_json::Value::Null)
    }

    /// The body as JSON.
    pub fn try_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// A header's value, when it is there and text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// The answer hook: given a request and how many identical requests (same path and body)
/// came before it, the status and extra headers to answer with.
pub type Responder = Arc<dyn Fn(&Recorded, usize) -> (u16, Vec<(String, String)>) + Send + Sync>;

/// A whole answer, for fakes that must answer with a body (a token endpoint, an API's JSON).
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// Headers added to the answer (`Content-Type` among them, for a body that is not text).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// The general answer hook (see [`Sink::reply_with`]).
pub type ReplyHook = Arc<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

fn plain(f: Responder) -> ReplyHook {
    Arc::new(move |r, n| {
        let (status, headers) = f(r, n);
        Reply {
            status,
            headers,
            body: Bytes::from_static(b"{}"),
        }
    })
}

/// How a sink starts. Default: 127.0.0.1 on a free port, 200 for everything at once,
/// duplicates by `Idempotency-Key`, no order check, no request log.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Keep every request (method, path, headers, body) for [`Sink::requests`]. Off for floods:
    /// the counters cost a few dozen bytes an event, the log a whole request.
    pub keep_requests: bool,
    /// How long each answer takes.
    pub delay: Duration,
    /// The header that identifies an event for duplicates (default `Idempotency-Key`); without
    /// it, the stamp's sequence.
    pub key_header: String,
    /// Where the per-key order key is read (no order check when `None`).
    pub order_by: Option<OrderBy>,
    /// Keep (sequence, latency) of every delivery, for [`Sink::worst_ms_per_chunk`].
    pub timeline: bool,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            keep_requests: false,
            delay: Duration::ZERO,
            key_header: "Idempotency-Key".into(),
            order_by: None,
            timeline: false,
        }
    }
}

struct Shared {
    opts: SinkOptions,
    log: Mutex<Vec<Recorded>>,
    responder: RwLock<ReplyHook>,
    delay: Mutex<Duration>,
    active: AtomicUsize,
    max_active: AtomicUsize,
    identical: Mutex<HashMap<u64, usize>>,
    stats: Mutex<Stats>,
    stop: tokio::sync::Notify,
}

/// Locks a mutex, also after a panic elsewhere (the data are counters: still usable).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running sink; clones share it. It serves until [`Sink::stop`] or until its tokio runtime
/// ends.
#[derive(Clone)]
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Sink {
    /// Binds and starts serving (on the current tokio runtime).
    pub async fn start(opts: SinkOptions) -> Result<Sink, SinkError> {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| SinkError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SinkError::Bind {
            addr: opts.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            log: Mutex::default(),
            responder: RwLock::new(plain(Arc::new(|_, _| (200, vec![])))),
            delay: Mutex::new(opts.delay),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            identical: Mutex::default(),
            stats: Mutex::new(Stats::new(opts.timeline)),
            stop: tokio::sync::Notify::new(),
            opts,
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        let s = shared.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.stop.notified().await })
                .await;
        });
        Ok(Sink { addr, shared })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the answer hook (see [`Responder`]); the body is `{}`.
    pub fn respond(
        &self,
        f: impl Fn(&Recorded, usize) -> (u16, Vec<(String, String)>) + Send + Sync + 'static,
    ) {
        self.set_hook(plain(Arc::new(f)));
    }

    /// Sets an answer hook that also picks the body.
    pub fn reply_with(&self, f: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) {
        self.set_hook(Arc::new(f));
    }

    fn set_hook(&self, hook: ReplyHook) {
        *self
            .shared
            .responder
            .write()
            .unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// Every answer takes `d` from now on.
    pub fn set_delay(&self, d: Duration) {
        *lock(&self.shared.delay) = d;
    }

    /// Requests being answered now.
    pub fn concurrent(&self) -> usize {
        self.shared.active.load(SeqCst)
    }

    /// The most requests it was answering at once.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_active.load(SeqCst)
    }

    /// Every request answered so far (empty unless [`SinkOptions::keep_requests`]).
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.log).clone()
    }

    /// Requests answered so far.
    pub fn count(&self) -> usize {
        lock(&self.shared.stats).requests() as usize
    }

    /// Events delivered so far (first 2xx per key).
    pub fn delivered(&self) -> u64 {
        lock(&self.shared.stats).delivered()
    }

    /// Requests answered with `status` so far.
    pub fn answered(&self, status: u16) -> u64 {
        lock(&self.shared.stats).answered(status)
    }

    /// What it has seen so far.
    pub fn summary(&self) -> Summary {
        lock(&self.shared.stats).summary()
    }

    /// Worst latency per chunk of `per` sequences (needs [`SinkOptions::timeline`]).
    pub fn worst_ms_per_chunk(&self, per: u64) -> Vec<f64> {
        lock(&self.shared.stats).worst_ms_per_chunk(per)
    }

    /// Counts a delivery that did not come over HTTP (the flood bench's ceiling, which acks
    /// events without calling anyone), as a 200 arriving now.
    pub fn record_arrival(&self, key: Option<&str>, order_key: Option<&str>, stamp: Option<Stamp>) {
        lock(&self.shared.stats).record(&Arrival {
            key,
            order_key,
            stamp,
            status: 200,
            at_ns: now_ns(),
        });
    }

    /// Forgets everything counted and recorded (the answer hook and delay stay).
    pub fn reset(&self) {
        *lock(&self.shared.stats) = Stats::new(self.shared.opts.timeline);
        lock(&self.shared.identical).clear();
        lock(&self.shared.log).clear();
        self.shared.max_active.store(0, SeqCst);
    }

    /// Stops serving (requests in flight are answered).
    pub fn stop(&self) {
        self.shared.stop.notify_one();
    }
}

fn identity(path: &str, body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    path.hash(&mut h);
    body.hash(&mut h);
    h.finish()
}

/// The value at a dotted path of a JSON value, as text.
fn field_text(v: &serde_json::Value, path: &str) -> Option<String> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let at_ns = now_ns();
    let now = shared.active.fetch_add(1, SeqCst) + 1;
    shared.max_active.fetch_max(now, SeqCst);
    let wait = *lock(&shared.delay);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await; // the target's answer time
    }
    shared.active.fetch_sub(1, SeqCst);
    let mut rec = Recorded {
        method: method.to_string(),
        path: uri.to_string(),
        headers,
        body,
        at,
        status: 0,
    };
    let n = {
        let mut seen = lock(&shared.identical);
        let c = seen.entry(identity(&rec.path, &rec.body)).or_default();
        *c += 1;
        *c - 1
    };
    let responder = shared
        .responder
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let reply = responder(&rec, n);
    let status = reply.status;
    rec.status = status;
    let stamp = Stamp::from_headers(
        rec.headers.get(SEQ_HEADER).and_then(|v| v.to_str().ok()),
        rec.headers.get(SENT_HEADER).and_then(|v| v.to_str().ok()),
    )
    .or_else(|| Stamp::scan(&rec.body));
    let order_key = match &shared.opts.order_by {
        None => None,
        Some(OrderBy::Header(h)) => rec.header(h),
        Some(OrderBy::Field(f)) => rec.try_json().ok().and_then(|v| field_text(&v, f)),
    };
    let key = rec.header(&shared.opts.key_header);
    lock(&shared.stats).record(&Arrival {
        key: key.as_deref(),
        order_key: order_key.as_deref(),
        stamp,
        status,
        at_ns,
    });
    if shared.opts.keep_requests {
        lock(&shared.log).push(rec);
    }
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        reply.body,
    )
        .into_response();
    // Text unless the hook names another content type (its headers replace this one).
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dotted_path_reads_a_nested_field() {
        let v = serde_json::json!({"permit": {"id": "RW-1", "n": 3}});
        assert_eq!(field_text(&v, "permit.id").as_deref(), Some("RW-1"));
        assert_eq!(field_text(&v, "permit.n").as_deref(), Some("3"));
        assert_eq!(field_text(&v, "permit.x"), None);
    }
}

#[cfg(test)]
mod serving {
    use super::*;

    #[tokio::test]
    async fn a_reply_hook_answers_with_its_status_headers_and_body() {
        let sink = Sink::start(SinkOptions {
            keep_requests: true,
            ..Default::default()
        })
        .await
        .unwrap();
        sink.reply_with(|r, n| Reply {
            status: if n == 0 { 400 } else { 201 },
            headers: vec![("content-type".into(), "application/json".into())],
            body: format!("{{\"path\":\"{}\"}}", r.path).into(),
        });
        let mut stream = tokio::net::TcpStream::connect(sink.addr()).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(out.contains("content-type: application/json"), "{out}");
        assert!(out.ends_with("{\"path\":\"/a?b=1\"}"), "{out}");
        assert_eq!(sink.requests()[0].status, 400);
        assert_eq!(sink.count(), 1);
    }
}
