//! A connector's delivery context: what every delivery of one connector shares.

use std::sync::Arc;
use std::time::Duration;

use super::attempt::History;
use super::telemetry::{ConnectorStats, Telemetry};
use crate::bus::Bus;
use crate::config::{DeliveryConfig, StreamsConfig};
use crate::connector::Connector;
use crate::http_client::{HttpClient, UrlBase};
use crate::services::{endpoint_of, AuditRoute, Services};

/// What the connector supervisor shares with every connector it starts.
#[derive(Clone)]
pub struct Deps {
    pub bus: Bus,
    pub http: HttpClient,
    pub delivery: DeliveryConfig,
    /// When the runtime started: new consumers deliver events published from then on.
    pub started_at: time::OffsetDateTime,
    /// Audit, tokens, timers and endpoint protection.
    pub services: Services,
    /// `HMS_EVENTS` gets the subjects of connectors deployed while running.
    pub streams: StreamsConfig,
    /// Turns true when shutdown stops waiting for deliveries in flight: those still sending
    /// are handed back to JetStream.
    pub hand_back: tokio::sync::watch::Receiver<bool>,
}

/// Everything a delivery needs; shared by all deliveries of one connector (one definition:
/// a redeploy builds a new one, keeping the stats).
pub struct Pipeline {
    pub connector: Arc<Connector>,
    pub bus: Bus,
    pub http: HttpClient,
    pub services: Services,
    /// Where this connector's audit records go.
    pub audit: AuditRoute,
    /// The endpoint when the URL's scheme/host/port is fixed (the usual case).
    pub fixed_endpoint: Option<String>,
    /// That fixed `scheme://authority`, parsed once.
    pub url_base: Option<UrlBase>,
    /// How often a delivery waiting for a permit tells JetStream it is still being worked on.
    pub heartbeat: Duration,
    pub telemetry: Telemetry,
    /// Attempts seen by this process, by stream sequence (for the parked job).
    pub history: History,
    /// See [`Deps::hand_back`].
    pub hand_back: tokio::sync::watch::Receiver<bool>,
}

impl Pipeline {
    pub fn new(connector: Arc<Connector>, deps: &Deps, stats: Arc<ConnectorStats>) -> Self {
        let source = connector.target.url.source();
        let authority_end = source
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| source[start..].find('/').map(|j| start + j))
            .unwrap_or(source.len());
        let authority = &source[..authority_end];
        let fixed = !authority.contains('{') && !authority.contains('$');
        // A connector with `map.to.tls` presents its client certificate (target and lookup).
        let http = match &connector.target.identity {
            None => deps.http.clone(),
            Some(id) => deps.http.with_identity(id).unwrap_or_else(|e| {
                tracing::error!("[{}] client certificate not usable: {e}", connector.id);
                deps.http.clone()
            }),
        };
        Pipeline {
            fixed_endpoint: fixed.then(|| endpoint_of(authority)),
            url_base: fixed.then(|| UrlBase::new(authority)).flatten(),
            telemetry: Telemetry::new(&connector.id, stats, deps.delivery.console_lines_per_second),
            audit: deps.services.audit.route(&connector.consumer),
            connector,
            bus: deps.bus.clone(),
            http,
            services: deps.services.clone(),
            heartbeat: (deps.delivery.ack_wait() / 3).max(Duration::from_millis(200)),
            history: History::default(),
            hand_back: deps.hand_back.clone(),
        }
    }

    /// The status numbers (shared across definitions of the connector).
    pub fn stats(&self) -> &Arc<ConnectorStats> {
        &self.telemetry.stats
    }
}
