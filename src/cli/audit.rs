//! `hms-sync audit verify|show`: check the hash chains of `HMS_AUDIT`, or print its records one
//! by one.

use std::process::ExitCode;

use serde_json::Value as Json;

use super::Cli;
use crate::bus::records_of;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Walk HMS_AUDIT and check every hash chain. Exit 0 when intact (sealed gaps, where
    /// hms-sync knows records were lost, are reported); 1 naming the first broken record.
    Verify {
        /// Print JSON for scripts (chains, records, gaps, duplicates, the first break).
        #[arg(long)]
        json: bool,
    },
    /// Print audit records one by one, oldest first.
    Show {
        /// Only this connector's records.
        #[arg(long)]
        connector: Option<String>,
        /// Only the last N records.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
}

pub async fn exec(cli: &Cli, cmd: &Cmd) -> anyhow::Result<ExitCode> {
    let conn = super::connect::connect(&cli.runtime_config()?).await?;
    let messages = conn.bus.audit_records().await;
    conn.close().await;
    let messages = messages?;
    match cmd {
        Cmd::Verify { json } => verify(&messages, *json),
        Cmd::Show {
            connector,
            last,
            json,
        } => show(&messages, connector.as_deref(), *last, *json),
    }
}

fn verify(messages: &[(u64, bytes::Bytes)], json: bool) -> anyhow::Result<ExitCode> {
    let result = crate::audit::verify(messages.iter().map(|(s, b)| (*s, b.as_ref())));
    match result {
        Ok(found) => {
            let n = found.records;
            let d = found.duplicates;
            if json {
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
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "intact": false, "brokenAt": b.sequence, "line": b.line,
                        "reason": b.reason,
                    })
                );
            } else {
                println!(
                    "audit trail BROKEN at HMS_AUDIT message {} (record {} of it): {}",
                    b.sequence, b.line, b.reason
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn show(
    messages: &[(u64, bytes::Bytes)],
    connector: Option<&str>,
    last: Option<usize>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut records: Vec<Json> = messages
        .iter()
        .flat_map(|(_, payload)| records_of(payload))
        .filter_map(|line| serde_json::from_slice::<Json>(line).ok())
        .filter(|r| connector.is_none_or(|c| r["connector"] == c))
        .collect();
    if let Some(n) = last {
        let skip = records.len().saturating_sub(n);
        records.drain(..skip);
    }
    for r in &records {
        if json {
            println!("{r}");
            continue;
        }
        let text = |k: &str| match &r[k] {
            Json::String(s) => s.clone(),
            Json::Null => "-".into(),
            other => other.to_string(),
        };
        let what = match r["kind"].as_str() {
            Some("attempt") => format!(
                "{} {} {} attempt {} key {}",
                text("method"),
                text("url"),
                if r["status"].is_null() {
                    text("error")
                } else {
                    text("status")
                },
                text("attempt"),
                text("idempotencyKey"),
            ),
            Some("webhook") => format!("webhook {} -> {}", text("path"), text("subject")),
            Some("gap") => format!("GAP: {} records lost ({})", text("dropped"), text("reason")),
            _ => r.to_string(),
        };
        println!("{} {}#{} {}", text("at"), text("chain"), text("n"), what);
    }
    Ok(ExitCode::SUCCESS)
}
