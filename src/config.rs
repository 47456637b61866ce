//! Runtime configuration (`config/hms-sync.yaml`). Paths in it are relative to its folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::auth::SecretString;

/// The whole runtime configuration, with every path made absolute.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RuntimeConfig {
    pub nats: NatsConfig,
    pub http: HttpConfig,
    pub connectors: ConnectorsConfig,
    pub delivery: DeliveryConfig,
    pub streams: StreamsConfig,
    /// HTTPS trust, proxy and the address policy of every outbound call.
    pub outbound: OutboundConfig,
    /// Per-endpoint protection (`scheme://host:port` keys, plus `defaults`).
    pub endpoints: std::collections::BTreeMap<String, EndpointConfig>,
    /// The file it was read from and its text (for positions in later checks).
    #[serde(skip)]
    pub source: Option<(PathBuf, String)>,
}

/// Protection of one endpoint (or `defaults` for all).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointRate {
    pub per_second: f64,
    pub burst: Option<u32>,
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct NatsConfig {
    /// Server URL; overridden by `--nats-url` or `NATS_URL`.
    #[serde(serialize_with = "url_masked")]
    pub url: String,
    /// Start a local nats-server from `server_config` when nothing answers at `url`.
    pub embedded: bool,
    /// nats-server configuration file for the embedded server.
    pub server_config: PathBuf,
    /// nats-server binary; default: `NATS_SERVER_BIN`, then `.tools/nats-server/bin/nats-server`
    /// beside `server_config`, then `nats-server` on PATH.
    pub server_bin: Option<PathBuf>,
    /// User name (user/password auth); `${VAR}` allowed.
    pub user: Option<String>,
    /// Password (user/password auth); `${VAR}` allowed.
    #[serde(serialize_with = "secret")]
    pub password: Option<String>,
    /// Token auth; `${VAR}` allowed.
    #[serde(serialize_with = "secret")]
    pub token: Option<String>,
    /// NKey auth: a file holding the user's NKey seed (`SU...`).
    pub nkey_seed_file: Option<PathBuf>,
    /// Decentralised auth: a `.creds` file (user JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// TLS to the servers: extra CA, client certificate.
    pub tls: Option<NatsTlsConfig>,
    /// Replicas of the streams and the bucket hms-sync creates (1 to 5).
    pub replicas: usize,
}

/// `nats.tls`: the CA that signed the servers' certificates and a client certificate (mutual
/// TLS). Setting it makes TLS required, as a `tls://` URL does.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsTlsConfig {
    /// Trust this CA (PEM) for the server certificate, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// `outbound`: how HTTP calls to targets, lookups and token endpoints leave the process.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OutboundConfig {
    /// Extra trusted roots (PEM) for HTTPS targets, besides the system's (and `SSL_CERT_FILE`).
    pub ca_file: Option<PathBuf>,
    /// Proxy for every target (`http://host:port`, credentials allowed, `${VAR}` too); default:
    /// `HTTPS_PROXY` / `HTTP_PROXY` from the environment.
    #[serde(serialize_with = "url_masked_opt")]
    pub proxy: Option<String>,
    /// Hosts reached without the proxy (`NO_PROXY` syntax); default: `NO_PROXY`.
    pub no_proxy: Option<Vec<String>>,
    /// When set, only these may be called: host names (`*.` allowed in front), IP addresses,
    /// CIDR networks.
    pub allow: Option<Vec<String>>,
    /// Never called, besides the built-in list (link-local, `0.0.0.0/8`, `fd00:ec2::254`).
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct HttpConfig {
    /// Address of the webhook server, `/healthz` and `/readyz` (and of the status page,
    /// `/metrics` and `/api/*` unless `admin_listen` is set); overridden by `up --listen`.
    pub listen: SocketAddr,
    /// When set, the status page, `/metrics` and `/api/*` are served on this address only.
    pub admin_listen: Option<SocketAddr>,
    /// When set (`${VAR}` allowed, resolved at start), the status page, `/metrics` and
    /// `/api/*` need `Authorization: Bearer <token>`; review actions on the page need it.
    #[serde(serialize_with = "secret")]
    pub admin_token: Option<String>,
    /// How often the status page's charts are sampled (ms; 15 minutes are kept).
    pub chart_sample_ms: u64,
    /// How long a client may take to send a request's head, and how long a kept-alive
    /// connection may stay idle; slower ones are closed (slowloris).
    pub header_timeout_ms: u64,
    /// Connections served at once; beyond, new ones wait until one closes.
    pub max_connections: usize,
}

