//! Breaker watch actor: follows the circuit breakers every instance shares (KV
//! `hms_sync_limits`, keys `breaker.*`) and tells this process's endpoint actors when another
//! instance opened or closed one.

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::endpoint::{EndpointMsg, Endpoints};
use super::shared::BREAKER_PREFIX;
use crate::limits::Breaker;

/// Messages to the breaker watch actor.
pub enum BreakerWatchMsg {
    /// The watch ended (the bucket went away, NATS is gone for good): fail, to be restarted.
    Ended(String),
}

/// What the breaker watch starts with.
#[derive(Clone)]
pub struct BreakerWatchArgs {
    pub endpoints: Endpoints,
}

pub struct BreakerWatch;

pub struct BreakerWatchState {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BreakerWatchState {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Actor for BreakerWatch {
    type Msg = BreakerWatchMsg;
    type State = BreakerWatchState;
    type Arguments = BreakerWatchArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BreakerWatchMsg>,
        args: BreakerWatchArgs,
    ) -> Result<BreakerWatchState, ActorProcessingErr> {
        let task = tokio::spawn(async move {
            let why = follow(&args).await;
            let _ = myself.send_message(BreakerWatchMsg::Ended(why));
        });
        Ok(BreakerWatchState { task })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BreakerWatchMsg>,
        msg: BreakerWatchMsg,
        _st: &mut BreakerWatchState,
    ) -> Result<(), ActorProcessingErr> {
        let BreakerWatchMsg::Ended(why) = msg;
        Err(why.into())
    }
}

/// Follows the breakers until the watch ends; returns why. Without shared state (breakers
/// per instance) there is nothing to follow: it waits for ever.
async fn follow(args: &BreakerWatchArgs) -> String {
    let Some(limits) = args.endpoints.limits() else {
        return std::future::pending().await;
    };
    let mut changes = match limits.watch::<Breaker>(&format!("{BREAKER_PREFIX}>")).await {
        Ok(w) => Box::pin(w),
        Err(e) => return e.to_string(),
    };
    while let Some((key, state)) = changes.next().await {
        if let Some(endpoint) = args.endpoints.by_breaker_key(&key).await {
            endpoint.slot.send(EndpointMsg::Shared(state));
        }
    }
    "the breaker watch ended".to_string()
}
