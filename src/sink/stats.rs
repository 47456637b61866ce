//! What a sink counts: requests, deliveries, duplicates, per-key order, latency.
//!
//! Duplicates are told by key, the latency comes from the flood stamp. Pure: no I/O, no clock
//! of its own.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use crate::flood::Stamp;

/// Where the per-key order of a request is read: the key names the entity (a permit id), and
/// the flood stamp's sequence gives the order its events were published in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderBy {
    /// An HTTP header of the request (`X-Permit-Id`).
    Header(String),
    /// A field of the JSON body (`permitId`, or a dotted path `permit.id`).
    Field(String),
}

impl std::str::FromStr for OrderBy {
    type Err = std::convert::Infallible;
    /// `header:NAME` or `field:PATH`; a bare word is a body field.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.split_once(':') {
            Some(("header", h)) => OrderBy::Header(h.to_string()),
            Some(("field", f)) => OrderBy::Field(f.to_string()),
            _ => OrderBy::Field(s.to_string()),
        })
    }
}

/// One request as the statistics see it.
#[derive(Debug, Clone, Default)]
pub struct Arrival<'a> {
    /// The dedup key (`Idempotency-Key`; without one, the stamp's sequence).
    pub key: Option<&'a str>,
    /// The per-key order key (see [`OrderBy`]).
    pub order_key: Option<&'a str>,
    /// The flood stamp, when the request carries one.
    pub stamp: Option<Stamp>,
    /// The status answered.
    pub status: u16,
    /// Arrival time, Unix nanoseconds.
    pub at_ns: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct KeyState {
    seen: u32,
    ok: bool,
}

/// Counters of one sink (or one phase of a bench), fed with [`Stats::record`].
#[derive(Debug, Clone)]
pub struct Stats {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    keys: HashMap<u64, KeyState>,
    duplicates: u64,
    after_success: u64,
    delivered: u64,
    order_last: HashMap<u64, u64>,
    order_violations: u64,
    latency_us: hdrhistogram::Histogram<u64>,
    first_ns: u64,
    last_ns: u64,
    /// (sequence, latency µs) of each first success, when kept.
    timeline: Option<Vec<(u64, u64)>>,
}

fn hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn histogram() -> hdrhistogram::Histogram<u64> {
    crate::flood::latency_histogram()
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new(false)
    }
}

impl Stats {
    /// Empty statistics; `timeline` keeps each delivery's (sequence, latency) for
    /// [`Stats::worst_ms_per_chunk`] (16 bytes an event).
    pub fn new(timeline: bool) -> Stats {
        Stats {
            requests: 0,
            by_status: BTreeMap::new(),
            keys: HashMap::new(),
            duplicates: 0,
            after_success: 0,
            delivered: 0,
            order_last: HashMap::new(),
            order_violations: 0,
            latency_us: histogram(),
            first_ns: u64::MAX,
            last_ns: 0,
            timeline: timeline.then(Vec::new),
        }
    }

    /// Counts one request. A request is a *duplicate* when its key came before (a retry or a
    /// redelivery); its event is *delivered* the first time it is answered 2xx, and only then
    /// are its latency and order recorded.
    pub fn record(&mut self, a: &Arrival<'_>) {
        self.requests += 1;
        *self.by_status.entry(a.status).or_default() += 1;
        let ok = (200..300).contains(&a.status);
        let seq_key;
        let key = match (a.key, a.stamp) {
            (Some(k), _) => Some(k),
            (None, Some(Stamp { seq: Some(s), .. })) => {
                seq_key = format!("#{s}");
                Some(seq_key.as_str())
            }
            _ => None,
        };
        let first_success = match key {
            Some(k) => {
                let st = self.keys.entry(hash(k)).or_default();
                if st.seen > 0 {
                    self.duplicates += 1;
                }
                if st.ok {
                    self.after_success += 1;
                }
                st.seen = st.seen.saturating_add(1);
                let first = ok && !st.ok;
                st.ok |= ok;
                first
            }
            None => ok,
        };
        if !first_success {
            return;
        }
        self.delivered += 1;
        self.first_ns = self.first_ns.min(a.at_ns);
        self.last_ns = self.last_ns.max(a.at_ns);
        if let Some(stamp) = a.stamp {
            let us = a.at_ns.saturating_sub(stamp.sent_ns) / 1000;
            self.latency_us.saturating_record(us.max(1));
            if let (Some(t), Some(seq)) = (&mut self.timeline, stamp.seq) {
                t.push((seq, us));
            }
            if let (Some(k), Some(seq)) = (a.order_key, stamp.seq) {
                let last = self.order_last.entry(hash(k)).or_insert(seq);
                if seq < *last {
                    self.order_violations += 1;
                } else {
                    *last = seq;
                }
            }
        }
    }

