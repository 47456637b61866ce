//! The connector registry: how a deployed connector is stored in KV and decoded, what one
//! write means for a running `up` ([`Change`]), and the registry commands (`deploy`,
//! `undeploy`, `list`, `list --history`).
//!
//! `hms-sync deploy` writes an [`Envelope`] per connector to bucket
//! [`crate::bus::kv::REGISTRY_BUCKET`]; every running `up` reads a [`snapshot`] at start-up and
//! then follows the bucket (the registry watch actor, `actors::watch`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::kv::{KvEntry, KvOp, Registry, REGISTRY_BUCKET};
use crate::bus::ConsumerSpec;
use crate::clock::to_second as rfc3339;
use crate::connector::{self, AnyConnector, Connector};
use crate::metrics::REGISTRY_INVALID_TOTAL;

/// A connector to run and where its definition comes from.
pub struct Desired {
    /// The validated outbound connector.
    pub connector: Arc<Connector>,
    /// The folder file or registry revision it comes from.
    pub origin: Origin,
}

/// The JSON value of one registry key, as `deploy` writes it. Secrets stay `${VAR}` in `yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The connector id (also the key).
    pub id: String,
    /// The connector file's text, exactly as written.
    pub yaml: String,
    /// When `deploy` ran (RFC 3339, the deploying machine's clock).
    pub deployed_at: String,
    /// The file it was deployed from.
    #[serde(default)]
    pub source: String,
    /// `user@host` that deployed it.
    #[serde(default)]
    pub deployed_by: String,
}

/// One decoded registry revision (the YAML not yet validated).
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The KV key (the connector id when valid).
    pub key: String,
    /// The bucket's sequence number of this write.
    pub revision: u64,
    /// When the server stored this revision: a new consumer starts here (server clock, so the
    /// deploying machine's clock cannot make it skip events).
    pub stored_at: time::OffsetDateTime,
    /// `deployedAt` of the envelope (or `stored_at` for a plain YAML value), RFC 3339.
    pub deployed_at: String,
    /// The file it was deployed from (empty for a plain YAML value).
    pub source: String,
    /// `user@host` that deployed it (empty for a plain YAML value).
    pub deployed_by: String,
    /// The connector's YAML as written.
    pub yaml: String,
}

/// Why a registry value cannot run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EntryError {
    #[error("{0}: value is not UTF-8 text")]
    NotText(String),
    #[error("{label}: key `{key}` holds connector `{id}`: the key must be the connector id")]
    KeyMismatch {
        label: String,
        key: String,
        id: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Where a running connector's definition comes from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A file of the `connectors.dir` folder.
    Folder(String),
    /// A registry revision.
    Registry(Arc<Deployment>),
}

impl Origin {
    /// The registry revision, if any.
    pub fn revision(&self) -> Option<u64> {
        match self {
            Origin::Folder(_) => None,
            Origin::Registry(d) => Some(d.revision),
        }
    }
}

impl Origin {
    /// When the running registry revision was deployed (RFC 3339); `None` for a folder file.
    pub fn deployed_at(&self) -> Option<String> {
        match self {
            Origin::Folder(_) => None,
            Origin::Registry(d) => Some(d.deployed_at.clone()),
        }
    }

    /// Where a consumer created now starts. A folder connector: when `up` started. A registry
    /// one: normally `deploy` created its consumer already; for a value written by another
    /// tool, where the server stored it (or when `up` started, if later).
    pub fn start_from(&self, started_at: time::OffsetDateTime) -> time::OffsetDateTime {
        match self {
            Origin::Folder(_) => started_at,
            Origin::Registry(d) => d.stored_at.max(started_at),
        }
    }

    /// `the definition of <file>` or `registry revision N` (for logs).
    pub fn describe(&self) -> String {
        match self {
            Origin::Folder(f) => format!("the definition of {f}"),
            Origin::Registry(d) => format!("registry revision {}", d.revision),
        }
    }
}

/// `file` name used in problems of a registry value: `hms_sync_connectors/<key>@<revision>`.
pub fn label(key: &str, revision: u64) -> String {
    format!("{REGISTRY_BUCKET}/{key}@{revision}")
}

