//! Cost of the pure per-event work (filter + request building) for the seed connector.
//!
//! Run: `cargo bench --bench render`. Prints nanoseconds per event.

use std::time::Instant;

use hms_sync::connector::{parse, AnyConnector};
use hms_sync::filter::EventMeta;
use hms_sync::request;
use hms_sync::template::Secrets;

fn main() {
    // `cargo test --all-targets` runs bench binaries too (without `--bench`): not a bench run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let AnyConnector::Outbound(c) =
        parse("gis-ddot.yaml", include_str!("../connectors/gis-ddot.yaml"))
            .unwrap_or_else(|e| panic!("{e}"))
    else {
        panic!("outbound expected")
    };
    std::env::set_var("ARC_TOKEN", "bench-token");
    let payload = br#"{"permitId":"RW-481","agency":"DDOT","startDate":"2024-05-10","endDate":"2024-05-12","status":"APPROVED"}"#;
    let meta = EventMeta::default();
    let n = 200_000u32;
    let start = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..n {
        let event: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
        if let Some(f) = &c.trigger.filter {
            let _ = f.evaluate(&event, &meta);
        }
        if let Ok(r) = request::build(&c, &event, Some("k"), Secrets::Env) {
            bytes += r.body.map_or(0, |b| b.len());
        }
    }
    let per = start.elapsed().as_nanos() as f64 / f64::from(n);
    println!("parse + filter + build: {per:.0} ns/event ({:.0} events/s on one core), {bytes} body bytes", 1e9 / per);
}
