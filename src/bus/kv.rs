//! The connector registry's storage: KV bucket `hms_sync_connectors` (put, delete, history, snapshot, watch).

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};

use super::{err, Bus, BusError};

/// The KV bucket that holds deployed connectors (key: connector id).
pub const REGISTRY_BUCKET: &str = "hms_sync_connectors";
/// Revisions kept per connector (`list --history`).
pub const REGISTRY_HISTORY: i64 = 64;

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOp {
    /// A value was written.
    Put,
    /// The key was deleted (history kept) or purged.
    Delete,
}

/// One revision of one key of the registry.
#[derive(Debug, Clone)]
pub struct KvEntry {
    /// The key (a connector id for values `deploy` wrote).
    pub key: String,
    /// The bucket's sequence number of this write: increases with every write to the bucket.
    pub revision: u64,
    /// When the server stored it.
    pub created: time::OffsetDateTime,
    /// Put or delete.
    pub op: KvOp,
    /// The value (empty for a delete).
    pub value: Bytes,
}

impl From<kv::Entry> for KvEntry {
    fn from(e: kv::Entry) -> Self {
        KvEntry {
            key: e.key,
            revision: e.revision,
            created: e.created,
            op: match e.operation {
                kv::Operation::Put => KvOp::Put,
                kv::Operation::Delete | kv::Operation::Purge => KvOp::Delete,
            },
            value: e.value,
        }
    }
}

/// A handle on the registry bucket.
#[derive(Clone)]
pub struct Registry {
    store: kv::Store,
}

/// Whether `key` can be a key of the bucket (no leading/trailing dot, no empty token).
pub fn is_registry_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '='))
}

impl Bus {
    /// Opens the registry bucket, creating it (file storage, [`REGISTRY_HISTORY`] revisions per
    /// key) when it does not exist.
    pub async fn registry(&self) -> Result<Registry, BusError> {
        if let Ok(store) = self.js.get_key_value(REGISTRY_BUCKET).await {
            let mut stream = store.stream.clone();
            if let Ok(info) = stream.info().await {
                let replicas = info.config.num_replicas.max(1);
                if replicas != self.replicas.max(1) {
                    super::warn_differences(
                        &info.config,
                        &async_nats::jetstream::stream::Config {
                            num_replicas: self.replicas,
                            ..info.config.clone()
                        },
                    );
                }
            }
            return Ok(Registry { store });
        }
        let store = self
            .js
            .create_key_value(kv::Config {
                bucket: REGISTRY_BUCKET.into(),
                description: "hms-sync: deployed connectors (hms-sync deploy)".into(),
                history: REGISTRY_HISTORY,
                storage: async_nats::jetstream::stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| err(format!("create KV bucket {REGISTRY_BUCKET}"))(e.to_string()))?;
        Ok(Registry { store })
    }

    /// Opens the registry bucket if it exists (`None` when nothing was ever deployed).
    pub async fn registry_if_exists(&self) -> Result<Option<Registry>, BusError> {
        match self.js.get_key_value(REGISTRY_BUCKET).await {
            Ok(store) => Ok(Some(Registry { store })),
            Err(e) if e.kind() == async_nats::jetstream::context::KeyValueErrorKind::GetBucket => {
                Ok(None)
            }
            Err(e) => Err(err(format!("open KV bucket {REGISTRY_BUCKET}"))(
                e.to_string(),
            )),
        }
    }
}

impl Registry {
    /// Stores a value; returns its revision.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, BusError> {
        self.store
            .put(key, value.into())
            .await
            .map_err(|e| err(format!("KV put {REGISTRY_BUCKET}/{key}"))(e.to_string()))
    }

    /// Deletes a key (a delete marker: the history stays).
    pub async fn delete(&self, key: &str) -> Result<(), BusError> {
        self.store
            .delete(key)
            .await
            .map_err(|e| err(format!("KV delete {REGISTRY_BUCKET}/{key}"))(e.to_string()))
    }

    /// The latest revision of a key (a delete marker included); `None` if it never existed.
    pub async fn entry(&self, key: &str) -> Result<Option<KvEntry>, BusError> {
        self.store
            .entry(key)
            .await
            .map(|e| e.map(KvEntry::from))
            .map_err(|e| err(format!("KV get {REGISTRY_BUCKET}/{key}"))(e.to_string()))
    }

    /// Every revision of a key still kept, oldest first.
    pub async fn history(&self, key: &str) -> Result<Vec<KvEntry>, BusError> {
        let e = err(format!("KV history {REGISTRY_BUCKET}/{key}"));
        let stream = match self.store.history(key).await {
            Ok(s) => s,
            Err(x) => return Err(e(x.to_string())),
        };
        let items = tokio::time::timeout(
            Duration::from_secs(10),
            stream.map_ok(KvEntry::from).try_collect::<Vec<_>>(),
        )
        .await;
        match items {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(x)) => Err(e(x.to_string())),
            Err(_) => Err(e("no answer within 10 s".into())),
        }
    }

    /// The bucket's last revision (0 when empty).
    pub async fn last_revision(&self) -> Result<u64, BusError> {
        let mut stream = self.store.stream.clone();
        stream
            .info()
            .await
            .map(|i| i.state.last_sequence)
            .map_err(|e| err(format!("KV status {REGISTRY_BUCKET}"))(e.to_string()))
    }

    /// The current value of every key that is not deleted, sorted by key.
    pub async fn snapshot(&self) -> Result<Vec<KvEntry>, BusError> {
        let e = err(format!("KV keys {REGISTRY_BUCKET}"));
        let keys = match self.store.keys().await {
            Ok(k) => k,
            Err(x) => return Err(e(x.to_string())),
        };
        let keys = tokio::time::timeout(Duration::from_secs(10), keys.try_collect::<Vec<_>>())
            .await
            .map_err(|_| e("no answer within 10 s".into()))?
            .map_err(|x| err(format!("KV keys {REGISTRY_BUCKET}"))(x.to_string()))?;
        let mut out = Vec::new();
        for k in keys {
            if let Some(entry) = self.entry(&k).await? {
                if entry.op == KvOp::Put {
                    out.push(entry);
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Every write from `revision` on (puts and deletes, in order), then live ones.
    pub async fn watch_from(
        &self,
        revision: u64,
    ) -> Result<impl Stream<Item = Result<KvEntry, BusError>> + Send + Unpin, BusError> {
        let watch = self
            .store
            .watch_all_from_revision(revision.max(1))
            .await
            .map_err(|e| err(format!("KV watch {REGISTRY_BUCKET}"))(e.to_string()))?;
        Ok(watch.map(|r| {
            r.map(KvEntry::from)
                .map_err(|e| err(format!("KV watch {REGISTRY_BUCKET}"))(e.to_string()))
        }))
    }
}
