//! The life of one delivery: parse -> filter -> render -> send -> decide -> ack / retry / park.
//!
//! Runs inside tasks owned by a connector actor; the decisions themselves are the pure
//! functions of [`crate::outcome`] and [`crate::request`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use ractor::ActorRef;

use crate::actors::audit::AuditMsg;
use crate::actors::endpoint::{endpoint_of, signal_of, EndpointRegistry, Permit};
use crate::actors::supervisor::Deps;
use crate::actors::token::{Token, Tokens};
use crate::audit::{AttemptRecord, AuditRecord, EventRef};
use crate::auth::Auth;
use crate::bus::{Bus, Delivery};
use crate::check::{self, AnswerView, OnFailure};
use crate::connector::Connector;
use crate::connector::Lookup;
use crate::filter::{EventMeta, Verdict};
use crate::http_client::{snippet, Answer, Exchange, HttpClient, UrlBase};
use crate::metrics::ConnectorMetrics;
use crate::outcome::{classify, decide, fail_reason, Action, Class, Outcome};
use crate::request;
use crate::template::Secrets;

/// How a delivery ended, as far as its connector's pump is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Acked: delivered, filtered out, or durably parked.
    Done,
    /// NAKed: JetStream offers it again after this delay.
    Retry(Duration),
}

/// Wait before offering an event again when parking it failed (NATS trouble).
const PARK_RETRY: Duration = Duration::from_secs(5);

/// Header that carries an idempotency key set earlier (parked replay); wins over derivation.
pub const REPLAY_KEY_HEADER: &str = "Hms-Idempotency-Key";

/// Counters, latencies and recent errors of one connector; outlives actor restarts.
#[derive(Default)]
pub struct ConnectorStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub parked: AtomicU64,
    pub filtered: AtomicU64,
    /// Deliveries being handled now (see [`InProcess`]).
    pub in_process: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Publish-to-2xx latency in microseconds (this process's deliveries).
    latency_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
    /// The most recent failures, newest last (at most [`RECENT_FAILURES`]).
    pub recent_failures: Mutex<std::collections::VecDeque<FailureNote>>,
}

/// Counts one delivery as in process for as long as it lives (also when its task is aborted).
pub struct InProcess(Arc<ConnectorStats>);

impl InProcess {
    pub fn new(stats: &Arc<ConnectorStats>) -> InProcess {
        stats.in_process.fetch_add(1, Ordering::Relaxed);
        InProcess(stats.clone())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.0.in_process.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many recent failures a connector remembers for status pages.
pub const RECENT_FAILURES: usize = 20;

/// One failure as status pages show it.
#[derive(Debug, Clone, Serialize)]
pub struct FailureNote {
    pub at: String,
    pub error: String,
    pub url: String,
}

impl ConnectorStats {
    /// Records one publish-to-2xx latency.
    pub fn observe_latency(&self, ms: f64) {
        let Ok(mut slot) = self.latency_us.lock() else {
            return;
        };
        if slot.is_none() {
            // 1 µs .. 1 h, 2 significant digits: a few kB per connector.
            *slot = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2).ok();
        }
        if let Some(h) = slot.as_mut() {
            h.saturating_record(((ms * 1000.0) as u64).max(1));
        }
    }

    /// (p50, p99) latency in milliseconds, when anything was delivered.
    pub fn latency_p50_p99(&self) -> Option<(f64, f64)> {
        let h = self.latency_us.lock().ok()?;
        let h = h.as_ref()?;
        if h.is_empty() {
            return None;
        }
        Some((
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        ))
    }

    fn error(&self, url: &str, error: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(format!("{url}: {error}"));
        }
        if let Ok(mut r) = self.recent_failures.lock() {
            if r.len() >= RECENT_FAILURES {
                r.pop_front();
            }
            r.push_back(FailureNote {
                at: now_rfc3339(),
                error: error.to_string(),
                url: url.to_string(),
            });
        }
    }
}

/// One attempt, as recorded in a parked job.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub at: String,
    pub status: Option<u16>,
    pub error: String,
    /// Start of the response body (truncated).
    #[serde(default)]
    pub body: String,
}

