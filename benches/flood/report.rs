//! The flood bench's results and their table.
//!
//! One row per scenario and system, ratios between systems, the median of repeated rounds.

use std::fmt::Write as _;

use hms_sync::sink::Sink;
use serde::Serialize;

use crate::scenarios::Scenario;

#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseResult {
    pub scenario: String,
    pub system: String,
    pub events: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub answered_503: u64,
    pub order_violations: u64,
    pub timed_out: bool,
    /// First to last arrival at the target (ceiling: first to last ack).
    pub seconds: f64,
    pub events_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU seconds of the system under test (hms-sync child process; baseline threads).
    pub cpu_s: f64,
    pub cpu_us_per_event: f64,
    pub nats_cpu_s: f64,
    pub target_cpu_s: f64,
    pub peak_rss_mb: Option<f64>,
    pub startup_s: Option<f64>,
    pub idle_cpu_pct_of_core: Option<f64>,
    pub idle_nats_cpu_pct_of_core: Option<f64>,
    pub idle_rss_mb: Option<f64>,
    /// `/readyz` with the idle connectors: (median, worst) ms.
    pub readyz_ms: Option<(f64, f64)>,
    /// Lines hms-sync wrote to its log (stderr).
    pub log_lines: Option<u64>,
    /// events/s relative to the ceiling and to the naive loop of the same scenario.
    pub vs_ceiling: Option<f64>,
    pub vs_naive: Option<f64>,
    pub p99_vs_naive: Option<f64>,
    pub cpu_per_event_vs_naive: Option<f64>,
    pub note: String,
    /// Steady: the worst publish->target latency of each second of publishing (ms).
    pub worst_ms_per_second: Vec<f64>,
}

impl PhaseResult {
    pub fn from_sink(sc: &Scenario, system: &str, sink: &Sink, timed_out: bool) -> PhaseResult {
        let s = sink.summary();
        let l = s.latency.clone();
        let ms = |f: fn(&hms_sync::sink::Latency) -> f64| l.as_ref().map_or(0.0, f);
        PhaseResult {
            scenario: sc.name.into(),
            system: system.into(),
            events: sc.events,
            delivered: s.delivered,
            duplicates: s.after_success,
            answered_503: s.by_status.get(&503).copied().unwrap_or(0),
            order_violations: s.order_violations,
            timed_out,
            seconds: s.seconds,
            events_per_s: s.delivered_per_s,
            p50_ms: ms(|l| l.p50_ms),
            p90_ms: ms(|l| l.p90_ms),
            p99_ms: ms(|l| l.p99_ms),
            max_ms: ms(|l| l.max_ms),
            worst_ms_per_second: sc
                .rate
                .map(|r| sink.worst_ms_per_chunk(r.max(1.0) as u64))
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    pub fn finish(&mut self, wall: f64) {
        if self.delivered > 0 {
            self.cpu_us_per_event = self.cpu_s * 1e6 / self.delivered as f64;
        }
        eprintln!(
            "   {:<9} {:>9.0} events/s  p99 {:>8.2} ms  CPU {:>6.2} s  ({} of {} in {wall:.1} s{})",
            self.system,
            self.events_per_s,
            self.p99_ms,
            self.cpu_s,
            self.delivered,
            self.events,
            if self.timed_out { ", TIMED OUT" } else { "" }
        );
    }
}

pub fn add_ratios(rs: &mut [PhaseResult]) {
    let find = |name: &str| {
        rs.iter()
            .find(|r| r.system == name && r.delivered > 0)
            .cloned()
    };
    let (ceiling, naive) = (find("ceiling"), find("naive"));
    for r in rs.iter_mut().filter(|r| r.system == "hms-sync") {
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        if let Some(c) = &ceiling {
            r.vs_ceiling = ratio(r.events_per_s, c.events_per_s);
        }
        if let Some(n) = &naive {
            r.vs_naive = ratio(r.events_per_s, n.events_per_s);
            r.p99_vs_naive = ratio(r.p99_ms, n.p99_ms);
            r.cpu_per_event_vs_naive = ratio(r.cpu_us_per_event, n.cpu_us_per_event);
        }
    }
}

pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

pub fn print_table(rs: &[PhaseResult]) {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n{:<8} {:<9} {:>9} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>7} {:>7} {:>7}",
        "scenario",
        "system",
        "events/s",
        "x ceil",
        "x naiv",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "CPU s",
        "us/evt",
        "x naiv",
        "nats s",
        "tgt s",
        "RSS MB"
    );
    for r in rs {
        let _ = writeln!(
            t,
            "{:<8} {:<9} {:>9.0} {:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>7.1} {:>6} {:>7.2} {:>7.2} {:>7}{}",
            r.scenario,
            r.system,
            r.events_per_s,
            opt(r.vs_ceiling, 2),
            opt(r.vs_naive, 2),
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.cpu_s,
            r.cpu_us_per_event,
            opt(r.cpu_per_event_vs_naive, 2),
            r.nats_cpu_s,
            r.target_cpu_s,
            opt(r.peak_rss_mb, 1),
            if r.timed_out || r.delivered < r.events {
                format!("  ({} of {} delivered)", r.delivered, r.events)
            } else {
                String::new()
            }
        );
        let mut extra = Vec::new();
        if let Some(s) = r.startup_s {
            extra.push(format!("start-up {s:.2} s"));
        }
        if let Some((mid, worst)) = r.readyz_ms {
            extra.push(format!("/readyz median {mid:.1} ms, worst {worst:.1} ms"));
        }
        if let Some(c) = r.idle_cpu_pct_of_core {
            extra.push(format!(
                "idle CPU {c:.2} % of a core (nats-server {} %), idle RSS {} MB",
                opt(r.idle_nats_cpu_pct_of_core, 2),
                opt(r.idle_rss_mb, 1)
            ));
        }
        if r.answered_503 > 0 {
            extra.push(format!("{} answered 503", r.answered_503));
        }
        if r.scenario == "ordered" {
            extra.push(format!("{} order violations", r.order_violations));
        }
        if r.duplicates > 0 {
            extra.push(format!("{} duplicates", r.duplicates));
        }
        if let Some(l) = r.log_lines {
            extra.push(format!("{l} log lines"));
        }
        if !r.worst_ms_per_second.is_empty() {
            let w: Vec<String> = r
                .worst_ms_per_second
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect();
            extra.push(format!("worst ms per second: {}", w.join(" ")));
        }
        if !r.note.is_empty() {
            extra.push(r.note.clone());
        }
        if !extra.is_empty() {
            let _ = writeln!(t, "{:<18} {}", "", extra.join("; "));
        }
    }
    let _ = writeln!(
        t,
        "\nevents/s: first to last arrival at the target (ceiling: ack); latency: publish -> target \
         (backlog scenarios include the wait in the backlog). x ceil / x naiv: hms-sync relative \
         to the ceiling and the naive loop of the same scenario. CPU s: the system under test only \
         (hms-sync child process; baseline runtime threads); nats-server and the target share the \
         2 cores and are shown apart. RSS: hms-sync's VmHWM."
    );
    print!("{t}");
}

