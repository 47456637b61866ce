//! `hms-sync validate [--config FILE] [FILE...]`: connector files, and the runtime config when
//! `--config` is given.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Cli;
use crate::config::RuntimeConfig;
use crate::{config_check, connector};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connector files (checked against the config's outbound address policy). With
    /// `--config` and no files, only the runtime config is checked.
    pub files: Vec<PathBuf>,
}

pub fn exec(cli: &Cli, args: &Args) -> ExitCode {
    let explicit = cli.common.config_explicit();
    if args.files.is_empty() && !explicit {
        eprintln!("error: name connector files, or a runtime config with --config FILE");
        return ExitCode::from(2);
    }
    let mut problems = Vec::new();
    let cfg = match RuntimeConfig::load(&cli.common.config, explicit) {
        Ok(cfg) => {
            if explicit {
                match config_check::check(&cfg) {
                    Ok(()) => println!("{}: ok (runtime config)", cli.common.config.display()),
                    Err(p) => problems.extend(p.0.into_iter().map(|p| p.to_string())),
                }
            }
            Some(cfg)
        }
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if !args.files.is_empty() {
        let policy = cfg.as_ref().map(config_check::policy).unwrap_or_default();
        match connector::load_sources(&args.files)
            .and_then(|cs| connector::check_policy(&cs, &policy).map(|()| cs))
        {
            Ok(cs) => {
                for (c, _) in &cs {
                    println!("{}: ok ({})", c.origin(), c.id());
                }
            }
            Err(p) => problems.extend(p.0.into_iter().map(|p| p.to_string())),
        }
    }
    if problems.is_empty() {
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        println!("{p}");
    }
    eprintln!("{} problem(s) found", problems.len());
    ExitCode::from(2)
}
