//! The `hms-sync` command line: one file per subcommand, each delegating to the library.

mod audit;
mod connect;
mod deploy;
mod flood;
mod list;
mod parked;
mod publish;
mod schema;
mod sink;
mod status;
mod test;
mod undeploy;
mod up;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::RuntimeConfig;

/// hms-sync keeps third-party tools (GIS maps, calendars, payment rails) in lock-step with the
/// events on your NATS bus. Each integration is a small YAML connector: a trigger (NATS subject +
/// CEL filter), a mapping (URL, method, headers, body templates) and retry rules.
///
/// Start with `hms-sync test connectors/gis-ddot.yaml < connectors/sample_event.json` to see the
/// request a connector would send, then `hms-sync up` to run them all.
#[derive(Debug, Parser)]
#[command(name = "hms-sync", version, about, long_about)]
pub struct Cli {
    /// Runtime configuration file.
    #[arg(
        long,
        global = true,
        default_value = "config/hms-sync.yaml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// NATS server URL (overrides nats.url of the config).
    #[arg(long, global = true, env = "NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
    /// Log format on stderr: `text` (seed-style console lines) or `json`.
    #[arg(long, global = true, default_value = "text", value_name = "FORMAT")]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the runtime: every connector of the connectors folder, the HTTP server
    /// (status page, /metrics, /healthz, /readyz, /api/connectors). Starts a local nats-server
    /// from nats-server.conf when nothing answers and nats.embedded is on.
    Up(up::Args),
    /// Offline: print the HTTP request a connector would send for an event (file or stdin).
    /// Sends nothing. Exit 0 printed, 1 filtered out, 2 invalid input.
    Test(test::Args),
    /// Check connector files, and with --config the runtime config; errors as
    /// file:line:col: message. Exit 0 valid, 2 invalid.
    Validate(validate::Args),
    /// Publish an event on a subject, like `nats pub`.
    Publish(publish::Args),
    /// Print a connector's input JSON Schema (generated from its mapping, or `map.schema`).
    Schema(schema::Args),
    /// The audit trail on HMS_AUDIT.
    #[command(subcommand)]
    Audit(audit::Cmd),
    /// The human-review queue: parked jobs (list, show, replay, discard).
    #[command(subcommand)]
    Parked(parked::Cmd),
    /// Per connector: state, pending, ack pending, redelivered, parked jobs, last error,
    /// p50/p99 latency. Asks the running instance; without one, what NATS knows.
    Status(status::Args),
    /// Validate connector files and store them in the registry (KV hms_sync_connectors);
    /// every running `up` starts or changes them within 2 s. Exit 0 deployed, 2 invalid.
    Deploy(deploy::Args),
    /// Remove connectors from the registry (history kept); running `up`s stop them.
    Undeploy(undeploy::Args),
    /// The registry: id, type, topic, revision, deployed at; `--history ID` for earlier revisions.
    List(list::Args),
    /// Load test: publish N synthetic events with JetStream acks, steady at --rate or as fast
    /// as acked, each stamped (floodSeq, floodSentAtNs) for end-to-end latency; prints
    /// published/s, publish-ack p50/p99 and errors.
    Flood(flood::Args),
    /// Load test: a fake HTTP target that answers every request (after --latency-ms, a
    /// --fail-rate of 503s, else --status) and prints requests/s, duplicates by
    /// Idempotency-Key, order violations and end-to-end latency every few seconds and on
    /// Ctrl-C.
    Sink(sink::Args),
}

impl Cli {
    /// The runtime config with command-line overrides applied.
    pub fn runtime_config(&self) -> anyhow::Result<RuntimeConfig> {
        let explicit = std::env::args().any(|a| a == "--config" || a.starts_with("--config="));
        let mut cfg = RuntimeConfig::load(&self.config, explicit)?;
        if let Some(url) = &self.nats_url {
            cfg.nats.url = url.clone();
        }
        Ok(cfg)
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(&cli.log_format);
    match &cli.command {
        Command::Test(a) => test::exec(a),
        Command::Validate(a) => validate::exec(&cli, a),
        Command::Up(a) => block_on(up::exec(&cli, a)),
        Command::Publish(a) => block_on(publish::exec(&cli, a)),
        Command::Schema(a) => schema::exec(a),
        Command::Parked(c) => block_on(parked::exec(&cli, c)),
        Command::Audit(c) => block_on(audit::exec(&cli, c)),
        Command::Status(a) => block_on(status::exec(&cli, a)),
        Command::Deploy(a) => block_on(deploy::exec(&cli, a)),
        Command::Undeploy(a) => block_on(undeploy::exec(&cli, a)),
        Command::List(a) => block_on(list::exec(&cli, a)),
        Command::Flood(a) => block_on(flood::exec(&cli, a)),
        Command::Sink(a) => block_on(sink::exec(a)),
    }
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Tasks still running (a lookup stuck in the resolver, a connection) do not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}