/// Per system, the round with the median result (events/s; `by_p99`: p99 latency), carrying the
/// medians of the per-round ratios (each ratio is between systems of the same round, seconds
/// apart) and a note with the spread. One round: unchanged.
pub fn median_rounds(rounds: Vec<Vec<PhaseResult>>, by_p99: bool) -> Vec<PhaseResult> {
    if rounds.len() <= 1 {
        return rounds.into_iter().flatten().collect();
    }
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let systems: Vec<String> = rounds[0].iter().map(|r| r.system.clone()).collect();
    let mut out = Vec::new();
    for system in systems {
        let mut of: Vec<PhaseResult> = rounds
            .iter()
            .filter_map(|rs| rs.iter().find(|r| r.system == system).cloned())
            .collect();
        let key = |r: &PhaseResult| if by_p99 { r.p99_ms } else { r.events_per_s };
        of.sort_by(|a, b| key(a).total_cmp(&key(b)));
        let Some(mut m) = of.get(of.len() / 2).cloned() else {
            continue;
        };
        let ratios = |f: fn(&PhaseResult) -> Option<f64>| median(of.iter().filter_map(f).collect());
        m.vs_ceiling = ratios(|r| r.vs_ceiling);
        m.vs_naive = ratios(|r| r.vs_naive);
        m.p99_vs_naive = ratios(|r| r.p99_vs_naive);
        m.cpu_per_event_vs_naive = ratios(|r| r.cpu_per_event_vs_naive);
        let list = |f: fn(&PhaseResult) -> f64, digits: usize| {
            of.iter()
                .map(|r| format!("{:.digits$}", f(r)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut note = format!(
            "median of {} rounds; events/s {}; p99 ms {}; us/evt {}",
            of.len(),
            list(|r| r.events_per_s, 0),
            list(|r| r.p99_ms, 1),
            list(|r| r.cpu_us_per_event, 1)
        );
        if system == "hms-sync" {
            let per_round = of
                .iter()
                .map(|r| opt(r.vs_naive, 2))
                .collect::<Vec<_>>()
                .join(" ");
            note.push_str(&format!("; x naiv per round {per_round}"));
        }
        m.note = if m.note.is_empty() {
            note
        } else {
            format!("{}; {note}", m.note)
        };
        out.push(m);
    }
    out
}
