//! `hms-sync undeploy ID...`

use std::process::ExitCode;

use super::connect::connect;
use super::Cli;
use crate::registry::{self, ConsumerFate, RegistryError, UNDEPLOY_GRACE};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connector ids.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Delete the durable consumer at once (by default it is kept for 24 h without a
    /// subscriber, so a redeploy resumes where it stopped).
    #[arg(long)]
    pub delete_consumer: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

pub async fn exec(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let cfg = cli.runtime_config()?;
    let conn = connect(&cfg).await?;
    let mut code = ExitCode::SUCCESS;
    let mut out = Vec::new();
    for id in &args.ids {
        match registry::undeploy(&conn.bus, id, args.delete_consumer).await {
            Ok((revision, fate)) => {
                let consumer = crate::connector::consumer_name(id);
                if !args.json {
                    let fate_text = match fate {
                        ConsumerFate::Retired => format!(
                            "consumer {consumer} kept {} h without a subscriber, then deleted by the server",
                            UNDEPLOY_GRACE.as_secs() / 3600
                        ),
                        ConsumerFate::Deleted => format!("consumer {consumer} deleted"),
                        ConsumerFate::Missing => "no consumer".to_string(),
                    };
                    println!(
                        "undeployed {id} (was revision {revision}; history kept); {fate_text}"
                    );
                }
                out.push(serde_json::json!({
                    "id": id, "revision": revision, "consumer": consumer, "consumerFate": fate,
                }));
            }
            Err(e @ RegistryError::NotDeployed(_)) => {
                eprintln!("{e}");
                code = ExitCode::FAILURE;
            }
            Err(e) => {
                conn.close().await;
                return Err(e.into());
            }
        }
    }
    conn.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(code)
}
