//! Pure audit-trail rules: record hashing and chain verification.
//!
//! A record is a JSON object. Its `hash` is `sha256(prev || canonical JSON of the record
//! without "hash")`, hex; canonical JSON = serde_json with sorted keys. Each record names its
//! `chain` (one per connector consumer and process run), its position `n` (1, 2, ...) and
//! `prev` (the previous record's hash; 64 zeros for the first).

use std::collections::HashMap;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Computes a record's hash (ignores any `hash` field it has).
pub fn hash_of(record: &Json) -> String {
    let mut body = record.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("hash");
    }
    let prev = record.get("prev").and_then(Json::as_str).unwrap_or(GENESIS);
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(serde_json::to_vec(&body).unwrap_or_default());
    hex::encode(h.finalize())
}

/// One line of an audit block read as an attempt's record: the record and its idempotency
/// key; `None` for other records (and for a line that is not a record).
pub fn attempt_record(line: &[u8]) -> Option<(Json, String)> {
    let r: Json = serde_json::from_slice(line).ok()?;
    let key = r["idempotencyKey"].as_str()?.to_string();
    (r["kind"] == "attempt").then_some((r, key))
}

/// Appends records to chains, remembering each chain's last hash and position.
#[derive(Debug, Default)]
pub struct Chainer {
    last: HashMap<String, (u64, String)>,
}

impl Chainer {
    /// Fills in `chain`, `n`, `prev` and `hash` of `record`.
    pub fn seal(&mut self, chain: &str, mut record: Json) -> Json {
        let (n, prev) = self
            .last
            .get(chain)
            .map(|(n, h)| (n + 1, h.clone()))
            .unwrap_or((1, GENESIS.to_string()));
        if let Some(o) = record.as_object_mut() {
            o.insert("chain".into(), Json::String(chain.to_string()));
            o.insert("n".into(), Json::from(n));
            o.insert("prev".into(), Json::String(prev));
        }
        let hash = hash_of(&record);
        if let Some(o) = record.as_object_mut() {
            o.insert("hash".into(), Json::String(hash.clone()));
        }
        self.last.insert(chain.to_string(), (n, hash));
        record
    }
}

/// A record that can write its own canonical form (keys sorted at every level, as
/// `serde_json` writes a parsed record back) with `chain`, `n` and `prev` filled in.
pub trait Sealable {
    fn canonical(self, chain: &str, n: u64, prev: &str) -> Vec<u8>;
}

impl Sealable for Json {
    fn canonical(self, chain: &str, n: u64, prev: &str) -> Vec<u8> {
        let mut o = match self {
            Json::Object(o) => o,
            other => serde_json::Map::from_iter([("record".to_string(), other)]),
        };
        o.remove("hash");
        o.insert("chain".into(), Json::String(chain.to_string()));
        o.insert("n".into(), Json::from(n));
        o.insert("prev".into(), Json::String(prev.to_string()));
        serde_json::to_vec(&o).unwrap_or_default()
    }
}

/// One delivery attempt, as the audit trail records it (`kind: "attempt"`).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub at: String,
    pub attempt: u32,
    pub connector: String,
    /// Set when there was no HTTP status (timeout, connection failure, invalid event, ...).
    pub error: Option<String>,
    pub event: EventRef,
    pub idempotency_key: String,
    pub latency_ms: Option<f64>,
    pub method: http::Method,
    pub status: Option<u16>,
    pub traceparent: String,
    pub url: String,
}

/// Which event an attempt was for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventRef {
    // Field order = canonical (sorted) key order.
    #[serde(rename = "msgId")]
    pub msg_id: Option<String>,
    #[serde(rename = "streamSequence")]
    pub stream_sequence: u64,
    pub subject: String,
}

impl Sealable for &AttemptRecord {
    fn canonical(self, chain: &str, n: u64, prev: &str) -> Vec<u8> {
        // Field order = canonical (sorted) key order, so the bytes are canonical as written.
        #[derive(serde::Serialize)]
        struct Stored<'a> {
            at: &'a str,
            attempt: u32,
            chain: &'a str,
            connector: &'a str,
            error: Option<&'a str>,
            event: &'a EventRef,
            #[serde(rename = "idempotencyKey")]
            idempotency_key: &'a str,
            kind: &'static str,
            #[serde(rename = "latencyMs")]
            latency_ms: Option<f64>,
            method: &'a str,
            n: u64,
            prev: &'a str,
            status: Option<u16>,
            traceparent: &'a str,
            url: &'a str,
        }
        serde_json::to_vec(&Stored {
            at: &self.at,
            attempt: self.attempt,
            chain,
            connector: &self.connector,
            error: self.error.as_deref(),
            event: &self.event,
            idempotency_key: &self.idempotency_key,
            kind: "attempt",
            latency_ms: self.latency_ms.filter(|l| l.is_finite()),
            method: self.method.as_str(),
            n,
            prev,
            status: self.status,
            traceparent: &self.traceparent,
            url: &self.url,
        })
        .unwrap_or_default()
    }
}

