//! Start-up and shutdown of `hms-sync up`: config -> connectors -> NATS -> registry -> streams -> supervisor -> HTTP.
//!
//! Connectors come from the `connectors.dir` folder and from the registry (KV
//! `hms_sync_connectors`); the registry's definition wins for an id both define. After start-up
//! a watch task follows the registry and tells the supervisor what changed.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use ractor::{Actor, ActorRef};

use crate::actors::connector::ConnectorMsg;
use crate::actors::supervisor::{
    ConnectorView, RunState, Supervisor, SupervisorArgs, SupervisorMsg, WatchSpec,
};
use crate::actors::watch::{Cursor, InboundTarget, WatchArgs};
use crate::bus::Bus;
use crate::config::RuntimeConfig;
use crate::connector::{self, AnyConnector};
use crate::delivery::Deps;
use crate::http_client::{HttpClient, Outbound};
use crate::inbound::Webhooks;
use crate::nats_server::{find_binary, EmbeddedServer};
use crate::registry::{self, Change, Desired, Origin};
use crate::services::{self, Services};

/// A running hms-sync.
pub struct Runtime {
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_done: tokio::task::JoinHandle<()>,
    server: crate::server::Served,
    addr: SocketAddr,
    bus: Bus,
    embedded: Option<EmbeddedServer>,
    services: services::Running,
    webhooks: Webhooks,
    /// Shutdown: how long it may take, how long deliveries get, and the signal that hands the
    /// rest back.
    delivery: crate::config::DeliveryConfig,
    hand_back: tokio::sync::watch::Sender<bool>,
    /// The runtime config, for reading the connectors folder again (SIGHUP).
    cfg: RuntimeConfig,
}

/// What re-reading the connectors folder did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// Outbound connectors.
    pub outbound: crate::actors::supervisor::FolderChanges,
    /// Inbound connectors (webhook paths) served from the folder now.
    pub inbound_served: Vec<String>,
    /// Inbound connectors of the folder no longer served.
    pub inbound_removed: Vec<String>,
}

/// Loads every connector of the configured folder (all problems at once).
pub fn load_connectors(cfg: &RuntimeConfig) -> anyhow::Result<Vec<AnyConnector>> {
    let dir = &cfg.connectors.dir;
    let files = match connector::files_in(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                "{}: connectors folder not found; starting with none",
                dir.display()
            );
            vec![]
        }
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list", dir.display())),
    };
    let loaded =
        connector::load_sources(&files).map_err(|p| anyhow::anyhow!("invalid connectors:\n{p}"))?;
    connector::check_policy(&loaded, &crate::config_check::policy(cfg))
        .map_err(|p| anyhow::anyhow!("invalid connectors:\n{p}"))?;
    Ok(loaded.into_iter().map(|(c, _)| c).collect())
}

