//! Parked jobs: the record stored on `HMS_SYNC_PARKED` when an event is given up on, and the
//! review rules (list, replay with the original idempotency key, discard) that the CLI and
//! other tools call.
//!
//! A parked job lives on `sync.parked.<consumer>`; replaying publishes its event again on
//! `hms.replay.<consumer>` (so only its connector sees it) with the headers of
//! [`replay_headers`]; replaying or discarding records the action on `sync.resolved.<consumer>`
//! and deletes the job.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::bus::{Bus, BusError, StoredJob, ORIGINAL_SUBJECT_HEADER, REPLAY_OF_HEADER};
use crate::clock::now_rfc3339;
use crate::outcome::Outcome;

/// Header that carries an idempotency key set earlier (parked replay); wins over derivation.
pub const REPLAY_KEY_HEADER: &str = "Hms-Idempotency-Key";

/// A parked job as stored on `HMS_SYNC_PARKED` (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// The event of a parked job, as it was on `HMS_EVENTS`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedEvent {
    pub subject: String,
    pub stream_sequence: u64,
    pub published: String,
    pub msg_id: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The event's exact bytes: as text when they are UTF-8, else in base64
    /// (`payloadEncoding: base64`).
    pub payload: String,
    /// How `payload` holds the bytes: absent for UTF-8 text, [`BASE64`] otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_encoding: Option<String>,
}

/// `payloadEncoding` of a payload stored in base64 (its bytes are not UTF-8).
pub const BASE64: &str = "base64";

/// Header of a parked-job message that holds the job's record when the message's body is the
/// event's bytes (a job too large for one JSON message: events near the server's maximum
/// payload). The record then says `payloadEncoding: body`.
pub const JOB_HEADER: &str = "Hms-Parked-Job";
const IN_BODY: &str = "body";

impl ParkedEvent {
    /// `payload` and `payloadEncoding` for an event's bytes: the text when they are UTF-8,
    /// else base64. Never lossy.
    pub fn encode_payload(bytes: &[u8]) -> (String, Option<String>) {
        use base64::Engine as _;
        match std::str::from_utf8(bytes) {
            Ok(text) => (text.to_string(), None),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(bytes),
                Some(BASE64.to_string()),
            ),
        }
    }

    /// The event's exact bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        match self.payload_encoding.as_deref() {
            None => Ok(self.payload.clone().into_bytes()),
            Some(BASE64) => base64::engine::general_purpose::STANDARD
                .decode(&self.payload)
                .map_err(|e| format!("payload is not valid base64: {e}")),
            Some(other) => Err(format!("unknown payload encoding `{other}`")),
        }
    }

    /// The payload for people: the text, or the base64 marked as such.
    pub fn shown_payload(&self) -> String {
        match self.payload_encoding.as_deref() {
            None => self.payload.clone(),
            Some(e) => format!("({e}) {}", self.payload),
        }
    }
}

/// A parked job as one message: `header` (for [`JOB_HEADER`]) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMessage {
    /// The record, when it goes in the [`JOB_HEADER`] header (the body is then the event).
    pub header: Option<String>,
    /// The record as JSON, or the event's exact bytes.
    pub body: Vec<u8>,
}

impl ParkedJob {
    /// The message that stores this job: its JSON record when that fits in `max_bytes`, else
    /// the record without the payload in [`JOB_HEADER`] and the event's exact bytes
    /// (`payload`) as the body.
    pub fn to_message(&self, payload: &[u8], max_bytes: usize) -> JobMessage {
        let json = serde_json::to_vec(self).unwrap_or_default();
        if json.len() <= max_bytes {
            return JobMessage {
                header: None,
                body: json,
            };
        }
        let mut head = self.clone();
        head.event.payload = String::new();
        head.event.payload_encoding = Some(IN_BODY.to_string());
        JobMessage {
            header: Some(serde_json::to_string(&head).unwrap_or_default()),
            body: payload.to_vec(),
        }
    }

    /// The job stored as `header` and `body` ([`ParkedJob::to_message`]) as its JSON record,
    /// with the payload back in it (text or base64).
    pub fn record_of(header: Option<&str>, body: &[u8]) -> Json {
        let Some(head) = header else {
            return serde_json::from_slice(body).unwrap_or(Json::Null);
        };
        let mut record: Json = serde_json::from_str(head).unwrap_or(Json::Null);
        if let Some(event) = record.get_mut("event").and_then(Json::as_object_mut) {
            let (payload, encoding) = ParkedEvent::encode_payload(body);
            event.insert("payload".into(), Json::String(payload));
            match encoding {
                Some(e) => event.insert("payloadEncoding".into(), Json::String(e)),
                None => event.remove("payloadEncoding"),
            };
        }
        record
    }
}

