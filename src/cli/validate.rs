//! `hms-sync validate FILE...`

use std::path::PathBuf;
use std::process::ExitCode;

use crate::connector;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connector files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn exec(args: &Args) -> ExitCode {
    match connector::load_files(&args.files) {
        Ok(cs) => {
            for c in &cs {
                println!("{}: ok ({})", c.origin(), c.id());
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems.0 {
                println!("{p}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
            ExitCode::from(2)
        }
    }
}
