//! Review on the status page: parked jobs listed and shown in full, replayed or discarded.
//! The rules are `parked`'s; here only who may act (the admin token must be set, and the
//! reviewer names themselves in `X-Hms-Operator`) and the audit record of every action.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::parked::{self, Action, Operator, ReviewError};

/// The header in which a reviewer names themselves (recorded with every action), as
/// percent-encoded UTF-8.
pub const OPERATOR_HEADER: &str = "X-Hms-Operator";

/// Jobs listed at most by `/api/parked`.
const LIST_LIMIT: usize = 500;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// `GET /api/session`: what the page may offer.
pub async fn session(State(state): State<AppState>) -> Json<Value> {
    let actions = state.admin_token.is_some();
    Json(json!({
        "token_required": actions,
        "actions": actions,
        "operator_header": OPERATOR_HEADER,
    }))
}

/// `GET /api/parked`: parked jobs waiting for review, oldest first (at most 500).
pub async fn list(State(state): State<AppState>) -> Response {
    let jobs = tokio::time::timeout(Duration::from_secs(10), parked::list(&state.bus, None)).await;
    match jobs {
        Ok(Ok(jobs)) => {
            let total = jobs.len();
            let rows: Vec<Value> = jobs
                .iter()
                .filter_map(parked::Reviewed::summary)
                .take(LIST_LIMIT)
                .collect();
            Json(json!({ "jobs": rows, "total": total, "truncated": total > LIST_LIMIT }))
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NATS did not list the parked jobs within 10 s",
        ),
    }
}

/// `GET /api/parked/{id}`: one job in full, with the request its connector would send now.
pub async fn show(State(state): State<AppState>, Path(id): Path<u64>) -> Response {
    let job = match parked::get(&state.bus, id).await {
        Ok(Some(j)) => j,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no parked job {id}")),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let pipelines = state.pipelines().await;
    let connector = job
        .job
        .as_ref()
        .and_then(|p| pipelines.iter().find(|x| x.connector.id == p.connector))
        .map(|p| p.connector.clone());
    Json(parked::detail(&job, connector.as_deref())).into_response()
}

/// Who acts: review actions need the admin token set (the middleware checked it) and a name.
fn operator(
    state: &AppState,
    headers: &HeaderMap,
    from: SocketAddr,
) -> Result<Operator, (StatusCode, &'static str)> {
    if state.admin_token.is_none() {
        return Err((
            StatusCode::FORBIDDEN,
            "review actions on the page need http.adminToken (then the page asks for it); use `hms-sync parked replay|discard` meanwhile",
        ));
    }
    // Percent-encoded UTF-8 (the page encodes it: header values are ASCII), or plain ASCII.
    let raw = headers
        .get(OPERATOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let name = Operator::checked_name(&name).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    Ok(Operator {
        name,
        via: "status page",
        from: Some(from.ip().to_string()),
    })
}

async fn act(state: &AppState, id: u64, action: Action, by: Operator) -> Response {
    let job = match parked::get(&state.bus, id).await {
        Ok(Some(j)) => j,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no parked job {id} (already replayed or discarded?)"),
            )
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    match parked::act(&state.bus, &job, &action, &by).await {
        Ok(acted) => {
            state
                .audit
                .record(&state.audit.route(&acted.consumer), acted.audit_record());
            let what = acted.record["action"].as_str().unwrap_or("resolved");
            tracing::info!(
                "parked job {id} ({}) {what} by {} from the status page ({})",
                acted.record["connector"].as_str().unwrap_or("?"),
                by.name,
                by.from.as_deref().unwrap_or("?")
            );
            Json(acted.record).into_response()
        }
        Err(e @ ReviewError::NotAJob(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /api/parked/{id}/replay`.
pub async fn replay(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    match operator(&state, &headers, from) {
        Ok(by) => act(&state, id, Action::Replay, by).await,
        Err((status, why)) => error(status, why),
    }
}

/// `POST /api/parked/{id}/discard`, with an optional JSON body `{"reason": "..."}`.
pub async fn discard(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let by = match operator(&state, &headers, from) {
        Ok(by) => by,
        Err((status, why)) => return error(status, why),
    };
    let reason = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v["reason"]
                .as_str()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(|r| r.chars().take(500).collect()),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: not JSON: {e}")),
        }
    };
    act(&state, id, Action::Discard { reason }, by).await
}
