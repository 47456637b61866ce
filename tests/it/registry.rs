//! The connector registry: deploy/undeploy/list through the binary, hot start/change/stop while
//! events flow, invalid bucket entries, and the seed's `deploy` + `up` in both orders.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// The issue's budget for a running `up` to follow the registry.
const HOT: Duration = Duration::from_secs(2);
const T: Duration = Duration::from_secs(20);

/// Runs the binary; returns (exit code, stdout, stderr).
fn hms(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(args)
        .current_dir(dir)
        .env_remove("NATS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    code_and_text(&out)
}

async fn hms_async(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        hms(&dir, &a)
    })
    .await
    .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    std::fs::write(dir.join(name), text).unwrap();
    name.to_string()
}

async fn view(
    rt: &hms_sync::Runtime,
    id: &str,
) -> Option<hms_sync::actors::supervisor::ConnectorView> {
    rt.status().await.into_iter().find(|v| v.id == id)
}

/// Waits until the runtime runs registry revision `rev` of `id`.
async fn runs_revision(rt: &hms_sync::Runtime, id: &str, rev: u64, budget: Duration) {
    eventually(budget, &format!("{id} runs revision {rev}"), || async {
        view(rt, id).await.is_some_and(|v| {
            v.revision == Some(rev) && v.state == hms_sync::actors::supervisor::RunState::Running
        })
    })
    .await;
}

