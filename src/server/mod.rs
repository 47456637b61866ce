//! The HTTP server of `hms-sync up`: the public side (webhook paths, `/healthz`, `/readyz`)
//! and the admin side (the status page `/`, `/metrics`, `/api/*`), on one address or two
//! (`http.adminListen`), the admin side behind `http.adminToken` when it is set.
//!
//! Files: `auth.rs` (the bearer-token check), `status.rs` (page, metrics, health, readiness,
//! connector status), `review.rs` (parked jobs: list, detail, replay, discard), `trace.rs`
//! (`/api/trace`), `charts.rs` (the sampled history the page draws).

mod auth;
mod charts;
mod review;
mod status;
mod trace;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::ActorRef;

use crate::actors::supervisor::SupervisorMsg;
use crate::auth::SecretString;
use crate::bus::Bus;
use crate::config::HttpConfig;
use crate::delivery::Pipeline;
use crate::services::Auditor;

pub use charts::Charts;
pub use status::{ConnectorStatus, Overview};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub prom: PrometheusHandle,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub bus: Bus,
    /// The admin token (`http.adminToken`, resolved at start); `None`: the admin side is open
    /// and the page offers no review actions.
    pub admin_token: Option<Arc<SecretString>>,
    /// Where review actions are audited.
    pub audit: Auditor,
    /// The sampled history of the charts.
    pub charts: Charts,
}

impl AppState {
    /// Every connector's running definition and numbers (empty when the supervisor does not
    /// answer within 5 s).
    pub async fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        ractor::call_t!(self.supervisor, SupervisorMsg::Pipelines, 5_000).unwrap_or_default()
    }
}

/// The admin side: `/`, `/metrics`, `/api/*` (with `extra`, e.g. `/api/webhooks`), each
/// behind the admin token when one is set.
pub fn admin_router(state: AppState, extra: Router) -> Router {
    let token = state.admin_token.clone();
    Router::new()
        .route("/", get(status::page))
        .route("/metrics", get(status::metrics))
        .route("/api/connectors", get(status::connectors))
        .route("/api/overview", get(status::overview))
        .route("/api/session", get(review::session))
        .route("/api/history", get(charts::history))
        .route("/api/trace", get(trace::trace))
        .route("/api/parked", get(review::list))
        .route("/api/parked/{id}", get(review::show))
        .route("/api/parked/{id}/replay", post(review::replay))
        .route("/api/parked/{id}/discard", post(review::discard))
        .with_state(state)
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(token, auth::require))
}

/// The public side: `/healthz`, `/readyz` (and the webhooks, merged in by the caller).
pub fn public_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(status::readyz))
        .with_state(state)
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
}

/// The running server.
pub struct Served {
    /// Where webhooks, `/healthz` and `/readyz` are served.
    pub addr: SocketAddr,
    /// Where the status page, `/metrics` and `/api/*` are served (`addr` when one address).
    pub admin_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Served {
    /// Stops serving (and sampling the charts).
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Binds `http.listen` (and `http.adminListen` when set), serves the public side with the
/// webhook routes (`webhooks`: the fallback) and the admin side with `webhook_api`, and starts
/// sampling the charts every `http.chartSampleMs`.
pub async fn serve(
    http: &HttpConfig,
    state: AppState,
    webhooks: Router,
    webhook_api: Router,
) -> Result<Served, ServeError> {
    let bind = |addr: SocketAddr, key: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, key, source })
    };
    if http.admin_listen.is_none() && state.admin_token.is_none() && !http.listen.ip().is_loopback()
    {
        tracing::warn!(
            "http.listen {} serves the status page, /metrics and /api/* to anyone who reaches it: set http.adminListen (e.g. 127.0.0.1:7501) or http.adminToken",
            http.listen
        );
    }
    let limits = crate::serve::Limits::of(http);
    let public = bind(http.listen, "http.listen").await?;
    let addr = public.local_addr().unwrap_or(http.listen);
    let mut tasks = vec![charts::start(
        state.clone(),
        std::time::Duration::from_millis(http.chart_sample_ms.max(100)),
    )];
    let admin = admin_router(state.clone(), webhook_api);
    let admin_addr = match http.admin_listen {
        None => {
            let app = public_router(state).merge(admin).merge(webhooks);
            tasks.push(spawn(public, app, limits));
            addr
        }
        Some(a) => {
            let listener = bind(a, "http.adminListen").await?;
            let admin_addr = listener.local_addr().unwrap_or(a);
            tasks.push(spawn(public, public_router(state).merge(webhooks), limits));
            tasks.push(spawn(listener, admin, limits));
            admin_addr
        }
    };
    Ok(Served {
        addr,
        admin_addr,
        tasks,
    })
}

fn spawn(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: crate::serve::Limits,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(crate::serve::serve(listener, app, limits))
}
