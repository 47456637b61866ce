//! Problems found while loading connector files, each with its `file:line:col`.

use std::fmt;

use super::yaml_pos::Pos;
use crate::template::{Flavor, StringTemplate};

/// One problem in a connector file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )
    }
}

/// Every problem found while loading one or more connector files.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Collects the problems of one file.
pub struct Report<'a> {
    pub file: &'a str,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Report<'a> {
    pub fn new(file: &'a str, problems: &'a mut Vec<Problem>) -> Self {
        Report { file, problems }
    }

    pub fn at(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            pos,
            message: message.into(),
        });
    }

    pub fn count(&self) -> usize {
        self.problems.len()
    }

    /// Compiles a string template, reporting a compile error at `pos`.
    pub fn template(&mut self, source: &str, flavor: Flavor, pos: Pos) -> Option<StringTemplate> {
        StringTemplate::compile(source, flavor)
            .map_err(|e| self.at(pos, e.0))
            .ok()
    }
}
