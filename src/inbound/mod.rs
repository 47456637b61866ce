//! Inbound webhooks: the webhook edge of the HTTP server (`receive`), the table of served
//! paths (`table`), and the mapping of a verified webhook to an event (`mapping`, pure).

pub mod mapping;
pub mod receive;
pub mod table;

pub use receive::{router, routers};
pub use table::{deploy, DeployError, Webhooks};

/// The signature schemes (re-exported where webhook code looks for them).
pub use crate::signature;
