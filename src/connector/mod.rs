//! The connector model: YAML as written (`raw`) -> validated, compiled [`Connector`] /
//! [`InboundConnector`] (`model`).
//!
//! Loading happens in two stages so that every problem of every file is reported at once as
//! `file:line:col: message`: the raw parse (serde_yaml) and a validation pass that knows the
//! position of every key (`yaml_pos`). Validation (`compile`, `outbound`, `inbound`, `extras`,
//! with the shared `rules`) is pure; `load` reads files and the environment.
//!
//! **API boundary:** the rest of the crate uses what this file re-exports.

pub mod compile;
pub mod extras;
pub mod hosts;
pub mod inbound;
pub mod load;
pub mod model;
pub mod outbound;
pub mod problems;
pub mod raw;
pub mod rules;
pub mod signing;
pub mod standards;
pub mod yaml_pos;

pub use compile::{parse_with, text_of, MAX_CONNECTOR_BYTES};
pub use load::{
    check_policy, files_in, load_files, load_sources, parse, read_text, warn_missing_secrets,
    warn_missing_webhook_secrets,
};
pub use model::{
    consumer_name, secrets_used, AnyConnector, CloudEventsSpec, Connector, Format,
    InboundConnector, InboundFormat, Kind, Lookup, LookupAuth, Publish, RateLimit, Sign, Signature,
    Target, Trigger, DEFAULT_MAX_BODY_BYTES,
};
pub use problems::{Problem, Problems};
pub use raw::RawConnector;

#[cfg(test)]
mod tests;
