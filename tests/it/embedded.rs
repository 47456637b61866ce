//! `hms-sync up` as a binary with the embedded default: it starts nats-server from its config
//! file, serves, and stops the server on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_and_stops_its_own_nats_server() {
    init_logs();
    let nats_port = free_port();
    let http_port = free_port();
    let dir = embedded_dir(nats_port, http_port);
    std::fs::write(
        dir.path().join("connectors/gis.yaml"),
        include_str!("../../connectors/gis-ddot.yaml"),
    )
    .unwrap();
    let child = Spawned::new(
        Command::new(env!("CARGO_BIN_EXE_hms-sync"))
            .args(["up", "--config", "config/hms-sync.yaml"])
            .current_dir(dir.path())
            .env_remove("NATS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = format!("http://127.0.0.1:{http_port}/readyz");
    eventually(Duration::from_secs(20), "up is ready", || {
        let ready = ready.clone();
        async move { matches!(reqwest::get(&ready).await, Ok(r) if r.status() == 200) }
    })
    .await;
    let url = format!("nats://127.0.0.1:{nats_port}");
    assert!(hms_sync::bus::Bus::reachable(&url).await);
    assert!(
        dir.path().join(".data/nats").exists(),
        "store dir beside nats-server.conf"
    );
    // SIGTERM: drains, stops its nats-server, exits 0.
    let status = child.terminate().await;
    assert!(status.success(), "{status:?}");
    eventually(
        Duration::from_secs(10),
        "embedded nats-server stopped",
        || {
            let url = url.clone();
            async move { !hms_sync::bus::Bus::reachable(&url).await }
        },
    )
    .await;
}
