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

use crate::audit::{AuditRecord, Chainer};
use crate::bus::{AuditBlock, Bus, BusError, StoredJob, ORIGINAL_SUBJECT_HEADER, REPLAY_OF_HEADER};
// The message form of a job is the bus's (it stores it); named here too, where jobs are made.
pub use crate::bus::{JobMessage, JOB_HEADER};
use crate::clock::now_rfc3339;
use crate::connector::Connector;
use crate::outcome::Outcome;

/// Header that carries an idempotency key set earlier (parked replay); wins over derivation.
pub const REPLAY_KEY_HEADER: &str = "Hms-Idempotency-Key";
/// Header of a replayed or resent event naming the stream sequence of the original event.
pub const ORIGINAL_SEQUENCE_HEADER: &str = "Hms-Original-Sequence";

/// The idempotency key of an original event (not a replay) for one connector: derived from
/// its `Nats-Msg-Id` when it has one, else from its stream sequence. The same across retries,
/// redeliveries, restarts, parked replay and resync.
pub fn event_key(connector_id: &str, msg_id: Option<&str>, stream_sequence: u64) -> String {
    match msg_id {
        Some(id) => derive_key(connector_id, &format!("msgid:{id}")),
        None => derive_key(connector_id, &format!("seq:{stream_sequence}")),
    }
}

/// `hex(sha256(connector id, 0, identity))[..32]`.
pub fn derive_key(connector_id: &str, identity: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(connector_id.as_bytes());
    h.update([0]);
    h.update(identity.as_bytes());
    hex::encode(&h.finalize()[..16])
}

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
        ORIGINAL_SEQUENCE_HEADER,
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
    headers.push((
        ORIGINAL_SEQUENCE_HEADER.into(),
        job.event.stream_sequence.to_string(),
    ));
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
            "consumer": p.consumer,
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

/// Who acts on a parked job, as its records say.
#[derive(Debug, Clone, Serialize)]
pub struct Operator {
    /// The person: `$USER` on the command line; on the status page the name the reviewer
    /// gave (`X-Hms-Operator`), who holds the admin token.
    pub name: String,
    /// `cli` or `status page`.
    pub via: &'static str,
    /// The client's address (status page).
    pub from: Option<String>,
}

impl Operator {
    /// The person at the command line (`$USER`).
    pub fn cli(user: Option<String>) -> Operator {
        Operator {
            name: user
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "unknown".into()),
            via: "cli",
            from: None,
        }
    }

    /// A reviewer's name as given (`X-Hms-Operator`): 1 to 64 characters, no control
    /// characters.
    pub fn checked_name(name: &str) -> Result<String, &'static str> {
        let n = name.trim();
        if n.is_empty() {
            return Err(
                "a name is needed (X-Hms-Operator): every review action records who did it",
            );
        }
        if n.chars().count() > 64 || n.chars().any(char::is_control) {
            return Err(
                "the name (X-Hms-Operator) has at most 64 characters and no control characters",
            );
        }
        Ok(n.to_string())
    }
}

/// What a reviewer does with a parked job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send it through its connector again, with its original idempotency key.
    Replay,
    /// Drop it for good (kept in the record of the action).
    Discard { reason: Option<String> },
}

/// What a review action did: its record (stored on `sync.resolved.<consumer>`) and the audit
/// record the caller hands to the audit trail ([`audit_record`]).
#[derive(Debug, Clone)]
pub struct Acted {
    pub consumer: String,
    pub record: Json,
}

impl Acted {
    /// The audit-trail record of the action (`kind: "review"`), on `external.sync.<consumer>`.
    pub fn audit_record(&self) -> AuditRecord {
        let r = &self.record;
        AuditRecord::Other(json!({
            "kind": "review",
            "action": r["action"],
            "parkedId": r["parkedId"],
            "connector": r["connector"],
            "idempotencyKey": r["idempotencyKey"],
            "replaySequence": r["replaySequence"],
            "reason": r["reason"],
            "by": r["by"],
            "via": r["via"],
            "from": r["from"],
            "at": r["at"],
        }))
    }
}

/// Acts on a parked job: replays or discards it and records who did it. The caller hands
/// [`Acted::audit_record`] to the audit trail (the running `up`'s audit actor, or
/// [`store_audit`] for a one-shot command).
pub async fn act(
    bus: &Bus,
    r: &Reviewed,
    action: &Action,
    by: &Operator,
) -> Result<Acted, ReviewError> {
    let record = match action {
        Action::Replay => replay(bus, r, by).await?,
        Action::Discard { reason } => discard(bus, r, reason.as_deref(), by).await?,
    };
    Ok(Acted {
        consumer: r.consumer().to_string(),
        record,
    })
}

