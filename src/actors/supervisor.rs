//! Connector supervisor: one connector actor per connector, plus the registry watch actor;
//! restarts, hot deploy/change/undeploy, status, drain.
//!
//! It spawns one connector actor per connector, restarts a crashed one with backoff under a
//! restart limit, starts, swaps or stops connectors as the registry changes (registry wins over
//! the connectors folder for the same id), answers status questions and drains on shutdown.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;

use super::connector::{ConnectorActor, ConnectorArgs, ConnectorMsg};
use super::watch::{Directive, WatchActor, WatchArgs};
use crate::bus::BusError;
use crate::connector::Connector;
use crate::delivery::{ConnectorStats, Deps, Pipeline};
use crate::metrics::CONNECTOR_RESTARTS_TOTAL;
use crate::registry::{consumer_spec, Desired, Origin};
use crate::restart::{child_ended, Restarts, CONNECTORS, SERVICES};

/// Messages to the supervisor.
pub enum SupervisorMsg {
    /// Start (or restart) the connector with this id.
    Start(String),
    /// What a registry write asks (from the watch): `Deploy` starts the connector if new and
    /// swaps it in if changed (drain, then continue with the new definition on the same
    /// durable consumer); `Undeploy` stops it (drain first), or goes back to the connectors
    /// folder's definition of the same id if there is one; `Invalid` is reported in status
    /// while a running version keeps running.
    Registry(Directive),
    /// A swap ordered by `Deploy` finished (sent by the task awaiting it).
    Applied {
        id: String,
        revision: Option<u64>,
        result: Result<(), ApplyError>,
    },
    /// Start the registry watch again (sent to itself after a backoff).
    Watch,
    /// The state of every connector.
    Status(RpcReplyPort<Vec<ConnectorView>>),
    /// The definition (and status numbers) of every connector running or about to: what
    /// the status page's review, trace and charts read.
    Pipelines(RpcReplyPort<Vec<Arc<Pipeline>>>),
    /// The actor currently running a connector (tests and tools).
    Lookup(String, RpcReplyPort<Option<ActorRef<ConnectorMsg>>>),
    /// Drain every connector (finish in-flight deliveries), then reply.
    DrainAll(RpcReplyPort<()>),
    /// The connectors folder was read again (SIGHUP): its outbound connectors by id. New ones
    /// start, changed ones are swapped in, removed ones drain and stop, as registry changes
    /// are; the registry's definition of an id still wins. Replies what changed.
    Folder(HashMap<String, Arc<Connector>>, RpcReplyPort<FolderChanges>),
}

/// What re-reading the connectors folder changed (ids, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FolderChanges {
    /// Connectors started.
    pub added: Vec<String>,
    /// Connectors swapped to their new definition.
    pub changed: Vec<String>,
    /// Connectors drained and stopped.
    pub removed: Vec<String>,
    /// In the folder and in the registry: the registry's definition keeps running.
    pub shadowed: Vec<String>,
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
    /// A registry value that cannot run (see `registry_error`); nothing runs for it.
    Invalid,
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
    /// Deliveries this process is working on now (pulled, not yet acked or scheduled again).
    pub in_process: u64,
    pub last_error: Option<String>,
    /// Publish-to-2xx latency seen by this process, milliseconds.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Most recent failures, newest last.
    pub recent_failures: Vec<crate::delivery::FailureNote>,
    /// `registry` or `folder`.
    pub source: &'static str,
    /// The registry revision running now (None for a folder connector).
    pub revision: Option<u64>,
    /// The registry revision deployed, once different from `revision` while a swap runs.
    pub deployed_revision: Option<u64>,
    /// When the running registry revision was deployed (RFC 3339).
    pub deployed_at: Option<String>,
    /// The newest registry value for this id that could not run, with its problems.
    pub registry_error: Option<String>,
}

/// Why a swap to a new definition failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the connector actor did not answer: {0}")]
    NoAnswer(String),
}

/// What the registry watch needs besides the sink (the supervisor gives it that).
pub type WatchSpec = Box<dyn Fn(super::watch::Sink) -> WatchArgs + Send + Sync>;

