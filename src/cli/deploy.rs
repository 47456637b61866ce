//! `hms-sync deploy FILE...`

use std::path::PathBuf;
use std::process::ExitCode;

use super::connect::connect;
use super::Cli;
use crate::connector;
use crate::registry::{self, Source};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connector files (validated first; nothing is stored if any is invalid).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

pub async fn exec(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let cfg = cli.runtime_config()?;
    if let Err(problems) = crate::config_check::check(&cfg) {
        for p in &problems.0 {
            eprintln!("{p}");
        }
        eprintln!(
            "{} problem(s) in the runtime config; nothing deployed",
            problems.0.len()
        );
        return Ok(ExitCode::from(2));
    }
    let policy = crate::config_check::policy(&cfg);
    let sources = match connector::load_sources(&args.files)
        .and_then(|cs| connector::check_policy(&cs, &policy).map(|()| cs))
    {
        Ok(v) => v,
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found; nothing deployed", problems.0.len());
            return Ok(ExitCode::from(2));
        }
    };
    let sources: Vec<Source> = sources
        .into_iter()
        .map(|(c, yaml)| Source {
            file: c.origin().to_string(),
            connector: c,
            yaml,
        })
        .collect();
    let conn = connect(&cfg).await?;
    let result = registry::deploy(&conn.bus, &sources, &cfg.delivery, &cfg.streams).await;
    conn.close().await;
    let deployed = match result {
        Ok(d) => d,
        Err(e @ registry::RegistryError::BadKey { .. }) => {
            eprintln!("{e}; nothing deployed");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&deployed)?);
        return Ok(ExitCode::SUCCESS);
    }
    for d in &deployed {
        let what = if d.changed { "deployed" } else { "unchanged" };
        let topic = d
            .topic
            .as_deref()
            .map(|t| format!(", {t}"))
            .unwrap_or_default();
        println!(
            "{what} {} revision {} ({}{topic}, from {})",
            d.id, d.revision, d.kind, d.source
        );
    }
    Ok(ExitCode::SUCCESS)
}
