//! `HMS_AUDIT`: storing audit records and reading them back for `audit verify`.

use std::time::Duration;

use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{err, Bus, BusError};

pub const AUDIT_STREAM: &str = "HMS_AUDIT";

impl Bus {
    /// Creates `HMS_AUDIT` (subjects `external.sync.>`, file storage) when missing.
    pub async fn ensure_audit_stream(&self, duplicate_window: Duration) -> Result<(), BusError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: AUDIT_STREAM.into(),
                description: Some("hms-sync: hash-chained audit trail of every attempt".into()),
                subjects: vec!["external.sync.>".into()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| err("create stream HMS_AUDIT")(e.to_string()))?;
        Ok(())
    }

    /// Stores a batch of audit records: all publishes are sent, then every ack awaited. Returns
    /// how many (from the start of the batch) are stored for sure.
    pub async fn store_audit(
        &self,
        batch: &[(String, String, Bytes)],
    ) -> Result<usize, (usize, BusError)> {
        let mut pending = Vec::with_capacity(batch.len());
        for (subject, id, body) in batch {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            match self
                .js
                .publish_with_headers(subject.clone(), headers, body.clone())
                .await
            {
                Ok(ack) => pending.push(ack),
                Err(e) => {
                    pending.truncate(0);
                    return Err((0, err("audit publish")(e.to_string())));
                }
            }
        }
        for (i, ack) in pending.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(5), ack).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err((i, err("audit ack")(e.to_string()))),
                Err(_) => return Err((i, err("audit ack")("no answer within 5 s".into()))),
            }
        }
        Ok(batch.len())
    }

    /// Every record on `HMS_AUDIT` in stream order: (sequence, payload). Deleted sequences are
    /// skipped (the chain shows them).
    pub async fn audit_records(&self) -> Result<Vec<(u64, Bytes)>, BusError> {
        let mut s = self
            .js
            .get_stream(AUDIT_STREAM)
            .await
            .map_err(|e| err("stream HMS_AUDIT")(e.to_string()))?;
        let info = s
            .info()
            .await
            .map_err(|e| err("stream info")(e.to_string()))?;
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return Ok(out);
        }
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(m) = s.get_raw_message(seq).await {
                out.push((seq, m.payload));
            }
        }
        Ok(out)
    }
}
