//! Loading connector files from disk: every file of a folder, all problems at once, duplicate
//! ids and webhook paths across files; and the start-up warnings about unset secrets. The only
//! part of the connector model that touches the file system or the environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::compile::parse_with;
use super::model::{secrets_used, AnyConnector, Connector, InboundConnector};
use super::problems::{Problem, Problems};
use super::yaml_pos::{Pos, Positions};

/// Parses and validates one connector from its text; files it names (`map.schema`) are read
/// from disk. `file` names it in messages.
pub fn parse(file: &str, text: &str) -> Result<AnyConnector, Problems> {
    parse_with(file, text, &|p: &Path| std::fs::read_to_string(p))
}

/// Reads one connector file as text: at most [`super::compile::MAX_CONNECTOR_BYTES`] (checked
/// before it is read whole), UTF-8.
pub fn read_text(path: &Path, file: &str) -> Result<String, Problems> {
    let cannot = |e: std::io::Error| {
        Problems(vec![Problem {
            file: file.to_string(),
            pos: Pos { line: 1, col: 1 },
            message: format!("cannot read: {e}"),
        }])
    };
    let f = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    // One byte more than allowed is enough to know it is too large.
    let limit = super::compile::MAX_CONNECTOR_BYTES as u64 + 1;
    std::io::Read::read_to_end(&mut std::io::Read::take(f, limit), &mut bytes).map_err(cannot)?;
    if bytes.len() as u64 == limit {
        let len = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(super::compile::too_large(file, len));
    }
    super::compile::text_of(file, bytes)
}

/// Reads and validates connector files; duplicate ids across files are errors too.
pub fn load_files(files: &[PathBuf]) -> Result<Vec<AnyConnector>, Problems> {
    load_sources(files).map(|v| v.into_iter().map(|(c, _)| c).collect())
}

/// Like [`load_files`], keeping each connector's text as written (what `deploy` stores).
pub fn load_sources(files: &[PathBuf]) -> Result<Vec<(AnyConnector, String)>, Problems> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for path in files {
        let file = path.display().to_string();
        let text = match read_text(path, &file) {
            Ok(t) => t,
            Err(Problems(p)) => {
                problems.extend(p);
                continue;
            }
        };
        match parse(&file, &text) {
            Ok(c) => {
                if let Some(first) = seen.get(c.id()) {
                    let pos = Positions::scan(&text)
                        .map(|p| p.value("id"))
                        .unwrap_or_default();
                    problems.push(Problem {
                        file: file.clone(),
                        pos,
                        message: format!(
                            "duplicate connector id `{}` (also defined in {first})",
                            c.id()
                        ),
                    });
                } else if let Some(first) = webhook_path_taken(&c, &out) {
                    let pos = Positions::scan(&text)
                        .map(|p| p.value("source.webhookUrl"))
                        .unwrap_or_default();
                    problems.push(Problem {
                        file: file.clone(),
                        pos,
                        message: format!("webhookUrl already served by connector `{first}`"),
                    });
                } else {
                    seen.insert(c.id().to_string(), file.clone());
                    out.push((c, text));
                }
            }
            Err(Problems(p)) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

/// Checks every loaded connector's written-out hosts against the outbound address policy
/// (all problems at once).
pub fn check_policy(
    loaded: &[(AnyConnector, String)],
    policy: &crate::policy::AddressPolicy,
) -> Result<(), Problems> {
    let problems: Vec<Problem> = loaded
        .iter()
        .flat_map(|(c, text)| super::hosts::policy_problems(c, c.origin(), text, policy))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Problems(problems))
    }
}

/// The id of a connector in `others` that already serves `c`'s webhook path, if any.
fn webhook_path_taken<'a>(
    c: &AnyConnector,
    others: &'a [(AnyConnector, String)],
) -> Option<&'a str> {
    let AnyConnector::Inbound(c) = c else {
        return None;
    };
    others.iter().find_map(|(o, _)| match o {
        AnyConnector::Inbound(o) if o.webhook_url == c.webhook_url => Some(o.id.as_str()),
        _ => None,
    })
}

/// Every `*.yaml` / `*.yml` file in `dir`, sorted by name.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Warns about every `${VAR}` an outbound connector reads that is not set now (its events
/// would be parked).
pub fn warn_missing_secrets(c: &Connector) {
    for s in secrets_used(c) {
        if std::env::var_os(&s).is_none() {
            tracing::warn!(
                "[{}] uses ${{{s}}}, which is not set: its events will be parked",
                c.id
            );
        }
    }
}

/// Warns about every `${VAR}` an inbound connector's signature reads that is not set now (its
/// webhooks would be answered 401).
pub fn warn_missing_webhook_secrets(c: &InboundConnector) {
    for s in c.secret_names() {
        if std::env::var_os(&s).is_none() {
            tracing::warn!(
                "[{}] uses ${{{s}}}, which is not set: its webhooks will be answered 401 until it is",
                c.id
            );
        }
    }
}
