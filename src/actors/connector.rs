//! Connector actor: owns one connector's durable consumer and its pump task, which pulls
//! events and runs up to `maxInFlight` deliveries at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::bus::{ConsumerSpec, Delivery, EventSource};
use crate::config::DeliveryConfig;
use crate::delivery::{Finished, Pipeline};
use crate::ordering::{Arrival, Lanes};
use crate::template::Secrets;

/// Messages to a connector actor.
pub enum ConnectorMsg {
    /// The pump stopped on its own (subscription ended, or a delivery task panicked): the actor
    /// fails, and its supervisor restarts it.
    PumpEnded(String),
    /// Stop pulling, finish what is in flight, then reply.
    Drain(RpcReplyPort<()>),
}

pub struct ConnectorActor;

pub struct ConnectorArgs {
    pub pipeline: Arc<Pipeline>,
    pub delivery: DeliveryConfig,
    /// Where a newly created consumer starts (see [`ConsumerSpec::start_from`]).
    pub start_from: time::OffsetDateTime,
}

pub struct ConnectorState {
    stop: watch::Sender<bool>,
    pump: Option<tokio::task::JoinHandle<()>>,
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
        let spec = ConsumerSpec {
            name: c.consumer.clone(),
            start_from: args.start_from,
            description: c.id.clone(),
            topic: c.trigger.topic.clone(),
            metadata: [
                ("connector".to_string(), c.id.clone()),
                ("origin".to_string(), c.origin.clone()),
            ]
            .into_iter()
            .collect(),
        };
        let source = args
            .pipeline
            .bus
            .open_consumer(&spec, &args.delivery)
            .await?;
        let (stop, stop_rx) = watch::channel(false);
        let limit = args.delivery.max_in_flight.max(1);
        let pump = if c.trigger.ordering_key.is_some() {
            tokio::spawn(pump_keyed(
                source,
                args.pipeline.clone(),
                limit,
                args.delivery.ack_wait(),
                stop_rx,
                myself,
            ))
        } else {
            tokio::spawn(pump(source, args.pipeline.clone(), limit, stop_rx, myself))
        };
        tracing::info!("[{}] consuming {} as {}", c.id, c.trigger.topic, c.consumer);
        Ok(ConnectorState {
            stop,
            pump: Some(pump),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
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
        }
    }
}

/// Pulls deliveries and runs each in its own task, at most `limit` at once.
async fn pump(
    mut source: EventSource,
    pipeline: Arc<Pipeline>,
    limit: usize,
    mut stop: watch::Receiver<bool>,
    actor: ActorRef<ConnectorMsg>,
) {
    let permits = Arc::new(Semaphore::new(limit));
    let mut tasks = JoinSet::new();
    let mut errors_in_a_row = 0u32;
    let ended = loop {
        // Reap finished tasks; a panicked delivery fails the actor (its event is redelivered).
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                if e.is_panic() {
                    break_with(&actor, format!("a delivery panicked: {e}"));
                }
            }
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break None },
            _ = stop.changed() => break None,
        };
        let next = tokio::select! {
            n = source.next() => n,
            _ = stop.changed() => break None,
        };
        match next {
            None => break Some("the consumer's subscription ended".to_string()),
            Some(Err(e)) => {
                errors_in_a_row += 1;
                tracing::warn!("[{}] {e}", pipeline.connector.id);
                if errors_in_a_row >= 10 {
                    break Some(format!("10 pull errors in a row, last: {e}"));
                }
            }
            Some(Ok(delivery)) => {
                errors_in_a_row = 0;
                let p = pipeline.clone();
                tasks.spawn(async move {
                    p.handle(delivery).await;
                    drop(permit);
                });
            }
        }
    };
    // Drain: let what is in flight finish.
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            if e.is_panic() {
                tracing::error!("[{}] a delivery panicked: {e}", pipeline.connector.id);
            }
        }
    }
    if let Some(why) = ended {
        break_with(&actor, why);
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
) {
    let permits = Arc::new(Semaphore::new(limit));
    let mut tasks = JoinSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Option<String>, Finished)>();
    let mut lanes: Lanes<Delivery> = Lanes::new(ack_wait);
    let mut heartbeat = tokio::time::interval((ack_wait / 3).max(Duration::from_millis(100)));
    let mut errors_in_a_row = 0u32;
    let spawn = |tasks: &mut JoinSet<()>, key: Option<String>, d: Delivery| {
        let (p, permits, done) = (pipeline.clone(), permits.clone(), done_tx.clone());
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let finished = p.handle(d).await;
            let _ = done.send((key, finished));
        });
    };
    let ended = loop {
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                if e.is_panic() {
                    break_with(&actor, format!("a delivery panicked: {e}"));
                }
            }
        }
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
            next = source.next() => match next {
                None => break Some("the consumer's subscription ended".to_string()),
                Some(Err(e)) => {
                    errors_in_a_row += 1;
                    tracing::warn!("[{}] {e}", pipeline.connector.id);
                    if errors_in_a_row >= 10 {
                        break Some(format!("10 pull errors in a row, last: {e}"));
                    }
                }
                Some(Ok(d)) => {
                    errors_in_a_row = 0;
                    match ordering_key(&pipeline, &d) {
                        None => spawn(&mut tasks, None, d),
                        Some(key) => {
                            let seq = d.stream_sequence;
                            if let Arrival::Run(d) = lanes.arrive(&key, seq, d, Instant::now()) {
                                spawn(&mut tasks, Some(key), d);
                            }
                        }
                    }
                }
            },
        }
    };
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            if e.is_panic() {
                tracing::error!("[{}] a delivery panicked: {e}", pipeline.connector.id);
            }
        }
    }
    // Held events were never attempted: JetStream offers them again after ackWaitMs.
    if let Some(why) = ended {
        break_with(&actor, why);
    }
}

/// The event's ordering key; `None` (no ordering) when it cannot be rendered (such an event
/// is parked by its delivery anyway).
fn ordering_key(pipeline: &Pipeline, d: &Delivery) -> Option<String> {
    let template = pipeline.connector.trigger.ordering_key.as_ref()?;
    let event: serde_json::Value = serde_json::from_slice(d.payload()).ok()?;
    template.render_text(&event, Secrets::Masked).ok()
}

fn break_with(actor: &ActorRef<ConnectorMsg>, why: String) {
    let _ = actor.send_message(ConnectorMsg::PumpEnded(why));
}
