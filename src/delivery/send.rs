//! Stage 2 of a delivery, send: the lookup (when there is one), the token, the endpoint's
//! permit, the HTTP exchange (once more with a refreshed token when the target refused it),
//! and the connector's response check. Ends with the [`Attempted`] that settle acts on.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::Value as Json;

use super::attempt::Attempted;
use super::keys::child_traceparent;
use super::pipeline::Pipeline;
use super::prepare::{self, Ready, Rendered};
use crate::auth::Auth;
use crate::bus::Delivery;
use crate::check::{self, AnswerView, OnFailure};
use crate::connector::{Lookup, Sign};
use crate::http_client::{snippet, Answer, Exchange};
use crate::outcome::{backoff, classify, describe, retry_at_reset, signal_of, Class, Outcome};
use crate::ratelimit_headers::Announced;
use crate::request;
use crate::services::{endpoint_of, Permit, Token};
use crate::template::Secrets;
use crate::wire::{HeaderName, HeaderValue, Request};

/// Sends a prepared delivery; every way it can end is an [`Attempted`].
pub async fn send(p: &Pipeline, ready: Ready, d: &Delivery, key: &str) -> Attempted {
    let c = &*p.connector;
    let Ready {
        event,
        started,
        request,
    } = ready;
    let rendered = match (request, &c.lookup) {
        (Some(r), _) => r,
        (None, Some(l)) => {
            let answer = match Box::pin(lookup(p, l, &event, d, started)).await {
                Ok(a) => a,
                Err(failed) => return *failed,
            };
            let ctx = request::bind(&event, &l.bind, answer);
            match prepare::render(c, &ctx, key, d, started) {
                Ok(r) => r,
                Err(failed) => return *failed,
            }
        }
        (None, None) => match prepare::render(c, &event, key, d, started) {
            Ok(r) => r,
            Err(failed) => return *failed,
        },
    };
    let Rendered {
        mut request,
        shown_url,
    } = rendered;
    let traceparent = child_traceparent(d.header("traceparent").as_deref());
    if let Ok(v) = HeaderValue::from_str(&traceparent) {
        request
            .headers
            .push((HeaderName::from_static("traceparent"), v));
    }
    let endpoint = match &p.fixed_endpoint {
        Some(e) => e.clone(),
        None => endpoint_of(&request.url),
    };
    tracing::Span::current().record("endpoint", endpoint.as_str());
    let method = c.target.method.clone();
    let sent_at = Instant::now();
    let signing = c.target.sign.as_ref().map(|s| (s, key));
    let ex = match call(p, c.auth.as_ref(), signing, request, &endpoint, d).await {
        Ok(ex) => ex,
        Err(outcome) => {
            let line = format!("{method} {shown_url} {}", describe(&outcome));
            return Attempted {
                outcome,
                url: shown_url,
                method,
                traceparent,
                body: String::new(),
                latency: None,
                started,
                line: Some(line),
            };
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
                headers: &check::header_pairs(&ex.headers),
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
                    shown_body(p, &ex.body),
                ),
            }
        }
        _ => (outcome, body),
    };
    let line = match &outcome {
        Outcome::Status { code, .. } => format!("{method} {shown_url} {code} {reason}"),
        Outcome::Rejected { message, .. } => format!("{method} {shown_url} {message}"),
        _ => format!("{method} {shown_url} {reason}"),
    };
    Attempted {
        outcome,
        url: shown_url,
        method,
        traceparent,
        body,
        latency: Some(sent_at.elapsed()),
        started,
        line: Some(line),
    }
}

/// A token for `auth`, or the outcome that says why there is none.
async fn token(p: &Pipeline, auth: &Arc<Auth>) -> Result<Token, Outcome> {
    p.services.tokens.get(auth).await.map_err(|e| {
        let message = format!("{} token: {e}", auth.kind());
        Outcome::Rejected {
            reason: "auth",
            // The address policy refused the token endpoint: as permanent as for a target.
            transient: e.is_transient() && !crate::policy::is_refusal(&message),
            message,
        }
    })
}