impl Runtime {
    /// Starts everything; returns once connectors are spawned and the HTTP server listens.
    pub async fn start(cfg: RuntimeConfig) -> anyhow::Result<Runtime> {
        let started_at = time::OffsetDateTime::now_utc() - std::time::Duration::from_secs(1);
        let prom = crate::metrics::install();
        crate::config_check::check(&cfg)
            .map_err(|p| anyhow::anyhow!("invalid runtime config:\n{p}"))?;
        let all = load_connectors(&cfg)?;
        let mut outbound = Vec::new();
        let mut inbound = Vec::new();
        for c in all {
            match c {
                AnyConnector::Outbound(c) => {
                    connector::warn_missing_secrets(&c);
                    outbound.push(Arc::<crate::connector::Connector>::from(c));
                }
                AnyConnector::Inbound(c) => {
                    connector::warn_missing_webhook_secrets(&c);
                    inbound.push(c);
                }
            }
        }
        let env = |name: &str| std::env::var(name).ok();
        let nats = cfg
            .nats
            .connect_options(&env)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let url = nats.shown();
        let mut embedded = None;
        if !Bus::reachable(&url).await {
            if cfg.nats.embedded {
                let bin = find_binary(cfg.nats.server_bin.as_deref(), &cfg.nats.server_config);
                tracing::info!(
                    "nothing answers at {url}: starting {} -c {}",
                    bin.display(),
                    cfg.nats.server_config.display()
                );
                let first = nats.servers.first().cloned().unwrap_or_default();
                embedded = Some(
                    EmbeddedServer::start(&bin, &cfg.nats.server_config, &first)
                        .await
                        .map_err(|e| anyhow::anyhow!(e))?,
                );
            } else {
                wait_for_nats(&url).await;
            }
        }
        let bus = connect(&nats, embedded.is_none() && !cfg.nats.embedded).await?;
        let kv = bus.registry().await?;
        let snapshot = registry::snapshot(&kv).await?;
        let (connectors, folder, invalid, registry_inbound) = merge(outbound, snapshot.changes);
        // The registry's inbound connectors win over the folder's of the same id.
        inbound.retain(|c| !registry_inbound.iter().any(|r| r.id == c.id));
        inbound.extend(registry_inbound.into_iter().map(Box::new));
        let mut topics: Vec<String> = connectors
            .iter()
            .map(|d| d.connector.trigger.topic.clone())
            .collect();
        topics.extend(inbound.iter().map(|c| c.publish.capture.clone()));
        bus.ensure_streams(&topics, &cfg.streams).await?;
        let outbound =
            Outbound::from_config(&cfg.outbound, &env).map_err(|e| anyhow::anyhow!(e))?;
        let http = HttpClient::with_outbound(outbound).map_err(|e| anyhow::anyhow!(e))?;
        bus.ensure_audit_stream(std::time::Duration::from_secs(
            cfg.streams.duplicate_window_sec,
        ))
        .await?;
        let run_id = crate::delivery::derive_key(
            "run",
            &format!("{}:{}", std::process::id(), time::OffsetDateTime::now_utc()),
        )[..8]
            .to_string();
        let services = services::Running::start(&bus, &http, cfg.endpoints.clone(), run_id)
            .await
            .context("start the services")?;
        let (hand_back, hand_back_rx) = tokio::sync::watch::channel(false);
        let deps = Deps {
            bus: bus.clone(),
            http,
            delivery: cfg.delivery.clone(),
            started_at,
            services: services.services.clone(),
            streams: cfg.streams.clone(),
            hand_back: hand_back_rx,
        };
        let webhooks = Webhooks::default();
        for c in inbound {
            webhooks.insert(*c)?;
        }
        let watch = watch_spec(
            kv,
            snapshot.next_revision,
            snapshot.seen,
            InboundTarget {
                webhooks: webhooks.clone(),
                bus: bus.clone(),
                streams: cfg.streams.clone(),
            },
        );
        let (supervisor, handle) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                deps,
                connectors,
                folder,
                invalid,
                watch: Some(watch),
            },
        )
        .await
        .context("start the supervisor")?;
        // Wait (bounded) until every connector has its consumer and runs.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let views =
                ractor::call_t!(supervisor, SupervisorMsg::Status, 5_000).unwrap_or_default();
            let starting = views
                .iter()
                .filter(|v| v.state != RunState::Running && v.state != RunState::Failed)
                .count();
            if starting == 0 || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let files = crate::serve::raise_open_files_limit();
        if files > 0 && files < cfg.http.max_connections as u64 + 256 {
            tracing::warn!(
                "open files are limited to {files}: fewer than http.maxConnections ({}) can be served",
                cfg.http.max_connections
            );
        }
        let admin_token = cfg
            .http
            .admin_token(&env)
            .map_err(|e| anyhow::anyhow!(e))?
            .map(Arc::new);
        let state = crate::server::AppState {
            prom,
            supervisor: supervisor.clone(),
            bus: bus.clone(),
            admin_token,
            audit: services.services.audit.clone(),
            charts: crate::server::Charts::new(std::time::Duration::from_millis(
                cfg.http.chart_sample_ms,
            )),
        };
        let (hooks, hooks_api) = crate::inbound::routers(
            webhooks.clone(),
            bus.clone(),
            Some(services.services.audit.clone()),
        );
        let served = crate::server::serve(&cfg.http, state, hooks, hooks_api).await?;
        let addr = served.addr;
        if served.admin_addr != addr {
            tracing::info!(
                "status page, /metrics and /api/*: http://{}",
                served.admin_addr
            );
        }
        tracing::info!("hms-sync up: http://{addr} (NATS {url})");
        Ok(Runtime {
            supervisor,
            supervisor_done: handle,
            server: served,
            addr,
            bus,
            embedded,
            services,
            webhooks,
            delivery: cfg.delivery.clone(),
            hand_back,
            cfg,
        })
    }

    /// Reads the connectors folder again and applies what changed, as a registry deploy does:
    /// new connectors start, changed ones are swapped in after their in-flight deliveries
    /// (same durable consumer: nothing lost or skipped), removed ones drain and stop (their
    /// consumer is kept 24 h); the registry's definition of an id still wins. A folder with
    /// any problem changes nothing (the problems are the error, as `file:line:col`).
    pub async fn reload_folder(&self) -> anyhow::Result<Reloaded> {
        let all = load_connectors(&self.cfg)?;
        let mut outbound = HashMap::new();
        let mut inbound = Vec::new();
        for c in all {
            match c {
                AnyConnector::Outbound(c) => {
                    connector::warn_missing_secrets(&c);
                    let c = Arc::<crate::connector::Connector>::from(c);
                    outbound.insert(c.id.clone(), c);
                }
                AnyConnector::Inbound(c) => {
                    connector::warn_missing_webhook_secrets(&c);
                    inbound.push(*c);
                }
            }
        }
        let mut topics: Vec<String> = outbound.values().map(|c| c.trigger.topic.clone()).collect();
        topics.extend(inbound.iter().map(|c| c.publish.capture.clone()));
        self.bus.ensure_streams(&topics, &self.cfg.streams).await?;
        let changes = ractor::call_t!(self.supervisor, SupervisorMsg::Folder, 30_000, outbound)
            .map_err(|e| anyhow::anyhow!("the connector supervisor did not answer: {e}"))?;
        let mut done = Reloaded {
            outbound: changes,
            ..Reloaded::default()
        };
        // Webhooks: the folder's are served anew; the registry's (origin in the bucket) stay.
        let from_registry = |origin: &str| origin.starts_with(crate::bus::kv::REGISTRY_BUCKET);
        let ids: std::collections::HashSet<String> = inbound.iter().map(|c| c.id.clone()).collect();
        for served in self.webhooks.list() {
            if !from_registry(&served.origin) && !ids.contains(&served.id) {
                self.webhooks.remove(&served.id);
                done.inbound_removed.push(served.id.clone());
            }
        }
        for c in inbound {
            let registry_has_it = self
                .webhooks
                .list()
                .iter()
                .any(|s| s.id == c.id && from_registry(&s.origin));
            if registry_has_it {
                continue;
            }
            let id = c.id.clone();
            match self.webhooks.insert(c) {
                Ok(_) => done.inbound_served.push(id),
                Err(e) => tracing::error!("[{id}] not served: {e}"),
            }
        }
        Ok(done)
    }

    /// The webhook paths being served (the registry deploys inbound connectors through it).
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Where the HTTP server listens (webhooks, `/healthz`, `/readyz`; everything without
    /// `http.adminListen`).
    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the status page, `/metrics` and `/api/*` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.server.admin_addr
    }

    /// PID of the embedded nats-server, when this runtime started one.
    pub fn embedded_pid(&self) -> Option<u32> {
        self.embedded.as_ref().and_then(EmbeddedServer::pid)
    }

    /// The actor running a connector now (None while it restarts).
    pub async fn connector_actor(&self, id: &str) -> Option<ActorRef<ConnectorMsg>> {
        ractor::call_t!(
            self.supervisor,
            SupervisorMsg::Lookup,
            5_000,
            id.to_string()
        )
        .ok()
        .flatten()
    }

    /// The handles of the services (audit, tokens, timers, endpoints), for tools and tests.
    pub fn services(&self) -> &Services {
        &self.services.services
    }

    /// Every connector's state.
    pub async fn status(&self) -> Vec<ConnectorView> {
        ractor::call_t!(self.supervisor, SupervisorMsg::Status, 5_000).unwrap_or_default()
    }

    /// Drains in-flight deliveries, stops the actors and the HTTP server, then the embedded
    /// nats-server if one was started; within `delivery.shutdownTimeoutMs`: deliveries still
    /// sending when their drain time is up are handed back to JetStream (offered again at
    /// once), and each later step gets what is left of the timeout.
    pub async fn shutdown(self) {
        let started = tokio::time::Instant::now();
        let deadline = started + self.delivery.shutdown_timeout();
        let in_flight: u64 = self.status().await.iter().map(|v| v.in_process).sum();
        tracing::info!(
            "shutting down: draining {in_flight} in-flight deliveries (at most {} ms, then they are handed back)",
            self.delivery.drain_time().as_millis()
        );
        let left = |at: tokio::time::Instant| {
            deadline.saturating_duration_since(at).as_millis().max(1) as u64
        };
        // The registry watch stops first: no deploys while draining.
        let supervisor = self.supervisor.clone();
        let drain_ms = left(started);
        let drain = tokio::spawn(async move {
            let _ = ractor::call_t!(supervisor, SupervisorMsg::DrainAll, drain_ms);
        });
        tokio::pin!(drain);
        let drain_until = started + self.delivery.drain_time();
        if tokio::time::timeout_at(drain_until, &mut drain)
            .await
            .is_err()
        {
            // (The supervisor is busy draining: no status question now.)
            tracing::warn!(
                "shutting down: deliveries still in flight after {} ms: handing them back",
                self.delivery.drain_time().as_millis()
            );
            let _ = self.hand_back.send(true);
            // Handing back is one NAK each: moments, unless NATS is gone.
            let _ = tokio::time::timeout_at(deadline, &mut drain).await;
        }
        self.supervisor.stop(None);
        let _ = tokio::time::timeout_at(deadline, self.supervisor_done).await;
        // The audit actor stores what it still holds as it stops.
        if tokio::time::timeout_at(deadline, self.services.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutting down: the audit trail did not store everything in time");
        }
        self.server.stop();
        // The acks and NAKs sent so far may still sit in the client's buffer: they get a short
        // while even past the deadline (an ack never written has its event delivered again).
        let _ = tokio::time::timeout(
            Duration::from_millis(left(tokio::time::Instant::now()).max(FLUSH_GRACE_MS)),
            self.bus.close(),
        )
        .await;
        if let Some(s) = self.embedded {
            // nats-server gets its own short while after our deadline: its store must close.
            let _ = tokio::time::timeout(
                Duration::from_millis(left(tokio::time::Instant::now()).max(2000)),
                s.stop(),
            )
            .await;
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
    }
}