/// Decodes a put: the JSON envelope of `deploy`, or plain connector YAML written by another
/// tool (`nats kv put hms_sync_connectors ID "$(cat file.yaml)"`).
pub fn decode(entry: &KvEntry) -> Result<Deployment, EntryError> {
    let label = label(&entry.key, entry.revision);
    let text = std::str::from_utf8(&entry.value).map_err(|_| EntryError::NotText(label.clone()))?;
    let stored = rfc3339(entry.created);
    let (yaml, deployed_at, source, deployed_by) = match serde_json::from_str::<Envelope>(text) {
        Ok(e) => (e.yaml, e.deployed_at, e.source, e.deployed_by),
        Err(_) => (text.to_string(), stored, String::new(), String::new()),
    };
    Ok(Deployment {
        key: entry.key.clone(),
        revision: entry.revision,
        stored_at: entry.created,
        deployed_at,
        source,
        deployed_by,
        yaml,
    })
}

/// Validates a deployment's YAML (problems as `hms_sync_connectors/<key>@<rev>:line:col: ...`)
/// and checks that the key is the connector's id.
pub fn compile(d: &Deployment) -> Result<AnyConnector, EntryError> {
    let label = label(&d.key, d.revision);
    // Files a deployed connector names (`map.schema`, `map.to.tls`) are relative to the file
    // `deploy` read (its `source`); absolute paths stay as they are.
    let source_dir = std::path::Path::new(&d.source)
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let read = |p: &std::path::Path| {
        let p = match p.strip_prefix(REGISTRY_BUCKET) {
            Ok(rel) => source_dir.join(rel),
            Err(_) => p.to_path_buf(),
        };
        std::fs::read_to_string(p)
    };
    let c = connector::parse_with(&label, &d.yaml, &read)
        .map_err(|p| EntryError::Invalid(p.to_string().trim_end().to_string()))?;
    if c.id() != d.key {
        return Err(EntryError::KeyMismatch {
            label,
            key: d.key.clone(),
            id: c.id().to_string(),
        });
    }
    Ok(c)
}

/// The durable consumer of a connector: name and description per the contract, metadata
/// naming the connector and where its definition comes from (shown by `nats consumer info`).
pub fn consumer_spec(
    c: &Connector,
    origin: &Origin,
    start_from: time::OffsetDateTime,
) -> ConsumerSpec {
    let mut metadata: HashMap<String, String> = HashMap::new();
    metadata.insert("connector".into(), c.id.clone());
    match origin {
        Origin::Folder(file) => {
            metadata.insert("origin".into(), format!("file {file}"));
        }
        Origin::Registry(d) => {
            metadata.insert(
                "origin".into(),
                format!("registry {REGISTRY_BUCKET} revision {}", d.revision),
            );
            metadata.insert("revision".into(), d.revision.to_string());
            metadata.insert("deployedAt".into(), d.deployed_at.clone());
            if !d.source.is_empty() {
                metadata.insert("source".into(), d.source.clone());
            }
            if !d.deployed_by.is_empty() {
                metadata.insert("deployedBy".into(), d.deployed_by.clone());
            }
        }
    }
    ConsumerSpec {
        pinned: c.trigger.ordering_key.is_some(),
        name: c.consumer.clone(),
        start_from,
        description: c.id.clone(),
        topic: c.trigger.topic.clone(),
        metadata,
    }
}

/// What one registry write means for a runtime.
pub enum Change {
    /// Run this outbound connector (new or changed).
    Run(Box<Desired>),
    /// Serve this inbound connector's webhook (new or changed).
    Serve(Box<crate::connector::InboundConnector>),
    /// The key was deleted (or now holds a connector this runtime does not run).
    Remove(String),
    /// The value cannot run; the reason names the key, revision and problems.
    Invalid {
        key: String,
        revision: u64,
        error: String,
    },
}

/// Interprets one registry write; logs and counts invalid values.
pub fn change(entry: &KvEntry) -> Change {
    if entry.op == KvOp::Delete {
        return Change::Remove(entry.key.clone());
    }
    let compiled = decode(entry).and_then(|d| compile(&d).map(|c| (d, c)));
    match compiled {
        Ok((d, AnyConnector::Outbound(c))) => {
            connector::warn_missing_secrets(&c);
            Change::Run(Box::new(Desired {
                connector: Arc::from(c),
                origin: Origin::Registry(Arc::new(d)),
            }))
        }
        Ok((d, AnyConnector::Inbound(c))) => {
            tracing::info!(
                "[{}] registry revision {}: serving {}",
                c.id,
                d.revision,
                c.webhook_url
            );
            Change::Serve(c)
        }
        Err(e) => {
            let error = e.to_string();
            tracing::error!("invalid registry entry (other connectors keep running):\n{error}");
            metrics::counter!(REGISTRY_INVALID_TOTAL, "connector" => entry.key.clone())
                .increment(1);
            Change::Invalid {
                key: entry.key.clone(),
                revision: entry.revision,
                error,
            }
        }
    }
}