/// Waits for the endpoint's permit, telling JetStream the event is still being worked on
/// meanwhile (so waiting never causes a redelivery or burns an attempt).
async fn permit(p: &Pipeline, endpoint: &str, d: &Delivery) -> Option<Permit> {
    let acquire = p
        .services
        .endpoints
        .acquire(endpoint, p.connector.rate_limit);
    tokio::pin!(acquire);
    // Usually ready at once (the endpoint's fast lane): no heartbeat timer then.
    if let Some(permit) = futures::FutureExt::now_or_never(&mut acquire) {
        return permit;
    }
    let metrics = &p.telemetry.metrics;
    let mut beat = tokio::time::interval(p.heartbeat);
    beat.tick().await;
    let mut waiting = false;
    let permit = loop {
        tokio::select! {
            permit = &mut acquire => break permit,
            _ = beat.tick() => {
                if !waiting {
                    waiting = true;
                    metrics.waiting.increment(1.0);
                }
                if let Err(e) = Box::pin(d.in_progress()).await {
                    tracing::warn!(connector = %p.connector.id, "{e}");
                }
            }
        }
    };
    if waiting {
        metrics.waiting.decrement(1.0);
    }
    permit
}

/// Sends one request under the endpoint's permit, with the token of `auth`, signed (when
/// `signing` says how, with the idempotency key as its id) right before it leaves, so every
/// send carries a fresh timestamp. When the target refuses a fetched token, the token is
/// refreshed once and the request sent again at once (the same attempt: JetStream's delivery
/// count does not change). The answer's rate-limit headers go to the endpoint with its permit.
async fn call(
    p: &Pipeline,
    auth: Option<&Arc<Auth>>,
    signing: Option<(&Sign, &str)>,
    req: Request,
    endpoint: &str,
    d: &Delivery,
) -> Result<Exchange, Outcome> {
    let c = &*p.connector;
    let mut current = match auth {
        Some(a) => Some(Box::pin(token(p, a)).await?),
        None => None,
    };
    let mut refreshed = false;
    // Kept for a resend only when a fetched token may be refused (no copy otherwise).
    let mut req = Some(req);
    loop {
        let resend_possible = auth.is_some_and(|a| a.is_fetched()) && !refreshed;
        let mut r = match (resend_possible, req.take()) {
            (true, Some(q)) => {
                let copy = q.clone();
                req = Some(q);
                copy
            }
            (_, Some(q)) => q,
            (_, None) => return Err(Outcome::Invalid("no request to send".into())),
        };
        if let (Some(a), Some(t)) = (auth, &current) {
            a.apply(&mut r, t.value.expose())
                .map_err(|e| Outcome::Invalid(e.to_string()))?;
        }
        let mut permit = permit(p, endpoint, d).await;
        if let Some((sign, id)) = signing {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            request::sign(sign, &mut r, id, now).map_err(|e| Outcome::Invalid(e.to_string()))?;
        }
        let metrics = &p.telemetry.metrics;
        metrics.in_flight.increment(1.0);
        let mut ex = p.http.exchange_on(r, p.url_base.as_ref(), c.timeout).await;
        if !ex.answer.body.is_empty() {
            // What the target said may quote what it was sent: no secret goes on from here.
            let token = current.as_ref().map(|t| t.value.expose().to_string());
            ex.answer.body = scrubber(p, token).scrub(&ex.answer.body);
        }
        metrics.in_flight.decrement(1.0);
        let announced = match ex.status() {
            Some(_) => Announced::of_map(&ex.headers, SystemTime::now()),
            None => Announced::NoAnswer,
        };
        let spent = match announced {
            Announced::Budget(b) if b.remaining == 0 => Some(b.reset),
            _ => None,
        };
        retry_at_reset(&mut ex.answer.outcome, spent);
        if let Some(permit) = permit.as_mut() {
            permit.report(signal_of(&ex.answer.outcome, backoff(1, &c.retry, 0.0)));
            permit.announce(announced);
        }
        drop(permit);
        if let (Some(a), Some(t), Some(status)) = (auth, &current, ex.status()) {
            if a.is_fetched() && !refreshed {
                let json = check::body_json(&ex.body);
                let view = AnswerView {
                    status,
                    headers: &check::header_pairs(&ex.headers),
                    body: &json,
                };
                if a.rejected(view) {
                    tracing::info!(
                        "[{}] {} token refused (HTTP {status}): refreshing it and sending again",
                        c.id,
                        a.kind()
                    );
                    p.services.tokens.rejected(a, t.generation);
                    current = Some(Box::pin(token(p, a)).await?);
                    refreshed = true;
                    continue;
                }
            }
        }
        return Ok(ex);
    }
}

