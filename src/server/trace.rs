//! `GET /api/trace`: the status page's "where is my event?", the same search as
//! `hms-sync trace --json`, bounded (200,000 messages read, 20 s).

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::selection::{FieldMatch, Window};
use crate::trace::{self, Query, TraceError};

/// Messages read at most per search from the page.
const MAX_SCAN: u64 = 200_000;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The request of `?seq=N | msg_id=ID | key=K | where=FIELD=VALUE (repeatable)`, with
/// `since` (default 24h), `until`, `connector`, `limit` (default 20, at most 100).
fn request(query: &str) -> Result<trace::Request, String> {
    let (mut q, mut matches) = (None, Vec::new());
    let (mut since, mut until, mut connector, mut limit) = ("24h".to_string(), None, None, 20);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.trim().to_string();
        match k.as_ref() {
            "seq" if !v.is_empty() => {
                q = Some(Query::Sequence(v.parse().map_err(|_| {
                    format!("seq `{v}`: expected a stream sequence (a number)")
                })?))
            }
            "msg_id" if !v.is_empty() => q = Some(Query::MsgId(v)),
            "key" if !v.is_empty() => q = Some(Query::Key(v)),
            "where" if !v.is_empty() => matches.push(FieldMatch::parse(&v)?),
            "since" if !v.is_empty() => since = v,
            "until" if !v.is_empty() => until = Some(v),
            "connector" if !v.is_empty() => connector = Some(v),
            "limit" if !v.is_empty() => {
                limit = v
                    .parse::<usize>()
                    .map_err(|_| format!("limit `{v}`: expected a number"))?
                    .clamp(1, 100)
            }
            _ => {}
        }
    }
    let query = match (q, matches.is_empty()) {
        (Some(q), true) => q,
        (None, false) => Query::Where(matches),
        (None, true) => return Err("say what to look for: seq, msg_id, key or where".into()),
        (Some(_), false) => return Err("one of seq, msg_id, key or where at a time".into()),
    };
    let window = Window::parse(&since, until.as_deref(), time::OffsetDateTime::now_utc())?;
    Ok(trace::Request {
        query,
        window,
        connector,
        limit,
        max_scan: MAX_SCAN,
    })
}

/// `GET /api/trace?...`: the report of [`trace::trace`].
pub async fn trace(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let req = match request(query.as_deref().unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let connectors: Vec<_> = state
        .pipelines()
        .await
        .iter()
        .map(|p| p.connector.clone())
        .collect();
    let run = trace::trace(&state.bus, &connectors, &req);
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e @ (TraceError::NoSuchEvent(_) | TraceError::UnknownConnector(_)))) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the search took longer than 20 s: narrow the window (since/until) or use hms-sync trace",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_of_the_page() {
        let r = request("seq=42").unwrap();
        assert_eq!(r.query, Query::Sequence(42));
        assert_eq!(r.limit, 20);
        let r = request("where=permitId%3DRW-481&where=n%3D5&since=2h&limit=500").unwrap();
        assert!(matches!(&r.query, Query::Where(m) if m.len() == 2));
        assert_eq!(r.limit, 100);
        assert!(request("").is_err());
        assert!(request("seq=x").is_err());
        assert!(request("seq=1&where=a%3Db").is_err());
        assert!(request("key=k&since=soon").unwrap_err().contains("--since"));
        assert_eq!(
            request("msg_id=m1&seq=").unwrap().query,
            Query::MsgId("m1".into())
        );
    }
}
