//! Timing-sensitive tests, in their own binary so that they run while no other test loads the
//! machine (cargo runs test binaries one after another).

#[path = "../it/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::{Duration, Instant};

use serde_json::json;

use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_in_every_one_second_window() {
    init_logs();
    let nats = Nats::start().await;
    let target = Target::start().await;
    let limited = simple_connector(
        "limited.v1",
        "limited.in",
        &target,
        "rateLimit: { perSecond: 20, burst: 5 }\n",
    );
    let (_setup, rt, js) = start_with(&nats, &[("c.yaml", limited)], "").await;
    publish_many(
        &js,
        "limited.in",
        (0..300).map(|i| json!({"id": format!("e{i}"), "n": i})),
    )
    .await;
    eventually(Duration::from_secs(40), "all 300 delivered", || async {
        target.count() == 300
    })
    .await;
    let times: Vec<Instant> = target.requests().iter().map(|r| r.at).collect();
    // Every window of one second starting at any arrival holds at most 20 (+1 for timer jitter).
    let mut worst = 0;
    for (i, start) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        worst = worst.max(n);
    }
    assert!(worst <= 21, "{worst} requests within one second");
    let span = times[299].duration_since(times[0]);
    assert!(
        span >= Duration::from_secs(13),
        "300 at 20/s take at least ~14 s, took {span:?}"
    );
    rt.shutdown().await;
}
