//! The cluster example of `config/cluster/` run as README's "Running several instances" says:
//! three nats-server nodes from its configs, `hms-sync sink`, two `hms-sync up` from its
//! configs and connectors, `hms-sync flood`, then a kill -9 of the instance that delivers the
//! keyed connector. Only the example's ports are moved (to free ones) and its stores put in a
//! temporary folder.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hms_sync::nats_server::NatsServer;

use crate::fleet::Instance;
use crate::harness::*;

const ORDERED: &str = "cluster.ordered.v1";
const SPREAD: &str = "cluster.spread.v1";

fn example(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/cluster")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The example's addresses and their free replacements.
struct Moved(Vec<(String, String)>);

impl Moved {
    fn new() -> Moved {
        let fixed = [
            14222, 14223, 14224, 16222, 16223, 16224, 18222, 18223, 18224, 7510, 7511, 8080,
        ];
        Moved(
            fixed
                .iter()
                .map(|p| {
                    (
                        format!("127.0.0.1:{p}"),
                        format!("127.0.0.1:{}", free_port()),
                    )
                })
                .collect(),
        )
    }

    fn apply(&self, text: &str) -> String {
        self.0
            .iter()
            .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
    }

    fn of(&self, fixed: &str) -> &str {
        &self
            .0
            .iter()
            .find(|(f, _)| f == fixed)
            .expect("an address of the example")
            .1
    }

    fn port(&self, fixed: &str) -> u16 {
        self.of(fixed).rsplit(':').next().unwrap().parse().unwrap()
    }
}

/// `hms-sync sink --json` as a child process: its latest progress line.
struct Sink {
    _child: Spawned,
    last: Arc<Mutex<serde_json::Value>>,
}

impl Sink {
    fn start(listen: &str) -> Sink {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
            .args([
                "sink",
                "--listen",
                listen,
                "--order-key",
                "header:X-Permit-Id",
            ])
            .args(["--json", "--every", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let last = Arc::new(Mutex::new(serde_json::Value::Null));
        let seen = last.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    *seen.lock().unwrap() = v;
                }
            }
        });
        Sink {
            _child: Spawned::new(child),
            last,
        }
    }

    fn field(&self, name: &str) -> u64 {
        self.last.lock().unwrap()[name].as_u64().unwrap_or(0)
    }
}

/// Writes the example's hms-sync configs and connectors, addresses moved, under `root`
/// (the same layout: `config/cluster/{hms-sync-a,hms-sync-b}.yaml`, `connectors/`).
fn write_example(root: &Path, moved: &Moved) -> [PathBuf; 2] {
    let dir = root.join("config/cluster");
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    for c in ["ordered.outbound.yaml", "spread.outbound.yaml"] {
        let text = moved.apply(&example(&format!("connectors/{c}")));
        std::fs::write(dir.join("connectors").join(c), text).unwrap();
    }
    ["hms-sync-a.yaml", "hms-sync-b.yaml"].map(|f| {
        std::fs::write(dir.join(f), moved.apply(&example(f))).unwrap();
        dir.join(f)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_example_fails_over_without_losing_or_reordering() {
    init_logs();
    let moved = Moved::new();
    let root = tempfile::tempdir().unwrap();
    // Three nodes from n1.conf..n3.conf, their stores (`.data/cluster/nX`) under `root`.
    let mut nodes = Vec::new();
    for (n, client) in [
        (1, "127.0.0.1:14222"),
        (2, "127.0.0.1:14223"),
        (3, "127.0.0.1:14224"),
    ] {
        let node = NatsServer::builder()
            .bin(nats_server_bin())
            .config_text(moved.apply(&example(&format!("n{n}.conf"))))
            .listen_from_config(format!("nats://{}", moved.of(client)))
            .store_from_config()
            .current_dir(root.path())
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    let sink = Sink::start(moved.of("127.0.0.1:8080"));
    let [config_a, config_b] = write_example(root.path(), &moved);
    let mut instances = vec![
        Instance::from_config(&config_a, moved.port("127.0.0.1:7510")),
        Instance::from_config(&config_b, moved.port("127.0.0.1:7511")),
    ];
    for i in &instances {
        // The cluster elects its leaders first, then each instance creates or finds the R3
        // streams and the consumers. (Three nats-servers and two instances on a busy 2-core
        // machine: seen taking over 60 s beside two CPU hogs.)
        eventually(Duration::from_secs(120), "instance ready", || i.ready()).await;
    }
    let events = 3000u64;
    let flood = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(["flood", "--nats-url", nodes[0].url(), "permit.updated"])
        .args(["--count", &events.to_string(), "--rate", "300"])
        .args(["--vary", "permitId=seq%10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let flood = Spawned::new(flood);
    eventually(
        Duration::from_secs(120),
        "a fifth of the keyed updates delivered",
        || async {
            let mut ordered = 0.0;
            for i in &instances {
                ordered += i.delivered(ORDERED).await;
            }
            ordered >= events as f64 / 5.0
        },
    )
    .await;
    // Kill -9 the instance holding the pin of the keyed connector.
    let mut holder = 0;
    let mut most = -1.0;
    for (n, i) in instances.iter().enumerate() {
        let d = i.delivered(ORDERED).await;
        if d > most {
            (holder, most) = (n, d);
        }
    }
    let mut killed = instances.remove(holder);
    let survivor = &instances[0];
    let before = survivor.delivered(ORDERED).await;
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();
    let killed_at = Instant::now();
    eventually(
        Duration::from_secs(60),
        "the other instance delivers the keyed connector",
        || async { survivor.delivered(ORDERED).await > before },
    )
    .await;
    println!(
        "cluster example: keyed deliveries resumed {:?} after the kill -9 (pinTimeoutMs 5000)",
        killed_at.elapsed()
    );
    eventually(
        Duration::from_secs(120),
        "every event delivered by both connectors",
        || async { sink.field("delivered") == 2 * events },
    )
    .await;
    assert_eq!(
        sink.field("order_violations"),
        0,
        "{}",
        sink.last.lock().unwrap()
    );
    assert!(survivor.delivered(SPREAD).await > 0.0);
    assert_eq!(
        flood.terminate().await.code(),
        Some(0),
        "the flood published everything"
    );
}
