//! `hms-sync schema CONNECTOR.yaml`

use std::path::PathBuf;
use std::process::ExitCode;

use crate::connector::{self, AnyConnector};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connector file.
    pub connector: PathBuf,
}

pub fn exec(args: &Args) -> ExitCode {
    match connector::load_files(std::slice::from_ref(&args.connector)) {
        Ok(mut v) => match v.pop() {
            Some(AnyConnector::Outbound(c)) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&c.schema.json).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Some(AnyConnector::Inbound(c)) => {
                eprintln!("`{}` is an inbound connector: it has no input schema", c.id);
                ExitCode::from(2)
            }
            None => ExitCode::from(2),
        },
        Err(p) => {
            eprintln!("{p}");
            ExitCode::from(2)
        }
    }
}