/// Everything a delivery needs; shared by all deliveries of one connector.
pub struct Pipeline {
    pub connector: Arc<Connector>,
    pub bus: Bus,
    pub http: HttpClient,
    endpoints: Arc<EndpointRegistry>,
    audit: Option<ActorRef<AuditMsg>>,
    tokens: Option<Tokens>,
    /// The endpoint when the URL's scheme/host/port is fixed (the usual case).
    fixed_endpoint: Option<String>,
    /// That fixed `scheme://authority`, parsed once.
    url_base: Option<UrlBase>,
    /// How often a delivery waiting for a permit tells JetStream it is still being worked on.
    heartbeat: Duration,
    pub metrics: ConnectorMetrics,
    pub stats: Arc<ConnectorStats>,
    /// Attempts seen by this process, by stream sequence (for the parked record).
    attempts: Mutex<HashMap<u64, Vec<Attempt>>>,
}

const MAX_TRACKED: usize = 100_000;

impl Pipeline {
    pub fn new(connector: Arc<Connector>, deps: &Deps, stats: Arc<ConnectorStats>) -> Self {
        let metrics = ConnectorMetrics::new(&connector.id);
        let source = connector.target.url.source();
        let authority_end = source
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| source[start..].find('/').map(|j| start + j))
            .unwrap_or(source.len());
        let authority = &source[..authority_end];
        let fixed = !authority.contains('{') && !authority.contains('$');
        let fixed_endpoint = fixed.then(|| endpoint_of(authority));
        let url_base = fixed.then(|| UrlBase::new(authority)).flatten();
        Pipeline {
            connector,
            bus: deps.bus.clone(),
            http: deps.http.clone(),
            endpoints: deps.endpoints.clone(),
            audit: deps.audit.clone(),
            tokens: deps.tokens.clone(),
            fixed_endpoint,
            url_base,
            heartbeat: (deps.delivery.ack_wait() / 3).max(Duration::from_millis(200)),
            metrics,
            stats,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    fn record(&self, seq: u64, a: Attempt) -> Vec<Attempt> {
        let Ok(mut map) = self.attempts.lock() else {
            return vec![a];
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(&seq) {
            map.clear(); // history is a courtesy; the events themselves are on JetStream
        }
        let list = map.entry(seq).or_default();
        list.push(a);
        list.clone()
    }

    /// Waits for the endpoint's permit, telling JetStream the event is still being worked on
    /// meanwhile (so waiting never causes a redelivery or burns an attempt).
    async fn permit(&self, endpoint: &str, d: &Delivery) -> Option<Permit> {
        let acquire = self.endpoints.acquire(endpoint, self.connector.rate_limit);
        tokio::pin!(acquire);
        // Usually ready at once (the endpoint's fast lane): no heartbeat timer then.
        if let Some(permit) = futures::FutureExt::now_or_never(&mut acquire) {
            return permit;
        }
        let mut beat = tokio::time::interval(self.heartbeat);
        beat.tick().await;
        let mut waiting = false;
        let permit = loop {
            tokio::select! {
                p = &mut acquire => break p,
                _ = beat.tick() => {
                    if !waiting {
                        waiting = true;
                        self.metrics.waiting.increment(1.0);
                    }
                    if let Err(e) = d.in_progress().await {
                        tracing::warn!(connector = %self.connector.id, "{e}");
                    }
                }
            }
        };
        if waiting {
            self.metrics.waiting.decrement(1.0);
        }
        permit
    }

    /// Sends one attempt's record to the audit actor (never waits for it).
    fn audit(
        &self,
        d: &Delivery,
        key: &str,
        outcome: &Outcome,
        url: &str,
        traceparent: &str,
        latency: Option<Duration>,
    ) {
        let Some(audit) = &self.audit else { return };
        let c = &*self.connector;
        let (status, error) = match outcome {
            Outcome::Status { code, .. } => (Some(*code), None),
            other => (None, Some(describe(other))),
        };
        let record = AttemptRecord {
            at: now_rfc3339(),
            attempt: d.delivered,
            connector: c.id.clone(),
            error,
            event: EventRef {
                msg_id: d.msg_id.clone(),
                stream_sequence: d.stream_sequence,
                subject: d.original_subject(),
            },
            idempotency_key: key.to_string(),
            latency_ms: latency.map(|l| l.as_secs_f64() * 1000.0),
            method: c.target.method.clone(),
            status,
            traceparent: traceparent.to_string(),
            url: url.to_string(),
        };
        let _ = audit.send_message(AuditMsg::Record {
            consumer: c.consumer.clone(),
            record: AuditRecord::Attempt(Box::new(record)),
        });
    }

    fn forget(&self, seq: u64) -> Vec<Attempt> {
        self.attempts
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&seq))
            .unwrap_or_default()
    }

