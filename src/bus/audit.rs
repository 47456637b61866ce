//! `HMS_AUDIT`: storing audit records and reading them back for `audit verify`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{err, Bus, BusError};

pub const AUDIT_STREAM: &str = "HMS_AUDIT";

/// One sealed audit record, ready to store.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub subject: Arc<str>,
    pub chain: Arc<str>,
    /// Position in its chain.
    pub n: u64,
    pub bytes: Bytes,
}

impl AuditEntry {
    /// Its `Nats-Msg-Id`: chain and position, the same when stored again.
    pub fn msg_id(&self) -> String {
        format!("{}:{}", self.chain, self.n)
    }
}

impl Bus {
    /// Creates `HMS_AUDIT` (subjects `external.sync.>`, file storage) when missing.
    pub async fn ensure_audit_stream(&self, duplicate_window: Duration) -> Result<(), BusError> {
        let wanted = stream::Config {
            name: AUDIT_STREAM.into(),
            description: Some("hms-sync: hash-chained audit trail of every attempt".into()),
            subjects: vec!["external.sync.>".into()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window,
            num_replicas: self.replicas,
            ..Default::default()
        };
        if let Ok(mut s) = self.js.get_stream(AUDIT_STREAM).await {
            if let Ok(info) = s.info().await {
                super::warn_differences(&info.config, &wanted);
            }
            return Ok(());
        }
        self.js
            .get_or_create_stream(wanted)
            .await
            .map_err(|e| err("create stream HMS_AUDIT")(e.to_string()))?;
        Ok(())
    }

    /// Stores a batch of sealed audit records (in order). Returns how many (from the start of
    /// the batch) are stored for sure.
    ///
    /// `careful`: every record is a JetStream publish with its own `Nats-Msg-Id` and awaited ack
    /// (used to store a batch again after a failure). Otherwise only the first record and the
    /// last are acked publishes, and those between are plain publishes on the same
    /// connection: the first ack proves the stream is there, and the server stores one
    /// connection's messages in order, so the last ack confirms the whole batch. This saves a
    /// JetStream ack (and a dedup entry) per record: about two thirds of what a record costs
    /// nats-server and hms-sync together (BENCHMARKS.md). If the last ack does not come, the
    /// batch after the first record is stored again carefully; records that had landed are
    /// then stored twice, exact copies that `audit verify` counts apart.
    pub async fn store_audit(
        &self,
        batch: &[AuditEntry],
        careful: bool,
    ) -> Result<usize, (usize, BusError)> {
        if careful || batch.len() <= 2 {
            return self.store_audit_acked(batch).await;
        }
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(0);
        };
        self.store_audit_acked(std::slice::from_ref(first)).await?;
        for e in &batch[1..batch.len() - 1] {
            if let Err(x) = self
                .client
                .publish(e.subject.to_string(), e.bytes.clone())
                .await
            {
                return Err((1, err("audit publish")(x.to_string())));
            }
        }
        match self.store_audit_acked(std::slice::from_ref(last)).await {
            Ok(_) => Ok(batch.len()),
            Err((_, e)) => Err((1, e)),
        }
    }

    /// Every record a JetStream publish with its `Nats-Msg-Id`; all sent, then every ack awaited.
    async fn store_audit_acked(&self, batch: &[AuditEntry]) -> Result<usize, (usize, BusError)> {
        let mut pending = Vec::with_capacity(batch.len());
        for e in batch {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.msg_id().as_str());
            match self
                .js
                .publish_with_headers(e.subject.to_string(), headers, e.bytes.clone())
                .await
            {
                Ok(ack) => pending.push(ack),
                Err(x) => return Err((0, err("audit publish")(x.to_string()))),
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
