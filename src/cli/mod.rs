//! The `hms-sync` command line (and `hms-bus`): one file per subcommand, each delegating to the
//! library.

mod audit;
mod completions;
mod config;
mod connect;
mod deploy;
mod flood;
mod list;
mod parked;
mod progress;
mod publish;
mod resync;
mod schema;
mod sink;
mod status;
mod test;
mod trace;
mod undeploy;
mod up;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::RuntimeConfig;

/// The environment variables hms-sync reads, as `--help` lists them.
const ENVIRONMENT: &str = "\
Environment:
  NATS_URL            NATS server URL(s), like --nats-url
  HMS_ADMIN_TOKEN     admin token that status, trace and the API clients send (--admin-token);
                      also the usual ${VAR} of http.adminToken in the runtime config
  HMS_SYNC_LOG        log filter (default: info,ractor=warn,async_nats=warn), e.g. debug
  NATS_SERVER_BIN     nats-server binary for the embedded server (else nats.serverBin,
                      .tools/nats-server/bin/nats-server, nats-server on PATH)
  HTTPS_PROXY, HTTP_PROXY, NO_PROXY
                      proxy for outbound calls when outbound.proxy / outbound.noProxy are unset
  SSL_CERT_FILE, SSL_CERT_DIR
                      extra trusted roots for HTTPS targets (added to the system's)
  USER                who replays or discards parked jobs from the command line (recorded)
  ${VAR}              every ${VAR} a connector or the runtime config names (secrets: read when
                      needed, never printed)";

/// hms-sync keeps third-party tools (GIS maps, calendars, payment rails) in lock-step with the
/// events on your NATS bus. Each integration is a small YAML connector: a trigger (NATS subject +
/// CEL filter), a mapping (URL, method, headers, body templates) and retry rules.
///
/// Start with `hms-sync test connectors/gis-ddot.yaml < connectors/sample_event.json` to see the
/// request a connector would send, then `hms-sync up` to run them all.
#[derive(Debug, Parser)]
#[command(name = "hms-sync", version, about, long_about, after_help = ENVIRONMENT)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, before or after the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Runtime configuration file (paths in it are relative to its folder).
    #[arg(
        long,
        global = true,
        default_value = "config/hms-sync.yaml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// NATS server URL, or several comma-separated (overrides nats.url of the config).
    #[arg(long, global = true, env = "NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
    /// Log format on stderr: `text` (seed-style console lines) or `json` (one JSON object per
    /// line, with the fields of each delivery; start-up errors too). Filter: HMS_SYNC_LOG.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Seed-style console lines: `INFO [connector] PATCH https://... 200 OK`.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, spans).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the runtime: every connector of the connectors folder, the HTTP server
    /// (status page, /metrics, /healthz, /readyz, /api/*). Starts a local nats-server
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
    /// Where is my event? Finds events (by stream sequence, Nats-Msg-Id, idempotency key or
    /// payload field) and tells, per connector, what happened: filtered out, each attempt,
    /// parked, delivered.
    Trace(trace::Args),
    /// Send a connector's past events again (through its filter and mapping, with their
    /// original idempotency keys), without moving its live consumer.
    Resync(resync::Args),
    /// Print the effective runtime config (defaults filled in, overrides applied, secrets
    /// as ***).
    Config(config::Args),
    /// Print a shell completion script: `hms-sync completions bash > /etc/bash_completion.d/hms-sync`.
    Completions(completions::Args),
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

/// hms-bus publishes events on the agency's bus (NATS), as `hms-sync publish` does:
/// `hms-bus publish permit.updated --data '{"permitId":"RW-481"}'`.
#[derive(Debug, Parser)]
#[command(name = "hms-bus", version, about, long_about, after_help = ENVIRONMENT)]
pub struct BusCli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: BusCommand,
}

#[derive(Debug, Subcommand)]
pub enum BusCommand {
    /// Publish an event on a subject, like `nats pub` (awaits the stream's ack when a stream
    /// captures the subject).
    Publish(publish::Args),
}

impl Common {
    /// Whether `--config` was given on the command line (else a missing default file means
    /// the defaults).
    pub fn config_explicit(&self) -> bool {
        std::env::args().any(|a| a == "--config" || a.starts_with("--config="))
    }

