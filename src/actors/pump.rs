//! A connector's pump: pulls deliveries from its durable consumer and runs each in a task of
//! its own, at most `maxInFlight` at once. With `trigger.orderingKey`, events of one key take
//! turns in stream order (the lanes of [`crate::ordering`]): later events of a busy key wait
//! in memory, kept alive with in-progress acks, and a key whose head is scheduled again waits
//! for it, woken by the retry-timer actor when it is overdue.
//!
//! The pump asks the server for no more events than it has free delivery slots (the credit of
//! [`crate::bus::pull`]), so no event waits fetched and untaken while its ack timer runs, and it
//! never holds more events than it can start (events of a busy key aside). An event that
//! arrives without a free slot all the same (a pinned consumer's keep-alive request, a slot
//! taken meanwhile by a key's next event) waits for one kept alive with in-progress acks.
//! Stopped, it lets what is in flight finish, hands back what arrives meanwhile, and gives the
//! subscription back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_stream::{wrappers::WatchStream, StreamExt as _};

use super::stall::StallWatch;
use crate::bus::{
    covers, BusError, BusErrorKind, ConsumerSpec, Delivery, EventSource, REPLAY_PREFIX,
};
use crate::config::DeliveryConfig;
use crate::delivery::{Finished, InProcess, Pipeline};
use crate::ordering::{Arrival, Lanes};
use crate::template::Secrets;

/// How long an event that no longer matches this connector's topic (its filter is being changed
/// by a redeploy) waits before JetStream redelivers it, to the new definition.
const NOT_MINE_DELAY: Duration = Duration::from_millis(500);

/// How long an event that arrives while the audit trail holds work back waits before JetStream
/// offers it again.
const HELD_BACK_DELAY: Duration = Duration::from_secs(1);

/// Stopping for good: how long to wait for the server to confirm the subscription's close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Told why the pump stopped on its own (the subscription ended, or a delivery panicked).
pub type OnEnd = Box<dyn Fn(String) + Send + Sync>;

/// A running pump: stop it with [`Pump::swap`] or [`Pump::close`]; its task gives the
/// subscription back.
pub struct Pump {
    stop: watch::Sender<Stop>,
    pub task: tokio::task::JoinHandle<Option<EventSource>>,
}

/// Why the pump is asked to stop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Running,
    /// For a changed definition: the subscription (and what it pulled) may be used again.
    Swap,
    /// For good (shutdown, undeploy): the subscription is closed first, so that nothing asked
    /// for earlier is left on its way when the process goes; everything that still arrives
    /// is handed back.
    Close,
}

impl Pump {
    /// Stops pulling and finishes what is in flight, keeping the subscription for a swap.
    pub fn swap(&self) {
        let _ = self.stop.send(Stop::Swap);
    }

    /// Stops pulling for good: unsubscribes, finishes what is in flight, hands back the rest.
    pub fn close(&self) {
        let _ = self.stop.send(Stop::Close);
    }
}

/// Starts the pump of `pipeline` on `source`.
pub fn start(
    source: EventSource,
    pipeline: &Arc<Pipeline>,
    delivery: &DeliveryConfig,
    spec: &ConsumerSpec,
    on_end: OnEnd,
) -> Pump {
    let (stop, stop_rx) = watch::channel(Stop::Running);
    let watch = StallWatch::new(pipeline.clone(), spec.clone(), delivery.clone());
    let task = tokio::spawn(run(
        source,
        pipeline.clone(),
        Limits {
            slots: delivery.max_in_flight.max(1),
            ack_wait: delivery.ack_wait(),
            pin_check: delivery.pin_timeout() / 4,
        },
        stop_rx,
        on_end,
        watch,
    ));
    Pump { stop, task }
}

/// The pump's numbers.
struct Limits {
    /// Deliveries at once.
    slots: usize,
    ack_wait: Duration,
    /// How often a keyed connector checks that it still holds its consumer's pin.
    pin_check: Duration,
}