impl HttpConfig {
    /// The admin token with `${VAR}` resolved through `env` (`None`: not configured). Errors
    /// name the key and the variable, never a value.
    pub fn admin_token(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<SecretString>, String> {
        let Some(raw) = &self.admin_token else {
            return Ok(None);
        };
        let token = resolve_vars(raw, "http.adminToken", env)?;
        if token.trim().is_empty() {
            return Err("http.adminToken: the token is empty".into());
        }
        if token.chars().count() < ADMIN_TOKEN_MIN && raw.contains("${") {
            return Err(format!(
                "http.adminToken: the token in the environment is shorter than {ADMIN_TOKEN_MIN} characters (e.g. `openssl rand -hex 16`)"
            ));
        }
        if token.chars().any(|c| c.is_control() || c == ' ') {
            return Err("http.adminToken: the token has spaces or control characters".into());
        }
        Ok(Some(SecretString::new(token)))
    }

    /// Where the status page, `/metrics` and `/api/*` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listen.unwrap_or(self.listen)
    }
}

/// The shortest admin token accepted.
pub const ADMIN_TOKEN_MIN: usize = 16;

/// A secret as the effective config shows it: `***` when set.
fn secret<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("***"),
        None => s.serialize_none(),
    }
}

fn url_masked<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url_credentials(v))
}

fn url_masked_opt<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&mask_url_credentials(v)),
        None => s.serialize_none(),
    }
}

/// A URL (or a comma-separated list of them) with every `user:password@` written as `***@`.
pub fn mask_url_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let start = u.find("://").map_or(0, |i| i + 3);
            let end = u[start..].find('/').map_or(u.len(), |i| start + i);
            match u[start..end].rfind('@') {
                Some(at) => format!("{}***{}", &u[..start], &u[start + at..]),
                None => u.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ConnectorsConfig {
    /// Every `*.yaml` in this folder is loaded by `up`.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Idle heartbeat of pull requests: two missed in a row and the pull is re-created
    /// (a server restart, a lame-duck shutdown, a stream leader change).
    pub heartbeat_ms: u64,
    /// Connectors with `orderingKey`: one instance at a time receives their events (it holds
    /// the pin of the consumer's priority group); when it stops pulling for this long, another
    /// instance takes over.
    pub pin_timeout_ms: u64,
    /// Console lines printed one by one per connector and second (default 100; 0: every
    /// line). Beyond it, the deliveries of that second are summed up in one line.
    pub console_lines_per_second: u32,
    /// How long a shutdown (SIGTERM, Ctrl-C) may take: deliveries in flight get until 2 s
    /// before it (at least half of it) to finish, then are handed back to JetStream (NAK, so
    /// they are offered again at once); the process exits within it.
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StreamsConfig {
    /// How long `HMS_EVENTS` keeps events (hours).
    pub events_max_age_hours: u64,
    /// Window in which a repeated `Nats-Msg-Id` is stored once (seconds).
    pub duplicate_window_sec: u64,
    /// Consumers `HMS_EVENTS` may hold (one per outbound connector). Set on the stream, also
    /// an existing one: a stream that sets none gets nats-server's default limit (1,000 in
    /// 2.15).
    pub max_consumers: i32,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            embedded: true,
            server_config: PathBuf::from("../nats-server.conf"),
            server_bin: None,
            user: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            creds_file: None,
            tls: None,
            replicas: 1,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7500)),
            admin_listen: None,
            admin_token: None,
            chart_sample_ms: 10_000,
            header_timeout_ms: 10_000,
            max_connections: 4096,
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
            heartbeat_ms: 2_000,
            pin_timeout_ms: 10_000,
            console_lines_per_second: 100,
            shutdown_timeout_ms: 20_000,
        }
    }
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            events_max_age_hours: 24 * 7,
            duplicate_window_sec: 120,
            max_consumers: 100_000,
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

    /// The pull requests' idle heartbeat (at least 100 ms, at most half a pull's expiry).
    pub fn heartbeat(&self, pinned: bool) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(100)).min(self.pull_expires(pinned) / 2)
    }

    /// How long a shutdown may take (at least 1 s).
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms.max(1000))
    }

    /// How long deliveries in flight may take to finish at shutdown before they are handed
    /// back: 2 s less than the shutdown timeout, and at least half of it.
    pub fn drain_time(&self) -> Duration {
        let t = self.shutdown_timeout();
        t.saturating_sub(Duration::from_secs(2)).max(t / 2)
    }

    /// How long a silent pinned instance keeps a keyed connector (at least 1 s).
    pub fn pin_timeout(&self) -> Duration {
        Duration::from_millis(self.pin_timeout_ms.max(1000))
    }

    /// How long one pull request waits for events: 30 s, or half the pin timeout for pinned
    /// (keyed) consumers, so that their pin is renewed well in time.
    pub fn pull_expires(&self, pinned: bool) -> Duration {
        if pinned {
            (self.pin_timeout() / 2).min(Duration::from_secs(30))
        } else {
            Duration::from_secs(30)
        }
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
        let join = |p: &mut Option<PathBuf>| {
            if let Some(x) = p.as_mut() {
                *x = base.join(&*x);
            }
        };
        join(&mut cfg.nats.nkey_seed_file);
        join(&mut cfg.nats.creds_file);
        if let Some(t) = cfg.nats.tls.as_mut() {
            join(&mut t.ca_file);
            join(&mut t.cert_file);
            join(&mut t.key_file);
        }
        join(&mut cfg.outbound.ca_file);
        cfg.connectors.dir = base.join(&cfg.connectors.dir);
        cfg.source = Some((path.to_path_buf(), text));
        Ok(cfg)
    }
}

