//! The services a delivery calls, each an actor under the services supervisor: the audit trail
//! ([`Auditor`]), tokens ([`Tokens`]), retry timers ([`Timers`]) and endpoint protection
//! ([`Endpoints`]). Callers hold the handles, which follow restarts of the actors.
//!
//! **API boundary:** deliveries and the webhook edge use the handles re-exported here.

pub mod audit;
pub mod breakers;
pub mod budget;
pub mod endpoint;
pub mod handles;
pub mod shared;
pub mod slot;
pub mod supervisor;
pub mod timer;
pub mod token;

use ractor::{Actor, ActorRef};

pub use audit::{AuditRoute, Auditor};
pub use endpoint::{endpoint_of, Endpoints, Permit, Signal};
pub use handles::Services;
pub use supervisor::{ServicesMsg, ServicesSupervisor};
pub use timer::{TimerId, Timers};
pub use token::{Token, Tokens};

use crate::bus::Bus;
use crate::config::EndpointConfig;
use crate::http_client::HttpClient;

/// How long start-up waits for the bucket of shared endpoint state.
const LIMITS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The bucket of endpoint state shared with other instances; `None` (each instance keeps its
/// own rate budgets and breakers) when it cannot be opened now, e.g. without the permissions.
async fn shared_limits(bus: &Bus) -> Option<crate::bus::limits::Limits> {
    match tokio::time::timeout(LIMITS_WAIT, bus.limits(bus.replicas())).await {
        Ok(Ok(l)) => Some(l),
        Ok(Err(e)) => {
            tracing::warn!("rate budgets and circuit breakers are per instance: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(
                "rate budgets and circuit breakers are per instance: KV {} did not answer within {} s",
                crate::bus::limits::LIMITS_BUCKET,
                LIMITS_WAIT.as_secs()
            );
            None
        }
    }
}

/// The running services: their handles and their supervisor.
pub struct Running {
    pub services: Services,
    pub supervisor: ActorRef<ServicesMsg>,
    pub done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts the services supervisor and its children.
    pub async fn start(
        bus: &Bus,
        http: &HttpClient,
        endpoints: std::collections::BTreeMap<String, EndpointConfig>,
        run_id: String,
    ) -> Result<Running, ractor::SpawnErr> {
        let timers = Timers::default();
        let limits = shared_limits(bus).await;
        let services = Services {
            audit: Auditor::default(),
            tokens: Tokens::default(),
            endpoints: Endpoints::new(endpoints, Some(bus.clone()), limits, timers.clone()),
            timers,
        };
        let (supervisor, done) = Actor::spawn(
            None,
            ServicesSupervisor,
            supervisor::ServicesArgs {
                services: services.clone(),
                bus: bus.clone(),
                http: http.clone(),
                run_id,
            },
        )
        .await?;
        Ok(Running {
            services,
            supervisor,
            done,
        })
    }

    /// Stops every service (the audit actor stores what it holds), then the supervisor.
    pub async fn shutdown(self) {
        let _ = ractor::call_t!(self.supervisor, ServicesMsg::Shutdown, 30_000);
        self.supervisor.stop(None);
        let _ = self.done.await;
    }
}
