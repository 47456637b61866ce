//! Supervisor actor: spawns one connector actor per connector, restarts a crashed one with
//! backoff under a restart limit, answers status questions and drains everything on shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;

use super::connector::{ConnectorActor, ConnectorArgs, ConnectorMsg};
use crate::bus::Bus;
use crate::config::DeliveryConfig;
use crate::connector::Connector;
use crate::delivery::{ConnectorStats, Pipeline};
use crate::http_client::HttpClient;
use crate::metrics::CONNECTOR_RESTARTS_TOTAL;

/// More than this many restarts within [`RESTART_WINDOW`] and the connector is given up on.
pub const MAX_RESTARTS: usize = 10;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Messages to the supervisor.
pub enum SupervisorMsg {
    /// Start (or restart) the connector with this id.
    Start(String),
    /// The state of every connector.
    Status(RpcReplyPort<Vec<ConnectorView>>),
    /// The actor currently running a connector (tests and tools).
    Lookup(String, RpcReplyPort<Option<ActorRef<ConnectorMsg>>>),
    /// Drain every connector (finish in-flight deliveries), then reply.
    DrainAll(RpcReplyPort<()>),
}

/// Where a connector is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Starting,
    Running,
    Restarting,
    Failed,
    Stopped,
}

/// What status pages show of one connector.
#[derive(Clone, Serialize)]
pub struct ConnectorView {
    pub id: String,
    pub consumer: String,
    pub topic: String,
    pub origin: String,
    pub state: RunState,
    pub restarts: usize,
    pub delivered: u64,
    pub failed: u64,
    pub parked: u64,
    pub filtered: u64,
    pub last_error: Option<String>,
    /// Publish-to-2xx latency seen by this process, milliseconds.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Most recent failures, newest last.
    pub recent_failures: Vec<crate::delivery::FailureNote>,
}

/// What the supervisor shares with every connector it starts.
#[derive(Clone)]
pub struct Deps {
    pub bus: Bus,
    pub http: HttpClient,
    pub delivery: DeliveryConfig,
    /// When the runtime started: new consumers deliver events published from then on.
    pub started_at: time::OffsetDateTime,
    /// Endpoint actors (rate limits, concurrency, circuit breakers), shared by all connectors.
    pub endpoints: Arc<crate::actors::endpoint::EndpointRegistry>,
    /// The audit actor (`None`: auditing off).
    pub audit: Option<ActorRef<crate::actors::audit::AuditMsg>>,
    /// The token actor (outbound `auth:`), shared by all connectors.
    pub tokens: Option<crate::actors::token::Tokens>,
}

pub struct SupervisorArgs {
    pub deps: Deps,
    pub connectors: Vec<Arc<Connector>>,
}

struct Slot {
    pipeline: Arc<Pipeline>,
    actor: Option<ActorRef<ConnectorMsg>>,
    state: RunState,
    restarts: VecDeque<Instant>,
    total_restarts: usize,
}

pub struct SupervisorState {
    deps: Deps,
    slots: HashMap<String, Slot>,
    by_actor: HashMap<ActorId, String>,
    draining: bool,
}

