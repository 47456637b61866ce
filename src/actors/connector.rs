//! Connector actor: owns one connector's durable consumer and its pump task, which pulls
//! events and runs up to `maxInFlight` deliveries at once; swaps to a changed definition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::bus::{covers, ConsumerSpec, ConsumerStats, Delivery, EventSource, REPLAY_PREFIX};
use crate::config::DeliveryConfig;
use crate::delivery::{Finished, InProcess, Pipeline};
use crate::ordering::{Arrival, Lanes};
use crate::template::Secrets;

/// How long an event that no longer matches this connector's topic (its filter is being changed
/// by a redeploy) waits before JetStream redelivers it, to the new definition.
const NOT_MINE_DELAY: Duration = Duration::from_millis(500);

/// Messages to a connector actor.
pub enum ConnectorMsg {
    /// The pump stopped on its own (subscription ended, or a delivery task panicked): the actor
    /// fails, and its supervisor restarts it.
    PumpEnded(String),
    /// Stop pulling, finish what is in flight, then reply.
    Drain(RpcReplyPort<()>),
    /// Swap to a changed definition: stop pulling, finish in-flight deliveries with the old one,
    /// update the consumer in place (same subscription when the topic is unchanged), then pull
    /// for the new one. Replies once nothing runs with the old definition any more.
    Apply(
        Arc<Pipeline>,
        ConsumerSpec,
        RpcReplyPort<Result<(), String>>,
    ),
}

pub struct ConnectorActor;

pub struct ConnectorArgs {
    pub pipeline: Arc<Pipeline>,
    pub delivery: DeliveryConfig,
    /// The durable consumer (name, start of a new one, description, metadata).
    pub spec: ConsumerSpec,
}

pub struct ConnectorState {
    stop: watch::Sender<bool>,
    /// Gives the subscription back when stopped by `stop` (for a swap).
    pump: Option<tokio::task::JoinHandle<Option<EventSource>>>,
    pipeline: Arc<Pipeline>,
    spec: ConsumerSpec,
    delivery: DeliveryConfig,
}

impl Drop for ConnectorState {
    fn drop(&mut self) {
        // Killed or failed: in-flight deliveries end with the actor; JetStream redelivers them.
        if let Some(p) = self.pump.take() {
            p.abort();
        }
    }
}

impl Actor for ConnectorActor {
    type Msg = ConnectorMsg;
    type State = ConnectorState;
    type Arguments = ConnectorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConnectorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let c = &args.pipeline.connector;
        let source = args
            .pipeline
            .bus
            .open_consumer(&args.spec, &args.delivery)
            .await?;
        let (stop, pump) = start_pump(source, &args.pipeline, &args.delivery, &args.spec, myself);
        tracing::info!("[{}] consuming {} as {}", c.id, c.trigger.topic, c.consumer);
        Ok(ConnectorState {
            stop,
            pump: Some(pump),
            pipeline: args.pipeline,
            spec: args.spec,
            delivery: args.delivery,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectorMsg::PumpEnded(why) => Err(why.into()),
            ConnectorMsg::Drain(reply) => {
                let _ = state.stop.send(true);
                if let Some(p) = state.pump.take() {
                    let _ = p.await;
                }
                let _ = reply.send(());
                Ok(())
            }
            ConnectorMsg::Apply(pipeline, spec, reply) => {
                match apply(myself, state, pipeline, spec).await {
                    Ok(()) => {
                        let _ = reply.send(Ok(()));
                        Ok(())
                    }
                    Err(e) => {
                        // Fail: the supervisor restarts the actor with the new definition.
                        let _ = reply.send(Err(e.clone()));
                        Err(e.into())
                    }
                }
            }
        }
    }
}

