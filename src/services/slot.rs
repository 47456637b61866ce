//! Where a service's callers find its actor: a cell holding the current incarnation, which the
//! services supervisor replaces when it restarts the actor.

use std::sync::{Arc, PoisonError, RwLock};

use ractor::{ActorRef, Message};

/// The current actor of a service (`None` while it restarts). Cheap to clone (shared).
pub struct ActorSlot<M: Message>(Arc<RwLock<Option<ActorRef<M>>>>);

impl<M: Message> Clone for ActorSlot<M> {
    fn clone(&self) -> Self {
        ActorSlot(self.0.clone())
    }
}

impl<M: Message> Default for ActorSlot<M> {
    fn default() -> Self {
        ActorSlot(Arc::new(RwLock::new(None)))
    }
}

impl<M: Message> ActorSlot<M> {
    /// The actor now, if one runs.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts a (new) actor in place.
    pub fn set(&self, actor: Option<ActorRef<M>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = actor;
    }

    /// Sends `msg` to the actor now; `false` when there is none or it is gone.
    pub fn send(&self, msg: M) -> bool {
        self.get().is_some_and(|a| a.send_message(msg).is_ok())
    }
}
