//! The live table of served webhook paths, and deploying into it without a restart.
//!
//! [`Webhooks`] is shared by the HTTP server (which looks a path up for every request) and by
//! whoever changes the set of inbound connectors: `up` at start-up, and the registry watch
//! (hot deploy/undeploy) through [`deploy`] and [`Webhooks::remove`]. A change takes effect
//! for the next request; requests in progress keep the connector they started with.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::bus::{Bus, BusError};
use crate::config::StreamsConfig;
use crate::connector::InboundConnector;
use crate::metrics::WEBHOOK_RECEIVED_TOTAL;

/// Why an inbound connector could not be deployed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("webhookUrl {path} is already served by connector `{other}`")]
    PathTaken { path: String, other: String },
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The inbound connectors being served, by webhook path. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Webhooks {
    by_path: Arc<RwLock<HashMap<String, Arc<InboundConnector>>>>,
}

impl Webhooks {
    /// The connector serving `path`, if any.
    pub fn get(&self, path: &str) -> Option<Arc<InboundConnector>> {
        self.by_path
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .cloned()
    }

    /// Every connector served, sorted by path.
    pub fn list(&self) -> Vec<Arc<InboundConnector>> {
        let mut all: Vec<_> = self
            .by_path
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.webhook_url.cmp(&b.webhook_url));
        all
    }

    /// Serves `c` at its path from the next request on, replacing the connector with the same
    /// id (also when its path changed). Returns the connector it replaced. The caller makes
    /// sure `HMS_EVENTS` captures `c.publish.capture` first (see [`deploy`]).
    pub fn insert(
        &self,
        c: InboundConnector,
    ) -> Result<Option<Arc<InboundConnector>>, DeployError> {
        let mut map = self.by_path.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(other) = map.get(&c.webhook_url).filter(|o| o.id != c.id) {
            return Err(DeployError::PathTaken {
                path: c.webhook_url.clone(),
                other: other.id.clone(),
            });
        }
        let previous = remove_id(&mut map, &c.id);
        // Make the counter visible in /metrics (at 0) from the moment the webhook is served.
        metrics::counter!(WEBHOOK_RECEIVED_TOTAL, "connector" => c.id.clone()).increment(0);
        map.insert(c.webhook_url.clone(), Arc::new(c));
        Ok(previous)
    }

    /// Stops serving connector `id` (its path answers 404 from the next request on).
    pub fn remove(&self, id: &str) -> Option<Arc<InboundConnector>> {
        let mut map = self.by_path.write().unwrap_or_else(PoisonError::into_inner);
        remove_id(&mut map, id)
    }
}

fn remove_id(
    map: &mut HashMap<String, Arc<InboundConnector>>,
    id: &str,
) -> Option<Arc<InboundConnector>> {
    let path = map
        .iter()
        .find(|(_, c)| c.id == id)
        .map(|(p, _)| p.clone())?;
    map.remove(&path)
}

/// Deploys an inbound connector into a running `up`: makes `HMS_EVENTS` capture its publish
/// topic, then serves its path. For the connector registry (hot deploy).
pub async fn deploy(
    webhooks: &Webhooks,
    bus: &Bus,
    streams: &StreamsConfig,
    c: InboundConnector,
) -> Result<Option<Arc<InboundConnector>>, DeployError> {
    if let Some(other) = webhooks.get(&c.webhook_url).filter(|o| o.id != c.id) {
        return Err(DeployError::PathTaken {
            path: c.webhook_url.clone(),
            other: other.id.clone(),
        });
    }
    bus.ensure_streams(std::slice::from_ref(&c.publish.capture), streams)
        .await?;
    webhooks.insert(c)
}
