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
pub const SERVICE_RESTARTS_TOTAL: &str = "sync_service_restarts_total";
pub const PULL_REOPENED_TOTAL: &str = "sync_pull_reopened_total";
pub const ENDPOINT_WAITING: &str = "sync_endpoint_waiting";
pub const ENDPOINT_IN_FLIGHT: &str = "sync_endpoint_in_flight";
pub const ENDPOINT_PAUSED: &str = "sync_endpoint_paused";
pub const ENDPOINT_PAUSES_TOTAL: &str = "sync_endpoint_pauses_total";
pub const ENDPOINT_BUDGET_WAITS_TOTAL: &str = "sync_endpoint_budget_waits_total";
pub const RATE_LIMIT_WAITING: &str = "sync_rate_limit_waiting";
pub const AUDIT_PENDING: &str = "sync_audit_pending";
pub const AUDIT_WRITTEN_TOTAL: &str = "sync_audit_written_total";
pub const AUDIT_DROPPED_TOTAL: &str = "sync_audit_dropped_total";
pub const AUDIT_STORE_FAILURES_TOTAL: &str = "sync_audit_store_failures_total";
pub const AUDIT_HOLDING_BACK: &str = "sync_audit_holding_back";
pub const PARK_FAILURES_TOTAL: &str = "sync_park_failures_total";
pub const REGISTRY_INVALID_TOTAL: &str = "sync_registry_invalid_total";
pub const WEBHOOK_RECEIVED_TOTAL: &str = "webhook_received_total";
pub const WEBHOOK_REJECTED_TOTAL: &str = "webhook_rejected_total";
pub const HTTP_CONNECTIONS: &str = "sync_http_connections";
pub const HTTP_HEADER_TIMEOUTS_TOTAL: &str = "sync_http_header_timeouts_total";

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

/// Every counter with its help text.
const COUNTERS: &[(&str, &str)] = &[
    (SYNC_OK_TOTAL, "Events delivered (2xx), per connector"),
    (PULL_REOPENED_TOTAL, "Pull subscriptions re-opened because work waited on the consumer but none arrived, per connector"),
    (SYNC_FAIL_TOTAL, "Failed attempts, per connector and reason"),
    (SYNC_RETRY_TOTAL, "Attempts scheduled again after a transient failure"),
    (SYNC_PARKED_TOTAL, "Events parked for human review"),
    (SYNC_FILTERED_TOTAL, "Events the trigger filter excluded (acked at once)"),
    (AUDIT_STORE_FAILURES_TOTAL, "Batches of audit records HMS_AUDIT did not take, per reason (limit_reached, not_connected, timeout, ...)"),
    (PARK_FAILURES_TOTAL, "Events that could not be parked (not acked, offered again), per connector and reason"),
    (HTTP_HEADER_TIMEOUTS_TOTAL, "Connections closed because a request head did not arrive within http.headerTimeoutMs"),
    (WEBHOOK_RECEIVED_TOTAL, "Webhooks accepted (answered 2xx after the JetStream ack), per inbound connector"),
    (WEBHOOK_REJECTED_TOTAL, "Webhooks refused (4xx/5xx), per inbound connector and reason"),
    (CONNECTOR_RESTARTS_TOTAL, "Connector actor restarts by the supervisor"),
    (SERVICE_RESTARTS_TOTAL, "Restarts of a service actor (audit, tokens, timers, an endpoint) by its supervisor"),
    (ENDPOINT_PAUSES_TOTAL, "Times the endpoint's circuit breaker opened"),
    (ENDPOINT_BUDGET_WAITS_TOTAL, "Times the endpoint waited for the reset of the budget its target announced spent"),
    (AUDIT_WRITTEN_TOTAL, "Audit records stored on HMS_AUDIT"),
    (AUDIT_DROPPED_TOTAL, "Audit records dropped because HMS_AUDIT was unavailable too long"),
    (REGISTRY_INVALID_TOTAL, "Registry values (KV hms_sync_connectors) that could not run, per key"),
];

/// Every gauge with its help text.
const GAUGES: &[(&str, &str)] = &[
    (SYNC_IN_FLIGHT, "Requests in flight, per connector"),
    (
        AUDIT_HOLDING_BACK,
        "1 while HMS_AUDIT refuses records: no new deliveries start, webhooks are answered 503",
    ),
    (
        HTTP_CONNECTIONS,
        "Connections open to the HTTP server (at most http.maxConnections)",
    ),
    (
        ENDPOINT_WAITING,
        "Requests waiting for a permit, per endpoint",
    ),
    (ENDPOINT_IN_FLIGHT, "Requests in flight, per endpoint"),
    (
        ENDPOINT_PAUSED,
        "1 while the endpoint's circuit breaker is open",
    ),
    (
        RATE_LIMIT_WAITING,
        "Deliveries waiting for an endpoint permit, per connector",
    ),
    (AUDIT_PENDING, "Audit records not yet stored on HMS_AUDIT"),
];

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        SYNC_LATENCY_MS,
        Unit::Milliseconds,
        "Event publish time to 2xx received, per connector"
    );
    for (name, help) in COUNTERS {
        describe_counter!(*name, *help);
    }
    for (name, help) in GAUGES {
        describe_gauge!(*name, *help);
    }
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
    /// Deliveries waiting for an endpoint permit.
    pub waiting: Gauge,
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
            waiting: metrics::gauge!(RATE_LIMIT_WAITING, &l),
        }
    }

    pub fn fail(&self, reason: &'static str) {
        metrics::counter!(SYNC_FAIL_TOTAL, "connector" => self.id.clone(), "reason" => reason)
            .increment(1);
    }
}