/// How the supervisor starts (and restarts) the registry watch, from the snapshot's position.
fn watch_spec(
    registry: crate::bus::kv::Registry,
    next_revision: u64,
    seen: HashMap<String, u64>,
    inbound: InboundTarget,
) -> WatchSpec {
    let cursor = Arc::new(Mutex::new(Cursor {
        next_revision,
        seen,
    }));
    Box::new(move |sink| WatchArgs {
        registry: registry.clone(),
        cursor: cursor.clone(),
        inbound: inbound.clone(),
        sink,
    })
}

/// What runs at start-up: the folder's connectors, each replaced by the registry's definition
/// of the same id (logged), plus the registry's other connectors. Also returns the folder's
/// connectors by id and the invalid registry values.
type Merged = (
    Vec<Desired>,
    HashMap<String, Arc<crate::connector::Connector>>,
    Vec<(String, u64, String)>,
    Vec<crate::connector::InboundConnector>,
);

fn merge(folder: Vec<Arc<crate::connector::Connector>>, registry: Vec<Change>) -> Merged {
    let folder: HashMap<String, Arc<crate::connector::Connector>> =
        folder.into_iter().map(|c| (c.id.clone(), c)).collect();
    let mut run: HashMap<String, Desired> = folder
        .values()
        .map(|c| {
            (
                c.id.clone(),
                Desired {
                    connector: c.clone(),
                    origin: Origin::Folder(c.origin.clone()),
                },
            )
        })
        .collect();
    let mut invalid = Vec::new();
    let mut inbound = Vec::new();
    for change in registry {
        match change {
            Change::Serve(c) => {
                run.remove(&c.id);
                inbound.push(*c);
            }
            Change::Run(d) => {
                if let (Some(f), Origin::Registry(r)) = (folder.get(&d.connector.id), &d.origin) {
                    tracing::warn!(
                        "[{}] defined in {} and in the registry: registry revision {} wins",
                        f.id,
                        f.origin,
                        r.revision
                    );
                }
                run.insert(d.connector.id.clone(), *d);
            }
            Change::Remove(_) => {}
            Change::Invalid {
                key,
                revision,
                error,
            } => invalid.push((key, revision, error)),
        }
    }
    let mut run: Vec<Desired> = run.into_values().collect();
    run.sort_by(|a, b| a.connector.id.cmp(&b.connector.id));
    (run, folder, invalid, inbound)
}

