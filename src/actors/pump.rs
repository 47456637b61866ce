//! A connector's pump: pulls deliveries from its durable consumer and runs each in a task of
//! its own, at most `maxInFlight` at once. With `trigger.orderingKey`, events of one key take
//! turns in stream order (the lanes of [`crate::ordering`]): later events of a busy key wait
//! in memory, kept alive with in-progress acks, and a key whose head is scheduled again waits
//! for it, woken by the retry-timer actor when it is overdue.
//!
//! The pump pulls only when a delivery slot is free, so it never holds more events than it
//! can start (events of a busy key aside), and stopped, it lets what is in flight finish and
//! gives the subscription back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::stall::StallWatch;
use crate::bus::{covers, BusError, ConsumerSpec, Delivery, EventSource, REPLAY_PREFIX};
use crate::config::DeliveryConfig;
use crate::delivery::{Finished, InProcess, Pipeline};
use crate::ordering::{Arrival, Lanes};
use crate::template::Secrets;

/// How long an event that no longer matches this connector's topic (its filter is being changed
/// by a redeploy) waits before JetStream redelivers it, to the new definition.
const NOT_MINE_DELAY: Duration = Duration::from_millis(500);

/// Told why the pump stopped on its own (the subscription ended, or a delivery panicked).
pub type OnEnd = Box<dyn Fn(String) + Send + Sync>;

/// A running pump: stop it with `stop`; its task gives the subscription back.
pub struct Pump {
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Option<EventSource>>,
}

/// Starts the pump of `pipeline` on `source`.
pub fn start(
    source: EventSource,
    pipeline: &Arc<Pipeline>,
    delivery: &DeliveryConfig,
    spec: &ConsumerSpec,
    on_end: OnEnd,
) -> Pump {
    let (stop, stop_rx) = watch::channel(false);
    let watch = StallWatch::new(pipeline.clone(), spec.clone(), delivery.clone());
    let task = tokio::spawn(run(
        source,
        pipeline.clone(),
        delivery.max_in_flight.max(1),
        delivery.ack_wait(),
        stop_rx,
        on_end,
        watch,
    ));
    Pump { stop, task }
}

