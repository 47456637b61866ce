//! Stage 4 of a delivery, settle: the one place that acts on an attempt. It writes the audit
//! record, the console line, the metrics and status numbers, then acks, schedules the event
//! again (NAK with the judged delay) or parks it (then acks).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::attempt::{Attempted, Finished, PendingPark};
use super::pipeline::Pipeline;
use super::telemetry::Ended;
use crate::audit::{AttemptRecord, AuditRecord, EventRef};
use crate::bus::{BusError, Delivery};
use crate::clock::now_rfc3339;
use crate::logging::CONSOLE;
use crate::outcome::{describe, Action, Outcome};
use crate::parked::{Attempt, ParkedEvent, ParkedJob};

/// Wait before offering an event again when parking it failed (NATS trouble, a full stream),
/// doubled for each failure in a row up to [`PARK_RETRY_MAX`].
const PARK_RETRY: Duration = Duration::from_secs(5);
const PARK_RETRY_MAX: Duration = Duration::from_secs(300);
/// How often a connector's failing parks are told on `hitl.review.requested`.
const PARK_ALERT_EVERY: Duration = Duration::from_secs(60);
/// Bytes of a parked job's message kept for its NATS headers.
const PARK_HEADROOM: usize = 4096;

/// The filter excluded the event: counted and acked.
pub async fn filtered(p: &Pipeline, d: &Delivery) -> Finished {
    p.telemetry.filtered();
    if let Err(e) = d.ack().await {
        tracing::warn!(connector = %p.connector.id, "{e}");
    }
    Finished::Done
}

