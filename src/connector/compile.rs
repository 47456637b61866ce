//! Parsing one connector file: YAML syntax, unknown keys, the serde structs, then the rules of
//! its kind (outbound or inbound). Pure: files the connector names are read through `read`.

use super::inbound;
use super::model::AnyConnector;
use super::outbound::{self, ReadFile};
use super::problems::{Problem, Problems, Report};
use super::raw::RawConnector;
use super::rules::{id_problem, strsim_hint, KNOWN_KEYS};
use super::yaml_pos::{Pos, Positions};

/// Largest connector file accepted: a connector is a few kilobytes, and a bigger file is a
/// mistake or an attack (parsing it would only cost time and memory).
pub const MAX_CONNECTOR_BYTES: usize = 1 << 20;

/// One problem of `file` at `pos`.
fn problem(file: &str, pos: Pos, message: String) -> Problems {
    Problems(vec![Problem {
        file: file.to_string(),
        pos,
        message,
    }])
}

/// A connector file's bytes as text: at most [`MAX_CONNECTOR_BYTES`] and UTF-8; the problem
/// names the position of the first byte that is not UTF-8.
pub fn text_of(file: &str, bytes: Vec<u8>) -> Result<String, Problems> {
    if bytes.len() > MAX_CONNECTOR_BYTES {
        return Err(too_large(file, bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // Both come from the valid prefix, so they are exact.
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let col = String::from_utf8_lossy(&valid[start..]).chars().count() + 1;
        problem(
            file,
            Pos { line, col },
            "not UTF-8 text (a connector file is UTF-8)".to_string(),
        )
    })
}

/// The problem of a file over [`MAX_CONNECTOR_BYTES`] (`len` bytes).
pub fn too_large(file: &str, len: u64) -> Problems {
    problem(
        file,
        Pos { line: 1, col: 1 },
        format!("the file is {len} bytes; a connector file may hold at most {MAX_CONNECTOR_BYTES} bytes (1 MiB)"),
    )
}

/// Parses and validates one connector from its text, reporting every problem at once. `file`
/// names it in messages; `read` reads the files it names (`map.schema`).
pub fn parse_with(file: &str, text: &str, read: ReadFile<'_>) -> Result<AnyConnector, Problems> {
    if text.len() > MAX_CONNECTOR_BYTES {
        return Err(too_large(file, text.len() as u64));
    }
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
    for (key, at, first) in positions.duplicates() {
        r.at(
            *at,
            format!(
                "duplicate key `{key}` (first written at {}:{})",
                first.line, first.col
            ),
        );
    }
    if !positions.duplicates().is_empty() {
        // serde would only repeat the first of them, without its position.
        return Err(Problems(problems));
    }
    unknown_keys(&positions, &mut r);
    let raw: RawConnector = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let msg = e.to_string();
            // Scanner errors name a byte offset (their location, if any, is the document's).
            let pos = offset_in(&msg)
                .map(|at| pos_of(text, at))
                .or_else(|| {
                    e.location().map(|l| Pos {
                        line: l.line(),
                        col: l.column(),
                    })
                })
                .unwrap_or_default();
            // serde_yaml appends " at line L column C"; the prefix already says where.
            let msg = msg.split(" at line ").next().unwrap_or(&msg);
            let msg = msg.replace("struct RawConnector", "a connector (a mapping of keys)");
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

/// The byte offset of a message ending in `at position N` (libyaml's scanner errors).
fn offset_in(msg: &str) -> Option<usize> {
    msg.rsplit_once("at position ")?.1.trim().parse().ok()
}

/// The 1-based line and column of byte `at` of `text`.
fn pos_of(text: &str, at: usize) -> Pos {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Pos {
        line: before.matches('\n').count() + 1,
        col: before[line_start..].chars().count() + 1,
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
