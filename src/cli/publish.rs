//! `hms-sync publish TOPIC --data JSON`

use std::io::Read;
use std::process::ExitCode;

use super::Common;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Subject to publish on (e.g. permit.updated).
    pub topic: String,
    /// Event payload (JSON); read from stdin when absent.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// Nats-Msg-Id (deduplicated by JetStream within its window).
    #[arg(long, value_name = "MSGID")]
    pub id: Option<String>,
    /// Extra header, `Name:Value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
}

pub async fn exec(cli: &Common, args: &Args) -> anyhow::Result<ExitCode> {
    let cfg = cli.runtime_config()?;
    let data = match &args.data {
        Some(d) => d.clone().into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let Some((k, v)) = h.split_once(':') else {
            eprintln!("--header `{h}`: expected Name:Value");
            return Ok(ExitCode::from(2));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    if let Some(id) = &args.id {
        headers.push(("Nats-Msg-Id".to_string(), id.clone()));
    }
    let conn = super::connect::connect(&cfg).await?;
    let published = conn.bus.publish(&args.topic, &headers, data).await;
    conn.close().await;
    match published? {
        Some((stream, seq, dup)) => {
            let dup = if dup {
                " (duplicate: already stored)"
            } else {
                ""
            };
            println!("published {} to stream {stream} seq {seq}{dup}", args.topic);
        }
        None => println!(
            "published {} (no stream captures it: plain NATS publish)",
            args.topic
        ),
    }
    Ok(ExitCode::SUCCESS)
}