/// Acts on one attempt as the judge decided (`action`).
pub async fn settle(
    p: &Pipeline,
    d: &Delivery,
    key: &str,
    a: Attempted,
    action: Action,
) -> Finished {
    let c = &*p.connector;
    audit(p, d, key, &a);
    if let Some(line) = &a.line {
        let how = || match &a.outcome {
            Outcome::Status { code, .. } => Ended::Status(*code),
            other => Ended::Other(describe(other)),
        };
        let console = p.telemetry.console(&c.id, how);
        if console.print {
            // The seed's console line; JSON logs carry the same as fields.
            let status = match &a.outcome {
                Outcome::Status { code, .. } => Some(*code),
                _ => None,
            };
            tracing::info!(
                target: CONSOLE,
                connector = %c.id,
                method = %a.method,
                url = %a.url,
                status,
                duration_ms = a.latency.map(|l| l.as_secs_f64() * 1000.0),
                stream_seq = d.stream_sequence,
                idempotency_key = key,
                attempt = d.delivered,
                "[{}] {line}",
                c.id
            );
        }
        if let Some((due, summary)) = console.summary_at {
            p.services.timers.at(due, summary);
        }
    }
    match action {
        Action::Ack => {
            p.history.forget(d.stream_sequence);
            let since_publish =
                (time::OffsetDateTime::now_utc() - d.published).as_seconds_f64() * 1000.0;
            let latency_ms = since_publish.max(a.started.elapsed().as_secs_f64() * 1000.0);
            p.telemetry.delivered(latency_ms);
            if let Err(e) = d.ack().await {
                tracing::warn!(connector = %c.id, "{e}");
            }
            Finished::Done
        }
        Action::Retry(delay) => {
            let error = describe(&a.outcome);
            p.history.record(
                d.stream_sequence,
                Attempt::new(d.delivered, &a.outcome, &error, &a.body),
            );
            p.telemetry.failed(&a.outcome, &a.url, &error, true);
            tracing::warn!(
                target: CONSOLE,
                connector = %c.id,
                stream_seq = d.stream_sequence,
                idempotency_key = key,
                attempt = d.delivered,
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
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
            let error = describe(&a.outcome);
            p.telemetry.failed(&a.outcome, &a.url, &error, false);
            let mut attempts = p.history.forget(d.stream_sequence);
            if !matches!(a.outcome, Outcome::Invalid(_)) || attempts.is_empty() {
                attempts.push(Attempt::new(d.delivered, &a.outcome, &error, &a.body));
            }
            // Boxed: parking is rare and its future large.
            Box::pin(park_or_retry(p, d, key, &error, &a.url, attempts)).await
        }
    }
}

/// Parks an event whose parking failed before, for the reason it was judged for then, without
/// calling its target again (no audit record either: no attempt is made).
pub async fn repark(p: &Pipeline, d: &Delivery, key: &str, pending: PendingPark) -> Finished {
    let attempts = p.history.forget(d.stream_sequence);
    park_or_retry(p, d, key, &pending.error, &pending.url, attempts).await
}

/// Stores the parked job and acks; when parking fails, the event is not acked but offered
/// again after a wait that grows with each failure in a row (5 s doubling, at most 5 min).
async fn park_or_retry(
    p: &Pipeline,
    d: &Delivery,
    key: &str,
    error: &str,
    url: &str,
    attempts: Vec<Attempt>,
) -> Finished {
    let c = &*p.connector;
    if let Err(e) = park(p, d, key, error, url, attempts.clone()).await {
        // Not parked: not acked either. JetStream will offer it again.
        let failures = p.history.park_failed(d.stream_sequence, error, url);
        let wait = PARK_RETRY
            .saturating_mul(1 << failures.saturating_sub(1).min(6))
            .min(PARK_RETRY_MAX);
        tracing::error!(
            "[{}] could not park event seq {}: {e}; trying again in {} s",
            c.id,
            d.stream_sequence,
            wait.as_secs()
        );
        park_failed(p, d, &e);
        p.history.restore(d.stream_sequence, attempts);
        let _ = d.retry_after(wait).await;
        return Finished::Retry(wait);
    }
    p.history.parked(d.stream_sequence);
    p.telemetry.parked();
    if let Err(e) = d.ack().await {
        tracing::warn!(connector = %c.id, "{e}");
    }
    Finished::Done
}

/// Counts a park that failed, and tells reviewers (at most once a minute per connector): the
/// event stays unacked and is offered again, so nothing is lost, but nothing gets parked
/// either until `HMS_SYNC_PARKED` takes writes again.
fn park_failed(p: &Pipeline, d: &Delivery, e: &BusError) {
    let c = &*p.connector;
    metrics::counter!(
        crate::metrics::PARK_FAILURES_TOTAL,
        "connector" => c.id.clone(),
        "reason" => e.kind.label()
    )
    .increment(1);
    static LAST: std::sync::Mutex<Option<HashMap<String, Instant>>> = std::sync::Mutex::new(None);
    let due = {
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let map = last.get_or_insert_with(HashMap::new);
        let due = map
            .get(&c.id)
            .is_none_or(|t| t.elapsed() >= PARK_ALERT_EVERY);
        if due {
            map.insert(c.id.clone(), Instant::now());
        }
        due
    };
    if !due {
        return;
    }
    let alert = serde_json::json!({
        "kind": "sync.park_failed",
        "connector": c.id,
        "reason": e.kind.label(),
        "error": e.to_string(),
        "streamSequence": d.stream_sequence,
        "at": now_rfc3339(),
    });
    let bus = p.bus.clone();
    tokio::spawn(async move {
        let _ = bus.review(alert.to_string().as_bytes()).await;
    });
}

/// Hands the attempt's record to the audit actor (never waits for it).
fn audit(p: &Pipeline, d: &Delivery, key: &str, a: &Attempted) {
    let c = &*p.connector;
    let (status, error) = match &a.outcome {
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
        latency_ms: a.latency.map(|l| l.as_secs_f64() * 1000.0),
        method: a.method.clone(),
        status,
        traceparent: a.traceparent.clone(),
        url: a.url.clone(),
    };
    p.services
        .audit
        .record(&p.audit, AuditRecord::Attempt(Box::new(record)));
}

/// Stores the parked job (awaiting JetStream's ack) and announces it to reviewers.
async fn park(
    p: &Pipeline,
    d: &Delivery,
    key: &str,
    error: &str,
    url: &str,
    attempts: Vec<Attempt>,
) -> Result<u64, BusError> {
    let c = &*p.connector;
    // The exact bytes of the event, never a lossy conversion.
    let (payload, payload_encoding) = ParkedEvent::encode_payload(d.payload());
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
            published: crate::clock::format(d.published),
            msg_id: d.msg_id.clone(),
            headers: d.headers(),
            payload,
            payload_encoding,
        },
    };
    // Room for the headers of the message (ids, and the record itself when it goes there).
    let room = p.bus.max_payload().saturating_sub(PARK_HEADROOM);
    let message = job.to_message(d.payload(), room);
    let seq = p
        .bus
        .park(&c.consumer, &job.dedup_id(d.delivered), message)
        .await?;
    tracing::warn!(
        target: CONSOLE,
        connector = %c.id,
        stream_seq = d.stream_sequence,
        idempotency_key = key,
        attempt = d.delivered,
        parked_id = seq,
        error = %error,
        "[{}] parked event seq {} as parked job {seq}: {error}",
        c.id,
        d.stream_sequence
    );
    let review = job.review_alert(seq);
    if let Err(e) = p.bus.review(review.to_string().as_bytes()).await {
        tracing::warn!("[{}] review alert not sent: {e}", c.id);
    }
    Ok(seq)
}
