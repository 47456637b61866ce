//! `hms-sync parked list|show|replay|discard`: the human-review queue.

use std::process::ExitCode;

use serde_json::{json, Value as Json};

use super::Cli;
use crate::bus::Bus;
use crate::connector::consumer_name;
use crate::parked::{self, Reviewed};

/// Who acts on a parked job (kept in the record of the action).
fn who() -> String {
    std::env::var("USER").unwrap_or_default()
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Parked jobs, oldest first.
    List {
        /// Only this connector's jobs.
        #[arg(long)]
        connector: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One parked job in full: event, headers, every attempt, idempotency key.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Send parked jobs through their connector again, with their original idempotency key.
    Replay {
        /// The parked job id (from `list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Every parked job (narrow with --connector / --since).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        connector: Option<String>,
        /// Only jobs parked at or after this time (RFC 3339, e.g. 2024-05-10T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Drop a parked job for good (recorded as discarded).
    Discard {
        id: u64,
        /// Why (kept in the record).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn exec(cli: &Cli, cmd: &Cmd) -> anyhow::Result<ExitCode> {
    let conn = super::connect::connect(&cli.runtime_config()?).await?;
    let result = run(&conn.bus, cmd).await;
    conn.close().await;
    result
}

async fn run(bus: &Bus, cmd: &Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::List { connector, json } => {
            let jobs =
                parked::list(bus, connector.as_deref().map(consumer_name).as_deref()).await?;
            let rows: Vec<Json> = jobs.iter().filter_map(Reviewed::summary).collect();
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no parked jobs");
            } else {
                let text = |v: &Json| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                };
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        ["id", "connector", "parkedAt", "attempts", "error"]
                            .iter()
                            .map(|k| text(&r[*k]))
                            .collect()
                    })
                    .collect();
                super::connect::print_table(
                    &["ID", "CONNECTOR", "PARKED AT", "ATTEMPTS", "ERROR"],
                    &table,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Show { id, json } => {
            let Some(job) = parked::get(bus, *id).await? else {
                eprintln!("no parked job {id}");
                return Ok(ExitCode::from(1));
            };
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "id": id, "job": job.raw }))?
                );
            } else {
                let Some(p) = &job.job else {
                    println!("{}", serde_json::to_string_pretty(&job.raw)?);
                    return Ok(ExitCode::SUCCESS);
                };
                println!("parked job {id}");
                println!("  connector:       {}", p.connector);
                println!("  parked at:       {}", p.parked_at);
                println!("  error:           {}", p.error);
                println!("  request:         {} {}", p.method, p.url);
                println!("  idempotency key: {}", p.idempotency_key);
                println!(
                    "  event:           {} (HMS_EVENTS seq {}, published {})",
                    p.event.subject, p.event.stream_sequence, p.event.published
                );
                for (k, v) in &p.event.headers {
                    println!("    {k}: {v}");
                }
                println!("  payload:         {}", p.event.shown_payload());
                println!("  attempts:");
                for a in &p.attempts {
                    let status = a
                        .status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!("    #{} {} status {status} {}", a.attempt, a.at, a.error);
                    if !a.body.is_empty() {
                        println!("       body: {}", a.body);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay {
            id,
            all,
            connector,
            since,
            json,
        } => {
            let jobs = match id {
                Some(id) => match parked::get(bus, *id).await? {
                    Some(j) => vec![j],
                    None => {
                        eprintln!("no parked job {id}");
                        return Ok(ExitCode::from(1));
                    }
                },
                None if *all => {
                    parked::list(bus, connector.as_deref().map(consumer_name).as_deref()).await?
                }
                None => vec![],
            };
            let since = match since {
                Some(s) => Some(
                    crate::clock::parse(s)
                        .ok_or_else(|| anyhow::anyhow!("--since {s}: expected RFC 3339"))?,
                ),
                None => None,
            };
            let mut done = Vec::new();
            for job in &jobs {
                let Some(p) = &job.job else {
                    eprintln!("parked job {}: not a parked job record; skipped", job.id);
                    continue;
                };
                if since.is_some_and(|since| !parked::parked_since(p, since)) {
                    continue;
                }
                let record = parked::replay(bus, job, &who()).await?;
                let seq = record["replaySequence"].as_u64().unwrap_or_default();
                if !*json {
                    println!(
                        "replayed parked job {} ({}) as HMS_EVENTS seq {seq}",
                        job.id, p.connector
                    );
                }
                done.push(record);
            }
            if *json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else if done.is_empty() {
                println!("nothing to replay");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Discard { id, reason, json } => {
            let Some(job) = parked::get(bus, *id).await? else {
                eprintln!("no parked job {id}");
                return Ok(ExitCode::from(1));
            };
            let consumer = job.consumer().to_string();
            let record = parked::discard(bus, &job, reason.as_deref(), &who()).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                println!("discarded parked job {id} (recorded on sync.resolved.{consumer})");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
