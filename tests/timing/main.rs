//! Timing-sensitive tests, in their own binary so that they run while no other test loads the
//! machine (cargo runs test binaries one after another).

#[path = "../it/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::{Duration, Instant};

use harness::*;

/// The most of `times` (in order) within one second of any one of them.
fn most_in_one_second(times: &[Instant]) -> usize {
    let mut worst = 0;
    for (i, start) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        worst = worst.max(n);
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_in_every_one_second_window() {
    let (nats, target) = nats_and_target().await;
    let limited = simple_connector(
        "limited.v1",
        "limited.in",
        &target,
        "rateLimit: { perSecond: 20, burst: 5 }\n",
    );
    let (_setup, rt, js) = start_with(&nats, &[("c.yaml", limited)], "").await;
    publish_many(&js, "limited.in", numbered("e", 0..300)).await;
    eventually(Duration::from_secs(40), "all 300 delivered", || async {
        target.count() == 300
    })
    .await;
    let times: Vec<Instant> = target.requests().iter().map(|r| r.at).collect();
    // Every window of one second starting at any arrival holds at most 20 (+1 for timer jitter).
    let worst = most_in_one_second(&times);
    assert!(worst <= 21, "{worst} requests within one second");
    let span = times[299].duration_since(times[0]);
    assert!(
        span >= Duration::from_secs(13),
        "300 at 20/s take at least ~14 s, took {span:?}"
    );
    rt.shutdown().await;
}

#[path = "../it/fleet.rs"]
mod fleet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rate_budget_for_three_instances() {
    let (nats, target) = nats_and_target().await;
    let limited = simple_connector(
        "shared.budget.v1",
        "shared.budget.in",
        &target,
        "rateLimit: { perSecond: 10 }\n",
    );
    let setup = Setup::new(
        &nats,
        &[("c.yaml", limited)],
        "delivery:\n  pullBatch: 4\n  maxInFlight: 4\n",
    );
    let rt = setup.start().await;
    rt.shutdown().await;
    let instances: Vec<fleet::Instance> = (0..3).map(|_| fleet::Instance::start(&setup)).collect();
    for i in &instances {
        eventually(Duration::from_secs(30), "instance ready", || i.ready()).await;
    }
    let js = async_nats::jetstream::new(nats.client().await);
    publish_many(&js, "shared.budget.in", numbered("e", 0..300)).await;
    // Distinct events, not requests: a duplicate must not stand in for a lost event.
    eventually(Duration::from_secs(60), "all 300 delivered", || async {
        target.delivered_ids().len() == 300
    })
    .await;
    let want: std::collections::BTreeSet<String> = (0..300).map(|i| format!("e{i}")).collect();
    assert_eq!(target.delivered_ids(), want);
    let mut times: Vec<Instant> = target.requests().iter().map(|r| r.at).collect();
    times.sort();
    let worst = most_in_one_second(&times);
    assert!(
        worst <= 12,
        "{worst} requests within one second, all instances together"
    );
    let mut delivering = 0;
    for i in &instances {
        if i.delivered("shared.budget.v1").await > 0.0 {
            delivering += 1;
        }
    }
    assert!(
        delivering >= 2,
        "the instances share the work ({delivering} delivered)"
    );
}