pub struct Supervisor;

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut slots = HashMap::new();
        for c in args.connectors {
            let id = c.id.clone();
            let stats = Arc::new(ConnectorStats::default());
            let pipeline = Arc::new(Pipeline::new(c, &args.deps, stats));
            slots.insert(
                id.clone(),
                Slot {
                    pipeline,
                    actor: None,
                    state: RunState::Starting,
                    restarts: VecDeque::new(),
                    total_restarts: 0,
                },
            );
            myself.send_message(SupervisorMsg::Start(id))?;
        }
        Ok(SupervisorState {
            deps: args.deps,
            slots,
            by_actor: HashMap::new(),
            draining: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start(id) => {
                if state.draining {
                    return Ok(());
                }
                let Some(slot) = state.slots.get_mut(&id) else {
                    return Ok(());
                };
                if slot.actor.is_some() {
                    return Ok(());
                }
                let args = ConnectorArgs {
                    pipeline: slot.pipeline.clone(),
                    delivery: state.deps.delivery.clone(),
                    start_from: state.deps.started_at,
                };
                match Actor::spawn_linked(None, ConnectorActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.by_actor.insert(actor.get_id(), id.clone());
                        slot.actor = Some(actor);
                        slot.state = RunState::Running;
                    }
                    Err(e) => {
                        tracing::error!("[{id}] could not start: {e}");
                        schedule_restart(&myself, &id, slot);
                    }
                }
            }
            SupervisorMsg::Status(reply) => {
                let mut views: Vec<ConnectorView> =
                    state.slots.iter().map(|(id, s)| view(id, s)).collect();
                views.sort_by(|a, b| a.id.cmp(&b.id));
                let _ = reply.send(views);
            }
            SupervisorMsg::Lookup(id, reply) => {
                let _ = reply.send(state.slots.get(&id).and_then(|s| s.actor.clone()));
            }
            SupervisorMsg::DrainAll(reply) => {
                state.draining = true;
                let actors: Vec<_> = state
                    .slots
                    .values()
                    .filter_map(|s| s.actor.clone())
                    .collect();
                let drains = actors
                    .iter()
                    .map(|a| async move { ractor::call_t!(a, ConnectorMsg::Drain, 30_000) });
                futures::future::join_all(drains).await;
                for a in actors {
                    a.stop(None);
                }
                for s in state.slots.values_mut() {
                    s.state = RunState::Stopped;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".to_string()))
            }
            _ => return Ok(()),
        };
        let Some(id) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        let Some(slot) = state.slots.get_mut(&id) else {
            return Ok(());
        };
        slot.actor = None;
        if state.draining {
            slot.state = RunState::Stopped;
            return Ok(());
        }
        tracing::warn!("[{id}] connector actor ended: {why}");
        schedule_restart(&myself, &id, slot);
        Ok(())
    }
}

/// Restart policy: backoff 100 ms * 2^(recent restarts), at most 30 s; more than
/// [`MAX_RESTARTS`] within [`RESTART_WINDOW`] and the connector stays `failed`.
fn schedule_restart(myself: &ActorRef<SupervisorMsg>, id: &str, slot: &mut Slot) {
    let now = Instant::now();
    while slot
        .restarts
        .front()
        .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
    {
        slot.restarts.pop_front();
    }
    if slot.restarts.len() >= MAX_RESTARTS {
        slot.state = RunState::Failed;
        tracing::error!(
            "[{id}] gave up: {MAX_RESTARTS} restarts within {} s; its events stay on JetStream",
            RESTART_WINDOW.as_secs()
        );
        return;
    }
    let delay = Duration::from_millis(100 * (1u64 << slot.restarts.len().min(9)))
        .min(Duration::from_secs(30));
    slot.restarts.push_back(now);
    slot.total_restarts += 1;
    slot.state = RunState::Restarting;
    metrics::counter!(CONNECTOR_RESTARTS_TOTAL, "connector" => id.to_string()).increment(1);
    tracing::info!("[{id}] restarting in {} ms", delay.as_millis());
    myself.send_after(delay, {
        let id = id.to_string();
        move || SupervisorMsg::Start(id)
    });
}

fn view(id: &str, s: &Slot) -> ConnectorView {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &s.pipeline.connector;
    let st = &s.pipeline.stats;
    ConnectorView {
        id: id.to_string(),
        consumer: c.consumer.clone(),
        topic: c.trigger.topic.clone(),
        origin: c.origin.clone(),
        state: s.state.clone(),
        restarts: s.total_restarts,
        delivered: st.delivered.load(Relaxed),
        failed: st.failed.load(Relaxed),
        parked: st.parked.load(Relaxed),
        filtered: st.filtered.load(Relaxed),
        last_error: st.last_error.lock().ok().and_then(|e| e.clone()),
        latency_p50_ms: st.latency_p50_p99().map(|l| l.0),
        latency_p99_ms: st.latency_p50_p99().map(|l| l.1),
        recent_failures: st
            .recent_failures
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default(),
    }
}
