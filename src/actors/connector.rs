//! Connector actor: owns one connector's durable consumer and its pump task, which pulls
//! events and runs up to `maxInFlight` deliveries at once.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::bus::{ConsumerSpec, EventSource};
use crate::config::DeliveryConfig;
use crate::delivery::Pipeline;

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
        let pump = tokio::spawn(pump(
            source,
            args.pipeline.clone(),
            args.delivery.max_in_flight.max(1),
            stop_rx,
            myself,
        ));
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

fn break_with(actor: &ActorRef<ConnectorMsg>, why: String) {
    let _ = actor.send_message(ConnectorMsg::PumpEnded(why));
}
