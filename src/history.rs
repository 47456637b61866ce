//! A bounded in-memory history of per-connector numbers (delivered/s, lag, p99 latency), for
//! the status page's charts. Pure: the sampler (`server::charts`) reads the numbers and the
//! clock, this keeps the last `capacity` samples of each connector.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// One sample of one connector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// When (Unix time, milliseconds).
    pub at_ms: i64,
    /// Events delivered per second since the previous sample.
    pub delivered_per_s: f64,
    /// Events not yet handed to the connector (JetStream's pending), when NATS answered.
    pub lag: Option<u64>,
    /// p99 publish-to-2xx latency of the deliveries since the previous sample (ms).
    pub p99_ms: Option<f64>,
}

/// The last samples of every connector.
#[derive(Debug, Clone)]
pub struct History {
    capacity: usize,
    series: BTreeMap<String, VecDeque<Sample>>,
}

impl History {
    /// Keeps at most `capacity` samples per connector (at least 2).
    pub fn new(capacity: usize) -> History {
        History {
            capacity: capacity.max(2),
            series: BTreeMap::new(),
        }
    }

    /// How many samples `window_ms` holds at one sample every `every_ms` (at most 1,000).
    pub fn capacity_for(window_ms: u64, every_ms: u64) -> usize {
        (window_ms / every_ms.max(1)).clamp(2, 1_000) as usize + 1
    }

    /// Adds a sample of connector `id`, dropping its oldest beyond the capacity.
    pub fn push(&mut self, id: &str, s: Sample) {
        let q = self.series.entry(id.to_string()).or_default();
        if q.len() >= self.capacity {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// Forgets connectors not in `ids` (undeployed).
    pub fn retain(&mut self, ids: &[&str]) {
        self.series.retain(|k, _| ids.contains(&k.as_str()));
    }

    /// Every connector's samples, oldest first.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<Sample>> {
        self.series
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().copied().collect()))
            .collect()
    }
}

/// Events per second between two readings of a counter `elapsed_ms` apart (a counter that went
/// down, e.g. after a restart of the numbers, counts from zero).
pub fn per_second(before: u64, now: u64, elapsed_ms: u64) -> f64 {
    if elapsed_ms == 0 {
        return 0.0;
    }
    let delta = if now >= before { now - before } else { now };
    delta as f64 * 1000.0 / elapsed_ms as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: i64) -> Sample {
        Sample {
            at_ms,
            delivered_per_s: 1.0,
            lag: Some(0),
            p99_ms: None,
        }
    }

    #[test]
    fn keeps_the_last_samples_per_connector() {
        let mut h = History::new(3);
        for t in 0..5 {
            h.push("a", s(t));
        }
        h.push("b", s(9));
        let snap = h.snapshot();
        assert_eq!(
            snap["a"].iter().map(|x| x.at_ms).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(snap["b"].len(), 1);
        h.retain(&["b"]);
        assert!(!h.snapshot().contains_key("a"));
        assert_eq!(History::capacity_for(900_000, 10_000), 91);
        assert_eq!(History::capacity_for(900_000, 1), 1_001);
    }

    #[test]
    fn rates_from_counter_readings() {
        assert_eq!(per_second(10, 30, 10_000), 2.0);
        assert_eq!(per_second(10, 4, 1_000), 4.0);
        assert_eq!(per_second(1, 2, 0), 0.0);
    }
}
