//! `hms-sync test CONNECTOR.yaml [EVENT.json]`

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::connector::{self, AnyConnector, InboundConnector};
use crate::filter::{EventMeta, Verdict};
use crate::inbound::mapping;
use crate::request;
use crate::template::Secrets;

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

/// An inbound connector: print the event a webhook JSON would become (the signature is not
/// checked offline; ids taken from headers at receipt are shown as placeholders).
fn inbound(c: &InboundConnector, name: &str, text: &[u8]) -> ExitCode {
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
    let mut out = String::new();
    let bound;
    let ctx = match &c.lookup {
        None => &event,
        Some(l) => {
            let mut r = match request::build_lookup(l, &event, Secrets::Masked) {
                Ok(r) => r,
                Err(e) => {
                    return invalid(format!(
                        "{name}: cannot render the lookup for `{}`: {e} (such an event would be parked)",
                        c.id
                    ))
                }
            };
            if let Some(a) = l.effective_auth(c.auth.as_ref()) {
                let _ = a.apply(&mut r, "***");
            }
            out.push_str(&format!(
                "# lookup, sent first; its JSON answer is bound as `{}`\n",
                l.bind
            ));
            out.push_str(&r.to_text());
            out.push_str("\n# request (values from the lookup shown as <...>)\n");
            bound = request::bind(&event, &l.bind, request::placeholder_answer(&c, &l.bind));
            &bound
        }
    };
    match request::build(&c, ctx, Some(key), Secrets::Masked) {
        Ok(mut r) => {
            if let Some(a) = &c.auth {
                let _ = a.apply(&mut r, "***");
            }
            out.push_str(&r.to_text());
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => invalid(format!(
            "{name}: cannot render for `{}`: {e} (such an event would be parked)",
            c.id
        )),
    }
}
