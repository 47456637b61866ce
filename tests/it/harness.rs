//! Test harness: a nats-server per test (the library's launcher: free port, own store dir,
//! killed on drop), a programmable loopback HTTP target that records requests (the library's
//! sink), and `eventually`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hms_sync::nats_server::NatsServer;
use hms_sync::sink::{Sink, SinkOptions};
// `Responder` is part of the harness API, for tests that name the answer hook's type.
#[allow(unused_imports)]
pub use hms_sync::sink::{Recorded, Responder};

/// Path of the project's nats-server (installed by scripts/install-nats-server.sh).
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/nats-server/bin/nats-server");
    if local.exists() {
        local
    } else {
        PathBuf::from("nats-server")
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A nats-server of this test alone.
pub struct Nats {
    server: NatsServer,
    pub port: u16,
}

impl Nats {
    pub async fn start() -> Nats {
        let server = NatsServer::builder()
            .bin(nats_server_bin())
            .start()
            .await
            .expect("start nats-server (run scripts/install-nats-server.sh)");
        Nats {
            port: server.port(),
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("connect")
    }

    /// The launcher's handle (pid, store, stop, kill, lame duck).
    pub fn server(&mut self) -> &mut NatsServer {
        &mut self.server
    }
}

/// Waits until `cond` holds, polling every 20 ms; panics after `timeout` naming `what`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `f` gives a value, polling every 20 ms; panics after `timeout` naming `what`.
pub async fn eventually_some<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback HTTP server that records every request and answers as told (the library's
/// [`Sink`], keeping every request).
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    sink: Sink,
}

impl Target {
    pub async fn start() -> Target {
        hms_sync::http_client::install_crypto();
        let sink = Sink::start(SinkOptions {
            keep_requests: true,
            ..Default::default()
        })
        .await
        .expect("bind");
        Target {
            addr: sink.addr(),
            sink,
        }
    }

    /// Every answer takes `d` from now on.
    pub fn set_delay(&self, d: Duration) {
        self.sink.set_delay(d);
    }

    /// Requests it is answering now (waiting out their delay).
    pub fn concurrent(&self) -> usize {
        self.sink.concurrent()
    }

    /// The most requests it was answering at once.
    pub fn max_concurrent(&self) -> usize {
        self.sink.max_concurrent()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the answer; the second argument is how many identical requests came before.
    pub fn respond(
        &self,
        f: impl Fn(&Recorded, usize) -> (u16, Vec<(String, String)>) + Send + Sync + 'static,
    ) {
        self.sink.respond(f);
    }

    /// From now on answers 503 to a random `share` (0 to 1) of the requests, 200 to the rest.
    pub fn fail_at_random(&self, share: f64) {
        self.respond(move |_, _| {
            if rand::random::<f64>() < share {
                (503, vec![])
            } else {
                (200, vec![])
            }
        });
    }

    /// From now on answers 500 while the returned switch is on (it starts on), 200 once the
    /// test turns it off.
    pub fn outage(&self) -> Arc<AtomicBool> {
        let down = Arc::new(AtomicBool::new(true));
        let d = down.clone();
        self.respond(move |_, _| {
            if d.load(Ordering::SeqCst) {
                (500, vec![])
            } else {
                (200, vec![])
            }
        });
        down
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.sink.requests()
    }

    pub fn count(&self) -> usize {
        self.sink.count()
    }

    /// The distinct event ids (the body's `id`, as [`simple_connector`] sends it) of the
    /// requests answered 2xx: each event delivered at least once counts once, however many
    /// retries or redeliveries it took (a duplicate cannot hide a loss, as it can in
    /// [`Target::count`]).
    pub fn delivered_ids(&self) -> std::collections::BTreeSet<String> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .filter_map(|r| r.json()["id"].as_str().map(str::to_string))
            .collect()
    }
}

/// A folder with a config file and a connectors/ folder, for one runtime.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// `connectors`: (file name, YAML). `extra` is appended to the config file.
    pub fn new(nats: &Nats, connectors: &[(&str, String)], extra: &str) -> Setup {
        Setup::at(&nats.url(), connectors, extra)
    }

    /// Like [`Setup::new`], for NATS at `url` (a cluster node, a list of seed URLs).
    pub fn at(url: &str, connectors: &[(&str, String)], extra: &str) -> Setup {
        let cfg = format!(
            "nats:\n  url: {url}\n  embedded: false\nhttp:\n  listen: 127.0.0.1:0\nconnectors:\n  dir: connectors\n{extra}"
        );
        Setup::from_config(&cfg, connectors)
    }

    /// A folder whose `hms-sync.yaml` is `config` as given (the whole runtime config), with
    /// `connectors` (file name, YAML) in `connectors/`.
    pub fn from_config(config: &str, connectors: &[(&str, String)]) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("connectors")).unwrap();
        for (name, yaml) in connectors {
            std::fs::write(dir.path().join("connectors").join(name), yaml).unwrap();
        }
        std::fs::write(dir.path().join("hms-sync.yaml"), config).unwrap();
        Setup { dir }
    }

    /// A path in the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file of the folder; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Like [`Setup::new`], with `http` lines (indented keys such as `  adminListen: ...`)
    /// added under `http:` (after `listen: 127.0.0.1:0`).
    pub fn with_http(nats: &Nats, connectors: &[(&str, String)], http: &str, extra: &str) -> Setup {
        let s = Setup::new(nats, connectors, extra);
        let path = s.config_path();
        let text = std::fs::read_to_string(&path).unwrap().replacen(
            "http:\n  listen: 127.0.0.1:0\n",
            &format!("http:\n  listen: 127.0.0.1:0\n{http}"),
            1,
        );
        std::fs::write(&path, text).unwrap();
        s
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("hms-sync.yaml")
    }

    /// Adds keys to the config file's `http:` block (`lines`: `key: value` lines).
    pub fn set_http(&self, lines: &str) {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let keys: String = lines.lines().map(|l| format!("  {l}\n")).collect();
        let text = text.replacen("http:\n", &format!("http:\n{keys}"), 1);
        std::fs::write(&path, text).unwrap();
    }

    /// Writes (or replaces) a connector file of its `connectors/` folder.
    #[allow(dead_code)] // used by the SIGHUP test
    pub fn write_connector(&self, name: &str, yaml: &str) {
        std::fs::write(self.dir.path().join("connectors").join(name), yaml).unwrap();
    }

    pub fn config(&self) -> hms_sync::config::RuntimeConfig {
        hms_sync::config::RuntimeConfig::load(&self.config_path(), true).expect("config")
    }

    /// Starts the runtime in this process.
    pub async fn start(&self) -> hms_sync::Runtime {
        hms_sync::Runtime::start(self.config())
            .await
            .expect("runtime starts")
    }
}

