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

impl Chainer {
    /// Like [`Chainer::seal`], but returns the stored form directly: the record serialised once
    /// (its hash computed over those bytes, then spliced in as the first key). Returns the
    /// record's position `n` and its bytes. `verify` reads it like any other record.
    pub fn seal_bytes(&mut self, chain: &str, mut record: Json) -> (u64, Vec<u8>) {
        let (n, prev) = self
            .last
            .get(chain)
            .map(|(n, h)| (n + 1, h.clone()))
            .unwrap_or((1, GENESIS.to_string()));
        let Some(o) = record.as_object_mut() else {
            // Not an object: fall back to the general form.
            let sealed = self.seal(chain, record);
            return (n, serde_json::to_vec(&sealed).unwrap_or_default());
        };
        o.remove("hash");
        o.insert("chain".into(), Json::String(chain.to_string()));
        o.insert("n".into(), Json::from(n));
        o.insert("prev".into(), Json::String(prev.clone()));
        let body = serde_json::to_vec(&record).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(prev.as_bytes());
        h.update(&body);
        let hash = hex::encode(h.finalize());
        let mut out = Vec::with_capacity(body.len() + 80);
        out.extend_from_slice(b"{\"hash\":\"");
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"\",");
        out.extend_from_slice(body.get(1..).unwrap_or_default());
        self.last.insert(chain.to_string(), (n, hash));
        (n, out)
    }
}

/// The first problem found while walking the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// Stream sequence of the first record that does not fit.
    pub sequence: u64,
    pub reason: String,
}

/// Walks records in stream order: `(sequence, raw bytes)`. `Ok(records checked)` when intact.
pub fn verify<'a>(records: impl IntoIterator<Item = (u64, &'a [u8])>) -> Result<u64, Broken> {
    let mut last: HashMap<String, (u64, String)> = HashMap::new();
    let mut count = 0;
    for (seq, bytes) in records {
        let broken = |reason: String| Broken {
            sequence: seq,
            reason,
        };
        let record: Json =
            serde_json::from_slice(bytes).map_err(|e| broken(format!("not JSON: {e}")))?;
        let stored = record
            .get("hash")
            .and_then(Json::as_str)
            .ok_or_else(|| broken("no hash".into()))?;
        if hash_of(&record) != stored {
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
        let prev = record
            .get("prev")
            .and_then(Json::as_str)
            .unwrap_or_default();
        let (want_n, want_prev) = last
            .get(chain)
            .map(|(n, h)| (n + 1, h.as_str()))
            .unwrap_or((1, GENESIS));
        if n != want_n || prev != want_prev {
            return Err(broken(format!(
                "chain {chain}: expected record {want_n} after the previous one, found record {n} whose prev does not match (a record before it was deleted or changed)"
            )));
        }
        last.insert(chain.to_string(), (n, stored.to_string()));
        count += 1;
    }
    Ok(count)
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
}
