//! Integration tests: one binary, real nats-server per test, real HTTP over loopback.

mod harness;

mod cli;
mod delivery;
mod embedded;
mod registry;
mod walkthrough;
