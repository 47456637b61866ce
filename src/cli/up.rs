//! `hms-sync up`

use std::net::SocketAddr;
use std::process::ExitCode;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address of the HTTP server (overrides http.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

pub async fn exec(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let mut cfg = cli.runtime_config()?;
    if let Some(l) = args.listen {
        cfg.http.listen = l;
    }
    // Register the handlers before anything starts, so an early SIGTERM still drains cleanly.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // SIGHUP reads the connectors folder again (instead of ending the process).
    let hangups = signal(SignalKind::hangup())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    };
    let reloads =
        futures::stream::unfold(
            hangups,
            |mut h| async move { h.recv().await.map(|()| ((), h)) },
        );
    crate::run_with_reloads(cfg, shutdown, reloads).await?;
    Ok(ExitCode::SUCCESS)
}
