//! The budget an endpoint's target announces in its rate-limit headers, as the endpoint actor
//! keeps it: pure (time is an argument), table-tested.
//!
//! - **Learning** (first contact, and after every reset): one request at a time, until an
//!   answer says whether the target announces a budget. First contact learns for at most
//!   [`FIRST_CONTACT`]; after a reset the probe's answer is awaited (it is bounded by the
//!   request timeout).
//! - **Unlimited**: the target announces nothing (the endpoint's fast lane may open).
//! - **Known**: `left` more requests may start before `reset_at`; at 0 the endpoint waits until
//!   `reset_at`, then learns again. An announcement counts the requests still in flight as spent
//!   (the target may not have seen them yet) and, within one window, only lowers `left`: answers
//!   can arrive out of order.
//!
//! `reset_at` is the announced reset plus a margin of 10 % and 50 ms (resets are whole seconds
//! and clocks differ), so the next window has begun at the target when the endpoint resumes.

use std::time::{Duration, Instant};

use crate::ratelimit_headers::Announced;

/// How long first contact waits for the first answer before letting requests through anyway.
pub const FIRST_CONTACT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the headers is turned off (`rateLimitHeaders: false`).
    Off,
    Learning {
        until: Option<Instant>,
    },
    Unlimited,
    Known {
        left: u64,
        reset_at: Instant,
    },
}

/// Whether a request may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Wait for an answer (a permit returning), or until this instant if given.
    WaitAnswer(Option<Instant>),
    /// The budget is spent: wait until its reset (`first`: the first time this reset is
    /// waited for).
    WaitReset {
        until: Instant,
        first: bool,
    },
}

/// An endpoint's view of its target's budget.
#[derive(Debug, Clone)]
pub struct TargetBudget {
    state: State,
    /// The reset last waited for (so each wait is told once).
    waited: Option<Instant>,
}

impl TargetBudget {
    /// A budget that learns from the first answer (`enabled`), or one that ignores the headers.
    pub fn new(enabled: bool, now: Instant) -> TargetBudget {
        TargetBudget {
            waited: None,
            state: if enabled {
                State::Learning {
                    until: Some(now + FIRST_CONTACT),
                }
            } else {
                State::Off
            },
        }
    }

    /// Whether the budget needs to see every permit (false: the fast lane may open).
    pub fn watching(&self) -> bool {
        !matches!(self.state, State::Off | State::Unlimited)
    }

    /// Whether one more request may start, with `in_flight` requests out now.
    pub fn gate(&mut self, in_flight: usize, now: Instant) -> Gate {
        loop {
            match self.state {
                State::Off | State::Unlimited => return Gate::Go,
                State::Learning { until } => {
                    if until.is_some_and(|u| now >= u) {
                        self.state = State::Unlimited;
                        continue;
                    }
                    return if in_flight == 0 {
                        Gate::Go
                    } else {
                        Gate::WaitAnswer(until)
                    };
                }
                State::Known { left, reset_at } => {
                    if now >= reset_at {
                        self.state = State::Learning { until: None };
                        continue;
                    }
                    if left > 0 {
                        return Gate::Go;
                    }
                    let first = self.waited != Some(reset_at);
                    self.waited = Some(reset_at);
                    return Gate::WaitReset {
                        until: reset_at,
                        first,
                    };
                }
            }
        }
    }

    /// A request started (after [`TargetBudget::gate`] said [`Gate::Go`]).
    pub fn started(&mut self) {
        if let State::Known { left, .. } = &mut self.state {
            *left = left.saturating_sub(1);
        }
    }

