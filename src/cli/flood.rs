//! `hms-sync flood TOPIC --count N [--rate R] [--from EVENT.json] [--vary FIELD=KIND]`

use std::path::PathBuf;
use std::process::ExitCode;

use super::Cli;
use crate::flood::{EventTemplate, FloodPlan, FloodReport, Vary, DEFAULT_WINDOW};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Subject to publish on (a stream must capture it: `up` creates HMS_EVENTS for its
    /// connectors' topics).
    pub topic: String,
    /// Events to publish.
    #[arg(long, value_name = "N")]
    pub count: u64,
    /// Events per second, steady (default: as fast as JetStream acknowledges them).
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// The event to send (a JSON object); default `{}`. Every event also carries the stamp
    /// fields `floodSeq` and `floodSentAtNs`.
    #[arg(long, value_name = "EVENT.json")]
    pub from: Option<PathBuf>,
    /// A field that changes per event: FIELD=seq (0, 1, ...), FIELD=seq%N (N keys in turn),
    /// FIELD=uuid, FIELD=now (RFC 3339). Repeatable.
    #[arg(long, value_name = "FIELD=KIND")]
    pub vary: Vec<String>,
    /// Pad every event to at least this many bytes.
    #[arg(long, value_name = "B", default_value_t = 0)]
    pub payload_bytes: usize,
    /// Publishes awaiting their JetStream ack at once.
    #[arg(long, value_name = "W", default_value_t = DEFAULT_WINDOW)]
    pub window: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The template and plan of the arguments, or why they are wrong (exit 2).
fn plan(args: &Args) -> anyhow::Result<(EventTemplate, FloodPlan)> {
    let base = match &args.from {
        None => serde_json::json!({}),
        Some(p) => {
            let text =
                std::fs::read(p).map_err(|e| anyhow::anyhow!("--from {}: {e}", p.display()))?;
            serde_json::from_slice(&text)
                .map_err(|e| anyhow::anyhow!("--from {}: not JSON: {e}", p.display()))?
        }
    };
    let vary = args
        .vary
        .iter()
        .map(|v| v.parse::<Vary>())
        .collect::<Result<Vec<_>, _>>()?;
    let template = EventTemplate::new(&base, vary)?.pad_to(args.payload_bytes);
    let plan = FloodPlan {
        subjects: vec![args.topic.clone()],
        count: args.count,
        rate: args.rate,
        window: args.window,
    };
    plan.validate()?;
    Ok((template, plan))
}

pub async fn exec(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let (template, plan) = match plan(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let cfg = cli.runtime_config()?;
    let conn = super::connect::connect(&cfg).await?;
    let bar = progress_bar(plan.count);
    let flooded = conn
        .bus
        .flood(
            &plan,
            |seq, sent_ns| template.render(seq, sent_ns),
            |p| {
                if let Some(b) = &bar {
                    b.set_position(p.acked);
                    if p.errors > 0 {
                        b.set_message(format!("{} errors", p.errors));
                    }
                }
            },
        )
        .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    conn.close().await;
    let report = flooded?;
    print_report(&report, args.json);
    Ok(if report.errors == 0 && report.published == report.count {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A progress bar on stderr when it is a terminal.
fn progress_bar(count: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(count);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} acked, {per_sec}, eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

fn print_report(r: &FloodReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let rate = r
        .rate
        .map_or("as fast as acked".to_string(), |r| format!("asked {r}/s"));
    println!(
        "flood {}: {} of {} published in {:.2} s ({:.0}/s, {rate}), {} errors",
        r.subjects.join(","),
        r.published,
        r.count,
        r.seconds,
        r.published_per_s,
        r.errors
    );
    println!(
        "publish -> JetStream ack: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.ack_p50_ms, r.ack_p99_ms, r.ack_max_ms
    );
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
}