pub struct SupervisorArgs {
    pub deps: Deps,
    /// What runs at start: the folder's connectors with registry ones in their place.
    pub connectors: Vec<Desired>,
    /// The folder's connectors by id (what runs again when a registry entry is deleted).
    pub folder: HashMap<String, Arc<Connector>>,
    /// Invalid registry values at start: (key, revision, error).
    pub invalid: Vec<(String, u64, String)>,
    /// The registry watch to run as a child (none: the registry is not followed).
    pub watch: Option<WatchSpec>,
}

struct Slot {
    /// The definition to run (the deployed one, also while a swap to it is in progress).
    pipeline: Arc<Pipeline>,
    origin: Origin,
    actor: Option<ActorRef<ConnectorMsg>>,
    state: RunState,
    restarts: Restarts,
    /// Registry revision the actor runs now (after the last acknowledged swap).
    running: Option<u64>,
    running_deployed_at: Option<String>,
    registry_error: Option<String>,
}

pub struct SupervisorState {
    deps: Deps,
    slots: HashMap<String, Slot>,
    by_actor: HashMap<ActorId, String>,
    draining: bool,
    folder: HashMap<String, Arc<Connector>>,
    /// Invalid registry values with no running version: key -> (revision, error).
    invalid: BTreeMap<String, (u64, String)>,
    /// The registry watch child: how to (re)start it, its actor, its restarts.
    watch: Option<WatchArgs>,
    watch_actor: Option<ActorId>,
    watch_restarts: Restarts,
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
        let mut state = SupervisorState {
            deps: args.deps,
            slots: HashMap::new(),
            by_actor: HashMap::new(),
            draining: false,
            folder: args.folder,
            invalid: args
                .invalid
                .into_iter()
                .map(|(k, r, e)| (k, (r, e)))
                .collect(),
            watch: None,
            watch_actor: None,
            watch_restarts: Restarts::default(),
        };
        if let Some(spec) = args.watch {
            let me = myself.clone();
            let sink: super::watch::Sink =
                Arc::new(move |d: Directive| me.send_message(SupervisorMsg::Registry(d)).is_ok());
            state.watch = Some(spec(sink));
            myself.send_message(SupervisorMsg::Watch)?;
        }
        for d in args.connectors {
            let id = d.connector.id.clone();
            state.slots.insert(id.clone(), new_slot(&state.deps, d));
            myself.send_message(SupervisorMsg::Start(id))?;
        }
        Ok(state)
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
                let start_from = slot.origin.start_from(state.deps.started_at);
                let args = ConnectorArgs {
                    pipeline: slot.pipeline.clone(),
                    delivery: state.deps.delivery.clone(),
                    spec: consumer_spec(&slot.pipeline.connector, &slot.origin, start_from),
                };
                match Actor::spawn_linked(None, ConnectorActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.by_actor.insert(actor.get_id(), id.clone());
                        slot.actor = Some(actor);
                        slot.state = RunState::Running;
                        slot.running = slot.origin.revision();
                        slot.running_deployed_at = slot.origin.deployed_at();
                    }
                    Err(e) => {
                        tracing::error!("[{id}] could not start: {e}");
                        schedule_restart(&myself, &id, slot);
                    }
                }
            }
            SupervisorMsg::Registry(Directive::Deploy(desired)) => {
                deploy(&myself, state, *desired).await
            }
            SupervisorMsg::Registry(Directive::Undeploy(id)) => undeploy(&myself, state, &id).await,
            SupervisorMsg::Registry(Directive::Invalid {
                key,
                revision,
                error,
            }) => match state.slots.get_mut(&key) {
                Some(slot) => {
                    slot.registry_error = Some(format!(
                        "revision {revision} is invalid; the previous definition keeps running: {error}"
                    ));
                }
                None => {
                    state.invalid.insert(key, (revision, error));
                }
            },
            SupervisorMsg::Applied {
                id,
                revision,
                result,
            } => {
                if let Some(slot) = state.slots.get_mut(&id) {
                    match result {
                        Ok(()) if slot.origin.revision() == revision => {
                            slot.running = revision;
                            slot.running_deployed_at = slot.origin.deployed_at();
                            tracing::info!("[{id}] now runs {}", slot.origin.describe());
                        }
                        Ok(()) => {}
                        Err(e) => tracing::warn!("[{id}] swap failed ({e}); restarting it"),
                    }
                }
            }
            SupervisorMsg::Status(reply) => {
                let mut views: Vec<ConnectorView> =
                    state.slots.iter().map(|(id, s)| view(id, s)).collect();
                views.extend(
                    state
                        .invalid
                        .iter()
                        .map(|(k, (r, e))| invalid_view(k, *r, e)),
                );
                views.sort_by(|a, b| a.id.cmp(&b.id));
                let _ = reply.send(views);
            }
            SupervisorMsg::Pipelines(reply) => {
                let mut all: Vec<Arc<Pipeline>> =
                    state.slots.values().map(|s| s.pipeline.clone()).collect();
                all.sort_by(|a, b| a.connector.id.cmp(&b.connector.id));
                let _ = reply.send(all);
            }
            SupervisorMsg::Lookup(id, reply) => {
                let _ = reply.send(state.slots.get(&id).and_then(|s| s.actor.clone()));
            }
            SupervisorMsg::Watch => {
                if state.draining {
                    return Ok(());
                }
                let Some(args) = state.watch.clone() else {
                    return Ok(());
                };
                match Actor::spawn_linked(None, WatchActor, args, myself.get_cell()).await {
                    Ok((a, _)) => state.watch_actor = Some(a.get_id()),
                    Err(e) => restart_watch(&myself, state, &e.to_string()),
                }
            }
            SupervisorMsg::Folder(folder, reply) => {
                let changes = refolder(&myself, state, folder).await;
                let _ = reply.send(changes);
            }
            SupervisorMsg::DrainAll(reply) => {
                state.draining = true;
                // No more deploys while draining.
                state.watch = None;
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
        let Some((cell, why)) = child_ended(evt) else {
            return Ok(());
        };
        if state.watch_actor == Some(cell.get_id()) {
            state.watch_actor = None;
            if !state.draining {
                restart_watch(&myself, state, &why);
            }
            return Ok(());
        }
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

/// Restarts a connector after its backoff ([`CONNECTORS`]); past the restart limit it stays
/// `failed` (its events stay on JetStream).
fn schedule_restart(myself: &ActorRef<SupervisorMsg>, id: &str, slot: &mut Slot) {
    let Some(delay) = slot.restarts.next(&CONNECTORS, Instant::now()) else {
        slot.state = RunState::Failed;
        tracing::error!(
            "[{id}] gave up: {} restarts within {} s; its events stay on JetStream",
            CONNECTORS.max,
            CONNECTORS.window.as_secs()
        );
        return;
    };
    slot.state = RunState::Restarting;
    metrics::counter!(CONNECTOR_RESTARTS_TOTAL, "connector" => id.to_string()).increment(1);
    tracing::info!("[{id}] restarting in {} ms", delay.as_millis());
    myself.send_after(delay, {
        let id = id.to_string();
        move || SupervisorMsg::Start(id)
    });
}

/// Starts the registry watch again after its backoff ([`SERVICES`]: never given up on).
fn restart_watch(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState, why: &str) {
    let delay = state
        .watch_restarts
        .next(&SERVICES, Instant::now())
        .unwrap_or(SERVICES.cap);
    tracing::warn!(
        "registry watch ended ({why}); restarting it in {} ms",
        delay.as_millis()
    );
    metrics::counter!(crate::metrics::SERVICE_RESTARTS_TOTAL, "service" => "registry watch")
        .increment(1);
    myself.send_after(delay, || SupervisorMsg::Watch);
}

fn new_slot(deps: &Deps, d: Desired) -> Slot {
    Slot {
        pipeline: Arc::new(Pipeline::new(
            d.connector,
            deps,
            Arc::new(ConnectorStats::default()),
        )),
        origin: d.origin,
        actor: None,
        state: RunState::Starting,
        restarts: Restarts::default(),
        running: None,
        running_deployed_at: None,
        registry_error: None,
    }
}

/// Starts a new connector, or swaps a running one to `desired`.
async fn deploy(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState, desired: Desired) {
    if state.draining {
        return;
    }
    let id = desired.connector.id.clone();
    state.invalid.remove(&id);
    let topic = desired.connector.trigger.topic.clone();
    // The stream captures the topic before a consumer is created on it.
    if let Err(e) = state
        .deps
        .bus
        .ensure_streams(std::slice::from_ref(&topic), &state.deps.streams)
        .await
    {
        tracing::error!("[{id}] cannot add {topic} to the event stream: {e}");
    }
    let Some(slot) = state.slots.get_mut(&id) else {
        tracing::info!("[{id}] starting {}", desired.origin.describe());
        state
            .slots
            .insert(id.clone(), new_slot(&state.deps, desired));
        let _ = myself.send_message(SupervisorMsg::Start(id));
        return;
    };
    if let (Origin::Folder(file), Origin::Registry(d)) = (&slot.origin, &desired.origin) {
        tracing::warn!(
            "[{id}] defined in {file} and in the registry: registry revision {} wins",
            d.revision
        );
    }
    slot.registry_error = None;
    slot.pipeline = Arc::new(Pipeline::new(
        desired.connector,
        &state.deps,
        slot.pipeline.stats().clone(),
    ));
    slot.origin = desired.origin;
    swap(myself, state.deps.started_at, &id, slot);
}

/// Orders the running actor to continue with the slot's definition (or starts one).
fn swap(
    myself: &ActorRef<SupervisorMsg>,
    started_at: time::OffsetDateTime,
    id: &str,
    slot: &mut Slot,
) {
    let revision = slot.origin.revision();
    let Some(actor) = slot.actor.clone() else {
        // Restarting: the pending Start uses the new definition. Failed: try again now.
        if slot.state == RunState::Failed {
            slot.restarts.clear();
            slot.state = RunState::Starting;
            let _ = myself.send_message(SupervisorMsg::Start(id.to_string()));
        }
        return;
    };
    tracing::info!(
        "[{id}] applying {}: draining in-flight events",
        slot.origin.describe()
    );
    let spec = consumer_spec(
        &slot.pipeline.connector,
        &slot.origin,
        slot.origin.start_from(started_at),
    );
    let pipeline = slot.pipeline.clone();
    let (me, id) = (myself.clone(), id.to_string());
    tokio::spawn(async move {
        let result = match ractor::call!(actor, ConnectorMsg::Apply, pipeline, spec) {
            Ok(r) => r.map_err(ApplyError::from),
            Err(e) => Err(ApplyError::NoAnswer(e.to_string())),
        };
        let _ = me.send_message(SupervisorMsg::Applied {
            id,
            revision,
            result,
        });
    });
}

/// Applies a new reading of the connectors folder (see [`SupervisorMsg::Folder`]).
async fn refolder(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    folder: HashMap<String, Arc<Connector>>,
) -> FolderChanges {
    let mut changes = FolderChanges::default();
    if state.draining {
        return changes;
    }
    let old = std::mem::replace(&mut state.folder, folder.clone());
    let mut ids: Vec<&String> = folder.keys().collect();
    ids.sort();
    for id in ids {
        let c = &folder[id];
        let desired = Desired {
            connector: c.clone(),
            origin: Origin::Folder(c.origin.clone()),
        };
        match state.slots.get(id) {
            None => {
                changes.added.push(id.clone());
                deploy(myself, state, desired).await;
            }
            Some(slot) if matches!(slot.origin, Origin::Registry(_)) => {
                changes.shadowed.push(id.clone());
            }
            Some(slot) => {
                // Compiled definitions compared as a whole (templates, filter, schema, limits,
                // target, auth, origin): unchanged ones keep running untouched.
                if format!("{:?}", slot.pipeline.connector) != format!("{c:?}") {
                    changes.changed.push(id.clone());
                    deploy(myself, state, desired).await;
                }
            }
        }
    }
    let mut gone: Vec<&String> = old.keys().filter(|id| !folder.contains_key(*id)).collect();
    gone.sort();
    for id in gone {
        let from_folder = state
            .slots
            .get(id)
            .is_some_and(|s| matches!(s.origin, Origin::Folder(_)));
        if !from_folder {
            continue;
        }
        changes.removed.push(id.clone());
        let Some(slot) = state.slots.remove(id) else {
            continue;
        };
        tracing::info!(
            "[{id}] removed from the connectors folder: draining in-flight events, then stopping"
        );
        let consumer = slot.pipeline.connector.consumer.clone();
        let bus = state.deps.bus.clone();
        let actor = slot.actor;
        if let Some(a) = &actor {
            state.by_actor.remove(&a.get_id());
        }
        let id = id.clone();
        tokio::spawn(async move {
            if let Some(actor) = actor {
                let _ = ractor::call_t!(actor, ConnectorMsg::Drain, 60_000);
                actor.stop(None);
            }
            // Kept a while like an undeployed connector's: put back within the grace, it
            // resumes where it stopped.
            if let Err(e) = bus
                .retire_consumer(&consumer, crate::registry::UNDEPLOY_GRACE)
                .await
            {
                tracing::warn!("[{id}] consumer {consumer} not retired: {e}");
            }
            tracing::info!("[{id}] stopped");
        });
    }
    changes
}

/// A registry entry was deleted: fall back to the folder's definition, or stop and forget it.
async fn undeploy(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState, id: &str) {
    state.invalid.remove(id);
    if state.draining {
        return;
    }
    let Some(slot) = state.slots.get_mut(id) else {
        return;
    };
    if !matches!(slot.origin, Origin::Registry(_)) {
        return;
    }
    if let Some(c) = state.folder.get(id).cloned() {
        tracing::info!("[{id}] undeployed from the registry: back to {}", c.origin);
        slot.registry_error = None;
        slot.pipeline = Arc::new(Pipeline::new(
            c.clone(),
            &state.deps,
            slot.pipeline.stats().clone(),
        ));
        slot.origin = Origin::Folder(c.origin.clone());
        swap(myself, state.deps.started_at, id, slot);
        return;
    }
    let Some(slot) = state.slots.remove(id) else {
        return;
    };
    tracing::info!("[{id}] undeployed: draining in-flight events, then stopping");
    if let Some(actor) = slot.actor {
        state.by_actor.remove(&actor.get_id());
        // Drain in a task: the supervisor keeps answering meanwhile.
        let id = id.to_string();
        tokio::spawn(async move {
            let _ = ractor::call_t!(actor, ConnectorMsg::Drain, 60_000);
            actor.stop(None);
            tracing::info!("[{id}] stopped");
        });
    }
}

fn invalid_view(key: &str, revision: u64, error: &str) -> ConnectorView {
    ConnectorView {
        id: key.to_string(),
        consumer: crate::connector::consumer_name(key),
        topic: String::new(),
        origin: crate::registry::label(key, revision),
        state: RunState::Invalid,
        restarts: 0,
        delivered: 0,
        failed: 0,
        parked: 0,
        filtered: 0,
        in_process: 0,
        last_error: Some(error.to_string()),
        latency_p50_ms: None,
        latency_p99_ms: None,
        recent_failures: Vec::new(),
        source: "registry",
        revision: None,
        deployed_revision: Some(revision),
        deployed_at: None,
        registry_error: Some(error.to_string()),
    }
}

fn view(id: &str, s: &Slot) -> ConnectorView {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &s.pipeline.connector;
    let st = s.pipeline.stats();
    ConnectorView {
        id: id.to_string(),
        consumer: c.consumer.clone(),
        topic: c.trigger.topic.clone(),
        origin: c.origin.clone(),
        state: s.state.clone(),
        restarts: s.restarts.total,
        delivered: st.delivered.load(Relaxed),
        failed: st.failed.load(Relaxed),
        parked: st.parked.load(Relaxed),
        filtered: st.filtered.load(Relaxed),
        in_process: st.in_process.load(Relaxed),
        last_error: st.last_error.lock().ok().and_then(|e| e.clone()),
        latency_p50_ms: st.latency_p50_p99().map(|l| l.0),
        latency_p99_ms: st.latency_p50_p99().map(|l| l.1),
        recent_failures: st
            .recent_failures
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default(),
        source: match s.origin {
            Origin::Folder(_) => "folder",
            Origin::Registry(_) => "registry",
        },
        revision: s.running,
        deployed_revision: s.origin.revision().filter(|r| Some(*r) != s.running),
        deployed_at: s.running_deployed_at.clone(),
        registry_error: s.registry_error.clone(),
    }
}
