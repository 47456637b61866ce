//! Trigger filters: CEL expressions (cel-interpreter), compiled once when a connector loads.
//!
//! Bound names: `object` is the event payload (JSON), `event` its metadata:
//! `event.topic` (subject), `event.sequence` (stream sequence), `event.published`
//! (publish time, RFC 3339 string), `event.id` (Nats-Msg-Id, or "" when absent).

use std::collections::{BTreeSet, HashMap};

use cel_interpreter::{Context, Program, Value};
use cel_parser::ast::{EntryExpr, Expr, IdedEntryExpr, IdedExpr};
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
    /// When the expression reads `object` only as `object.<field>`: those fields. Only they are
    /// converted to CEL values for each event (the rest of the payload cannot matter).
    narrow: Option<Vec<String>>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({:?})", self.source)
    }
}

/// Why a CEL expression (a filter or a response check) does not compile or cannot be
/// evaluated; the text names line:col inside the expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CelError(pub String);

/// Whether an event passed the filter, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The expression evaluated to false.
    Excluded,
    /// The expression reads a field this event does not have: treated as "not matched", with
    /// the reason (`has(object.x)` says so explicitly).
    NotEvaluable(String),
    /// The expression failed on this event (a type that does not fit, a value that is not a
    /// boolean, a division by zero, ...): the event is parked with the reason.
    Failed(String),
}

impl Filter {
    /// Compiles a CEL expression; the error names line:col inside the expression.
    pub fn compile(source: &str) -> Result<Filter, CelError> {
        let program = compile_program(
            source,
            &["object", "event"],
            "use `object` for the payload, `event` for topic/sequence/published/id",
        )?;
        let uses_event = program.references().has_variable("event");
        let narrow = std::panic::catch_unwind(|| cel_parser::Parser::new().parse(source))
            .ok()
            .and_then(Result::ok)
            .and_then(|ast| {
                let mut fields = BTreeSet::new();
                selected_fields(&ast, "object", &mut fields).then(|| fields.into_iter().collect())
            });
        Ok(Filter {
            source: source.to_string(),
            program,
            root: Context::default(),
            uses_event,
            narrow,
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
        let bound = match (&self.narrow, object.as_object()) {
            (Some(fields), Some(map)) => {
                let mut part = HashMap::with_capacity(fields.len());
                for f in fields {
                    if let Some(v) = map.get(f) {
                        match cel_interpreter::to_value(v) {
                            Ok(v) => part.insert(f.clone(), v),
                            Err(_) => {
                                return Verdict::Failed(format!(
                                    "payload field `{f}` cannot be bound"
                                ))
                            }
                        };
                    }
                }
                ctx.add_variable_from_value("object", part);
                Ok(())
            }
            _ => ctx.add_variable("object", object),
        };
        if let Err(e) = bound {
            let _ = e;
            return Verdict::Failed("the payload cannot be bound".into());
        }
        if self.uses_event {
            if let Err(e) = ctx.add_variable("event", meta) {
                return Verdict::Failed(format!("metadata cannot be bound: {e}"));
            }
        }
        // The interpreter is a library: should it panic on some input, that event fails the
        // filter (and is parked) instead of taking the connector down with it.
        let run =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.program.execute(&ctx)));
        match run {
            Ok(Ok(Value::Bool(true))) => Verdict::Pass,
            Ok(Ok(Value::Bool(false))) => Verdict::Excluded,
            Ok(Ok(other)) => Verdict::Failed(format!(
                "filter `{}` gave a {}, not a boolean",
                self.source,
                type_name(&other)
            )),
            // A field missing from an object payload: "not matched". From a payload that is
            // no object at all (a list, a string): a type that does not fit.
            Ok(Err(e @ cel_interpreter::ExecutionError::NoSuchKey(_))) if object.is_object() => {
                Verdict::NotEvaluable(format!(
                    "filter `{}`: {}",
                    self.source,
                    describe_execution(&e)
                ))
            }
            Ok(Err(cel_interpreter::ExecutionError::NoSuchKey(_))) => Verdict::Failed(format!(
                "filter `{}`: the payload is {}, not an object",
                self.source,
                json_type(object)
            )),
            Ok(Err(e)) => Verdict::Failed(format!(
                "filter `{}`: {}",
                self.source,
                describe_execution(&e)
            )),
            Err(_) => Verdict::Failed(format!(
                "filter `{}`: the CEL interpreter failed on this event",
                self.source
            )),
        }
    }
}