/// Sends a parked job through its connector again, with its original idempotency key, and
/// records who did it. Returns the record of the action.
pub async fn replay(bus: &Bus, r: &Reviewed, by: &Operator) -> Result<Json, ReviewError> {
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
        "parkedAt": p.parked_at, "error": p.error,
        "by": by.name, "via": by.via, "from": by.from,
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
    by: &Operator,
) -> Result<Json, ReviewError> {
    let record = json!({
        "action": "discarded", "parkedId": r.id,
        "connector": r.job.as_ref().map(|p| p.connector.clone()),
        "idempotencyKey": r.job.as_ref().map(|p| p.idempotency_key.clone()),
        "at": now_rfc3339(), "reason": reason,
        "by": by.name, "via": by.via, "from": by.from,
        "job": r.raw,
    });
    bus.resolve_parked(r.consumer(), r.id, record.to_string().as_bytes())
        .await?;
    Ok(record)
}

/// Stores review records on the audit trail from a one-shot command (no audit actor runs
/// there): one chain of its own per command run, `<consumer>/review-<run>`.
pub async fn store_audit(bus: &Bus, acted: &[Acted]) -> Result<(), BusError> {
    if acted.is_empty() {
        return Ok(());
    }
    let run = derive_key(
        "review",
        &format!("{}:{}", std::process::id(), now_rfc3339()),
    )[..8]
        .to_string();
    let mut chainer = Chainer::default();
    // One block per chain (split when large): consecutive records, one per line.
    let mut open: Vec<(String, String, u64, u64, Vec<u8>)> = Vec::new();
    for a in acted {
        let chain = format!("{}/review-{run}", a.consumer);
        let (n, bytes) = chainer.seal_bytes(&chain, a.audit_record());
        let max = crate::bus::audit::MAX_BLOCK_BYTES;
        match open
            .last_mut()
            .filter(|b| b.1 == chain && b.4.len() + bytes.len() < max)
        {
            Some(b) => b.3 = n,
            None => open.push((
                format!("external.sync.{}", a.consumer),
                chain,
                n,
                n,
                Vec::new(),
            )),
        }
        if let Some(b) = open.last_mut() {
            b.4.extend_from_slice(&bytes);
            b.4.push(b'\n');
        }
    }
    let blocks: Vec<AuditBlock> = open
        .into_iter()
        .map(|(subject, chain, first, last, bytes)| AuditBlock {
            subject: subject.into(),
            chain: chain.into(),
            first,
            last,
            bytes: bytes.into(),
        })
        .collect();
    match bus.store_audit(&blocks).await {
        (_, Some(e)) => Err(e),
        (_, None) => Ok(()),
    }
}

/// Which parked jobs a batch action takes (`--connector`, `--since`, `--reason`).
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this consumer's jobs.
    pub consumer: Option<String>,
    /// Only jobs parked at or after this time.
    pub since: Option<time::OffsetDateTime>,
    /// Only jobs whose error contains this text (case-insensitive).
    pub reason: Option<String>,
}

impl JobFilter {
    /// Whether the filter takes this job (records that are not parked jobs: never).
    pub fn selects(&self, r: &Reviewed) -> bool {
        let Some(p) = &r.job else { return false };
        self.consumer.as_deref().is_none_or(|c| r.consumer() == c)
            && self.since.is_none_or(|s| parked_since(p, s))
            && self
                .reason
                .as_deref()
                .is_none_or(|reason| p.error.to_lowercase().contains(&reason.to_lowercase()))
    }
}

/// A parked job in full for reviewers: the original event, each attempt, and the request its
/// connector would send now as `hms-sync test` prints it (secrets as `***`, the job's own
/// idempotency key).
pub fn detail(r: &Reviewed, connector: Option<&Connector>) -> Json {
    let Some(p) = &r.job else {
        return json!({ "id": r.id, "subject": r.subject, "record": r.raw });
    };
    let request = match connector {
        None => json!({ "error": format!("connector {} is not running here", p.connector) }),
        Some(c) => match serde_json::from_str::<Json>(&p.event.payload) {
            Err(e) => json!({ "error": format!("the event is not JSON: {e}") }),
            Ok(event) => match crate::request::preview(
                c,
                &event,
                &p.idempotency_key,
                &p.idempotency_key,
                crate::request::EventOrigin {
                    topic: &p.event.subject,
                    time: &p.event.published,
                },
            ) {
                Ok(text) => json!({ "text": text }),
                Err(e) => json!({ "error": e.to_string() }),
            },
        },
    };
    json!({
        "id": r.id,
        "connector": p.connector,
        "consumer": p.consumer,
        "parkedAt": p.parked_at,
        "error": p.error,
        "method": p.method,
        "url": p.url,
        "idempotencyKey": p.idempotency_key,
        "attempts": p.attempts,
        "event": p.event,
        "request": request,
    })
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
            (ORIGINAL_SEQUENCE_HEADER, "7"),
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
