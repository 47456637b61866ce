//! "Send it all again": a connector's past events published again on its own replay subject
//! (`hms.replay.<consumer>`), with their original idempotency keys, so that they go through
//! the connector's filter and mapping and its endpoint's limits in the running `up`, while its
//! durable consumer keeps its position (the resent events are new messages after it).
//!
//! Three steps, each usable alone: [`select`] reads the window with an ordered ephemeral
//! consumer (nothing moves) and picks the events the connector would send; [`send`] publishes
//! them in chunks, each after the consumer took the previous one (so live events never wait
//! behind more than a chunk); [`follow`] waits until the consumer acknowledged them all and
//! [`outcomes`] reads from the audit trail and the parked queue what became of them. Parked
//! replay (`hms-sync parked replay --all`) uses [`follow`] and [`outcomes`] too.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value as Json;

use crate::audit::attempt_record;
use crate::bus::audit::AUDIT_STREAM;
use crate::bus::scan::{Position, ScanSpec, Step};
use crate::bus::{
    Bus, BusError, BusErrorKind, EVENTS_STREAM, ORIGINAL_SUBJECT_HEADER, PIN_HEADER,
    REPLAY_OF_HEADER,
};
use crate::connector::Connector;
use crate::filter::{EventMeta, Verdict};
use crate::parked::{self, event_key, ORIGINAL_SEQUENCE_HEADER, REPLAY_KEY_HEADER};
use crate::selection::{all_match, FieldMatch, Window};

/// Header of a resent event naming the resync run that sent it.
pub const RESYNC_HEADER: &str = "Hms-Resync";

/// What to resend.
#[derive(Debug, Clone)]
pub struct Spec {
    pub window: Window,
    /// Payload fields every resent event has (`--where`).
    pub matches: Vec<FieldMatch>,
    /// Events published per chunk; the next chunk waits until the consumer has fewer than
    /// this many events waiting.
    pub chunk: usize,
    /// Read at most this many events.
    pub max_scan: u64,
}

/// One event picked for resending.
#[derive(Debug, Clone, Serialize)]
pub struct Picked {
    pub stream_sequence: u64,
    pub subject: String,
    pub published: String,
    pub idempotency_key: String,
}

/// What [`select`] found in the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Selection {
    pub connector: String,
    pub consumer: String,
    pub topic: String,
    pub since: String,
    pub until: Option<String>,
    /// Events of the connector's topic read in the window.
    pub scanned: u64,
    /// Picked for resending.
    pub selected: u64,
    /// Not matching `--where`.
    pub not_matching: u64,
    /// Excluded by the connector's filter (it would not send them either).
    pub filtered_out: u64,
    /// Not JSON (the connector parks those; they are not resent).
    pub not_json: u64,
    /// The read stopped at `max_scan`.
    pub truncated: bool,
    /// The first picked events (at most 10), for a dry run.
    pub sample: Vec<Picked>,
    /// The picked stream sequences, in order.
    #[serde(skip)]
    pub sequences: Vec<u64>,
    /// The stream's last sequence when the selection was made: nothing later is resent.
    #[serde(skip)]
    pub to_sequence: u64,
}

/// Picks the events of `c`'s trigger topic in the window that it would send (JSON, matching
/// `--where`, passing its filter). Reads only.
pub async fn select(bus: &Bus, c: &Connector, spec: &Spec) -> Result<Selection, BusError> {
    let to_sequence = bus.events_last_sequence().await?;
    let mut sel = Selection {
        connector: c.id.clone(),
        consumer: c.consumer.clone(),
        topic: c.trigger.topic.clone(),
        since: crate::clock::to_second(spec.window.since),
        until: spec.window.until.map(crate::clock::to_second),
        to_sequence,
        ..Default::default()
    };
    let scan = ScanSpec {
        stream: EVENTS_STREAM.into(),
        subjects: vec![c.trigger.topic.clone()],
        since: Some(spec.window.since),
        until: spec.window.until,
        from_sequence: None,
        to_sequence: Some(to_sequence),
        headers_only: false,
        max: spec.max_scan,
    };
    let mut sample = Vec::new();
    let mut sequences = Vec::new();
    let (mut not_matching, mut filtered_out, mut not_json) = (0, 0, 0);
    let scanned = bus
        .scan(&scan, |m| {
            if m.subject.starts_with(crate::bus::REPLAY_PREFIX) {
                // A topic such as `>` also covers replays: those are not past events.
                return Step::Continue;
            }
            let Ok(payload) = serde_json::from_slice::<Json>(&m.payload) else {
                not_json += 1;
                return Step::Continue;
            };
            if !all_match(&spec.matches, &payload) {
                not_matching += 1;
                return Step::Continue;
            }
            if let Some(f) = &c.trigger.filter {
                let meta = EventMeta {
                    topic: m.subject.clone(),
                    sequence: m.sequence,
                    published: crate::clock::format(m.published),
                    id: m.msg_id().unwrap_or_default().to_string(),
                };
                if !matches!(f.evaluate(&payload, &meta), Verdict::Pass) {
                    filtered_out += 1;
                    return Step::Continue;
                }
            }
            if sample.len() < 10 {
                sample.push(Picked {
                    stream_sequence: m.sequence,
                    subject: m.subject.clone(),
                    published: crate::clock::format(m.published),
                    idempotency_key: event_key(&c.id, m.msg_id(), m.sequence),
                });
            }
            sequences.push(m.sequence);
            Step::Continue
        })
        .await?;
    sel.scanned = scanned.scanned;
    sel.truncated = scanned.truncated;
    sel.selected = sequences.len() as u64;
    sel.sequences = sequences;
    sel.sample = sample;
    sel.not_matching = not_matching;
    sel.filtered_out = filtered_out;
    sel.not_json = not_json;
    Ok(sel)
}

