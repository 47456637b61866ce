//! `hms-sync test CONNECTOR.yaml [EVENT.json]`

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cloudevents;
use crate::connector::{self, AnyConnector, InboundConnector, InboundFormat};
use crate::filter::{EventMeta, Verdict};
use crate::inbound::mapping;
use crate::request;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connector file.
    pub connector: PathBuf,
    /// Event JSON file; stdin when absent (or `-`).
    pub event: Option<PathBuf>,
    /// Subject the event is taken to arrive on (default: the trigger topic).
    #[arg(long)]
    pub topic: Option<String>,
}

/// The event (or webhook) text and the name it goes by in messages.
fn read_input(args: &Args) -> Result<(String, Vec<u8>), String> {
    match &args.event {
        Some(p) if p.as_os_str() != "-" => std::fs::read(p)
            .map(|t| (p.display().to_string(), t))
            .map_err(|e| format!("{}: cannot read: {e}", p.display())),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("stdin: cannot read: {e}"))?;
            Ok(("stdin".to_string(), buf))
        }
    }
}

/// An inbound CloudEvents connector: the input is a structured CloudEvent (a JSON object) or a
/// batch (an array); print the event each becomes.
fn inbound_cloudevents(c: &InboundConnector, name: &str, text: &[u8]) -> ExitCode {
    let batch = text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let mut headers = axum::http::HeaderMap::new();
    let ct = if batch {
        cloudevents::BATCH
    } else {
        cloudevents::STRUCTURED
    };
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(ct),
    );
    let raw = bytes::Bytes::copy_from_slice(text);
    let events = match cloudevents::parse(&headers, &raw) {
        Ok((_, events)) => events,
        Err(e) => {
            eprintln!("{name}: {e} (it would be answered 400)");
            return ExitCode::from(2);
        }
    };
    let mut out = String::new();
    for e in &events {
        match mapping::cloud_event(c, &headers, e) {
            Ok(ev) => {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&mapping::to_text(c, &ev));
            }
            Err(err) => {
                eprintln!(
                    "{name}: cannot map event `{}` for `{}`: {err} (such a request would be answered 422)",
                    e.id(),
                    c.id
                );
                return ExitCode::from(2);
            }
        }
    }
    print!("{out}");
    ExitCode::SUCCESS
}

/// An inbound connector: print the event a webhook JSON would become (the signature is not
/// checked offline; ids taken from headers at receipt are shown as placeholders).
fn inbound(c: &InboundConnector, name: &str, text: &[u8]) -> ExitCode {
    if matches!(c.format, InboundFormat::CloudEvents { .. }) {
        return inbound_cloudevents(c, name, text);
    }
    let json: serde_json::Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "{name}:{}:{}: webhook is not valid JSON: {e} (it would be answered 400)",
                e.line(),
                e.column()
            );
            return ExitCode::from(2);
        }
    };
    let raw = bytes::Bytes::copy_from_slice(text);
    match mapping::event(c, &axum::http::HeaderMap::new(), &raw, &json) {
        Ok(e) => {
            print!("{}", mapping::to_text(c, &e));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "{name}: cannot map for `{}`: {e} (such a webhook would be answered 422)",
                c.id
            );
            ExitCode::from(2)
        }
    }
}

pub fn exec(args: &Args) -> ExitCode {
    let invalid = |msg: String| {
        eprintln!("{msg}");
        ExitCode::from(2)
    };
    let c = match connector::load_files(std::slice::from_ref(&args.connector)) {
        Ok(mut v) => v.pop(),
        Err(p) => return invalid(p.to_string()),
    };
    let (name, text) = match read_input(args) {
        Ok(x) => x,
        Err(msg) => return invalid(msg),
    };
    let c = match c {
        Some(AnyConnector::Outbound(c)) => *c,
        Some(AnyConnector::Inbound(c)) => return inbound(&c, &name, &text),
        None => return invalid("no connector".into()),
    };
    let event: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            return invalid(format!(
                "{name}:{}:{}: event is not valid JSON: {e}",
                e.line(),
                e.column()
            ))
        }
    };
    if let Some(f) = &c.trigger.filter {
        let meta = EventMeta {
            topic: args
                .topic
                .clone()
                .unwrap_or_else(|| c.trigger.topic.clone()),
            sequence: 1,
            published: crate::clock::now_rfc3339(),
            id: String::new(),
        };
        match f.evaluate(&event, &meta) {
            Verdict::Pass => {}
            Verdict::Excluded => {
                eprintln!(
                    "filtered out: `{}` is false for this event; nothing would be sent",
                    f.source()
                );
                return ExitCode::from(1);
            }
            Verdict::NotEvaluable(why) => {
                eprintln!("filtered out: {why}; nothing would be sent");
                return ExitCode::from(1);
            }
            Verdict::Failed(why) => {
                return invalid(format!(
                    "{name}: the filter failed on this event: {why} (it would be parked)"
                ));
            }
        }
    }
    if let Err(e) = c.schema.check(&event) {
        return invalid(format!(
            "{name}: schema check failed for `{}`: {e} (such an event would be parked)",
            c.id
        ));
    }
    let key = "<derived per event at delivery: from Nats-Msg-Id, else stream sequence>";
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| c.trigger.topic.clone());
    // CloudEvents attributes are percent-encoded: placeholders without spaces.
    let origin = request::EventOrigin {
        topic: &topic,
        time: "<publish-time>",
    };
    match request::preview(&c, &event, key, "<idempotency-key>", origin) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(request::PreviewError::Lookup(e)) => invalid(format!(
            "{name}: cannot render the lookup for `{}`: {e} (such an event would be parked)",
            c.id
        )),
        Err(request::PreviewError::Request(e)) => invalid(format!(
            "{name}: cannot render for `{}`: {e} (such an event would be parked)",
            c.id
        )),
    }
}
