//! Endpoint actor: one per endpoint (`scheme://host:port`) and process, shared by every
//! connector calling it. It hands out permits to send: at most `perSecond` in any window of
//! 1.1 s, at most `maxInFlight` at once, none while a 429 asked to slow down, only one probe at
//! a time while its circuit breaker is open, and none while the budget its target announced in
//! its rate-limit headers is spent (`services/budget.rs`). Its waits (slow-down, next probe,
//! rate window, budget reset) are held by the retry-timer actor.
//!
//! Several instances: the rate budget and the breaker are one for all of them. Grants are
//! reserved from a log every instance shares, and the breaker's state is shared too (both in
//! KV `hms_sync_limits`, see [`super::shared`]): when one instance opens it, every instance
//! stops calling the endpoint (the breaker watch tells them), one probe at a time is sent by
//! whichever instance takes it, and the alerts are published once, by the instance whose
//! write opened or closed it. While that state cannot be reached, the actor falls back to its
//! own limits (per process) and says so. The target's announced budget is each instance's
//! reading of the answers it gets.
//!
//! Fast lane: while nothing limits an endpoint but its in-flight cap (no rate limit, breaker
//! closed with no failure counted, no slow-down, nobody waiting), the actor keeps its [`Lane`]
//! open and a permit is one atomic increment, returned without a message unless it reports a
//! failure or a slow-down. The actor closes the lane before it queues a waiter and re-reads the
//! in-flight count after, while a returning permit decrements the count before it reads whether
//! the lane is open (both sequentially consistent): either the actor sees the freed slot or the
//! permit sees the closed lane and wakes the actor, so no waiter is forgotten.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::budget::{Gate, TargetBudget};
use super::shared::{now_ms, SharedEndpoint};
use super::slot::ActorSlot;
use super::timer::Timers;
use crate::connector::RateLimit;
pub use crate::outcome::Signal;
use crate::ratelimit_headers::Announced;

/// How long the actor uses its own limits after the shared state could not be reached.
const LOCAL_FALLBACK: Duration = Duration::from_secs(5);
/// A reserved grant not used within this long is dropped (its time window has moved on).
const STALE_GRANT_MS: u64 = 200;

/// The window in which at most `perSecond` permits are granted: one second plus a 10 % margin,
/// so that requests still fall within the quota where they arrive despite scheduling and
/// network jitter.
pub const RATE_WINDOW: Duration = Duration::from_millis(1100);

type Limiter = RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>;

/// Messages to an endpoint actor.
pub enum EndpointMsg {
    /// Wait for a permit to send one request. The connector's own `rateLimit` is a hint: the
    /// strictest one seen applies unless the endpoint is configured.
    Acquire(Option<RateLimit>, RpcReplyPort<Permit>),
    /// A permit ended with something to report, or while the lane was closed (sent by
    /// [`Permit`]'s drop, which has already given its in-flight slot back): what the outcome
    /// says about the endpoint, and what the answer announced about the target's budget.
    Done(Signal, Announced),
    /// Internal wake-up to serve waiters.
    Tick,
    /// Grants reserved from the shared budget (from its reservation task; `None`: failed).
    Reserved(Option<Vec<u64>>),
    /// The shared probe: taken (`Some(None)`), not before this time (`Some(Some(ms))`), or
    /// the shared state could not be reached (`None`).
    ProbeClaimed(Option<Option<u64>>),
    /// The shared breaker changed (from the breaker watch; `None`: closed).
    Shared(Option<crate::limits::Breaker>),
}

/// What an endpoint's callers share with its actor (see the module note).
pub struct Lane {
    in_flight: AtomicUsize,
    max_in_flight: usize,
    /// Set by the actor: permits may be taken and returned without it.
    open: AtomicBool,
    in_flight_gauge: metrics::Gauge,
}

impl Lane {
    fn new(endpoint: &str, max_in_flight: usize) -> Lane {
        Lane {
            in_flight: AtomicUsize::new(0),
            max_in_flight: max_in_flight.max(1),
            open: AtomicBool::new(false),
            in_flight_gauge: metrics::gauge!(
                crate::metrics::ENDPOINT_IN_FLIGHT,
                "endpoint" => endpoint.to_string()
            ),
        }
    }

