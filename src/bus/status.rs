//! What NATS alone knows about connectors, for `status` and the status page: consumers of
//! `HMS_EVENTS` with their numbers, and parked jobs counted per `sync.parked.<consumer>`.

use std::collections::BTreeMap;

use futures::TryStreamExt;

use super::{err, Bus, BusError, ConsumerStats, EVENTS_STREAM, PARKED_STREAM};

/// Subject prefix of parked jobs: `sync.parked.<consumer>`.
const PARKED_PREFIX: &str = "sync.parked.";

/// One durable consumer of `HMS_EVENTS` (a connector, running or not).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventConsumer {
    pub name: String,
    pub stats: ConsumerStats,
}

impl Bus {
    /// Every consumer of `HMS_EVENTS`, by name (its description is the connector id).
    pub async fn event_consumers(&self) -> Result<Vec<EventConsumer>, BusError> {
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| err("stream HMS_EVENTS")(e.to_string()))?;
        let infos: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|e| err("consumers of HMS_EVENTS")(e.to_string()))?;
        let mut out: Vec<EventConsumer> = infos
            .into_iter()
            .map(|info| EventConsumer {
                name: info.name.clone(),
                // The listing does not name who holds a pin (`consumer_stats` does).
                stats: ConsumerStats {
                    pin_id: None,
                    ..ConsumerStats::of(&info)
                },
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Parked jobs waiting for review, per consumer name (one stream-info request: the server
    /// counts messages per subject). A consumer with none is absent; no parked stream is
    /// an empty map.
    pub async fn parked_counts(&self) -> Result<BTreeMap<String, u64>, BusError> {
        let stream = match self.js.get_stream(PARKED_STREAM).await {
            Ok(s) => s,
            Err(e) if stream_not_found(&e.kind()) => return Ok(BTreeMap::new()),
            Err(e) => return Err(err("stream HMS_SYNC_PARKED")(e.to_string())),
        };
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(format!("{PARKED_PREFIX}>"))
            .await
            .map_err(|e| err("stream info HMS_SYNC_PARKED")(e.to_string()))?
            .try_collect()
            .await
            .map_err(|e| err("stream info HMS_SYNC_PARKED")(e.to_string()))?;
        let mut out = BTreeMap::new();
        for (subject, count) in subjects {
            if let Some(consumer) = subject.strip_prefix(PARKED_PREFIX) {
                *out.entry(consumer.to_string()).or_insert(0) += count as u64;
            }
        }
        Ok(out)
    }

    /// The connection state (`connected`, `disconnected`, `pending`) and, when known, the
    /// server's version and address.
    pub fn connection_summary(&self) -> (&'static str, Option<String>) {
        use async_nats::connection::State;
        let state = match self.client.connection_state() {
            State::Connected => "connected",
            State::Disconnected => "disconnected",
            State::Pending => "pending",
        };
        let info = self.client.server_info();
        let server = (!info.version.is_empty())
            .then(|| format!("{} at {}:{}", info.version, info.host, info.port));
        (state, server)
    }
}

fn stream_not_found(kind: &async_nats::jetstream::context::GetStreamErrorKind) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::ErrorCode;
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}