async fn deploy_lib(bus: &hms_sync::bus::Bus, file: &str, yaml: &str) -> u64 {
    let c = hms_sync::connector::parse(file, yaml).unwrap();
    let d = hms_sync::registry::deploy(
        bus,
        &[hms_sync::registry::Source {
            connector: c,
            yaml: yaml.to_string(),
            file: file.to_string(),
        }],
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    d[0].revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_list_history_undeploy_through_the_binary() {
    let (nats, target) = nats_and_target().await;
    let setup = Setup::new(&nats, &[], "");
    let dir = setup.dir.path();
    let cfg = setup.config_path().display().to_string();
    let url = nats.url();
    let seed = seed_connector(&target);
    let good = write(dir, "gis.yaml", &seed);
    let bad = write(dir, "bad.yaml", "id: x.v1\ntype: outbound\ntrigger: {}\n");

    // Invalid: the validate errors, exit 2, nothing stored.
    let (code, _, err) = hms(dir, &["deploy", &good, &bad, "--config", &cfg]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.yaml:"), "{err}");
    assert!(err.contains("nothing deployed"), "{err}");
    let (code, out, _) = hms(dir, &["--config", &cfg, "list", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!([])
    );

    // Deploy; --nats-url before the subcommand.
    let (code, out, err) = hms(dir, &["--nats-url", &url, "deploy", &good]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("deployed ddot.gis.outbound.v1 revision "),
        "{out}"
    );
    // Same text again: unchanged, no new revision.
    let (code, out, _) = hms(dir, &["deploy", &good, "--nats-url", &url]);
    assert_eq!(code, 0);
    assert!(out.starts_with("unchanged ddot.gis.outbound.v1"), "{out}");
    // A change: new revision.
    write(dir, "gis.yaml", &seed.replace("max: 5", "max: 4"));
    let (code, out, _) = hms(dir, &["deploy", &good, "--nats-url", &url, "--json"]);
    assert_eq!(code, 0);
    let deployed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(deployed[0]["changed"], true);
    let rev = deployed[0]["revision"].as_u64().unwrap();

    // The registry holds the text as written: the secret stays a reference.
    let js = async_nats::jetstream::new(nats.client().await);
    let kv = js.get_key_value("hms_sync_connectors").await.unwrap();
    let raw = kv.get("ddot.gis.outbound.v1").await.unwrap().unwrap();
    let env: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert!(env["yaml"]
        .as_str()
        .unwrap()
        .contains("Bearer ${ARC_TOKEN}"));
    assert_eq!(env["source"], "gis.yaml");
    assert!(env["deployedAt"].as_str().unwrap().contains('T'));

    // The stream captures the topic and the consumer exists, naming connector and revision.
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    assert!(stream
        .cached_info()
        .config
        .subjects
        .contains(&"permit.updated".to_string()));
    let info = stream.consumer_info("ddot_gis_outbound_v1").await.unwrap();
    assert_eq!(
        info.config.description.as_deref(),
        Some("ddot.gis.outbound.v1")
    );
    assert_eq!(info.config.metadata["connector"], "ddot.gis.outbound.v1");
    assert_eq!(info.config.metadata["revision"], rev.to_string());
    assert!(info.config.metadata.contains_key("deployedAt"));

    // list: table and JSON.
    let (code, out, _) = hms(dir, &["list", "--nats-url", &url]);
    assert_eq!(code, 0);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    for col in ["ID", "TYPE", "TOPIC", "REVISION", "DEPLOYED AT"] {
        assert!(header.contains(col), "{out}");
    }
    let row = lines.next().unwrap();
    assert!(row.starts_with("ddot.gis.outbound.v1"), "{out}");
    assert!(
        row.contains("outbound") && row.contains("permit.updated"),
        "{out}"
    );
    assert!(row.contains(&format!("  {rev}  ")), "{out}");
    let (_, out, _) = hms(dir, &["list", "--json", "--nats-url", &url]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["id"], "ddot.gis.outbound.v1");
    assert_eq!(list[0]["type"], "outbound");
    assert_eq!(list[0]["topic"], "permit.updated");
    assert_eq!(list[0]["revision"], rev);

    // Undeploy: gone from the list, the history shows it; the consumer is kept with a grace.
    let (code, out, err) = hms(
        dir,
        &["undeploy", "ddot.gis.outbound.v1", "--nats-url", &url],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("undeployed ddot.gis.outbound.v1"), "{out}");
    let (code, _, err) = hms(
        dir,
        &["undeploy", "ddot.gis.outbound.v1", "--nats-url", &url],
    );
    assert_eq!(code, 1);
    assert!(err.contains("not deployed"), "{err}");
    let (_, out, _) = hms(dir, &["list", "--json", "--nats-url", &url]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!([])
    );
    let (code, out, _) = hms(
        dir,
        &[
            "list",
            "--history",
            "ddot.gis.outbound.v1",
            "--json",
            "--nats-url",
            &url,
        ],
    );
    assert_eq!(code, 0);
    let h: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = h.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["outbound", "outbound", "undeployed"], "{out}");
    assert!(h[0]["revision"].as_u64() < h[1]["revision"].as_u64());
    assert!(h
        .iter()
        .all(|r| r["deployedAt"].as_str().is_some_and(|t| t.contains('T'))));
    let (code, out, _) = hms(
        dir,
        &[
            "list",
            "--history",
            "ddot.gis.outbound.v1",
            "--nats-url",
            &url,
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 4, "{out}");
    let info = stream.consumer_info("ddot_gis_outbound_v1").await.unwrap();
    assert_eq!(
        info.config.inactive_threshold,
        Duration::from_secs(24 * 3600)
    );
    // Redeploy: the consumer is kept and its grace cleared.
    let (code, _, _) = hms(dir, &["deploy", &good, "--nats-url", &url]);
    assert_eq!(code, 0);
    let info = stream.consumer_info("ddot_gis_outbound_v1").await.unwrap();
    assert_eq!(info.config.inactive_threshold, Duration::ZERO);
    let (code, _, _) = hms(
        dir,
        &[
            "undeploy",
            "ddot.gis.outbound.v1",
            "--delete-consumer",
            "--nats-url",
            &url,
        ],
    );
    assert_eq!(code, 0);
    assert!(stream.consumer_info("ddot_gis_outbound_v1").await.is_err());

    // No server and no embedded default: a clear error naming the URL.
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let (code, _, err) = hms(dir, &["list", "--config", &cfg, "--nats-url", &dead]);
    assert_ne!(code, 0);
    assert!(err.contains(&dead), "{err}");
}

/// Publishes `{id, n}` on `topic` every few ms until stopped; returns the numbers published.
struct Publisher {
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(js: async_nats::jetstream::Context, topic: &'static str) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), next.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !s.load(Ordering::SeqCst) {
                tick.tick().await;
                let i = n.load(Ordering::SeqCst);
                publish(&js, topic, json!({"id": format!("e{i}"), "n": i})).await;
                n.store(i + 1, Ordering::SeqCst);
            }
        });
        Publisher { stop, next, task }
    }

    /// Events published so far (numbers below this were acked by the stream).
    fn published(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.next.load(Ordering::SeqCst)
    }
}

fn numbers(reqs: &[Recorded]) -> BTreeSet<u64> {
    reqs.iter()
        .filter_map(|r| {
            let n = &r.json()["n"];
            n.as_u64()
                .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_start_change_and_stop_while_events_flow() {
    let (nats, target) = nats_and_target().await;
    let (_setup, rt, js) = start_with(&nats, &[], "").await;
    let bus = connect_bus(&nats).await;
    let id = "flow.v1";
    let v1 = simple_connector(id, "flow.in", &target, "");

    // Start: deployed while up runs; running within 2 s; nothing published after deploy
    // returned is missed.
    let rev1 = deploy_lib(&bus, "flow.yaml", &v1).await;
    let publisher = Publisher::start(js.clone(), "flow.in");
    runs_revision(&rt, id, rev1, HOT).await;
    eventually(T, "first events delivered", || async {
        target.count() >= 5
    })
    .await;

    // Change the URL path while events flow.
    let v2 = v1.replace("/items/{id}", "/v2/items/{id}");
    let rev2 = deploy_lib(&bus, "flow.yaml", &v2).await;
    runs_revision(&rt, id, rev2, HOT).await;
    // Swap acknowledged: from here on only the new mapping.
    let acked_at = target.count();
    let published_at_ack = publisher.published();
    eventually(T, "events after the swap delivered", || async {
        numbers(&target.requests()[acked_at..])
            .range(published_at_ack + 5..)
            .next()
            .is_some()
    })
    .await;
    let after = target.requests()[acked_at..].to_vec();
    assert!(
        after.iter().all(|r| r.path.starts_with("/v2/items/")),
        "old mapping after the swap: {:?}",
        after.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    assert_eq!(
        stream
            .consumer_info("flow_v1")
            .await
            .unwrap()
            .config
            .metadata["revision"],
        rev2.to_string()
    );

    // No event lost across the swap.
    let total = publisher.finish().await;
    eventually(T, "every event delivered", || async {
        numbers(&target.requests()).len() as u64 == total
    })
    .await;
    assert_eq!(numbers(&target.requests()), (0..total).collect());

    // Stop: gone within 2 s, later events stay on the (kept) consumer.
    hms_sync::registry::undeploy(&bus, id, false).await.unwrap();
    eventually(HOT, "connector stopped", || async {
        view(&rt, id).await.is_none()
    })
    .await;
    let before = target.count();
    for i in 0..3 {
        publish(
            &js,
            "flow.in",
            json!({"id": format!("late{i}"), "n": 1_000_000 + i}),
        )
        .await;
    }
    eventually(T, "late events wait on the consumer", || {
        let stream = stream.clone();
        async move {
            stream
                .consumer_info("flow_v1")
                .await
                .is_ok_and(|i| i.num_pending >= 3)
        }
    })
    .await;
    assert_eq!(target.count(), before, "a stopped connector delivered");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_change_moves_the_consumer_and_the_stream_follows() {
    let (nats, target) = nats_and_target().await;
    // An event in transit to the old subscription when the topic changes is redelivered after
    // ackWait (not lost): keep that short here.
    let (_setup, rt, js) = start_with(&nats, &[], "delivery:\n  ackWaitMs: 2000\n").await;
    let bus = connect_bus(&nats).await;
    let id = "move.v1";
    let rev1 = deploy_lib(
        &bus,
        "m.yaml",
        &simple_connector(id, "old.topic", &target, ""),
    )
    .await;
    runs_revision(&rt, id, rev1, HOT).await;
    publish(&js, "old.topic", json!({"id": "a", "n": 1})).await;
    eventually(T, "old topic delivered", || async { target.count() == 1 }).await;

    let rev2 = deploy_lib(
        &bus,
        "m.yaml",
        &simple_connector(id, "new.topic", &target, ""),
    )
    .await;
    // Published right after deploy returned, before the runtime swapped: not missed.
    publish(&js, "new.topic", json!({"id": "b", "n": 2})).await;
    runs_revision(&rt, id, rev2, HOT).await;
    publish(&js, "new.topic", json!({"id": "c", "n": 3})).await;
    eventually(T, "new topic delivered", || async {
        numbers(&target.requests()) == BTreeSet::from([1, 2, 3])
    })
    .await;
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    let info = stream.consumer_info("move_v1").await.unwrap();
    assert_eq!(
        info.config.filter_subjects,
        ["new.topic", "hms.replay.move_v1"]
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bucket_entries_are_reported_and_harm_nothing() {
    let (nats, target) = nats_and_target().await;
    let (_setup, rt, js) = start_with(
        &nats,
        &[("a.yaml", simple_connector("folder.a", "inv.a", &target, ""))],
        "",
    )
    .await;
    let bus = connect_bus(&nats).await;
    let b = simple_connector("reg.b", "inv.b", &target, "");
    let rev_b = deploy_lib(&bus, "b.yaml", &b).await;
    runs_revision(&rt, "reg.b", rev_b, HOT).await;

    // Another tool writes garbage, a wrong key, bytes, and a broken update of reg.b.
    let kv = js.get_key_value("hms_sync_connectors").await.unwrap();
    kv.put("garbage.one", "id: [unclosed\n  : :".into())
        .await
        .unwrap();
    kv.put(
        "wrong.key",
        simple_connector("other.id", "inv.c", &target, "").into(),
    )
    .await
    .unwrap();
    kv.put("bytes.one", vec![0xff, 0xfe, 0x00].into())
        .await
        .unwrap();
    kv.put(
        "reg.b",
        "id: reg.b\ntype: outbound\ntrigger: {topic: inv.b}\n".into(),
    )
    .await
    .unwrap();

    let base = format!("http://{}", rt.http_addr());
    let api = || async {
        let text = get_text(&format!("{base}/api/connectors")).await;
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    eventually(HOT, "invalid entries reported", || async {
        let v = api().await;
        let arr = v.as_array().unwrap().clone();
        let state = |id: &str| {
            arr.iter()
                .find(|c| c["id"] == id)
                .map(|c| c["state"].as_str().unwrap_or("").to_string())
        };
        state("garbage.one").as_deref() == Some("invalid")
            && state("wrong.key").as_deref() == Some("invalid")
            && state("bytes.one").as_deref() == Some("invalid")
            && arr
                .iter()
                .any(|c| c["id"] == "reg.b" && c["registry_error"].is_string())
    })
    .await;
    let v = api().await;
    let garbage = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "garbage.one")
        .unwrap();
    assert!(
        garbage["last_error"]
            .as_str()
            .unwrap()
            .contains("hms_sync_connectors/garbage.one@"),
        "{garbage}"
    );
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert!(
        metrics.contains(r#"sync_registry_invalid_total{connector="garbage.one"} 1"#),
        "{metrics}"
    );
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );

    // Every connector keeps delivering; reg.b with its last good revision.
    publish(&js, "inv.a", json!({"id": "a1", "n": 1})).await;
    publish(&js, "inv.b", json!({"id": "b1", "n": 2})).await;
    eventually(T, "both connectors deliver", || async {
        numbers(&target.requests()) == BTreeSet::from([1, 2])
    })
    .await;
    assert_eq!(view(&rt, "reg.b").await.unwrap().revision, Some(rev_b));

    // Deleting an invalid entry clears it; a valid value for it starts it.
    kv.delete("garbage.one").await.unwrap();
    eventually(HOT, "deleted invalid entry gone", || async {
        view(&rt, "garbage.one").await.is_none()
    })
    .await;
    let fixed = deploy_lib(
        &bus,
        "w.yaml",
        &simple_connector("wrong.key", "inv.w", &target, ""),
    )
    .await;
    runs_revision(&rt, "wrong.key", fixed, HOT).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_wins_over_the_folder_and_undeploy_falls_back() {
    std::env::set_var("ARC_TOKEN", "arc-secret-token");
    let (nats, target) = nats_and_target().await;
    let seed = seed_as(&target, "ddot.gis.wins.v1");
    let setup = Setup::new(&nats, &[("gis-ddot.yaml", seed.clone())], "");
    let bus = connect_bus(&nats).await;
    let js = async_nats::jetstream::new(nats.client().await);
    let deployed = seed.replace("/item/roadwork/", "/registry/roadwork/");
    let rev = deploy_lib(&bus, "gis-ddot.yaml", &deployed).await;
    let rt = setup.start().await;
    runs_revision(&rt, "ddot.gis.wins.v1", rev, T).await;
    let event = json!({"permitId": "RW-481", "agency": "DDOT", "startDate": "2024-05-10"});
    publish(&js, "permit.updated", event.clone()).await;
    eventually(T, "registry version delivers", || async {
        target.count() == 1
    })
    .await;
    assert_eq!(target.requests()[0].path, "/registry/roadwork/RW-481");

    hms_sync::registry::undeploy(&bus, "ddot.gis.wins.v1", false)
        .await
        .unwrap();
    eventually(HOT, "back to the folder's definition", || async {
        view(&rt, "ddot.gis.wins.v1")
            .await
            .is_some_and(|v| v.source == "folder" && v.revision.is_none())
    })
    .await;
    publish(&js, "permit.updated", event).await;
    eventually(T, "folder version delivers", || async {
        target.count() == 2
    })
    .await;
    assert_eq!(target.requests()[1].path, "/item/roadwork/RW-481");
    rt.shutdown().await;
}

/// The seed connector under another id: metrics are process-wide, and the walk-through test
/// counts the seed id's deliveries in this same test binary.
fn seed_as(target: &Target, id: &str) -> String {
    seed_connector(target).replace("ddot.gis.outbound.v1", id)
}

async fn seed_publish_and_expect_patch(nats: &Nats, target: &Target, n: usize) {
    let client = nats.client().await;
    publish_plain(&client, "permit.updated", SEED_PERMIT).await;
    client.flush().await.unwrap();
    eventually(T, "the PATCH", || async { target.count() >= n }).await;
    let r = &target.requests()[n - 1];
    assert_eq!(r.method, "PATCH");
    assert_eq!(r.path, "/item/roadwork/RW-481");
    assert_eq!(
        r.json(),
        json!({"start_date": "2024-05-10", "status": "APPROVED"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_sequence_deploy_then_up() {
    std::env::set_var("ARC_TOKEN", "arc-secret-token");
    let (nats, target) = nats_and_target().await;
    let setup = Setup::new(&nats, &[], "");
    let dir = setup.dir.path();
    std::fs::create_dir_all(dir.join("seed")).unwrap();
    write(
        dir,
        "seed/gis-ddot.yaml",
        &seed_as(&target, "ddot.gis.first.v1"),
    );
    let cfg = setup.config_path().display().to_string();
    let (code, out, err) =
        hms_async(dir, &["deploy", "seed/gis-ddot.yaml", "--config", &cfg]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deployed ddot.gis.first.v1"), "{out}");
    let rt = setup.start().await;
    let v = view(&rt, "ddot.gis.first.v1").await.unwrap();
    assert_eq!(v.source, "registry");
    seed_publish_and_expect_patch(&nats, &target, 1).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_sequence_up_then_deploy() {
    std::env::set_var("ARC_TOKEN", "arc-secret-token");
    let (nats, target) = nats_and_target().await;
    let setup = Setup::new(&nats, &[], "");
    let rt = setup.start().await;
    let dir = setup.dir.path();
    write(
        dir,
        "gis-ddot.yaml",
        &seed_as(&target, "ddot.gis.second.v1"),
    );
    let url = nats.url();
    let (code, _, err) = hms_async(dir, &["deploy", "gis-ddot.yaml", "--nats-url", &url]).await;
    assert_eq!(code, 0, "{err}");
    // Published right after deploy returned, maybe before `up` noticed: still delivered.
    seed_publish_and_expect_patch(&nats, &target, 1).await;
    eventually(HOT, "up runs it", || async {
        view(&rt, "ddot.gis.second.v1")
            .await
            .is_some_and(|v| v.state == hms_sync::actors::supervisor::RunState::Running)
    })
    .await;
    rt.shutdown().await;
}

/// The seed as written on a fresh machine: `deploy` with the default embedded config starts
/// nats-server just for itself, then `up` (a binary) starts it again and runs the connector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_sequence_with_the_embedded_default() {
    init_logs();
    let target = Target::start().await;
    let nats_port = free_port();
    let http_port = free_port();
    let dir = embedded_dir(nats_port, http_port);
    write(
        dir.path(),
        "connectors/gis-ddot.yaml",
        &seed_connector(&target),
    );
    let url = format!("nats://127.0.0.1:{nats_port}");

    let (code, out, err) = hms_async(dir.path(), &["deploy", "connectors/gis-ddot.yaml"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deployed ddot.gis.outbound.v1"), "{out}");
    assert!(err.contains("starting the embedded nats-server"), "{err}");
    assert!(
        !hms_sync::bus::Bus::reachable(&url).await,
        "deploy stopped its server"
    );

    let up = Spawned::new(
        Command::new(env!("CARGO_BIN_EXE_hms-sync"))
            .args(["up"])
            .current_dir(dir.path())
            .env_remove("NATS_URL")
            .env("ARC_TOKEN", "arc-secret-token")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://127.0.0.1:{http_port}/api/connectors");
    eventually(T, "up runs the deployed connector", || {
        let api = api.clone();
        async move {
            let Ok(r) = reqwest::get(&api).await else {
                return false;
            };
            let text = r.text().await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            v.as_array().is_some_and(|a| {
                a.iter()
                    .any(|c| c["id"] == "ddot.gis.outbound.v1" && c["source"] == "registry")
            })
        }
    })
    .await;
    let client = async_nats::connect(&url).await.unwrap();
    publish_plain(&client, "permit.updated", SEED_PERMIT).await;
    client.flush().await.unwrap();
    eventually(T, "the PATCH", || async { target.count() >= 1 }).await;
    assert_eq!(target.requests()[0].path, "/item/roadwork/RW-481");
    let status = up.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_redeploys_settle_on_the_last_revision() {
    let (nats, target) = nats_and_target().await;
    let (_setup, rt, js) = start_with(&nats, &[], "").await;
    let bus = connect_bus(&nats).await;
    let id = "rapid.v1";
    let base = simple_connector(id, "rapid.in", &target, "");
    let mut last = 0;
    for i in 0..5 {
        let yaml = base.replace("/items/{id}", &format!("/r{i}/items/{{id}}"));
        last = deploy_lib(&bus, "r.yaml", &yaml).await;
    }
    runs_revision(&rt, id, last, HOT).await;
    publish(&js, "rapid.in", json!({"id": "x", "n": 1})).await;
    eventually(T, "delivered with the last revision", || async {
        target.count() == 1
    })
    .await;
    assert_eq!(target.requests()[0].path, "/r4/items/x");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_connectors_deployed_to_the_registry_are_served_without_a_restart() {
    use hmac::Mac;
    init_logs();
    std::env::set_var("HMS_TEST_REGISTRY_HOOK_SECRET", "reg-secret");
    let nats = Nats::start().await;
    let setup = Setup::new(&nats, &[], "");
    let rt = setup.start().await;
    let bus = connect_bus(&nats).await;
    let yaml = "id: reg.hook.inbound.v1\ntype: inbound\nsource:\n  webhookUrl: /webhooks/reg\n  signature:\n    scheme: hmac-sha256\n    header: X-Signature\n    encoding: hex\n    secret: ${HMS_TEST_REGISTRY_HOOK_SECRET}\npublish:\n  topic: reg.hook.received\n  idFrom: \"{{ id }}\"\n";
    let url = format!("http://{}/webhooks/reg", rt.http_addr());
    let body = br#"{"id":"h1","amount":5}"#;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"reg-secret").unwrap();
    mac.update(body);
    let sig = hex::encode(mac.finalize().into_bytes());
    let post = || {
        let (url, sig) = (url.clone(), sig.clone());
        async move {
            reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/json")
                .header("X-Signature", sig)
                .body(body.to_vec())
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(post().await, 404, "not served before deploy");
    deploy_lib(&bus, "hook.yaml", yaml).await;
    eventually(
        Duration::from_secs(2),
        "served within 2 s of deploy",
        || async { post().await == 200 },
    )
    .await;
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("HMS_EVENTS").await.unwrap();
    let stored = stream
        .get_last_raw_message_by_subject("reg.hook.received")
        .await
        .unwrap();
    assert_eq!(&stored.payload[..], body);
    let (code, _, err) = hms_async(
        setup.dir.path(),
        &["undeploy", "reg.hook.inbound.v1", "--nats-url", &nats.url()],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    eventually(Duration::from_secs(2), "no longer served", || async {
        post().await == 404
    })
    .await;
    rt.shutdown().await;
}
