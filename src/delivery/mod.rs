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
    /// scheduled again. Runs in a span carrying connector, endpoint and stream sequence (at
    /// debug level, so that it costs nothing unless `HMS_SYNC_LOG` asks for it; log events
    /// of a delivery carry those fields themselves).
    pub async fn handle(&self, d: Delivery) -> Finished {
        let span = tracing::debug_span!(
            "delivery",
            connector = %self.connector.id,
            stream_seq = d.stream_sequence,
            attempt = d.delivered,
            endpoint = tracing::field::Empty,
        );
        let work = std::pin::pin!(self.stages(&d).instrument(span));
        keep_alive(&d, self.heartbeat, work).await
    }

    async fn stages(&self, d: &Delivery) -> Finished {
        let c = &*self.connector;
        let key = idempotency_key(&c.id, d);
        if let Some(pending) = self.history.pending_park(d.stream_sequence) {
            // Judged for parking already; only storing the job failed: no new call.
            return settle::repark(self, d, &key, pending).await;
        }
        // Preparing is pure code over hostile input: a panic in it (a bug here or in a
        // library) parks this event instead of killing the connector on every redelivery.
        let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            prepare::prepare(c, d, &key)
        }))
        .unwrap_or_else(|_| {
            Prepared::Invalid(Box::new(Attempted::invalid(
                "preparing this event failed inside hms-sync (a bug: please report it)".into(),
                c.target.url.source().to_string(),
                c.target.method.clone(),
                std::time::Instant::now(),
            )))
        });
        // The send and settle futures are large (HTTP, token, permit, parking): boxed, so that
        // a delivery task stays small to spawn and to move.
        let attempted = match prepared {
            Prepared::Filtered => return settle::filtered(self, d).await,
            Prepared::Invalid(a) => *a,
            Prepared::Ready(ready) => {
                // At shutdown, a delivery still sending when the drain time is up is handed
                // back: no answer came, so nothing is settled, and JetStream offers it again.
                let mut stop = self.hand_back.clone();
                tokio::select! {
                    a = Box::pin(send::send(self, ready, d, &key)) => a,
                    true = async { stop.wait_for(|stop| *stop).await.is_ok() } => {
                        return hand_back(self, d).await
                    }
                }
            }
        };
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let action = decide(&attempted.outcome, d.delivered, &c.retry, jitter);
        Box::pin(settle::settle(self, d, &key, attempted, action)).await
    }
}

/// Hands `d` back to JetStream at shutdown (NAK without delay: offered again at once, to
/// another instance or after a restart).
async fn hand_back(p: &Pipeline, d: &Delivery) -> Finished {
    tracing::info!(
        "[{}] event seq {} handed back at shutdown (no answer yet)",
        p.connector.id,
        d.stream_sequence
    );
    if let Err(e) = d.retry_after(std::time::Duration::ZERO).await {
        tracing::warn!(connector = %p.connector.id, "{e}");
    }
    Finished::Retry(std::time::Duration::ZERO)
}

/// Runs `work` (the whole delivery of `d`), telling JetStream every `every` that `d` is still
/// being worked on, so that no wait inside a delivery (a token, a permit, a slow answer, a
/// park) outlasts the ack wait and has the event redelivered to another worker meanwhile.
///
/// `work` is pinned by the caller, so that this future stays small (a delivery's future is
/// moved into its task and box: every byte of it is copied there).
async fn keep_alive<F: std::future::Future<Output = Finished>>(
    d: &Delivery,
    every: std::time::Duration,
    mut work: std::pin::Pin<&mut F>,
) -> Finished {
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            biased;
            finished = work.as_mut() => return finished,
            _ = beat.tick() => {
                // Boxed: rare, and large (it would make every delivery's future larger).
                if let Err(e) = Box::pin(d.in_progress()).await {
                    tracing::debug!("in-progress ack: {e}");
                }
            }
        }
    }
}

/// The size of the future that `f` returns (`f` is never called): for tests that hold the
/// size of a future that is moved per event.
#[cfg(test)]
pub(crate) fn future_size<F: std::future::Future>(_: impl FnOnce() -> F) -> usize {
    std::mem::size_of::<F>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery's future is moved into its box once per event, so every byte of it is
    /// copied each time: its rare, large paths (parking, tokens, lookups, the endpoint actor's
    /// call, in-progress acks) are boxed. Before they were, `send` was 9.6 KB and `handle` 11 KB
    /// (moved four times per event: 8 % of the CPU in `memmove`).
    #[test]
    #[allow(unreachable_code, clippy::diverging_sub_expression)]
    fn a_delivery_future_stays_small_to_move() {
        let handle = future_size(|| Pipeline::handle(unreachable!(), unreachable!()));
        let send = future_size(|| {
            send::send(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        let settle = future_size(|| {
            settle::settle(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        eprintln!("future sizes: handle {handle}, send {send}, settle {settle}");
        for (name, size, at_most) in [
            ("handle", handle, 6 * 1024),
            ("send", send, 4 * 1024),
            ("settle", settle, 2 * 1024),
        ] {
            assert!(
                size <= at_most,
                "{name}'s future is {size} bytes (at most {at_most})"
            );
        }
    }
}