    /// Handles one delivery to the end: acked (delivered, filtered out or parked) or
    /// scheduled again.
    pub async fn handle(&self, d: Delivery) -> Finished {
        let c = &*self.connector;
        let key = idempotency_key(&c.id, &d);
        let event: Json = match serde_json::from_slice(d.payload()) {
            Ok(v) => v,
            Err(e) => {
                let outcome = Outcome::Invalid(format!("payload is not JSON: {e}"));
                self.audit(&d, &key, &outcome, c.target.url.source(), "", None);
                return self
                    .finish(
                        &d,
                        &key,
                        outcome,
                        String::new(),
                        String::new(),
                        Instant::now(),
                    )
                    .await;
            }
        };
        if let Some(filter) = &c.trigger.filter {
            // The metadata is only built for filters that read `event`.
            let meta = if filter.uses_event() {
                EventMeta {
                    topic: d.original_subject(),
                    sequence: d.stream_sequence,
                    published: d
                        .published
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    id: d.msg_id.clone().unwrap_or_default(),
                }
            } else {
                EventMeta::default()
            };
            match filter.evaluate(&event, &meta) {
                Verdict::Pass => {}
                verdict => {
                    if let Verdict::NotEvaluable(why) = verdict {
                        tracing::debug!(connector = %c.id, seq = d.stream_sequence, "filtered out: {why}");
                    }
                    self.metrics.filtered.increment(1);
                    self.stats.filtered.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = d.ack().await {
                        tracing::warn!(connector = %c.id, "{e}");
                    }
                    return Finished::Done;
                }
            }
        }
        let started = Instant::now();
        if let Err(e) = c.schema.check(&event) {
            let outcome = Outcome::Invalid(format!("schema check failed: {e}"));
            let url = c.target.url.source().to_string();
            self.audit(&d, &key, &outcome, &url, "", None);
            return self
                .finish(&d, &key, outcome, url, String::new(), started)
                .await;
        }
        // The lookup, when there is one: its JSON answer feeds the main templates.
        let bound;
        let ctx: &Json = match &c.lookup {
            None => &event,
            Some(l) => match self.lookup(l, &event, &d).await {
                Ok(answer) => {
                    bound = request::bind(&event, &l.bind, answer);
                    &bound
                }
                Err((outcome, url, body)) => {
                    self.audit(&d, &key, &outcome, &url, "", None);
                    tracing::info!("[{}] {} {url} {}", c.id, l.method, describe(&outcome));
                    return self.finish(&d, &key, outcome, url, body, started).await;
                }
            },
        };
        let req = match request::build(c, ctx, Some(&key), Secrets::Env) {
            Ok(r) => r,
            Err(e) => {
                let url = c
                    .target
                    .url
                    .render_text(ctx, Secrets::Masked)
                    .unwrap_or_else(|_| c.target.url.source().to_string());
                let outcome = Outcome::Invalid(e.to_string());
                self.audit(&d, &key, &outcome, &url, "", None);
                return self
                    .finish(&d, &key, outcome, url, String::new(), started)
                    .await;
            }
        };
        let shown_url = if c.target.url.secrets().next().is_some() {
            c.target
                .url
                .render_text(ctx, Secrets::Masked)
                .unwrap_or_default()
        } else {
            req.url.clone()
        };
        let mut req = req;
        let traceparent = child_traceparent(d.header("traceparent").as_deref());
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&traceparent) {
            req.headers
                .push((reqwest::header::HeaderName::from_static("traceparent"), v));
        }
        let endpoint = match &self.fixed_endpoint {
            Some(e) => e.clone(),
            None => endpoint_of(&req.url),
        };
        let sent_at = Instant::now();
        let ex = match self.call(c.auth.as_ref(), req, &endpoint, &d).await {
            Ok(ex) => ex,
            Err(outcome) => {
                self.audit(&d, &key, &outcome, &shown_url, &traceparent, None);
                tracing::info!(
                    "[{}] {} {} {}",
                    c.id,
                    c.target.method,
                    shown_url,
                    describe(&outcome)
                );
                return self
                    .finish(&d, &key, outcome, shown_url, String::new(), started)
                    .await;
            }
        };
        let Answer {
            outcome,
            reason,
            body,
        } = ex.answer;
        // A 2xx that the connector's response check does not accept is a failure.
        let (outcome, body) = match (&c.response_check, &outcome) {
            (Some(check), Outcome::Status { code, .. })
                if classify(&outcome, &c.retry.statuses) == Class::Success =>
            {
                let json = check::body_json(&ex.body);
                let view = AnswerView {
                    status: *code,
                    headers: &ex.headers,
                    body: &json,
                };
                match check.failure(view) {
                    None => (outcome, body),
                    Some(msg) => (
                        Outcome::Rejected {
                            reason: "response_check",
                            transient: check.on_failure == OnFailure::Transient,
                            message: format!("HTTP {code}, but {msg}"),
                        },
                        snippet(&ex.body),
                    ),
                }
            }
            _ => (outcome, body),
        };
        self.audit(
            &d,
            &key,
            &outcome,
            &shown_url,
            &traceparent,
            Some(sent_at.elapsed()),
        );
        let line = match &outcome {
            Outcome::Status { code, .. } => format!("{code} {reason}"),
            Outcome::Rejected { message, .. } => message.clone(),
            _ => reason.clone(),
        };
        tracing::info!("[{}] {} {} {}", c.id, c.target.method, shown_url, line);
        self.finish(&d, &key, outcome, shown_url, body, started)
            .await
    }

    /// A token for `auth`, or the outcome that says why there is none.
    async fn token(&self, auth: &Arc<Auth>) -> Result<Token, Outcome> {
        let Some(tokens) = &self.tokens else {
            return Err(Outcome::Rejected {
                reason: "auth",
                transient: true,
                message: "no token actor".into(),
            });
        };
        tokens.get(auth).await.map_err(|e| Outcome::Rejected {
            reason: "auth",
            transient: e.is_transient(),
            message: format!("{} token: {e}", auth.kind()),
        })
    }

    /// Sends one request under the endpoint's permit, with the token of `auth`. When the
    /// target refuses a fetched token, the token is refreshed once and the request sent again
    /// at once (the same attempt: JetStream's delivery count does not change).
    async fn call(
        &self,
        auth: Option<&Arc<Auth>>,
        req: request::Request,
        endpoint: &str,
        d: &Delivery,
    ) -> Result<Exchange, Outcome> {
        let c = &*self.connector;
        let mut token = match auth {
            Some(a) => Some(self.token(a).await?),
            None => None,
        };
        let mut refreshed = false;
        loop {
            let mut r = req.clone();
            if let (Some(a), Some(t)) = (auth, &token) {
                a.apply(&mut r, t.value.expose())
                    .map_err(|e| Outcome::Invalid(e.to_string()))?;
            }
            let mut permit = self.permit(endpoint, d).await;
            self.metrics.in_flight.increment(1.0);
            let ex = self
                .http
                .exchange_on(r, self.url_base.as_ref(), c.timeout)
                .await;
            self.metrics.in_flight.decrement(1.0);
            let fallback = crate::outcome::backoff(1, &c.retry, 0.0);
            if let Some(p) = permit.as_mut() {
                p.report(signal_of(&ex.answer.outcome, fallback));
            }
            drop(permit);
            if let (Some(a), Some(t), Some(status), Some(tokens)) =
                (auth, &token, ex.status(), &self.tokens)
            {
                if a.is_fetched() && !refreshed {
                    let json = check::body_json(&ex.body);
                    let view = AnswerView {
                        status,
                        headers: &ex.headers,
                        body: &json,
                    };
                    if a.rejected(view) {
                        tracing::info!(
                            "[{}] {} token refused (HTTP {status}): refreshing it and sending again",
                            c.id,
                            a.kind()
                        );
                        tokens.rejected(a, t.generation);
                        token = Some(self.token(a).await?);
                        refreshed = true;
                        continue;
                    }
                }
            }
            return Ok(ex);
        }
    }

    /// Runs the connector's lookup: its parsed JSON answer, or (outcome, shown URL, body
    /// snippet) when it failed, classified like any other outcome.
    async fn lookup(
        &self,
        l: &Lookup,
        event: &Json,
        d: &Delivery,
    ) -> Result<Json, (Outcome, String, String)> {
        let c = &*self.connector;
        let shown = request::build_lookup(l, event, Secrets::Masked)
            .map(|r| r.url)
            .unwrap_or_else(|_| l.url.source().to_string());
        let req = request::build_lookup(l, event, Secrets::Env).map_err(|e| {
            (
                Outcome::Invalid(format!("lookup: {e}")),
                shown.clone(),
                String::new(),
            )
        })?;
        let endpoint = endpoint_of(&req.url);
        let ex = self
            .call(l.effective_auth(c.auth.as_ref()), req, &endpoint, d)
            .await
            .map_err(|o| (o, shown.clone(), String::new()))?;
        let Some(status) = ex.status() else {
            return Err((ex.answer.outcome, shown, String::new()));
        };
        let class = classify(&ex.answer.outcome, &c.retry.statuses);
        if class != Class::Success {
            return Err((
                Outcome::Rejected {
                    reason: "lookup",
                    transient: class == Class::Transient,
                    message: format!("lookup {} {shown}: HTTP {status}", l.method),
                },
                shown,
                snippet(&ex.body),
            ));
        }
        let json = check::body_json(&ex.body);
        if let Some(check) = &l.check {
            let view = AnswerView {
                status,
                headers: &ex.headers,
                body: &json,
            };
            if let Some(msg) = check.failure(view) {
                return Err((
                    Outcome::Rejected {
                        reason: "lookup",
                        transient: check.on_failure == OnFailure::Transient,
                        message: format!("lookup {shown}: {msg}"),
                    },
                    shown,
                    snippet(&ex.body),
                ));
            }
        }
        if json.is_null() {
            return Err((
                Outcome::Rejected {
                    reason: "lookup",
                    transient: false,
                    message: format!("lookup {shown}: the answer is not JSON"),
                },
                shown,
                snippet(&ex.body),
            ));
        }
        Ok(json)
    }

    async fn finish(
        &self,
        d: &Delivery,
        key: &str,
        outcome: Outcome,
        url: String,
        body: String,
        started: Instant,
    ) -> Finished {
        let c = &*self.connector;
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let action = decide(&outcome, d.delivered, &c.retry, jitter);
        match action {
            Action::Ack => {
                self.forget(d.stream_sequence);
                let since_publish =
                    (time::OffsetDateTime::now_utc() - d.published).as_seconds_f64() * 1000.0;
                let latency_ms = since_publish.max(started.elapsed().as_secs_f64() * 1000.0);
                self.metrics.latency.record(latency_ms);
                self.stats.observe_latency(latency_ms);
                self.metrics.ok.increment(1);
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = d.ack().await {
                    tracing::warn!(connector = %c.id, "{e}");
                }
                Finished::Done
            }
            Action::Retry(delay) => {
                let error = describe(&outcome);
                self.record(
                    d.stream_sequence,
                    attempt(d.delivered, &outcome, &error, &body),
                );
                self.metrics.fail(fail_reason(&outcome));
                self.metrics.retry.increment(1);
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.error(&url, &error);
                tracing::warn!(
                    "[{}] attempt {}/{} failed ({error}); next in {} ms",
                    c.id,
                    d.delivered,
                    c.retry.max,
                    delay.as_millis()
                );
                if let Err(e) = d.retry_after(delay).await {
                    tracing::warn!(connector = %c.id, "{e}");
                }
                Finished::Retry(delay)
            }
            Action::Park => {
                let error = describe(&outcome);
                self.metrics.fail(fail_reason(&outcome));
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.error(&url, &error);
                let mut attempts = self.forget(d.stream_sequence);
                if !matches!(outcome, Outcome::Invalid(_)) || attempts.is_empty() {
                    attempts.push(attempt(d.delivered, &outcome, &error, &body));
                }
                if let Err(e) = self.park(d, key, &error, &url, attempts.clone()).await {
                    // Not parked: not acked either. JetStream will offer it again.
                    tracing::error!(
                        "[{}] could not park event seq {}: {e}; retrying later",
                        c.id,
                        d.stream_sequence
                    );
                    self.attempts
                        .lock()
                        .ok()
                        .map(|mut m| m.insert(d.stream_sequence, attempts));
                    let _ = d.retry_after(PARK_RETRY).await;
                    return Finished::Retry(PARK_RETRY);
                }
                self.metrics.parked.increment(1);
                self.stats.parked.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = d.ack().await {
                    tracing::warn!(connector = %c.id, "{e}");
                }
                Finished::Done
            }
        }
    }

    async fn park(
        &self,
        d: &Delivery,
        key: &str,
        error: &str,
        url: &str,
        attempts: Vec<Attempt>,
    ) -> Result<u64, crate::bus::BusError> {
        let c = &*self.connector;
        let payload = d.payload();
        let job = ParkedJob {
            connector: c.id.clone(),
            consumer: c.consumer.clone(),
            parked_at: now_rfc3339(),
            error: error.to_string(),
            method: c.target.method.to_string(),
            url: url.to_string(),
            idempotency_key: key.to_string(),
            attempts,
            event: ParkedEvent {
                subject: d.original_subject(),
                stream_sequence: d.stream_sequence,
                published: d
                    .published
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                msg_id: d.msg_id.clone(),
                headers: d.headers(),
                payload: String::from_utf8_lossy(payload).into_owned(),
            },
        };
        let bytes = serde_json::to_vec(&job).unwrap_or_default();
        let dedup = format!("{}:{}:{}", c.consumer, d.stream_sequence, d.delivered);
        let seq = self.bus.park(&c.consumer, &dedup, &bytes).await?;
        tracing::warn!(
            "[{}] parked event seq {} as parked job {seq}: {error}",
            c.id,
            d.stream_sequence
        );
        let review = serde_json::json!({
            "kind": "sync.parked",
            "connector": c.id,
            "parkedId": seq,
            "summary": format!("{} {} failed: {error}", c.target.method, url),
            "idempotencyKey": key,
            "at": job.parked_at,
        });
        if let Err(e) = self.bus.review(review.to_string().as_bytes()).await {
            tracing::warn!("[{}] review alert not sent: {e}", c.id);
        }
        Ok(seq)
    }
}

