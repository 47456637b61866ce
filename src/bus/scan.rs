//! Reading the past without moving anything: one stored message by sequence, scans of a
//! stream's subjects from a point in time (an ordered, ephemeral consumer: no durable
//! consumer moves, nothing is acknowledged), and a durable consumer's position.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull::OrderedConfig, DeliverPolicy};
use bytes::Bytes;
use futures::StreamExt;

use super::{err, header_pairs, Bus, BusError, BusErrorKind, EVENTS_STREAM};

/// How long a scan waits for the next message before it gives up.
const SCAN_IDLE: Duration = Duration::from_secs(10);

/// One message as stored on a stream.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    pub published: time::OffsetDateTime,
    pub headers: Vec<(String, String)>,
    /// Empty when the scan asked for headers only.
    pub payload: Bytes,
}

impl StoredMessage {
    /// A header's first value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Nats-Msg-Id`, when the publisher set one.
    pub fn msg_id(&self) -> Option<&str> {
        self.header("Nats-Msg-Id")
    }
}

/// What a scan's visitor wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    Stop,
}

/// What to scan.
#[derive(Debug, Clone)]
pub struct ScanSpec {
    pub stream: String,
    /// Subjects (wildcards allowed); empty: every subject of the stream.
    pub subjects: Vec<String>,
    /// From this time on (`None`: from the first message).
    pub since: Option<time::OffsetDateTime>,
    /// From this stream sequence on (wins over `since`).
    pub from_sequence: Option<u64>,
    /// Up to this stream sequence (default: the last one when the scan begins).
    pub to_sequence: Option<u64>,
    /// Stop after the first message published later than this.
    pub until: Option<time::OffsetDateTime>,
    /// Only headers (and no payloads) travel.
    pub headers_only: bool,
    /// Read at most this many messages.
    pub max: u64,
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Scanned {
    /// Messages read.
    pub scanned: u64,
    /// It stopped at `max` with more to read.
    pub truncated: bool,
}

impl Bus {
    /// One event of `HMS_EVENTS` by stream sequence (`None`: no such message, or deleted).
    pub async fn event(&self, sequence: u64) -> Result<Option<StoredMessage>, BusError> {
        let s = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| err("stream HMS_EVENTS")(e.to_string()))?;
        match s.get_raw_message(sequence).await {
            Ok(m) => Ok(Some(StoredMessage {
                sequence,
                subject: m.subject.to_string(),
                published: m.time,
                headers: header_pairs(Some(&m.headers)),
                payload: m.payload,
            })),
            Err(e) => {
                let text = e.to_string();
                if text.contains("no message found") || text.contains("10037") {
                    Ok(None)
                } else {
                    Err(err(format!("event seq {sequence}"))(text))
                }
            }
        }
    }