/// The registry at start-up: every current value interpreted, and the revision to watch from.
pub struct Snapshot {
    pub changes: Vec<Change>,
    /// Revisions already seen per key (later watch events at or below are skipped).
    pub seen: HashMap<String, u64>,
    /// Watch from here.
    pub next_revision: u64,
}

/// Reads the registry's current state.
pub async fn snapshot(registry: &Registry) -> Result<Snapshot, crate::bus::BusError> {
    // Take the revision first: a write that lands during the snapshot is seen by the watch.
    let last = registry.last_revision().await?;
    let entries = registry.snapshot().await?;
    let seen = entries
        .iter()
        .map(|e| (e.key.clone(), e.revision))
        .collect();
    Ok(Snapshot {
        changes: entries.iter().map(change).collect(),
        seen,
        next_revision: last + 1,
    })
}

/// How long an undeployed connector's consumer is kept without a subscriber before the server
/// deletes it (a redeploy within this time resumes where it stopped).
pub const UNDEPLOY_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Why a registry command failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error("{0}: not deployed")]
    NotDeployed(String),
    #[error(
        "{file}: id `{id}` cannot be a registry key (it starts or ends with '.', or has '..')"
    )]
    BadKey { file: String, id: String },
    #[error("cannot encode the registry value: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One connector file to deploy: its validated content, its text as written, its file name.
pub struct Source {
    pub connector: AnyConnector,
    pub yaml: String,
    pub file: String,
}

/// What `deploy` did for one connector.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployed {
    pub id: String,
    /// The revision now current (the existing one when unchanged).
    pub revision: u64,
    /// False when the registry already held exactly this text (nothing written).
    pub changed: bool,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Trigger topic (outbound only).
    pub topic: Option<String>,
    /// Durable consumer name (outbound only).
    pub consumer: Option<String>,
    pub deployed_at: String,
    pub source: String,
}

/// `user@host` of this process, best effort.
pub fn deployed_by() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    };
    format!("{user}@{host}")
}

/// Stores validated connectors in the registry. For each outbound one, `HMS_EVENTS` captures its
/// topic and its durable consumer exists (new: starting where the server stored the revision)
/// before this returns, so no event published afterwards is missed, whether or not an `up` runs.
/// A connector whose text is already the current revision is left as it is.
pub async fn deploy(
    bus: &crate::bus::Bus,
    sources: &[Source],
    delivery: &crate::config::DeliveryConfig,
    streams: &crate::config::StreamsConfig,
) -> Result<Vec<Deployed>, RegistryError> {
    for s in sources {
        if !crate::bus::kv::is_registry_key(s.connector.id()) {
            return Err(RegistryError::BadKey {
                file: s.file.clone(),
                id: s.connector.id().to_string(),
            });
        }
    }
    let kv = bus.registry().await?;
    let topics: Vec<String> = sources
        .iter()
        .filter_map(|s| match &s.connector {
            AnyConnector::Outbound(c) => Some(c.trigger.topic.clone()),
            AnyConnector::Inbound(_) => None,
        })
        .collect();
    bus.ensure_streams(&topics, streams).await?;
    let by = deployed_by();
    let mut out = Vec::new();
    for s in sources {
        let id = s.connector.id();
        let current = kv
            .entry(id)
            .await?
            .filter(|e| e.op == KvOp::Put)
            .and_then(|e| decode(&e).ok())
            .filter(|d| d.yaml == s.yaml);
        let (deployment, changed) = match current {
            Some(d) => (d, false),
            None => {
                let envelope = Envelope {
                    id: id.to_string(),
                    yaml: s.yaml.clone(),
                    deployed_at: rfc3339(time::OffsetDateTime::now_utc()),
                    source: s.file.clone(),
                    deployed_by: by.clone(),
                };
                let revision = kv.put(id, serde_json::to_vec(&envelope)?).await?;
                // The server's time of the write: where a new consumer starts.
                let stored_at = match kv.entry(id).await? {
                    Some(e) if e.revision == revision => e.created,
                    _ => time::OffsetDateTime::now_utc(),
                };
                let d = Deployment {
                    key: id.to_string(),
                    revision,
                    stored_at,
                    deployed_at: envelope.deployed_at,
                    source: envelope.source,
                    deployed_by: envelope.deployed_by,
                    yaml: envelope.yaml,
                };
                (d, true)
            }
        };
        let (kind, topic, consumer) = match &s.connector {
            AnyConnector::Outbound(c) => {
                let d = Arc::new(deployment.clone());
                let spec = consumer_spec(c, &Origin::Registry(d.clone()), d.stored_at);
                bus.ensure_consumer(&spec, delivery).await?;
                (
                    "outbound",
                    Some(c.trigger.topic.clone()),
                    Some(c.consumer.clone()),
                )
            }
            AnyConnector::Inbound(_) => ("inbound", None, None),
        };
        out.push(Deployed {
            id: id.to_string(),
            revision: deployment.revision,
            changed,
            kind,
            topic,
            consumer,
            deployed_at: deployment.deployed_at.clone(),
            source: deployment.source.clone(),
        });
    }
    Ok(out)
}