/// What the audit actor is given to record.
#[derive(Debug, Clone)]
pub enum AuditRecord {
    Attempt(Box<AttemptRecord>),
    /// Any other record (accepted webhooks, gaps): a JSON object.
    Other(Json),
}

impl Sealable for AuditRecord {
    fn canonical(self, chain: &str, n: u64, prev: &str) -> Vec<u8> {
        match self {
            AuditRecord::Attempt(a) => a.as_ref().canonical(chain, n, prev),
            AuditRecord::Other(j) => j.canonical(chain, n, prev),
        }
    }
}

impl Chainer {
    /// Like [`Chainer::seal`], but returns the stored form directly: the record serialised once
    /// (its hash computed over those bytes, then spliced in as the first key). Returns the
    /// record's position `n` and its bytes. `verify` reads it like any other record.
    pub fn seal_bytes(&mut self, chain: &str, record: impl Sealable) -> (u64, Vec<u8>) {
        let (n, prev) = match self.last.get(chain) {
            Some((n, h)) => (n + 1, h.as_str()),
            None => (1, GENESIS),
        };
        let body = record.canonical(chain, n, prev);
        let mut h = Sha256::new();
        h.update(prev.as_bytes());
        h.update(&body);
        let hash = hex::encode(h.finalize());
        let mut out = Vec::with_capacity(body.len() + 80);
        out.extend_from_slice(b"{\"hash\":\"");
        out.extend_from_slice(hash.as_bytes());
        out.push(b'"');
        match body.get(1..) {
            Some(rest) if rest != b"}" => {
                out.push(b',');
                out.extend_from_slice(rest);
            }
            _ => out.push(b'}'),
        }
        match self.last.get_mut(chain) {
            Some(slot) => *slot = (n, hash),
            None => {
                self.last.insert(chain.to_string(), (n, hash));
            }
        }
        (n, out)
    }
}

/// The first problem found in the trail, where it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// Stream sequence of the message holding the first record that does not fit.
    pub sequence: u64,
    /// That record's line in its message (1 for the first).
    pub line: usize,
    pub reason: String,
}

/// What an intact trail holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Intact {
    /// Records checked (each position of each chain once).
    pub records: u64,
    /// Exact copies of a record of the same chain (a store that was retried after its
    /// confirmation was lost may store some twice): harmless, counted apart.
    pub duplicates: u64,
    /// Sealed `gap` records: places where hms-sync knows records were lost, and says so.
    pub gaps: u64,
    /// How many records those gaps declare lost.
    pub lost: u64,
}

/// One record as verify reads it.
struct Read {
    at: (u64, usize),
    n: u64,
    prev: String,
    hash: String,
    gap: Option<u64>,
}

