//! What one attempt leaves for the settle stage, and the attempts of each event this process
//! has seen (for its parked job).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::outcome::Outcome;
use crate::parked::Attempt;
use crate::wire::Method;

/// One attempt, ended: how, where, and what to tell about it.
#[derive(Debug)]
pub struct Attempted {
    pub outcome: Outcome,
    /// The URL as shown (secrets masked): logs, audit, status, parked job.
    pub url: String,
    /// The method of the request it ended on (the lookup's, when the lookup failed).
    pub method: Method,
    /// `traceparent` of the request sent (empty when none was sent).
    pub traceparent: String,
    /// The start of the answer's body, for the parked job.
    pub body: String,
    /// How long the request took (none was sent: `None`).
    pub latency: Option<Duration>,
    /// When preparing this delivery began (the floor of its latency).
    pub started: Instant,
    /// The console line, after `[connector]` (a request was sent, or a lookup failed).
    pub line: Option<String>,
}

impl Attempted {
    /// An attempt that ended before any request: the event cannot be sent.
    pub fn invalid(message: String, url: String, method: Method, started: Instant) -> Attempted {
        Attempted {
            outcome: Outcome::Invalid(message),
            url,
            method,
            traceparent: String::new(),
            body: String::new(),
            latency: None,
            started,
            line: None,
        }
    }
}

/// How a delivery ended, as far as its connector's pump is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Acked: delivered, filtered out, or durably parked.
    Done,
    /// NAKed: JetStream offers it again after this delay.
    Retry(Duration),
}

/// Attempts seen by this process, by stream sequence (for the parked job). A courtesy: the
/// events themselves are on JetStream, and the attempt count is JetStream's delivery count.
#[derive(Default)]
pub struct History {
    attempts: Mutex<HashMap<u64, Vec<Attempt>>>,
    /// Events whose parking failed: parked again when offered again, without another call.
    parks: Mutex<HashMap<u64, PendingPark>>,
}

/// An event judged for parking whose park failed (`HMS_SYNC_PARKED` refused it): why, where,
/// and how many parks failed in a row.
#[derive(Debug, Clone)]
pub struct PendingPark {
    pub error: String,
    pub url: String,
    pub failures: u32,
}

/// Events whose attempts are remembered at once; beyond, the memory is cleared.
const MAX_TRACKED: usize = 100_000;

impl History {
    /// Remembers an attempt of event `seq`.
    pub fn record(&self, seq: u64, a: Attempt) {
        let Ok(mut map) = self.attempts.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(&seq) {
            map.clear();
        }
        map.entry(seq).or_default().push(a);
    }

    /// Puts back the attempts of an event (parking it failed: it will be tried again).
    pub fn restore(&self, seq: u64, attempts: Vec<Attempt>) {
        if let Ok(mut map) = self.attempts.lock() {
            map.insert(seq, attempts);
        }
    }

    /// Remembers that parking event `seq` failed; returns how many times in a row.
    pub fn park_failed(&self, seq: u64, error: &str, url: &str) -> u32 {
        let Ok(mut map) = self.parks.lock() else {
            return 1;
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(&seq) {
            map.clear();
        }
        let p = map.entry(seq).or_insert_with(|| PendingPark {
            error: error.to_string(),
            url: url.to_string(),
            failures: 0,
        });
        p.failures += 1;
        p.failures
    }

    /// Whether event `seq` waits to be parked again (and why).
    pub fn pending_park(&self, seq: u64) -> Option<PendingPark> {
        self.parks.lock().ok()?.get(&seq).cloned()
    }

    /// Event `seq` is parked (or gone): nothing waits any more.
    pub fn parked(&self, seq: u64) {
        if let Ok(mut map) = self.parks.lock() {
            map.remove(&seq);
        }
    }

    /// Forgets event `seq`, returning its attempts.
    pub fn forget(&self, seq: u64) -> Vec<Attempt> {
        self.attempts
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&seq))
            .unwrap_or_default()
    }
}
