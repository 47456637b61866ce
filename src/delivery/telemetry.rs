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
    /// Publish-to-2xx latency in microseconds (this process's deliveries).
    latency_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
    /// The most recent failures, newest last (at most [`RECENT_FAILURES`]).
    pub recent_failures: Mutex<VecDeque<FailureNote>>,
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
            // 1 µs .. 1 h, 2 significant digits: a few kB per connector.
            *slot = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2).ok();
        }
        if let Some(h) = slot.as_mut() {
            h.saturating_record(((ms * 1000.0) as u64).max(1));
        }
    }

    /// A copy of the latency histogram (microseconds), for charts that take differences.
    pub fn latency_snapshot(&self) -> Option<hdrhistogram::Histogram<u64>> {
        self.latency_us.lock().ok()?.clone()
    }

    /// (p50, p99) latency in milliseconds, when anything was delivered.
    pub fn latency_p50_p99(&self) -> Option<(f64, f64)> {
        let h = self.latency_us.lock().ok()?;
        let h = h.as_ref()?;
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
