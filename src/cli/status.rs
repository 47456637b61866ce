//! `hms-sync status`: per connector its state, lag, parked jobs, last error and latency, from the running instance or, failing that, from NATS alone.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value as Json;

use super::Cli;
use crate::bus::Bus;
use crate::http_client::HttpClient;
use crate::logging::printable;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of the running instance's admin side (default: http://<http.adminListen, else
    /// http.listen of the config>).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Print JSON (an array, one object per connector) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The admin token of the running instance (http.adminToken), when it has one; default:
    /// HMS_ADMIN_TOKEN, else http.adminToken of the config. Prefer the variable: a command
    /// line is visible to other users of the machine.
    #[arg(
        long,
        env = "HMS_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
}

/// The admin token to send: `--admin-token` / `HMS_ADMIN_TOKEN`, else the config's own
/// (`http.adminToken` with `${VAR}` resolved now), else none.
pub fn admin_token(
    given: Option<&str>,
    cfg: &crate::config::RuntimeConfig,
) -> Option<crate::auth::SecretString> {
    match given.filter(|t| !t.is_empty()) {
        Some(t) => Some(crate::auth::SecretString::new(t.to_string())),
        None => cfg
            .http
            .admin_token(&|name| std::env::var(name).ok())
            .ok()
            .flatten(),
    }
}

/// One connector as `status` shows it. `None`: not known from this source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub id: String,
    pub consumer: String,
    pub state: String,
    pub pending: Option<u64>,
    pub ack_pending: Option<u64>,
    pub redelivered: Option<u64>,
    /// Parked jobs waiting for review (`sync.parked.<consumer>`).
    pub parked: Option<u64>,
    pub delivered: Option<u64>,
    pub failed: Option<u64>,
    pub last_error: Option<String>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