/// Runs the connector's lookup: its parsed JSON answer, or the attempt that ended on it
/// (classified like any other outcome).
async fn lookup(
    p: &Pipeline,
    l: &Lookup,
    event: &Json,
    d: &Delivery,
    started: Instant,
) -> Result<Json, Box<Attempted>> {
    let c = &*p.connector;
    let shown = request::build_lookup(l, event, Secrets::Masked)
        .map(|r| r.url)
        .unwrap_or_else(|_| l.url.source().to_string());
    let failed = |outcome: Outcome, body: String| {
        let line = format!("{} {shown} {}", l.method, describe(&outcome));
        Box::new(Attempted {
            outcome,
            url: shown.clone(),
            method: l.method.clone(),
            traceparent: String::new(),
            body,
            latency: None,
            started,
            line: Some(line),
        })
    };
    let req = match request::build_lookup(l, event, Secrets::Env) {
        Ok(r) => r,
        Err(e) => {
            return Err(failed(
                Outcome::Invalid(format!("lookup: {e}")),
                String::new(),
            ))
        }
    };
    let endpoint = endpoint_of(&req.url);
    let ex = call(
        p,
        l.effective_auth(c.auth.as_ref()),
        None,
        req,
        &endpoint,
        d,
    )
    .await
    .map_err(|o| failed(o, String::new()))?;
    let Some(status) = ex.status() else {
        return Err(failed(ex.answer.outcome, String::new()));
    };
    let class = classify(&ex.answer.outcome, &c.retry.statuses);
    if class != Class::Success {
        return Err(failed(
            Outcome::Rejected {
                reason: "lookup",
                transient: class == Class::Transient,
                message: format!("lookup {} {shown}: HTTP {status}", l.method),
            },
            shown_body(p, &ex.body),
        ));
    }
    let json = check::body_json(&ex.body);
    if let Some(check) = &l.check {
        let view = AnswerView {
            status,
            headers: &check::header_pairs(&ex.headers),
            body: &json,
        };
        if let Some(msg) = check.failure(view) {
            return Err(failed(
                Outcome::Rejected {
                    reason: "lookup",
                    transient: check.on_failure == OnFailure::Transient,
                    message: format!("lookup {shown}: {msg}"),
                },
                shown_body(p, &ex.body),
            ));
        }
    }
    if json.is_null() {
        return Err(failed(
            Outcome::Rejected {
                reason: "lookup",
                transient: false,
                message: format!("lookup {shown}: the answer is not JSON"),
            },
            shown_body(p, &ex.body),
        ));
    }
    Ok(json)
}

/// The secret values a request of this connector carries (its `${VAR}`s, and the token when
/// there is one), to take out of what a target answers.
fn scrubber(p: &Pipeline, token: Option<String>) -> crate::scrub::Scrubber {
    let names = crate::connector::secrets_used(&p.connector);
    crate::scrub::Scrubber::new(
        names
            .iter()
            .filter_map(|n| std::env::var(n).ok())
            .chain(token),
    )
}

/// The start of an answer's body as kept for the parked job and the logs: no secret of the
/// request in it.
fn shown_body(p: &Pipeline, body: &[u8]) -> String {
    let text = snippet(body);
    if text.is_empty() {
        return text;
    }
    scrubber(p, None).scrub(&text)
}
