//! `hms-sync parked list|show|replay|discard`: the human-review queue.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value as Json};

use super::progress::Progress;
use super::Cli;
use crate::bus::Bus;
use crate::connector::consumer_name;
use crate::parked::{self, Acted, Action, JobFilter, Operator, Reviewed};

/// Who acts on a parked job (kept in the record of the action).
fn who() -> Operator {
    Operator::cli(std::env::var("USER").ok())
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Parked jobs, oldest first.
    List {
        /// Only this connector's jobs (its id).
        #[arg(long, value_name = "ID")]
        connector: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// One parked job in full: event, headers, every attempt, idempotency key.
    Show {
        /// The parked job id (from `list`).
        id: u64,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Send parked jobs through their connector again, with their original idempotency key;
    /// then wait until the connectors took them and say what became of them.
    Replay {
        /// The parked job id (from `list`).
        #[arg(
            required_unless_present_any = ["all", "connector", "since", "reason"],
            conflicts_with_all = ["all", "connector", "since", "reason"]
        )]
        id: Option<u64>,
        /// Every parked job (narrowed by --connector, --since, --reason).
        #[arg(long)]
        all: bool,
        /// Only this connector's jobs (its id).
        #[arg(long, value_name = "ID")]
        connector: Option<String>,
        /// Only jobs parked since then: a duration back (2h, 7d), an RFC 3339 time
        /// (2024-05-10T00:00:00Z) or a date.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only jobs whose error contains this text (case-insensitive), e.g. "HTTP 503".
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Show which jobs would be replayed, replay nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once they are replayed, without waiting for the connectors to take them.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting when nothing moves for this long (seconds).
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        idle_timeout: u64,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Drop a parked job for good (recorded as discarded).
    Discard {
        /// The parked job id (from `list`).
        id: u64,
        /// Why (kept in the record).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

pub async fn exec(cli: &Cli, cmd: &Cmd) -> anyhow::Result<ExitCode> {
    let cfg = cli.runtime_config()?;
    if let Cmd::Replay { since: Some(s), .. } = cmd {
        if let Err(e) = crate::selection::parse_time(s, time::OffsetDateTime::now_utc()) {
            return Ok(super::usage("--since", e));
        }
    }
    let conn = super::connect::connect(&cfg).await?;
    let result = run(&conn.bus, &cfg, cmd).await;
    conn.close().await;
    result
}

async fn run(bus: &Bus, cfg: &crate::config::RuntimeConfig, cmd: &Cmd) -> anyhow::Result<ExitCode> {
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
            all: _,
            connector,
            since,
            reason,
            dry_run,
            no_wait,
            idle_timeout,
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
                None => {
                    let filter = JobFilter {
                        consumer: connector.as_deref().map(consumer_name),
                        since: since.as_deref().and_then(|s| {
                            crate::selection::parse_time(s, time::OffsetDateTime::now_utc()).ok()
                        }),
                        reason: reason.clone(),
                    };
                    parked::list(bus, filter.consumer.as_deref())
                        .await?
                        .into_iter()
                        .filter(|j| filter.selects(j))
                        .collect()
                }
            };
            let opts = ReplayOpts {
                dry_run: *dry_run,
                wait: !*no_wait,
                idle: Duration::from_secs((*idle_timeout).max(1)),
                json: *json,
            };
            replay(bus, cfg, &jobs, &opts).await
        }
        Cmd::Discard { id, reason, json } => {
            let Some(job) = parked::get(bus, *id).await? else {
                eprintln!("no parked job {id}");
                return Ok(ExitCode::from(1));
            };
            let consumer = job.consumer().to_string();
            let acted = parked::act(
                bus,
                &job,
                &Action::Discard {
                    reason: reason.clone(),
                },
                &who(),
            )
            .await?;
            if let Err(e) = parked::store_audit(bus, std::slice::from_ref(&acted)).await {
                eprintln!("warning: the audit record of the discard was not stored: {e}");
            }
            let record = acted.record;
            if *json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                println!("discarded parked job {id} (recorded on sync.resolved.{consumer})");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

struct ReplayOpts {
    dry_run: bool,
    wait: bool,
    idle: Duration,
    json: bool,
}

/// Replays `jobs` (a progress bar on a terminal), records and audits each action, then waits
/// until each connector took its replays and tells what became of them.
async fn replay(
    bus: &Bus,
    cfg: &crate::config::RuntimeConfig,
    jobs: &[Reviewed],
    o: &ReplayOpts,
) -> anyhow::Result<ExitCode> {
    let (jobs, skipped): (Vec<&Reviewed>, Vec<&Reviewed>) =
        jobs.iter().partition(|j| j.job.is_some());
    for s in &skipped {
        eprintln!("parked job {}: not a parked job record; skipped", s.id);
    }
    if o.dry_run {
        let rows: Vec<Json> = jobs.iter().filter_map(|j| j.summary()).collect();
        if o.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "dryRun": true, "jobs": rows }))?
            );
        } else {
            for j in &jobs {
                if let Some(p) = &j.job {
                    println!(
                        "would replay parked job {} ({}, parked {}, {} attempts): {}",
                        j.id,
                        p.connector,
                        p.parked_at,
                        p.attempts.len(),
                        p.error
                    );
                }
            }
            println!(
                "dry run: {} parked jobs would be replayed; nothing sent",
                jobs.len()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let started = time::OffsetDateTime::now_utc();
    let bar = Progress::new(jobs.len() as u64, "replayed");
    let mut done: Vec<Acted> = Vec::new();
    // Per connector: its replays' sequences and keys.
    let mut by_connector: BTreeMap<String, (String, Vec<u64>, HashSet<String>)> = BTreeMap::new();
    for (i, job) in jobs.iter().enumerate() {
        let Some(p) = &job.job else { continue };
        let acted = parked::act(bus, job, &Action::Replay, &who()).await;
        let acted = match acted {
            Ok(a) => a,
            Err(e) => {
                bar.finish();
                // What was replayed so far stays replayed (and audited).
                let _ = parked::store_audit(bus, &done).await;
                return Err(e.into());
            }
        };
        let seq = acted.record["replaySequence"].as_u64().unwrap_or_default();
        if !o.json {
            bar.note(&format!(
                "replayed parked job {} ({}) as HMS_EVENTS seq {seq}",
                job.id, p.connector
            ));
        }
        let entry = by_connector
            .entry(p.connector.clone())
            .or_insert_with(|| (p.consumer.clone(), Vec::new(), HashSet::new()));
        entry.1.push(seq);
        entry.2.insert(p.idempotency_key.clone());
        done.push(acted);
        bar.set(i as u64 + 1);
    }
    bar.finish();
    if let Err(e) = parked::store_audit(bus, &done).await {
        eprintln!("warning: the audit records of the replays were not stored: {e}");
    }
    let records: Vec<&Json> = done.iter().map(|a| &a.record).collect();
    if done.is_empty() {
        if o.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "replayed": records }))?
            );
        } else {
            println!("nothing to replay");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let counts: Vec<String> = by_connector
        .iter()
        .map(|(id, (_, seqs, _))| format!("{id}: {}", seqs.len()))
        .collect();
    if !o.wait {
        if o.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "replayed": records }))?
            );
        } else {
            println!(
                "replayed {} parked jobs ({})",
                done.len(),
                counts.join(", ")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let connectors = super::connect::connectors_in_force(cfg, bus).await?;
    let mut outcomes = serde_json::Map::new();
    let mut lines = Vec::new();
    let mut code = ExitCode::SUCCESS;
    for (id, (consumer, mut seqs, keys)) in by_connector {
        seqs.sort_unstable();
        let bar = Progress::new(seqs.len() as u64, "taken");
        let followed =
            crate::resync::follow(bus, &consumer, &seqs, o.idle, &mut |t| bar.tick(t)).await;
        bar.finish();
        if let Err(e) = followed {
            eprintln!("error: {id}: {e}");
            code = ExitCode::FAILURE;
            continue;
        }
        let Some(c) = connectors.iter().find(|c| c.id == id) else {
            lines.push(format!(
                "{id}: {} taken (connector not in force here: outcomes unknown)",
                seqs.len()
            ));
            continue;
        };
        let out =
            crate::resync::settled_outcomes(bus, c, &keys, started, Duration::from_secs(5)).await?;
        if out.parked > 0 {
            code = ExitCode::FAILURE;
        }
        lines.push(format!(
            "{id}: {} delivered, {} parked again, {} other",
            out.delivered, out.parked, out.other
        ));
        outcomes.insert(id, serde_json::to_value(&out)?);
    }
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "replayed": records, "outcomes": outcomes }))?
        );
    } else {
        println!("replayed {} parked jobs: {}", done.len(), lines.join("; "));
    }
    Ok(code)
}