/// Drain, then continue with `pipeline` on the consumer described by `spec`.
async fn apply(
    myself: ActorRef<ConnectorMsg>,
    state: &mut ConnectorState,
    pipeline: Arc<Pipeline>,
    spec: ConsumerSpec,
) -> Result<(), String> {
    let _ = state.stop.send(true);
    let source = match state.pump.take() {
        Some(p) => p.await.ok().flatten(),
        None => None,
    };
    let bus = &pipeline.bus;
    let source = match source {
        Some(s) if spec.topic == state.spec.topic => {
            // Same filter: keep the subscription (and what it already pulled); only the
            // description and metadata of the consumer change.
            bus.ensure_consumer(&spec, &state.delivery)
                .await
                .map_err(|e| e.to_string())?;
            s
        }
        other => {
            if let Some(mut s) = other {
                release_buffered(&mut s).await;
            }
            bus.open_consumer(&spec, &state.delivery)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    let (stop, pump) = start_pump(source, &pipeline, &state.delivery, &spec, myself);
    tracing::info!(
        "[{}] applied: consuming {} as {}",
        pipeline.connector.id,
        spec.topic,
        spec.name
    );
    state.stop = stop;
    state.pump = Some(pump);
    state.pipeline = pipeline;
    state.spec = spec;
    Ok(())
}

/// Hands events the old subscription already pulled back to JetStream (redelivered at once),
/// instead of letting them wait for the ack timeout.
async fn release_buffered(source: &mut EventSource) {
    while let Some(Some(Ok(d))) = source.next().now_or_never() {
        let _ = d.retry_after(Duration::ZERO).await;
    }
}

fn start_pump(
    source: EventSource,
    pipeline: &Arc<Pipeline>,
    delivery: &DeliveryConfig,
    spec: &ConsumerSpec,
    myself: ActorRef<ConnectorMsg>,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Option<EventSource>>,
) {
    let (stop, stop_rx) = watch::channel(false);
    let limit = delivery.max_in_flight.max(1);
    let watch = StallWatch::new(pipeline.clone(), spec.clone(), delivery.clone());
    let pump = if pipeline.connector.trigger.ordering_key.is_some() {
        tokio::spawn(pump_keyed(
            source,
            pipeline.clone(),
            limit,
            delivery.ack_wait(),
            stop_rx,
            myself,
            watch,
        ))
    } else {
        tokio::spawn(pump(
            source,
            pipeline.clone(),
            limit,
            stop_rx,
            myself,
            watch,
        ))
    };
    (stop, pump)
}

/// Whether a pull looks stalled: nothing arrived since the last check, nothing is in process
/// here, and yet the consumer holds work (pending, or delivered and unacknowledged) and is not
/// paused. Unacknowledged work may also be a retry scheduled for later or another instance's:
/// re-opening the subscription is harmless then.
pub fn looks_stalled(received: bool, in_process: u64, stats: &ConsumerStats) -> bool {
    !received && in_process == 0 && !stats.paused && (stats.pending > 0 || stats.ack_pending > 0)
}

/// The pump's guard against a stalled pull subscription (seen with async-nats' continuous
/// pull under heavy load, BENCHMARKS.md): every `stallCheckMs` without an event and with
/// nothing in process it asks the consumer, and re-opens the subscription when work waits.
struct StallWatch {
    pipeline: Arc<Pipeline>,
    spec: ConsumerSpec,
    delivery: DeliveryConfig,
    tick: tokio::time::Interval,
    received: bool,
}

impl StallWatch {
    fn new(pipeline: Arc<Pipeline>, spec: ConsumerSpec, delivery: DeliveryConfig) -> StallWatch {
        let period = delivery.stall_check();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        StallWatch {
            pipeline,
            spec,
            delivery,
            tick,
            received: false,
        }
    }

    /// Swaps `source` for a fresh subscription when it looks stalled, handing back what the
    /// old one still buffered.
    async fn guard(&mut self, source: &mut EventSource) {
        if let Some(fresh) = self.check().await {
            let mut old = std::mem::replace(source, fresh);
            release_buffered(&mut old).await;
        }
    }

    /// A fresh subscription when the current one looks stalled.
    async fn check(&mut self) -> Option<EventSource> {
        let received = std::mem::take(&mut self.received);
        let in_process = self
            .pipeline
            .stats
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
        let id = &self.pipeline.connector.id;
        tracing::warn!(
            "[{id}] nothing arrived for {} s while consumer {} holds {} pending and {} unacknowledged events: re-opening its pull subscription",
            self.delivery.stall_check().as_secs(),
            self.spec.name,
            stats.pending,
            stats.ack_pending
        );
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

/// Pulls deliveries and runs each in its own task, at most `limit` at once. Stopped by `stop`,
/// it finishes what is in flight and gives the subscription back.
async fn pump(
    mut source: EventSource,
    pipeline: Arc<Pipeline>,
    limit: usize,
    mut stop: watch::Receiver<bool>,
    actor: ActorRef<ConnectorMsg>,
    mut watch: StallWatch,
) -> Option<EventSource> {
    let permits = Arc::new(Semaphore::new(limit));
    let mut tasks = JoinSet::new();
    let mut health = PullHealth::default();
    let ended = loop {
        // Reap finished tasks; a panicked delivery fails the actor (its event is redelivered).
        reap(&mut tasks, &actor);
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break None },
            _ = stop.changed() => break None,
        };
        let next = tokio::select! {
            n = source.next() => n,
            _ = stop.changed() => break None,
            _ = watch.tick.tick() => {
                watch.guard(&mut source).await;
                continue;
            }
        };
        watch.received = true;
        match health.take(next, &pipeline.connector.id) {
            Err(why) => break Some(why),
            Ok(None) => {}
            Ok(Some(delivery)) if !is_mine(&pipeline, &delivery) => {
                // The consumer's filter was changed for a new definition of this connector:
                // leave the event to it.
                let _ = delivery.retry_after(NOT_MINE_DELAY).await;
                drop(permit);
            }
            Ok(Some(delivery)) => {
                let p = pipeline.clone();
                let counted = InProcess::new(&p.stats);
                tasks.spawn(async move {
                    p.handle(delivery).await;
                    drop((permit, counted));
                });
            }
        }
    };
    // Drain: let what is in flight finish.
    finish_all(&mut tasks, &pipeline.connector.id).await;
    match ended {
        Some(why) => {
            break_with(&actor, why);
            None
        }
        None => Some(source),
    }
}

/// Like [`pump`], but events with the same `trigger.orderingKey` take turns in stream order
/// (see [`Lanes`]).
async fn pump_keyed(
    mut source: EventSource,
    pipeline: Arc<Pipeline>,
    limit: usize,
    ack_wait: Duration,
    mut stop: watch::Receiver<bool>,
    actor: ActorRef<ConnectorMsg>,
    mut watch: StallWatch,
) -> Option<EventSource> {
    let permits = Arc::new(Semaphore::new(limit));
    let mut tasks = JoinSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Option<String>, Finished)>();
    let mut lanes: Lanes<Delivery> = Lanes::new(ack_wait);
    let mut heartbeat = tokio::time::interval((ack_wait / 3).max(Duration::from_millis(100)));
    let mut health = PullHealth::default();
    let spawn = |tasks: &mut JoinSet<()>, key: Option<String>, d: Delivery| {
        let (p, permits, done) = (pipeline.clone(), permits.clone(), done_tx.clone());
        let counted = InProcess::new(&p.stats);
        tasks.spawn(async move {
            let _counted = counted;
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let finished = p.handle(d).await;
            let _ = done.send((key, finished));
        });
    };
    let ended = loop {
        reap(&mut tasks, &actor);
        tokio::select! {
            _ = stop.changed() => break None,
            Some((key, finished)) = done_rx.recv() => {
                if let Some(key) = key {
                    let retry = match finished { Finished::Retry(d) => Some(d), Finished::Done => None };
                    if let Some(next) = lanes.finished(&key, retry, Instant::now()) {
                        spawn(&mut tasks, Some(key), next);
                    }
                }
            }
            _ = heartbeat.tick() => {
                for d in lanes.held() {
                    if let Err(e) = d.in_progress().await {
                        tracing::warn!("[{}] {e}", pipeline.connector.id);
                    }
                }
                for d in lanes.expire(Instant::now()) {
                    let key = ordering_key(&pipeline, &d);
                    spawn(&mut tasks, key, d);
                }
            }
            _ = watch.tick.tick() => {
                // Held events wait for their key's turn: not a stall.
                if lanes.held_count() == 0 {
                    watch.guard(&mut source).await;
                }
            }
            next = source.next() => {
                watch.received = true;
                match health.take(next, &pipeline.connector.id) {
                    Err(why) => break Some(why),
                    Ok(None) => {}
                    Ok(Some(d)) if !is_mine(&pipeline, &d) => {
                        let _ = d.retry_after(NOT_MINE_DELAY).await;
                    }
                    Ok(Some(d)) => match ordering_key(&pipeline, &d) {
                        None => spawn(&mut tasks, None, d),
                        Some(key) => {
                            let seq = d.stream_sequence;
                            if let Arrival::Run(d) = lanes.arrive(&key, seq, d, Instant::now()) {
                                spawn(&mut tasks, Some(key), d);
                            }
                        }
                    },
                }
            }
        }
    };
    finish_all(&mut tasks, &pipeline.connector.id).await;
    // Held events were never attempted: hand them back so JetStream offers them again at once.
    for d in lanes.drain() {
        let _ = d.retry_after(Duration::ZERO).await;
    }
    match ended {
        Some(why) => {
            break_with(&actor, why);
            None
        }
        None => Some(source),
    }
}

/// Whether a delivery is for this definition of the connector: its trigger topic, or a replay
/// of one of its parked jobs. (During a redeploy that changes the topic, the consumer's filter
/// already follows the new definition.)
fn is_mine(pipeline: &Pipeline, d: &Delivery) -> bool {
    d.subject.starts_with(REPLAY_PREFIX) || covers(&pipeline.connector.trigger.topic, &d.subject)
}

/// The event's ordering key; `None` (no ordering) when it cannot be rendered (such an event
/// is parked by its delivery anyway).
fn ordering_key(pipeline: &Pipeline, d: &Delivery) -> Option<String> {
    let template = pipeline.connector.trigger.ordering_key.as_ref()?;
    let event: serde_json::Value = serde_json::from_slice(d.payload()).ok()?;
    template.render_text(&event, Secrets::Masked).ok()
}

/// Counts pull errors in a row: the pump gives up (and the actor restarts) after ten.
#[derive(Default)]
struct PullHealth {
    errors_in_a_row: u32,
}

impl PullHealth {
    /// `Ok(Some)` a delivery, `Ok(None)` a passing error (logged), `Err` why the pump stops.
    fn take(
        &mut self,
        item: Option<Result<Delivery, crate::bus::BusError>>,
        id: &str,
    ) -> Result<Option<Delivery>, String> {
        match item {
            None => Err("the consumer's subscription ended".to_string()),
            Some(Err(e)) => {
                self.errors_in_a_row += 1;
                tracing::warn!("[{id}] {e}");
                if self.errors_in_a_row >= 10 {
                    Err(format!("10 pull errors in a row, last: {e}"))
                } else {
                    Ok(None)
                }
            }
            Some(Ok(d)) => {
                self.errors_in_a_row = 0;
                Ok(Some(d))
            }
        }
    }
}

/// Collects finished delivery tasks; a panicked one fails the actor (its event is redelivered).
fn reap(tasks: &mut JoinSet<()>, actor: &ActorRef<ConnectorMsg>) {
    while let Some(done) = tasks.try_join_next() {
        if let Err(e) = done {
            if e.is_panic() {
                break_with(actor, format!("a delivery panicked: {e}"));
            }
        }
    }
}

/// Drain: lets what is in flight finish.
async fn finish_all(tasks: &mut JoinSet<()>, id: &str) {
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            if e.is_panic() {
                tracing::error!("[{id}] a delivery panicked: {e}");
            }
        }
    }
}

fn break_with(actor: &ActorRef<ConnectorMsg>, why: String) {
    let _ = actor.send_message(ConnectorMsg::PumpEnded(why));
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for (received, in_process, s, want) in cases {
            assert_eq!(
                looks_stalled(received, in_process, &s),
                want,
                "{received} {in_process} {s:?}"
            );
        }
    }
}
