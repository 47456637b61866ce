//! The human-review queue on `HMS_SYNC_PARKED`: read, replay and discard parked jobs.
//!
//! A parked job lives on `sync.parked.<consumer>`; when a person replays or discards it, a
//! record goes to `sync.resolved.<consumer>` and the job is deleted from the stream.

use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{err, Bus, BusError, EVENTS_STREAM, PARKED_STREAM};

/// Subject prefix on `HMS_EVENTS` for replayed events: `hms.replay.<consumer>`.
pub const REPLAY_PREFIX: &str = "hms.replay.";
/// Header of a replayed event naming the subject it was first published on.
pub const ORIGINAL_SUBJECT_HEADER: &str = "Hms-Original-Subject";
/// Header of a replayed event naming the parked job it came from.
pub const REPLAY_OF_HEADER: &str = "Hms-Replay-Of";

/// Header of a parked-job message that holds the job's record when the message's body is the
/// event's bytes (a job too large for one JSON message: events near the server's maximum
/// payload). The record then says `payloadEncoding: body`.
pub const JOB_HEADER: &str = "Hms-Parked-Job";

/// A parked job as one message: `header` (for [`JOB_HEADER`]) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMessage {
    /// The record, when it goes in the [`JOB_HEADER`] header (the body is then the event).
    pub header: Option<String>,
    /// The record as JSON, or the event's exact bytes.
    pub body: Vec<u8>,
}

/// One stored parked job.
#[derive(Debug, Clone)]
pub struct StoredJob {
    /// Its id: the sequence on `HMS_SYNC_PARKED`.
    pub id: u64,
    pub subject: String,
    pub payload: Bytes,
    /// The job's record when `payload` is the event's bytes (`Hms-Parked-Job`, a large job).
    pub job_header: Option<String>,
}

/// The `Hms-Parked-Job` header of a stored message.
fn job_header(m: &async_nats::jetstream::message::StreamMessage) -> Option<String> {
    m.headers.get(JOB_HEADER).map(|v| v.as_str().to_string())
}

impl Bus {
    async fn parked_stream(&self) -> Result<stream::Stream, BusError> {
        self.js
            .get_stream(PARKED_STREAM)
            .await
            .map_err(|e| err("stream HMS_SYNC_PARKED")(e.to_string()))
    }

    /// Every parked job, oldest first; only those of `consumer` when given.
    pub async fn parked_jobs(&self, consumer: Option<&str>) -> Result<Vec<StoredJob>, BusError> {
        let mut s = self.parked_stream().await?;
        let info = s
            .info()
            .await
            .map_err(|e| err("stream info")(e.to_string()))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return Ok(out);
        }
        let wanted = consumer.map(|c| format!("sync.parked.{c}"));
        for seq in first..=last {
            let Ok(m) = s.get_raw_message(seq).await else {
                continue;
            }; // deleted
            let subject = m.subject.to_string();
            let keep = match &wanted {
                Some(w) => subject == *w,
                None => subject.starts_with("sync.parked."),
            };
            if keep {
                out.push(StoredJob {
                    id: seq,
                    subject,
                    job_header: job_header(&m),
                    payload: m.payload,
                });
            }
        }
        Ok(out)
    }

    /// One parked job by id.
    pub async fn parked_job(&self, id: u64) -> Result<Option<StoredJob>, BusError> {
        let s = self.parked_stream().await?;
        match s.get_raw_message(id).await {
            Ok(m) if m.subject.starts_with("sync.parked.") => Ok(Some(StoredJob {
                id,
                subject: m.subject.to_string(),
                job_header: job_header(&m),
                payload: m.payload,
            })),
            _ => Ok(None),
        }
    }

    /// Publishes a replayed event for one connector only (`hms.replay.<consumer>` on
    /// `HMS_EVENTS`), awaiting the stream's ack. Returns its sequence.
    pub async fn publish_replay(
        &self,
        consumer: &str,
        headers: &[(String, String)],
        payload: Vec<u8>,
    ) -> Result<u64, BusError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(k.as_str(), v.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(format!("{REPLAY_PREFIX}{consumer}"), map, payload.into())
            .await
            .map_err(|e| err("replay")(e.to_string()))?
            .await
            .map_err(|e| err(format!("replay to {EVENTS_STREAM}"))(e.to_string()))?;
        Ok(ack.sequence)
    }

    /// Publishes several replayed events for one connector (pipelined: all sent, then every
    /// ack awaited). Returns their sequences on `HMS_EVENTS`, in order.
    pub async fn publish_replays(
        &self,
        consumer: &str,
        events: Vec<(Vec<(String, String)>, Bytes)>,
    ) -> Result<Vec<u64>, BusError> {
        let subject = format!("{REPLAY_PREFIX}{consumer}");
        let mut acks = Vec::with_capacity(events.len());
        for (headers, payload) in events {
            let mut map = HeaderMap::new();
            for (k, v) in &headers {
                map.append(k.as_str(), v.as_str());
            }
            acks.push(
                self.js
                    .publish_with_headers(subject.clone(), map, payload)
                    .await
                    .map_err(|e| err("replay")(e.to_string()))?,
            );
        }
        let mut out = Vec::with_capacity(acks.len());
        for ack in acks {
            let ack = ack
                .await
                .map_err(|e| err(format!("replay to {EVENTS_STREAM}"))(e.to_string()))?;
            out.push(ack.sequence);
        }
        Ok(out)
    }

    /// Records what a person did with a parked job, then deletes the job.
    pub async fn resolve_parked(
        &self,
        consumer: &str,
        id: u64,
        record: &[u8],
    ) -> Result<(), BusError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("resolved:{id}").as_str());
        self.js
            .publish_with_headers(
                format!("sync.resolved.{consumer}"),
                headers,
                Bytes::copy_from_slice(record),
            )
            .await
            .map_err(|e| err("record resolution")(e.to_string()))?
            .await
            .map_err(|e| err("record resolution")(e.to_string()))?;
        let s = self.parked_stream().await?;
        s.delete_message(id)
            .await
            .map_err(|e| err(format!("delete parked job {id}"))(e.to_string()))?;
        Ok(())
    }
}
