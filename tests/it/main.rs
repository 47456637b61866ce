//! Integration tests: one binary, real nats-server per test, real HTTP over loopback.

mod harness;

mod cli;
mod cluster;
mod crash;
mod delivery;
mod embedded;
mod faults;
mod fleet;
mod hostile;
mod inbound;
mod instances;
mod lifecycle;
mod load;
mod nats_server;
mod operator;
mod overload;
mod prod_https;
mod prod_nats;
mod prod_policy;
mod prod_security;
mod prod_support;
mod protection;
mod registry;
mod saas;
mod secrets;
mod status;
mod status_page;
mod supervision;
mod walkthrough;