/// A parked job as stored on `HMS_SYNC_PARKED` (JSON).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedJob {
    pub connector: String,
    pub consumer: String,
    pub parked_at: String,
    pub error: String,
    pub method: String,
    pub url: String,
    pub idempotency_key: String,
    pub attempts: Vec<Attempt>,
    pub event: ParkedEvent,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedEvent {
    pub subject: String,
    pub stream_sequence: u64,
    pub published: String,
    pub msg_id: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: String,
}

fn attempt(n: u32, outcome: &Outcome, error: &str, body: &str) -> Attempt {
    Attempt {
        attempt: n,
        at: now_rfc3339(),
        status: match outcome {
            Outcome::Status { code, .. } => Some(*code),
            _ => None,
        },
        error: error.to_string(),
        body: body.to_string(),
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Status { code, .. } => format!("HTTP {code}"),
        Outcome::Timeout => "timeout".into(),
        Outcome::Connect(e) => format!("connection failed: {e}"),
        Outcome::Invalid(e) => format!("invalid event: {e}"),
        Outcome::Rejected { message, .. } => message.clone(),
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The idempotency key of one event for one connector: the same across retries, redeliveries,
/// restarts and replay. Derived from the event's `Nats-Msg-Id` when it has one, else from its
/// stream sequence; a replayed event carries its original key in `Hms-Idempotency-Key`.
pub fn idempotency_key(connector_id: &str, d: &Delivery) -> String {
    if let Some(k) = d.header(REPLAY_KEY_HEADER) {
        return k;
    }
    let identity = match &d.msg_id {
        Some(id) => format!("msgid:{id}"),
        None => format!("seq:{}", d.stream_sequence),
    };
    derive_key(connector_id, &identity)
}

/// `hex(sha256(connector id, identity))[..32]`.
pub fn derive_key(connector_id: &str, identity: &str) -> String {
    let mut h = Sha256::new();
    h.update(connector_id.as_bytes());
    h.update([0]);
    h.update(identity.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The W3C `traceparent` for our request: same trace as the event's (when it carries a valid
/// one), new span id; a new trace when absent.
pub fn child_traceparent(parent: Option<&str>) -> String {
    let trace_id = parent
        .and_then(|p| {
            let parts: Vec<&str> = p.trim().split('-').collect();
            (parts.len() >= 4
                && parts[0].len() == 2
                && parts[1].len() == 32
                && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
                && parts[1].bytes().any(|b| b != b'0'))
            .then(|| parts[1].to_ascii_lowercase())
        })
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
    let span_id = hex::encode(rand::random::<[u8; 8]>());
    format!("00-{trace_id}-{span_id}-01")
}
