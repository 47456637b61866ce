//! `hms-sync trace [SEQ] [--msg-id ID] [--key KEY] [--where FIELD=VALUE]...`: where is my
//! event? Per connector: filtered out, every attempt, parked, delivered.

use std::process::ExitCode;

use clap::ArgGroup;

use super::Cli;
use crate::selection::{FieldMatch, Window};
use crate::trace::{self, Query, TraceError};

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("what").required(true).args(["seq", "msg_id", "key", "where"])))]
pub struct Args {
    /// Stream sequence of the event on HMS_EVENTS (as parked jobs, `hms-sync publish` and
    /// `nats stream get HMS_EVENTS N` name it).
    #[arg(value_name = "SEQ")]
    pub seq: Option<u64>,
    /// Find the events published with this Nats-Msg-Id (within --since/--until).
    #[arg(long, value_name = "ID")]
    pub msg_id: Option<String>,
    /// Find the event whose idempotency key is this (the Idempotency-Key header the target
    /// received), within --since/--until.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Find the events whose payload field has this value, e.g. permitId=RW-481 or
    /// crew.calendarId=C-7 (repeatable: every one must hold), within --since/--until.
    #[arg(long = "where", id = "where", value_name = "FIELD=VALUE")]
    pub matches: Vec<String>,
    /// Search events published since then: a duration back (90s, 30m, 2h, 7d), an RFC 3339
    /// time or a date.
    #[arg(long, default_value = "24h", value_name = "TIME")]
    pub since: String,
    /// Search events published until then (same forms as --since; default: now).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only what this connector did.
    #[arg(long, value_name = "ID")]
    pub connector: Option<String>,
    /// Trace at most this many events.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// Read at most this many messages per search (events, then audit records).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub max_scan: u64,
    /// Print JSON for scripts (the same as the status page's /api/trace).
    #[arg(long)]
    pub json: bool,
}

/// The query of the arguments (exactly one kind is given: clap's group).
fn query(args: &Args) -> Result<Query, ExitCode> {
    if let Some(n) = args.seq {
        return Ok(Query::Sequence(n));
    }
    if let Some(id) = &args.msg_id {
        return Ok(Query::MsgId(id.clone()));
    }
    if let Some(k) = &args.key {
        return Ok(Query::Key(k.trim().to_string()));
    }
    let mut ms = Vec::new();
    for m in &args.matches {
        ms.push(FieldMatch::parse(m).map_err(|e| super::usage("--where", e))?);
    }
    Ok(Query::Where(ms))
}

pub async fn exec(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let query = match query(args) {
        Ok(q) => q,
        Err(code) => return Ok(code),
    };
    let now = time::OffsetDateTime::now_utc();
    let window = match Window::parse(&args.since, args.until.as_deref(), now) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let cfg = cli.runtime_config()?;
    let conn = super::connect::connect(&cfg).await?;
    let result = async {
        let connectors = super::connect::connectors_in_force(&cfg, &conn.bus).await?;
        let req = trace::Request {
            query,
            window,
            connector: args.connector.clone(),
            limit: args.limit,
            max_scan: args.max_scan,
        };
        anyhow::Ok(trace::trace(&conn.bus, &connectors, &req).await)
    }
    .await;
    conn.close().await;
    let report = match result? {
        Ok(r) => r,
        Err(e @ (TraceError::NoSuchEvent(_) | TraceError::UnknownConnector(_))) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.events.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
