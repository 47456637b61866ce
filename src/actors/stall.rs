//! The pump's guard against a stalled pull subscription (seen with async-nats' continuous
//! pull under heavy load, BENCHMARKS.md): every `stallCheckMs` without an event and with
//! nothing in process it asks the consumer, and re-opens the subscription when work waits.
//! When re-opening brought nothing (the unacknowledged work is held by someone else, or
//! waits for a retry), the next check waits twice as long, up to [`MAX_BACKOFF`] (or the
//! period, when longer): each re-open is a moment in which an event sent to the old
//! subscription waits for the ack timeout, so pointless ones are kept rare.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::bus::{ConsumerSpec, ConsumerStats, EventSource};
use crate::config::DeliveryConfig;
use crate::delivery::Pipeline;

/// Whether a pull looks stalled: nothing arrived since the last check, nothing is in process
/// here, and yet the consumer holds work (pending, or delivered and unacknowledged) and is not
/// paused, and no other instance holds its pin (a keyed connector runs on one instance at a
/// time; the others wait on standby). Unacknowledged work may also be a retry scheduled for
/// later or another instance's: re-opening the subscription is harmless then.
pub fn looks_stalled(received: bool, in_process: u64, stats: &ConsumerStats) -> bool {
    !received
        && in_process == 0
        && !stats.paused
        && !stats.pinned
        && (stats.pending > 0 || stats.ack_pending > 0)
}

/// The longest wait between two checks after quiet re-opens (unless `stallCheckMs` is longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait until the next check after `quiet` re-opens in a row brought nothing.
pub fn next_check(period: Duration, quiet: u32) -> Duration {
    let doubled = period.saturating_mul(1u32.checked_shl(quiet.min(31)).unwrap_or(u32::MAX));
    doubled.min(MAX_BACKOFF.max(period))
}

/// See the module note.
pub struct StallWatch {
    pipeline: Arc<Pipeline>,
    spec: ConsumerSpec,
    delivery: DeliveryConfig,
    pub tick: tokio::time::Interval,
    /// Something arrived since the last check.
    pub received: bool,
    /// Re-opens in a row after which nothing arrived.
    quiet: u32,
}

impl StallWatch {
    pub fn new(pipeline: Arc<Pipeline>, spec: ConsumerSpec, delivery: DeliveryConfig) -> Self {
        let period = delivery.stall_check();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        StallWatch {
            pipeline,
            spec,
            delivery,
            tick,
            received: false,
            quiet: 0,
        }
    }

    /// The durable consumer's name.
    pub fn consumer(&self) -> &str {
        &self.spec.name
    }

    /// Swaps `source` for a fresh subscription when it looks stalled, handing back what the
    /// old one still buffered.
    pub async fn guard(&mut self, source: &mut EventSource) {
        if let Some(fresh) = self.check().await {
            let mut old = std::mem::replace(source, fresh);
            release_buffered(&mut old).await;
        }
    }

    /// A fresh subscription when the current one looks stalled.
    async fn check(&mut self) -> Option<EventSource> {
        let received = std::mem::take(&mut self.received);
        if received {
            self.quiet = 0;
        }
        let in_process = self
            .pipeline
            .stats()
            .in_process
            .load(std::sync::atomic::Ordering::Relaxed);
        if received || in_process > 0 {
            return None;
        }
        let stats = self
            .pipeline
            .bus
            .consumer_stats(&self.spec.name)
            .await
            .ok()?;
        if !looks_stalled(received, in_process, &stats) {
            return None;
        }
        let why = format!(
            "nothing arrived for {} s while consumer {} holds {} pending and {} unacknowledged events",
            self.delivery.stall_check().as_secs(),
            self.spec.name,
            stats.pending,
            stats.ack_pending
        );
        let fresh = self.fresh(&why).await;
        self.quiet = self.quiet.saturating_add(1);
        self.tick
            .reset_after(next_check(self.delivery.stall_check(), self.quiet));
        fresh
    }

    /// Re-creates the pull subscription now (its heartbeats stopped: the server restarted, went
    /// into lame-duck mode, or the stream's leader moved), handing back what the old one
    /// buffered. Keeps the old one when NATS cannot be asked now (the next missed heartbeat
    /// tries again).
    pub async fn reopen(&mut self, source: &mut EventSource, why: &str) {
        if let Some(fresh) = self.fresh(why).await {
            let mut old = std::mem::replace(source, fresh);
            release_buffered(&mut old).await;
        }
    }

    /// A new pull subscription on the same consumer, counted in `sync_pull_reopened_total`.
    async fn fresh(&self, why: &str) -> Option<EventSource> {
        let id = &self.pipeline.connector.id;
        tracing::warn!("[{id}] {why}: re-opening its pull subscription");
        metrics::counter!(crate::metrics::PULL_REOPENED_TOTAL, "connector" => id.clone())
            .increment(1);
        match self
            .pipeline
            .bus
            .open_consumer(&self.spec, &self.delivery)
            .await
        {
            Ok(fresh) => Some(fresh),
            Err(e) => {
                tracing::warn!("[{id}] re-opening the pull subscription: {e}");
                None
            }
        }
    }
}

/// Hands events a subscription already pulled back to JetStream (redelivered at once),
/// instead of letting them wait for the ack timeout.
pub async fn release_buffered(source: &mut EventSource) {
    while let Some(Some(Ok(d))) = source.next().now_or_never() {
        let _ = d.retry_after(std::time::Duration::ZERO).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_re_opens_space_the_checks_out() {
        let ms = Duration::from_millis;
        let waits: Vec<Duration> = (0..4).map(|q| next_check(ms(300), q)).collect();
        assert_eq!(waits, [ms(300), ms(600), ms(1200), ms(2400)]);
        assert_eq!(next_check(ms(300), 40), MAX_BACKOFF);
        assert_eq!(next_check(ms(300), u32::MAX), MAX_BACKOFF);
        // The default period (5 min) is never stretched; a longer one is kept.
        assert_eq!(next_check(ms(300_000), 3), ms(300_000));
        assert_eq!(next_check(ms(900_000), 3), ms(900_000));
    }

    #[test]
    fn when_a_pull_looks_stalled() {
        let stats = |pending, ack_pending, paused| ConsumerStats {
            pending,
            ack_pending,
            paused,
            ..Default::default()
        };
        // (received since the last check, in process, consumer) -> stalled?
        let cases = [
            (false, 0, stats(5, 0, false), true),
            (false, 0, stats(0, 54, false), true),
            (true, 0, stats(5, 0, false), false),
            (false, 1, stats(5, 0, false), false),
            (false, 0, stats(0, 0, false), false),
            (false, 0, stats(5, 3, true), false),
        ];
        let pinned = ConsumerStats {
            pending: 5,
            pinned: true,
            ..Default::default()
        };
        assert!(
            !looks_stalled(false, 0, &pinned),
            "another instance holds the pin"
        );
        for (received, in_process, s, want) in cases {
            assert_eq!(
                looks_stalled(received, in_process, &s),
                want,
                "{received} {in_process} {s:?}"
            );
        }
    }
}
