//! The flood publisher's logic, for `hms-sync flood` and the flood bench.
//!
//! Synthetic events from a template, the end-to-end latency stamp, pacing, and the publish
//! statistics. No I/O: the publishing itself is `Bus::flood` (src/bus/flood.rs).
//!
//! ## The stamp
//! Every flood event carries two top-level JSON fields: [`SEQ_FIELD`] (`floodSeq`, 0, 1, 2, ...)
//! and [`SENT_FIELD`] (`floodSentAtNs`, Unix time in nanoseconds when it was published). A
//! connector forwards them, best as the headers [`SEQ_HEADER`] and [`SENT_HEADER`]
//! (`X-Flood-Seq: "{{ floodSeq }}"`, `X-Flood-Sent-At-Ns: "{{ floodSentAtNs }}"`) or as body
//! fields of the same names; the sink reads the headers first, then the body.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Body field of a flood event: its sequence in the flood, from 0.
pub const SEQ_FIELD: &str = "floodSeq";
/// Body field of a flood event: when it was published, Unix nanoseconds.
pub const SENT_FIELD: &str = "floodSentAtNs";
/// Request header the sink reads the sequence from (else the body field [`SEQ_FIELD`]).
pub const SEQ_HEADER: &str = "X-Flood-Seq";
/// Request header the sink reads the publish time from (else the body field [`SENT_FIELD`]).
pub const SENT_HEADER: &str = "X-Flood-Sent-At-Ns";
/// Body field that pads an event to `--payload-bytes`.
pub const PAD_FIELD: &str = "floodPad";

/// Why a flood cannot be planned (a bad argument: exit 2).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// `--vary` is not `FIELD=seq|seq%N|uuid|now`.
    #[error("--vary {0}: expected FIELD=seq, FIELD=seq%N, FIELD=uuid or FIELD=now")]
    BadVary(String),
    /// The event template is not a JSON object.
    #[error("the event must be a JSON object, got {0}")]
    NotAnObject(String),
    /// `--rate` is not a positive number.
    #[error("--rate {0}: expected a positive number of events per second")]
    BadRate(f64),
    /// `--count` is 0.
    #[error("--count must be at least 1")]
    NoEvents,
    /// `--window` is 0.
    #[error("--window must be at least 1")]
    NoWindow,
    /// No subject to publish on.
    #[error("a topic is needed")]
    NoSubject,
    /// A subject with wildcards or spaces.
    #[error("{0}: a flood publishes on a plain subject (no spaces, no * or >)")]
    BadSubject(String),
}

/// Unix time now, in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A histogram of microseconds, 1 µs to 1 h, 3 significant digits.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid constant bounds")
}

/// The latency stamp of one event, as read back at the far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Its sequence in the flood (absent when only the time was forwarded).
    pub seq: Option<u64>,
    /// When it was published, Unix nanoseconds.
    pub sent_ns: u64,
}

impl Stamp {
    /// From the header values [`SEQ_HEADER`] and [`SENT_HEADER`].
    pub fn from_headers(seq: Option<&str>, sent: Option<&str>) -> Option<Stamp> {
        let sent_ns = sent?.trim().parse().ok()?;
        Some(Stamp {
            seq: seq.and_then(|s| s.trim().parse().ok()),
            sent_ns,
        })
    }

    /// From the fields [`SEQ_FIELD`] and [`SENT_FIELD`] of a JSON text, found by a scan (no
    /// parse, so it is cheap); a number or a string of digits.
    pub fn scan(body: &[u8]) -> Option<Stamp> {
        let sent_ns = scan_u64(body, SENT_FIELD)?;
        Some(Stamp {
            seq: scan_u64(body, SEQ_FIELD),
            sent_ns,
        })
    }
}

