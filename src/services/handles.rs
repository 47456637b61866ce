//! The handles of every service, as deliveries and the webhook edge hold them.

use super::audit::Auditor;
use super::endpoint::Endpoints;
use super::timer::Timers;
use super::token::Tokens;

/// The handles of every service; cheap to clone. Each follows the restarts of its actor.
#[derive(Clone)]
pub struct Services {
    pub audit: Auditor,
    pub tokens: Tokens,
    pub timers: Timers,
    pub endpoints: Endpoints,
}
