//! The nats-server launcher: clusters, restarts, lame duck, auth blocks.
//!
//! A 3-node JetStream cluster forms (R3 stream, published on one node, read on another), a
//! server restarts on its own store, lame-duck mode refuses clients.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use hms_sync::nats_server::{answers_info, Cluster, NatsServer};

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_form_a_jetstream_cluster_with_r3_streams() {
    let cluster = Cluster::start(NatsServer::builder().bin(nats_server_bin()), 3)
        .await
        .expect("cluster of 3");
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 3);
    assert_eq!(cluster.urls().split(',').count(), 3);
    let js1 = jetstream::new(async_nats::connect(nodes[0].url()).await.unwrap());
    let js3 = jetstream::new(async_nats::connect(nodes[2].url()).await.unwrap());
    let created = js1
        .create_stream(stream::Config {
            name: "R3".into(),
            subjects: vec!["r3.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("an R3 stream is created");
    assert_eq!(created.cached_info().config.num_replicas, 3);
    // A new R3 stream elects its leader first: publish until the cluster stores it.
    let stored = std::sync::Arc::new(std::sync::Mutex::new(None));
    eventually(T, "stored by the cluster", || {
        let (js1, stored) = (js1.clone(), stored.clone());
        async move {
            let Ok(pending) = js1.publish("r3.one", "from node 1".into()).await else {
                return false;
            };
            match pending.await {
                Ok(ack) => {
                    *stored.lock().unwrap() = Some(ack);
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await;
    let ack = stored.lock().unwrap().take().expect("acked");
    let read = std::sync::Arc::new(std::sync::Mutex::new(None));
    eventually(T, "node 3 reads the message", || {
        let (js3, read, seq) = (js3.clone(), read.clone(), ack.sequence);
        async move {
            let Ok(s) = js3.get_stream("R3").await else {
                return false;
            };
            match s.get_raw_message(seq).await {
                Ok(m) => {
                    *read.lock().unwrap() = Some(m.payload);
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await;
    let read = read.lock().unwrap().clone();
    assert_eq!(read.as_deref(), Some(&b"from node 1"[..]));
    let info = js3
        .get_stream("R3")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    let cluster_info = info.cluster.expect("cluster info");
    assert_eq!(
        cluster_info.replicas.len() + 1,
        3,
        "a leader and two replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarts_on_its_own_store_and_port() {
    let server = NatsServer::builder()
        .bin(nats_server_bin())
        .start()
        .await
        .unwrap();
    let (url, pid) = (server.url().to_string(), server.pid());
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    js.create_stream(stream::Config {
        name: "KEEP".into(),
        subjects: vec!["keep.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    publish(&js, "keep.a", serde_json::json!({"n": 1})).await;
    let server = server.restart().await.expect("restarts");
    assert_eq!(server.url(), url);
    assert_ne!(server.pid(), pid);
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut s = js.get_stream("KEEP").await.expect("the stream survived");
    assert_eq!(s.info().await.unwrap().state.messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lame_duck_mode_refuses_new_clients_and_kill_stops_at_once() {
    let mut nats = Nats::start().await;
    let url = nats.url();
    assert!(answers_info(&url).await);
    // A client keeps it in lame duck (a server without clients exits at once).
    let _client = nats.client().await;
    nats.server().lame_duck();
    eventually(T, "no new client is accepted", || {
        let url = url.clone();
        async move { !answers_info(&url).await }
    })
    .await;
    assert!(nats.server().is_running(), "still closing its clients");
    nats.server().kill();
    assert!(!nats.server().is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_blocks_of_conf_are_what_nats_server_enforces() {
    use hms_sync::nats_server::conf;
    let refused = |url: String, opts: async_nats::ConnectOptions| async move {
        tokio::time::timeout(Duration::from_secs(5), opts.connect(url))
            .await
            .map_or(true, |r| r.is_err())
    };
    let users = NatsServer::builder()
        .bin(nats_server_bin())
        .config_text(conf::users(&[("ops", "s3cret")]))
        .start()
        .await
        .unwrap();
    let url = users.url().to_string();
    assert!(refused(url.clone(), async_nats::ConnectOptions::new()).await);
    assert!(
        !refused(
            url,
            async_nats::ConnectOptions::with_user_and_password("ops".into(), "s3cret".into())
        )
        .await
    );
    let token = NatsServer::builder()
        .bin(nats_server_bin())
        .config_text(format!(
            "{}{}",
            conf::token("t0ken"),
            conf::lame_duck(Duration::from_secs(30), Duration::from_secs(1))
        ))
        .start()
        .await
        .unwrap();
    let url = token.url().to_string();
    assert!(refused(url.clone(), async_nats::ConnectOptions::new()).await);
    assert!(!refused(url, async_nats::ConnectOptions::with_token("t0ken".into())).await);
}