/// How often `up` says it is still waiting for NATS.
const NATS_WAIT_LINE: Duration = Duration::from_secs(5);

/// At shutdown, how long the last flush of acks gets at least, even past the deadline.
const FLUSH_GRACE_MS: u64 = 1000;

/// Waits until something answers at `url` (`nats.embedded` is off, so nothing else will
/// start it), saying so at once and every few seconds.
async fn wait_for_nats(url: &str) {
    let since = tokio::time::Instant::now();
    tracing::warn!(
        "NATS: nothing answers at {url} (nats.embedded is off): trying every second; connectors start once it answers"
    );
    let mut said = since;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if Bus::reachable(url).await {
            tracing::info!(
                "NATS: {url} answers after {} s: starting",
                since.elapsed().as_secs()
            );
            return;
        }
        if said.elapsed() >= NATS_WAIT_LINE {
            said = tokio::time::Instant::now();
            tracing::warn!(
                "NATS: still nothing at {url} after {} s (nats.embedded is off); still trying",
                since.elapsed().as_secs()
            );
        }
    }
}

/// Connects; with `patient` (NATS not started by us, `nats.embedded` off) a server that does
/// not answer is waited for (said every few seconds) instead of failing start-up. Refused
/// credentials and untrusted certificates fail at once either way.
async fn connect(nats: &crate::config::NatsConnect, patient: bool) -> anyhow::Result<Bus> {
    let since = tokio::time::Instant::now();
    loop {
        match Bus::connect_with(nats).await {
            Ok(bus) => return Ok(bus),
            Err(e)
                if patient
                    && matches!(
                        e.kind,
                        crate::bus::BusErrorKind::NotConnected | crate::bus::BusErrorKind::Timeout
                    ) =>
            {
                tracing::warn!(
                    "NATS: {e}; still trying (for {} s)",
                    since.elapsed().as_secs()
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs until `shutdown` completes, then shuts down cleanly (within
/// `delivery.shutdownTimeoutMs`, plus a moment for the embedded nats-server). A shutdown
/// while start-up still waits for NATS ends it there.
pub async fn run(cfg: RuntimeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with_reloads(cfg, shutdown, futures::stream::pending()).await
}

/// Like [`run`]; every item of `reloads` (SIGHUP) reads the connectors folder again
/// ([`Runtime::reload_folder`]). A reload that fails changes nothing and is logged.
pub async fn run_with_reloads(
    cfg: RuntimeConfig,
    shutdown: impl Future<Output = ()>,
    reloads: impl futures::Stream<Item = ()>,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let limit = cfg.delivery.shutdown_timeout() + Duration::from_secs(3);
    tokio::pin!(shutdown);
    tokio::pin!(reloads);
    let rt = tokio::select! {
        rt = Runtime::start(cfg) => rt?,
        _ = &mut shutdown => {
            tracing::info!("stopped before start-up finished");
            return Ok(());
        }
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = reloads.next() => {
                tracing::info!("SIGHUP: reading the connectors folder again");
                match rt.reload_folder().await {
                    Ok(r) => tracing::info!(
                        "connectors folder applied: added {:?}, changed {:?}, removed {:?}, registry wins for {:?}; webhooks served {:?}, removed {:?}",
                        r.outbound.added,
                        r.outbound.changed,
                        r.outbound.removed,
                        r.outbound.shadowed,
                        r.inbound_served,
                        r.inbound_removed
                    ),
                    Err(e) => tracing::error!(
                        "connectors folder not applied (everything keeps running as it was): {e:#}"
                    ),
                }
            }
        }
    }
    if tokio::time::timeout(limit, rt.shutdown()).await.is_err() {
        tracing::warn!("shutdown took longer than delivery.shutdownTimeoutMs: exiting anyway");
    }
    Ok(())
}
