//! The input schema of a connector (the seed's "schema check before send"): generated from what
//! its URL, headers, body and filter read, or given explicitly with `map.schema`.
//!
//! Generated rules: fields in the URL and headers are required and must be a string, number or
//! boolean (they become text); fields the body or filter read are optional (a missing body
//! field is left out, as the rendering rules say). The payload itself must be a JSON object.

use serde_json::{json, Map, Value as Json};

/// Why a schema does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON Schema: {0}")]
pub struct SchemaError(pub String);

/// Every way an event violates its connector's schema, each as `path: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Violations(pub Vec<String>);

/// A compiled schema and its JSON form.
pub struct InputSchema {
    pub json: Json,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for InputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InputSchema({})", self.json)
    }
}

impl InputSchema {
    /// Compiles a schema (JSON Schema, any draft the validator knows; default 2020-12).
    pub fn compile(json: Json) -> Result<InputSchema, SchemaError> {
        let validator = jsonschema::validator_for(&json).map_err(|e| SchemaError(e.to_string()))?;
        Ok(InputSchema { json, validator })
    }

    /// `Ok` or every violation, each as `path: message`.
    pub fn check(&self, event: &Json) -> Result<(), Violations> {
        // The common case answered without collecting anything.
        if self.validator.is_valid(event) {
            return Ok(());
        }
        let errors: Vec<String> = self
            .validator
            .iter_errors(event)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!(
                    "{}: {}",
                    if at.is_empty() { "/" } else { &at },
                    rule(e.kind())
                )
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Violations(errors))
        }
    }
}

/// What rule a violation broke, without the event's value (jsonschema's own messages quote it).
fn rule(kind: &jsonschema::error::ValidationErrorKind) -> String {
    use jsonschema::error::{TypeKind, ValidationErrorKind as K};
    match kind {
        K::Type {
            kind: TypeKind::Single(t),
        } => format!("is not of type {t}"),
        K::Type { .. } => "is not of an allowed type".into(),
        K::Required { property } => match property.as_str() {
            Some(p) => format!("`{p}` is required"),
            None => "a required property is missing".into(),
        },
        K::Pattern { pattern } => format!("does not match the pattern `{pattern}`"),
        K::Format { format } => format!("is not a valid {format}"),
        K::Enum { .. } => "is not one of the allowed values (enum)".into(),
        K::Constant { .. } => "is not the required value (const)".into(),
        K::MinLength { limit } => format!("is shorter than {limit} characters"),
        K::MaxLength { limit } => format!("is longer than {limit} characters"),
        K::Minimum { limit } => format!("is less than {limit}"),
        K::Maximum { limit } => format!("is more than {limit}"),
        K::ExclusiveMinimum { limit } => format!("is not more than {limit}"),
        K::ExclusiveMaximum { limit } => format!("is not less than {limit}"),
        K::MinItems { limit } => format!("has fewer than {limit} items"),
        K::MaxItems { limit } => format!("has more than {limit} items"),
        K::AdditionalProperties { unexpected } => format!(
            "has properties the schema does not allow: {}",
            unexpected.join(", ")
        ),
        other => format!("does not match the schema (`{}`)", other.keyword()),
    }
}

/// Builds the generated schema from field paths (`a.b.c`).
pub fn generate(id: &str, required_scalars: &[String], optional: &[String]) -> Json {
    let mut root = object_schema();
    for path in optional {
        insert(&mut root, path, false);
    }
    for path in required_scalars {
        insert(&mut root, path, true);
    }
    let mut out = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": format!("input of connector {id}"),
    });
    if let (Some(o), Json::Object(r)) = (out.as_object_mut(), root) {
        o.extend(r);
    }
    out
}

fn object_schema() -> Json {
    json!({ "type": "object", "properties": {}, "required": [] })
}

fn insert(node: &mut Json, path: &str, required: bool) {
    let mut parts = path.split('.').peekable();
    let mut cur = node;
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        if part.bytes().all(|b| b.is_ascii_digit()) {
            // An array index: keep arrays unconstrained.
            return;
        }
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        if required {
            if let Some(Json::Array(req)) = obj.get_mut("required") {
                if !req.iter().any(|r| r == part) {
                    req.push(Json::String(part.to_string()));
                }
            }
        }
        let Some(Json::Object(props)) = obj.get_mut("properties") else {
            return;
        };
        let entry = props.entry(part.to_string()).or_insert_with(|| {
            if last {
                Json::Object(Map::new())
            } else {
                object_schema()
            }
        });
        if last {
            if required {
                if let Some(o) = entry.as_object_mut() {
                    o.insert("type".into(), json!(["string", "number", "boolean"]));
                }
            }
            return;
        }
        if entry.get("properties").is_none() {
            *entry = object_schema();
        }
        cur = entry;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_schema_requires_url_fields_and_allows_missing_body_fields() {
        let s = generate(
            "c",
            &["permitId".into(), "data.object.id".into()],
            &[
                "startDate".into(),
                "status".into(),
                "data.object.amount".into(),
                "items.0".into(),
            ],
        );
        let schema = InputSchema::compile(s).unwrap();
        let ok = json!({"permitId": "RW-481", "data": {"object": {"id": 7}}});
        assert_eq!(schema.check(&ok), Ok(()));
        let err = schema
            .check(&json!({"data": {"object": {}}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("permitId"), "{err}");
        assert!(err.contains("/data/object"), "{err}");
        let err = schema
            .check(&json!({"permitId": {"x": 1}, "data": {"object": {"id": 1}}}))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/permitId:"), "{err}");
        assert!(schema.check(&json!([1, 2])).is_err());
        assert!(schema.check(&json!("text")).is_err());
    }

    #[test]
    fn explicit_schemas_are_checked_when_compiled() {
        assert!(InputSchema::compile(json!({"type": "nope"})).is_err());
        let s = InputSchema::compile(json!({"type": "object", "required": ["a"]})).unwrap();
        assert!(s.check(&json!({"a": 1})).is_ok());
        assert!(s.check(&json!({})).is_err());
    }
}
