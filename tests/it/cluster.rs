//! No silent stall: a lame-duck shutdown of the node hms-sync is connected to, a kill -9 of
//! the stream's leader in a 3-node cluster, and a restart of a single server, each in the
//! middle of a flood: nothing is lost, delivery resumes within seconds, and the pull that was
//! re-created is counted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use hms_sync::nats_server::{Cluster, NatsServer};
use serde_json::json;

use crate::harness::*;

const TOPIC: &str = "ha.in";
const CONSUMER: &str = "ha_v1";

/// hms-sync's streams with three replicas (as `nats.replicas: 3` makes them).
async fn r3_streams(js: &jetstream::Context) {
    for (name, subjects) in [
        (
            "HMS_EVENTS",
            vec![TOPIC.to_string(), "hms.replay.>".to_string()],
        ),
        (
            "HMS_SYNC_PARKED",
            vec!["sync.parked.>".into(), "sync.resolved.>".into()],
        ),
        ("HMS_AUDIT", vec!["external.sync.>".into()]),
    ] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects,
            num_replicas: 3,
            max_consumers: 100_000,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// The distinct events the target received with a 2xx.
fn delivered(target: &Target) -> usize {
    target
        .requests()
        .iter()
        .filter(|r| r.status < 300)
        .map(|r| r.path.clone())
        .collect::<HashSet<_>>()
        .len()
}

/// Publishes `n` events through `js` in the background, as a careful producer does while the
/// cluster moves its leaders: each with a `Nats-Msg-Id`, and published again until stored
/// (the stream's duplicate window keeps a retried one from being stored twice).
fn flood(js: jetstream::Context, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut left: Vec<usize> = (0..n).collect();
        while !left.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} events never stored",
                left.len()
            );
            let mut failed = Vec::new();
            for chunk in left.chunks(200) {
                let mut acks = Vec::new();
                for &i in chunk {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", format!("e{i}").as_str());
                    let body = json!({"id": format!("e{i}"), "n": i}).to_string();
                    let ack = js.publish_with_headers(TOPIC, headers, body.into()).await;
                    acks.push((i, ack));
                }
                for (i, ack) in acks {
                    let stored = match ack {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if !stored {
                        failed.push(i);
                    }
                }
            }
            if !failed.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            left = failed;
        }
    })
}

/// Waits until the cluster is available again (the connector's consumer has a leader that
/// answers, not `gone`), then until deliveries resume: within 10 s of that, more than `from`
/// are delivered.
async fn resumes(
    js: &jetstream::Context,
    gone: Option<&str>,
    target: &Target,
    from: usize,
    what: &str,
) {
    let began = Instant::now();
    eventually(Duration::from_secs(60), "the cluster available", || async {
        let Ok(s) = js.get_stream("HMS_EVENTS").await else {
            return false;
        };
        let Ok(info) = s.consumer_info(CONSUMER).await else {
            return false;
        };
        // A single server has no leader to wait for; a cluster a new one, not `gone`.
        gone.is_none()
            || info
                .cluster
                .and_then(|c| c.leader)
                .is_some_and(|l| Some(l.as_str()) != gone)
    })
    .await;
    let available = Instant::now();
    eventually(Duration::from_secs(10), what, || async {
        delivered(target) > from
    })
    .await;
    eprintln!(
        "{what}: cluster available after {:?}, deliveries resumed {:?} later",
        available - began,
        available.elapsed()
    );
}

/// Re-created pulls notice a gone server within a couple of seconds.
const CONFIG: &str = "delivery:\n  ackWaitMs: 3000\n  heartbeatMs: 1000\n";

/// A runtime with one connector to `target`, connected to NATS at `url`.
async fn start_at(url: &str, target: &Target) -> (Setup, hms_sync::Runtime) {
    let setup = Setup::at(
        url,
        &[("c.yaml", simple_connector("ha.v1", TOPIC, target, ""))],
        CONFIG,
    );
    let rt = setup.start().await;
    (setup, rt)
}

