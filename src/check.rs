//! Response checks: CEL expressions over an HTTP answer (`status`, `headers`, `body`), compiled once at load.
//!
//! Used by `responseCheck` (does a 2xx answer really mean success?) and by `auth.rejectedWhen`
//! (did the target refuse our token?). `body` is the parsed JSON answer, or `null` when the
//! answer is empty or not JSON; `headers` maps lower-case header names to their values.

use std::collections::HashMap;

use cel_interpreter::{Context, Program, Value};
use serde_json::Value as Json;

pub use crate::filter::CelError;

/// A compiled expression over an answer.
pub struct Check {
    source: String,
    program: Program,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Check({:?})", self.source)
    }
}

/// An answer's headers as (name, value) text pairs, for checks (values that are not text are
/// left out).
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The parts of an answer a check reads.
#[derive(Debug, Clone, Copy)]
pub struct AnswerView<'a> {
    pub status: u16,
    pub headers: &'a [(String, String)],
    pub body: &'a Json,
}

impl Check {
    pub fn compile(source: &str) -> Result<Check, CelError> {
        let program = crate::filter::compile_program(
            source,
            &["status", "headers", "body"],
            "a response check reads `status`, `headers` and `body`",
        )?;
        Ok(Check {
            source: source.to_string(),
            program,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// `Ok(true)` when the expression holds; `Err` says why it could not be evaluated (a
    /// missing field, a non-boolean result), which callers treat as "does not hold".
    pub fn holds(&self, a: AnswerView<'_>) -> Result<bool, CelError> {
        let mut ctx = Context::default();
        let headers: HashMap<String, String> = a
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let bind = |_: cel_interpreter::SerializationError| {
            CelError("the answer cannot be bound for the check".into())
        };
        ctx.add_variable("status", i64::from(a.status))
            .map_err(bind)?;
        ctx.add_variable("headers", headers).map_err(bind)?;
        ctx.add_variable("body", a.body).map_err(bind)?;
        match self.program.execute(&ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(CelError(format!(
                "`{}` gave a {}, not a boolean",
                self.source,
                crate::filter::type_name(&other)
            ))),
            Err(e) => Err(CelError(format!(
                "`{}`: {}",
                self.source,
                crate::filter::describe_execution(&e)
            ))),
        }
    }
}

/// How a failed response check is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Permanent,
    Transient,
}

/// `responseCheck:` of a connector or a lookup.
#[derive(Debug)]
pub struct ResponseCheck {
    pub success: Check,
    pub on_failure: OnFailure,
}

impl ResponseCheck {
    /// `None` when the answer passes; otherwise why not.
    pub fn failure(&self, a: AnswerView<'_>) -> Option<String> {
        match self.success.holds(a) {
            Ok(true) => None,
            Ok(false) => Some(format!("response check `{}` failed", self.success.source())),
            Err(e) => Some(format!("response check {e}")),
        }
    }
}

/// Parses an answer body for checks: JSON, else `null`.
pub fn body_json(body: &[u8]) -> Json {
    serde_json::from_slice(body).unwrap_or(Json::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view<'a>(status: u16, body: &'a Json) -> AnswerView<'a> {
        AnswerView {
            status,
            headers: &[],
            body,
        }
    }

    #[test]
    fn arcgis_style_answers() {
        let c = Check::compile(
            "!has(body.error) && has(body.updateResults) && body.updateResults.all(r, r.success)",
        )
        .unwrap();
        let ok = json!({"updateResults": [{"objectId": 1, "success": true}]});
        let per_feature = json!({"updateResults": [{"objectId": 1, "success": false,
            "error": {"code": 1019, "description": "Invalid field"}}]});
        let error = json!({"error": {"code": 400, "message": "Unable to complete operation."}});
        assert_eq!(c.holds(view(200, &ok)), Ok(true));
        assert_eq!(c.holds(view(200, &per_feature)), Ok(false));
        assert_eq!(c.holds(view(200, &error)), Ok(false));
        assert_ne!(c.holds(view(200, &Json::Null)), Ok(true));
    }

    #[test]
    fn status_and_headers() {
        let c = Check::compile(r#"status == 200 && headers["x-a"] == "1""#).unwrap();
        let h = vec![("X-A".to_string(), "1".to_string())];
        let a = AnswerView {
            status: 200,
            headers: &h,
            body: &Json::Null,
        };
        assert_eq!(c.holds(a), Ok(true));
        assert!(Check::compile("object.x").is_err());
        assert!(Check::compile("status ==").is_err());
    }
}
