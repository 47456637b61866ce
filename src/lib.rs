//! hms-sync: keeps third-party tools in lock-step with events on NATS JetStream.
//!
//! See ARCHITECTURE.md for the map. From the ground floor up: the pure core (templates,
//! filters, outcome, audit chain, signatures, CloudEvents, rate-limit headers, wire types,
//! clock), the connector model, the edges ([`bus`] is the only module that talks to NATS,
//! [`http_client`] the only one that sends HTTP), the services a delivery calls
//! ([`services`]), [`delivery`] itself, the actors that orchestrate ([`actors`]), and
//! [`runtime`] with the HTTP [`server`] on top.

// Ground floor: pure, imports nothing of ours but each other.
pub mod audit;
pub mod auth;
pub mod check;
pub mod clock;
pub mod cloudevents;
pub mod config;
pub mod filter;
pub mod flood;
pub mod history;
pub mod limits;
pub mod metrics;
pub mod ordering;
pub mod outcome;
pub mod policy;
pub mod ratelimit_headers;
pub mod restart;
pub mod schema;
pub mod scrub;
pub mod selection;
pub mod signature;
pub mod template;
pub mod wire;

// The connector model, and requests built from it; the runtime config checked.
pub mod config_check;
pub mod connector;
pub mod request;

// Edges.
pub mod bus;
pub mod http_client;
pub mod logging;
pub mod nats_server;
pub mod serve;
pub mod sink;
pub mod tls;

// Commands on NATS (what the services and orchestration use, and the operator's questions).
pub mod parked;
pub mod registry;
pub mod resync;
pub mod trace;

// Services, delivery, webhooks, orchestration.
pub mod actors;
pub mod delivery;
pub mod inbound;
pub mod services;

// Top.
pub mod cli;
pub mod runtime;
pub mod server;

pub use runtime::{run, run_with_reloads, Runtime};

#[cfg(test)]
mod props;
