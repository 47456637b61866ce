//! "Where is my event?": finds events on `HMS_EVENTS` (by stream sequence, `Nats-Msg-Id`,
//! idempotency key, or payload fields within a time window) and tells, per connector, what
//! happened to each: not offered, filtered out, every attempt (from the audit trail), parked
//! (and what a reviewer did with it), delivered, or still waiting.
//!
//! Read-only: events are read by sequence or with ordered ephemeral consumers; no durable
//! consumer moves. The CLI (`hms-sync trace`) and the status page (`/api/trace`) call [`trace`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value as Json;

use crate::audit::attempt_record;
use crate::bus::scan::{Position, ScanSpec, Step, StoredMessage};
use crate::bus::{audit::AUDIT_STREAM, records_of, EVENTS_STREAM, PARKED_STREAM};
use crate::bus::{covers, Bus, BusError, ORIGINAL_SUBJECT_HEADER, REPLAY_PREFIX};
use crate::connector::Connector;
use crate::filter::{EventMeta, Verdict};
use crate::logging::printable;
use crate::outcome::{classify, Class, Outcome as AttemptOutcome};
use crate::parked::{self, event_key, REPLAY_KEY_HEADER};
use crate::selection::{all_match, FieldMatch, Window};

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// The event at this stream sequence of `HMS_EVENTS`.
    Sequence(u64),
    /// Events published with this `Nats-Msg-Id` (within the window).
    MsgId(String),
    /// Events whose idempotency key for some connector is this (within the window).
    Key(String),
    /// Events whose payload has every one of these fields (within the window).
    Where(Vec<FieldMatch>),
}

impl Query {
    /// The query as the user wrote it.
    pub fn describe(&self) -> String {
        match self {
            Query::Sequence(n) => format!("stream sequence {n}"),
            Query::MsgId(id) => format!("Nats-Msg-Id {id}"),
            Query::Key(k) => format!("idempotency key {k}"),
            Query::Where(ms) => ms
                .iter()
                .map(FieldMatch::text)
                .collect::<Vec<_>>()
                .join(" and "),
        }
    }
}

/// A trace to run.
#[derive(Debug, Clone)]
pub struct Request {
    pub query: Query,
    /// Where to search by msg id, key or fields (a sequence is looked up directly).
    pub window: Window,
    /// Only this connector (an id).
    pub connector: Option<String>,
    /// At most this many events are traced.
    pub limit: usize,
    /// At most this many messages are read per scan (events, then audit records).
    pub max_scan: u64,
}

/// The answer: the events found and, for each, what every connector did with it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub query: String,
    /// The window searched (RFC 3339), for msg id, key and field searches.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Events read while searching.
    pub scanned: u64,
    /// The search stopped early (`max_scan` messages read, or `limit` events found).
    pub truncated: bool,
    /// The audit trail's search stopped at `max_scan` records: attempts may be missing.
    pub attempts_truncated: bool,
    pub events: Vec<EventTrace>,
}

/// One event and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct EventTrace {
    pub stream_sequence: u64,
    pub subject: String,
    pub published: String,
    pub msg_id: Option<String>,
    /// The inbound connector whose webhook published it, if any.
    pub webhook: Option<String>,
    /// Set when this event is itself a replay or resend (`hms.replay.<consumer>`): the
    /// original subject.
    pub replay_of_subject: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: String,
    pub connectors: Vec<ConnectorTrace>,
}

/// What one connector did with one event.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorTrace {
    pub id: String,
    pub consumer: String,
    pub idempotency_key: String,
    pub outcome: Outcome,
    /// The outcome in words.
    pub summary: String,
    pub attempts: Vec<AttemptSeen>,
    pub parked: Vec<ParkedSeen>,
}

