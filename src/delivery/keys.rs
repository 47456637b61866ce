//! Identities a delivery carries: the idempotency key of an event for a connector, and the W3C
//! `traceparent` of the request.

use crate::bus::Delivery;
pub use crate::parked::derive_key;
use crate::parked::{event_key, REPLAY_KEY_HEADER};

/// The idempotency key of one event for one connector: the same across retries, redeliveries,
/// restarts and replay. Derived from the event's `Nats-Msg-Id` when it has one, else from its
/// stream sequence; a replayed event carries its original key in `Hms-Idempotency-Key`.
pub fn idempotency_key(connector_id: &str, d: &Delivery) -> String {
    if let Some(k) = d.header(REPLAY_KEY_HEADER) {
        return k;
    }
    event_key(connector_id, d.msg_id.as_deref(), d.stream_sequence)
}

/// The W3C `traceparent` for our request: same trace as the event's (when it carries a valid
/// one), new span id; a new trace when absent.
pub fn child_traceparent(parent: Option<&str>) -> String {
    let trace_id = parent
        .and_then(|p| {
            let parts: Vec<&str> = p.trim().split('-').collect();
            (parts.len() >= 4
                && parts[0].len() == 2
                && parts[1].len() == 32
                && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
                && parts[1].bytes().any(|b| b != b'0'))
            .then(|| parts[1].to_ascii_lowercase())
        })
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
    let span_id = hex::encode(rand::random::<[u8; 8]>());
    format!("00-{trace_id}-{span_id}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_per_connector_and_identity() {
        let a = derive_key("a", "seq:1");
        assert_eq!(a.len(), 32);
        assert_eq!(a, derive_key("a", "seq:1"));
        assert_ne!(a, derive_key("b", "seq:1"));
        assert_ne!(a, derive_key("a", "seq:2"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(derive_key("ab", "c"), derive_key("a", "bc"));
    }

    #[test]
    fn a_child_keeps_a_valid_parent_trace() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(Some(parent));
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(child, parent);
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let c = child_traceparent(Some(bad));
            assert_eq!(c.len(), 55, "{c}");
            assert!(!c.contains("00000000000000000000000000000000"), "{c}");
        }
    }
}