/// How to reach NATS, with `${VAR}` resolved: what [`crate::bus::Bus::connect_with`] takes.
#[derive(Debug, Clone)]
pub struct NatsConnect {
    /// Seed URLs without credentials (safe to print).
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    pub tls: NatsTlsConfig,
    /// TLS is required (a `tls://` URL, or `nats.tls` set).
    pub require_tls: bool,
    /// Replicas of the streams and the bucket hms-sync creates.
    pub replicas: usize,
}

impl NatsConnect {
    /// The seed URLs as one line (credentials never included).
    pub fn shown(&self) -> String {
        self.servers.join(",")
    }

    /// Plain connection to `url` (no credentials, no TLS settings): tests and tools.
    pub fn plain(url: &str) -> NatsConnect {
        let (servers, _) = split_servers(url).unwrap_or_else(|_| (vec![url.to_string()], None));
        NatsConnect {
            require_tls: servers.iter().any(|s| s.starts_with("tls://")),
            servers,
            auth: NatsAuth::None,
            tls: NatsTlsConfig::default(),
            replicas: 1,
        }
    }
}

/// How hms-sync proves who it is to NATS.
#[derive(Debug, Clone)]
pub enum NatsAuth {
    None,
    UserPassword {
        user: String,
        password: SecretString,
    },
    Token(SecretString),
    /// A file holding an NKey seed.
    NKeySeedFile(PathBuf),
    /// A `.creds` file: user JWT and NKey seed.
    CredsFile(PathBuf),
}

impl NatsAuth {
    /// What the method is, for messages (never a secret).
    pub fn describe(&self) -> String {
        match self {
            NatsAuth::None => "no credentials".into(),
            NatsAuth::UserPassword { .. } => "user and password".into(),
            NatsAuth::Token(_) => "a token".into(),
            NatsAuth::NKeySeedFile(p) => format!("the NKey seed in {}", p.display()),
            NatsAuth::CredsFile(p) => format!("the credentials file {}", p.display()),
        }
    }
}

/// Resolves `${VAR}` in one config value with `env`; `key` names it in errors.
pub fn resolve_vars(
    value: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{key}: unclosed `${{`"))?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "{key}: `${{{name}}}`: an environment variable name has only letters, digits and `_`"
            ));
        }
        let v =
            env(name).ok_or_else(|| format!("{key}: environment variable {name} is not set"))?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Credentials found in a URL (`nats://user:pass@host`, or `nats://token@host`).
type UrlCredentials = Option<(String, Option<String>)>;

