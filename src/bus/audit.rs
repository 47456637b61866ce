//! `HMS_AUDIT`: storing audit records in blocks and reading them back for `audit verify` and
//! `audit show`.
//!
//! A block is one message on `external.sync.<consumer>`: consecutive records of one chain,
//! one per line (each its own canonical JSON with its hash, readable one by one), stored with
//! one acknowledged publish whose `Nats-Msg-Id` (`<chain>:<first>-<last>`) stores a repeat
//! once. One message per block instead of one per record spares nats-server a message, an
//! index entry and an ack per record (BENCHMARKS.md).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{err, Bus, BusError};

pub const AUDIT_STREAM: &str = "HMS_AUDIT";

/// Largest block stored in one message (records beyond start the next block).
pub const MAX_BLOCK_BYTES: usize = 256 * 1024;

/// Consecutive sealed records of one chain, stored as one message.
#[derive(Debug, Clone)]
pub struct AuditBlock {
    pub subject: Arc<str>,
    pub chain: Arc<str>,
    /// Positions in the chain of its first and last record.
    pub first: u64,
    pub last: u64,
    /// The records, one per line.
    pub bytes: Bytes,
}

impl AuditBlock {
    /// Its `Nats-Msg-Id`: chain and positions, the same when stored again.
    pub fn msg_id(&self) -> String {
        format!("{}:{}-{}", self.chain, self.first, self.last)
    }
}

/// Splits a stored message into its records (one per line; a message of one record, as
/// older versions stored them, is one line too).
pub fn records_of(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
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

    /// Stores blocks: every block one JetStream publish with its `Nats-Msg-Id`, all sent, then
    /// every ack awaited (5 s at most). Says for each block whether it is stored for sure.
    pub async fn store_audit(&self, blocks: &[AuditBlock]) -> (Vec<bool>, Option<BusError>) {
        let mut stored = vec![false; blocks.len()];
        let mut pending = Vec::with_capacity(blocks.len());
        let mut failure = None;
        for (i, b) in blocks.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", b.msg_id().as_str());
            match self
                .js
                .publish_with_headers(b.subject.to_string(), headers, b.bytes.clone())
                .await
            {
                Ok(ack) => pending.push((i, ack)),
                Err(x) => {
                    failure = Some(err("audit publish")(x.to_string()));
                    break;
                }
            }
        }
        for (i, ack) in pending {
            match tokio::time::timeout(Duration::from_secs(5), ack).await {
                Ok(Ok(_)) => stored[i] = true,
                Ok(Err(e)) => failure = Some(err("audit ack")(e.to_string())),
                Err(_) => failure = Some(err("audit ack")("no answer within 5 s".into())),
            }
        }
        (stored, failure)
    }

    /// Every message on `HMS_AUDIT` in stream order: (sequence, payload: a block of records,
    /// see [`records_of`]). Deleted sequences are skipped (the chain shows them).
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