/// What [`send`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sent {
    /// This run's id (in the `Hms-Resync` header and the `Nats-Msg-Id` of every resent event).
    pub run: String,
    pub sent: u64,
    /// Their sequences on `HMS_EVENTS` (subject `hms.replay.<consumer>`), in order.
    #[serde(skip)]
    pub replay_sequences: Vec<u64>,
    /// Their idempotency keys.
    #[serde(skip)]
    pub keys: HashSet<String>,
}

/// What a long command tells its progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// This many published so far.
    Sent(u64),
    /// This many acknowledged by the connector's consumer so far.
    Taken(u64),
    /// Nothing moved for this long; this many events wait on the consumer.
    Stalled { waiting: u64, secs: u64 },
}

/// Why sending or following stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("consumer {0} does not exist: is the connector deployed or in the connectors folder of a running `up`?")]
    NoConsumer(String),
    #[error("no running `hms-sync up` pulls from consumer {consumer} ({waiting} events wait for it); what was sent stays queued and is delivered once one runs")]
    NoPuller { consumer: String, waiting: u64 },
    #[error("nothing moved for {secs} s: consumer {consumer} still has {waiting} events waiting (is `hms-sync up` running with this connector?); what was sent stays queued and is delivered once it runs")]
    Stalled {
        consumer: String,
        waiting: u64,
        secs: u64,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// How often positions are polled.
const POLL: Duration = Duration::from_millis(200);
/// After this long without a move, [`Tick::Stalled`] is reported (again every such period).
const STALL_NOTE: Duration = Duration::from_secs(5);
/// After this long without a move and without any pull request on the consumer, no `up`
/// runs the connector: waiting is given up.
const NO_PULLER: Duration = Duration::from_secs(10);

/// The headers of a resent event: the original ones minus those hms-sync sets, plus the
/// original idempotency key, subject and sequence, the run, and a `Nats-Msg-Id` that stores
/// one resend of an event per run once.
pub fn resend_headers(
    original: &[(String, String)],
    consumer: &str,
    key: &str,
    subject: &str,
    sequence: u64,
    run: &str,
) -> Vec<(String, String)> {
    let ours = [
        "Nats-Msg-Id",
        PIN_HEADER,
        REPLAY_KEY_HEADER,
        ORIGINAL_SUBJECT_HEADER,
        ORIGINAL_SEQUENCE_HEADER,
        REPLAY_OF_HEADER,
        RESYNC_HEADER,
    ];
    let mut h: Vec<(String, String)> = original
        .iter()
        .filter(|(k, _)| !ours.iter().any(|o| k.eq_ignore_ascii_case(o)))
        .cloned()
        .collect();
    h.push((REPLAY_KEY_HEADER.into(), key.into()));
    h.push((ORIGINAL_SUBJECT_HEADER.into(), subject.into()));
    h.push((ORIGINAL_SEQUENCE_HEADER.into(), sequence.to_string()));
    h.push((RESYNC_HEADER.into(), run.into()));
    h.push((
        "Nats-Msg-Id".into(),
        format!("resync:{consumer}:{run}:{sequence}"),
    ));
    h
}

/// Publishes the selected events again on the connector's replay subject, in chunks of
/// `spec.chunk`: each chunk after the consumer has fewer than `spec.chunk` events waiting.
/// Gives up when nothing moves for `idle`.
pub async fn send(
    bus: &Bus,
    c: &Connector,
    sel: &Selection,
    spec: &Spec,
    idle: Duration,
    tick: &mut (dyn FnMut(Tick) + Send),
) -> Result<Sent, ResyncError> {
    let run = crate::parked::derive_key(
        "resync",
        &format!("{}:{}", std::process::id(), crate::clock::now_rfc3339()),
    )[..8]
        .to_string();
    let mut out = Sent {
        run: run.clone(),
        ..Default::default()
    };
    let Some(&first) = sel.sequences.first() else {
        return Ok(out);
    };
    if bus.consumer_position(&c.consumer).await?.is_none() {
        return Err(ResyncError::NoConsumer(c.consumer.clone()));
    }
    let chunk = spec.chunk.max(1);
    let mut next = first;
    loop {
        let mut batch: Vec<(Vec<(String, String)>, Bytes)> = Vec::new();
        let mut last_seen = next;
        let scan = ScanSpec {
            stream: EVENTS_STREAM.into(),
            subjects: vec![c.trigger.topic.clone()],
            since: None,
            until: None,
            from_sequence: Some(next),
            to_sequence: Some(sel.to_sequence),
            headers_only: false,
            max: u64::MAX,
        };
        bus.scan(&scan, |m| {
            last_seen = m.sequence;
            if sel.sequences.binary_search(&m.sequence).is_ok() {
                let key = event_key(&c.id, m.msg_id(), m.sequence);
                out.keys.insert(key.clone());
                batch.push((
                    resend_headers(&m.headers, &c.consumer, &key, &m.subject, m.sequence, &run),
                    m.payload,
                ));
            }
            if batch.len() >= chunk {
                Step::Stop
            } else {
                Step::Continue
            }
        })
        .await?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.sent += batch.len() as u64;
        out.replay_sequences
            .extend(bus.publish_replays(&c.consumer, batch).await?);
        tick(Tick::Sent(out.sent));
        if out.sent >= sel.selected || last_seen >= sel.to_sequence {
            return Ok(out);
        }
        next = last_seen + 1;
        pace(bus, &c.consumer, chunk as u64, idle, tick).await?;
    }
}

/// Where the consumer is now; `NoConsumer` when it is gone.
async fn position(bus: &Bus, consumer: &str) -> Result<Position, ResyncError> {
    bus.consumer_position(consumer)
        .await?
        .ok_or_else(|| ResyncError::NoConsumer(consumer.to_string()))
}

/// How long a consumer has not moved, and when that was last told (a `Tick::Stalled` every
/// [`STALL_NOTE`]).
struct Standstill {
    since: tokio::time::Instant,
    noted: tokio::time::Instant,
}

impl Standstill {
    fn new() -> Standstill {
        let now = tokio::time::Instant::now();
        Standstill {
            since: now,
            noted: now,
        }
    }

    /// The consumer moved: the standstill starts again.
    fn moved(&mut self) {
        *self = Standstill::new();
    }

    /// Gives up when no instance pulls (nothing pulled or unacknowledged for [`NO_PULLER`])
    /// or nothing moved for `idle`; else notes a long standstill. `waiting`: the events not
    /// handled yet.
    fn check(
        &mut self,
        consumer: &str,
        p: &Position,
        waiting: u64,
        idle: Duration,
        tick: &mut (dyn FnMut(Tick) + Send),
    ) -> Result<(), ResyncError> {
        let stalled = self.since.elapsed();
        if p.waiting_pulls == 0 && p.ack_pending == 0 && stalled >= NO_PULLER {
            return Err(ResyncError::NoPuller {
                consumer: consumer.to_string(),
                waiting,
            });
        }
        if stalled >= idle {
            return Err(ResyncError::Stalled {
                consumer: consumer.to_string(),
                waiting,
                secs: stalled.as_secs(),
            });
        }
        if self.noted.elapsed() >= STALL_NOTE {
            self.noted = tokio::time::Instant::now();
            tick(Tick::Stalled {
                waiting,
                secs: stalled.as_secs(),
            });
        }
        Ok(())
    }
}

/// Waits until the consumer has fewer than `below` events waiting to be handed out.
async fn pace(
    bus: &Bus,
    consumer: &str,
    below: u64,
    idle: Duration,
    tick: &mut (dyn FnMut(Tick) + Send),
) -> Result<(), ResyncError> {
    let mut last = None;
    let mut standstill = Standstill::new();
    loop {
        let p = position(bus, consumer).await?;
        if p.pending < below {
            return Ok(());
        }
        if last != Some(p.pending) {
            last = Some(p.pending);
            standstill.moved();
        } else {
            standstill.check(consumer, &p, p.pending, idle, tick)?;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the consumer acknowledged every one of `sequences` (its ack floor passed the
/// last: delivered, filtered out or parked). Gives up when nothing moves for `idle`.
pub async fn follow(
    bus: &Bus,
    consumer: &str,
    sequences: &[u64],
    idle: Duration,
    tick: &mut (dyn FnMut(Tick) + Send),
) -> Result<(), ResyncError> {
    let Some(&last_seq) = sequences.last() else {
        return Ok(());
    };
    let mut taken_before = None;
    let mut standstill = Standstill::new();
    loop {
        let p = position(bus, consumer).await?;
        let taken = sequences.partition_point(|s| *s <= p.ack_floor) as u64;
        if taken_before != Some(taken) {
            taken_before = Some(taken);
            standstill.moved();
            tick(Tick::Taken(taken));
        }
        if p.ack_floor >= last_seq {
            return Ok(());
        }
        let waiting = sequences.len() as u64 - taken;
        standstill.check(consumer, &p, waiting, idle, tick)?;
        tokio::time::sleep(POLL).await;
    }
}

/// What became of resent (or replayed) events, by idempotency key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Answered with success.
    pub delivered: u64,
    /// Parked again (waiting for review).
    pub parked: u64,
    /// Neither (filtered out by a changed definition, or no audit record found).
    pub other: u64,
    /// Failed attempts on the way (retried).
    pub failed_attempts: u64,
}

/// Reads the audit trail (records since `since`) and the parked queue of `consumer` for what
/// became of the events with these keys.
pub async fn outcomes(
    bus: &Bus,
    c: &Connector,
    keys: &HashSet<String>,
    since: time::OffsetDateTime,
) -> Result<Outcomes, BusError> {
    let mut out = Outcomes::default();
    if keys.is_empty() {
        return Ok(out);
    }
    let mut delivered: HashSet<String> = HashSet::new();
    let spec = ScanSpec {
        stream: AUDIT_STREAM.into(),
        subjects: vec![format!("external.sync.{}", c.consumer)],
        since: Some(since - time::Duration::SECOND),
        until: None,
        from_sequence: None,
        to_sequence: None,
        headers_only: false,
        max: u64::MAX,
    };
    let mut failed = 0;
    let scan = bus.scan(&spec, |m| {
        // A message is a block of records, one per line.
        for line in crate::bus::records_of(&m.payload) {
            let Some((r, key)) = attempt_record(line) else {
                continue;
            };
            if !keys.contains(&key) {
                continue;
            }
            let ok = r["error"].is_null()
                && r["status"].as_u64().is_some_and(|code| {
                    let code = u16::try_from(code).unwrap_or(0);
                    crate::outcome::classify(
                        &crate::outcome::Outcome::Status {
                            code,
                            retry_after: None,
                        },
                        &c.retry.statuses,
                    ) == crate::outcome::Class::Success
                });
            if ok {
                delivered.insert(key);
            } else {
                failed += 1;
            }
        }
        Step::Continue
    });
    match scan.await {
        Ok(_) => {}
        Err(e) if e.kind == BusErrorKind::StreamMissing => {}
        Err(e) => return Err(e),
    }
    let since_text = since;
    let parked: HashSet<String> = parked::list(bus, Some(&c.consumer))
        .await?
        .into_iter()
        .filter_map(|r| r.job)
        .filter(|j| keys.contains(&j.idempotency_key) && parked::parked_since(j, since_text))
        .map(|j| j.idempotency_key)
        .collect();
    out.delivered = delivered.len() as u64;
    out.parked = parked.iter().filter(|k| !delivered.contains(*k)).count() as u64;
    out.other = keys.len() as u64 - out.delivered - out.parked;
    out.failed_attempts = failed;
    Ok(out)
}

/// [`outcomes`], asked again for up to `wait` while some keys have no outcome yet (the audit
/// trail stores its records a moment after the acknowledgement).
pub async fn settled_outcomes(
    bus: &Bus,
    c: &Connector,
    keys: &HashSet<String>,
    since: time::OffsetDateTime,
    wait: Duration,
) -> Result<Outcomes, BusError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let o = outcomes(bus, c, keys, since).await?;
        if o.other == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(o);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resent_event_keeps_its_key_and_headers_but_not_ours() {
        let original = vec![
            ("traceparent".to_string(), "00-abc-def-01".to_string()),
            ("Nats-Msg-Id".to_string(), "m1".to_string()),
            ("hms-idempotency-key".to_string(), "stale".to_string()),
            ("X-Source".to_string(), "permits".to_string()),
        ];
        let h = resend_headers(&original, "a_v1", "k1", "permit.updated", 7, "r1");
        let want: Vec<(String, String)> = [
            ("traceparent", "00-abc-def-01"),
            ("X-Source", "permits"),
            (REPLAY_KEY_HEADER, "k1"),
            (ORIGINAL_SUBJECT_HEADER, "permit.updated"),
            (ORIGINAL_SEQUENCE_HEADER, "7"),
            (RESYNC_HEADER, "r1"),
            ("Nats-Msg-Id", "resync:a_v1:r1:7"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(h, want);
    }
}
