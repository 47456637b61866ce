//! `hms-sync audit verify`

use std::process::ExitCode;

use super::Cli;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Walk HMS_AUDIT and check every hash chain. Exit 0 when intact; 1 naming the first
    /// broken record otherwise.
    Verify {
        /// Print JSON for scripts (chains, records, gaps, duplicates, the first break).
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
                    serde_json::json!({
                        "intact": true, "records": n, "duplicates": d,
                        "gaps": found.gaps, "lost": found.lost,
                    })
                );
            } else {
                let mut line = format!("audit trail intact: {n} records in HMS_AUDIT");
                if d > 0 {
                    line.push_str(&format!(
                        " (and {d} exact copies of records stored twice by a retried store)"
                    ));
                }
                println!("{line}");
                if found.gaps > 0 {
                    println!(
                        "{} sealed gap record(s) declare {} records lost (see records of kind \"gap\": how many, since, until, why)",
                        found.gaps, found.lost
                    );
                }
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
