//! SECURITY.md's `authorization` block (issue 13, point 8): a nats-server with exactly that
//! block, and hms-sync delivering, parking, deploying, tracing, resyncing and replaying
//! through its `hms-sync` user.

use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, stream_messages, Setup, Target};
use crate::prod_support::{connector, run_cli, ConfNats};

/// The first ```conf block of SECURITY.md.
fn authorization_block() -> String {
    let text = include_str!("../../SECURITY.md");
    let start = text.find("```conf\n").expect("a ```conf block") + "```conf\n".len();
    let len = text[start..].find("```").expect("its end");
    text[start..start + len].to_string()
}

#[tokio::test]
async fn the_documented_permissions_are_enough_to_deliver_park_and_deploy() {
    crate::harness::init_logs();
    std::env::set_var("HMS_SYNC_NATS_PASSWORD", "svc-pw-1");
    std::env::set_var("HMS_DEPLOYER_NATS_PASSWORD", "dep-pw-2");
    std::env::set_var("HMS_PUBLISHER_NATS_PASSWORD", "pub-pw-3");
    let block = authorization_block();
    let nats = ConfNats::start(|port, store| {
        format!(
            "host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\n{block}",
            store.display()
        )
    })
    .await;
    let target = Target::start().await;
    target.respond(|r, _| {
        if r.path.contains("BAD") {
            (400, vec![])
        } else {
            (200, vec![])
        }
    });
    let config = format!(
        "nats:\n  url: {}\n  embedded: false\n  user: hms-sync\n  password: ${{HMS_SYNC_NATS_PASSWORD}}\nhttp:\n  listen: 127.0.0.1:0\nconnectors:\n  dir: connectors\n",
        nats.url()
    );
    let dir = Setup::from_config(
        &config,
        &[(
            "c.yaml",
            connector("perm.v1", "permit.perm", &target.url(), "", ""),
        )],
    );
    let rt = hms_sync::Runtime::start(dir.config())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", nats.log()));
    // The publisher publishes an event: delivered; another is refused by the target: parked.
    let publisher =
        async_nats::ConnectOptions::with_user_and_password("publisher".into(), "pub-pw-3".into())
            .connect(nats.url())
            .await
            .unwrap();
    publisher
        .publish("permit.perm", json!({"id": "OK-1"}).to_string().into())
        .await
        .unwrap();
    publisher
        .publish("permit.perm", json!({"id": "BAD-1"}).to_string().into())
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    eventually(Duration::from_secs(10), "delivered and refused", || async {
        target.count() == 2
    })
    .await;
    let admin =
        async_nats::ConnectOptions::with_user_and_password("hms-sync".into(), "svc-pw-1".into())
            .connect(nats.url())
            .await
            .unwrap();
    let js = async_nats::jetstream::new(admin);
    eventually(Duration::from_secs(10), "parked", || async {
        stream_messages(&js, "HMS_SYNC_PARKED").await.len() == 1
    })
    .await;
    // Deploy through the hms-sync user: the running instance picks it up.
    let file = dir.write(
        "deployed.yaml",
        &connector("perm.deployed.v1", "permit.deployed", &target.url(), "", ""),
    );
    let cfg = dir.config_path();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &[
                "deploy",
                "--config",
                cfg.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
            &[("HMS_SYNC_NATS_PASSWORD", "svc-pw-1")],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", nats.log());
    publisher
        .publish("permit.deployed", json!({"id": "D-1"}).to_string().into())
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    eventually(
        Duration::from_secs(15),
        "the deployed connector delivers",
        || async { target.requests().iter().any(|r| r.path == "/items/D-1") },
    )
    .await;
    // The publisher cannot write the registry.
    let pjs = async_nats::jetstream::new(publisher);
    let denied = match pjs.get_key_value("hms_sync_connectors").await {
        Ok(kv) => kv.put("evil.v1", "x".into()).await.is_err(),
        Err(_) => true,
    };
    assert!(denied, "a publisher must not write the registry");
    // The operator's tools through the hms-sync user: trace, resync, parked replay, audit.
    let run = |args: Vec<String>| {
        let cfg = dir.config_path();
        tokio::task::spawn_blocking(move || {
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            a.extend(["--config", cfg.to_str().unwrap()]);
            run_cli(
                &a,
                &[("HMS_SYNC_NATS_PASSWORD", "svc-pw-1"), ("USER", "rosa")],
            )
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (code, out, err) = run(args(&["trace", "--where", "id=OK-1"])).await.unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", nats.log());
    assert!(out.contains("=> delivered at"), "{out}");
    let (code, out, err) = run(args(&[
        "resync", "perm.v1", "--since", "10m", "--where", "id=OK-1",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", nats.log());
    assert!(out.contains("1 delivered"), "{out}");
    target.respond(|_, _| (200, vec![]));
    let (code, out, err) = run(args(&["parked", "replay", "--all"])).await.unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", nats.log());
    assert!(out.contains("1 delivered"), "{out}");
    let (code, out, err) = run(args(&["audit", "verify"])).await.unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", nats.log());
    rt.shutdown().await;
}