pub async fn exec(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let cfg = cli.runtime_config()?;
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| default_url(cfg.http.admin_addr()));
    let base = base.trim_end_matches('/').to_string();
    let http = HttpClient::new()?;
    let token = admin_token(args.admin_token.as_deref(), &cfg);
    let answer = http
        .get_json_authorized(
            &format!("{base}/api/connectors"),
            Duration::from_secs(3),
            token.as_ref(),
        )
        .await
        .map_err(|e| e.to_string())
        .and_then(|v| from_instance(&v));
    let rows = match answer {
        Ok(rows) => rows,
        Err(why) => {
            let opts = super::connect::nats_options(&cfg)?;
            let nats = opts.shown();
            let (line, state) = if why.contains("401") {
                let rejected = if token.is_some() {
                    "refused the admin token"
                } else {
                    "wants its admin token"
                };
                (
                    format!("the instance at {base} {rejected} (set HMS_ADMIN_TOKEN or pass --admin-token); showing what NATS at {nats} knows"),
                    format!("unknown (the instance at {base} {rejected})"),
                )
            } else {
                (
                    format!(
                        "no running instance at {base} ({why}); showing what NATS at {nats} knows"
                    ),
                    format!("unknown (no running instance at {base})"),
                )
            };
            eprintln!("{line}");
            if !Bus::reachable(&nats).await {
                anyhow::bail!("nothing answers at {nats} either");
            }
            let bus = Bus::connect_with(&opts).await?;
            let consumers = bus.event_consumers().await?;
            let parked = bus.parked_counts().await?;
            consumers
                .into_iter()
                .map(|c| Row {
                    id: if c.stats.description.is_empty() {
                        c.name.clone()
                    } else {
                        c.stats.description.clone()
                    },
                    state: state.clone(),
                    pending: Some(c.stats.pending),
                    ack_pending: Some(c.stats.ack_pending),
                    redelivered: Some(c.stats.redelivered),
                    parked: Some(parked.get(&c.name).copied().unwrap_or(0)),
                    delivered: None,
                    failed: None,
                    last_error: None,
                    latency_p50_ms: None,
                    latency_p99_ms: None,
                    consumer: c.name,
                })
                .collect()
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// `http://<listen>`, with an unspecified address (`0.0.0.0`, `::`) asked on loopback.
fn default_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// Rows from the JSON of a running instance's `/api/connectors`.
fn from_instance(v: &Json) -> Result<Vec<Row>, String> {
    let list = v
        .as_array()
        .ok_or("the answer is not a list of connectors")?;
    list.iter()
        .map(|c| {
            let id = c["id"].as_str().ok_or("a connector without id")?;
            let stats = &c["consumer_stats"];
            Ok(Row {
                id: id.to_string(),
                consumer: c["consumer"].as_str().unwrap_or_default().to_string(),
                state: c["state"].as_str().unwrap_or("unknown").to_string(),
                pending: stats["pending"].as_u64(),
                ack_pending: stats["ack_pending"].as_u64(),
                redelivered: stats["redelivered"].as_u64(),
                parked: c["parked_jobs"].as_u64(),
                delivered: c["delivered"].as_u64(),
                failed: c["failed"].as_u64(),
                last_error: c["last_error"].as_str().map(str::to_string),
                latency_p50_ms: c["latency_p50_ms"].as_f64(),
                latency_p99_ms: c["latency_p99_ms"].as_f64(),
            })
        })
        .collect()
}

/// The readable table: one line per connector, the last error last (control characters shown
/// as spaces, so an error text cannot drive the terminal).
fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no connectors\n".to_string();
    }
    let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let header = [
        "CONNECTOR",
        "STATE",
        "PENDING",
        "ACK PENDING",
        "REDELIVERED",
        "PARKED",
        "P50 MS",
        "P99 MS",
        "LAST ERROR",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                printable(&r.id),
                printable(&r.state),
                n(r.pending),
                n(r.ack_pending),
                n(r.redelivered),
                n(r.parked),
                ms(r.latency_p50_ms),
                ms(r.latency_p99_ms),
                r.last_error.as_deref().map_or("-".to_string(), printable),
            ]
        })
        .collect();
    let mut width = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: [&str; 9]| {
        let mut l = String::new();
        for (i, c) in cols.iter().enumerate() {
            let w = width[i];
            let _ = match i {
                0 | 1 => write!(l, "{c:<w$}  "),
                8 => write!(l, "{c}"),
                _ => write!(l, "{c:>w$}  "),
            };
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &cells {
        line(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_an_instance_answer() {
        let v = serde_json::json!([{
            "id": "ddot.gis.outbound.v1", "consumer": "ddot_gis_outbound_v1", "state": "running",
            "delivered": 3, "failed": 1, "parked": 1, "parked_jobs": 2,
            "last_error": "http://x/item/1: HTTP 404",
            "latency_p50_ms": 12.5, "latency_p99_ms": null,
            "consumer_stats": { "pending": 4, "ack_pending": 1, "redelivered": 0, "description": "d" }
        }, {
            "id": "b", "consumer": "b", "state": "restarting", "consumer_stats": null, "parked_jobs": null
        }]);
        let rows = from_instance(&v).unwrap();
        assert_eq!(rows[0].pending, Some(4));
        assert_eq!(
            rows[0].parked,
            Some(2),
            "parked jobs waiting, not parked by this process"
        );
        assert_eq!(rows[0].latency_p50_ms, Some(12.5));
        assert_eq!(rows[0].latency_p99_ms, None);
        assert_eq!(rows[1].state, "restarting");
        assert_eq!(rows[1].pending, None);
        assert!(from_instance(&serde_json::json!({"status": "ok"})).is_err());
        assert!(from_instance(&serde_json::json!([{"name": "x"}])).is_err());
    }

    #[test]
    fn table_aligns_and_shows_unknowns_as_dashes() {
        let row = Row {
            id: "ddot.gis.outbound.v1".into(),
            consumer: "ddot_gis_outbound_v1".into(),
            state: "running".into(),
            pending: Some(12),
            ack_pending: Some(3),
            redelivered: Some(0),
            parked: Some(1),
            delivered: Some(40),
            failed: Some(1),
            last_error: Some("http://x: HTTP 404\n\u{1b}[31m".into()),
            latency_p50_ms: Some(12.345),
            latency_p99_ms: None,
        };
        let short = Row {
            id: "b".into(),
            state: "failed".into(),
            last_error: None,
            ..row.clone()
        };
        let t = table(&[row, short]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "CONNECTOR             STATE    PENDING  ACK PENDING  REDELIVERED  PARKED  P50 MS  P99 MS  LAST ERROR"
        );
        assert_eq!(
            lines[1],
            "ddot.gis.outbound.v1  running       12            3            0       1    12.3       -  http://x: HTTP 404  [31m"
        );
        assert!(lines[2].starts_with("b                     failed        12"));
        assert!(lines[2].ends_with("  -"));
        assert_eq!(table(&[]), "no connectors\n");
    }

    #[test]
    fn default_url_asks_loopback_for_an_unspecified_address() {
        assert_eq!(
            default_url("0.0.0.0:7500".parse().unwrap()),
            "http://127.0.0.1:7500"
        );
        assert_eq!(
            default_url("127.0.0.1:7501".parse().unwrap()),
            "http://127.0.0.1:7501"
        );
        assert_eq!(
            default_url("[::]:7500".parse().unwrap()),
            "http://[::1]:7500"
        );
    }
}
