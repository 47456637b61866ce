//! The one nats-server launcher, shared by the embedded default, the tests and the benches.
//!
//! Every caller starts nats-server through [`NatsServerBuilder`] (binary lookup, config file or
//! text, port, store, log), waits for it with a plain TCP/`INFO` check, and stops or kills it.
//!
//! **Architecture invariant:** this module imports nothing of ours (it sits on the ground floor;
//! [`crate::bus`] is the one that talks NATS). Readiness is "the server accepted a TCP connection
//! and sent its `INFO` line", checked here without a NATS client.
//!
//! Writing configs for later work: [`conf`] has the pieces (TLS, users/token/nkeys/operator auth,
//! cluster, lame-duck timings) to paste into [`NatsServerBuilder::config_text`]; [`cluster`]
//! starts n servers routed together with JetStream (R3-capable); [`NatsServer::lame_duck`] puts
//! one into lame-duck mode.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod conf;

/// Why nats-server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    /// The configuration file given does not exist.
    #[error("{}: nats-server configuration not found", .0.display())]
    ConfigNotFound(PathBuf),
    /// The binary could not be run.
    #[error("cannot start {} ({source}); install it with scripts/install-nats-server.sh or set NATS_SERVER_BIN", bin.display())]
    Spawn {
        /// The binary that was tried.
        bin: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The server stopped before it accepted connections.
    #[error("nats-server exited at start-up ({status}); see {log}{tail}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Where its log is (or what it printed).
        log: String,
        /// The end of a log that goes away with the launcher's temporary folder (else empty).
        tail: String,
    },
    /// The server did not accept connections in time.
    #[error("nats-server did not answer at {url} within {} s", .within.as_secs())]
    Timeout {
        /// Where it was expected.
        url: String,
        /// How long we waited.
        within: Duration,
    },
    /// A file or folder of the launcher could not be made.
    #[error("nats-server launcher: {what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NatsServerError {
    let what = what.into();
    move |source| NatsServerError::Io { what, source }
}

/// Finds the nats-server binary: explicit path, `NATS_SERVER_BIN`, the project's
/// `.tools/nats-server/bin/nats-server` beside `conf`, then `PATH`.
pub fn find_binary(explicit: Option<&Path>, conf: &Path) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    if let Some(dir) = conf.parent() {
        let local = dir.join(".tools/nats-server/bin/nats-server");
        if local.exists() {
            return local;
        }
    }
    PathBuf::from("nats-server")
}

/// Where the server's configuration comes from.
#[derive(Debug, Clone)]
enum ConfigSource {
    None,
    File(PathBuf),
    Text(String),
}

/// Where the server listens for clients.
#[derive(Debug, Clone)]
enum Listen {
    /// A free port on the host, chosen by the server (`-p -1`) and read from its ports file.
    Free,
    /// This port on the host.
    Port(u16),
    /// As its configuration says; it is expected to answer at this URL.
    Config(String),
}

/// Where JetStream keeps its store.
#[derive(Debug, Clone)]
enum Store {
    /// A temporary folder of this launcher, removed when the server is dropped.
    Temp,
    /// This folder (kept: a later server can start on it).
    Dir(PathBuf),
    /// As the configuration says (JetStream on or off by the configuration too).
    Config,
}

/// How to start one nats-server. Default: the binary of [`find_binary`], JetStream on a
/// temporary store, a free port on 127.0.0.1, output discarded, log in the launcher's
/// temporary folder. Cloneable, so a test can start the same server again.
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    bin: Option<PathBuf>,
    config: ConfigSource,
    host: String,
    listen: Listen,
    store: Store,
    monitor: bool,
    log: Option<PathBuf>,
    current_dir: Option<PathBuf>,
    inherit_stderr: bool,
    args: Vec<OsString>,
    start_timeout: Duration,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        NatsServerBuilder {
            bin: None,
            config: ConfigSource::None,
            host: "127.0.0.1".into(),
            listen: Listen::Free,
            store: Store::Temp,
            monitor: false,
            log: None,
            current_dir: None,
            inherit_stderr: false,
            args: Vec::new(),
            start_timeout: Duration::from_secs(15),
        }
    }
}

