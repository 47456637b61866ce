//! Connector actor: owns one connector's durable consumer and its pump; swaps to a changed
//! definition without losing or skipping an event.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::pump::{self, Pump};
use super::stall::release_buffered;
use crate::bus::{BusError, ConsumerSpec, EventSource};
use crate::config::DeliveryConfig;
use crate::delivery::Pipeline;

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
        RpcReplyPort<Result<(), BusError>>,
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
    pump: Option<Pump>,
    pipeline: Arc<Pipeline>,
    spec: ConsumerSpec,
    delivery: DeliveryConfig,
}

impl Drop for ConnectorState {
    fn drop(&mut self) {
        // Killed or failed: in-flight deliveries end with the actor; JetStream redelivers them.
        if let Some(p) = self.pump.take() {
            p.task.abort();
        }
    }
}

/// The pump's way to fail its actor.
fn on_end(actor: ActorRef<ConnectorMsg>) -> pump::OnEnd {
    Box::new(move |why| {
        let _ = actor.send_message(ConnectorMsg::PumpEnded(why));
    })
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
        let pump = pump::start(
            source,
            &args.pipeline,
            &args.delivery,
            &args.spec,
            on_end(myself),
        );
        tracing::info!("[{}] consuming {} as {}", c.id, c.trigger.topic, c.consumer);
        Ok(ConnectorState {
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
                if let Some(p) = state.pump.take() {
                    p.close();
                    let _ = p.task.await;
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
                        let why = e.to_string();
                        let _ = reply.send(Err(e));
                        Err(why.into())
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
) -> Result<(), BusError> {
    let source: Option<EventSource> = match state.pump.take() {
        Some(p) => {
            p.swap();
            p.task.await.ok().flatten()
        }
        None => None,
    };
    let bus = &pipeline.bus;
    let source = match source {
        Some(s) if spec.topic == state.spec.topic => {
            // Same filter: keep the subscription (and what it already pulled); only the
            // description and metadata of the consumer change.
            bus.ensure_consumer(&spec, &state.delivery).await?;
            s
        }
        other => {
            if let Some(mut s) = other {
                release_buffered(&mut s).await;
            }
            bus.open_consumer(&spec, &state.delivery).await?
        }
    };
    let pump = pump::start(source, &pipeline, &state.delivery, &spec, on_end(myself));
    tracing::info!(
        "[{}] applied: consuming {} as {}",
        pipeline.connector.id,
        spec.topic,
        spec.name
    );
    state.pump = Some(pump);
    state.pipeline = pipeline;
    state.spec = spec;
    Ok(())
}
