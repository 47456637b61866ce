//! What a connector's deliveries tell the world: one typed call per delivery event
//! ([`Telemetry::filtered`], [`Telemetry::delivered`], [`Telemetry::failed`],
//! [`Telemetry::parked`]) records its metrics and its status numbers together, so a count is
//! never kept in one place and forgotten in the other.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::now_rfc3339;
use crate::logging::CONSOLE;
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

/// A connector's metrics and status numbers, recorded together; and its console lines.
pub struct Telemetry {
    pub metrics: ConnectorMetrics,
    pub stats: Arc<ConnectorStats>,
    console: Arc<Mutex<ConsoleLines>>,
}

/// The console lines of one connector's deliveries in the current second: up to the limit
/// printed one by one; beyond it counted by how they ended, and printed as one summary line
/// when the second is over (`delivery.consoleLinesPerSecond`). Pure: the caller brings the
/// time and prints what it is told to.
struct ConsoleLines {
    limit: u32,
    second: Option<Instant>,
    printed: u32,
    folded: BTreeMap<Ended, u64>,
}

/// How a delivery ended, as a folded line is counted: by status code, or by the described
/// failure.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ended {
    Status(u16),
    Other(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Status(code) => {
                let reason = http::StatusCode::from_u16(*code)
                    .ok()
                    .and_then(|s| s.canonical_reason());
                match reason {
                    Some(r) => write!(f, "{code} {r}"),
                    None => write!(f, "{code}"),
                }
            }
            Ended::Other(s) => f.write_str(s),
        }
    }
}

/// What to do with one delivery's console line.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Print it (after the summary of the second that just ended, if any).
    Print { summary: Option<String> },
    /// Counted in the second's summary; `first`: the first one folded this second, so the
    /// caller schedules the summary for `due`.
    Fold {
        summary: Option<String>,
        first: bool,
        due: Instant,
    },
}

impl ConsoleLines {
    fn new(limit: u32) -> ConsoleLines {
        ConsoleLines {
            limit,
            second: None,
            printed: 0,
            folded: BTreeMap::new(),
        }
    }

    /// One delivery's line at `now`; `how` names how it ended (asked only when folding).
    fn note(&mut self, now: Instant, how: impl FnOnce() -> Ended) -> Verdict {
        let mut summary = None;
        let second = match self.second {
            Some(s) if now.duration_since(s) < Duration::from_secs(1) => s,
            _ => {
                summary = self.take_summary();
                self.second = Some(now);
                self.printed = 0;
                now
            }
        };
        if self.limit == 0 || self.printed < self.limit {
            self.printed += 1;
            return Verdict::Print { summary };
        }
        let first = self.folded.is_empty();
        *self.folded.entry(how()).or_insert(0) += 1;
        Verdict::Fold {
            summary,
            first,
            due: second + Duration::from_secs(1),
        }
    }

    /// `... and N more in that second: n1 × how1, n2 × how2`, when lines were folded.
    fn take_summary(&mut self) -> Option<String> {
        if self.folded.is_empty() {
            return None;
        }
        let total: u64 = self.folded.values().sum();
        let mut parts: Vec<(Ended, u64)> = std::mem::take(&mut self.folded).into_iter().collect();
        parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let parts: Vec<String> = parts.iter().map(|(h, n)| format!("{n} × {h}")).collect();
        Some(format!(
            "... and {total} more deliveries in that second: {} (delivery.consoleLinesPerSecond: {})",
            parts.join(", "),
            self.limit
        ))
    }
}

/// A task that prints a second's summary when that second is over.
pub type Summary = Box<dyn FnOnce() + Send>;

/// What to do with one delivery's console line.
pub struct Console {
    /// Print it (else it is counted in its second's summary).
    pub print: bool,
    /// When set: the second's summary, to run when that second is over.
    pub summary_at: Option<(Instant, Summary)>,
}

impl Telemetry {
    /// `lines_per_second`: console lines printed one by one per second (0: every line).
    pub fn new(connector_id: &str, stats: Arc<ConnectorStats>, lines_per_second: u32) -> Telemetry {
        Telemetry {
            metrics: ConnectorMetrics::new(connector_id),
            stats,
            console: Arc::new(Mutex::new(ConsoleLines::new(lines_per_second))),
        }
    }

    /// Whether one attempt's console line is printed (`how` is how it ended, asked for only
    /// when lines are folded); prints the summary of a second that just ended. When this
    /// starts folding a second's lines it returns when that second is over and a task to print
    /// its summary then (the caller has the retry-timer actor run it).
    pub fn console(&self, id: &str, how: impl FnOnce() -> Ended) -> Console {
        let Ok(verdict) = self.console.lock().map(|mut c| c.note(Instant::now(), how)) else {
            return Console {
                print: true,
                summary_at: None,
            };
        };
        let (summary, print, schedule) = match verdict {
            Verdict::Print { summary } => (summary, true, None),
            Verdict::Fold {
                summary,
                first,
                due,
            } => (summary, false, first.then_some(due)),
        };
        if let Some(s) = summary {
            tracing::info!(target: CONSOLE, connector = %id, "[{id}] {s}");
        }
        let summary_at = schedule.map(|due| {
            let (lines, id) = (self.console.clone(), id.to_string());
            let task: Summary = Box::new(move || {
                let summary = lines.lock().ok().and_then(|mut c| c.take_summary());
                if let Some(s) = summary {
                    tracing::info!(target: CONSOLE, connector = %id, "[{id}] {s}");
                }
            });
            (due, task)
        });
        Console { print, summary_at }
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

    fn ok() -> Ended {
        Ended::Status(200)
    }

    #[test]
    fn lines_up_to_the_limit_print_then_fold_into_one_summary_per_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = ConsoleLines::new(2);
        assert_eq!(c.note(at(0), ok), Verdict::Print { summary: None });
        assert_eq!(c.note(at(10), ok), Verdict::Print { summary: None });
        let due = at(1000);
        assert_eq!(
            c.note(at(20), ok),
            Verdict::Fold {
                summary: None,
                first: true,
                due
            }
        );
        assert_eq!(
            c.note(at(30), || Ended::Status(503)),
            Verdict::Fold {
                summary: None,
                first: false,
                due
            }
        );
        assert_eq!(
            c.note(at(999), ok),
            Verdict::Fold {
                summary: None,
                first: false,
                due
            }
        );
        // The next second prints again, after the last one's summary (when no timer took it).
        assert_eq!(
            c.note(at(1000), ok),
            Verdict::Print {
                summary: Some(
                    "... and 3 more deliveries in that second: 2 × 200 OK, \
                     1 × 503 Service Unavailable (delivery.consoleLinesPerSecond: 2)"
                        .into()
                )
            }
        );
        assert_eq!(c.take_summary(), None);
    }

    #[test]
    fn zero_prints_every_line_and_never_asks_how_it_ended() {
        let t0 = Instant::now();
        let mut c = ConsoleLines::new(0);
        for i in 0..1000 {
            let v = c.note(t0 + Duration::from_micros(i), || {
                unreachable!("not folding")
            });
            assert_eq!(v, Verdict::Print { summary: None });
        }
    }

    #[test]
    fn a_summary_taken_by_its_timer_is_not_printed_twice() {
        let t0 = Instant::now();
        let mut c = ConsoleLines::new(1);
        c.note(t0, ok);
        c.note(t0, ok);
        assert!(c.take_summary().is_some(), "the timer prints it");
        assert_eq!(
            c.note(t0 + Duration::from_secs(2), ok),
            Verdict::Print { summary: None }
        );
    }

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
