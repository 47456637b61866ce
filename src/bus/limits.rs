//! KV bucket `hms_sync_limits`: the per-endpoint state every instance shares (the rate
//! budget's grant log, the circuit breaker), updated with compare-and-set.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{err, Bus, BusError, BusErrorKind};

/// The KV bucket of shared endpoint state.
pub const LIMITS_BUCKET: &str = "hms_sync_limits";
/// Attempts of one compare-and-set before giving up (others write the same key meanwhile).
const CAS_ATTEMPTS: usize = 50;

/// A handle on the shared endpoint state.
#[derive(Clone)]
pub struct Limits {
    store: kv::Store,
}

impl Bus {
    /// Opens the bucket, creating it (file storage, one revision per key, keys forgotten after
    /// a day without a write) when it does not exist.
    pub async fn limits(&self, replicas: usize) -> Result<Limits, BusError> {
        if let Ok(store) = self.js.get_key_value(LIMITS_BUCKET).await {
            return Ok(Limits { store });
        }
        let store = self
            .js
            .create_key_value(kv::Config {
                bucket: LIMITS_BUCKET.into(),
                description: "hms-sync: rate budgets and circuit breakers shared by every instance"
                    .into(),
                history: 1,
                max_age: Duration::from_secs(24 * 3600),
                storage: async_nats::jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| err(format!("create KV bucket {LIMITS_BUCKET}"))(e.to_string()))?;
        Ok(Limits { store })
    }
}

impl Limits {
    /// Reads `key` (its default when absent), applies `f`, and writes the result if the key did
    /// not change meanwhile (else reads and applies again). `f` says whether to write at all;
    /// returns what `f` returned, and whether this call wrote.
    pub async fn update<T, R>(
        &self,
        key: &str,
        mut f: impl FnMut(&mut T) -> (bool, R),
    ) -> Result<(R, bool), BusError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let e = |m: String| err(format!("KV {LIMITS_BUCKET}/{key}"))(m);
        for _ in 0..CAS_ATTEMPTS {
            let entry = self.store.entry(key).await.map_err(|x| e(x.to_string()))?;
            let (mut value, revision) = match &entry {
                Some(en) if en.operation == kv::Operation::Put => (
                    serde_json::from_slice(&en.value).unwrap_or_default(),
                    Some(en.revision),
                ),
                Some(en) => (T::default(), Some(en.revision)),
                None => (T::default(), None),
            };
            let (write, out) = f(&mut value);
            if !write {
                return Ok((out, false));
            }
            let bytes = serde_json::to_vec(&value).map_err(|x| e(x.to_string()))?;
            let done = match revision {
                Some(rev) => self
                    .store
                    .update(key, bytes.into(), rev)
                    .await
                    .map(|_| ())
                    .map_err(|x| {
                        (
                            x.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            x.to_string(),
                        )
                    }),
                None => self
                    .store
                    .create(key, bytes.into())
                    .await
                    .map(|_| ())
                    .map_err(|x| {
                        (
                            x.kind() == kv::CreateErrorKind::AlreadyExists,
                            x.to_string(),
                        )
                    }),
            };
            match done {
                Ok(()) => return Ok((out, true)),
                Err((true, _)) => continue, // someone else wrote first: again
                Err((false, m)) => return Err(e(m)),
            }
        }
        Err(BusError {
            kind: BusErrorKind::Timeout,
            context: format!("KV {LIMITS_BUCKET}/{key}"),
            message: format!("{CAS_ATTEMPTS} writes lost to other instances in a row"),
        })
    }

    /// The current value of `key` (`None`: absent or deleted).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, BusError> {
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|x| err(format!("KV {LIMITS_BUCKET}/{key}"))(x.to_string()))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    /// Every later write of the keys matching `filter` (`breaker.>`): (key, value; `None` for a
    /// delete or a value that does not parse).
    pub async fn watch<T: DeserializeOwned>(
        &self,
        filter: &str,
    ) -> Result<impl Stream<Item = (String, Option<T>)>, BusError> {
        let w = self
            .store
            .watch(filter)
            .await
            .map_err(|x| err(format!("KV watch {LIMITS_BUCKET}/{filter}"))(x.to_string()))?;
        Ok(w.filter_map(|item| async move {
            let e = item.ok()?;
            let value = (e.operation == kv::Operation::Put)
                .then(|| serde_json::from_slice(&e.value).ok())
                .flatten();
            Some((e.key, value))
        }))
    }
}