    /// The runtime config with command-line overrides applied.
    pub fn runtime_config(&self) -> anyhow::Result<RuntimeConfig> {
        let mut cfg = RuntimeConfig::load(&self.config, self.config_explicit())?;
        if let Some(url) = &self.nats_url {
            cfg.nats.url = url.clone();
        }
        Ok(cfg)
    }
}

impl Cli {
    /// The runtime config with command-line overrides applied.
    pub fn runtime_config(&self) -> anyhow::Result<RuntimeConfig> {
        self.common.runtime_config()
    }
}

/// Entry point of the `hms-sync` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.common.log_format == LogFormat::Json;
    // Held to the end: every buffered console line is written before the exit.
    let _log = crate::logging::init(if json { "json" } else { "text" });
    match &cli.command {
        Command::Test(a) => test::exec(a),
        Command::Validate(a) => validate::exec(&cli, a),
        Command::Up(a) => block_on(json, up::exec(&cli, a)),
        Command::Publish(a) => block_on(json, publish::exec(&cli.common, a)),
        Command::Schema(a) => schema::exec(a),
        Command::Parked(c) => block_on(json, parked::exec(&cli, c)),
        Command::Audit(c) => block_on(json, audit::exec(&cli, c)),
        Command::Status(a) => block_on(json, status::exec(&cli, a)),
        Command::Trace(a) => block_on(json, trace::exec(&cli, a)),
        Command::Resync(a) => block_on(json, resync::exec(&cli, a)),
        Command::Config(a) => config::exec(&cli, a),
        Command::Completions(a) => completions::exec(a, Cli::command()),
        Command::Deploy(a) => block_on(json, deploy::exec(&cli, a)),
        Command::Undeploy(a) => block_on(json, undeploy::exec(&cli, a)),
        Command::List(a) => block_on(json, list::exec(&cli, a)),
        Command::Flood(a) => block_on(json, flood::exec(&cli, a)),
        Command::Sink(a) => block_on(json, sink::exec(a)),
    }
}

/// Entry point of the `hms-bus` binary.
pub fn bus_main() -> ExitCode {
    let cli = BusCli::parse();
    let json = cli.common.log_format == LogFormat::Json;
    // Held to the end: every buffered console line is written before the exit.
    let _log = crate::logging::init(if json { "json" } else { "text" });
    match &cli.command {
        BusCommand::Publish(a) => block_on(json, publish::exec(&cli.common, a)),
    }
}

/// Runs a command on a multi-threaded runtime; an error ends it with exit code 1, written as
/// `error: ...` or, with `--log-format json`, as one JSON log line.
fn block_on(
    json: bool,
    f: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            fail(json, &format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            fail(json, &format!("{e:#}"));
            ExitCode::FAILURE
        }
    };
    // Tasks still running (a lookup stuck in the resolver, a connection) do not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

/// Reports the error that ends a command.
fn fail(json: bool, message: &str) {
    // The lines logged before the error come before it.
    crate::logging::flush();
    if json {
        tracing::error!(error = message, "{message}");
    } else {
        eprintln!("error: {message}");
    }
}

/// A usage error about one argument: says which and why, exit code 2.
fn usage(arg: &str, why: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {arg}: {why}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand and every option says what it is for in `--help`.
    fn check_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(format!("{p} (the command)"));
            }
            check_help(sub, &p, missing);
        }
    }

    #[test]
    fn every_option_has_help_text() {
        for cmd in [Cli::command(), BusCli::command()] {
            cmd.clone().debug_assert();
            let mut missing = Vec::new();
            check_help(&cmd, cmd.get_name(), &mut missing);
            assert!(missing.is_empty(), "without help text: {missing:#?}");
        }
    }

    #[test]
    fn help_names_the_environment_variables() {
        let help = Cli::command().render_long_help().to_string();
        for var in [
            "NATS_URL",
            "HMS_ADMIN_TOKEN",
            "HMS_SYNC_LOG",
            "NATS_SERVER_BIN",
            "HTTPS_PROXY",
            "SSL_CERT_FILE",
        ] {
            assert!(help.contains(var), "{var} not in --help:\n{help}");
        }
    }
}
