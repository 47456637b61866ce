//! Parsing one connector file: YAML syntax, unknown keys, the serde structs, then the rules of
//! its kind (outbound or inbound). Pure: files the connector names are read through `read`.

use super::inbound;
use super::model::AnyConnector;
use super::outbound::{self, ReadFile};
use super::problems::{Problem, Problems, Report};
use super::raw::RawConnector;
use super::rules::{id_problem, strsim_hint, KNOWN_KEYS};
use super::yaml_pos::{Pos, Positions};

/// Parses and validates one connector from its text, reporting every problem at once. `file`
/// names it in messages; `read` reads the files it names (`map.schema`).
pub fn parse_with(file: &str, text: &str, read: ReadFile<'_>) -> Result<AnyConnector, Problems> {
    let mut problems = Vec::new();
    let positions = match Positions::scan(text) {
        Ok(p) => p,
        Err((pos, msg)) => {
            return Err(Problems(vec![Problem {
                file: file.to_string(),
                pos,
                message: format!("YAML syntax: {msg}"),
            }]))
        }
    };
    let mut r = Report::new(file, &mut problems);
    unknown_keys(&positions, &mut r);
    let raw: RawConnector = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let pos = e
                .location()
                .map(|l| Pos {
                    line: l.line(),
                    col: l.column(),
                })
                .unwrap_or_default();
            let msg = e.to_string();
            // serde_yaml appends " at line L column C"; the prefix already says where.
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            r.at(pos, msg);
            return Err(Problems(problems));
        }
    };
    let compiled = compile(raw, &positions, &mut r, read);
    match compiled {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(Problems(problems)),
    }
}

/// Every key that is not known in its mapping (headers and bodies are free-form).
fn unknown_keys(positions: &Positions, r: &mut Report<'_>) {
    for (path, known) in KNOWN_KEYS {
        for (key, pos) in positions.children(path) {
            if known.contains(&key.as_str()) {
                continue;
            }
            let hint = strsim_hint(key, known)
                .map(|h| format!(" (did you mean `{h}`?)"))
                .unwrap_or_default();
            let place = if path.is_empty() {
                String::new()
            } else {
                format!(" in `{path}`")
            };
            r.at(*pos, format!("unknown key `{key}`{place}{hint}"));
        }
    }
}

/// The id, the type, then the rules of that type.
fn compile(
    raw: RawConnector,
    pos: &Positions,
    r: &mut Report<'_>,
    read: ReadFile<'_>,
) -> Option<AnyConnector> {
    if let Some(msg) = id_problem(&raw.id) {
        r.at(pos.value("id"), msg);
    }
    match raw.kind.as_str() {
        "outbound" => {
            outbound::compile(raw, pos, r, read).map(|c| AnyConnector::Outbound(c.into()))
        }
        "inbound" => inbound::compile(&raw, pos, r).map(|c| AnyConnector::Inbound(c.into())),
        other => {
            r.at(
                pos.value("type"),
                format!("type `{other}`: expected `outbound` or `inbound`"),
            );
            None
        }
    }
}
