//! Test harness: a nats-server per test (free port, own store dir, killed on drop), a
//! programmable loopback HTTP target that records requests, and `eventually`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;

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
    child: Child,
    pub port: u16,
    _store: tempfile::TempDir,
}

impl Nats {
    pub async fn start() -> Nats {
        let store = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new(nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-js",
                "--store_dir",
            ])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (run scripts/install-nats-server.sh)");
        let nats = Nats {
            child,
            port,
            _store: store,
        };
        let url = nats.url();
        eventually(Duration::from_secs(10), "nats-server answers", || {
            let url = url.clone();
            async move { hms_sync::bus::Bus::reachable(&url).await }
        })
        .await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("connect")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// One request the target received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// What the target answered.
    pub status: u16,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// What the target answers: (status, extra headers).
pub type Responder = Arc<dyn Fn(&Recorded, usize) -> (u16, Vec<(String, String)>) + Send + Sync>;

/// A loopback HTTP server that records every request and answers as told.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    responder: Arc<Mutex<Responder>>,
    /// How long each answer takes (default: at once).
    delay: Arc<Mutex<Duration>>,
    /// Requests being answered now, and the most ever at once.
    active: Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
}

impl Target {
    pub async fn start() -> Target {
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let responder: Arc<Mutex<Responder>> = Arc::new(Mutex::new(Arc::new(|_, _| (200, vec![]))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let delay: Arc<Mutex<Duration>> = Arc::default();
        let active: Arc<(
            std::sync::atomic::AtomicUsize,
            std::sync::atomic::AtomicUsize,
        )> = Arc::default();
        let (l, r, dl, ac) = (
            log.clone(),
            responder.clone(),
            delay.clone(),
            active.clone(),
        );
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (l, r, dl, ac) = (l.clone(), r.clone(), dl.clone(), ac.clone());
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = ac.0.fetch_add(1, SeqCst) + 1;
                    ac.1.fetch_max(now, SeqCst);
                    let wait = *dl.lock().unwrap();
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await; // the target's answer time
                    }
                    ac.0.fetch_sub(1, SeqCst);
                    let mut rec = Recorded {
                        method: method.to_string(),
                        path: uri.to_string(),
                        headers,
                        body,
                        at: Instant::now(),
                        status: 0,
                    };
                    let responder = r.lock().unwrap().clone();
                    let n = l
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|x| x.body == rec.body && x.path == rec.path)
                        .count();
                    let (status, extra) = responder(&rec, n);
                    rec.status = status;
                    l.lock().unwrap().push(rec);
                    let mut resp = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), "{}")
                        .into_response();
                    for (k, v) in extra {
                        resp.headers_mut().insert(
                            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                            v.parse().unwrap(),
                        );
                    }
                    resp
                }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Target {
            addr,
            log,
            responder,
            delay,
            active,
        }
    }

    /// Every answer takes `d` from now on.
    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    /// The most requests it was answering at once.
    pub fn max_concurrent(&self) -> usize {
        self.active.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the answer; the second argument is how many identical requests came before.
    pub fn respond(
        &self,
        f: impl Fn(&Recorded, usize) -> (u16, Vec<(String, String)>) + Send + Sync + 'static,
    ) {
        *self.responder.lock().unwrap() = Arc::new(f);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

/// A folder with a config file and a connectors/ folder, for one runtime.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// `connectors`: (file name, YAML). `extra` is appended to the config file.
    pub fn new(nats: &Nats, connectors: &[(&str, String)], extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("connectors")).unwrap();
        for (name, yaml) in connectors {
            std::fs::write(dir.path().join("connectors").join(name), yaml).unwrap();
        }
        let cfg = format!(
            "nats:\n  url: {}\n  embedded: false\nhttp:\n  listen: 127.0.0.1:0\nconnectors:\n  dir: connectors\n{extra}",
            nats.url()
        );
        std::fs::write(dir.path().join("hms-sync.yaml"), cfg).unwrap();
        Setup { dir }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("hms-sync.yaml")
    }

    pub fn config(&self) -> hms_sync::config::RuntimeConfig {
        hms_sync::config::RuntimeConfig::load(&self.config_path(), true).expect("config")
    }

    pub async fn start(&self) -> hms_sync::Runtime {
        hms_sync::Runtime::start(self.config())
            .await
            .expect("runtime starts")
    }
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

/// Every message stored on a stream subject (parked jobs).
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<serde_json::Value> {
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
            if let Ok(v) = serde_json::from_slice(&m.payload) {
                out.push(v);
            }
        }
    }
    out
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("HMS_SYNC_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_test_writer()
        .try_init();
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
    let setup = Setup::new(
        nats,
        &[("c.yaml", simple_connector(id, topic, target, retry))],
        extra_config,
    );
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    (setup, rt, js)
}
