//! Metric names (one place), the Prometheus recorder, and per-connector handles.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const SYNC_LATENCY_MS: &str = "sync_latency_ms";
pub const SYNC_OK_TOTAL: &str = "sync_ok_total";
pub const SYNC_FAIL_TOTAL: &str = "sync_fail_total";
pub const SYNC_RETRY_TOTAL: &str = "sync_retry_total";
pub const SYNC_PARKED_TOTAL: &str = "sync_parked_total";
pub const SYNC_FILTERED_TOTAL: &str = "sync_filtered_total";
pub const SYNC_IN_FLIGHT: &str = "sync_in_flight";
pub const CONNECTOR_RESTARTS_TOTAL: &str = "sync_connector_restarts_total";
pub const REGISTRY_INVALID_TOTAL: &str = "sync_registry_invalid_total";
pub const WEBHOOK_RECEIVED_TOTAL: &str = "webhook_received_total";
pub const WEBHOOK_REJECTED_TOTAL: &str = "webhook_rejected_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle (for `/metrics`).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(SYNC_LATENCY_MS.into()),
                    &[
                        1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                        5000.0, 10000.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests): keep ours for rendering anyway.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        SYNC_LATENCY_MS,
        Unit::Milliseconds,
        "Event publish time to 2xx received, per connector"
    );
    describe_counter!(SYNC_OK_TOTAL, "Events delivered (2xx), per connector");
    describe_counter!(SYNC_FAIL_TOTAL, "Failed attempts, per connector and reason");
    describe_counter!(
        SYNC_RETRY_TOTAL,
        "Attempts scheduled again after a transient failure"
    );
    describe_counter!(SYNC_PARKED_TOTAL, "Events parked for human review");
    describe_counter!(
        SYNC_FILTERED_TOTAL,
        "Events the trigger filter excluded (acked at once)"
    );
    describe_gauge!(SYNC_IN_FLIGHT, "Requests in flight, per connector");
    describe_counter!(
        CONNECTOR_RESTARTS_TOTAL,
        "Connector actor restarts by the supervisor"
    );
    describe_counter!(
        REGISTRY_INVALID_TOTAL,
        "Registry values (KV hms_sync_connectors) that could not run, per key"
    );
}

/// Handles of one connector's metrics (labels resolved once, not per event).
#[derive(Clone)]
pub struct ConnectorMetrics {
    id: String,
    pub ok: Counter,
    pub retry: Counter,
    pub parked: Counter,
    pub filtered: Counter,
    pub latency: Histogram,
    pub in_flight: Gauge,
}

impl ConnectorMetrics {
    pub fn new(id: &str) -> Self {
        let l = [("connector", id.to_string())];
        ConnectorMetrics {
            id: id.to_string(),
            ok: metrics::counter!(SYNC_OK_TOTAL, &l),
            retry: metrics::counter!(SYNC_RETRY_TOTAL, &l),
            parked: metrics::counter!(SYNC_PARKED_TOTAL, &l),
            filtered: metrics::counter!(SYNC_FILTERED_TOTAL, &l),
            latency: metrics::histogram!(SYNC_LATENCY_MS, &l),
            in_flight: metrics::gauge!(SYNC_IN_FLIGHT, &l),
        }
    }

    pub fn fail(&self, reason: &'static str) {
        metrics::counter!(SYNC_FAIL_TOTAL, "connector" => self.id.clone(), "reason" => reason)
            .increment(1);
    }
}