/// One attempt, as recorded in a parked job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub at: String,
    pub status: Option<u16>,
    pub error: String,
    /// Start of the response body (truncated).
    #[serde(default)]
    pub body: String,
}

impl Attempt {
    /// Attempt number `n`, which ended with `outcome` (described as `error`) now.
    pub fn new(n: u32, outcome: &Outcome, error: &str, body: &str) -> Attempt {
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
}

impl ParkedJob {
    /// Its `Nats-Msg-Id` on `HMS_SYNC_PARKED`: parking the same delivery again (a crash
    /// between the park and the ack) is stored once.
    pub fn dedup_id(&self, delivered: u32) -> String {
        format!(
            "{}:{}:{delivered}",
            self.consumer, self.event.stream_sequence
        )
    }

    /// The `hitl.review.requested` alert announcing this job (parked as `parked_id`).
    pub fn review_alert(&self, parked_id: u64) -> Json {
        json!({
            "kind": "sync.parked",
            "connector": self.connector,
            "parkedId": parked_id,
            "summary": format!("{} {} failed: {}", self.method, self.url, self.error),
            "idempotencyKey": self.idempotency_key,
            "at": self.parked_at,
        })
    }
}

/// The headers of a replayed event: the original ones, minus those hms-sync sets itself, plus
/// the original idempotency key, the original subject, the parked job's id, and a
/// `Nats-Msg-Id` that stores one replay of a job once.
pub fn replay_headers(job: &ParkedJob, parked_id: u64) -> Vec<(String, String)> {
    let ours = [
        "Nats-Msg-Id",
        crate::bus::PIN_HEADER,
        REPLAY_KEY_HEADER,
        ORIGINAL_SUBJECT_HEADER,
        REPLAY_OF_HEADER,
    ];
    let mut headers: Vec<(String, String)> = job
        .event
        .headers
        .iter()
        .filter(|(k, _)| !ours.iter().any(|o| k.eq_ignore_ascii_case(o)))
        .cloned()
        .collect();
    headers.push((REPLAY_KEY_HEADER.into(), job.idempotency_key.clone()));
    headers.push((ORIGINAL_SUBJECT_HEADER.into(), job.event.subject.clone()));
    headers.push((REPLAY_OF_HEADER.into(), parked_id.to_string()));
    headers.push((
        "Nats-Msg-Id".into(),
        format!("replay:{}:{parked_id}", job.consumer),
    ));
    headers
}

/// One stored parked job as read back for review.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// Its id: the sequence on `HMS_SYNC_PARKED`.
    pub id: u64,
    /// `sync.parked.<consumer>`.
    pub subject: String,
    /// The record as JSON (whatever is stored).
    pub raw: Json,
    /// The record, when it is a parked job hms-sync wrote.
    pub job: Option<ParkedJob>,
}

impl Reviewed {
    fn from_stored(s: StoredJob) -> Reviewed {
        let raw = ParkedJob::record_of(s.job_header.as_deref(), &s.payload);
        Reviewed {
            id: s.id,
            job: serde_json::from_value(raw.clone()).ok(),
            raw,
            subject: s.subject,
        }
    }

    /// The consumer whose job it is (from its subject).
    pub fn consumer(&self) -> &str {
        self.subject
            .strip_prefix("sync.parked.")
            .unwrap_or(&self.subject)
    }

    /// One line of a listing (JSON).
    pub fn summary(&self) -> Option<Json> {
        let p = self.job.as_ref()?;
        Some(json!({
            "id": self.id,
            "connector": p.connector,
            "parkedAt": p.parked_at,
            "attempts": p.attempts.len(),
            "error": p.error,
            "subject": p.event.subject,
            "idempotencyKey": p.idempotency_key,
        }))
    }
}

