//! Several `hms-sync up` instances on the same NATS: per-key order holds across all of them,
//! also when the instance that delivers a keyed connector is killed with SIGKILL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::json;

use crate::fleet::Instance;
use crate::harness::*;

/// One request a keyed target saw: its key and update number, when it started and was
/// answered, and the status it got.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    n: u64,
    start: Instant,
    end: Instant,
    status: u16,
}

/// A loopback target that answers after a random 1-20 ms, with 10 % of 503s, and records
/// every request with its timing.
#[derive(Clone)]
struct KeyedTarget {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl KeyedTarget {
    async fn start() -> KeyedTarget {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |body: Bytes| {
            let log = log.clone();
            async move {
                let start = Instant::now();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let wait = 1 + rand::random::<u64>() % 20;
                tokio::time::sleep(Duration::from_millis(wait)).await; // the target's answer time
                let status = if rand::random::<f64>() < 0.1 {
                    503
                } else {
                    200
                };
                log.lock().unwrap().push(Seen {
                    key: v["key"].as_str().unwrap_or_default().to_string(),
                    n: v["n"].as_u64().unwrap_or(u64::MAX),
                    start,
                    end: Instant::now(),
                    status,
                });
                StatusCode::from_u16(status).unwrap()
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        KeyedTarget { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn delivered(&self) -> usize {
        let seen = self.seen();
        let ok: std::collections::HashSet<(String, u64)> = seen
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| (s.key.clone(), s.n))
            .collect();
        ok.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_across_three_instances_and_a_kill_9() {
    init_logs();
    let nats = Nats::start().await;
    let target = KeyedTarget::start().await;
    let connector = format!(
        "id: keyed.many.v1\ntype: outbound\ntrigger:\n  topic: keyed.many\n  orderingKey: \"{{{{ key }}}}\"\nmap:\n  to:\n    url: \"http://{}/items/{{key}}\"\n    method: PUT\n    body:\n      key: \"{{{{ key }}}}\"\n      n: \"{{{{ n }}}}\"\nretry:\n  max: 50\n  backoffMs: 20\n  maxBackoffMs: 200\n",
        target.addr
    );
    let setup = Setup::new(
        &nats,
        &[("c.yaml", connector)],
        "delivery:\n  ackWaitMs: 2000\n  pinTimeoutMs: 2000\n",
    );
    // The stream and the consumer exist before anything is published.
    let rt = setup.start().await;
    rt.shutdown().await;
    let mut instances: Vec<Instance> = (0..3).map(|_| Instance::start(&setup)).collect();
    for i in &instances {
        eventually(Duration::from_secs(30), "instance ready", || i.ready()).await;
    }
    let (keys, updates) = (10, 100);
    let js = async_nats::jetstream::new(nats.client().await);
    publish_many(
        &js,
        "keyed.many",
        (0..updates).flat_map(|n| (0..keys).map(move |k| json!({"key": format!("k{k}"), "n": n}))),
    )
    .await;
    eventually(Duration::from_secs(60), "a third delivered", || async {
        target.delivered() >= keys * updates / 3
    })
    .await;
    // Kill -9 the instance delivering (the one holding the pin).
    let mut busiest = 0;
    let mut most = -1.0;
    for (i, inst) in instances.iter().enumerate() {
        let d = inst.delivered("keyed.many.v1").await;
        if d > most {
            (busiest, most) = (i, d);
        }
    }
    assert!(most > 0.0, "one instance delivers");
    let mut killed = instances.remove(busiest);
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();
    eventually(
        Duration::from_secs(90),
        "every update delivered",
        || async { target.delivered() == keys * updates },
    )
    .await;
    let mut after_kill = 0.0;
    for inst in &instances {
        after_kill += inst.delivered("keyed.many.v1").await;
    }
    assert!(after_kill > 0.0, "another instance took over");
    let seen = target.seen();
    let mut per_key: HashMap<&str, Vec<&Seen>> = HashMap::new();
    for s in &seen {
        per_key.entry(s.key.as_str()).or_default().push(s);
    }
    assert_eq!(per_key.len(), keys);
    for (key, mut reqs) in per_key {
        reqs.sort_by_key(|s| s.start);
        // No request of a key started before the previous one was answered.
        for w in reqs.windows(2) {
            assert!(
                w[1].start >= w[0].end,
                "key {key}: update {} started before update {} was answered",
                w[1].n,
                w[0].n
            );
        }
        // The successful ones are in order. After the kill, the events the killed instance
        // had delivered but whose acks had not reached the server yet (acks are sent without
        // waiting for the server, so a key may have more than one) come back and are delivered
        // again, in order, before the key goes on: a repeat goes back only to updates already
        // delivered, and no update reaches the target for the first time before an earlier one.
        let ok: Vec<u64> = reqs
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.n)
            .collect();
        let mut first_seen = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, n) in ok.iter().enumerate() {
            let repeat = !seen.insert(*n);
            if !repeat {
                first_seen.push(*n);
            }
            if i > 0 && *n < ok[i - 1] {
                assert!(repeat, "key {key}: successes out of order: {ok:?}");
            }
        }
        assert_eq!(
            first_seen,
            (0..updates as u64).collect::<Vec<_>>(),
            "key {key}: first deliveries out of order or missing: {ok:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_breaker_for_every_instance_one_probe_at_a_time_one_alert() {
    let (nats, target) = nats_and_target().await;
    target.set_delay(Duration::from_millis(300));
    let down = target.outage();
    let config = format!(
        "delivery:\n  pullBatch: 4\n  maxInFlight: 4\nendpoints:\n  \"http://{}\":\n    breaker: {{ failures: 5, probeIntervalMs: 500 }}\n",
        target.addr
    );
    let setup = Setup::new(
        &nats,
        &[(
            "c.yaml",
            simple_connector(
                "broken.v1",
                "broken.in",
                &target,
                "retry:\n  max: 1000\n  backoffMs: 50\n  maxBackoffMs: 200\n",
            ),
        )],
        &config,
    );
    let rt = setup.start().await;
    rt.shutdown().await;
    let client = nats.client().await;
    let mut alerts = client.subscribe("hitl.review.requested").await.unwrap();
    let seen: Arc<Mutex<Vec<(Instant, serde_json::Value)>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(m) = alerts.next().await {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            log.lock().unwrap().push((Instant::now(), v));
        }
    });
    let kinds = |kind: &str| -> Vec<Instant> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["kind"] == kind)
            .map(|(t, _)| *t)
            .collect()
    };
    let instances: Vec<Instance> = (0..3).map(|_| Instance::start(&setup)).collect();
    for i in &instances {
        eventually(Duration::from_secs(30), "instance ready", || i.ready()).await;
    }
    let js = async_nats::jetstream::new(client.clone());
    publish_many(&js, "broken.in", numbered("e", 0..60)).await;
    eventually(Duration::from_secs(30), "the breaker opened", || async {
        !kinds("endpoint.paused").is_empty()
    })
    .await;
    // Every instance has heard of the open breaker by then.
    let settled = kinds("endpoint.paused")[0] + Duration::from_millis(500);
    // While open, every instance holds back: the requests that start now are probes, one at
    // a time for all three instances (each is answered after 300 ms, and the next one may
    // start only after that and the probe interval; two at once would start closer).
    let probes = || -> Vec<Instant> {
        let mut p: Vec<Instant> = target
            .requests()
            .iter()
            .filter(|r| r.at > settled)
            .map(|r| r.at)
            .collect();
        p.sort();
        p
    };
    eventually(Duration::from_secs(30), "three probes", || async {
        probes().len() >= 3
    })
    .await;
    for w in probes().windows(2) {
        assert!(
            w[1].duration_since(w[0]) >= Duration::from_millis(300),
            "two probes overlapped: started {:?} apart",
            w[1].duration_since(w[0])
        );
    }
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    // Distinct events, not successful requests: a duplicate must not stand in for a lost event.
    eventually(Duration::from_secs(60), "all delivered", || async {
        target.delivered_ids().len() == 60
    })
    .await;
    let want: std::collections::BTreeSet<String> = (0..60).map(|i| format!("e{i}")).collect();
    assert_eq!(target.delivered_ids(), want);
    assert_eq!(kinds("endpoint.paused").len(), 1, "paused once for all");
    assert_eq!(kinds("endpoint.resumed").len(), 1, "resumed once for all");
    let mut delivering = 0;
    for i in &instances {
        if i.delivered("broken.v1").await > 0.0 {
            delivering += 1;
        }
    }
    assert!(
        delivering >= 2,
        "the instances resumed ({delivering} delivered)"
    );
}
