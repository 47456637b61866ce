//! The status page's charts: every `http.chartSampleMs` (10 s by default) a task samples each
//! connector's delivered/s, lag and p99 latency into a bounded in-memory history
//! ([`crate::history`]: the last 15 minutes), served at `GET /api/history`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::history::{per_second, History, Sample};

/// What the charts show: 15 minutes.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// The sampled history, shared by the sampler and the handler.
#[derive(Clone)]
pub struct Charts {
    history: Arc<Mutex<History>>,
    every: Duration,
}

impl Charts {
    /// A history sampled every `every`, keeping [`WINDOW`].
    pub fn new(every: Duration) -> Charts {
        let every = every.max(Duration::from_millis(100));
        Charts {
            history: Arc::new(Mutex::new(History::new(History::capacity_for(
                WINDOW.as_millis() as u64,
                every.as_millis() as u64,
            )))),
            every,
        }
    }
}

/// What the sampler remembers of a connector between samples.
struct Last {
    delivered: u64,
    at: Instant,
}

/// Starts sampling (stopped with the server).
pub fn start(state: AppState, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: HashMap<String, Last> = HashMap::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sample(&state, &mut last).await;
        }
    })
}

async fn sample(state: &AppState, last: &mut HashMap<String, Last>) {
    let pipelines = state.pipelines().await;
    let lag: Option<HashMap<String, u64>> = super::status::bounded(state.bus.event_consumers())
        .await
        .map(|cs| cs.into_iter().map(|c| (c.name, c.stats.pending)).collect());
    let now = Instant::now();
    let at_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let mut history = state
        .charts
        .history
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let ids: Vec<&str> = pipelines.iter().map(|p| p.connector.id.as_str()).collect();
    history.retain(&ids);
    last.retain(|k, _| ids.contains(&k.as_str()));
    for p in &pipelines {
        let id = &p.connector.id;
        let stats = p.stats();
        let delivered = stats.delivered.load(std::sync::atomic::Ordering::Relaxed);
        // The p99 of the deliveries since the previous sample (a new window starts).
        let p99_ms = stats.window_p99_ms();
        let prev = last.insert(id.clone(), Last { delivered, at: now });
        let Some(prev) = prev else {
            // The first reading is the baseline.
            continue;
        };
        let elapsed_ms = now.duration_since(prev.at).as_millis() as u64;
        history.push(
            id,
            Sample {
                at_ms,
                delivered_per_s: per_second(prev.delivered, delivered, elapsed_ms),
                lag: lag
                    .as_ref()
                    .and_then(|l| l.get(&p.connector.consumer).copied()),
                p99_ms,
            },
        );
    }
}

/// `GET /api/history`: every connector's samples, oldest first.
pub async fn history(State(state): State<AppState>) -> Json<Value> {
    let snapshot = state
        .charts
        .history
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .snapshot();
    Json(json!({
        "every_ms": state.charts.every.as_millis() as u64,
        "window_ms": WINDOW.as_millis() as u64,
        "connectors": snapshot,
    }))
}