/// Where an event stands for one connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A request was answered with success.
    Delivered,
    /// Given up on and waiting for review.
    Parked,
    /// Parked, then replayed or discarded by a reviewer (see `parked`).
    Resolved,
    /// The connector's filter excludes it (acknowledged without a request).
    FilteredOut,
    /// Attempted, not delivered yet: JetStream offers it again after the backoff.
    Retrying,
    /// Not handed to the connector yet.
    Pending,
    /// Published before the connector's consumer started: never offered to it.
    NotOffered,
    /// The consumer is gone (undeployed) or cannot be read.
    NoConsumer,
    /// Acknowledged, but the audit trail has no attempt for it in the searched range.
    Acknowledged,
}

/// One attempt, from the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptSeen {
    pub at: String,
    pub attempt: u64,
    pub method: String,
    pub url: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: Option<f64>,
    /// The stream sequence that was delivered: the event's own, or that of its replay.
    pub stream_sequence: u64,
    /// The attempt was of a replay or resend of the event.
    pub replay: bool,
}

/// A parked job of the event.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedSeen {
    pub id: u64,
    pub parked_at: String,
    pub error: String,
    /// What a reviewer did (`action`, `by`, `at`, ...), when they did.
    pub resolution: Option<Json>,
}

/// Why a trace failed.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("no event at stream sequence {0} of HMS_EVENTS (never stored, deleted, or older than the stream keeps)")]
    NoSuchEvent(u64),
    #[error("no connector {0}")]
    UnknownConnector(String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Runs a trace over `connectors` (the outbound connectors in force).
pub async fn trace(
    bus: &Bus,
    connectors: &[Arc<Connector>],
    req: &Request,
) -> Result<Report, TraceError> {
    let connectors: Vec<Arc<Connector>> = match &req.connector {
        Some(id) => {
            let c: Vec<_> = connectors.iter().filter(|c| c.id == *id).cloned().collect();
            if c.is_empty() {
                return Err(TraceError::UnknownConnector(id.clone()));
            }
            c
        }
        None => connectors.to_vec(),
    };
    let windowed = !matches!(req.query, Query::Sequence(_));
    let mut report = Report {
        query: req.query.describe(),
        since: windowed.then(|| crate::clock::to_second(req.window.since)),
        until: if windowed {
            req.window.until.map(crate::clock::to_second)
        } else {
            None
        },
        scanned: 0,
        truncated: false,
        attempts_truncated: false,
        events: vec![],
    };
    let found = find(bus, &connectors, req, &mut report).await?;
    if found.is_empty() {
        return Ok(report);
    }
    // Which connector sees which event, with which key.
    let mut wanted: Vec<(usize, Arc<Connector>, String)> = Vec::new();
    for (i, e) in found.iter().enumerate() {
        for c in &connectors {
            if let Some(key) = key_for(c, e) {
                wanted.push((i, c.clone(), key));
            }
        }
    }
    let since = found
        .iter()
        .map(|e| e.published)
        .min()
        .map(|t| t - time::Duration::SECOND);
    let keys: HashSet<&str> = wanted.iter().map(|(_, _, k)| k.as_str()).collect();
    let consumers: Vec<String> = {
        let set: std::collections::BTreeSet<String> =
            wanted.iter().map(|(_, c, _)| c.consumer.clone()).collect();
        set.into_iter().collect()
    };
    let (attempts, audit_truncated) =
        audit_attempts(bus, &consumers, &keys, since, req.max_scan).await?;
    report.attempts_truncated = audit_truncated;
    let mut positions: HashMap<String, Option<Position>> = HashMap::new();
    let mut parked_by: HashMap<String, Vec<(String, ParkedSeen)>> = HashMap::new();
    for consumer in &consumers {
        positions.insert(
            consumer.clone(),
            bus.consumer_position(consumer).await.unwrap_or(None),
        );
        parked_by.insert(consumer.clone(), parked_of(bus, consumer, &keys).await?);
    }
    let mut per_event: BTreeMap<usize, Vec<ConnectorTrace>> = BTreeMap::new();
    for (i, c, key) in wanted {
        let e = &found[i];
        let seen = attempts
            .get(&(c.consumer.clone(), key.clone()))
            .cloned()
            .unwrap_or_default();
        let parked: Vec<ParkedSeen> = parked_by
            .get(&c.consumer)
            .map(|v| {
                v.iter()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, p)| p.clone())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let position = positions.get(&c.consumer).copied().flatten();
        per_event
            .entry(i)
            .or_default()
            .push(judge(&c, e, key, seen, parked, position));
    }
    for (i, e) in found.into_iter().enumerate() {
        let payload = String::from_utf8_lossy(&e.payload).into_owned();
        report.events.push(EventTrace {
            stream_sequence: e.sequence,
            msg_id: e.msg_id().map(str::to_string),
            webhook: e.header("Hms-Webhook-Connector").map(str::to_string),
            replay_of_subject: e
                .subject
                .starts_with(REPLAY_PREFIX)
                .then(|| e.header(ORIGINAL_SUBJECT_HEADER).map(str::to_string))
                .flatten(),
            published: crate::clock::format(e.published),
            subject: e.subject,
            headers: e.headers,
            payload,
            connectors: per_event.remove(&i).unwrap_or_default(),
        });
    }
    Ok(report)
}

/// The events the query names (at most `limit`).
async fn find(
    bus: &Bus,
    connectors: &[Arc<Connector>],
    req: &Request,
    report: &mut Report,
) -> Result<Vec<StoredMessage>, TraceError> {
    let limit = req.limit.max(1);
    match &req.query {
        Query::Sequence(n) => match bus.event(*n).await? {
            Some(e) => Ok(vec![e]),
            None => Err(TraceError::NoSuchEvent(*n)),
        },
        q => {
            let headers_only = !matches!(q, Query::Where(_));
            let spec = ScanSpec {
                stream: EVENTS_STREAM.into(),
                subjects: vec![],
                since: Some(req.window.since),
                until: req.window.until,
                headers_only,
                max: req.max_scan,
                from_sequence: None,
                to_sequence: None,
            };
            let mut hits: Vec<u64> = Vec::new();
            let mut full: Vec<StoredMessage> = Vec::new();
            let scanned = bus
                .scan(&spec, |m| {
                    if m.subject.starts_with(REPLAY_PREFIX) {
                        // Replays are shown under their original event.
                        return Step::Continue;
                    }
                    let hit = match q {
                        Query::MsgId(id) => m.msg_id() == Some(id.as_str()),
                        Query::Key(k) => connectors
                            .iter()
                            .any(|c| key_for(c, &m).is_some_and(|key| key == *k)),
                        Query::Where(ms) => serde_json::from_slice::<Json>(&m.payload)
                            .is_ok_and(|p| all_match(ms, &p)),
                        Query::Sequence(_) => false,
                    };
                    if hit {
                        if headers_only {
                            hits.push(m.sequence);
                        } else {
                            full.push(m);
                        }
                    }
                    if hits.len() + full.len() >= limit {
                        Step::Stop
                    } else {
                        Step::Continue
                    }
                })
                .await?;
            report.scanned = scanned.scanned;
            report.truncated = scanned.truncated || hits.len() + full.len() >= limit;
            for seq in hits {
                if let Some(e) = bus.event(seq).await? {
                    full.push(e);
                }
            }
            Ok(full)
        }
    }
}

/// The idempotency key the connector uses for this event, when the event is one of its (its
/// trigger topic, or a replay on its own replay subject).
fn key_for(c: &Connector, e: &StoredMessage) -> Option<String> {
    if let Some(consumer) = e.subject.strip_prefix(REPLAY_PREFIX) {
        return (consumer == c.consumer)
            .then(|| e.header(REPLAY_KEY_HEADER).map(str::to_string))
            .flatten();
    }
    covers(&c.trigger.topic, &e.subject).then(|| event_key(&c.id, e.msg_id(), e.sequence))
}

/// Attempts by (consumer, key), oldest first, and whether the search stopped at its limit.
type Attempts = (HashMap<(String, String), Vec<AttemptSeen>>, bool);

/// Attempt records of the audit trail, by (consumer, key), oldest first.
async fn audit_attempts(
    bus: &Bus,
    consumers: &[String],
    keys: &HashSet<&str>,
    since: Option<time::OffsetDateTime>,
    max: u64,
) -> Result<Attempts, BusError> {
    let mut out: HashMap<(String, String), Vec<AttemptSeen>> = HashMap::new();
    if consumers.is_empty() || keys.is_empty() {
        return Ok((out, false));
    }
    let spec = ScanSpec {
        stream: AUDIT_STREAM.into(),
        subjects: consumers
            .iter()
            .map(|c| format!("external.sync.{c}"))
            .collect(),
        since,
        until: None,
        headers_only: false,
        max,
        from_sequence: None,
        to_sequence: None,
    };
    let found = bus.scan(&spec, |m| {
        // Cheap test first: the key's text is in the message, then in the record.
        if !keys.iter().any(|k| memchr_find(&m.payload, k.as_bytes())) {
            return Step::Continue;
        }
        // A message is a block of records, one per line.
        for line in records_of(&m.payload) {
            if !keys.iter().any(|k| memchr_find(line, k.as_bytes())) {
                continue;
            }
            let Some((r, key)) = attempt_record(line) else {
                continue;
            };
            if !keys.contains(key.as_str()) {
                continue;
            }
            let consumer = m
                .subject
                .strip_prefix("external.sync.")
                .unwrap_or_default()
                .to_string();
            let seq = r["event"]["streamSequence"].as_u64().unwrap_or_default();
            out.entry((consumer, key)).or_default().push(AttemptSeen {
                at: r["at"].as_str().unwrap_or_default().to_string(),
                attempt: r["attempt"].as_u64().unwrap_or_default(),
                method: r["method"].as_str().unwrap_or_default().to_string(),
                url: r["url"].as_str().unwrap_or_default().to_string(),
                status: r["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
                error: r["error"].as_str().map(str::to_string),
                latency_ms: r["latencyMs"].as_f64(),
                stream_sequence: seq,
                replay: false,
            });
        }
        Step::Continue
    });
    match found.await {
        Ok(scanned) => Ok((out, scanned.truncated)),
        // No audit trail yet: no attempts.
        Err(e) if e.kind == crate::bus::BusErrorKind::StreamMissing => Ok((out, false)),
        Err(e) => Err(e),
    }
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The parked jobs of a consumer whose key is among `keys` (with the key), waiting or
/// resolved (then with what the reviewer did).
async fn parked_of(
    bus: &Bus,
    consumer: &str,
    keys: &HashSet<&str>,
) -> Result<Vec<(String, ParkedSeen)>, BusError> {
    let mut out = Vec::new();
    let jobs = match parked::list(bus, Some(consumer)).await {
        Ok(j) => j,
        Err(e) if e.kind == crate::bus::BusErrorKind::StreamMissing => return Ok(out),
        Err(e) => return Err(e),
    };
    for r in jobs {
        let Some(p) = &r.job else { continue };
        if keys.contains(p.idempotency_key.as_str()) {
            out.push((
                p.idempotency_key.clone(),
                ParkedSeen {
                    id: r.id,
                    parked_at: p.parked_at.clone(),
                    error: p.error.clone(),
                    resolution: None,
                },
            ));
        }
    }
    // Resolved jobs are deleted from the queue; their records keep the job.
    let spec = ScanSpec {
        stream: PARKED_STREAM.into(),
        subjects: vec![format!("sync.resolved.{consumer}")],
        since: None,
        until: None,
        headers_only: false,
        max: 1_000_000,
        from_sequence: None,
        to_sequence: None,
    };
    let mut resolved = Vec::new();
    let scan = bus.scan(&spec, |m| {
        if keys.iter().any(|k| memchr_find(&m.payload, k.as_bytes())) {
            if let Ok(r) = serde_json::from_slice::<Json>(&m.payload) {
                resolved.push(r);
            }
        }
        Step::Continue
    });
    match scan.await {
        Ok(_) => {}
        Err(e) if e.kind == crate::bus::BusErrorKind::StreamMissing => return Ok(out),
        Err(e) => return Err(e),
    }
    for r in resolved {
        let key = r["idempotencyKey"]
            .as_str()
            .or_else(|| r["job"]["idempotencyKey"].as_str())
            .unwrap_or_default()
            .to_string();
        if !keys.contains(key.as_str()) {
            continue;
        }
        let job = &r["job"];
        let mut shown = serde_json::json!({
            "action": r["action"], "by": r["by"], "at": r["at"],
        });
        if let Some(reason) = r["reason"].as_str() {
            shown["reason"] = Json::from(reason);
        }
        if let Some(seq) = r["replaySequence"].as_u64() {
            shown["replaySequence"] = Json::from(seq);
        }
        out.push((
            key,
            ParkedSeen {
                id: r["parkedId"].as_u64().unwrap_or_default(),
                parked_at: job["parkedAt"]
                    .as_str()
                    .or_else(|| r["parkedAt"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                error: job["error"]
                    .as_str()
                    .or_else(|| r["error"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                resolution: Some(shown),
            },
        ));
    }
    out.sort_by_key(|(_, p)| p.id);
    Ok(out)
}

/// The outcome for one connector, from what the audit trail, the parked queue and the
/// consumer tell.
fn judge(
    c: &Connector,
    e: &StoredMessage,
    key: String,
    mut attempts: Vec<AttemptSeen>,
    parked: Vec<ParkedSeen>,
    position: Option<Position>,
) -> ConnectorTrace {
    for a in &mut attempts {
        a.replay = a.stream_sequence != e.sequence;
    }
    let success = attempts.iter().rev().find(|a| {
        a.status.is_some_and(|code| {
            classify(
                &AttemptOutcome::Status {
                    code,
                    retry_after: None,
                },
                &c.retry.statuses,
            ) == Class::Success
        }) && a.error.is_none()
    });
    let waiting = parked.iter().find(|p| p.resolution.is_none());
    let is_replay = e.subject.starts_with(REPLAY_PREFIX);
    let filter_says = if is_replay {
        None
    } else {
        c.trigger.filter.as_ref().and_then(|f| {
            let payload: Json = serde_json::from_slice(&e.payload).ok()?;
            let meta = EventMeta {
                topic: e.subject.clone(),
                sequence: e.sequence,
                published: crate::clock::format(e.published),
                id: e.msg_id().unwrap_or_default().to_string(),
            };
            match f.evaluate(&payload, &meta) {
                Verdict::Pass => None,
                Verdict::Excluded => Some(format!("`{}` is false for this event", f.source())),
                Verdict::NotEvaluable(why) => Some(why),
                Verdict::Failed(why) => Some(format!(
                    "`{}` fails on this event ({why}): it is parked",
                    f.source()
                )),
            }
        })
    };
    let (outcome, summary) = if let Some(a) = success {
        let via = if a.replay {
            format!(" (a replay, HMS_EVENTS seq {})", a.stream_sequence)
        } else {
            String::new()
        };
        (
            Outcome::Delivered,
            format!(
                "delivered at {} (attempt {}, HTTP {}){via}",
                a.at,
                a.attempt,
                a.status.unwrap_or_default()
            ),
        )
    } else if let Some(p) = waiting {
        (
            Outcome::Parked,
            format!(
                "parked as job {} at {}: {} (hms-sync parked show {})",
                p.id, p.parked_at, p.error, p.id
            ),
        )
    } else if let Some(p) = parked.last() {
        let r = p.resolution.clone().unwrap_or(Json::Null);
        let by = r["by"].as_str().unwrap_or("someone");
        let at = r["at"].as_str().unwrap_or("?");
        let action = r["action"].as_str().unwrap_or("resolved");
        (
            Outcome::Resolved,
            format!(
                "parked as job {} ({}), then {action} by {by} at {at}",
                p.id, p.error
            ),
        )
    } else if let Some(why) = filter_says {
        (Outcome::FilteredOut, format!("filtered out: {why}"))
    } else if position.is_none() {
        (
            Outcome::NoConsumer,
            format!("consumer {} does not exist (undeployed?)", c.consumer),
        )
    } else if let Some(start) = position
        .and_then(|p| p.starts_at)
        .filter(|s| e.published < *s)
    {
        (
            Outcome::NotOffered,
            format!(
                "never offered: published before consumer {} started ({})",
                c.consumer,
                crate::clock::format(start)
            ),
        )
    } else if let Some(a) = attempts.last() {
        let what = a
            .error
            .clone()
            .or_else(|| a.status.map(|s| format!("HTTP {s}")))
            .unwrap_or_default();
        (
            Outcome::Retrying,
            format!(
                "not delivered yet: attempt {} at {} failed ({what}); JetStream offers it again after the backoff",
                a.attempt, a.at
            ),
        )
    } else if position.is_some_and(|p| e.sequence > p.ack_floor) {
        (
            Outcome::Pending,
            format!(
                "waiting: consumer {} has not handed it out yet, or it is in flight",
                c.consumer
            ),
        )
    } else {
        (
            Outcome::Acknowledged,
            "acknowledged, but the audit trail has no attempt for it in the searched range".into(),
        )
    };
    ConnectorTrace {
        id: c.id.clone(),
        consumer: c.consumer.clone(),
        idempotency_key: key,
        outcome,
        summary,
        attempts,
        parked,
    }
}

impl Report {
    /// The report for a terminal (control characters shown as spaces).
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if self.events.is_empty() {
            let _ = write!(out, "no event with {}", self.query);
            if let Some(since) = &self.since {
                let _ = write!(out, " published since {since}");
                if let Some(until) = &self.until {
                    let _ = write!(out, " until {until}");
                }
            }
            let _ = writeln!(out, " ({} events read)", self.scanned);
            return out;
        }
        for e in &self.events {
            let _ = write!(
                out,
                "event HMS_EVENTS seq {}  {}  published {}",
                e.stream_sequence,
                printable(&e.subject),
                e.published
            );
            if let Some(id) = &e.msg_id {
                let _ = write!(out, "  msg id {}", printable(id));
            }
            out.push('\n');
            if let Some(w) = &e.webhook {
                let _ = writeln!(out, "  from webhook of {}", printable(w));
            }
            if let Some(s) = &e.replay_of_subject {
                let _ = writeln!(out, "  a replay of an event on {}", printable(s));
            }
            let _ = writeln!(out, "  payload: {}", printable(&shorten(&e.payload, 300)));
            if e.connectors.is_empty() {
                let _ = writeln!(
                    out,
                    "  no outbound connector listens on {}",
                    printable(&e.subject)
                );
            }
            for c in &e.connectors {
                let _ = writeln!(out, "  {}  (key {})", printable(&c.id), c.idempotency_key);
                for a in &c.attempts {
                    let result = match (&a.status, &a.error) {
                        (_, Some(err)) => printable(err),
                        (Some(s), None) => format!("HTTP {s}"),
                        (None, None) => "-".into(),
                    };
                    let latency = a
                        .latency_ms
                        .map(|l| format!(" ({l:.1} ms)"))
                        .unwrap_or_default();
                    let replay = if a.replay {
                        format!(" [replay seq {}]", a.stream_sequence)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        out,
                        "    attempt {}  {}  {} {}  {result}{latency}{replay}",
                        a.attempt,
                        a.at,
                        a.method,
                        printable(&a.url)
                    );
                }
                if !matches!(c.outcome, Outcome::Parked | Outcome::Resolved) {
                    for p in &c.parked {
                        let what = p.resolution.as_ref().map_or_else(
                            || "waiting for review".to_string(),
                            |r| {
                                format!(
                                    "{} by {} at {}",
                                    r["action"].as_str().unwrap_or("resolved"),
                                    r["by"].as_str().unwrap_or("?"),
                                    r["at"].as_str().unwrap_or("?")
                                )
                            },
                        );
                        let mut line = format!("    parked as job {}", p.id);
                        if !p.parked_at.is_empty() {
                            line.push_str(&format!(" at {}", p.parked_at));
                        }
                        if !p.error.is_empty() {
                            line.push_str(&format!(" ({})", printable(&p.error)));
                        }
                        let _ = writeln!(out, "{line}; {}", printable(&what));
                    }
                }
                let _ = writeln!(out, "    => {}", printable(&c.summary));
            }
        }
        if self.attempts_truncated {
            let _ = writeln!(
                out,
                "(the audit trail's search stopped at its limit: attempts may be missing; raise --max-scan)"
            );
        }
        if self.truncated {
            let _ = writeln!(
                out,
                "(stopped after {} events read and {} found: narrow the window or raise --limit)",
                self.scanned,
                self.events.len()
            );
        }
        out
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(yaml: &str) -> Connector {
        match crate::connector::parse("t.yaml", yaml).unwrap() {
            crate::connector::AnyConnector::Outbound(c) => *c,
            _ => panic!("outbound"),
        }
    }

    fn gis() -> Connector {
        connector(
            "id: a.v1\ntype: outbound\ntrigger:\n  topic: permit.*\n  filter: object.agency == \"DDOT\"\nmap:\n  to:\n    url: http://127.0.0.1:1/x/{id}\n    method: PUT\n",
        )
    }

    fn event(seq: u64, subject: &str, payload: &str, headers: &[(&str, &str)]) -> StoredMessage {
        StoredMessage {
            sequence: seq,
            subject: subject.into(),
            published: crate::clock::parse("2026-05-10T12:00:00Z").unwrap(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    fn attempt(n: u64, status: Option<u16>, error: Option<&str>, seq: u64) -> AttemptSeen {
        AttemptSeen {
            at: format!("2026-05-10T12:00:0{n}Z"),
            attempt: n,
            method: "PUT".into(),
            url: "http://127.0.0.1:1/x/1".into(),
            status,
            error: error.map(str::to_string),
            latency_ms: Some(1.0),
            stream_sequence: seq,
            replay: false,
        }
    }

    fn position(ack_floor: u64) -> Option<Position> {
        Some(Position {
            ack_floor,
            delivered: ack_floor,
            pending: 0,
            ack_pending: 0,
            waiting_pulls: 1,
            starts_at: crate::clock::parse("2026-05-10T11:00:00Z"),
            starts_at_sequence: None,
        })
    }

    #[test]
    fn keys_follow_the_topic_the_msg_id_and_replays() {
        let c = gis();
        let e = event(7, "permit.updated", "{}", &[]);
        assert_eq!(key_for(&c, &e), Some(event_key("a.v1", None, 7)));
        let e = event(7, "permit.updated", "{}", &[("Nats-Msg-Id", "m1")]);
        assert_eq!(key_for(&c, &e), Some(event_key("a.v1", Some("m1"), 7)));
        assert_eq!(key_for(&c, &event(7, "fee.paid", "{}", &[])), None);
        let replay = event(9, "hms.replay.a_v1", "{}", &[(REPLAY_KEY_HEADER, "k0")]);
        assert_eq!(key_for(&c, &replay).as_deref(), Some("k0"));
        let other = event(9, "hms.replay.b_v1", "{}", &[(REPLAY_KEY_HEADER, "k0")]);
        assert_eq!(key_for(&c, &other), None);
    }

    #[test]
    fn outcomes_from_attempts_parked_jobs_filter_and_position() {
        let c = gis();
        let ddot = event(7, "permit.updated", r#"{"agency":"DDOT"}"#, &[]);
        let nyc = event(7, "permit.updated", r#"{"agency":"NYC"}"#, &[]);
        let j = |e: &StoredMessage, a: Vec<AttemptSeen>, p: Vec<ParkedSeen>, pos| {
            judge(&c, e, "k".into(), a, p, pos)
        };
        let t = j(
            &ddot,
            vec![
                attempt(1, Some(503), None, 7),
                attempt(2, Some(200), None, 7),
            ],
            vec![],
            position(7),
        );
        assert_eq!(t.outcome, Outcome::Delivered);
        assert!(t.summary.contains("attempt 2, HTTP 200"), "{}", t.summary);
        let t = j(
            &ddot,
            vec![attempt(1, Some(503), None, 7)],
            vec![],
            position(6),
        );
        assert_eq!(t.outcome, Outcome::Retrying);
        let parked = ParkedSeen {
            id: 3,
            parked_at: "2026-05-10T12:00:05Z".into(),
            error: "HTTP 400".into(),
            resolution: None,
        };
        let t = j(
            &ddot,
            vec![attempt(1, Some(400), None, 7)],
            vec![parked.clone()],
            position(7),
        );
        assert_eq!(t.outcome, Outcome::Parked);
        assert!(t.summary.contains("parked as job 3"), "{}", t.summary);
        let mut replayed = parked.clone();
        replayed.resolution =
            Some(serde_json::json!({"action": "replayed", "by": "rosa", "at": "T"}));
        let t = j(
            &ddot,
            vec![
                attempt(1, Some(400), None, 7),
                attempt(1, Some(200), None, 12),
            ],
            vec![replayed.clone()],
            position(12),
        );
        assert_eq!(t.outcome, Outcome::Delivered);
        assert!(t.attempts[1].replay && t.summary.contains("a replay, HMS_EVENTS seq 12"));
        let t = j(
            &ddot,
            vec![attempt(1, Some(400), None, 7)],
            vec![replayed],
            position(12),
        );
        assert_eq!(t.outcome, Outcome::Resolved);
        assert!(t.summary.contains("replayed by rosa"), "{}", t.summary);
        let t = j(&nyc, vec![], vec![], position(7));
        assert_eq!(t.outcome, Outcome::FilteredOut);
        assert!(
            t.summary.contains("object.agency == \"DDOT\""),
            "{}",
            t.summary
        );
        assert_eq!(
            j(&ddot, vec![], vec![], position(6)).outcome,
            Outcome::Pending
        );
        assert_eq!(
            j(&ddot, vec![], vec![], position(7)).outcome,
            Outcome::Acknowledged
        );
        assert_eq!(j(&ddot, vec![], vec![], None).outcome, Outcome::NoConsumer);
        let mut late = position(7);
        if let Some(p) = late.as_mut() {
            p.starts_at = crate::clock::parse("2026-05-10T13:00:00Z");
        }
        assert_eq!(j(&ddot, vec![], vec![], late).outcome, Outcome::NotOffered);
        // A 2xx with an error (a failed response check) is not a delivery.
        let t = j(
            &ddot,
            vec![attempt(1, Some(200), Some("HTTP 200, but ..."), 7)],
            vec![],
            position(6),
        );
        assert_eq!(t.outcome, Outcome::Retrying);
    }

    #[test]
    fn the_text_report_names_every_attempt_and_the_outcome() {
        let c = gis();
        let e = event(
            7,
            "permit.updated",
            "{\"agency\":\"DDOT\"}\n",
            &[("Nats-Msg-Id", "m1")],
        );
        let t = judge(
            &c,
            &e,
            "k1".into(),
            vec![attempt(1, Some(200), None, 7)],
            vec![],
            position(7),
        );
        let r = Report {
            query: "stream sequence 7".into(),
            since: None,
            until: None,
            scanned: 0,
            truncated: false,
            attempts_truncated: false,
            events: vec![EventTrace {
                stream_sequence: 7,
                subject: e.subject.clone(),
                published: "2026-05-10T12:00:00Z".into(),
                msg_id: Some("m1".into()),
                webhook: None,
                replay_of_subject: None,
                headers: vec![],
                payload: "{\"agency\":\"DDOT\"}\n".into(),
                connectors: vec![t],
            }],
        };
        let text = r.to_text();
        assert!(text.starts_with("event HMS_EVENTS seq 7  permit.updated  published 2026-05-10T12:00:00Z  msg id m1\n"), "{text}");
        assert!(
            text.contains("  payload: {\"agency\":\"DDOT\"} \n"),
            "{text}"
        );
        assert!(text.contains("  a.v1  (key k1)\n    attempt 1  2026-05-10T12:00:01Z  PUT http://127.0.0.1:1/x/1  HTTP 200 (1.0 ms)\n    => delivered at"), "{text}");
    }
}
