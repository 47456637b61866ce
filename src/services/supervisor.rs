//! Services supervisor: the parent of the actors a delivery calls — the audit actor, the token
//! actor, the retry-timer actor and one endpoint actor per endpoint. A child that fails or is
//! killed is restarted with backoff (never given up on: deliveries depend on them), and its
//! handle points to the new incarnation; restarts are logged and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::audit::{AuditActor, AuditArgs};
use super::breakers::{BreakerWatch, BreakerWatchArgs};
use super::endpoint::{EndpointArgs, Endpoints};
use super::handles::Services;
use super::timer::TimerActor;
use super::token::TokenActor;
use crate::bus::Bus;
use crate::http_client::HttpClient;
use crate::restart::{child_ended, Restarts, SERVICES};

/// One child of the services supervisor.
#[derive(Clone)]
pub enum Child {
    Audit,
    Tokens,
    Timers,
    Breakers,
    Endpoint(Arc<EndpointArgs>),
}

impl Child {
    /// Its name in logs and in the `service` label of `sync_service_restarts_total`.
    pub fn name(&self) -> String {
        match self {
            Child::Audit => "audit".into(),
            Child::Tokens => "tokens".into(),
            Child::Timers => "timers".into(),
            Child::Breakers => "breaker watch".into(),
            Child::Endpoint(a) => format!("endpoint {}", a.endpoint),
        }
    }
}

/// Messages to the services supervisor.
pub enum ServicesMsg {
    /// Start a child again (sent to itself after the backoff).
    Restart(Child),
    /// Stop every child (the audit actor stores what it holds), then reply.
    Shutdown(RpcReplyPort<()>),
}

pub struct ServicesArgs {
    pub services: Services,
    pub bus: Bus,
    pub http: HttpClient,
    /// Distinguishes this process's audit chains from other processes'.
    pub run_id: String,
}

pub struct ServicesState {
    args: ServicesArgs,
    by_actor: HashMap<ActorId, Child>,
    restarts: HashMap<String, Restarts>,
    /// Incarnations of the audit actor so far (each gets chains of its own).
    audit_runs: u32,
    /// The breaker watch (stopped at shutdown).
    breakers: Option<ActorRef<super::breakers::BreakerWatchMsg>>,
    stopping: bool,
}

pub struct ServicesSupervisor;

impl ServicesState {
    fn endpoints(&self) -> &Endpoints {
        &self.args.services.endpoints
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<ServicesMsg>,
        child: Child,
    ) -> Result<(), ractor::SpawnErr> {
        let s = &self.args.services;
        let cell = myself.get_cell();
        let id = match &child {
            Child::Timers => {
                let (a, _) = Actor::spawn_linked(None, TimerActor, s.timers.clone(), cell).await?;
                s.timers.actor.set(Some(a.clone()));
                a.get_id()
            }
            Child::Tokens => {
                let (a, _) =
                    Actor::spawn_linked(None, TokenActor, self.args.http.clone(), cell).await?;
                s.tokens.actor.set(Some(a.clone()));
                a.get_id()
            }
            Child::Audit => {
                self.audit_runs += 1;
                let run_id = match self.audit_runs {
                    1 => self.args.run_id.clone(),
                    n => format!("{}.{n}", self.args.run_id),
                };
                let args = AuditArgs {
                    bus: self.args.bus.clone(),
                    run_id,
                    auditor: s.audit.clone(),
                };
                let (a, _) = Actor::spawn_linked(None, AuditActor, args, cell).await?;
                s.audit.actor.set(Some(a.clone()));
                a.get_id()
            }
            Child::Breakers => {
                let args = BreakerWatchArgs {
                    endpoints: s.endpoints.clone(),
                };
                let (a, _) = Actor::spawn_linked(None, BreakerWatch, args, cell).await?;
                self.breakers = Some(a.clone());
                a.get_id()
            }
            Child::Endpoint(args) => {
                // Endpoint actors are found by their slot, not by id.
                return self.endpoints().spawn(args).await;
            }
        };
        self.by_actor.insert(id, child);
        Ok(())
    }

    /// Schedules a restart of `child` after its backoff.
    fn restart_later(&mut self, myself: &ActorRef<ServicesMsg>, child: Child, why: &str) {
        let name = child.name();
        let delay = self
            .restarts
            .entry(name.clone())
            .or_default()
            .next(&SERVICES, Instant::now())
            .unwrap_or(SERVICES.cap);
        tracing::warn!(
            "service {name} ended ({why}); restarting it in {} ms",
            delay.as_millis()
        );
        metrics::counter!(crate::metrics::SERVICE_RESTARTS_TOTAL, "service" => name).increment(1);
        myself.send_after(delay, move || ServicesMsg::Restart(child));
    }
}

impl Actor for ServicesSupervisor {
    type Msg = ServicesMsg;
    type State = ServicesState;
    type Arguments = ServicesArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ServicesMsg>,
        args: ServicesArgs,
    ) -> Result<ServicesState, ActorProcessingErr> {
        args.services.endpoints.adopt(myself.get_cell());
        let mut st = ServicesState {
            args,
            by_actor: HashMap::new(),
            restarts: HashMap::new(),
            audit_runs: 0,
            breakers: None,
            stopping: false,
        };
        for child in [Child::Timers, Child::Audit, Child::Tokens, Child::Breakers] {
            st.spawn(&myself, child).await?;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<ServicesMsg>,
        msg: ServicesMsg,
        st: &mut ServicesState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ServicesMsg::Restart(child) => {
                if st.stopping {
                    return Ok(());
                }
                let name = child.name();
                match st.spawn(&myself, child.clone()).await {
                    Ok(()) => tracing::info!("service {name} restarted"),
                    Err(e) => st.restart_later(&myself, child, &format!("restart failed: {e}")),
                }
            }
            ServicesMsg::Shutdown(reply) => {
                st.stopping = true;
                let s = &st.args.services;
                s.endpoints.close();
                for args in s.endpoints.all().await {
                    if let Some(a) = args.slot.get() {
                        a.stop(None);
                    }
                }
                if let Some(a) = s.tokens.actor.get() {
                    a.stop(None);
                }
                if let Some(a) = &st.breakers {
                    a.stop(None);
                }
                // The audit actor stores what it still holds, then stops (bounded).
                if let Some(a) = s.audit.actor.get() {
                    let _ = ractor::call_t!(a, super::audit::AuditMsg::Drain, 10_000);
                    let _ = a
                        .stop_and_wait(None, Some(std::time::Duration::from_secs(10)))
                        .await;
                }
                if let Some(a) = s.timers.actor.get() {
                    a.stop(None);
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ServicesMsg>,
        evt: SupervisionEvent,
        st: &mut ServicesState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, why)) = child_ended(evt) else {
            return Ok(());
        };
        if st.stopping {
            return Ok(());
        }
        let id = cell.get_id();
        let child = match st.by_actor.remove(&id) {
            Some(c) => c,
            None => match st.endpoints().find(id).await {
                Some(args) => Child::Endpoint(args),
                None => return Ok(()),
            },
        };
        let s = &st.args.services;
        match &child {
            Child::Audit => s.audit.actor.set(None),
            Child::Tokens => s.tokens.actor.set(None),
            Child::Timers => s.timers.actor.set(None),
            Child::Breakers => st.breakers = None,
            Child::Endpoint(a) => a.slot.set(None),
        }
        st.restart_later(&myself, child, &why);
        Ok(())
    }
}
