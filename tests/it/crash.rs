//! kill -9 of `hms-sync up` in the middle of a flood: nothing is lost, duplicates carry the
//! same Idempotency-Key.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

fn up(setup: &Setup) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(["up", "--config"])
        .arg(setup.config_path())
        .env("HMS_SYNC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_flood_loses_nothing() {
    let (nats, target) = nats_and_target().await;
    let setup = Setup::new(
        &nats,
        &[(
            "c.yaml",
            simple_connector("flood.v1", "flood.in", &target, ""),
        )],
        "delivery:\n  ackWaitMs: 2000\n",
    );
    // Create the stream and consumer once, so events published before the first `up` count.
    let rt = setup.start().await;
    rt.shutdown().await;
    let js = async_nats::jetstream::new(nats.client().await);
    publish_many(&js, "flood.in", numbered("e", 0..5000)).await;
    let mut child = up(&setup);
    eventually(Duration::from_secs(30), "some events delivered", || async {
        target.count() >= 500
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = target.count();
    assert!(
        at_kill < 5000,
        "killed before the end ({at_kill} delivered)"
    );
    let mut child = up(&setup);
    let ids = || {
        let mut keys: HashMap<String, Vec<Option<String>>> = HashMap::new();
        for r in target.requests() {
            keys.entry(r.json()["id"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(r.header("idempotency-key"));
        }
        keys
    };
    eventually(
        Duration::from_secs(60),
        "all 5000 event ids at the target",
        || async { ids().len() == 5000 },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let keys = ids();
    let mut dups = 0;
    for (id, ks) in &keys {
        assert!(ks[0].is_some(), "{id} has a key");
        assert!(
            ks.iter().all(|k| *k == ks[0]),
            "{id}: duplicates carry different keys: {ks:?}"
        );
        dups += ks.len() - 1;
    }
    let distinct: std::collections::HashSet<_> = keys.values().map(|k| k[0].clone()).collect();
    assert_eq!(distinct.len(), 5000, "different events have different keys");
    eprintln!("kill -9 after {at_kill} deliveries; {dups} duplicates after restart");
}
