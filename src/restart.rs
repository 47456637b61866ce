//! The restart policy of every supervisor: exponential backoff with a cap, and a limit on how
//! many restarts a child may need within a window before it is given up on. Pure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ractor::{ActorCell, SupervisionEvent};

/// The child a supervision event says ended, and why (its error, its stop reason, or
/// `stopped`); `None` for the events that end no child (started, process groups).
pub fn child_ended(evt: SupervisionEvent) -> Option<(ActorCell, String)> {
    match evt {
        SupervisionEvent::ActorFailed(cell, err) => Some((cell, err.to_string())),
        SupervisionEvent::ActorTerminated(cell, _, reason) => {
            Some((cell, reason.unwrap_or_else(|| "stopped".to_string())))
        }
        _ => None,
    }
}

/// How a supervisor restarts one kind of child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay of the first restart; doubled for each recent restart.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
    /// More than `max` restarts within `window`...
    pub max: usize,
    pub window: Duration,
    /// ...and the child is given up on (`true`), or keeps being restarted at `cap` (`false`:
    /// for services everything else depends on).
    pub give_up: bool,
}

/// Connectors: 100 ms * 2^(recent restarts), at most 30 s; more than 10 within 60 s and the
/// connector stays `failed` (its events stay on JetStream).
pub const CONNECTORS: RestartPolicy = RestartPolicy {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(30),
    max: 10,
    window: Duration::from_secs(60),
    give_up: true,
};

/// Services (audit, tokens, endpoints, timers, registry watch): same backoff, never given up.
pub const SERVICES: RestartPolicy = RestartPolicy {
    give_up: false,
    ..CONNECTORS
};

/// One child's restart history.
#[derive(Debug, Clone, Default)]
pub struct Restarts {
    recent: VecDeque<Instant>,
    /// Restarts since the child was first started.
    pub total: usize,
}

impl Restarts {
    /// The delay before the next restart, or `None` when the child is given up on.
    pub fn next(&mut self, policy: &RestartPolicy, now: Instant) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= policy.max && policy.give_up {
            return None;
        }
        let exp = self.recent.len().min(16) as u32;
        let delay = policy
            .base
            .saturating_mul(1u32 << exp.min(20))
            .min(policy.cap);
        self.recent.push_back(now);
        if self.recent.len() > policy.max {
            self.recent.pop_front();
        }
        self.total += 1;
        Some(delay)
    }

    /// Forgets recent restarts (a new definition was deployed: start afresh).
    pub fn clear(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let now = Instant::now();
        let mut r = Restarts::default();
        let delays: Vec<Option<u64>> = (0..12)
            .map(|_| r.next(&CONNECTORS, now).map(|d| d.as_millis() as u64))
            .collect();
        assert_eq!(
            delays,
            [
                Some(100),
                Some(200),
                Some(400),
                Some(800),
                Some(1600),
                Some(3200),
                Some(6400),
                Some(12800),
                Some(25600),
                Some(30000),
                None,
                None
            ]
        );
        assert_eq!(r.total, 10);
        // Past the window, restarts are allowed again, from the base delay.
        let later = now + Duration::from_secs(61);
        assert_eq!(r.next(&CONNECTORS, later), Some(Duration::from_millis(100)));
    }

    #[test]
    fn services_are_never_given_up() {
        let now = Instant::now();
        let mut r = Restarts::default();
        for _ in 0..100 {
            assert!(r.next(&SERVICES, now).is_some());
        }
        assert_eq!(r.next(&SERVICES, now), Some(SERVICES.cap));
    }
}
