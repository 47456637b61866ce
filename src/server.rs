//! The HTTP server of `hms-sync up`: status page, metrics, health, readiness, JSON status.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::ActorRef;
use serde::Serialize;

use crate::actors::supervisor::{ConnectorView, RunState, SupervisorMsg};
use crate::bus::{Bus, ConsumerStats};

#[derive(Clone)]
pub struct AppState {
    pub prom: PrometheusHandle,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub bus: Bus,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/connectors", get(connectors))
        .with_state(state)
}

/// One connector as `/api/connectors` and `status` show it.
#[derive(Serialize)]
pub struct ConnectorStatus {
    #[serde(flatten)]
    pub view: ConnectorView,
    pub consumer_stats: Option<ConsumerStats>,
}

async fn views(state: &AppState) -> Vec<ConnectorView> {
    ractor::call_t!(state.supervisor, SupervisorMsg::Status, 5_000).unwrap_or_default()
}

async fn connectors(State(state): State<AppState>) -> Json<Vec<ConnectorStatus>> {
    let mut out = Vec::new();
    for v in views(&state).await {
        let consumer_stats = state.bus.consumer_stats(&v.consumer).await.ok();
        out.push(ConnectorStatus {
            view: v,
            consumer_stats,
        });
    }
    Json(out)
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prom.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let mut problems = Vec::new();
    if !state.bus.is_connected() {
        problems.push("NATS is not connected".to_string());
    }
    for v in views(&state).await {
        if v.state == RunState::Invalid {
            // An invalid registry value runs nothing; it is reported in /api/connectors.
            continue;
        }
        if v.state != RunState::Running {
            problems.push(format!("connector {} is {:?}", v.id, v.state));
        } else if !state.bus.consumer_exists(&v.consumer).await {
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

async fn page(State(state): State<AppState>) -> Html<String> {
    let mut rows = String::new();
    for v in views(&state).await {
        let stats = tokio::time::timeout(
            Duration::from_secs(2),
            state.bus.consumer_stats(&v.consumer),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"{:?}\">{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&v.id), esc(&v.topic), v.state, v.state, stats.pending, stats.ack_pending,
            v.delivered, v.parked, esc(v.last_error.as_deref().unwrap_or("")),
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>hms-sync</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.Running{{color:green}}.Failed{{color:red}}</style></head>\
         <body><h1>hms-sync</h1><table><tr><th>connector</th><th>topic</th><th>state</th><th>lag (pending)</th>\
         <th>in flight</th><th>delivered</th><th>parked</th><th>last error</th></tr>{rows}</table></body></html>"
    ))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