/// What happened to an undeployed connector's consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ConsumerFate {
    /// Kept; the server deletes it after [`UNDEPLOY_GRACE`] without a subscriber.
    Retired,
    /// Deleted at once (`--delete-consumer`).
    Deleted,
    /// There was none.
    Missing,
}

/// Deletes a connector from the registry (history kept); its consumer is retired or deleted.
/// Returns the last revision it had.
pub async fn undeploy(
    bus: &crate::bus::Bus,
    id: &str,
    delete_consumer: bool,
) -> Result<(u64, ConsumerFate), RegistryError> {
    let not_deployed = || RegistryError::NotDeployed(id.to_string());
    if !crate::bus::kv::is_registry_key(id) {
        return Err(not_deployed());
    }
    let kv = bus.registry_if_exists().await?.ok_or_else(not_deployed)?;
    let current = kv
        .entry(id)
        .await?
        .filter(|e| e.op == KvOp::Put)
        .ok_or_else(not_deployed)?;
    kv.delete(id).await?;
    let consumer = connector::consumer_name(id);
    let fate = if delete_consumer {
        if bus.delete_consumer(&consumer).await? {
            ConsumerFate::Deleted
        } else {
            ConsumerFate::Missing
        }
    } else if bus.retire_consumer(&consumer, UNDEPLOY_GRACE).await? {
        ConsumerFate::Retired
    } else {
        ConsumerFate::Missing
    };
    Ok((current.revision, fate))
}

/// One line of `list` (or of `list --history`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub id: String,
    /// `outbound`, `inbound`, `invalid`, or `undeployed` (history only).
    #[serde(rename = "type")]
    pub kind: String,
    pub topic: Option<String>,
    pub revision: u64,
    pub deployed_at: String,
    pub source: String,
    pub deployed_by: String,
    /// Why an invalid value cannot run.
    pub error: Option<String>,
}

fn listed(e: &KvEntry) -> Listed {
    if e.op == KvOp::Delete {
        return Listed {
            id: e.key.clone(),
            kind: "undeployed".into(),
            topic: None,
            revision: e.revision,
            deployed_at: rfc3339(e.created),
            source: String::new(),
            deployed_by: String::new(),
            error: None,
        };
    }
    let d = match decode(e) {
        Ok(d) => d,
        Err(x) => {
            return Listed {
                id: e.key.clone(),
                kind: "invalid".into(),
                topic: None,
                revision: e.revision,
                deployed_at: rfc3339(e.created),
                source: String::new(),
                deployed_by: String::new(),
                error: Some(x.to_string()),
            }
        }
    };
    let (kind, topic, error) = match compile(&d) {
        Ok(AnyConnector::Outbound(c)) => ("outbound", Some(c.trigger.topic.clone()), None),
        Ok(AnyConnector::Inbound(_)) => ("inbound", None, None),
        Err(x) => ("invalid", None, Some(x.to_string())),
    };
    Listed {
        id: e.key.clone(),
        kind: kind.into(),
        topic,
        revision: d.revision,
        deployed_at: d.deployed_at,
        source: d.source,
        deployed_by: d.deployed_by,
        error,
    }
}

/// Every deployed connector, sorted by id.
pub async fn list(bus: &crate::bus::Bus) -> Result<Vec<Listed>, RegistryError> {
    let Some(kv) = bus.registry_if_exists().await? else {
        return Ok(vec![]);
    };
    Ok(kv.snapshot().await?.iter().map(listed).collect())
}

