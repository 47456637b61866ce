//! Runtime configuration (`config/hms-sync.yaml`). Paths in it are relative to its folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole runtime configuration, with every path made absolute.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RuntimeConfig {
    pub nats: NatsConfig,
    pub http: HttpConfig,
    pub connectors: ConnectorsConfig,
    pub delivery: DeliveryConfig,
    pub streams: StreamsConfig,
    /// Per-endpoint protection (`scheme://host:port` keys, plus `defaults`).
    pub endpoints: std::collections::BTreeMap<String, EndpointConfig>,
}

/// Protection of one endpoint (or `defaults` for all).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointConfig {
    /// Requests per second (at most this many in any 1-second window) and burst. Wins over the
    /// connectors' own `rateLimit`.
    pub rate_limit: Option<EndpointRate>,
    /// Requests in flight to this endpoint, across connectors (default 64).
    pub max_in_flight: Option<usize>,
    /// Circuit breaker.
    pub breaker: Option<BreakerConfig>,
    /// Read the target's rate-limit headers (`RateLimit`, `X-RateLimit-*`) and wait for the
    /// reset when it says its budget is spent (default true).
    pub rate_limit_headers: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointRate {
    pub per_second: f64,
    pub burst: Option<u32>,
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct BreakerConfig {
    /// Consecutive transient failures (5xx, timeouts, connection errors) that pause the endpoint;
    /// 0 turns the breaker off.
    pub failures: u32,
    /// While paused, one waiting request is let through as a probe this often.
    pub probe_interval_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 20,
            probe_interval_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct NatsConfig {
    /// Server URL; overridden by `--nats-url` or `NATS_URL`.
    pub url: String,
    /// Start a local nats-server from `server_config` when nothing answers at `url`.
    pub embedded: bool,
    /// nats-server configuration file for the embedded server.
    pub server_config: PathBuf,
    /// nats-server binary; default: `NATS_SERVER_BIN`, then `.tools/nats-server/bin/nats-server`
    /// beside `server_config`, then `nats-server` on PATH.
    pub server_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct HttpConfig {
    /// Address of the status/metrics/webhook server; overridden by `up --listen`.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ConnectorsConfig {
    /// Every `*.yaml` in this folder is loaded by `up`.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DeliveryConfig {
    /// Requests in flight per connector.
    pub max_in_flight: usize,
    /// How long JetStream waits for an ack before redelivering (crash recovery time).
    pub ack_wait_ms: u64,
    /// Unacknowledged messages per consumer (includes those waiting for a retry).
    pub max_ack_pending: i64,
    /// Messages asked for per pull request.
    pub pull_batch: usize,
    /// How often a connector that received nothing, with nothing in process, asks its consumer
    /// whether work is waiting (then it re-opens its pull subscription: a stalled pull).
    pub stall_check_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StreamsConfig {
    /// How long `HMS_EVENTS` keeps events (hours).
    pub events_max_age_hours: u64,
    /// Window in which a repeated `Nats-Msg-Id` is stored once (seconds).
    pub duplicate_window_sec: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            embedded: true,
            server_config: PathBuf::from("../nats-server.conf"),
            server_bin: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7500)),
        }
    }
}

impl Default for ConnectorsConfig {
    fn default() -> Self {
        ConnectorsConfig {
            dir: PathBuf::from("../connectors"),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_in_flight: 64,
            ack_wait_ms: 30_000,
            max_ack_pending: 10_000,
            pull_batch: 128,
            stall_check_ms: 300_000,
        }
    }
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            events_max_age_hours: 24 * 7,
            duplicate_window_sec: 120,
        }
    }
}

impl DeliveryConfig {
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms.max(1000))
    }

    pub fn stall_check(&self) -> Duration {
        Duration::from_millis(self.stall_check_ms.max(200))
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}: cannot read: {1}")]
    Read(String, std::io::Error),
    #[error("{file}:{line}:{col}: {message}")]
    Parse {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
}

impl RuntimeConfig {
    /// Loads `path`. When `path` does not exist and `required` is false, the defaults apply,
    /// relative to the current folder's `config/` (as if the file were there).
    pub fn load(path: &Path, required: bool) -> Result<RuntimeConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(ConfigError::Read(path.display().to_string(), e)),
        };
        let mut cfg: RuntimeConfig = if text.trim().is_empty() {
            RuntimeConfig::default()
        } else {
            serde_yaml::from_str(&text).map_err(|e| {
                let loc = e.location();
                let msg = e.to_string();
                ConfigError::Parse {
                    file: path.display().to_string(),
                    line: loc.as_ref().map_or(1, |l| l.line()),
                    col: loc.as_ref().map_or(1, |l| l.column()),
                    message: msg.split(" at line ").next().unwrap_or(&msg).to_string(),
                }
            })?
        };
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        cfg.nats.server_config = base.join(&cfg.nats.server_config);
        cfg.nats.server_bin = cfg.nats.server_bin.map(|b| base.join(b));
        cfg.connectors.dir = base.join(&cfg.connectors.dir);
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_to_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hms-sync.yaml");
        std::fs::write(
            &file,
            "nats:\n  url: nats://127.0.0.1:1\nconnectors:\n  dir: ../conn\n",
        )
        .unwrap();
        let cfg = RuntimeConfig::load(&file, true).unwrap();
        assert_eq!(cfg.nats.url, "nats://127.0.0.1:1");
        assert_eq!(cfg.connectors.dir, dir.path().join("../conn"));
        assert!(cfg.nats.embedded);
    }

    #[test]
    fn unknown_keys_name_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "http:\n  listn: 1\n").unwrap();
        let err = RuntimeConfig::load(&file, true).unwrap_err().to_string();
        assert!(
            err.contains("c.yaml:2:3: http: unknown field `listn`"),
            "{err}"
        );
    }
}
