//! Actors (ractor): they orchestrate; the work they order is in the pure core and in
//! [`crate::delivery`].

pub mod audit;
pub mod connector;
pub mod endpoint;
pub mod supervisor;
pub mod token;