/// Splits a comma-separated list of NATS URLs into URLs without credentials (scheme `nats://`
/// when none is written) and the credentials of the first URL that has some.
pub fn split_servers(list: &str) -> Result<(Vec<String>, UrlCredentials), String> {
    let mut servers = Vec::new();
    let mut creds: UrlCredentials = None;
    for (i, raw) in list.split(',').map(str::trim).enumerate() {
        if raw.is_empty() {
            return Err(format!("nats.url: server {} of the list is empty", i + 1));
        }
        let with_scheme = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("nats://{raw}")
        };
        let mut url = url::Url::parse(&with_scheme)
            .map_err(|e| format!("nats.url: server {} is not a valid URL ({e})", i + 1))?;
        if !matches!(url.scheme(), "nats" | "tls" | "ws" | "wss") {
            return Err(format!(
                "nats.url: scheme `{}`: expected nats://, tls://, ws:// or wss://",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("nats.url: server {} has no host", i + 1));
        }
        if !url.username().is_empty() {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            if creds.is_none() {
                creds = Some((decode(url.username()), url.password().map(decode)));
            }
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        let shown = url.to_string();
        // `Url` adds a `/` to an empty path; NATS URLs are written without one.
        let shown = match shown.strip_suffix('/') {
            Some(s) if url.path() == "/" => s.to_string(),
            _ => shown,
        };
        servers.push(shown);
    }
    Ok((servers, creds))
}

impl NatsConfig {
    /// Resolves `${VAR}` (read through `env`) in the URL and the secrets, takes credentials out
    /// of the URL, and checks that one auth method is chosen. Errors name the key and the
    /// variable, never a value.
    pub fn connect_options(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<NatsConnect, String> {
        let url = resolve_vars(&self.url, "nats.url", env)?;
        let (servers, url_creds) = split_servers(&url)?;
        let secret = |v: &Option<String>, key: &str| -> Result<Option<String>, String> {
            v.as_deref().map(|s| resolve_vars(s, key, env)).transpose()
        };
        let user = secret(&self.user, "nats.user")?;
        let password = secret(&self.password, "nats.password")?;
        let token = secret(&self.token, "nats.token")?;
        let mut chosen = Vec::new();
        if user.is_some() || password.is_some() {
            chosen.push("user/password");
        }
        if token.is_some() {
            chosen.push("token");
        }
        if self.nkey_seed_file.is_some() {
            chosen.push("nkeySeedFile");
        }
        if self.creds_file.is_some() {
            chosen.push("credsFile");
        }
        if chosen.len() > 1 {
            return Err(format!(
                "nats: choose one way to authenticate, not {}",
                chosen.join(" and ")
            ));
        }
        // Credentials written in the URL win, as the URL itself overrides the config.
        let auth = match (url_creds, user, password, token) {
            (Some((u, Some(p))), ..) => NatsAuth::UserPassword {
                user: u,
                password: SecretString::new(p),
            },
            (Some((t, None)), ..) => NatsAuth::Token(SecretString::new(t)),
            (None, Some(u), Some(p), _) => NatsAuth::UserPassword {
                user: u,
                password: SecretString::new(p),
            },
            (None, Some(_), None, _) => return Err("nats.user needs nats.password".into()),
            (None, None, Some(_), _) => return Err("nats.password needs nats.user".into()),
            (None, None, None, Some(t)) => NatsAuth::Token(SecretString::new(t)),
            (None, None, None, None) => match (&self.nkey_seed_file, &self.creds_file) {
                (Some(f), _) => NatsAuth::NKeySeedFile(f.clone()),
                (_, Some(f)) => NatsAuth::CredsFile(f.clone()),
                _ => NatsAuth::None,
            },
        };
        if !(1..=5).contains(&self.replicas) {
            return Err(format!(
                "nats.replicas: {} (expected 1 to 5)",
                self.replicas
            ));
        }
        let tls = self.tls.clone().unwrap_or_default();
        Ok(NatsConnect {
            require_tls: self.tls.is_some() || servers.iter().any(|s| s.starts_with("tls://")),
            servers,
            auth,
            tls,
            replicas: self.replicas,
        })
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

    fn env(name: &str) -> Option<String> {
        match name {
            "NATS_PASSWORD" => Some("s3cret".into()),
            "NATS_USER" => Some("hms".into()),
            "NATS_TOKEN" => Some("t0ken".into()),
            _ => None,
        }
    }

    #[test]
    fn nats_urls_lose_their_credentials_and_lists_are_split() {
        let (servers, creds) =
            split_servers("nats://alice:p%40ss@n1:4222, n2:4222,tls://n3").unwrap();
        assert_eq!(servers, ["nats://n1:4222", "nats://n2:4222", "tls://n3"]);
        assert_eq!(creds, Some(("alice".into(), Some("p@ss".into()))));
        let (_, creds) = split_servers("nats://tok@n1").unwrap();
        assert_eq!(creds, Some(("tok".into(), None)));
        assert!(split_servers("http://n1").is_err());
        assert!(split_servers("nats://n1,,nats://n2").is_err());
    }

    #[test]
    fn secrets_are_resolved_from_the_environment_and_never_shown() {
        let mut n = NatsConfig {
            url: "nats://n1:4222,nats://n2:4222".into(),
            user: Some("${NATS_USER}".into()),
            password: Some("${NATS_PASSWORD}".into()),
            ..NatsConfig::default()
        };
        let c = n.connect_options(&env).unwrap();
        assert_eq!(c.shown(), "nats://n1:4222,nats://n2:4222");
        let NatsAuth::UserPassword { user, password } = &c.auth else {
            panic!("{:?}", c.auth)
        };
        assert_eq!((user.as_str(), password.expose()), ("hms", "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        n.password = Some("${NOT_SET_HERE}".into());
        let err = n.connect_options(&env).unwrap_err();
        assert_eq!(
            err,
            "nats.password: environment variable NOT_SET_HERE is not set"
        );
        n.password = Some("x".into());
        n.token = Some("${NATS_TOKEN}".into());
        assert!(n.connect_options(&env).unwrap_err().contains("choose one"));
        let url = NatsConfig {
            url: "nats://${NATS_USER}:${NATS_PASSWORD}@n1:4222".into(),
            ..NatsConfig::default()
        };
        let c = url.connect_options(&env).unwrap();
        assert_eq!(c.shown(), "nats://n1:4222");
        assert!(matches!(c.auth, NatsAuth::UserPassword { .. }));
        let tls = NatsConfig {
            url: "tls://n1:4222".into(),
            ..NatsConfig::default()
        };
        assert!(tls.connect_options(&env).unwrap().require_tls);
        let bad = NatsConfig {
            replicas: 7,
            ..NatsConfig::default()
        };
        assert!(bad.connect_options(&env).is_err());
    }

    #[test]
    fn the_effective_config_shows_no_secret() {
        let mut cfg = RuntimeConfig::default();
        cfg.nats.url = "nats://alice:pw@n1:4222, tls://n2:4222".into();
        cfg.nats.password = Some("s3cret".into());
        cfg.nats.user = Some("hms".into());
        cfg.outbound.proxy = Some("http://u:${PROXY_PW}@proxy:3128".into());
        cfg.http.admin_token = Some("${HMS_ADMIN_TOKEN}".into());
        let text = serde_yaml::to_string(&cfg).unwrap();
        for hidden in ["s3cret", "alice", "pw@", "PROXY_PW", "HMS_ADMIN_TOKEN"] {
            assert!(!text.contains(hidden), "{hidden} shows:\n{text}");
        }
        assert!(
            text.contains("url: nats://***@n1:4222, tls://n2:4222"),
            "{text}"
        );
        assert!(text.contains("proxy: http://***@proxy:3128"), "{text}");
        assert!(text.contains("adminToken: '***'"), "{text}");
        assert!(text.contains("user: hms"), "{text}");
        assert_eq!(
            mask_url_credentials("http://proxy:3128/a@b"),
            "http://proxy:3128/a@b"
        );
    }

    #[test]
    fn the_admin_token_is_resolved_and_checked() {
        let env = |n: &str| (n == "T").then(|| "0123456789abcdef".to_string());
        let mut h = HttpConfig::default();
        assert!(h.admin_token(&env).unwrap().is_none());
        h.admin_token = Some("${T}".into());
        assert_eq!(
            h.admin_token(&env).unwrap().unwrap().expose(),
            "0123456789abcdef"
        );
        h.admin_token = Some("${UNSET}".into());
        assert_eq!(
            h.admin_token(&env).unwrap_err(),
            "http.adminToken: environment variable UNSET is not set"
        );
        h.admin_token = Some(" ".into());
        assert!(h.admin_token(&env).is_err());
        let short = |n: &str| (n == "S").then(|| "short".to_string());
        h.admin_token = Some("${S}".into());
        assert!(h
            .admin_token(&short)
            .unwrap_err()
            .contains("shorter than 16"));
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