    /// The last sequence stored on `HMS_EVENTS` now.
    pub async fn events_last_sequence(&self) -> Result<u64, BusError> {
        let mut s = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| err("stream HMS_EVENTS")(e.to_string()))?;
        Ok(s.info()
            .await
            .map_err(|e| err("stream info HMS_EVENTS")(e.to_string()))?
            .state
            .last_sequence)
    }

    /// Reads the messages of `spec` in stream order and hands each to `visit`, until the
    /// visitor stops, the messages stored when the scan began are read, `until` is passed or
    /// `max` messages were read. An ordered ephemeral consumer reads them: nothing is
    /// acknowledged, no durable consumer moves.
    pub async fn scan(
        &self,
        spec: &ScanSpec,
        mut visit: impl FnMut(StoredMessage) -> Step,
    ) -> Result<Scanned, BusError> {
        let what = format!("scan {}", spec.stream);
        let mut stream = self
            .js
            .get_stream(&spec.stream)
            .await
            .map_err(|e| err(format!("stream {}", spec.stream))(e.to_string()))?;
        let stored = stream
            .info()
            .await
            .map_err(|e| err(format!("stream info {}", spec.stream))(e.to_string()))?
            .state
            .last_sequence;
        let last = spec.to_sequence.map_or(stored, |t| t.min(stored));
        let mut out = Scanned::default();
        if last == 0 || spec.from_sequence.is_some_and(|f| f > last) {
            return Ok(out);
        }
        let (filter_subject, filter_subjects) = match spec.subjects.as_slice() {
            [] => (String::new(), vec![]),
            [one] => (one.clone(), vec![]),
            many => (String::new(), many.to_vec()),
        };
        let config = OrderedConfig {
            description: Some("hms-sync: a read-only scan (trace, resync)".into()),
            filter_subject,
            filter_subjects,
            headers_only: spec.headers_only,
            deliver_policy: match (spec.from_sequence, spec.since) {
                (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
                (None, Some(start_time)) => DeliverPolicy::ByStartTime { start_time },
                (None, None) => DeliverPolicy::All,
            },
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| err(what.clone())(e.to_string()))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| err(what.clone())(e.to_string()))?;
        loop {
            let next = match tokio::time::timeout(SCAN_IDLE, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(err(what)(e.to_string())),
                Ok(None) => return Ok(out),
                Err(_) => {
                    return Err(BusError {
                        kind: BusErrorKind::Timeout,
                        context: what,
                        message: format!("no message within {} s", SCAN_IDLE.as_secs()),
                    })
                }
            };
            let info = next
                .info()
                .map_err(|e| err("message info")(e.to_string()))?;
            let (sequence, pending, published) =
                (info.stream_sequence, info.pending, info.published);
            if spec.until.is_some_and(|u| published > u) || sequence > last {
                return Ok(out);
            }
            if out.scanned >= spec.max {
                out.truncated = true;
                return Ok(out);
            }
            out.scanned += 1;
            let m = StoredMessage {
                sequence,
                subject: next.subject.to_string(),
                published,
                headers: header_pairs(next.headers.as_ref()),
                payload: next.payload.clone(),
            };
            if visit(m) == Step::Stop || pending == 0 || sequence >= last {
                return Ok(out);
            }
        }
    }

    /// Where a connector's durable consumer on `HMS_EVENTS` is (`None`: no such consumer).
    pub async fn consumer_position(&self, name: &str) -> Result<Option<Position>, BusError> {
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| err("stream HMS_EVENTS")(e.to_string()))?;
        let info = match stream.consumer_info(name).await {
            Ok(i) => i,
            Err(e) => {
                let text = e.to_string();
                if BusErrorKind::of(&text) == BusErrorKind::ConsumerMissing {
                    return Ok(None);
                }
                return Err(err(format!("consumer {name}"))(text));
            }
        };
        let (starts_at, starts_at_sequence) = match info.config.deliver_policy {
            consumer::DeliverPolicy::ByStartTime { start_time } => (Some(start_time), None),
            consumer::DeliverPolicy::ByStartSequence { start_sequence } => {
                (None, Some(start_sequence))
            }
            _ => (None, None),
        };
        Ok(Some(Position {
            ack_floor: info.ack_floor.stream_sequence,
            delivered: info.delivered.stream_sequence,
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            waiting_pulls: info.num_waiting as u64,
            starts_at,
            starts_at_sequence,
        }))
    }
}

/// A durable consumer's position on `HMS_EVENTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Every event of its subjects up to this stream sequence is acknowledged (done).
    pub ack_floor: u64,
    /// The last stream sequence it handed out.
    pub delivered: u64,
    /// Events of its subjects not handed out yet.
    pub pending: u64,
    /// Handed out and not acknowledged yet (in flight, or waiting for a retry).
    pub ack_pending: u64,
    /// Pull requests waiting on it (0: no running `up` pulls from it right now).
    pub waiting_pulls: u64,
    /// A consumer created to start at a time: events published before it are never offered.
    pub starts_at: Option<time::OffsetDateTime>,
    /// A consumer created to start at a sequence.
    pub starts_at_sequence: Option<u64>,
}
