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
    crate::run(cfg, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
