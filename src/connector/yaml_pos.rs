//! Source positions of every key and value in a YAML document, by dotted path (`map.to.url`).
//!
//! serde_yaml reports a position only for the first type error; validation needs the line and
//! column of any key, so the document is scanned once more with yaml-rust2's event parser.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Where each key of the document sits, and where its value starts.
#[derive(Debug, Default)]
pub struct Positions {
    keys: HashMap<String, Pos>,
    values: HashMap<String, Pos>,
    /// Keys of each mapping, in document order: path of the mapping -> (key, key position).
    children: HashMap<String, Vec<(String, Pos)>>,
    /// Keys written twice in one mapping: (dotted path, where it is repeated, where it first was).
    duplicates: Vec<(String, Pos, Pos)>,
}

impl Positions {
    /// Scans `source`; a YAML syntax error comes back with its position.
    pub fn scan(source: &str) -> Result<Positions, (Pos, String)> {
        let mut rx = Receiver::default();
        let mut parser = Parser::new_from_str(source);
        parser
            .load(&mut rx, false)
            .map_err(|e| (pos(e.marker()), e.info().to_string()))?;
        Ok(rx.out)
    }

    /// Position of the key at `path`, falling back to its closest existing ancestor, then 1:1.
    pub fn key(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.keys.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return Pos { line: 1, col: 1 },
            }
        }
    }

    /// Position of the value at `path` (falls back like [`Positions::key`]).
    pub fn value(&self, path: &str) -> Pos {
        self.values
            .get(path)
            .copied()
            .unwrap_or_else(|| self.key(path))
    }

    /// The keys of the mapping at `path` ("" is the document root), in document order.
    pub fn children(&self, path: &str) -> &[(String, Pos)] {
        self.children.get(path).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Keys written twice in one mapping: (dotted path, position of the repeat, position of
    /// the first), in document order.
    pub fn duplicates(&self) -> &[(String, Pos, Pos)] {
        &self.duplicates
    }
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2 markers: line is 1-based, column is 0-based.
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

enum Frame {
    Map {
        path: String,
        pending_key: Option<(String, Pos)>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    out: Positions,
}

impl Receiver {
    /// Called when a value (scalar or collection start) begins; returns its path, if any.
    fn begin_value(&mut self, mark: Pos) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                self.out.values.insert(p.clone(), mark);
                Some(p)
            }
            Some(Frame::Map { path, pending_key }) => match pending_key.take() {
                Some((key, _)) => {
                    let p = join(path, &key);
                    self.out.values.insert(p.clone(), mark);
                    Some(p)
                }
                None => None, // a complex (non-scalar) key: not tracked
            },
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let mark = pos(&mark);
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Map { path, pending_key }) = self.stack.last_mut() {
                    if pending_key.is_none() {
                        let p = join(path, &text);
                        let siblings = self.out.children.entry(path.clone()).or_default();
                        // A mapping under a complex key has no path of its own ("?"): not checked.
                        if !path.starts_with('?') {
                            if let Some((_, first)) = siblings.iter().find(|(k, _)| *k == text) {
                                self.out.duplicates.push((p.clone(), mark, *first));
                            }
                        }
                        siblings.push((text.clone(), mark));
                        self.out.keys.entry(p).or_insert(mark);
                        *pending_key = Some((text, mark));
                        return;
                    }
                }
                self.begin_value(mark);
            }
            Event::MappingStart(..) => {
                let path = self.begin_value(mark).unwrap_or_else(|| "?".to_string());
                self.out.children.entry(path.clone()).or_default();
                self.stack.push(Frame::Map {
                    path,
                    pending_key: None,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.begin_value(mark).unwrap_or_else(|| "?".to_string());
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.begin_value(mark);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_nested_keys_and_values() {
        let src =
            "id: a\nmap:\n  to:\n    url: \"x\"\n    headers: { A: b }\nlist:\n  - 1\n  - k: v\n";
        let p = Positions::scan(src).unwrap();
        assert_eq!(p.key("id"), Pos { line: 1, col: 1 });
        assert_eq!(p.key("map.to.url"), Pos { line: 4, col: 5 });
        assert_eq!(p.value("map.to.url"), Pos { line: 4, col: 10 });
        assert_eq!(p.key("map.to.headers.A"), Pos { line: 5, col: 16 });
        assert_eq!(p.key("list[1].k"), Pos { line: 8, col: 5 });
        let keys: Vec<&str> = p
            .children("map.to")
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["url", "headers"]);
        // Unknown path falls back to the closest ancestor.
        assert_eq!(p.key("map.to.nothing"), Pos { line: 3, col: 3 });
    }

    #[test]
    fn keys_written_twice_are_found_where_they_repeat() {
        let src = "id: a\nid: b\nmap:\n  to:\n    headers: { A: 1, B: 2, A: 3 }\nl:\n  - k: 1\n  - k: 2\n";
        let p = Positions::scan(src).unwrap();
        let d: Vec<(String, Pos, Pos)> = p.duplicates().to_vec();
        let at = |line, col| Pos { line, col };
        assert_eq!(
            d,
            [
                ("id".to_string(), at(2, 1), at(1, 1)),
                ("map.to.headers.A".to_string(), at(5, 28), at(5, 16)),
            ]
        );
        // The first occurrence keeps its position.
        assert_eq!(p.key("id"), at(1, 1));
    }

    #[test]
    fn syntax_error_has_a_position() {
        let err = Positions::scan("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.0.line >= 1, "{err:?}");
    }
}