    /// Requests so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Events delivered (first 2xx per key) so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Requests answered with `status`.
    pub fn answered(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Per chunk of `per` consecutive sequences (a second of a flood at `per` events/s), the
    /// worst latency in ms; needs `timeline`.
    pub fn worst_ms_per_chunk(&self, per: u64) -> Vec<f64> {
        let Some(t) = &self.timeline else {
            return vec![];
        };
        let per = per.max(1);
        let mut out: Vec<f64> = Vec::new();
        for &(seq, us) in t {
            let i = (seq / per) as usize;
            if out.len() <= i {
                out.resize(i + 1, 0.0);
            }
            out[i] = out[i].max(us as f64 / 1000.0);
        }
        out
    }

    /// A snapshot for printing.
    pub fn summary(&self) -> Summary {
        let h = &self.latency_us;
        let ms = |v: u64| v as f64 / 1000.0;
        let latency = (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        });
        let seconds = if self.last_ns > self.first_ns {
            (self.last_ns - self.first_ns) as f64 / 1e9
        } else {
            0.0
        };
        Summary {
            requests: self.requests,
            delivered: self.delivered,
            duplicates: self.duplicates,
            after_success: self.after_success,
            by_status: self.by_status.clone(),
            order_violations: self.order_violations,
            seconds,
            delivered_per_s: if seconds > 0.0 {
                self.delivered as f64 / seconds
            } else {
                0.0
            },
            latency,
        }
    }
}

/// End-to-end latency (flood stamp to arrival) of the deliveries, in ms.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Deliveries measured (those carrying a stamp).
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
}

/// What a sink has seen, as printed by `hms-sync sink` (and its `--json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Every request received.
    pub requests: u64,
    /// Events delivered: distinct keys answered 2xx (requests without a key: each 2xx).
    pub delivered: u64,
    /// Requests whose key came before: retries after a failure, and redeliveries.
    pub duplicates: u64,
    /// Of those, requests whose key had already been answered 2xx (the target saw the event
    /// twice: at-least-once).
    pub after_success: u64,
    /// Requests per status answered.
    pub by_status: BTreeMap<u16, u64>,
    /// Deliveries whose stamp sequence was lower than an earlier delivery of the same order key.
    pub order_violations: u64,
    /// First to last delivery.
    pub seconds: f64,
    /// Deliveries per second over `seconds`.
    pub delivered_per_s: f64,
    /// None until a delivery carried a stamp.
    pub latency: Option<Latency>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(key: &str, seq: u64, status: u16, sent: u64, at_ns: u64) -> Arrival<'_> {
        Arrival {
            key: Some(key),
            order_key: Some("k"),
            stamp: Some(Stamp {
                seq: Some(seq),
                sent_ns: sent,
            }),
            status,
            at_ns,
        }
    }

    #[test]
    fn retries_are_duplicates_and_the_first_success_is_the_delivery() {
        let mut s = Stats::new(true);
        s.record(&at("a", 0, 503, 0, 1_000_000));
        s.record(&at("a", 0, 200, 0, 3_000_000));
        s.record(&at("b", 1, 200, 0, 2_000_000));
        s.record(&at("b", 1, 200, 0, 9_000_000));
        let sum = s.summary();
        assert_eq!(sum.requests, 4);
        assert_eq!(sum.delivered, 2);
        assert_eq!(sum.duplicates, 2);
        assert_eq!(sum.after_success, 1);
        assert_eq!(sum.by_status.get(&503), Some(&1));
        let l = sum.latency.unwrap();
        assert_eq!(l.count, 2);
        assert!((l.max_ms - 3.0).abs() < 0.01, "{l:?}");
        assert_eq!(s.worst_ms_per_chunk(1), vec![3.0, 2.0]);
    }

    #[test]
    fn a_lower_sequence_after_a_higher_one_of_the_same_key_is_an_order_violation() {
        let mut s = Stats::default();
        s.record(&at("e2", 2, 200, 0, 1));
        s.record(&at("e1", 1, 200, 0, 2));
        s.record(&at("e3", 3, 200, 0, 3));
        assert_eq!(s.summary().order_violations, 1);
    }

    #[test]
    fn without_a_key_the_stamp_sequence_tells_duplicates() {
        let mut s = Stats::default();
        let a = Arrival {
            stamp: Some(Stamp {
                seq: Some(7),
                sent_ns: 0,
            }),
            status: 200,
            ..Default::default()
        };
        s.record(&a);
        s.record(&a);
        let sum = s.summary();
        assert_eq!((sum.delivered, sum.duplicates), (1, 1));
    }

    #[test]
    fn order_by_names_a_header_or_a_field() {
        assert_eq!(
            "header:X-Key".parse::<OrderBy>().unwrap(),
            OrderBy::Header("X-Key".into())
        );
        assert_eq!(
            "permitId".parse::<OrderBy>().unwrap(),
            OrderBy::Field("permitId".into())
        );
    }
}