/// Collects the fields read as `<var>.<field>` into `fields`; false when `var` is also used any
/// other way (bound whole, indexed, passed to a function, shadowed by a macro variable, ...).
fn selected_fields(e: &IdedExpr, var: &str, fields: &mut BTreeSet<String>) -> bool {
    let all = |es: &mut dyn Iterator<Item = &IdedExpr>, fields: &mut BTreeSet<String>| {
        for x in es {
            if !selected_fields(x, var, fields) {
                return false;
            }
        }
        true
    };
    match &e.expr {
        Expr::Ident(name) => name != var,
        Expr::Select(s) => match &s.operand.expr {
            Expr::Ident(name) if name == var => {
                fields.insert(s.field.clone());
                true
            }
            _ => selected_fields(&s.operand, var, fields),
        },
        Expr::Call(c) => all(&mut c.target.iter().map(|t| &**t).chain(&c.args), fields),
        Expr::Comprehension(c) => {
            c.iter_var != var
                && c.iter_var2.as_deref() != Some(var)
                && c.accu_var != var
                && all(
                    &mut [
                        &c.iter_range,
                        &c.accu_init,
                        &c.loop_cond,
                        &c.loop_step,
                        &c.result,
                    ]
                    .into_iter()
                    .map(|b| &**b),
                    fields,
                )
        }
        Expr::List(l) => all(&mut l.elements.iter(), fields),
        Expr::Map(m) => all(&mut m.entries.iter().flat_map(entry_exprs), fields),
        Expr::Struct(st) => all(&mut st.entries.iter().flat_map(entry_exprs), fields),
        Expr::Literal(_) => true,
        Expr::Unspecified => false,
    }
}

/// The expressions of a map or struct literal entry (key and value, or field value).
fn entry_exprs(en: &IdedEntryExpr) -> Vec<&IdedExpr> {
    match &en.expr {
        EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
        EntryExpr::StructField(sf) => vec![&sf.value],
    }
}

/// Compiles a CEL expression that may only read the variables in `allowed`; errors name
/// line:col inside the expression. Shared by filters and response checks.
pub(crate) fn compile_program(
    source: &str,
    allowed: &[&str],
    hint: &str,
) -> Result<Program, CelError> {
    quiet_parser_panics();
    // cel-parser 0.10 panics on some incomplete expressions (`a ==`) instead of erroring.
    let parsed = std::panic::catch_unwind(|| Program::compile(source))
        .map_err(|_| CelError("CEL: syntax error (incomplete expression?)".to_string()))?;
    let program = parsed.map_err(|e| {
        let text = e
            .errors
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
            .join("; ");
        CelError(text)
    })?;
    let refs = program.references();
    let bound = macro_variables(source);
    for name in refs.variables() {
        if !allowed.contains(&name) && !bound.iter().any(|b| b == name) {
            return Err(CelError(format!("CEL: unknown variable `{name}` ({hint})")));
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
            // The parser's panics, and the interpreter's (cel-interpreter 0.10 has `todo!()`s,
            // e.g. a macro over a string): both are caught where they are called.
            let in_parser = info.location().is_some_and(|l| {
                l.file().contains("antlr4rust")
                    || l.file().contains("cel-parser")
                    || l.file().contains("cel-interpreter")
            });
            if !in_parser {
                previous(info);
            }
        }));
    });
}

/// The type of a JSON value, by name (never the value).
fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// The type of a CEL value, by name (never the value).
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Function(..) => "function",
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::Bool(_) => "bool",
        Value::Null => "null",
        #[allow(unreachable_patterns)]
        _ => "value",
    }
}

