//! Flood bench (issue 8): hms-sync against synthetic event floods, beside two baselines.
//!
//! Run: `cargo bench --bench flood -- <scenario>|all [--events N] [--payload-bytes B] [--json FILE]`
//! (more options: `--help`). Scenarios: `drain`, `fanout`, `steady`, `flaky`, `ordered`, `idle`;
//! `overload` (issue 15) is a run of its own: a rate-limited backlog, see `overload.rs`.
//!
//! Per scenario the bench starts its own nats-server (the library's launcher: free port, temp
//! store, killed at the end) and a loopback target (the library's sink: 200 for every request,
//! or 503 for a fraction of them; records when each event arrived), publishes with the
//! library's flood publisher (`Bus::flood`), then runs, one after the other on the same events:
//! (a) `ceiling`: a durable pull consumer acking each message, nothing else;
//! (b) `naive`: pull -> string-replace template -> reqwest PATCH -> ack, 64 in flight;
//! (c) `hms-sync`: the release binary `hms-sync up` as a child process, every guarantee on
//!     (durable consumers, explicit acks, audit, metrics, per-endpoint permits).
//! hms-sync runs as a child so that its CPU time and peak RSS (`/proc/<pid>/stat`, `VmHWM`) are
//! its own; the baselines run in this process on their own 2-thread runtime, whose threads'
//! CPU time is read from `/proc/self/task`. nats-server and the target share the machine with
//! whichever system runs; their CPU time is reported in their own columns.
//!
//! Traffic goes to 127.0.0.1 only; every wait is bounded, and the bench stops by itself.

mod audit_store;
mod baselines;
mod hms;
mod opts;
mod overload;
mod procfs;
mod report;
mod rounds;
mod scenarios;

use std::time::Duration;

use audit_store::audit_store;
use opts::{parse_opts, USAGE};
use report::print_table;
use rounds::run_all;

fn main() -> std::process::ExitCode {
    // `cargo test --all-targets` runs bench binaries too (without `--bench`): not a bench run.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("flood: a bench; run it with `cargo bench --bench flood -- <scenario>|all`");
        return std::process::ExitCode::SUCCESS;
    }
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("tokio runtime")
    };
    // Baselines and target each on their own threads, so that their CPU time can be told apart.
    let (sys, tgt) = (runtime("fl-sys"), runtime("fl-tgt"));
    let ctl = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if opts.audit_store {
        // On the fl-sys threads, whose CPU time is the publisher's.
        let run = sys.spawn(audit_store(opts.events.unwrap_or(60_000)));
        match sys.block_on(run) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("audit-store: {e}");
                return std::process::ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("audit-store: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    if opts.overload {
        if let Err(e) = ctl.block_on(overload::overload(&opts)) {
            eprintln!("overload: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    if opts.scenarios.is_empty() {
        return std::process::ExitCode::SUCCESS;
    }
    let results = ctl.block_on(run_all(&opts, sys.handle().clone(), tgt.handle().clone()));
    print_table(&results);
    if let Some(path) = &opts.json {
        let json = serde_json::to_string_pretty(&results).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("{}: {e}", path.display());
        } else {
            eprintln!("results written to {}", path.display());
        }
    }
    sys.shutdown_timeout(Duration::from_secs(2));
    tgt.shutdown_timeout(Duration::from_secs(2));
    std::process::ExitCode::SUCCESS
}