/// Checks every record of every message (`(stream sequence, payload)`; a payload is a block of
/// records, one per line): each record's own hash, and each chain, in the order of its
/// positions `n` (a retried store may have stored a later block first): starting at 1, no
/// position missing, each `prev` the hash of the record before it. What was found when
/// intact; otherwise the first record (in stream order) that does not fit.
pub fn verify<'a>(messages: impl IntoIterator<Item = (u64, &'a [u8])>) -> Result<Intact, Broken> {
    let mut chains: HashMap<String, Vec<Read>> = HashMap::new();
    for (seq, payload) in messages {
        let lines = payload.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        for (i, bytes) in lines.enumerate() {
            let broken = |reason: String| Broken {
                sequence: seq,
                line: i + 1,
                reason,
            };
            let record: Json =
                serde_json::from_slice(bytes).map_err(|e| broken(format!("not JSON: {e}")))?;
            let hash = record
                .get("hash")
                .and_then(Json::as_str)
                .ok_or_else(|| broken("no hash".into()))?;
            if hash_of(&record) != hash {
                return Err(broken(
                    "its content does not match its hash (changed)".into(),
                ));
            }
            let chain = record
                .get("chain")
                .and_then(Json::as_str)
                .ok_or_else(|| broken("no chain".into()))?;
            let n = record
                .get("n")
                .and_then(Json::as_u64)
                .ok_or_else(|| broken("no position n".into()))?;
            let gap = (record.get("kind").and_then(Json::as_str) == Some("gap"))
                .then(|| record.get("dropped").and_then(Json::as_u64).unwrap_or(0));
            chains.entry(chain.to_string()).or_default().push(Read {
                at: (seq, i + 1),
                n,
                prev: record
                    .get("prev")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string(),
                hash: hash.to_string(),
                gap,
            });
        }
    }
    let mut found = Intact::default();
    let mut first_break: Option<Broken> = None;
    for (chain, mut records) in chains {
        records.sort_by_key(|r| (r.n, r.at));
        let (mut want_n, mut want_prev) = (1, GENESIS.to_string());
        let mut last_hash: Option<&str> = None;
        let mut fault = None;
        for r in &records {
            if r.n + 1 == want_n && last_hash == Some(r.hash.as_str()) {
                found.duplicates += 1;
                continue;
            }
            if r.n != want_n || r.prev != want_prev {
                fault = Some((r.at, format!(
                    "chain {chain}: expected record {want_n} after the previous one, found record {} whose prev does not match (a record before it was deleted or changed)",
                    r.n
                )));
                break;
            }
            found.records += 1;
            if let Some(d) = r.gap {
                found.gaps += 1;
                found.lost += d;
            }
            want_n = r.n + 1;
            want_prev = r.hash.clone();
            last_hash = Some(r.hash.as_str());
        }
        if let Some(((sequence, line), reason)) = fault {
            let earlier = first_break
                .as_ref()
                .is_none_or(|b| (sequence, line) < (b.sequence, b.line));
            if earlier {
                first_break = Some(Broken {
                    sequence,
                    line,
                    reason,
                });
            }
        }
    }
    match first_break {
        Some(b) => Err(b),
        None => Ok(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trail() -> Vec<Vec<u8>> {
        let mut c = Chainer::default();
        (0..6)
            .map(|i| {
                let chain = if i % 2 == 0 { "a" } else { "b" };
                serde_json::to_vec(&c.seal(chain, json!({"event": i, "status": 200}))).unwrap()
            })
            .collect()
    }

    fn walk(t: &[Vec<u8>]) -> Result<u64, Broken> {
        verify(
            t.iter()
                .enumerate()
                .map(|(i, b)| (i as u64 + 1, b.as_slice())),
        )
        .map(|i| i.records)
    }

    #[test]
    fn intact_trail_verifies() {
        assert_eq!(walk(&trail()), Ok(6));
    }

    #[test]
    fn the_stored_form_verifies_and_equals_the_general_one() {
        let mut a = Chainer::default();
        let mut b = Chainer::default();
        let mut stored = Vec::new();
        for i in 0..4 {
            let rec = json!({"event": i, "url": "https://x/\"q\"", "status": null});
            let (n, bytes) = a.seal_bytes("c", rec.clone());
            assert_eq!(n, i as u64 + 1);
            let general = b.seal("c", rec);
            let parsed: Json = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(parsed, general);
            stored.push(bytes);
        }
        assert_eq!(walk(&stored), Ok(4));
    }

    #[test]
    fn a_deleted_record_is_detected_at_the_next_one_of_its_chain() {
        let mut t = trail();
        t.remove(2); // chain a, n=2
        let err = walk(&t).unwrap_err();
        assert_eq!(err.sequence, 4, "{err:?}"); // chain a, n=3 now sits at position 4
    }

    #[test]
    fn a_changed_record_is_detected() {
        let mut t = trail();
        let mut v: Json = serde_json::from_slice(&t[3]).unwrap();
        v["status"] = json!(500);
        t[3] = serde_json::to_vec(&v).unwrap();
        assert_eq!(walk(&t).unwrap_err().sequence, 4);
        // Even with a recomputed hash, the next record of the chain no longer fits.
        v["hash"] = json!(hash_of(&v));
        t[3] = serde_json::to_vec(&v).unwrap();
        assert_eq!(walk(&t).unwrap_err().sequence, 6);
    }

    fn attempt(i: u32, status: Option<u16>) -> AttemptRecord {
        AttemptRecord {
            at: "2026-11-27T05:00:00.123Z".into(),
            attempt: i,
            connector: "ddot.gis.outbound.v1".into(),
            error: status
                .is_none()
                .then(|| "timeout \"after\" 10 s\n".to_string()),
            event: EventRef {
                msg_id: (i % 2 == 0).then(|| format!("m-{i}")),
                stream_sequence: u64::from(i) * 7,
                subject: "permit.updated".into(),
            },
            idempotency_key: format!("{i:032x}"),
            latency_ms: status.map(|_| 1.25 * f64::from(i) + 0.001),
            method: http::Method::PATCH,
            status,
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            url: "https://gis.example/item/roadwork/RW-\u{e9}/\"x\"".into(),
        }
    }

    #[test]
    fn a_typed_attempt_record_is_stored_in_canonical_form() {
        let mut c = Chainer::default();
        let mut stored = Vec::new();
        for i in 0..5 {
            let rec = attempt(i, [Some(200), None, Some(503)][i as usize % 3]);
            let (_, bytes) = c.seal_bytes("k/run", AuditRecord::Attempt(Box::new(rec.clone())));
            let parsed: Json = serde_json::from_slice(&bytes).unwrap();
            // Canonical: what a reader re-serialises (sorted keys) is what was hashed.
            assert_eq!(
                parsed["hash"].as_str().unwrap(),
                hash_of(&parsed),
                "{parsed:#}"
            );
            assert_eq!(parsed["kind"], "attempt");
            assert_eq!(parsed["status"], json!(rec.status));
            assert_eq!(parsed["event"]["streamSequence"], json!(u64::from(i) * 7));
            assert_eq!(parsed["error"], json!(rec.error));
            stored.push(bytes);
        }
        assert_eq!(walk(&stored), Ok(5));
    }

    #[test]
    fn an_exact_copy_of_a_recent_record_is_a_duplicate_not_a_break() {
        let t = trail();
        // A retried store wrote records 3 and 4 (chain a n=2, chain b n=2) again.
        let mut with_copies = t.clone();
        with_copies.insert(5, t[2].clone());
        with_copies.insert(6, t[3].clone());
        let found = verify(
            with_copies
                .iter()
                .enumerate()
                .map(|(i, b)| (i as u64 + 1, b.as_slice())),
        );
        assert_eq!(
            found,
            Ok(Intact {
                records: 6,
                duplicates: 2,
                ..Intact::default()
            })
        );
    }

    #[test]
    fn blocks_of_records_verify_in_any_order_and_a_missing_one_breaks() {
        let mut c = Chainer::default();
        let lines: Vec<Vec<u8>> = (0..6)
            .map(|i| c.seal_bytes("a", json!({"event": i})).1)
            .collect();
        let block = |recs: &[Vec<u8>]| -> Vec<u8> {
            recs.iter()
                .flat_map(|r| r.iter().copied().chain([b'\n']))
                .collect()
        };
        let (b1, b2) = (block(&lines[..3]), block(&lines[3..]));
        // Stored in order, or the second block first (a retried store).
        for msgs in [vec![(1, &b1), (2, &b2)], vec![(1, &b2), (2, &b1)]] {
            let found = verify(msgs.iter().map(|(s, b)| (*s, b.as_slice())));
            assert_eq!(found.map(|f| f.records), Ok(6));
        }
        // A record taken out of a block: the next one is the first that does not fit.
        let holed = [lines[0].clone(), lines[2].clone()];
        let msgs = [(1, block(&holed)), (2, b2.clone())];
        let err = verify(msgs.iter().map(|(s, b)| (*s, b.as_slice()))).unwrap_err();
        assert_eq!((err.sequence, err.line), (1, 2), "{err:?}");
    }

    #[test]
    fn sealed_gaps_are_counted_with_what_they_declare_lost() {
        let mut c = Chainer::default();
        let t: Vec<Vec<u8>> = [
            json!({"kind": "attempt", "status": 200}),
            json!({"kind": "gap", "dropped": 37, "reason": "restarted"}),
            json!({"kind": "attempt", "status": 200}),
            json!({"kind": "gap", "dropped": 5}),
        ]
        .into_iter()
        .map(|r| serde_json::to_vec(&c.seal("a", r)).unwrap())
        .collect();
        let found = verify(
            t.iter()
                .enumerate()
                .map(|(i, b)| (i as u64 + 1, b.as_slice())),
        );
        assert_eq!(
            found,
            Ok(Intact {
                records: 4,
                duplicates: 0,
                gaps: 2,
                lost: 42
            })
        );
    }

    #[test]
    fn a_stale_record_that_is_not_an_exact_copy_is_a_break() {
        let mut t = trail();
        // A different record claiming an old position of chain a.
        let mut v: Json = serde_json::from_slice(&t[2]).unwrap();
        v["status"] = json!(500);
        v["hash"] = json!(hash_of(&v));
        t.push(serde_json::to_vec(&v).unwrap());
        assert_eq!(walk(&t).unwrap_err().sequence, 7);
    }
}