    /// A slot, when the lane is open and one is free.
    fn try_take(&self) -> bool {
        if !self.open.load(SeqCst) {
            return false;
        }
        let mut cur = self.in_flight.load(SeqCst);
        while cur < self.max_in_flight {
            match self
                .in_flight
                .compare_exchange_weak(cur, cur + 1, SeqCst, SeqCst)
            {
                Ok(_) => {
                    self.in_flight_gauge.set((cur + 1) as f64);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
        false
    }
}

/// Permission to send one request; report what happened with [`Permit::report`] and
/// [`Permit::announce`].
pub struct Permit {
    actor: ActorSlot<EndpointMsg>,
    lane: Arc<Lane>,
    signal: Signal,
    announced: Announced,
}

impl Permit {
    fn new(actor: ActorSlot<EndpointMsg>, lane: Arc<Lane>) -> Permit {
        Permit {
            actor,
            lane,
            signal: Signal::Neutral,
            announced: Announced::NoAnswer,
        }
    }

    pub fn report(&mut self, signal: Signal) {
        self.signal = signal;
    }

    /// What the answer's rate-limit headers said (the target's budget).
    pub fn announce(&mut self, announced: Announced) {
        self.announced = announced;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let left = self.lane.in_flight.fetch_sub(1, SeqCst).saturating_sub(1);
        self.lane.in_flight_gauge.set(left as f64);
        let quiet = matches!(self.signal, Signal::Success | Signal::Neutral)
            && !matches!(self.announced, Announced::Budget(_));
        if !(quiet && self.lane.open.load(SeqCst)) {
            self.actor
                .send(EndpointMsg::Done(self.signal, self.announced));
        }
    }
}

/// Settings an endpoint actor starts with.
#[derive(Clone)]
pub struct EndpointArgs {
    pub endpoint: String,
    /// Configured for the endpoint (wins over connectors' hints).
    pub configured_rate: Option<RateLimit>,
    pub max_in_flight: usize,
    pub breaker_failures: u32,
    pub probe_interval: Duration,
    /// Whether the target's rate-limit headers are read and honoured (`rateLimitHeaders`).
    pub rate_limit_headers: bool,
    /// Where pause/resume alerts go (`hitl.review.requested`).
    pub alerts: Option<crate::bus::Bus>,
    /// Shared with the callers; outlives restarts of the actor (in-flight counts stay true).
    pub lane: Arc<Lane>,
    /// The actor's current incarnation (for the permits it hands out).
    pub slot: ActorSlot<EndpointMsg>,
    /// Who wakes the actor when a wait is over.
    pub timers: Timers,
    /// The state shared with other instances (`None`: this process alone decides).
    pub shared: Option<SharedEndpoint>,
}

enum Breaker {
    Closed { failures: u32 },
    Open { probe_at: Instant, probing: bool },
}

/// Where this instance stands with the shared probe of an open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeClaim {
    Idle,
    Claiming,
    Granted,
}

pub struct EndpointState {
    args: EndpointArgs,
    rate: Option<RateLimit>,
    limiter: Option<Limiter>,
    /// Send times within the last second (for the per-second window).
    window: VecDeque<Instant>,
    waiters: VecDeque<RpcReplyPort<Permit>>,
    slow_until: Option<Instant>,
    breaker: Breaker,
    /// What the target announced of its budget.
    budget: TargetBudget,
    next_tick: Option<Instant>,
    waiting_gauge: metrics::Gauge,
    open_gauge: metrics::Gauge,
    /// Grants reserved from the shared budget (ms), earliest first.
    grants: VecDeque<u64>,
    reserving: bool,
    probe: ProbeClaim,
    /// Own limits until then: the shared state could not be reached.
    local_until: Option<Instant>,
}

impl EndpointState {
    /// The shared state, unless it failed lately.
    fn shared(&self, now: Instant) -> Option<SharedEndpoint> {
        if self.local_until.is_some_and(|u| now < u) {
            return None;
        }
        self.args.shared.clone()
    }

    fn fall_back(&mut self, now: Instant, what: &str) {
        if self.local_until.is_none_or(|u| now >= u) {
            tracing::warn!(
                "endpoint {}: the state shared with other instances is unavailable ({what}); using this instance's own limits for {} s",
                self.args.endpoint,
                LOCAL_FALLBACK.as_secs()
            );
        }
        self.local_until = Some(now + LOCAL_FALLBACK);
    }
}

/// The longest rate-limit period (one request a day).
const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

pub struct EndpointActor;

fn limiter_for(rate: &RateLimit) -> Option<Limiter> {
    // At most one request a day: a tiny `perSecond` does not overflow the period.
    let period = Duration::try_from_secs_f64(1.0 / rate.per_second)
        .unwrap_or(MAX_PERIOD)
        .min(MAX_PERIOD);
    let burst = std::num::NonZeroU32::new(rate.burst.max(1))?;
    Quota::with_period(period).map(|q| RateLimiter::direct(q.allow_burst(burst)))
}

impl Actor for EndpointActor {
    type Msg = EndpointMsg;
    type State = EndpointState;
    type Arguments = EndpointArgs;

    async fn pre_start(
        &self,
        me: ActorRef<Self::Msg>,
        args: EndpointArgs,
    ) -> Result<EndpointState, ActorProcessingErr> {
        let l = [("endpoint", args.endpoint.clone())];
        let rate = args.configured_rate;
        // The shared breaker may be open already (another instance opened it).
        if let Some(shared) = args.shared.clone() {
            tokio::spawn(async move {
                let read = tokio::time::timeout(Duration::from_secs(2), shared.breaker()).await;
                if let Ok(Ok(Some(b))) = read {
                    let _ = me.send_message(EndpointMsg::Shared(Some(b)));
                }
            });
        }
        Ok(EndpointState {
            limiter: rate.as_ref().and_then(limiter_for),
            rate,
            window: VecDeque::new(),
            waiters: VecDeque::new(),
            slow_until: None,
            breaker: Breaker::Closed { failures: 0 },
            budget: TargetBudget::new(args.rate_limit_headers, Instant::now()),
            next_tick: None,
            waiting_gauge: metrics::gauge!(crate::metrics::ENDPOINT_WAITING, &l),
            open_gauge: metrics::gauge!(crate::metrics::ENDPOINT_PAUSED, &l),
            grants: VecDeque::new(),
            reserving: false,
            probe: ProbeClaim::Idle,
            local_until: None,
            args,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut EndpointState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            EndpointMsg::Acquire(hint, reply) => {
                // Closed before the waiter is queued and `serve` re-reads the in-flight count.
                st.args.lane.open.store(false, SeqCst);
                if st.args.configured_rate.is_none() {
                    if let Some(h) = hint {
                        if st.rate.is_none_or(|r| h.per_second < r.per_second) {
                            st.limiter = limiter_for(&h);
                            st.rate = Some(h);
                        }
                    }
                }
                st.waiters.push_back(reply);
            }
            EndpointMsg::Done(signal, announced) => {
                on_signal(st, signal, now);
                let in_flight = st.args.lane.in_flight.load(SeqCst);
                st.budget.heard(announced, in_flight, now);
            }
            EndpointMsg::Tick => st.next_tick = None,
            EndpointMsg::Reserved(grants) => {
                st.reserving = false;
                match grants {
                    Some(g) if g.is_empty() => {
                        // The shared window is full for a while: ask again shortly.
                        wake_at(&me, st, now + Duration::from_millis(100));
                    }
                    Some(g) => st.grants.extend(g),
                    None => st.fall_back(now, "reserving grants failed"),
                }
            }
            EndpointMsg::ProbeClaimed(claim) => on_probe_claim(st, claim, now),
            EndpointMsg::Shared(b) => on_shared(st, b, now),
        }
        serve(&me, st, now);
        st.waiting_gauge.set(st.waiters.len() as f64);
        let open = st.rate.is_none()
            && matches!(st.breaker, Breaker::Closed { failures: 0 })
            && st.slow_until.is_none()
            && !st.budget.watching()
            && st.waiters.is_empty();
        st.args.lane.open.store(open, SeqCst);
        Ok(())
    }
}

fn on_signal(st: &mut EndpointState, signal: Signal, now: Instant) {
    let threshold = st.args.breaker_failures;
    match signal {
        Signal::SlowDown(d) => {
            let d = d.min(crate::outcome::MAX_RETRY_AFTER);
            let until = now.checked_add(d).unwrap_or(now);
            st.slow_until = Some(st.slow_until.map_or(until, |u| u.max(until)));
            tracing::warn!(
                "endpoint {} asked to slow down: pausing it for {} ms",
                st.args.endpoint,
                d.as_millis()
            );
            probe_failed(st, now);
        }
        Signal::Success => {
            if let Breaker::Open { .. } = st.breaker {
                tracing::info!("endpoint {} resumed: a probe succeeded", st.args.endpoint);
                st.open_gauge.set(0.0);
                st.probe = ProbeClaim::Idle;
                match st.shared(now) {
                    // Every instance resumes; the one whose write closed it says so.
                    Some(shared) => {
                        let args = st.args.clone();
                        tokio::spawn(async move {
                            match shared.close().await {
                                Ok(true) => alert(&args, false, "a probe request succeeded"),
                                Ok(false) => {}
                                Err(e) => {
                                    tracing::warn!("endpoint {}: {e}", args.endpoint);
                                    alert(&args, false, "a probe request succeeded");
                                }
                            }
                        });
                    }
                    None => alert(&st.args, false, "a probe request succeeded"),
                }
            }
            st.breaker = Breaker::Closed { failures: 0 };
        }
        Signal::Failure => match &mut st.breaker {
            Breaker::Closed { failures } => {
                *failures += 1;
                if threshold > 0 && *failures >= threshold {
                    let why = format!("{failures} consecutive failures");
                    tracing::warn!(
                        "endpoint {} paused: {why}; probing every {} ms",
                        st.args.endpoint,
                        st.args.probe_interval.as_millis()
                    );
                    metrics::counter!(crate::metrics::ENDPOINT_PAUSES_TOTAL, "endpoint" => st.args.endpoint.clone()).increment(1);
                    st.open_gauge.set(1.0);
                    st.breaker = Breaker::Open {
                        probe_at: now + st.args.probe_interval,
                        probing: false,
                    };
                    st.probe = ProbeClaim::Idle;
                    match st.shared(now) {
                        // Every instance stops; the one whose write opened it says so.
                        Some(shared) => {
                            let (args, interval) = (st.args.clone(), st.args.probe_interval);
                            tokio::spawn(async move {
                                match shared.open(&why, interval).await {
                                    Ok(true) => alert(&args, true, &why),
                                    Ok(false) => {}
                                    Err(e) => {
                                        tracing::warn!("endpoint {}: {e}", args.endpoint);
                                        alert(&args, true, &why);
                                    }
                                }
                            });
                        }
                        None => alert(&st.args, true, &why),
                    }
                }
            }
            Breaker::Open { .. } => probe_failed(st, now),
        },
        Signal::Neutral => {
            if let Breaker::Open { probing: true, .. } = st.breaker {
                probe_failed(st, now);
            }
        }
    }
}

/// The probe did not succeed: the next one after the interval (for everyone).
fn probe_failed(st: &mut EndpointState, now: Instant) {
    let Breaker::Open { probe_at, probing } = &mut st.breaker else {
        return;
    };
    *probing = false;
    *probe_at = now + st.args.probe_interval;
    st.probe = ProbeClaim::Idle;
    if let Some(shared) = st.shared(now) {
        let (endpoint, interval) = (st.args.endpoint.clone(), st.args.probe_interval);
        tokio::spawn(async move {
            if let Err(e) = shared.probe_failed(interval).await {
                tracing::warn!("endpoint {endpoint}: {e}");
            }
        });
    }
}

/// The answer of a claim of the shared probe.
fn on_probe_claim(st: &mut EndpointState, claim: Option<Option<u64>>, now: Instant) {
    match claim {
        Some(None) => st.probe = ProbeClaim::Granted,
        Some(Some(0)) => {
            // Closed meanwhile by another instance.
            st.probe = ProbeClaim::Idle;
            on_shared(st, None, now);
        }
        Some(Some(at)) => {
            st.probe = ProbeClaim::Idle;
            if let Breaker::Open { probe_at, .. } = &mut st.breaker {
                *probe_at = instant_of(at, now);
            }
        }
        None => {
            st.fall_back(now, "claiming the probe failed");
            st.probe = ProbeClaim::Granted;
        }
    }
}

/// Another instance opened or closed the breaker.
fn on_shared(st: &mut EndpointState, b: Option<crate::limits::Breaker>, now: Instant) {
    let open = b.as_ref().is_some_and(|b| b.open);
    match (&st.breaker, open) {
        (Breaker::Closed { .. }, true) => {
            let b = b.unwrap_or_default();
            tracing::warn!(
                "endpoint {} paused by instance {} ({}); probing every {} ms",
                st.args.endpoint,
                b.by,
                b.why,
                st.args.probe_interval.as_millis()
            );
            metrics::counter!(crate::metrics::ENDPOINT_PAUSES_TOTAL, "endpoint" => st.args.endpoint.clone()).increment(1);
            st.open_gauge.set(1.0);
            st.breaker = Breaker::Open {
                probe_at: instant_of(b.next_probe, now),
                probing: false,
            };
            st.probe = ProbeClaim::Idle;
        }
        (Breaker::Open { probing: false, .. }, false) => {
            tracing::info!(
                "endpoint {} resumed: another instance's probe succeeded",
                st.args.endpoint
            );
            st.open_gauge.set(0.0);
            st.breaker = Breaker::Closed { failures: 0 };
            st.probe = ProbeClaim::Idle;
        }
        _ => {}
    }
}

/// The `Instant` of a time in ms since the epoch (now for the past).
fn instant_of(ms: u64, now: Instant) -> Instant {
    now + Duration::from_millis(ms.saturating_sub(now_ms()))
}

/// Publishes a breaker pause/resume on `hitl.review.requested` (in the background).
fn alert(args: &EndpointArgs, paused: bool, why: &str) {
    let Some(bus) = args.alerts.clone() else {
        return;
    };
    let body = serde_json::json!({
        "kind": if paused { "endpoint.paused" } else { "endpoint.resumed" },
        "endpoint": args.endpoint,
        "summary": format!("{} {}: {why}", args.endpoint, if paused { "paused" } else { "resumed" }),
        "at": crate::clock::now_rfc3339(),
    });
    tokio::spawn(async move {
        if let Err(e) = bus.review(body.to_string().as_bytes()).await {
            tracing::warn!("breaker alert not sent: {e}");
        }
    });
}

/// Grants permits to waiters, in order, while every limit allows; schedules a wake-up otherwise.
fn serve(me: &ActorRef<EndpointMsg>, st: &mut EndpointState, now: Instant) {
    while let Some(front) = st.waiters.front() {
        if front.is_closed() {
            st.waiters.pop_front();
            continue;
        }
        if let Some(until) = st.slow_until {
            if now < until {
                return wake_at(me, st, until);
            }
            st.slow_until = None;
        }
        let mut probe = false;
        if let Breaker::Open { probe_at, probing } = st.breaker {
            if probing {
                return; // the probe's Done wakes us
            }
            if now < probe_at {
                return wake_at(me, st, probe_at);
            }
            if let Some(shared) = st.shared(now) {
                // One probe at a time for every instance: take it first.
                match st.probe {
                    ProbeClaim::Granted => {}
                    ProbeClaim::Claiming => return, // its answer wakes us
                    ProbeClaim::Idle => {
                        st.probe = ProbeClaim::Claiming;
                        let (me, interval) = (me.clone(), st.args.probe_interval);
                        tokio::spawn(async move {
                            let claim = shared.claim_probe(interval).await.ok();
                            let _ = me.send_message(EndpointMsg::ProbeClaimed(claim));
                        });
                        return;
                    }
                }
            }
            probe = true;
        }
        let lane = &st.args.lane;
        let in_flight = lane.in_flight.load(SeqCst);
        if in_flight >= lane.max_in_flight {
            return; // a Done wakes us (the lane is closed while anyone waits)
        }
        match st.budget.gate(in_flight, now) {
            Gate::Go => {}
            Gate::WaitAnswer(None) => return, // a Done wakes us
            Gate::WaitAnswer(Some(at)) => return wake_at(me, st, at),
            Gate::WaitReset { until, first } => {
                if first {
                    tracing::debug!(
                        "endpoint {}: the budget its target announced is spent; waiting {} ms for its reset",
                        st.args.endpoint,
                        until.saturating_duration_since(now).as_millis()
                    );
                    metrics::counter!(crate::metrics::ENDPOINT_BUDGET_WAITS_TOTAL, "endpoint" => st.args.endpoint.clone()).increment(1);
                }
                return wake_at(me, st, until);
            }
        }
        if let (Some(rate), Some(shared)) = (st.rate, st.shared(now)) {
            // The budget every instance shares: a grant reserved from its log.
            let now_ms = now_ms();
            while st
                .grants
                .front()
                .is_some_and(|t| t + STALE_GRANT_MS < now_ms)
            {
                st.grants.pop_front();
            }
            match st.grants.front().copied() {
                Some(t) if t <= now_ms => {
                    st.grants.pop_front();
                }
                Some(t) => return wake_at(me, st, now + Duration::from_millis(t - now_ms)),
                None => {
                    if !st.reserving {
                        st.reserving = true;
                        let cap = rate.per_second.floor().max(1.0) as usize;
                        let want = st.waiters.len().clamp(1, cap);
                        let me = me.clone();
                        tokio::spawn(async move {
                            let grants = shared.reserve(cap, RATE_WINDOW, want).await.ok();
                            let _ = me.send_message(EndpointMsg::Reserved(grants));
                        });
                    }
                    return; // the reservation wakes us
                }
            }
        } else if let Some(rate) = st.rate {
            while st
                .window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
            {
                st.window.pop_front();
            }
            let cap = rate.per_second.floor().max(1.0) as usize;
            if st.window.len() >= cap {
                if let Some(oldest) = st.window.front() {
                    let at = *oldest + RATE_WINDOW;
                    return wake_at(me, st, at);
                }
            }
            if let Some(l) = &st.limiter {
                if let Err(not_until) = l.check() {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    return wake_at(me, st, now + wait);
                }
            }
            st.window.push_back(now);
        }
        let Some(reply) = st.waiters.pop_front() else {
            return;
        };
        st.budget.started();
        let now_in_flight = st.args.lane.in_flight.fetch_add(1, SeqCst) + 1;
        st.args.lane.in_flight_gauge.set(now_in_flight as f64);
        if probe {
            if let Breaker::Open { probing, .. } = &mut st.breaker {
                *probing = true;
            }
            st.probe = ProbeClaim::Idle;
        }
        let permit = Permit::new(st.args.slot.clone(), st.args.lane.clone());
        if let Err(e) = reply.send(permit) {
            // The waiter is gone; its permit (inside the error) drops and reports Neutral.
            drop(e);
        }
    }
}

fn wake_at(me: &ActorRef<EndpointMsg>, st: &mut EndpointState, at: Instant) {
    if st.next_tick.is_some_and(|t| t <= at) {
        return;
    }
    st.next_tick = Some(at);
    let me = me.clone();
    st.args.timers.at(at, move || {
        let _ = me.send_message(EndpointMsg::Tick);
    });
}

/// How long a caller waits before asking again when an endpoint's actor is being restarted.
const RESTART_POLL: Duration = Duration::from_millis(20);

/// The endpoint actors of the process, one per endpoint, started on first use under the
/// services supervisor (which restarts them). Shared by all connectors; cheap to clone.
#[derive(Clone)]
pub struct Endpoints {
    inner: Arc<EndpointsInner>,
}

struct EndpointsInner {
    slots: tokio::sync::Mutex<std::collections::HashMap<String, Arc<EndpointArgs>>>,
    config: std::collections::BTreeMap<String, crate::config::EndpointConfig>,
    alerts: Option<crate::bus::Bus>,
    timers: Timers,
    /// The state shared with other instances (`None`: this process alone decides).
    limits: Option<crate::bus::limits::Limits>,
    /// This process's name in shared state.
    instance: Arc<str>,
    /// The services supervisor: endpoint actors are its children.
    supervisor: std::sync::OnceLock<ractor::ActorCell>,
    closed: AtomicBool,
}

impl Endpoints {
    /// `bus`: where alerts go; `limits`: the state shared with other instances (`None`: this
    /// process alone decides).
    pub fn new(
        config: std::collections::BTreeMap<String, crate::config::EndpointConfig>,
        bus: Option<crate::bus::Bus>,
        limits: Option<crate::bus::limits::Limits>,
        timers: Timers,
    ) -> Self {
        Endpoints {
            inner: Arc::new(EndpointsInner {
                slots: Default::default(),
                config,
                alerts: bus,
                timers,
                limits,
                instance: instance_name().into(),
                supervisor: std::sync::OnceLock::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Makes the endpoint actors children of `supervisor` (set once, at start).
    pub(super) fn adopt(&self, supervisor: ractor::ActorCell) {
        let _ = self.inner.supervisor.set(supervisor);
    }

    /// The shared state of `endpoint`, when the bucket can be opened.
    fn shared(&self, endpoint: &str) -> Option<SharedEndpoint> {
        let limits = self.inner.limits.clone()?;
        Some(SharedEndpoint::new(
            limits,
            endpoint,
            self.inner.instance.clone(),
        ))
    }

    /// The bucket of shared state (for the breaker watch).
    pub(super) fn limits(&self) -> Option<crate::bus::limits::Limits> {
        self.inner.limits.clone()
    }

    /// The endpoint whose breaker key is `key` (for the breaker watch).
    pub(super) async fn by_breaker_key(&self, key: &str) -> Option<Arc<EndpointArgs>> {
        let slots = self.inner.slots.lock().await;
        slots
            .iter()
            .find(|(e, _)| {
                key.strip_prefix(super::shared::BREAKER_PREFIX)
                    .is_some_and(|k| k == super::shared::endpoint_key(e))
            })
            .map(|(_, a)| a.clone())
    }

    fn args(&self, endpoint: &str, shared: Option<SharedEndpoint>) -> EndpointArgs {
        let config = &self.inner.config;
        let defaults = config.get("defaults");
        let own = config.get(endpoint);
        let pick = |f: &dyn Fn(&crate::config::EndpointConfig) -> Option<usize>| {
            own.and_then(f).or_else(|| defaults.and_then(f))
        };
        let max_in_flight = pick(&|c| c.max_in_flight).unwrap_or(64);
        let breaker = own
            .and_then(|c| c.breaker)
            .or_else(|| defaults.and_then(|c| c.breaker))
            .unwrap_or_default();
        EndpointArgs {
            endpoint: endpoint.to_string(),
            configured_rate: own.and_then(|c| c.rate_limit).map(|r| RateLimit {
                per_second: r.per_second,
                burst: r
                    .burst
                    .unwrap_or_else(|| r.per_second.ceil().max(1.0) as u32)
                    .max(1),
            }),
            max_in_flight: max_in_flight.max(1),
            breaker_failures: breaker.failures,
            probe_interval: Duration::from_millis(breaker.probe_interval_ms.max(10)),
            rate_limit_headers: own
                .and_then(|c| c.rate_limit_headers)
                .or_else(|| defaults.and_then(|c| c.rate_limit_headers))
                .unwrap_or(true),
            alerts: self.inner.alerts.clone(),
            lane: Arc::new(Lane::new(endpoint, max_in_flight)),
            slot: ActorSlot::default(),
            timers: self.inner.timers.clone(),
            shared,
        }
    }

    /// Starts (or restarts) the actor of an endpoint as a child of the services supervisor.
    pub(super) async fn spawn(&self, args: &EndpointArgs) -> Result<(), ractor::SpawnErr> {
        let Some(supervisor) = self.inner.supervisor.get().cloned() else {
            return Err(ractor::SpawnErr::StartupFailed(
                "the services supervisor is not running".into(),
            ));
        };
        let (actor, _) = Actor::spawn_linked(None, EndpointActor, args.clone(), supervisor).await?;
        args.slot.set(Some(actor));
        Ok(())
    }

    /// The endpoint whose actor is `id`, if any (for the supervisor).
    pub(super) async fn find(&self, id: ractor::ActorId) -> Option<Arc<EndpointArgs>> {
        let slots = self.inner.slots.lock().await;
        slots
            .values()
            .find(|a| a.slot.get().is_some_and(|r| r.get_id() == id))
            .cloned()
    }

    /// The endpoint's settings, lane and actor, started on first use.
    async fn endpoint(&self, endpoint: &str) -> Option<Arc<EndpointArgs>> {
        let mut slots = self.inner.slots.lock().await;
        if let Some(a) = slots.get(endpoint) {
            return Some(a.clone());
        }
        let shared = self.shared(endpoint);
        let args = Arc::new(self.args(endpoint, shared));
        // Once per endpoint: boxed, so that the spawn's large future is not part of every
        // permit's.
        if let Err(e) = Box::pin(self.spawn(&args)).await {
            tracing::error!("endpoint {endpoint}: cannot start its actor: {e}");
            return None;
        }
        slots.insert(endpoint.to_string(), args.clone());
        Some(args)
    }

    /// Waits for a permit to call `endpoint`. While its actor is being restarted the caller
    /// waits for the next incarnation. `None` only once the runtime shuts down (or the actor
    /// cannot be started at all): the request then goes out unprotected rather than never.
    pub async fn acquire(&self, endpoint: &str, hint: Option<RateLimit>) -> Option<Permit> {
        let args = self.endpoint(endpoint).await?;
        // A connector's own rate limit must reach the actor: never the fast lane then.
        if hint.is_none() && args.lane.try_take() {
            return Some(Permit::new(args.slot.clone(), args.lane.clone()));
        }
        // Boxed: the actor's call is the slow lane; the fast lane's future stays small.
        Box::pin(self.acquire_from_actor(&args, hint)).await
    }

    /// A permit from the endpoint's actor (rate limit, breaker, a full fast lane).
    async fn acquire_from_actor(
        &self,
        args: &EndpointArgs,
        hint: Option<RateLimit>,
    ) -> Option<Permit> {
        loop {
            if let Some(actor) = args.slot.get() {
                if let Ok(ractor::rpc::CallResult::Success(p)) = actor
                    .call(|reply| EndpointMsg::Acquire(hint, reply), None)
                    .await
                {
                    return Some(p);
                }
            }
            if self.inner.closed.load(SeqCst) {
                return None;
            }
            // The actor died while we waited: ask its next incarnation.
            tokio::time::sleep(RESTART_POLL).await;
        }
    }

    /// Every endpoint's arguments (the supervisor stops their actors at shutdown).
    pub(super) async fn all(&self) -> Vec<Arc<EndpointArgs>> {
        self.inner.slots.lock().await.values().cloned().collect()
    }

    /// No more permits: callers waiting for a restarted actor give up.
    pub(super) fn close(&self) {
        self.inner.closed.store(true, SeqCst);
    }
}

/// This process's name in the state shared with other instances: host, pid and a random part.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}/{}/{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 3]>())
    )
}

/// `scheme://host:port` of a URL (the key of endpoint actors).
pub fn endpoint_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or_default(),
            u.port_or_known_default().unwrap_or_default()
        ),
        Err(_) => url.to_string(),
    }
}
