//! Registry watch actor: follows the registry bucket (`hms_sync_connectors`) from the revision
//! after the start-up snapshot and turns every write into a directive for the connector
//! supervisor; inbound connectors it serves itself (the live webhook table). Its position
//! survives its restarts, so nothing is applied twice or skipped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::bus::kv::Registry;
use crate::bus::Bus;
use crate::config::StreamsConfig;
use crate::inbound::Webhooks;
use crate::registry::{change, Change, Desired};

/// What a registry write asks of the connector supervisor.
pub enum Directive {
    /// Run this outbound connector (new or changed).
    Deploy(Box<Desired>),
    /// Stop running this id (deleted, or now an inbound connector).
    Undeploy(String),
    /// A value that cannot run; a running version keeps running.
    Invalid {
        key: String,
        revision: u64,
        error: String,
    },
}

/// Where directives go; `false` once nobody listens (the watch then stops).
pub type Sink = Arc<dyn Fn(Directive) -> bool + Send + Sync>;

/// Where registry writes of inbound connectors take effect.
#[derive(Clone)]
pub struct InboundTarget {
    pub webhooks: Webhooks,
    pub bus: Bus,
    pub streams: StreamsConfig,
}

/// How far the watch has come: the next revision to read, and the revision seen per key.
#[derive(Debug, Default)]
pub struct Cursor {
    pub next_revision: u64,
    pub seen: HashMap<String, u64>,
}

/// What the watch actor starts with (kept by its supervisor for restarts).
#[derive(Clone)]
pub struct WatchArgs {
    pub registry: Registry,
    pub cursor: Arc<Mutex<Cursor>>,
    pub inbound: InboundTarget,
    pub sink: Sink,
}

/// Messages to the watch actor.
pub enum WatchMsg {
    /// The watch loop ended (nobody listens any more, or it panicked).
    Ended(String),
}

pub struct WatchActor;

pub struct WatchState {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchState {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Actor for WatchActor {
    type Msg = WatchMsg;
    type State = WatchState;
    type Arguments = WatchArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WatchMsg>,
        args: WatchArgs,
    ) -> Result<WatchState, ActorProcessingErr> {
        let task = tokio::spawn(async move {
            let why = match tokio::spawn(follow(args)).await {
                Ok(()) => "nobody listens to the registry any more".to_string(),
                Err(e) => format!("the registry watch failed: {e}"),
            };
            let _ = myself.send_message(WatchMsg::Ended(why));
        });
        Ok(WatchState { task })
    }

    async fn handle(
        &self,
        _myself: ActorRef<WatchMsg>,
        msg: WatchMsg,
        _st: &mut WatchState,
    ) -> Result<(), ActorProcessingErr> {
        let WatchMsg::Ended(why) = msg;
        Err(why.into())
    }
}

/// Follows the bucket and hands every write on, until nobody listens. A broken watch is
/// re-opened after the last revision handled.
async fn follow(args: WatchArgs) {
    let mut warned: HashSet<String> = HashSet::new();
    loop {
        let from = lock(&args.cursor).next_revision;
        match args.registry.watch_from(from).await {
            Ok(mut entries) => {
                while let Some(item) = entries.next().await {
                    let entry = match item {
                        Ok(e) => e,
                        Err(e) => {
                            if warned.insert(e.to_string()) {
                                tracing::warn!("registry watch: {e}");
                            }
                            continue;
                        }
                    };
                    {
                        let mut cursor = lock(&args.cursor);
                        cursor.next_revision = entry.revision + 1;
                        if cursor
                            .seen
                            .get(&entry.key)
                            .is_some_and(|r| *r >= entry.revision)
                        {
                            continue;
                        }
                        cursor.seen.insert(entry.key.clone(), entry.revision);
                    }
                    let directive = apply(&args.inbound, change(&entry)).await;
                    if !(args.sink)(directive) {
                        return;
                    }
                }
                tracing::warn!("registry watch ended; re-opening");
            }
            Err(e) => tracing::warn!("registry watch: {e}; retrying in 1 s"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Serves inbound changes here; says what the supervisor must do.
async fn apply(inbound: &InboundTarget, change: Change) -> Directive {
    match change {
        Change::Run(d) => {
            // An id that was inbound before and is outbound now stops serving.
            inbound.webhooks.remove(&d.connector.id);
            Directive::Deploy(d)
        }
        Change::Serve(c) => {
            let id = c.id.clone();
            if let Err(e) =
                crate::inbound::deploy(&inbound.webhooks, &inbound.bus, &inbound.streams, *c).await
            {
                tracing::error!("[{id}] cannot serve this registry revision: {e}");
            }
            // An id that was outbound before stops running.
            Directive::Undeploy(id)
        }
        Change::Remove(id) => {
            inbound.webhooks.remove(&id);
            Directive::Undeploy(id)
        }
        Change::Invalid {
            key,
            revision,
            error,
        } => Directive::Invalid {
            key,
            revision,
            error,
        },
    }
}

fn lock(c: &Mutex<Cursor>) -> std::sync::MutexGuard<'_, Cursor> {
    c.lock().unwrap_or_else(PoisonError::into_inner)
}