/// Every kept revision of one connector, oldest first (undeploys included).
pub async fn history(bus: &crate::bus::Bus, id: &str) -> Result<Vec<Listed>, RegistryError> {
    if !crate::bus::kv::is_registry_key(id) {
        return Err(RegistryError::NotDeployed(id.to_string()));
    }
    let Some(kv) = bus.registry_if_exists().await? else {
        return Err(RegistryError::NotDeployed(id.to_string()));
    };
    let h = kv.history(id).await?;
    if h.is_empty() {
        return Err(RegistryError::NotDeployed(id.to_string()));
    }
    Ok(h.iter().map(listed).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &[u8]) -> KvEntry {
        KvEntry {
            key: key.into(),
            revision: 7,
            created: time::OffsetDateTime::UNIX_EPOCH,
            op: KvOp::Put,
            value: bytes::Bytes::copy_from_slice(value),
        }
    }

    const YAML: &str = "id: a.v1\ntype: outbound\ntrigger:\n  topic: t.x\nmap:\n  to:\n    url: \"http://h/{id}\"\n    method: PUT\n    headers: { Authorization: \"Bearer ${TOKEN}\" }\n";

    #[test]
    fn decodes_envelopes_and_plain_yaml() {
        let env = Envelope {
            id: "a.v1".into(),
            yaml: YAML.into(),
            deployed_at: "2026-01-02T03:04:05Z".into(),
            source: "connectors/a.yaml".into(),
            deployed_by: "rosa@ops".into(),
        };
        let d = decode(&entry("a.v1", &serde_json::to_vec(&env).unwrap())).unwrap();
        assert_eq!(d.yaml, YAML);
        assert_eq!(d.deployed_at, "2026-01-02T03:04:05Z");
        assert_eq!(d.source, "connectors/a.yaml");
        assert!(matches!(compile(&d), Ok(AnyConnector::Outbound(_))));

        // Plain YAML written by another tool: deployed when the server stored it.
        let d = decode(&entry("a.v1", YAML.as_bytes())).unwrap();
        assert_eq!(d.deployed_at, "1970-01-01T00:00:00Z");
        assert_eq!(d.source, "");
        assert!(compile(&d).is_ok());
    }

    #[test]
    fn invalid_values_name_key_revision_and_place() {
        let cases: [(&str, &[u8], &str); 4] = [
            (
                "a.v1",
                b"\xff\xfe",
                "hms_sync_connectors/a.v1@7: value is not UTF-8",
            ),
            ("a.v1", b"id: [x\n  : :", "hms_sync_connectors/a.v1@7:"),
            ("b.v1", YAML.as_bytes(), "key `b.v1` holds connector `a.v1`"),
            (
                "a.v1",
                b"id: a.v1\ntype: outbound\n",
                "hms_sync_connectors/a.v1@7:1:1:",
            ),
        ];
        for (key, value, want) in cases {
            let got = decode(&entry(key, value))
                .and_then(|d| compile(&d).map(|_| ()))
                .map_err(|e| e.to_string());
            assert!(
                got.as_ref().is_err_and(|e| e.contains(want)),
                "{key} {:?}: {got:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn consumer_metadata_names_connector_and_revision() {
        let Ok(AnyConnector::Outbound(c)) = connector::parse("a.yaml", YAML) else {
            panic!("valid");
        };
        let d = decode(&entry("a.v1", YAML.as_bytes())).unwrap();
        let spec = consumer_spec(
            &c,
            &Origin::Registry(Arc::new(d)),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(spec.name, "a_v1");
        assert_eq!(spec.description, "a.v1");
        assert_eq!(spec.metadata["connector"], "a.v1");
        assert_eq!(spec.metadata["revision"], "7");
        assert_eq!(
            spec.metadata["origin"],
            "registry hms_sync_connectors revision 7"
        );
        let spec = consumer_spec(
            &c,
            &Origin::Folder("a.yaml".into()),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(spec.metadata["origin"], "file a.yaml");
        assert!(!spec.metadata.contains_key("revision"));
    }

    #[test]
    fn registry_keys() {
        for (k, ok) in [
            ("a.v1", true),
            ("a_b-c", true),
            (".a", false),
            ("a.", false),
            ("a..b", false),
            ("", false),
        ] {
            assert_eq!(crate::bus::kv::is_registry_key(k), ok, "{k}");
        }
    }
}
