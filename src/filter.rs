//! Trigger filters: CEL expressions (cel-interpreter), compiled once when a connector loads.
//!
//! Bound names: `object` is the event payload (JSON), `event` its metadata:
//! `event.topic` (subject), `event.sequence` (stream sequence), `event.published`
//! (publish time, RFC 3339 string), `event.id` (Nats-Msg-Id, or "" when absent).

use cel_interpreter::{Context, Program, Value};
use serde_json::Value as Json;

/// The metadata of one event that filters may read as `event`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EventMeta {
    pub topic: String,
    pub sequence: u64,
    pub published: String,
    pub id: String,
}

/// A compiled filter.
pub struct Filter {
    source: String,
    program: Program,
    /// Built-in functions, registered once; each evaluation binds its variables in a child scope.
    root: Context<'static>,
    /// Whether the expression reads `event` (its metadata is only built then).
    uses_event: bool,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({:?})", self.source)
    }
}

/// Whether an event passed the filter, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The expression evaluated to false.
    Excluded,
    /// The expression could not be evaluated for this event (e.g. a missing field): treated as
    /// "not matched", with the reason.
    NotEvaluable(String),
}

impl Filter {
    /// Compiles a CEL expression; the error names line:col inside the expression.
    pub fn compile(source: &str) -> Result<Filter, String> {
        let program = compile_program(
            source,
            &["object", "event"],
            "use `object` for the payload, `event` for topic/sequence/published/id",
        )?;
        let uses_event = program.references().has_variable("event");
        Ok(Filter {
            source: source.to_string(),
            program,
            root: Context::default(),
            uses_event,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Top-level payload fields the filter reads as `object.<field>` (for the input schema).
    pub fn object_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = self.source.as_str();
        while let Some(i) = rest.find("object.") {
            let before_ok = i == 0 || {
                let b = rest.as_bytes()[i - 1];
                !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            };
            let after = &rest[i + 7..];
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            if before_ok && len > 0 {
                out.push(after[..len].to_string());
            }
            rest = &after[len..];
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether the expression reads `event` (callers may skip building the metadata).
    pub fn uses_event(&self) -> bool {
        self.uses_event
    }

    /// Evaluates the filter for one event.
    pub fn evaluate(&self, object: &Json, meta: &EventMeta) -> Verdict {
        let mut ctx = self.root.new_inner_scope();
        if let Err(e) = ctx.add_variable("object", object) {
            return Verdict::NotEvaluable(format!("payload cannot be bound: {e}"));
        }
        if self.uses_event {
            if let Err(e) = ctx.add_variable("event", meta) {
                return Verdict::NotEvaluable(format!("metadata cannot be bound: {e}"));
            }
        }
        match self.program.execute(&ctx) {
            Ok(Value::Bool(true)) => Verdict::Pass,
            Ok(Value::Bool(false)) => Verdict::Excluded,
            Ok(other) => Verdict::NotEvaluable(format!(
                "filter `{}` gave {other:?}, not a boolean",
                self.source
            )),
            Err(e) => Verdict::NotEvaluable(format!("filter `{}`: {e}", self.source)),
        }
    }
}

/// Compiles a CEL expression that may only read the variables in `allowed`; errors name
/// line:col inside the expression. Shared by filters and response checks.
pub(crate) fn compile_program(
    source: &str,
    allowed: &[&str],
    hint: &str,
) -> Result<Program, String> {
    quiet_parser_panics();
    // cel-parser 0.10 panics on some incomplete expressions (`a ==`) instead of erroring.
    let parsed = std::panic::catch_unwind(|| Program::compile(source))
        .map_err(|_| "CEL: syntax error (incomplete expression?)".to_string())?;
    let program = parsed.map_err(|e| {
        e.errors
            .iter()
            .map(|e| {
                format!(
                    "CEL {}:{}: {}",
                    e.pos.0.max(0) + 1,
                    e.pos.1.max(0) + 1,
                    e.msg
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let refs = program.references();
    let bound = macro_variables(source);
    for name in refs.variables() {
        if !allowed.contains(&name) && !bound.iter().any(|b| b == name) {
            return Err(format!("CEL: unknown variable `{name}` ({hint})"));
        }
    }
    Ok(program)
}

/// Names bound by comprehension macros (`list.all(r, r.success)`): not free variables.
fn macro_variables(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in [".all(", ".exists(", ".exists_one(", ".map(", ".filter("] {
        let mut rest = source;
        while let Some(i) = rest.find(m) {
            let after = &rest[i + m.len()..];
            if let Some(comma) = after.find(',') {
                let name = after[..comma].trim();
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    out.push(name.to_string());
                }
            }
            rest = after;
        }
    }
    out
}

/// Keeps the parser's internal panics (caught above) out of stderr; other panics print as usual.
fn quiet_parser_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_parser = info.location().is_some_and(|l| {
                l.file().contains("antlr4rust") || l.file().contains("cel-parser")
            });
            if !in_parser {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> EventMeta {
        EventMeta {
            topic: "permit.updated".into(),
            sequence: 42,
            published: "2024-05-10T12:00:00Z".into(),
            id: "evt-1".into(),
        }
    }

    #[test]
    fn verdicts() {
        let cases = [
            (
                r#"object.agency == "DDOT""#,
                json!({"agency": "DDOT"}),
                Verdict::Pass,
            ),
            (
                r#"object.agency == "DDOT""#,
                json!({"agency": "NYC"}),
                Verdict::Excluded,
            ),
            (
                r#"event.topic == "permit.updated" && event.sequence > 40"#,
                json!({}),
                Verdict::Pass,
            ),
            (r#"event.id.startsWith("evt-")"#, json!({}), Verdict::Pass),
            (
                r#"has(object.agency) && object.agency == "DDOT""#,
                json!({}),
                Verdict::Excluded,
            ),
            (
                r#"object.amount >= 10.5"#,
                json!({"amount": 12}),
                Verdict::Pass,
            ),
        ];
        for (src, obj, want) in cases {
            let f = Filter::compile(src).unwrap();
            assert_eq!(f.evaluate(&obj, &meta()), want, "{src}");
        }
        let f = Filter::compile(r#"object.agency == "DDOT""#).unwrap();
        assert!(matches!(
            f.evaluate(&json!({}), &meta()),
            Verdict::NotEvaluable(_)
        ));
        let f = Filter::compile("object.agency").unwrap();
        assert!(matches!(
            f.evaluate(&json!({"agency": "x"}), &meta()),
            Verdict::NotEvaluable(_)
        ));
    }

    #[test]
    fn compile_errors() {
        assert!(Filter::compile("object.agency ==").is_err());
        assert!(Filter::compile("obj.agency == 1")
            .unwrap_err()
            .contains("unknown variable"));
    }

    #[test]
    fn object_fields() {
        let f =
            Filter::compile(r#"object.agency == "DDOT" && object.amount > 1 && event.topic != """#)
                .unwrap();
        assert_eq!(f.object_fields(), ["agency", "amount"]);
    }
}