/// A CEL evaluation error told without the values involved (they come from events and
/// answers): the operator, function, key or types, never the data.
pub fn describe_execution(e: &cel_interpreter::ExecutionError) -> String {
    use cel_interpreter::ExecutionError as E;
    match e {
        E::InvalidArgumentCount { expected, actual } => {
            format!("expected {expected} argument(s), got {actual}")
        }
        E::UnsupportedTargetType { target } => {
            format!("a {} is not a valid argument here", type_name(target))
        }
        E::NotSupportedAsMethod { method, target } => {
            format!(
                "method `{method}` does not apply to a {}",
                type_name(target)
            )
        }
        E::UnsupportedKeyType(v) => format!("a {} cannot be used as a key", type_name(v)),
        E::UnexpectedType { got, want } => format!("unexpected type: got {got}, want {want}"),
        E::NoSuchKey(k) => format!("no such key: {k}"),
        E::UndeclaredReference(r) => format!("undeclared reference to `{r}`"),
        E::MissingArgumentOrTarget => "missing argument or target".into(),
        E::ValuesNotComparable(a, b) => format!(
            "a {} cannot be compared to a {}",
            type_name(a),
            type_name(b)
        ),
        E::UnsupportedUnaryOperator(op, v) => {
            format!("operator `{op}` does not apply to a {}", type_name(v))
        }
        E::UnsupportedBinaryOperator(op, a, b) => format!(
            "operator `{op}` does not apply to a {} and a {}",
            type_name(a),
            type_name(b)
        ),
        E::UnsupportedMapIndex(v) | E::UnsupportedListIndex(v) => {
            format!("a {} cannot be used as an index", type_name(v))
        }
        E::UnsupportedIndex(i, v) => format!("a {} cannot index a {}", type_name(i), type_name(v)),
        E::FunctionError { function, .. } => format!("function `{function}` failed"),
        E::DivisionByZero(_) => "division by zero".into(),
        E::RemainderByZero(_) => "remainder by zero".into(),
        E::Overflow(op, ..) => format!("overflow in `{op}`"),
        _ => "cannot be evaluated".into(),
    }
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
            Verdict::Failed(_)
        ));
        // Wrong types, not missing fields: the event fails the filter (it is parked).
        for (src, obj) in [
            ("object.amount > 10", json!({"amount": "lots"})),
            ("object.a / object.b > 1", json!({"a": 1, "b": 0})),
            ("object.agency == \"DDOT\"", json!([1, 2])),
            ("object.tags.exists(t, t > 1)", json!({"tags": "x"})),
        ] {
            let f = Filter::compile(src).unwrap();
            let v = f.evaluate(&obj, &meta());
            assert!(matches!(v, Verdict::Failed(_)), "{src} on {obj}: {v:?}");
        }
    }

    #[test]
    fn compile_errors() {
        assert!(Filter::compile("object.agency ==").is_err());
        assert!(Filter::compile("obj.agency == 1")
            .unwrap_err()
            .0
            .contains("unknown variable"));
    }

    #[test]
    fn object_fields() {
        let f =
            Filter::compile(r#"object.agency == "DDOT" && object.amount > 1 && event.topic != """#)
                .unwrap();
        assert_eq!(f.object_fields(), ["agency", "amount"]);
    }

    #[test]
    fn only_fields_read_as_object_dot_field_are_bound_and_verdicts_do_not_change() {
        let narrow = |src: &str| Filter::compile(src).unwrap().narrow;
        let f = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let table: &[(&str, Option<Vec<String>>)] = &[
            (r#"object.agency == "DDOT""#, f(&["agency"])),
            (
                r#"object.a.b > 1 && has(object.c) || object.a == {}"#,
                f(&["a", "c"]),
            ),
            (r#"object.tags.exists(t, t == "x")"#, f(&["tags"])),
            (r#"event.topic == "t""#, f(&[])),
            (r#"object["agency"] == "DDOT""#, None),
            (r#"size(object) > 2"#, None),
            (r#""agency" in object"#, None),
            (r#"object == {"a": 1}"#, None),
            (r#"[object].size() == 1"#, None),
            (r#"[1].all(object, object > 0)"#, None),
        ];
        for (src, want) in table {
            assert_eq!(&narrow(src), want, "{src}");
        }
        let events = [
            json!({"agency": "DDOT", "a": {"b": 2}, "c": null, "tags": ["x"], "note": "n"}),
            json!({"agency": "NYC", "a": {}, "tags": []}),
            json!({"a": 1}),
            json!([1, 2]),
            json!("text"),
            json!({}),
        ];
        for (src, _) in table {
            let narrowed = Filter::compile(src).unwrap();
            let mut whole = Filter::compile(src).unwrap();
            whole.narrow = None;
            for e in &events {
                let (a, b) = (narrowed.evaluate(e, &meta()), whole.evaluate(e, &meta()));
                assert_eq!(
                    std::mem::discriminant(&a),
                    std::mem::discriminant(&b),
                    "{src} on {e}: {a:?} vs {b:?}"
                );
            }
        }
    }
}