/// The pump's loop (see the module note).
async fn run(
    mut source: EventSource,
    pipeline: Arc<Pipeline>,
    limit: usize,
    ack_wait: Duration,
    mut stop: watch::Receiver<bool>,
    on_end: OnEnd,
    mut watch: StallWatch,
) -> Option<EventSource> {
    let id = pipeline.connector.id.clone();
    let keyed = pipeline.connector.trigger.ordering_key.is_some();
    let mut tasks = JoinSet::new();
    let mut spawner = Spawner {
        pipeline: pipeline.clone(),
        permits: Arc::new(Semaphore::new(limit)),
        done: mpsc::unbounded_channel(),
        heartbeat: keep_alive(ack_wait),
    };
    let (due_tx, mut due_rx) = mpsc::unbounded_channel::<()>();
    let mut lanes: Lanes<Delivery> = Lanes::new(ack_wait);
    let mut heartbeat = tokio::time::interval(keep_alive(ack_wait));
    let mut health = PullHealth::default();
    // A delivery slot taken before pulling: the next event may start at once.
    let mut slot: Option<OwnedSemaphorePermit> = None;
    let ended = loop {
        if let Some(why) = reap(&mut tasks) {
            break Some(why);
        }
        tokio::select! {
            _ = stop.changed() => break None,
            Some((key, finished)) = spawner.done.1.recv() => {
                let retry = match finished { Finished::Retry(d) => Some(d), Finished::Done => None };
                let now = Instant::now();
                match lanes.finished(&key, retry, now) {
                    Some(next) => spawner.waiting(&mut tasks, Some(key), next),
                    None => if let Some(delay) = retry {
                        // The key waits for its head to come back; if it is overdue, the
                        // retry-timer actor wakes us to open the lane.
                        let due = due_tx.clone();
                        pipeline.services.timers.at(now + delay + ack_wait, move || {
                            let _ = due.send(());
                        });
                    },
                }
            }
            Some(()) = due_rx.recv() => {
                for d in lanes.expire(Instant::now()) {
                    let key = ordering_key(&pipeline, &d);
                    spawner.waiting(&mut tasks, key, d);
                }
            }
            _ = heartbeat.tick(), if lanes.held_count() > 0 => {
                for d in lanes.held() {
                    if let Err(e) = d.in_progress().await {
                        tracing::warn!("[{id}] {e}");
                    }
                }
            }
            _ = watch.tick.tick() => {
                // Held events wait for their key's turn: not a stall.
                if lanes.held_count() == 0 {
                    watch.guard(&mut source).await;
                }
            }
            permit = spawner.permits.clone().acquire_owned(), if slot.is_none() => {
                match permit {
                    Ok(p) => slot = Some(p),
                    Err(_) => break None,
                }
            }
            next = source.next(), if slot.is_some() => {
                watch.received = true;
                match health.take(next, &id) {
                    Err(why) => break Some(why),
                    Ok(None) => {}
                    Ok(Some(d)) if !is_mine(&pipeline, &d) => {
                        // The consumer's filter was changed for a new definition of this
                        // connector: leave the event to it.
                        let _ = d.retry_after(NOT_MINE_DELAY).await;
                    }
                    Ok(Some(d)) => {
                        let key = if keyed { ordering_key(&pipeline, &d) } else { None };
                        match key {
                            None => spawner.now(&mut tasks, slot.take(), None, d),
                            Some(key) => {
                                let seq = d.stream_sequence;
                                if let Arrival::Run(d) = lanes.arrive(&key, seq, d, Instant::now()) {
                                    spawner.now(&mut tasks, slot.take(), Some(key), d);
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    drop(slot);
    // Drain: let what is in flight finish.
    finish_all(&mut tasks, &id).await;
    // Held events were never attempted: hand them back so JetStream offers them again at once.
    for d in lanes.drain() {
        let _ = d.retry_after(Duration::ZERO).await;
    }
    match ended {
        Some(why) => {
            on_end(why);
            None
        }
        None => Some(source),
    }
}

/// How often waiting events tell JetStream they are still being worked on.
fn keep_alive(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(100))
}

/// A keyed delivery ended: its key, and how.
type KeyDone = (String, Finished);

/// Starts delivery tasks.
struct Spawner {
    pipeline: Arc<Pipeline>,
    permits: Arc<Semaphore>,
    /// Keyed deliveries report their end here (their key's next event may run).
    done: (
        mpsc::UnboundedSender<KeyDone>,
        mpsc::UnboundedReceiver<KeyDone>,
    ),
    heartbeat: Duration,
}

impl Spawner {
    /// Runs `d` now, on the slot the pump took for it.
    fn now(
        &self,
        tasks: &mut JoinSet<()>,
        slot: Option<OwnedSemaphorePermit>,
        key: Option<String>,
        d: Delivery,
    ) {
        let (p, done) = (self.pipeline.clone(), self.done.0.clone());
        let counted = InProcess::new(p.stats());
        tasks.spawn(async move {
            let finished = p.handle(d).await;
            drop((slot, counted));
            if let Some(key) = key {
                let _ = done.send((key, finished));
            }
        });
    }

    /// Runs `d` (the next of its key) once a slot is free, keeping it alive meanwhile.
    fn waiting(&self, tasks: &mut JoinSet<()>, key: Option<String>, d: Delivery) {
        let (p, done, permits) = (
            self.pipeline.clone(),
            self.done.0.clone(),
            self.permits.clone(),
        );
        let counted = InProcess::new(p.stats());
        let every = self.heartbeat;
        tasks.spawn(async move {
            let _counted = counted;
            let Some(_slot) = slot_for(&permits, &d, every).await else {
                return;
            };
            let finished = p.handle(d).await;
            if let Some(key) = key {
                let _ = done.send((key, finished));
            }
        });
    }
}

/// A delivery slot; while waiting for one, `d` tells JetStream it is still being worked on.
async fn slot_for(
    permits: &Arc<Semaphore>,
    d: &Delivery,
    every: Duration,
) -> Option<OwnedSemaphorePermit> {
    let acquire = permits.clone().acquire_owned();
    tokio::pin!(acquire);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            p = &mut acquire => return p.ok(),
            _ = beat.tick() => { let _ = d.in_progress().await; }
        }
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
        item: Option<Result<Delivery, BusError>>,
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

/// Collects finished delivery tasks; a panicked one stops the pump (its event is redelivered).
fn reap(tasks: &mut JoinSet<()>) -> Option<String> {
    while let Some(done) = tasks.try_join_next() {
        if let Err(e) = done {
            if e.is_panic() {
                return Some(format!("a delivery panicked: {e}"));
            }
        }
    }
    None
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