/// A folder laid out like the repository for the embedded default: `nats-server.conf`
/// (listening on `nats_port`, store `.data/nats`), `config/hms-sync.yaml` (embedded on, this
/// nats-server binary, HTTP on `http_port`) and an empty `connectors/`.
pub fn embedded_dir(nats_port: u16, http_port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for d in ["config", "connectors"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    std::fs::write(
        dir.path().join("nats-server.conf"),
        format!("listen: 127.0.0.1:{nats_port}\njetstream {{\n  store_dir: \".data/nats\"\n}}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config/hms-sync.yaml"),
        format!(
            "nats:\n  url: nats://127.0.0.1:{nats_port}\n  embedded: true\n  serverConfig: ../nats-server.conf\n  serverBin: {}\nhttp:\n  listen: 127.0.0.1:{http_port}\nconnectors:\n  dir: ../connectors\n",
            nats_server_bin().display()
        ),
    )
    .unwrap();
    dir
}

/// Sends SIGTERM to a child process (a binary under test) and waits for its exit status.
/// A child process (`hms-sync up`) that is stopped when dropped: SIGTERM, so that it stops
/// the nats-server it started, then SIGKILL after 10 s; a failing test leaves nothing behind.
pub struct Spawned(Option<std::process::Child>);

impl Spawned {
    pub fn new(child: std::process::Child) -> Spawned {
        Spawned(Some(child))
    }

    /// SIGTERM, then its exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let child = self.0.take().expect("running");
        terminate(child).await
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub async fn terminate(child: std::process::Child) -> std::process::ExitStatus {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut child = child;
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap()
}

/// The seed's example event: `connectors/gis-ddot.yaml` sends it as `PATCH
/// .../item/roadwork/RW-481`.
pub const SEED_PERMIT: &str =
    r#"{"permitId":"RW-481","agency":"DDOT","startDate":"2024-05-10","status":"APPROVED"}"#;

/// Publishes `body` on `subject` with plain core NATS, like `nats pub` (not flushed).
pub async fn publish_plain(client: &async_nats::Client, subject: &str, body: &str) {
    client
        .publish(subject.to_string(), body.to_string().into())
        .await
        .unwrap();
}

/// The seed connector with its URL pointed at `target`.
pub fn seed_connector(target: &Target) -> String {
    include_str!("../../connectors/gis-ddot.yaml")
        .replace("https://services.arcgis.com", &target.url())
}

/// A connector to `target` with a given id, topic, and retry rules.
pub fn simple_connector(id: &str, topic: &str, target: &Target, retry: &str) -> String {
    format!(
        "id: {id}\ntype: outbound\ntrigger:\n  topic: {topic}\nmap:\n  to:\n    url: \"{}/items/{{id}}\"\n    method: PUT\n    body:\n      id: \"{{{{ id }}}}\"\n      n: \"{{{{ n }}}}\"\n{retry}",
        target.url()
    )
}

/// The value of the first line of the runtime's `/metrics` that starts with `series` (a name,
/// or a name with its labels); 0 when there is none.
pub async fn metric(rt: &hms_sync::Runtime, series: &str) -> f64 {
    let url = format!("http://{}/metrics", rt.http_addr());
    let text = reqwest::get(&url)
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Publishes JSON to a subject through JetStream (awaits the stream's ack).
pub async fn publish(js: &async_nats::jetstream::Context, subject: &str, body: serde_json::Value) {
    js.publish(subject.to_string(), body.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("stream ack");
}

/// Publishes `{"id": "<prefix><i>", "n": i}` on `subject` for each `i` of `numbers`, one after
/// another (each stream ack awaited before the next).
pub async fn publish_numbered(
    js: &async_nats::jetstream::Context,
    subject: &str,
    prefix: &str,
    numbers: std::ops::Range<usize>,
) {
    for event in numbered(prefix, numbers) {
        publish(js, subject, event).await;
    }
}

/// The events `{"id": "<prefix><i>", "n": i}` for each `i` of `numbers`: what most tests
/// publish.
pub fn numbered(
    prefix: &str,
    numbers: std::ops::Range<usize>,
) -> impl Iterator<Item = serde_json::Value> + '_ {
    numbers.map(move |i| serde_json::json!({"id": format!("{prefix}{i}"), "n": i}))
}

/// Every message stored on a stream whose payload is JSON (parked jobs), in stream order.
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<serde_json::Value> {
    stream_raw(js, stream)
        .await
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

/// The opening of most tests: [`init_logs`], a nats-server of this test alone and a target.
pub async fn nats_and_target() -> (Nats, Target) {
    init_logs();
    let nats = Nats::start().await;
    let target = Target::start().await;
    (nats, target)
}

/// Test logs (`HMS_SYNC_LOG`, default `warn`) and the process's TLS provider.
pub fn init_logs() {
    // Clients built by tests (reqwest) need the process's TLS provider, as hms-sync's own do.
    hms_sync::http_client::install_crypto();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("HMS_SYNC_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_test_writer()
        .try_init();
}

/// Every audit record on `HMS_AUDIT`, in stream order (a message holds a block of records,
/// one per line).
pub async fn audit_records(js: &async_nats::jetstream::Context) -> Vec<serde_json::Value> {
    stream_raw(js, "HMS_AUDIT")
        .await
        .iter()
        .flat_map(|m| {
            hms_sync::bus::records_of(&m.payload)
                .filter_map(|line| serde_json::from_slice(line).ok())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// Every message stored on a stream, raw (subject, headers, payload).
pub async fn stream_raw(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let Ok(mut s) = js.get_stream(stream).await else {
        return vec![];
    };
    let Ok(info) = s.info().await else {
        return vec![];
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    for seq in first..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// What a webhook sender got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// POSTs a webhook to `url` with these headers and the exact bytes `body`.
pub async fn post_webhook(url: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
    let mut req = reqwest::Client::new().post(url).body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = req.send().await.expect("webhook answered");
    Answer {
        status: resp.status().as_u16(),
        body: resp.text().await.unwrap_or_default(),
    }
}

/// Publishes many events pipelined (all sent, then every stream ack awaited).
pub async fn publish_many(
    js: &async_nats::jetstream::Context,
    subject: &str,
    events: impl IntoIterator<Item = serde_json::Value>,
) {
    let mut acks = Vec::new();
    for e in events {
        acks.push(
            js.publish(subject.to_string(), e.to_string().into())
                .await
                .expect("publish"),
        );
    }
    for a in acks {
        a.await.expect("stream ack");
    }
}

/// Waits until the connector's consumer has nothing pending and nothing unacknowledged.
pub async fn wait_idle(js: &async_nats::jetstream::Context, consumer: &str, timeout: Duration) {
    let stream = js.get_stream("HMS_EVENTS").await.expect("HMS_EVENTS");
    eventually(timeout, &format!("consumer {consumer} idle"), || {
        let stream = stream.clone();
        async move {
            stream
                .consumer_info(consumer)
                .await
                .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
        }
    })
    .await;
}

/// Starts a runtime on `nats` with these connectors in its folder (none: only the registry's)
/// and `extra_config` appended to its config; returns the JetStream context too.
pub async fn start_with(
    nats: &Nats,
    connectors: &[(&str, String)],
    extra_config: &str,
) -> (Setup, hms_sync::Runtime, async_nats::jetstream::Context) {
    let setup = Setup::new(nats, connectors, extra_config);
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    (setup, rt, js)
}

/// A library connection to `nats` (deploy and other library calls).
pub async fn connect_bus(nats: &Nats) -> hms_sync::bus::Bus {
    hms_sync::bus::Bus::connect(&nats.url())
        .await
        .expect("connect")
}

/// Starts a runtime with one connector built by [`simple_connector`]; returns the JetStream
/// context too.
pub async fn start_simple(
    nats: &Nats,
    target: &Target,
    id: &str,
    topic: &str,
    retry: &str,
    extra_config: &str,
) -> (Setup, hms_sync::Runtime, async_nats::jetstream::Context) {
    start_with(
        nats,
        &[("c.yaml", simple_connector(id, topic, target, retry))],
        extra_config,
    )
    .await
}

/// Starts a runtime with connector `<name>.v1` on `<name>.in` ([`simple_connector`], no
/// retry rules), deletes `HMS_AUDIT`, then publishes `n` events numbered with `prefix`
/// ([`publish_numbered`]); returns the JetStream context too.
pub async fn start_without_audit(
    nats: &Nats,
    target: &Target,
    name: &str,
    prefix: &str,
    n: usize,
) -> (Setup, hms_sync::Runtime, async_nats::jetstream::Context) {
    let (id, topic) = (format!("{name}.v1"), format!("{name}.in"));
    let (setup, rt, js) = start_simple(nats, target, &id, &topic, "", "").await;
    js.delete_stream("HMS_AUDIT").await.unwrap();
    publish_numbered(&js, &topic, prefix, 0..n).await;
    (setup, rt, js)
}

/// Creates `HMS_AUDIT` again (subjects `external.sync.>`, defaults otherwise): the stream
/// [`start_without_audit`] took away comes back.
pub async fn audit_stream_back(js: &async_nats::jetstream::Context) {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HMS_AUDIT".into(),
        subjects: vec!["external.sync.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Resident memory of process `pid` in kilobytes (`VmRSS`), and its peak (`VmHWM`).
pub fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Raises this test process's soft limit of open files to its hard limit (tests that open
/// thousands of connections).
pub fn raise_open_files() {
    hms_sync::serve::raise_open_files_limit();
}

/// A finished command's exit code (-1 when a signal ended it), stdout and stderr as text.
pub fn code_and_text(out: &std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `hms-sync ARGS --config <setup's config>` to its end, with `envs` set and without the
/// test environment's `NATS_URL`: (exit code, stdout, stderr).
pub async fn hms_sync_on(
    setup: &Setup,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(args)
        .arg("--config")
        .arg(setup.config_path())
        .env_remove("NATS_URL")
        .envs(envs.iter().copied())
        .output()
        .await
        .unwrap();
    code_and_text(&out)
}

/// The body of `GET url` as text (any status).
pub async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// The info of a consumer of `HMS_EVENTS` (the stream and the consumer must exist).
pub async fn consumer_info(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::consumer::Info {
    js.get_stream("HMS_EVENTS")
        .await
        .unwrap()
        .consumer_info(name)
        .await
        .unwrap()
}

/// Runs `hms-sync ARGS --config <setup's config>` (without the test environment's `NATS_URL`
/// and `HMS_SYNC_LOG`) until `done` holds for the lines of its stderr, then sends SIGTERM;
/// returns its exit status and every line it wrote. Panics after `timeout`, saying `late` and
/// the lines so far.
pub async fn stderr_until(
    setup: &Setup,
    args: &[&str],
    timeout: Duration,
    late: &str,
    done: impl Fn(&[String]) -> bool,
) -> (std::process::ExitStatus, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(args)
        .arg("--config")
        .arg(setup.config_path())
        .env_remove("NATS_URL")
        .env_remove("HMS_SYNC_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + timeout;
    while !done(&lines) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("{late}; stderr so far:\n{lines:#?}"),
        }
    }
    let status = terminate(child).await;
    lines.extend(rx.try_iter());
    (status, lines)
}
