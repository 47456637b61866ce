//! `hms-sync resync CONNECTOR --since 2h|TIME [--until TIME] [--where FIELD=VALUE] [--dry-run]`:
//! send a connector's past events again, with their original idempotency keys, without moving
//! its live consumer.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::progress::Progress;
use super::Cli;
use crate::resync::{self, ResyncError, Spec};
use crate::selection::{FieldMatch, Window};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The connector (its id) whose past events are sent again.
    #[arg(value_name = "CONNECTOR")]
    pub connector: String,
    /// Events published since then: a duration back (30m, 2h, 7d), an RFC 3339 time
    /// (2024-05-10T08:00:00Z) or a date (2024-05-10).
    #[arg(long, value_name = "TIME")]
    pub since: String,
    /// Events published until then (same forms as --since; default: now).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only events whose payload field has this value, e.g. permitId=RW-481 (repeatable:
    /// every one must hold).
    #[arg(long = "where", value_name = "FIELD=VALUE")]
    pub matches: Vec<String>,
    /// Show what would be sent (counts and the first events), send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Events published per chunk: the next chunk waits until the connector's consumer has
    /// fewer than this many waiting, so live events never wait behind more.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub chunk: usize,
    /// Return once everything is sent, without waiting for the connector to take it.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up when nothing moves for this long (seconds), e.g. no `up` runs the connector.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub idle_timeout: u64,
    /// Read at most this many events of the window.
    #[arg(long, default_value_t = 10_000_000, value_name = "N")]
    pub max_scan: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn exec(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc();
    let window = match Window::parse(&args.since, args.until.as_deref(), now) {
        Ok(w) => w,
        Err(e) => return Ok(super::usage("resync", e)),
    };
    let mut matches = Vec::new();
    for m in &args.matches {
        match FieldMatch::parse(m) {
            Ok(f) => matches.push(f),
            Err(e) => return Ok(super::usage("--where", e)),
        }
    }
    if args.chunk == 0 {
        return Ok(super::usage("--chunk", "at least 1"));
    }
    let spec = Spec {
        window,
        matches,
        chunk: args.chunk,
        max_scan: args.max_scan,
    };
    let cfg = cli.runtime_config()?;
    let conn = super::connect::connect(&cfg).await?;
    let result = run(&conn.bus, &cfg, args, &spec).await;
    conn.close().await;
    result
}

async fn run(
    bus: &crate::bus::Bus,
    cfg: &crate::config::RuntimeConfig,
    args: &Args,
    spec: &Spec,
) -> anyhow::Result<ExitCode> {
    let connectors = super::connect::connectors_in_force(cfg, bus).await?;
    let Some(c) = connectors.iter().find(|c| c.id == args.connector) else {
        let known: Vec<&str> = connectors.iter().map(|c| c.id.as_str()).collect();
        eprintln!(
            "error: no outbound connector {} (in force: {})",
            args.connector,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
        return Ok(ExitCode::from(2));
    };
    let started = time::OffsetDateTime::now_utc();
    let sel = resync::select(bus, c, spec).await?;
    let window = match &sel.until {
        Some(u) => format!("{} .. {u}", sel.since),
        None => format!("since {}", sel.since),
    };
    let head = format!(
        "{}: {} events on {} {window}: {} to resend, {} filtered out by the connector, {} not matching --where, {} not JSON",
        c.id, sel.scanned, sel.topic, sel.selected, sel.filtered_out, sel.not_matching, sel.not_json
    );
    if args.dry_run {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "dryRun": true, "selection": sel }))?
            );
        } else {
            println!("{head}");
            for p in &sel.sample {
                println!(
                    "  would resend HMS_EVENTS seq {} ({}, published {}) with Idempotency-Key {}",
                    p.stream_sequence, p.subject, p.published, p.idempotency_key
                );
            }
            if sel.selected > sel.sample.len() as u64 {
                println!("  ... and {} more", sel.selected - sel.sample.len() as u64);
            }
            println!("dry run: nothing sent");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        eprintln!("{head}");
    }
    let idle = Duration::from_secs(args.idle_timeout.max(1));
    let bar = Progress::new(sel.selected, "sent");
    let sent = resync::send(bus, c, &sel, spec, idle, &mut |t| bar.tick(t)).await;
    bar.finish();
    let sent = match sent {
        Ok(s) => s,
        Err(
            e @ (ResyncError::NoConsumer(_)
            | ResyncError::Stalled { .. }
            | ResyncError::NoPuller { .. }),
        ) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let first = sent.replay_sequences.first().copied().unwrap_or_default();
    let last = sent.replay_sequences.last().copied().unwrap_or_default();
    if args.no_wait || sent.sent == 0 {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "selection": sel, "sent": sent }))?
            );
        } else if sent.sent == 0 {
            println!("{}: nothing to resend", c.id);
        } else {
            println!(
                "{}: resent {} as HMS_EVENTS seq {first}..{last} on hms.replay.{} (run {}); the running `up` delivers them",
                c.id, events(sent.sent), c.consumer, sent.run
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let bar = Progress::new(sent.sent, "taken");
    let followed = resync::follow(bus, &c.consumer, &sent.replay_sequences, idle, &mut |t| {
        bar.tick(t)
    })
    .await;
    bar.finish();
    if let Err(e) = followed {
        eprintln!("error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    let outcomes =
        resync::settled_outcomes(bus, c, &sent.keys, started, Duration::from_secs(5)).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "selection": sel, "sent": sent, "outcomes": outcomes })
            )?
        );
    } else {
        println!(
            "{}: resent {} (HMS_EVENTS seq {first}..{last}, run {}): {} delivered, {} parked, {} other; {} failed attempts on the way",
            c.id, events(sent.sent), sent.run, outcomes.delivered, outcomes.parked, outcomes.other, outcomes.failed_attempts
        );
    }
    Ok(if outcomes.parked > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `1 event`, `3 events`.
fn events(n: u64) -> String {
    if n == 1 {
        "1 event".into()
    } else {
        format!("{n} events")
    }
}