/// The pump's loop (see the module note).
async fn run(
    mut source: EventSource,
    pipeline: Arc<Pipeline>,
    limits: Limits,
    stop: watch::Receiver<Stop>,
    on_end: OnEnd,
    mut watch: StallWatch,
) -> Option<EventSource> {
    let Limits {
        slots: limit,
        ack_wait,
        pin_check: pin_check_every,
    } = limits;
    let id = pipeline.connector.id.clone();
    let spec_name = watch.consumer().to_string();
    let keyed = pipeline.connector.trigger.ordering_key.is_some();
    let mut tasks = JoinSet::new();
    let mut spawner = Spawner {
        pipeline: pipeline.clone(),
        permits: Arc::new(Semaphore::new(limit)),
        freed: Arc::new(Notify::new()),
        done: mpsc::unbounded_channel(),
        heartbeat: keep_alive(ack_wait),
    };
    let (due_tx, mut due_rx) = mpsc::unbounded_channel::<()>();
    let mut lanes: Lanes<Delivery> = Lanes::new(ack_wait);
    let mut takeover = Takeover::new(ack_wait);
    let mut takeover_poll = tokio::time::interval(TAKEOVER_POLL);
    let mut pin_check = tokio::time::interval(pin_check_every);
    let mut reconnects = pipeline.bus.reconnects();
    reconnects.mark_unchanged();
    // The rare wake-ups wait across the loop's turns (a waiter made anew each turn would be
    // registered and dropped again for every event).
    let mut reconnected = WatchStream::from_changes(reconnects);
    let mut stopped = WatchStream::from_changes(stop.clone());
    let mut heartbeat = tokio::time::interval(keep_alive(ack_wait));
    let mut health = PullHealth::default();
    let freed = spawner.freed.clone();
    let mut freed_wait = std::pin::pin!(freed.notified());
    // While the audit trail refuses records, no new delivery starts (its events stay on
    // JetStream): see `services::audit::HoldBack`.
    let audit_hold = pipeline.services.audit.hold_back();
    let mut audit_changed = WatchStream::from_changes(audit_hold.clone());
    let ended = loop {
        if let Some(why) = reap(&mut tasks) {
            break Some(why);
        }
        // Ask for as many events as there are free slots (and no more).
        let free = if *audit_hold.borrow() {
            0
        } else {
            spawner.permits.available_permits()
        };
        if let Err(e) = source.want(free, limit).await {
            tracing::warn!("[{id}] {e}");
        }
        tokio::select! {
            Some(_) = audit_changed.next() => {}
            // Told to stop, or the pump's owner is gone.
            _ = stopped.next() => break None,
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
            _ = heartbeat.tick(), if lanes.held_count() > 0 || !takeover.held.is_empty() => {
                for d in lanes.held().chain(takeover.held.iter()) {
                    if let Err(e) = d.in_progress().await {
                        tracing::warn!("[{id}] {e}");
                    }
                }
            }
            _ = pin_check.tick(), if keyed && takeover.pin.is_some() && busy(&pipeline, &lanes) => {
                if takeover.lost(&pipeline, &spec_name).await {
                    for d in lanes.drain().into_iter().chain(std::mem::take(&mut takeover.held)) {
                        let _ = d.retry_after(Duration::ZERO).await;
                    }
                }
            }
            _ = takeover_poll.tick(), if takeover.waiting() => {
                let ours = pipeline.stats().in_process.load(std::sync::atomic::Ordering::Relaxed)
                    + (lanes.held_count() + lanes.retrying_count() + takeover.held.len()) as u64;
                if takeover.settled(&pipeline, &spec_name, ours).await {
                    let mut held = std::mem::take(&mut takeover.held);
                    held.sort_by_key(|d| d.stream_sequence);
                    for d in held {
                        match ordering_key(&pipeline, &d) {
                            None => spawner.waiting(&mut tasks, None, d),
                            Some(key) => {
                                let seq = d.stream_sequence;
                                if let Arrival::Run(d) = lanes.arrive(&key, seq, d, Instant::now()) {
                                    spawner.waiting(&mut tasks, Some(key), d);
                                }
                            }
                        }
                    }
                }
            }
            Some(_) = reconnected.next() => {
                // The server may have dropped the pull requests while we were away.
                watch.reopen(&mut source, "NATS reconnected").await;
            }
            _ = watch.tick.tick() => {
                // Held events wait for their key's turn, held-back ones for the audit trail:
                // not a stall.
                if lanes.held_count() == 0 && !*audit_hold.borrow() {
                    watch.guard(&mut source).await;
                }
            }
            // A delivery ended and freed its slot: ask for more at the top of the loop.
            () = freed_wait.as_mut() => freed_wait.set(freed.notified()),
            next = source.next() => {
                watch.received = true;
                match health.take(next, &id) {
                    Err(why) => break Some(why),
                    Ok(Pulled::Passing) => {}
                    Ok(Pulled::Gone(why)) => watch.reopen(&mut source, &why).await,
                    Ok(Pulled::Event(d)) if !is_mine(&pipeline, &d) => {
                        // The consumer's filter was changed for a new definition of this
                        // connector: leave the event to it.
                        let _ = d.retry_after(NOT_MINE_DELAY).await;
                    }
                    Ok(Pulled::Event(d)) if *audit_hold.borrow() => {
                        // Asked for before the audit trail held work back (or a pinned
                        // consumer's keep-alive request): it waits on JetStream too.
                        let _ = d.retry_after(HELD_BACK_DELAY).await;
                    }
                    Ok(Pulled::Event(d)) if keyed && (takeover.new_pin(&d) || takeover.waiting()) => {
                        // Held until the earlier holder's events are back (see `Takeover`).
                        takeover.held.push(*d);
                    }
                    Ok(Pulled::Event(d)) => {
                        let d = *d;
                        let key = if keyed { ordering_key(&pipeline, &d) } else { None };
                        match key {
                            None => spawner.start(&mut tasks, None, d),
                            Some(key) => {
                                let seq = d.stream_sequence;
                                if let Arrival::Run(d) = lanes.arrive(&key, seq, d, Instant::now()) {
                                    spawner.start(&mut tasks, Some(key), d);
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    // Drain: let what is in flight finish; what still arrives for requests made earlier is
    // handed back at once (it would otherwise wait unacked, past its ack wait). Stopping for
    // good, the subscription is closed first: the server then sends nothing more to it (also
    // not the events handed back), and what it sent before arrives until the close is
    // confirmed.
    let closing = *stop.borrow() == Stop::Close;
    if closing {
        source.close().await;
    }
    finish_all(&mut tasks, &mut source, &id).await;
    if closing {
        let until = tokio::time::Instant::now() + CLOSE_WAIT;
        while let Ok(Some(next)) = tokio::time::timeout_at(until, source.next()).await {
            if let Ok(d) = next {
                let _ = d.retry_after(Duration::ZERO).await;
            }
        }
    } else {
        super::stall::release_buffered(&mut source).await;
    }
    // Held events were never attempted: hand them back so JetStream offers them again at once.
    for d in lanes.drain().into_iter().chain(takeover.held) {
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

/// A keyed connector's takeover: when this instance receives its events under a new pin
/// (it just started, or another instance died), the events an earlier holder received and
/// never settled come back only after their ack wait. Until they are back, nothing of the
/// connector runs here: everything received is held, then fed to the lanes in stream order,
/// so no key's later event overtakes an earlier one across the takeover.
struct Takeover {
    /// The pin this instance holds (from the `Nats-Pin-Id` of its deliveries).
    pin: Option<String>,
    /// Events held while a takeover waits.
    held: Vec<Delivery>,
    /// Waiting since, and for at most this long (a later retry of the earlier holder may be
    /// due much later: past this, order across the takeover is best effort).
    since: Option<Instant>,
    limit: Duration,
}

/// How often a takeover asks the consumer whether the earlier holder's events are back.
const TAKEOVER_POLL: Duration = Duration::from_millis(100);

impl Takeover {
    fn new(ack_wait: Duration) -> Takeover {
        Takeover {
            pin: None,
            held: Vec::new(),
            since: None,
            limit: ack_wait * 2,
        }
    }

    fn waiting(&self) -> bool {
        self.since.is_some()
    }

    /// Whether `d` comes under a new pin (then a takeover starts).
    fn new_pin(&mut self, d: &Delivery) -> bool {
        let pin = d.header(crate::bus::PIN_HEADER);
        if pin.is_some() && pin != self.pin {
            self.pin = pin;
            self.since.get_or_insert_with(Instant::now);
            return true;
        }
        false
    }

    /// Whether another instance holds the pin now: this one stopped pulling long enough for
    /// the server to move it (a pause, a slow machine). Then this instance hands back what it
    /// holds and starts nothing more, so that two instances never work on one key at once.
    async fn lost(&mut self, pipeline: &Pipeline, spec_name: &str) -> bool {
        let Some(ours) = &self.pin else {
            return false;
        };
        let Ok(stats) = pipeline.bus.consumer_stats(spec_name).await else {
            return false;
        };
        if stats.pin_id.as_ref().is_some_and(|p| p != ours) {
            tracing::info!(
                "[{}] another instance holds the pin of {spec_name} now: handing back what waits here",
                pipeline.connector.id
            );
            self.pin = None;
            self.since = None;
            return true;
        }
        false
    }

    /// Ends the takeover when every unacknowledged event of the consumer is this instance's
    /// (`ours`: held, running, or waiting here), or when it waited too long.
    async fn settled(&mut self, pipeline: &Pipeline, spec_name: &str, ours: u64) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        let back = match pipeline.bus.consumer_stats(spec_name).await {
            Ok(stats) => stats.ack_pending <= ours,
            Err(_) => false,
        };
        if !back && since.elapsed() < self.limit {
            return false;
        }
        if !back {
            tracing::warn!(
                "[{}] events an earlier instance received did not come back within {} ms; continuing (their keys' order is best effort)",
                pipeline.connector.id,
                self.limit.as_millis()
            );
        }
        self.since = None;
        true
    }
}

/// Whether anything of the connector runs or waits here (an idle one need not check its pin).
fn busy(pipeline: &Pipeline, lanes: &Lanes<Delivery>) -> bool {
    lanes.held_count() > 0
        || pipeline
            .stats()
            .in_process
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
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
    /// Told whenever a delivery gives its slot back.
    freed: Arc<Notify>,
    /// Keyed deliveries report their end here (their key's next event may run).
    done: (
        mpsc::UnboundedSender<KeyDone>,
        mpsc::UnboundedReceiver<KeyDone>,
    ),
    heartbeat: Duration,
}

impl Spawner {
    /// Runs `d` on a free slot, or once one is free (kept alive meanwhile).
    fn start(&self, tasks: &mut JoinSet<()>, key: Option<String>, d: Delivery) {
        match self.permits.clone().try_acquire_owned() {
            Ok(slot) => self.now(tasks, slot, key, d),
            Err(_) => self.waiting(tasks, key, d),
        }
    }

    /// Runs `d` now, on `slot`.
    fn now(
        &self,
        tasks: &mut JoinSet<()>,
        slot: OwnedSemaphorePermit,
        key: Option<String>,
        d: Delivery,
    ) {
        let (p, done, freed) = (
            self.pipeline.clone(),
            self.done.0.clone(),
            self.freed.clone(),
        );
        let counted = InProcess::new(p.stats());
        tasks.spawn(deliver(p, d, (slot, counted), freed, key, done));
    }

    /// Runs `d` (the next of its key) once a slot is free, keeping it alive meanwhile.
    fn waiting(&self, tasks: &mut JoinSet<()>, key: Option<String>, d: Delivery) {
        let (p, done, permits, freed) = (
            self.pipeline.clone(),
            self.done.0.clone(),
            self.permits.clone(),
            self.freed.clone(),
        );
        let counted = InProcess::new(p.stats());
        let every = self.heartbeat;
        tasks.spawn(async move {
            let _counted = counted;
            let Some(slot) = slot_for(&permits, &d, every).await else {
                return;
            };
            let finished = Box::pin(p.handle(d)).await;
            drop(slot);
            freed.notify_one();
            if let Some(key) = key {
                let _ = done.send((key, finished));
            }
        });
    }
}

/// One delivery on its slot, then the slot back and, keyed, its end told to the pump. The
/// delivery's own future is boxed, so that this task stays small: spawning a task, ending it
/// and reading its end each copy its whole future.
async fn deliver(
    p: Arc<Pipeline>,
    d: Delivery,
    slot: (OwnedSemaphorePermit, InProcess),
    freed: Arc<Notify>,
    key: Option<String>,
    done: mpsc::UnboundedSender<KeyDone>,
) {
    let finished = Box::pin(p.handle(d)).await;
    drop(slot);
    freed.notify_one();
    if let Some(key) = key {
        let _ = done.send((key, finished));
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
    // Hostile input must not take the pump down: a panic renders no key.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        template.render_text(&event, Secrets::Masked).ok()
    }))
    .ok()
    .flatten()
}

/// What one pull brought.
enum Pulled {
    Event(Box<Delivery>),
    /// A passing error (logged).
    Passing,
    /// The pull is gone (its heartbeats stopped): re-create it now.
    Gone(String),
}

/// Counts pull errors in a row: the pump gives up (and the actor restarts) after ten.
#[derive(Default)]
struct PullHealth {
    errors_in_a_row: u32,
}

impl PullHealth {
    /// What the pull brought, or why the pump stops.
    fn take(
        &mut self,
        item: Option<Result<Delivery, BusError>>,
        id: &str,
    ) -> Result<Pulled, String> {
        match item {
            None => Err("the consumer's subscription ended".to_string()),
            Some(Err(e)) if e.kind == BusErrorKind::MissedHeartbeat => Ok(Pulled::Gone(
                "its pull request's idle heartbeats stopped".into(),
            )),
            Some(Err(e)) => {
                self.errors_in_a_row += 1;
                tracing::warn!("[{id}] {e}");
                if self.errors_in_a_row >= 10 {
                    Err(format!("10 pull errors in a row, last: {e}"))
                } else {
                    Ok(Pulled::Passing)
                }
            }
            Some(Ok(d)) => {
                self.errors_in_a_row = 0;
                Ok(Pulled::Event(Box::new(d)))
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

/// Drain: lets what is in flight finish, handing back at once whatever still arrives.
async fn finish_all(tasks: &mut JoinSet<()>, source: &mut EventSource, id: &str) {
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                None => return,
                Some(Err(e)) if e.is_panic() => {
                    tracing::error!("[{id}] a delivery panicked: {e}");
                }
                Some(_) => {}
            },
            Some(Ok(d)) = source.next(), if source.outstanding() > 0 => {
                let _ = d.retry_after(Duration::ZERO).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::delivery::future_size;

    /// A delivery task is copied whole when spawned, when it ends and when its end is read:
    /// with the delivery inline it was 11 KB, copied four times per event.
    #[test]
    #[allow(unreachable_code, clippy::diverging_sub_expression)]
    fn a_delivery_task_stays_small() {
        let task = future_size(|| {
            super::deliver(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        assert!(
            task <= 1024,
            "a delivery task's future is {task} bytes (at most 1024)"
        );
    }
}