/// The unsigned number after `"field":` in a JSON text (`123` or `"123"`).
pub fn scan_u64(body: &[u8], field: &str) -> Option<u64> {
    let needle = format!("\"{field}\"");
    let at = find(body, needle.as_bytes())? + needle.len();
    let mut rest = body.get(at..)?;
    let skip_ws = |r: &mut &[u8]| {
        while let Some((c, tail)) = r.split_first() {
            if !c.is_ascii_whitespace() {
                break;
            }
            *r = tail;
        }
    };
    skip_ws(&mut rest);
    rest = rest.strip_prefix(b":")?;
    skip_ws(&mut rest);
    if let Some(tail) = rest.strip_prefix(b"\"") {
        rest = tail;
    }
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(rest.get(..digits)?).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a varied field holds in event `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaryKind {
    /// The sequence, 0, 1, 2, ... (a number).
    Seq,
    /// The sequence modulo n (n keys, each taking every n-th event: for per-key order tests).
    SeqMod(u64),
    /// A random UUID v4 (a string).
    Uuid,
    /// The publish time, RFC 3339 (a string).
    Now,
}

/// `--vary FIELD=seq|seq%N|uuid|now`: a top-level field that changes from event to event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vary {
    /// The field's name.
    pub field: String,
    /// What it holds.
    pub kind: VaryKind,
}

impl FromStr for Vary {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PlanError::BadVary(s.to_string());
        let (field, kind) = s.split_once('=').ok_or_else(bad)?;
        let field = field.trim();
        if field.is_empty() {
            return Err(bad());
        }
        let kind = match kind.trim() {
            "seq" => VaryKind::Seq,
            "uuid" => VaryKind::Uuid,
            "now" => VaryKind::Now,
            other => match other.strip_prefix("seq%").map(str::parse::<u64>) {
                Some(Ok(n)) if n > 0 => VaryKind::SeqMod(n),
                _ => return Err(bad()),
            },
        };
        Ok(Vary {
            field: field.to_string(),
            kind,
        })
    }
}

/// A random UUID v4, hyphenated.
pub fn uuid_v4() -> String {
    let mut b = rand::random::<u128>().to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The events of a flood: a JSON object (from `--from EVENT.json`, or `{}`), its varied
/// fields, the stamp, and optional padding. Rendering splices text (the base is serialised
/// once), so a flood's publisher spends its time publishing.
#[derive(Debug, Clone)]
pub struct EventTemplate {
    head: String,
    empty: bool,
    vary: Vec<Vary>,
    pad_to: usize,
}

impl EventTemplate {
    /// From a JSON object; the varied, stamp and pad fields are taken out of it (they are
    /// written per event).
    pub fn new(base: &serde_json::Value, vary: Vec<Vary>) -> Result<EventTemplate, PlanError> {
        let serde_json::Value::Object(map) = base else {
            let mut shown = base.to_string();
            shown.truncate(60);
            return Err(PlanError::NotAnObject(shown));
        };
        let mut map = map.clone();
        for name in vary
            .iter()
            .map(|v| v.field.as_str())
            .chain([SEQ_FIELD, SENT_FIELD, PAD_FIELD])
        {
            map.remove(name);
        }
        let text = serde_json::Value::Object(map.clone()).to_string();
        let head = text.strip_suffix('}').unwrap_or("{").to_string();
        Ok(EventTemplate {
            head,
            empty: map.is_empty(),
            vary,
            pad_to: 0,
        })
    }

    /// Pads every event with a [`PAD_FIELD`] to at least `bytes` bytes.
    pub fn pad_to(mut self, bytes: usize) -> EventTemplate {
        self.pad_to = bytes;
        self
    }

    /// Event `seq`, published at `sent_ns`.
    pub fn render(&self, seq: u64, sent_ns: u64) -> Bytes {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(self.head.len() + 96 + self.pad_to);
        s.push_str(&self.head);
        let mut sep = !self.empty;
        let mut field = |s: &mut String, name: &str| {
            if sep {
                s.push(',');
            }
            sep = true;
            s.push_str(&serde_json::Value::String(name.to_string()).to_string());
            s.push(':');
        };
        for v in &self.vary {
            field(&mut s, &v.field);
            let _ = match v.kind {
                VaryKind::Seq => write!(s, "{seq}"),
                VaryKind::SeqMod(n) => write!(s, "{}", seq % n),
                VaryKind::Uuid => write!(s, "\"{}\"", uuid_v4()),
                VaryKind::Now => write!(s, "\"{}\"", rfc3339(sent_ns)),
            };
        }
        field(&mut s, SEQ_FIELD);
        let _ = write!(s, "{seq}");
        field(&mut s, SENT_FIELD);
        let _ = write!(s, "{sent_ns}");
        let pad_overhead = PAD_FIELD.len() + 6; // ,"floodPad":""}
        if self.pad_to > s.len() + pad_overhead {
            field(&mut s, PAD_FIELD);
            s.push('"');
            let n = self.pad_to - s.len() - 2;
            s.extend(std::iter::repeat_n('x', n));
            s.push('"');
        }
        s.push('}');
        Bytes::from(s)
    }
}

fn rfc3339(ns: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .map(crate::clock::format)
        .unwrap_or_default()
}

/// What to publish: `count` events round-robin over `subjects`, at `rate` per second (as fast
/// as the server acks them when `None`), with at most `window` acks outstanding.
#[derive(Debug, Clone)]
pub struct FloodPlan {
    /// Subjects, used in turn.
    pub subjects: Vec<String>,
    /// Events in all.
    pub count: u64,
    /// Events per second; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// Publishes whose ack is awaited at once.
    pub window: usize,
}

/// Default acks in flight of a flood.
pub const DEFAULT_WINDOW: usize = 4096;

impl FloodPlan {
    /// Checks the plan (every problem here is a bad argument).
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.subjects.is_empty() {
            return Err(PlanError::NoSubject);
        }
        for s in &self.subjects {
            let bad = s.is_empty()
                || s.contains(char::is_whitespace)
                || s.split('.').any(|t| t.is_empty() || t == "*" || t == ">");
            if bad {
                return Err(PlanError::BadSubject(s.clone()));
            }
        }
        if self.count == 0 {
            return Err(PlanError::NoEvents);
        }
        if self.window == 0 {
            return Err(PlanError::NoWindow);
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(PlanError::BadRate(r));
            }
        }
        Ok(())
    }

    /// How long after the start event `seq` is due (`None`: at once).
    pub fn due(&self, seq: u64) -> Option<Duration> {
        self.rate.map(|r| Duration::from_secs_f64(seq as f64 / r))
    }

    /// The subject of event `seq`.
    pub fn subject(&self, seq: u64) -> &str {
        let i = (seq % self.subjects.len().max(1) as u64) as usize;
        self.subjects.get(i).map_or("", String::as_str)
    }
}

/// Publish statistics, fed as acks come back.
#[derive(Debug, Clone)]
pub struct PublishStats {
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    ack_us: hdrhistogram::Histogram<u64>,
}

impl Default for PublishStats {
    fn default() -> Self {
        PublishStats {
            acked: 0,
            errors: 0,
            first_error: None,
            ack_us: latency_histogram(),
        }
    }
}

impl PublishStats {
    /// An event acknowledged `took` after it was published.
    pub fn acked(&mut self, took: Duration) {
        self.acked += 1;
        self.ack_us
            .saturating_record((took.as_micros() as u64).max(1));
    }

    /// An event that was not stored.
    pub fn failed(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    /// Events acknowledged so far.
    pub fn acked_count(&self) -> u64 {
        self.acked
    }

    /// The report of a flood that took `elapsed` (first publish to last ack).
    pub fn report(&self, plan: &FloodPlan, elapsed: Duration) -> FloodReport {
        let ms = |v: u64| v as f64 / 1000.0;
        let h = &self.ack_us;
        let seconds = elapsed.as_secs_f64();
        FloodReport {
            subjects: plan.subjects.clone(),
            count: plan.count,
            rate: plan.rate,
            published: self.acked,
            errors: self.errors,
            seconds,
            published_per_s: if seconds > 0.0 {
                self.acked as f64 / seconds
            } else {
                0.0
            },
            ack_p50_ms: ms(h.value_at_quantile(0.5)),
            ack_p99_ms: ms(h.value_at_quantile(0.99)),
            ack_max_ms: ms(h.max()),
            first_error: self.first_error.clone(),
        }
    }
}

/// What a flood did, as `hms-sync flood` prints it (and its `--json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FloodReport {
    /// Subjects published on.
    pub subjects: Vec<String>,
    /// Events asked for.
    pub count: u64,
    /// Events per second asked for (`null`: as fast as possible).
    pub rate: Option<f64>,
    /// Events JetStream acknowledged.
    pub published: u64,
    /// Events not stored (publish or ack failed).
    pub errors: u64,
    /// First publish to last ack.
    pub seconds: f64,
    /// `published / seconds`.
    pub published_per_s: f64,
    /// Publish to JetStream ack, median.
    pub ack_p50_ms: f64,
    /// Publish to JetStream ack, 99th percentile.
    pub ack_p99_ms: f64,
    /// Publish to JetStream ack, worst.
    pub ack_max_ms: f64,
    /// The first error, when there was one.
    pub first_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_is_the_template_with_its_varied_fields_and_the_stamp() {
        let t = EventTemplate::new(
            &json!({"permitId": "RW-1", "agency": "DDOT", "floodSeq": 9}),
            vec![
                "permitId=seq%3".parse().unwrap(),
                "id=uuid".parse().unwrap(),
            ],
        )
        .unwrap();
        let e: serde_json::Value =
            serde_json::from_slice(&t.render(4, 1_700_000_000_000_000_000)).unwrap();
        assert_eq!(e["agency"], "DDOT");
        assert_eq!(e["permitId"], 1);
        assert_eq!(e["floodSeq"], 4);
        assert_eq!(e["floodSentAtNs"], 1_700_000_000_000_000_000u64);
        assert_eq!(e["id"].as_str().unwrap().len(), 36);
        assert_eq!(&e["id"].as_str().unwrap()[14..15], "4");
    }

    #[test]
    fn an_empty_template_pads_to_the_size_asked() {
        let t = EventTemplate::new(&json!({}), vec!["at=now".parse().unwrap()])
            .unwrap()
            .pad_to(256);
        let b = t.render(0, 1_700_000_000_000_000_000);
        assert_eq!(b.len(), 256);
        let e: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert!(e["at"].as_str().unwrap().starts_with("2023-11-14T"));
        assert_eq!(
            Stamp::scan(&b),
            Some(Stamp {
                seq: Some(0),
                sent_ns: 1_700_000_000_000_000_000
            })
        );
    }

    #[test]
    fn the_stamp_is_read_from_a_number_or_a_string() {
        assert_eq!(
            scan_u64(br#"{"floodSeq": "12", "x":1}"#, SEQ_FIELD),
            Some(12)
        );
        assert_eq!(scan_u64(br#"{"floodSeq":7}"#, SEQ_FIELD), Some(7));
        assert_eq!(scan_u64(br#"{"other":7}"#, SEQ_FIELD), None);
        assert_eq!(
            Stamp::from_headers(Some("3"), Some("100")),
            Some(Stamp {
                seq: Some(3),
                sent_ns: 100
            })
        );
        assert_eq!(Stamp::from_headers(Some("3"), None), None);
    }

    #[test]
    fn bad_arguments_are_named() {
        for bad in ["x", "=seq", "x=seq%0", "x=every"] {
            assert!(bad.parse::<Vary>().is_err(), "{bad}");
        }
        assert!(EventTemplate::new(&json!([1]), vec![]).is_err());
        let plan = |subject: &str, count, rate, window| FloodPlan {
            subjects: vec![subject.to_string()],
            count,
            rate,
            window,
        };
        assert_eq!(plan("a.b", 1, None, 1).validate(), Ok(()));
        assert_eq!(
            plan("a.*", 1, None, 1).validate(),
            Err(PlanError::BadSubject("a.*".into()))
        );
        assert_eq!(plan("a", 0, None, 1).validate(), Err(PlanError::NoEvents));
        assert_eq!(
            plan("a", 1, Some(0.0), 1).validate(),
            Err(PlanError::BadRate(0.0))
        );
        assert_eq!(plan("a", 1, None, 0).validate(), Err(PlanError::NoWindow));
        assert_eq!(
            plan("a", 1, Some(4.0), 1).due(2),
            Some(Duration::from_millis(500))
        );
    }
}