/// Why a review action failed.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("parked job {0}: not a parked job record")]
    NotAJob(u64),
    #[error("parked job {0}: {1}")]
    BadPayload(u64, String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Every parked job, oldest first; only those of the consumer `consumer` when given.
pub async fn list(bus: &Bus, consumer: Option<&str>) -> Result<Vec<Reviewed>, BusError> {
    Ok(bus
        .parked_jobs(consumer)
        .await?
        .into_iter()
        .map(Reviewed::from_stored)
        .collect())
}

/// One parked job by id.
pub async fn get(bus: &Bus, id: u64) -> Result<Option<Reviewed>, BusError> {
    Ok(bus.parked_job(id).await?.map(Reviewed::from_stored))
}

/// Whether a job was parked at or after `since` (jobs whose time cannot be read count as
/// recent).
pub fn parked_since(job: &ParkedJob, since: time::OffsetDateTime) -> bool {
    crate::clock::parse(&job.parked_at).is_none_or(|at| at >= since)
}

/// Sends a parked job through its connector again, with its original idempotency key, and
/// records who did it. Returns the record of the action.
pub async fn replay(bus: &Bus, r: &Reviewed, by: &str) -> Result<Json, ReviewError> {
    let p = r.job.as_ref().ok_or(ReviewError::NotAJob(r.id))?;
    let payload = p
        .event
        .payload_bytes()
        .map_err(|why| ReviewError::BadPayload(r.id, why))?;
    let seq = bus
        .publish_replay(&p.consumer, &replay_headers(p, r.id), payload)
        .await?;
    let record = json!({
        "action": "replayed", "parkedId": r.id, "connector": p.connector,
        "at": now_rfc3339(), "replaySequence": seq, "idempotencyKey": p.idempotency_key,
        "by": by,
    });
    bus.resolve_parked(&p.consumer, r.id, record.to_string().as_bytes())
        .await?;
    Ok(record)
}

/// Drops a parked job for good, keeping it (and why) in the record of the action.
pub async fn discard(
    bus: &Bus,
    r: &Reviewed,
    reason: Option<&str>,
    by: &str,
) -> Result<Json, ReviewError> {
    let record = json!({
        "action": "discarded", "parkedId": r.id,
        "connector": r.job.as_ref().map(|p| p.connector.clone()),
        "at": now_rfc3339(), "reason": reason,
        "by": by,
        "job": r.raw,
    });
    bus.resolve_parked(r.consumer(), r.id, record.to_string().as_bytes())
        .await?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(headers: &[(&str, &str)]) -> ParkedJob {
        ParkedJob {
            connector: "a.v1".into(),
            consumer: "a_v1".into(),
            parked_at: "2026-01-02T03:04:05Z".into(),
            error: "HTTP 400".into(),
            method: "PATCH".into(),
            url: "http://127.0.0.1/x".into(),
            idempotency_key: "k1".into(),
            attempts: vec![],
            event: ParkedEvent {
                subject: "permit.updated".into(),
                stream_sequence: 7,
                published: "2026-01-02T03:04:00Z".into(),
                msg_id: None,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                payload: "{}".into(),
                payload_encoding: None,
            },
        }
    }

    #[test]
    fn a_replay_keeps_the_key_and_the_event_headers_but_not_ours() {
        let j = job(&[
            ("traceparent", "00-abc-def-01"),
            ("nats-msg-id", "orig"),
            ("Hms-Idempotency-Key", "stale"),
            ("Hms-Replay-Of", "3"),
        ]);
        let h = replay_headers(&j, 42);
        let want: Vec<(String, String)> = [
            ("traceparent", "00-abc-def-01"),
            (REPLAY_KEY_HEADER, "k1"),
            (ORIGINAL_SUBJECT_HEADER, "permit.updated"),
            (REPLAY_OF_HEADER, "42"),
            ("Nats-Msg-Id", "replay:a_v1:42"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(h, want);
        assert_eq!(j.dedup_id(3), "a_v1:7:3");
    }

    #[test]
    fn payloads_are_kept_exactly_as_text_base64_or_body() {
        let cases: [&[u8]; 4] = [
            b"{\"a\":1}",
            b"not json \xff\xfe\x00",
            b"",
            "caf\u{e9} \u{1F6A7}".as_bytes(),
        ];
        for bytes in cases {
            let mut j = job(&[]);
            (j.event.payload, j.event.payload_encoding) = ParkedEvent::encode_payload(bytes);
            assert_eq!(j.event.payload_bytes().unwrap(), bytes);
            // One JSON message.
            let m = j.to_message(bytes, 1 << 20);
            assert_eq!(m.header, None);
            let back: ParkedJob =
                serde_json::from_value(ParkedJob::record_of(None, &m.body)).unwrap();
            assert_eq!(back.event.payload_bytes().unwrap(), bytes);
            // Too large for one: the bytes are the body, the record a header.
            let m = j.to_message(bytes, 10);
            assert_eq!(m.body, bytes);
            let record = ParkedJob::record_of(m.header.as_deref(), &m.body);
            let back: ParkedJob = serde_json::from_value(record).unwrap();
            assert_eq!(back.event.payload_bytes().unwrap(), bytes);
            assert_eq!(back.idempotency_key, "k1");
        }
        let mut j = job(&[]);
        (j.event.payload, j.event.payload_encoding) = ParkedEvent::encode_payload(b"\xff");
        assert_eq!(j.event.payload_encoding.as_deref(), Some(BASE64));
        assert_eq!(j.event.shown_payload(), "(base64) /w==");
    }

    #[test]
    fn since_filters_by_parked_time() {
        let j = job(&[]);
        let t = |s| crate::clock::parse(s).unwrap();
        assert!(parked_since(&j, t("2026-01-01T00:00:00Z")));
        assert!(!parked_since(&j, t("2026-01-03T00:00:00Z")));
        let mut odd = j.clone();
        odd.parked_at = "?".into();
        assert!(parked_since(&odd, t("2026-01-03T00:00:00Z")));
    }
}
