//! `hms-sync parked list|show|replay|discard`: the human-review queue.

use std::process::ExitCode;

use serde_json::{json, Value as Json};

use super::Cli;
use crate::bus::{Bus, StoredJob, ORIGINAL_SUBJECT_HEADER, REPLAY_OF_HEADER};
use crate::connector::consumer_name;
use crate::delivery::{now_rfc3339, ParkedJob, REPLAY_KEY_HEADER};

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

fn parse(job: &StoredJob) -> Option<ParkedJob> {
    serde_json::from_slice(&job.payload).ok()
}

fn summary(job: &StoredJob, p: &ParkedJob) -> Json {
    json!({
        "id": job.id,
        "connector": p.connector,
        "parkedAt": p.parked_at,
        "attempts": p.attempts.len(),
        "error": p.error,
        "subject": p.event.subject,
        "idempotencyKey": p.idempotency_key,
    })
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
            let jobs = bus
                .parked_jobs(connector.as_deref().map(consumer_name).as_deref())
                .await?;
            let rows: Vec<Json> = jobs
                .iter()
                .filter_map(|j| parse(j).map(|p| summary(j, &p)))
                .collect();
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
            let Some(job) = bus.parked_job(*id).await? else {
                eprintln!("no parked job {id}");
                return Ok(ExitCode::from(1));
            };
            let value: Json = serde_json::from_slice(&job.payload)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "id": id, "job": value }))?
                );
            } else {
                let Some(p) = parse(&job) else {
                    println!("{}", serde_json::to_string_pretty(&value)?);
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
                println!("  payload:         {}", p.event.payload);
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
                Some(id) => match bus.parked_job(*id).await? {
                    Some(j) => vec![j],
                    None => {
                        eprintln!("no parked job {id}");
                        return Ok(ExitCode::from(1));
                    }
                },
                None if *all => {
                    bus.parked_jobs(connector.as_deref().map(consumer_name).as_deref())
                        .await?
                }
                None => vec![],
            };
            let since = match since {
                Some(s) => Some(
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| anyhow::anyhow!("--since {s}: expected RFC 3339 ({e})"))?,
                ),
                None => None,
            };
            let mut done = Vec::new();
            for job in &jobs {
                let Some(p) = parse(job) else {
                    eprintln!("parked job {}: not a parked job record; skipped", job.id);
                    continue;
                };
                if let Some(since) = since {
                    let at = time::OffsetDateTime::parse(
                        &p.parked_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .ok();
                    if at.is_some_and(|at| at < since) {
                        continue;
                    }
                }
                let mut headers: Vec<(String, String)> = p
                    .event
                    .headers
                    .iter()
                    .filter(|(k, _)| {
                        !k.eq_ignore_ascii_case("Nats-Msg-Id")
                            && !k.eq_ignore_ascii_case(REPLAY_KEY_HEADER)
                            && !k.eq_ignore_ascii_case(ORIGINAL_SUBJECT_HEADER)
                            && !k.eq_ignore_ascii_case(REPLAY_OF_HEADER)
                    })
                    .cloned()
                    .collect();
                headers.push((REPLAY_KEY_HEADER.into(), p.idempotency_key.clone()));
                headers.push((ORIGINAL_SUBJECT_HEADER.into(), p.event.subject.clone()));
                headers.push((REPLAY_OF_HEADER.into(), job.id.to_string()));
                headers.push((
                    "Nats-Msg-Id".into(),
                    format!("replay:{}:{}", p.consumer, job.id),
                ));
                let seq = bus
                    .publish_replay(&p.consumer, &headers, p.event.payload.clone().into_bytes())
                    .await?;
                let record = json!({
                    "action": "replayed", "parkedId": job.id, "connector": p.connector,
                    "at": now_rfc3339(), "replaySequence": seq, "idempotencyKey": p.idempotency_key,
                    "by": std::env::var("USER").unwrap_or_default(),
                });
                bus.resolve_parked(&p.consumer, job.id, record.to_string().as_bytes())
                    .await?;
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
            let Some(job) = bus.parked_job(*id).await? else {
                eprintln!("no parked job {id}");
                return Ok(ExitCode::from(1));
            };
            let consumer = job.subject.trim_start_matches("sync.parked.").to_string();
            let p = parse(&job);
            let record = json!({
                "action": "discarded", "parkedId": id,
                "connector": p.as_ref().map(|p| p.connector.clone()),
                "at": now_rfc3339(), "reason": reason,
                "by": std::env::var("USER").unwrap_or_default(),
                "job": serde_json::from_slice::<Json>(&job.payload).unwrap_or(Json::Null),
            });
            bus.resolve_parked(&consumer, *id, record.to_string().as_bytes())
                .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                println!("discarded parked job {id} (recorded on sync.resolved.{consumer})");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