impl NatsServerBuilder {
    /// The nats-server binary to run (default: [`find_binary`]).
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    /// Runs with this configuration file (`-c FILE`). Port and store flags set on the builder
    /// still win over the file, as on nats-server's command line.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = ConfigSource::File(path.into());
        self
    }

    /// Runs with this configuration text, written to a file of the launcher (see [`conf`] for
    /// TLS, auth and cluster blocks).
    pub fn config_text(mut self, text: impl Into<String>) -> Self {
        self.config = ConfigSource::Text(text.into());
        self
    }

    /// Listens on this port (default: a free one). The host stays 127.0.0.1.
    pub fn port(mut self, port: u16) -> Self {
        self.listen = Listen::Port(port);
        self
    }

    /// The configuration decides where the server listens; `url` is where it will answer.
    pub fn listen_from_config(mut self, url: impl Into<String>) -> Self {
        self.listen = Listen::Config(url.into());
        self
    }

    /// JetStream keeps its store in `dir` (kept after the server stops, so a test can start a
    /// server again on the same store). Default: a temporary folder.
    pub fn store_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store = Store::Dir(dir.into());
        self
    }

    /// The configuration decides JetStream and its store (no `-js`, no `--store_dir`).
    pub fn store_from_config(mut self) -> Self {
        self.store = Store::Config;
        self
    }

    /// Also serves the monitoring port (a free one), for [`NatsServer::healthz`].
    pub fn monitor(mut self) -> Self {
        self.monitor = true;
        self
    }

    /// Writes the server's log to this file (`--log`).
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Working folder of the server (relative paths of its config resolve there).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Lets the server's stderr through (the embedded default does; tests discard it).
    pub fn inherit_stderr(mut self) -> Self {
        self.inherit_stderr = true;
        self
    }

    /// Adds command-line arguments, after the ones the builder makes.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// How long [`NatsServerBuilder::start`] waits for the server (default 15 s).
    pub fn start_timeout(mut self, d: Duration) -> Self {
        self.start_timeout = d;
        self
    }

    fn needs_work_dir(&self) -> bool {
        matches!(self.listen, Listen::Free)
            || matches!(self.config, ConfigSource::Text(_))
            || matches!(self.store, Store::Temp)
            || self.monitor
    }

    /// Starts the server and waits until it accepts connections (TCP, then its `INFO` line).
    pub async fn start(self) -> Result<NatsServer, NatsServerError> {
        let work = if self.needs_work_dir() {
            Some(
                tempfile::Builder::new()
                    .prefix("hms-nats-")
                    .tempdir()
                    .map_err(io("temporary folder"))?,
            )
        } else {
            None
        };
        self.start_in(work).await
    }

    async fn start_in(
        self,
        work: Option<tempfile::TempDir>,
    ) -> Result<NatsServer, NatsServerError> {
        let bin = match (&self.bin, &self.config) {
            (Some(b), _) => b.clone(),
            (None, ConfigSource::File(c)) => find_binary(None, c),
            (None, _) => find_binary(None, Path::new("nats-server.conf")),
        };
        let work_path = work.as_ref().map(|w| w.path().to_path_buf());
        let mut cmd = Command::new(&bin);
        match &self.config {
            ConfigSource::None => {}
            ConfigSource::File(path) => {
                if !path.exists() {
                    return Err(NatsServerError::ConfigNotFound(path.clone()));
                }
                cmd.arg("-c").arg(path);
            }
            ConfigSource::Text(text) => {
                let dir = work_path.clone().unwrap_or_default();
                let path = dir.join("nats-server.conf");
                std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
                cmd.arg("-c").arg(path);
            }
        }
        match &self.listen {
            Listen::Free => {
                cmd.args(["-a", &self.host, "-p", "-1"]);
            }
            Listen::Port(p) => {
                cmd.args(["-a", &self.host, "-p", &p.to_string()]);
            }
            Listen::Config(_) => {}
        }
        let store = match &self.store {
            Store::Temp => Some(work_path.clone().unwrap_or_default().join("store")),
            Store::Dir(d) => Some(d.clone()),
            Store::Config => None,
        };
        if let Some(s) = &store {
            cmd.arg("-js").arg("--store_dir").arg(s);
        }
        if self.monitor {
            cmd.args(["-m", "-1"]);
        }
        if let Some(w) = &work_path {
            cmd.arg("--ports_file_dir").arg(w);
        }
        let log = self
            .log
            .clone()
            .or_else(|| work_path.as_ref().map(|w| w.join("nats-server.log")));
        if let Some(l) = &log {
            if let Some(parent) = l.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            cmd.arg("--log").arg(l);
        }
        cmd.args(&self.args);
        if let Some(d) = &self.current_dir {
            cmd.current_dir(d);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(if self.inherit_stderr {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        let child = cmd.spawn().map_err(|source| NatsServerError::Spawn {
            bin: bin.clone(),
            source,
        })?;
        let pid = child.id();
        let mut server = NatsServer {
            child,
            url: String::new(),
            port: 0,
            ports: Ports::default(),
            store,
            log,
            spec: self.clone(),
            work,
        };
        let deadline = Instant::now() + self.start_timeout;
        let ports_file = work_path.as_ref().map(|w| {
            let exe = bin
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "nats-server".into());
            w.join(format!("{exe}_{pid}.ports"))
        });
        let expected = match &self.listen {
            Listen::Config(url) => url.clone(),
            Listen::Port(p) => format!("nats://{}:{p}", self.host),
            Listen::Free => format!("nats://{}:<free port>", self.host),
        };
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = server
                    .log
                    .as_ref()
                    .map_or("its stderr".to_string(), |l| l.display().to_string());
                let tail = match (&server.log, &work_path) {
                    (Some(l), Some(w)) if l.starts_with(w) => {
                        let text = std::fs::read_to_string(l).unwrap_or_default();
                        let lines: Vec<&str> = text.lines().collect();
                        let last = &lines[lines.len().saturating_sub(5)..];
                        format!(" (removed with its folder); it ended:\n{}", last.join("\n"))
                    }
                    _ => String::new(),
                };
                return Err(NatsServerError::Exited { status, log, tail });
            }
            let ports = ports_file.as_deref().and_then(Ports::read);
            let url = match (&self.listen, &ports) {
                (Listen::Config(url), _) => Some(url.clone()),
                (_, Some(p)) => p.nats.first().cloned(),
                (Listen::Port(_), None) if ports_file.is_none() => Some(expected.clone()),
                _ => None,
            };
            if let Some(url) = url {
                if answers_info(&url).await {
                    server.port = port_of(&url).unwrap_or(0);
                    server.url = url;
                    server.ports = ports.unwrap_or_default();
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                return Err(NatsServerError::Timeout {
                    url: expected,
                    within: self.start_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The ports a server reported in its ports file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct Ports {
    #[serde(default)]
    nats: Vec<String>,
    #[serde(default)]
    monitoring: Vec<String>,
    #[serde(default)]
    cluster: Vec<String>,
}

impl Ports {
    fn read(path: &Path) -> Option<Ports> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// `host:port` of the first URL of a (comma-separated) NATS URL list, without user info.
fn address_of(url: &str) -> String {
    let first = url.split(',').next().unwrap_or_default().trim();
    let rest = first.split("://").last().unwrap_or(first);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

fn port_of(url: &str) -> Option<u16> {
    address_of(url).rsplit(':').next()?.parse().ok()
}

/// Whether a NATS server answers at `url` now: it accepts a TCP connection and sends `INFO`.
pub async fn answers_info(url: &str) -> bool {
    let addr = address_of(url);
    let check = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"INFO ")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(1000), check).await,
        Ok(Some(true))
    )
}

/// A running nats-server child. Dropping it kills it (SIGKILL) and removes its temporary
/// folder; [`NatsServer::stop`] stops it gracefully.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    url: String,
    port: u16,
    ports: Ports,
    store: Option<PathBuf>,
    log: Option<PathBuf>,
    spec: NatsServerBuilder,
    work: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// A builder with the defaults (see [`NatsServerBuilder`]).
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// Starts a server with the defaults: JetStream, temporary store, free port.
    pub async fn start() -> Result<NatsServer, NatsServerError> {
        Self::builder().start().await
    }

    /// Where clients connect: `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The JetStream store folder, when the launcher chose or was given it.
    pub fn store_dir(&self) -> Option<&Path> {
        self.store.as_deref()
    }

    /// The log file, when there is one.
    pub fn log_file(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The route URL (`nats-route://127.0.0.1:PORT`) when it runs in a cluster.
    pub fn cluster_url(&self) -> Option<&str> {
        self.ports.cluster.first().map(String::as_str)
    }

    /// The monitoring URL (`http://127.0.0.1:PORT`) when started with [`NatsServerBuilder::monitor`].
    pub fn monitor_url(&self) -> Option<&str> {
        self.ports.monitoring.first().map(String::as_str)
    }

    /// Whether the monitoring endpoint `/healthz` answers 200 (for JetStream in a cluster:
    /// it has a meta leader and is current). False without a monitoring port.
    pub async fn healthz(&self) -> bool {
        let Some(url) = self.monitor_url() else {
            return false;
        };
        let addr = url.trim_start_matches("http://").to_string();
        let check = async {
            let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
            let req = format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n");
            s.write_all(req.as_bytes()).await.ok()?;
            let mut head = Vec::new();
            s.read_to_end(&mut head).await.ok()?;
            Some(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), check).await,
            Ok(Some(true))
        )
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped while we hold it.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Lame-duck mode (SIGUSR2, as `nats-server --signal ldm=<pid>`): the server stops
    /// accepting clients, then closes the ones it has over its `lame_duck_duration`
    /// (see [`conf::lame_duck`]) and exits.
    pub fn lame_duck(&mut self) {
        if self.is_running() {
            self.signal(libc::SIGUSR2);
        }
    }

    async fn terminate(&mut self) {
        if self.is_running() {
            self.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.is_running() {
            if Instant::now() > deadline {
                self.kill();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the server to stop (SIGTERM: it flushes its store), waits up to 10 s, then kills it.
    pub async fn stop(mut self) {
        self.terminate().await;
    }

    /// Kills the server at once (SIGKILL, as a crash), and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops this server gracefully and starts it again on the same port and store.
    pub async fn restart(mut self) -> Result<NatsServer, NatsServerError> {
        self.terminate().await;
        let mut spec = self.spec.clone();
        if !matches!(spec.listen, Listen::Config(_)) {
            spec.listen = Listen::Port(self.port);
        }
        if let Some(s) = &self.store {
            spec.store = Store::Dir(s.clone());
        }
        spec.log = self.log.clone();
        let work = self.work.take();
        spec.start_in(work).await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The embedded default of `up` and of the one-shot commands: nats-server started from
/// `nats-server.conf` in that file's folder, log in `.data/nats-server.log` there.
pub struct EmbeddedServer {
    server: NatsServer,
}

impl EmbeddedServer {
    /// Starts `bin -c conf` in the folder of `conf` (its log goes to `.data/nats-server.log`
    /// there) and waits until `url` answers.
    pub async fn start(
        bin: &Path,
        conf: &Path,
        url: &str,
    ) -> Result<EmbeddedServer, NatsServerError> {
        if !conf.exists() {
            return Err(NatsServerError::ConfigNotFound(conf.to_path_buf()));
        }
        let dir = conf.parent().unwrap_or(Path::new("."));
        let server = NatsServer::builder()
            .bin(bin)
            .config_file(conf)
            .listen_from_config(url)
            .store_from_config()
            .log_file(dir.join(".data/nats-server.log"))
            .current_dir(dir)
            .inherit_stderr()
            .start()
            .await?;
        Ok(EmbeddedServer { server })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        Some(self.server.pid())
    }

    /// Asks the server to stop (SIGTERM: it flushes its store), waits up to 10 s, then kills it.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// n nats-servers routed together with JetStream (R3-capable when n >= 3), each with its own
/// free client port, cluster port, monitoring port and temporary store.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<NatsServer>,
}

/// Starts a cluster of `n` servers on loopback with the default builder, and waits until
/// JetStream is ready on every node.
pub async fn cluster(n: usize) -> Result<Cluster, NatsServerError> {
    Cluster::start(NatsServer::builder(), n).await
}

impl Cluster {
    /// Starts `n` servers from `base` (its binary, arguments and configuration text, to which
    /// each node's `server_name` and `cluster {}` block are added), and waits until
    /// JetStream is ready on every node (`/healthz`).
    /// A node that exits at start-up (its cluster port, free when chosen, was taken since)
    /// makes it start the whole cluster again on new ports, up to three times.
    pub async fn start(base: NatsServerBuilder, n: usize) -> Result<Cluster, NatsServerError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::start_once(&base, n).await {
                Err(NatsServerError::Exited { .. }) if tries < 3 => continue,
                other => return other,
            }
        }
    }

    async fn start_once(base: &NatsServerBuilder, n: usize) -> Result<Cluster, NatsServerError> {
        let name = format!("hms-{}-{}", std::process::id(), rand::random::<u32>());
        let routes = free_ports(n).map_err(io("free cluster ports"))?;
        let extra = match &base.config {
            ConfigSource::Text(t) => t.clone(),
            _ => String::new(),
        };
        let mut nodes = Vec::with_capacity(n);
        for (i, port) in routes.iter().enumerate() {
            let text = format!(
                "server_name: n{}\n{}\n{extra}",
                i + 1,
                conf::cluster(&name, *port, &routes)
            );
            let node = base
                .clone()
                .config_text(text)
                .store_temp()
                .monitor()
                .start()
                .await?;
            nodes.push(node);
        }
        let cluster = Cluster { nodes };
        let within = base.start_timeout.max(Duration::from_secs(30));
        let deadline = Instant::now() + within;
        loop {
            let mut ready = true;
            for node in &cluster.nodes {
                ready &= node.healthz().await;
            }
            if ready {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                return Err(NatsServerError::Timeout {
                    url: format!("{} (JetStream cluster /healthz)", cluster.urls()),
                    within,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// One node, mutably (to stop, kill or lame-duck it).
    pub fn node_mut(&mut self, i: usize) -> Option<&mut NatsServer> {
        self.nodes.get_mut(i)
    }

    /// Every client URL, comma-separated (a seed list for `nats.url`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Takes the nodes out (each is still killed when dropped).
    pub fn into_nodes(self) -> Vec<NatsServer> {
        self.nodes
    }
}

impl NatsServerBuilder {
    fn store_temp(mut self) -> Self {
        self.store = Store::Temp;
        self
    }
}

/// `n` ports free right now on 127.0.0.1 (all held at once, so they are distinct).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_of_a_url_list() {
        assert_eq!(address_of("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(
            address_of("nats://u:p@127.0.0.1:4222,nats://127.0.0.1:4223"),
            "127.0.0.1:4222"
        );
        assert_eq!(address_of("127.0.0.1:5"), "127.0.0.1:5");
        assert_eq!(port_of("tls://127.0.0.1:4443"), Some(4443));
    }
}