    /// What an answer announced; `in_flight`: requests still out.
    pub fn heard(&mut self, news: Announced, in_flight: usize, now: Instant) {
        match (self.state, news) {
            (State::Off, _) | (_, Announced::NoAnswer) => {}
            (State::Learning { .. }, Announced::Nothing) => self.state = State::Unlimited,
            (_, Announced::Nothing) => {}
            (state, Announced::Budget(b)) => {
                let fresh_left = b.remaining.saturating_sub(in_flight as u64);
                let fresh_reset = now + b.reset + b.reset / 10 + Duration::from_millis(50);
                let (left, reset_at) = match state {
                    State::Known { left, reset_at } if now < reset_at => {
                        (left.min(fresh_left), reset_at.max(fresh_reset))
                    }
                    _ => (fresh_left, fresh_reset),
                };
                self.state = State::Known { left, reset_at };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit_headers::{Budget, Family};

    fn budget(remaining: u64, reset_s: u64) -> Announced {
        Announced::Budget(Budget {
            remaining,
            reset: Duration::from_secs(reset_s),
            limit: None,
            family: Family::Ietf,
        })
    }

    fn wait(until: Instant, first: bool) -> Gate {
        Gate::WaitReset { until, first }
    }

    #[test]
    fn first_contact_sends_one_then_learns() {
        let t0 = Instant::now();
        let mut b = TargetBudget::new(true, t0);
        assert!(b.watching());
        assert_eq!(b.gate(0, t0), Gate::Go);
        b.started();
        assert_eq!(b.gate(1, t0), Gate::WaitAnswer(Some(t0 + FIRST_CONTACT)));
        // No answer within FIRST_CONTACT: requests go anyway.
        assert_eq!(b.gate(1, t0 + FIRST_CONTACT), Gate::Go);
        assert!(!b.watching());

        let mut b = TargetBudget::new(true, t0);
        b.started();
        b.heard(Announced::NoAnswer, 0, t0);
        assert_eq!(b.gate(0, t0), Gate::Go, "a lost probe is replaced");
        b.heard(Announced::Nothing, 0, t0);
        assert!(!b.watching(), "a target that announces nothing: fast lane");
        assert_eq!(b.gate(50, t0), Gate::Go);
    }

    #[test]
    fn a_budget_of_five_per_two_seconds() {
        let t0 = Instant::now();
        let mut b = TargetBudget::new(true, t0);
        assert_eq!(b.gate(0, t0), Gate::Go);
        b.started();
        // The probe's answer: 4 left, reset in 2 s (plus 10 % and 50 ms).
        b.heard(budget(4, 2), 0, t0);
        let reset_at = t0 + Duration::from_millis(2250);
        for n in 0..4 {
            assert_eq!(b.gate(n, t0), Gate::Go, "{n}");
            b.started();
        }
        assert_eq!(b.gate(4, t0), wait(reset_at, true));
        // Answers in any order never raise what is left within the window.
        b.heard(budget(1, 2), 3, t0);
        b.heard(budget(3, 2), 2, t0);
        assert_eq!(b.gate(0, t0), wait(reset_at, false));
        // At the reset: one probe, whose answer opens the next window.
        assert_eq!(b.gate(0, reset_at), Gate::Go);
        b.started();
        assert_eq!(b.gate(1, reset_at), Gate::WaitAnswer(None));
        b.heard(budget(4, 2), 0, reset_at);
        assert_eq!(b.gate(0, reset_at), Gate::Go);
    }

    #[test]
    fn announcements_count_requests_in_flight_as_spent() {
        let t0 = Instant::now();
        let mut b = TargetBudget::new(true, t0);
        b.heard(Announced::Nothing, 0, t0);
        // Unlimited so far; then a target with 3 left answers while 5 are out.
        b.heard(budget(3, 10), 5, t0);
        assert!(b.watching());
        let until = t0 + Duration::from_millis(11_050);
        assert_eq!(b.gate(5, t0), wait(until, true));
        b.heard(budget(0, 10), 4, t0);
        assert_eq!(b.gate(4, t0), wait(until, false), "told once per reset");
        // A target that stops announcing keeps its last budget until the reset.
        b.heard(Announced::Nothing, 0, t0);
        assert_eq!(b.gate(0, t0), wait(until, false));
    }

    #[test]
    fn turned_off_it_ignores_everything() {
        let t0 = Instant::now();
        let mut b = TargetBudget::new(false, t0);
        assert!(!b.watching());
        b.heard(budget(0, 100), 0, t0);
        assert_eq!(b.gate(10, t0), Gate::Go);
    }
}
