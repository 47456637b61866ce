//! Integration tests: one binary, real nats-server per test, real HTTP over loopback.

mod harness;

mod cli;
mod crash;
mod delivery;
mod embedded;
mod inbound;
mod load;
mod nats_server;
mod operator;
mod protection;
mod registry;
mod saas;
mod standards;
mod status;
mod status_page;
mod supervision;
mod walkthrough;
