//! Retry-timer actor: owns the due times of the waits hms-sync holds in memory (a keyed
//! lane's retried head, an endpoint's slow-down after a 429 or `Retry-After`, its circuit
//! breaker's next probe, its rate window) and tells the waiting party when each is due.
//!
//! The due times live in a table shared with the [`Timers`] handle, so a restarted actor
//! re-arms every pending wait. Retries of an event itself are not held here: JetStream holds
//! them (NAK with delay), which survives a crash of the whole process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::slot::ActorSlot;

/// What to do when a wait is due (typically: send the waiting actor a message). Runs inside
/// the timer actor: it must be quick and must not block.
pub struct Wake(Box<dyn FnOnce() + Send>);

/// Identifies a scheduled wait (to cancel it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(u64);

/// The pending waits, by due time.
#[derive(Default)]
struct Table {
    next_id: u64,
    due: BTreeMap<(Instant, TimerId), Wake>,
}

/// Messages to the timer actor.
pub enum TimerMsg {
    /// The table changed: arm for its earliest due time.
    Arm,
    /// A `send_after` elapsed: wake everything due.
    Fire,
}

/// A handle for scheduling waits; cheap to clone.
#[derive(Clone, Default)]
pub struct Timers {
    table: Arc<Mutex<Table>>,
    pub(super) actor: ActorSlot<TimerMsg>,
}

impl Timers {
    /// Calls `wake` at `due` (at once when it is past).
    pub fn at(&self, due: Instant, wake: impl FnOnce() + Send + 'static) -> TimerId {
        let id = {
            let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            t.next_id += 1;
            let id = TimerId(t.next_id);
            t.due.insert((due, id), Wake(Box::new(wake)));
            id
        };
        // While the actor restarts this is lost; the new one arms from the table.
        self.actor.send(TimerMsg::Arm);
        id
    }

    /// Forgets a wait that is no longer needed (no-op when it already fired).
    pub fn cancel(&self, id: TimerId) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.due.retain(|(_, i), _| *i != id);
    }

    /// Waits not yet due.
    pub fn pending(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .due
            .len()
    }

    /// Takes out everything due at `now`, earliest first.
    fn take_due(&self, now: Instant) -> Vec<Wake> {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let later = t.due.split_off(&(now, TimerId(u64::MAX)));
        std::mem::replace(&mut t.due, later).into_values().collect()
    }

    fn earliest(&self) -> Option<Instant> {
        let t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.due.keys().next().map(|(at, _)| *at)
    }
}

pub struct TimerActor;

pub struct TimerState {
    timers: Timers,
    /// The earliest `send_after` outstanding.
    armed: Option<Instant>,
}

impl Actor for TimerActor {
    type Msg = TimerMsg;
    type State = TimerState;
    type Arguments = Timers;

    async fn pre_start(
        &self,
        myself: ActorRef<TimerMsg>,
        timers: Timers,
    ) -> Result<TimerState, ActorProcessingErr> {
        // A restarted actor arms for what its predecessor left pending.
        myself.send_message(TimerMsg::Arm)?;
        Ok(TimerState {
            timers,
            armed: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TimerMsg>,
        msg: TimerMsg,
        st: &mut TimerState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        if matches!(msg, TimerMsg::Fire) || st.armed.is_some_and(|a| a <= now) {
            st.armed = None;
        }
        for wake in st.timers.take_due(now) {
            (wake.0)();
        }
        if let Some(next) = st.timers.earliest() {
            if st.armed.is_none_or(|a| next < a) {
                st.armed = Some(next);
                myself.send_after(next.saturating_duration_since(now), || TimerMsg::Fire);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    async fn start(timers: &Timers) -> ActorRef<TimerMsg> {
        let (a, _) = Actor::spawn(None, TimerActor, timers.clone())
            .await
            .unwrap();
        timers.actor.set(Some(a.clone()));
        a
    }

    #[tokio::test]
    async fn waits_fire_in_due_order_and_cancelled_ones_never() {
        let timers = Timers::default();
        let _a = start(&timers).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        for (ms, tag) in [(60u64, "c"), (20, "a"), (40, "b"), (50, "x")] {
            let tx = tx.clone();
            let id = timers.at(now + Duration::from_millis(ms), move || {
                let _ = tx.send(tag);
            });
            if tag == "x" {
                timers.cancel(id);
            }
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(rx.recv().await.unwrap());
        }
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(timers.pending(), 0);
    }

    #[tokio::test]
    async fn a_restarted_actor_fires_what_its_predecessor_left() {
        let timers = Timers::default();
        let a = start(&timers).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        timers.at(Instant::now() + Duration::from_millis(100), move || {
            let _ = tx.send("due");
        });
        a.kill();
        timers.actor.set(None);
        let _b = start(&timers).await;
        assert_eq!(rx.recv().await, Some("due"));
    }
}
