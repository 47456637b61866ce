//! `hms-sync config`: the effective runtime config (defaults filled in, `--nats-url` /
//! `NATS_URL` applied, paths absolute), secrets as `***`.

use std::process::ExitCode;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of YAML.
    #[arg(long)]
    pub json: bool,
}

pub fn exec(cli: &Cli, args: &Args) -> ExitCode {
    let cfg = match cli.runtime_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let from = match &cfg.source {
        Some((path, text)) if !text.is_empty() => path.display().to_string(),
        _ => "no file: the defaults".to_string(),
    };
    if args.json {
        match serde_json::to_string_pretty(&cfg) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        match serde_yaml::to_string(&cfg) {
            Ok(s) => {
                println!("# effective runtime config ({from}; defaults filled in, secrets as ***)");
                print!("{s}");
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
