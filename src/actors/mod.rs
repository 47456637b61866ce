//! Actors that orchestrate (ractor): the connector supervisor, one actor per connector with
//! its pump, and the registry watch. The work they order is in [`crate::delivery`]; the
//! services deliveries call are in [`crate::services`].

pub mod connector;
pub mod pump;
pub mod stall;
pub mod supervisor;
pub mod watch;
