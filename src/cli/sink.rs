//! `hms-sync sink --listen ADDR [--latency-ms D] [--fail-rate P] [--status S]`

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::sink::{OrderBy, Sink, SinkOptions, Summary};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Every answer takes this long (ms).
    #[arg(long, value_name = "D", default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of requests answered 503 (0 to 1).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub fail_rate: f64,
    /// Status of every other answer.
    #[arg(long, value_name = "S", default_value_t = 200)]
    pub status: u16,
    /// Header that identifies an event, for duplicates (without it: the flood stamp's
    /// sequence).
    #[arg(long, value_name = "NAME", default_value = "Idempotency-Key")]
    pub key_header: String,
    /// Count per-key order violations, the key read from `header:NAME` or `field:PATH` (a
    /// JSON body field); the order is the flood stamp's sequence.
    #[arg(long, value_name = "header:NAME|field:PATH")]
    pub order_key: Option<OrderBy>,
    /// Seconds between two progress lines.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    pub every: u64,
    /// Print JSON lines (one per progress line, the last with "final": true).
    #[arg(long)]
    pub json: bool,
}

fn check(args: &Args) -> Result<(), String> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        return Err(format!(
            "--fail-rate {}: expected a fraction from 0 to 1",
            args.fail_rate
        ));
    }
    if !(200..=599).contains(&args.status) {
        return Err(format!(
            "--status {}: expected an HTTP status from 200 to 599",
            args.status
        ));
    }
    if args.every == 0 {
        return Err("--every must be at least 1 second".into());
    }
    if args.key_header.is_empty() || axum::http::HeaderName::try_from(&args.key_header).is_err() {
        return Err(format!(
            "--key-header {:?}: not a header name",
            args.key_header
        ));
    }
    Ok(())
}

pub async fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    if let Err(e) = check(args) {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let sink = Sink::start(SinkOptions {
        listen: args.listen,
        delay: Duration::from_millis(args.latency_ms),
        key_header: args.key_header.clone(),
        order_by: args.order_key.clone(),
        ..Default::default()
    })
    .await?;
    let (fail, status) = (args.fail_rate, args.status);
    sink.respond(move |_, _| {
        if fail > 0.0 && rand::random::<f64>() < fail {
            (503, vec![])
        } else {
            (status, vec![])
        }
    });
    eprintln!("sink listening on {}", sink.url());
    let mut tick = tokio::time::interval(Duration::from_secs(args.every));
    tick.tick().await;
    let (mut last_n, mut last_t) = (0u64, Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = sink.summary();
                if s.requests != last_n {
                    let rate = (s.requests - last_n) as f64 / last_t.elapsed().as_secs_f64();
                    print_line(&s, rate, false, args.json);
                }
                (last_n, last_t) = (s.requests, Instant::now());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let s = sink.summary();
    let rate = (s.requests - last_n) as f64 / last_t.elapsed().as_secs_f64().max(1e-3);
    print_line(&s, rate, true, args.json);
    Ok(ExitCode::SUCCESS)
}

fn print_line(s: &Summary, rate: f64, last: bool, json: bool) {
    if json {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("arrivals_per_s".into(), serde_json::json!(rate));
            o.insert("final".into(), serde_json::json!(last));
        }
        println!("{v}");
        return;
    }
    let statuses: Vec<String> = s
        .by_status
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let latency = s
        .latency
        .as_ref()
        .map_or("no stamped requests".to_string(), |l| {
            format!(
                "latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            )
        });
    let head = if last {
        "total:".to_string()
    } else {
        format!("now: {rate:.0} requests/s,")
    };
    println!(
        "{head} {} requests, {} delivered, {} duplicates ({} after a 2xx), {} order violations; answered {{{}}}; {latency}",
        s.requests,
        s.delivered,
        s.duplicates,
        s.after_success,
        s.order_violations,
        statuses.join(", ")
    );
    if last && s.seconds > 0.0 {
        println!(
            "delivered {:.0}/s from first to last delivery ({:.2} s)",
            s.delivered_per_s, s.seconds
        );
    }
}
