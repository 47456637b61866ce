//! hms-sync: keeps third-party tools in lock-step with events on NATS JetStream.
//!
//! See ARCHITECTURE.md for the map. The pure core ([`template`], [`filter`], [`connector`],
//! [`request`], [`outcome`]) does no I/O; actors in [`actors`] orchestrate; [`bus`] is the
//! only module that talks to NATS and [`http_client`] the only one that sends HTTP.

pub mod connector;
pub mod filter;
pub mod template;
pub mod config;
pub mod outcome;
pub mod request;
