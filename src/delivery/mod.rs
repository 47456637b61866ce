//! One delivery, as stages with typed hand-overs: prepare (parse, filter, schema, render) ->
//! send (lookup, token, permit, HTTP, response check) -> judge ([`crate::outcome::decide`]:
//! one [`crate::outcome::Action`]) -> settle (audit, telemetry, ack / NAK / park).
//!
//! Runs inside tasks owned by a connector actor's pump; the decisions are the pure functions
//! of [`crate::outcome`], [`crate::filter`] and [`crate::request`].

pub mod attempt;
pub mod keys;
pub mod pipeline;
pub mod prepare;
pub mod send;
pub mod settle;
pub mod telemetry;

use tracing::Instrument as _;

pub use attempt::{Attempted, Finished};
pub use keys::{child_traceparent, derive_key, idempotency_key};
pub use pipeline::{Deps, Pipeline};
pub use telemetry::{ConnectorStats, FailureNote, InProcess};

use crate::bus::Delivery;
use crate::outcome::decide;
use prepare::Prepared;

impl Pipeline {
    /// Handles one delivery to the end: acked (delivered, filtered out or parked) or
    /// scheduled again. Runs in a span carrying connector, endpoint and stream sequence.
    pub async fn handle(&self, d: Delivery) -> Finished {
        let span = tracing::info_span!(
            "delivery",
            connector = %self.connector.id,
            stream_seq = d.stream_sequence,
            attempt = d.delivered,
            endpoint = tracing::field::Empty,
        );
        self.stages(d).instrument(span).await
    }

    async fn stages(&self, d: Delivery) -> Finished {
        let c = &*self.connector;
        let key = idempotency_key(&c.id, &d);
        let attempted = match prepare::prepare(c, &d, &key) {
            Prepared::Filtered => return settle::filtered(self, &d).await,
            Prepared::Invalid(a) => *a,
            Prepared::Ready(ready) => send::send(self, ready, &d, &key).await,
        };
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let action = decide(&attempted.outcome, d.delivered, &c.retry, jitter);
        settle::settle(self, &d, &key, attempted, action).await
    }
}
