//! hms-sync: keeps third-party tools in lock-step with events on NATS JetStream.
//!
//! See ARCHITECTURE.md for the map. The pure core ([`template`], [`filter`], [`connector`],
//! [`request`], [`outcome`]) does no I/O; actors in [`actors`] orchestrate; [`bus`] is the
//! only module that talks to NATS and [`http_client`] the only one that sends HTTP.

pub mod actors;
pub mod auth;
pub mod bus;
pub mod check;
pub mod config;
pub mod connector;
pub mod delivery;
pub mod filter;
pub mod flood;
pub mod http_client;
pub mod inbound;
pub mod metrics;
pub mod nats_server;
pub mod outcome;
pub mod registry;
pub mod request;
pub mod runtime;
pub mod server;
pub mod sink;
pub mod template;

pub use runtime::{run, Runtime};
pub mod audit;
pub mod cli;
pub mod ordering;
pub mod schema;
