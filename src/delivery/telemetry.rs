//! What a connector's deliveries tell the world: one typed call per delivery event
//! ([`Telemetry::filtered`], [`Telemetry::delivered`], [`Telemetry::failed`],
//! [`Telemetry::parked`]) records its metrics and its status numbers together, so a count is
//! never kept in one place and forgotten in the other.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::clock::now_rfc3339;
use crate::metrics::ConnectorMetrics;
use crate::outcome::{fail_reason, Outcome};

/// How many recent failures a connector remembers for status pages.
pub const RECENT_FAILURES: usize = 20;

/// Counters, latencies and recent errors of one connector, as status pages show them;
/// outlives actor restarts and redeploys.
#[derive(Default)]
pub struct ConnectorStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub parked: AtomicU64,
    pub filtered: AtomicU64,
    /// Deliveries being handled now (see [`InProcess`]).
    pub in_process: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Publish-to-2xx latency in microseconds (this process's deliveries): since the start,
    /// and since the charts last read it ([`ConnectorStats::window_p99_ms`]).
    latency_us: Mutex<Option<Latency>>,
    /// The most recent failures, newest last (at most [`RECENT_FAILURES`]).
    pub recent_failures: Mutex<VecDeque<FailureNote>>,
}

/// The latency histograms of a connector.
struct Latency {
    total: hdrhistogram::Histogram<u64>,
    window: hdrhistogram::Histogram<u64>,
}

/// One failure as status pages show it.
#[derive(Debug, Clone, Serialize)]
pub struct FailureNote {
    pub at: String,
    pub error: String,
    pub url: String,
}

impl ConnectorStats {
    fn observe_latency(&self, ms: f64) {
        let Ok(mut slot) = self.latency_us.lock() else {
            return;
        };
        if slot.is_none() {
            // 1 µs .. 1 h, 2 significant digits: a few kB per connector (twice).
            let new = || hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2).ok();
            *slot = new()
                .zip(new())
                .map(|(total, window)| Latency { total, window });
        }
        if let Some(h) = slot.as_mut() {
            let us = ((ms * 1000.0) as u64).max(1);
            h.total.saturating_record(us);
            h.window.saturating_record(us);
        }
    }

    /// p99 latency (ms) of the deliveries since the previous call (none: `None`), then a new
    /// window starts: what the status page's charts sample.
    pub fn window_p99_ms(&self) -> Option<f64> {
        let mut slot = self.latency_us.lock().ok()?;
        let h = &mut slot.as_mut()?.window;
        if h.is_empty() {
            return None;
        }
        let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
        h.reset();
        Some(p99)
    }

    /// (p50, p99) latency in milliseconds, when anything was delivered.
    pub fn latency_p50_p99(&self) -> Option<(f64, f64)> {
        let h = self.latency_us.lock().ok()?;
        let h = &h.as_ref()?.total;
        if h.is_empty() {
            return None;
        }
        Some((
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        ))
    }

    fn error(&self, url: &str, error: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(format!("{url}: {error}"));
        }
        if let Ok(mut r) = self.recent_failures.lock() {
            if r.len() >= RECENT_FAILURES {
                r.pop_front();
            }
            r.push_back(FailureNote {
                at: now_rfc3339(),
                error: error.to_string(),
                url: url.to_string(),
            });
        }
    }
}

/// Counts one delivery as in process for as long as it lives (also when its task is aborted).
pub struct InProcess(Arc<ConnectorStats>);

impl InProcess {
    pub fn new(stats: &Arc<ConnectorStats>) -> InProcess {
        stats.in_process.fetch_add(1, Ordering::Relaxed);
        InProcess(stats.clone())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.0.in_process.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connector's metrics and status numbers, recorded together.
pub struct Telemetry {
    pub metrics: ConnectorMetrics,
    pub stats: Arc<ConnectorStats>,
}

impl Telemetry {
    pub fn new(connector_id: &str, stats: Arc<ConnectorStats>) -> Telemetry {
        Telemetry {
            metrics: ConnectorMetrics::new(connector_id),
            stats,
        }
    }

    /// The filter excluded an event (acked at once).
    pub fn filtered(&self) {
        self.metrics.filtered.increment(1);
        self.stats.filtered.fetch_add(1, Ordering::Relaxed);
    }

    /// An event was delivered, `latency_ms` after it was published.
    pub fn delivered(&self, latency_ms: f64) {
        self.metrics.latency.record(latency_ms);
        self.stats.observe_latency(latency_ms);
        self.metrics.ok.increment(1);
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt failed (`error` describes `outcome`); `retried`: it will be attempted again.
    pub fn failed(&self, outcome: &Outcome, url: &str, error: &str, retried: bool) {
        self.metrics.fail(fail_reason(outcome));
        if retried {
            self.metrics.retry.increment(1);
        }
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        self.stats.error(url, error);
    }

    /// An event was durably parked.
    pub fn parked(&self) {
        self.metrics.parked.increment(1);
        self.stats.parked.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_p99_covers_the_deliveries_since_the_last_reading() {
        let s = ConnectorStats::default();
        assert_eq!(s.window_p99_ms(), None);
        for _ in 0..100 {
            s.observe_latency(2.0);
        }
        let p99 = s.window_p99_ms().unwrap();
        assert!((1.9..=2.1).contains(&p99), "{p99}");
        assert_eq!(s.window_p99_ms(), None, "a new window starts");
        s.observe_latency(50.0);
        let p99 = s.window_p99_ms().unwrap();
        assert!((49.0..=51.0).contains(&p99), "{p99}");
        let (_, total_p99) = s.latency_p50_p99().unwrap();
        assert!(
            total_p99 > 2.0 && total_p99 <= 51.0,
            "the total keeps everything"
        );
    }
}