/// A 3-node cluster of this test alone.
async fn three_nodes() -> Cluster {
    Cluster::start(NatsServer::builder().bin(nats_server_bin()), 3)
        .await
        .expect("cluster")
}

/// Waits until the target has answered `at_least` events (within 60 s).
async fn under_way(target: &Target, at_least: usize) {
    eventually(Duration::from_secs(60), "deliveries under way", || async {
        delivered(target) >= at_least
    })
    .await;
}

/// Waits until all `n` events are delivered (60 s) and the pull was re-created at least
/// once (10 s more).
async fn all_delivered_and_pull_reopened(rt: &hms_sync::Runtime, target: &Target, n: usize) {
    eventually(Duration::from_secs(60), "every event delivered", || async {
        delivered(target) == n
    })
    .await;
    eventually(Duration::from_secs(10), "the pull re-created", || async {
        reopened(rt).await >= 1.0
    })
    .await;
}

async fn reopened(rt: &hms_sync::Runtime) -> f64 {
    metric(rt, "sync_pull_reopened_total{connector=\"ha.v1\"}").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lame_duck_node_mid_flood_loses_nothing() {
    init_logs();
    let mut cluster = three_nodes().await;
    let node1 = cluster.nodes()[0].url().to_string();
    let js = jetstream::new(async_nats::connect(cluster.nodes()[2].url()).await.unwrap());
    r3_streams(&js).await;
    let target = Target::start().await;
    // hms-sync knows only node 1: that is the node it is connected to.
    let (_setup, rt) = start_at(&node1, &target).await;
    let n = 3_000;
    let publisher = flood(js.clone(), n);
    under_way(&target, 500).await;
    cluster.node_mut(0).unwrap().lame_duck();
    let at = delivered(&target);
    resumes(&js, None, &target, at, "after lame duck").await;
    publisher.await.unwrap();
    all_delivered_and_pull_reopened(&rt, &target, n).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stream_leader_mid_flood_loses_nothing() {
    init_logs();
    let mut cluster = three_nodes().await;
    let seeds: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .split(',')
        .map(|u| u.parse().unwrap())
        .collect();
    let js = jetstream::new(async_nats::connect(seeds).await.unwrap());
    r3_streams(&js).await;
    let target = Target::start().await;
    // Every node as a seed (nats.url takes a list).
    let (_setup, rt) = start_at(&cluster.urls(), &target).await;
    let n = 3_000;
    // All published first: the publisher may be connected to the node that is killed.
    publish_many(&js, TOPIC, numbered("e", 0..n)).await;
    under_way(&target, 500).await;
    // The node leading the consumer (where its pull requests wait) and, with it most often,
    // the stream.
    let consumer = consumer_info(&js, CONSUMER).await;
    let leader = consumer.cluster.and_then(|c| c.leader).expect("a leader");
    let i = (0..3)
        .find(|i| leader == format!("n{}", i + 1))
        .expect("the leader is a node");
    cluster.node_mut(i).unwrap().kill();
    let at = delivered(&target);
    resumes(&js, Some(&leader), &target, at, "after the leader's kill").await;
    all_delivered_and_pull_reopened(&rt, &target, n).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_mid_flood_loses_nothing() {
    init_logs();
    let server = NatsServer::builder()
        .bin(nats_server_bin())
        .start()
        .await
        .expect("nats-server");
    let url = server.url().to_string();
    let target = Target::start().await;
    let (_setup, rt) = start_at(&url, &target).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let n = 2_000;
    publish_many(&js, TOPIC, numbered("e", 0..n)).await;
    under_way(&target, 300).await;
    let server = server.restart().await.expect("restarted");
    let at = delivered(&target);
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    resumes(&js, None, &target, at, "after the restart").await;
    all_delivered_and_pull_reopened(&rt, &target, n).await;
    rt.shutdown().await;
    drop(server);
}
