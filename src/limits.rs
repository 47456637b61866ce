//! Pure rules of the state that every instance shares per endpoint (stored in KV
//! `hms_sync_limits` by the endpoint actors): the rate budget's grant log and the circuit
//! breaker. Times are milliseconds since the Unix epoch, from the instances' clocks.

use serde::{Deserialize, Serialize};

/// The last grants of an endpoint's rate budget, across every instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Grant times, oldest first; at most `cap` of them are kept.
    pub at: Vec<u64>,
}

impl Grants {
    /// Reserves up to `want` grants for now or later such that no window of `window_ms` holds
    /// more than `cap` grants (all instances together), and returns their times. Never more
    /// than `cap` at once, so a reservation never reaches further than one window ahead.
    pub fn reserve(&mut self, cap: usize, window_ms: u64, now_ms: u64, want: usize) -> Vec<u64> {
        let cap = cap.max(1);
        let mut out = Vec::with_capacity(want.min(cap));
        for _ in 0..want.min(cap) {
            let mut t = now_ms;
            if self.at.len() >= cap {
                t = t.max(self.at[self.at.len() - cap] + window_ms);
            }
            if let Some(last) = self.at.last() {
                t = t.max(*last);
            }
            if t > now_ms + window_ms {
                break; // far enough ahead: ask again later
            }
            self.at.push(t);
            out.push(t);
        }
        let excess = self.at.len().saturating_sub(cap);
        self.at.drain(..excess);
        out
    }
}

/// An endpoint's circuit breaker as every instance sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Breaker {
    /// Open: no instance calls the endpoint except with the one probe.
    pub open: bool,
    /// When it opened (ms), and which instance opened it.
    pub since: u64,
    pub by: String,
    /// Why it opened.
    #[serde(default)]
    pub why: String,
    /// The instance that holds the probe and until when (ms): one probe at a time.
    #[serde(default)]
    pub probe_by: Option<String>,
    #[serde(default)]
    pub probe_until: u64,
    /// No probe before this time (ms).
    #[serde(default)]
    pub next_probe: u64,
}

/// What an instance may do with an open breaker now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Take the probe (write the returned state first: whoever writes it first has it).
    Take(Breaker),
    /// Someone else probes, or it is not time yet: wait until this time (ms).
    Wait(u64),
}

impl Breaker {
    /// Opened now by `by`; the first probe at `now + interval`.
    pub fn opened(by: &str, why: &str, now_ms: u64, interval_ms: u64) -> Breaker {
        Breaker {
            open: true,
            since: now_ms,
            by: by.to_string(),
            why: why.to_string(),
            probe_by: None,
            probe_until: 0,
            next_probe: now_ms + interval_ms,
        }
    }

    /// Whether `me` may send the probe now. A probe that was not settled by its deadline
    /// (its instance died) is free again.
    pub fn probe(&self, me: &str, now_ms: u64, interval_ms: u64) -> Probe {
        if !self.open {
            return Probe::Wait(now_ms);
        }
        let held = self.probe_by.is_some() && now_ms < self.probe_until;
        if held && self.probe_by.as_deref() != Some(me) {
            return Probe::Wait(self.probe_until);
        }
        if now_ms < self.next_probe {
            return Probe::Wait(self.next_probe);
        }
        let mut taken = self.clone();
        taken.probe_by = Some(me.to_string());
        taken.probe_until = now_ms + interval_ms.max(1000) * 2;
        Probe::Take(taken)
    }

    /// The probe failed: free it; the next one after `interval`.
    pub fn probe_failed(&self, now_ms: u64, interval_ms: u64) -> Breaker {
        let mut b = self.clone();
        b.probe_by = None;
        b.probe_until = 0;
        b.next_probe = now_ms + interval_ms;
        b
    }

    /// Closed (a probe succeeded).
    pub fn closed() -> Breaker {
        Breaker::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_window_holds_more_than_the_cap() {
        let mut g = Grants::default();
        // Ten at once, then the eleventh one window after the first.
        let first = g.reserve(10, 1100, 1_000, 12);
        assert_eq!(first, vec![1_000; 10], "at most the cap at once");
        let more = g.reserve(10, 1100, 1_050, 3);
        assert_eq!(more, vec![2_100, 2_100, 2_100]);
        // Another instance asking later shares the same log.
        let later = g.reserve(10, 1100, 2_200, 10);
        assert_eq!(later, [vec![2_200; 7], vec![3_200; 3]].concat());
        let mut all: Vec<u64> = first.into_iter().chain(more).chain(later).collect();
        all.sort();
        for (i, t) in all.iter().enumerate() {
            let in_window = all[i..].iter().take_while(|u| **u < t + 1100).count();
            assert!(in_window <= 10, "{in_window} grants within 1100 ms of {t}");
        }
    }

    #[test]
    fn the_log_keeps_only_the_cap() {
        let mut g = Grants::default();
        for now in (0..100).map(|i| i * 1_000) {
            g.reserve(5, 1100, now, 5);
        }
        assert_eq!(g.at.len(), 5);
    }

    #[test]
    fn one_probe_at_a_time_and_a_dead_probe_is_freed() {
        let b = Breaker::opened("a", "20 failures", 0, 500);
        assert_eq!(b.probe("b", 100, 500), Probe::Wait(500), "not yet");
        let Probe::Take(taken) = b.probe("b", 600, 500) else {
            panic!("b may probe")
        };
        assert_eq!(taken.probe_by.as_deref(), Some("b"));
        assert_eq!(taken.probe("c", 700, 500), Probe::Wait(taken.probe_until));
        // b died with the probe: after its deadline c may take it.
        assert!(matches!(
            taken.probe("c", taken.probe_until, 500),
            Probe::Take(_)
        ));
        let failed = taken.probe_failed(800, 500);
        assert_eq!(failed.probe("c", 900, 500), Probe::Wait(1_300));
        assert!(!Breaker::closed().open);
    }
}
