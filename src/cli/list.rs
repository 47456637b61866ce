//! `hms-sync list [--history ID]`

use std::process::ExitCode;

use super::connect::{connect, print_table};
use super::Cli;
use crate::registry::{self, RegistryError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show every kept revision of this connector (with when it was deployed) instead.
    #[arg(long, value_name = "ID")]
    pub history: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

pub async fn exec(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let cfg = cli.runtime_config()?;
    let conn = connect(&cfg).await?;
    let result = match &args.history {
        Some(id) => registry::history(&conn.bus, id).await,
        None => registry::list(&conn.bus).await,
    };
    conn.close().await;
    let rows = match result {
        Ok(r) => r,
        Err(e @ RegistryError::NotDeployed(_)) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in rows
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| (&r.id, e)))
    {
        eprintln!("{}: invalid: {}", r.0, r.1);
    }
    let cells = |r: &registry::Listed| {
        vec![
            r.id.clone(),
            r.kind.clone(),
            r.topic.clone().unwrap_or_else(|| "-".into()),
            r.revision.to_string(),
            r.deployed_at.clone(),
            if r.source.is_empty() {
                "-".into()
            } else {
                r.source.clone()
            },
            if r.deployed_by.is_empty() {
                "-".into()
            } else {
                r.deployed_by.clone()
            },
        ]
    };
    let table: Vec<Vec<String>> = rows.iter().map(cells).collect();
    let header = [
        "ID",
        "TYPE",
        "TOPIC",
        "REVISION",
        "DEPLOYED AT",
        "SOURCE",
        "BY",
    ];
    if args.history.is_none() && table.is_empty() {
        eprintln!("no connectors deployed");
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&header, &table);
    Ok(ExitCode::SUCCESS)
}
