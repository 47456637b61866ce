//! The status side of the HTTP server: the status page, `/metrics`, `/readyz`, and the JSON
//! status of the connectors (`/api/connectors`, `/api/overview`).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::AppState;
use crate::actors::supervisor::{ConnectorView, RunState, SupervisorMsg};
use crate::bus::ConsumerStats;

/// One connector as `/api/connectors` and `status` show it.
#[derive(Serialize)]
pub struct ConnectorStatus {
    #[serde(flatten)]
    pub view: ConnectorView,
    /// JetStream's numbers for its consumer (`None`: NATS did not answer).
    pub consumer_stats: Option<ConsumerStats>,
    /// Parked jobs waiting for review on `sync.parked.<consumer>` (`None`: NATS did not answer).
    /// `parked` counts what this process parked since it started.
    pub parked_jobs: Option<u64>,
}

async fn views(state: &AppState) -> Vec<ConnectorView> {
    ractor::call_t!(state.supervisor, SupervisorMsg::Status, 5_000).unwrap_or_default()
}

/// `GET /api/connectors`: every connector with its consumer's numbers and parked jobs.
pub async fn connectors(State(state): State<AppState>) -> Json<Vec<ConnectorStatus>> {
    let views = views(&state).await;
    let parked = bounded(state.bus.parked_counts()).await;
    let stats = futures::future::join_all(
        views
            .iter()
            .map(|v| bounded(state.bus.consumer_stats(&v.consumer))),
    )
    .await;
    let out = views
        .into_iter()
        .zip(stats)
        .map(|(v, consumer_stats)| ConnectorStatus {
            parked_jobs: parked
                .as_ref()
                .map(|p| p.get(&v.consumer).copied().unwrap_or(0)),
            view: v,
            consumer_stats,
        })
        .collect();
    Json(out)
}

/// What the status page shows above the connectors.
#[derive(Serialize)]
pub struct Overview {
    pub version: &'static str,
    /// `connected`, `disconnected` or `pending` (reconnecting).
    pub nats_state: &'static str,
    /// The NATS server we are connected to (`2.15.1 at 127.0.0.1:4222`).
    pub nats_server: Option<String>,
    pub connectors: usize,
    /// Parked jobs waiting for review, all connectors (`None`: NATS did not answer).
    pub parked_total: Option<u64>,
}

/// `GET /api/overview`: what the page shows above the connectors.
pub async fn overview(State(state): State<AppState>) -> Json<Overview> {
    let (nats_state, nats_server) = state.bus.connection_summary();
    let parked_total = bounded(state.bus.parked_counts())
        .await
        .map(|p| p.values().sum());
    Json(Overview {
        version: env!("CARGO_PKG_VERSION"),
        nats_state,
        nats_server,
        connectors: views(&state).await.len(),
        parked_total,
    })
}

/// A NATS question for a status answer: at most 2 s, and `None` on any failure, so the page
/// and `/api/connectors` answer promptly while NATS is away.
pub async fn bounded<T, E>(f: impl std::future::Future<Output = Result<T, E>>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(2), f)
        .await
        .ok()
        .and_then(Result::ok)
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prom.render(),
    )
        .into_response()
}

/// `GET /readyz`: 200 when NATS is connected and every connector runs with its consumer.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut problems = Vec::new();
    if !state.bus.is_connected() {
        problems.push("NATS is not connected".to_string());
    }
    // One listing of the consumers for all connectors (not one question each).
    let consumers = bounded(state.bus.consumer_names()).await;
    if consumers.is_none() {
        problems.push("NATS did not list the consumers of HMS_EVENTS".to_string());
    }
    for v in views(&state).await {
        if v.state == RunState::Invalid {
            // An invalid registry value runs nothing; it is reported in /api/connectors.
            continue;
        }
        if v.state != RunState::Running {
            problems.push(format!("connector {} is {:?}", v.id, v.state));
        } else if consumers.as_ref().is_some_and(|c| !c.contains(&v.consumer)) {
            problems.push(format!("consumer {} is missing", v.consumer));
        }
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "problems": problems })),
        )
            .into_response()
    }
}

/// The status page: a static HTML+JS page that renders `/api/connectors` and `/api/overview`
/// every 2 s (no external assets; every value from data is inserted as text, never as HTML).
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

/// The page: static, self-contained, no data in it.
pub const STATUS_PAGE: &str = include_str!("../status_page.html");
