//! Per-key ordering (`trigger.orderingKey`), as a pure state machine over "lanes".
//!
//! Events with the same key are never in flight together and are attempted in stream order;
//! different keys run concurrently. When the event at the head of a lane is scheduled for a
//! retry (NAK with delay), the lane stays closed until JetStream offers that event again; later
//! events of the key wait in memory (kept alive with in-progress acks). A parked event ends its
//! turn like a delivered one, so it never blocks its key.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What to do with an arriving event.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// Start it now.
    Run(T),
    /// It waits behind an earlier event of its key.
    Held,
}

#[derive(Debug)]
struct Lane<T> {
    running: Option<u64>,
    /// The head event waiting for its redelivery: (stream sequence, give up waiting at).
    retrying: Option<(u64, Instant)>,
    queue: VecDeque<(u64, T)>,
}

/// All lanes of one connector. `T` is whatever the pump holds (a delivery).
#[derive(Debug)]
pub struct Lanes<T> {
    lanes: HashMap<String, Lane<T>>,
    /// How long past its due time a retried head may take to come back before its lane opens.
    grace: Duration,
}

impl<T> Lanes<T> {
    pub fn new(grace: Duration) -> Self {
        Lanes {
            lanes: HashMap::new(),
            grace,
        }
    }

    /// An event of `key` with stream sequence `seq` arrived.
    pub fn arrive(&mut self, key: &str, seq: u64, item: T, now: Instant) -> Arrival<T> {
        let lane = self.lanes.entry(key.to_string()).or_insert_with(|| Lane {
            running: None,
            retrying: None,
            queue: VecDeque::new(),
        });
        if lane.running.is_none() {
            match lane.retrying {
                Some((head, _)) if head == seq => {
                    lane.retrying = None;
                    lane.running = Some(seq);
                    return Arrival::Run(item);
                }
                Some((_, give_up)) if now >= give_up => lane.retrying = None,
                _ => {}
            }
            if lane.retrying.is_none() && lane.queue.is_empty() {
                lane.running = Some(seq);
                return Arrival::Run(item);
            }
        }
        if lane.running == Some(seq) || lane.queue.iter().any(|(s, _)| *s == seq) {
            // A redelivery of something we already hold (e.g. after a missed heartbeat).
            return Arrival::Held;
        }
        // Keep stream order inside the lane.
        let at = lane
            .queue
            .iter()
            .position(|(s, _)| *s > seq)
            .unwrap_or(lane.queue.len());
        lane.queue.insert(at, (seq, item));
        Arrival::Held
    }

    /// The running event of `key` ended. `retry_in`: it was NAKed with this delay (the lane
    /// waits for it); `None`: acked or parked (the next event of the key may run).
    pub fn finished(&mut self, key: &str, retry_in: Option<Duration>, now: Instant) -> Option<T> {
        let lane = self.lanes.get_mut(key)?;
        let seq = lane.running.take()?;
        if let Some(delay) = retry_in {
            lane.retrying = Some((seq, now + delay + self.grace));
            return None;
        }
        self.next(key)
    }

    fn next(&mut self, key: &str) -> Option<T> {
        let lane = self.lanes.get_mut(key)?;
        match lane.queue.pop_front() {
            Some((seq, item)) => {
                lane.running = Some(seq);
                Some(item)
            }
            None => {
                self.lanes.remove(key);
                None
            }
        }
    }

    /// Lanes whose retried head did not come back in time are opened: returns what may run.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let stuck: Vec<String> = self
            .lanes
            .iter()
            .filter(|(_, l)| {
                l.running.is_none() && l.retrying.is_some_and(|(_, give_up)| now >= give_up)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in stuck {
            if let Some(l) = self.lanes.get_mut(&key) {
                l.retrying = None;
            }
            out.extend(self.next(&key));
        }
        out
    }

    /// Everything waiting in memory (for in-progress heartbeats).
    pub fn held(&self) -> impl Iterator<Item = &T> {
        self.lanes
            .values()
            .flat_map(|l| l.queue.iter().map(|(_, t)| t))
    }

    /// Takes every waiting event out (the pump is stopping).
    pub fn drain(&mut self) -> Vec<T> {
        self.lanes
            .drain()
            .flat_map(|(_, l)| l.queue.into_iter().map(|(_, t)| t))
            .collect()
    }

    pub fn held_count(&self) -> usize {
        self.lanes.values().map(|l| l.queue.len()).sum()
    }

    /// Lanes whose head was scheduled again and has not come back yet.
    pub fn retrying_count(&self) -> usize {
        self.lanes
            .values()
            .filter(|l| l.running.is_none() && l.retrying.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_per_key_in_stream_order() {
        let now = Instant::now();
        let mut l = Lanes::new(Duration::from_secs(1));
        assert_eq!(l.arrive("a", 1, "a1", now), Arrival::Run("a1"));
        assert_eq!(l.arrive("b", 2, "b2", now), Arrival::Run("b2"));
        assert_eq!(l.arrive("a", 4, "a4", now), Arrival::Held);
        assert_eq!(l.arrive("a", 3, "a3", now), Arrival::Held);
        assert_eq!(l.held_count(), 2);
        assert_eq!(l.finished("a", None, now), Some("a3"));
        assert_eq!(l.finished("a", None, now), Some("a4"));
        assert_eq!(l.finished("a", None, now), None);
        assert_eq!(l.finished("b", None, now), None);
        assert_eq!(l.arrive("a", 5, "a5", now), Arrival::Run("a5"));
    }

    #[test]
    fn a_retried_head_keeps_its_lane_closed_until_it_comes_back() {
        let now = Instant::now();
        let mut l = Lanes::new(Duration::from_secs(1));
        assert_eq!(l.arrive("k", 1, "k1", now), Arrival::Run("k1"));
        assert_eq!(l.arrive("k", 2, "k2", now), Arrival::Held);
        assert_eq!(l.finished("k", Some(Duration::from_millis(100)), now), None);
        assert_eq!(l.arrive("k", 3, "k3", now), Arrival::Held);
        // The retried head is redelivered: it runs first.
        assert_eq!(l.arrive("k", 1, "k1 again", now), Arrival::Run("k1 again"));
        assert_eq!(l.finished("k", None, now), Some("k2"));
        assert_eq!(l.finished("k", None, now), Some("k3"));
    }

    #[test]
    fn a_head_that_never_comes_back_opens_the_lane_after_the_grace() {
        let now = Instant::now();
        let mut l = Lanes::new(Duration::from_secs(1));
        l.arrive("k", 1, "k1", now);
        l.arrive("k", 2, "k2", now);
        l.finished("k", Some(Duration::from_secs(1)), now);
        assert!(l.expire(now + Duration::from_millis(1500)).is_empty());
        assert_eq!(l.expire(now + Duration::from_millis(2500)), vec!["k2"]);
    }
}
