//! `hms-sync audit verify`

use std::process::ExitCode;

use super::Cli;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Walk HMS_AUDIT and check every hash chain. Exit 0 when intact; 1 naming the first
    /// broken record otherwise.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

pub async fn exec(cli: &Cli, cmd: &Cmd) -> anyhow::Result<ExitCode> {
    let Cmd::Verify { json } = cmd;
    let conn = super::connect::connect(&cli.runtime_config()?).await?;
    let records = conn.bus.audit_records().await;
    conn.close().await;
    let records = records?;
    let result = crate::audit::verify(records.iter().map(|(s, b)| (*s, b.as_ref())));
    match result {
        Ok(found) => {
            let n = found.records;
            let d = found.duplicates;
            if *json {
                println!(
                    "{}",
                    serde_json::json!({ "intact": true, "records": n, "duplicates": d })
                );
            } else if d > 0 {
                println!("audit trail intact: {n} records in HMS_AUDIT (and {d} exact copies of records stored twice by a retried store)");
            } else {
                println!("audit trail intact: {n} records in HMS_AUDIT");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(b) => {
            if *json {
                println!(
                    "{}",
                    serde_json::json!({ "intact": false, "brokenAt": b.sequence, "reason": b.reason })
                );
            } else {
                println!(
                    "audit trail BROKEN at HMS_AUDIT record {}: {}",
                    b.sequence, b.reason
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}
