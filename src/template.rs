//! Pure rendering of connector templates: body leaves and headers (`{{ expr }}`, upon syntax),
//! URL segments (`{field}`, percent-encoded) and secrets (`${VAR}`, resolved at send time).
//!
//! Values from the event are always inserted as data: a body is built as a JSON tree (never by
//! string splicing), a URL value is percent-encoded as one segment, and `${VAR}` is only
//! recognised in the connector's own text, never in event values.

use std::fmt::Write as _;
use std::sync::LazyLock;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value as Json;

static ENGINE: LazyLock<upon::Engine<'static>> = LazyLock::new(|| {
    let mut e = upon::Engine::new();
    // `{{ permitId | sql_string }}`: the value as the inside of a SQL string literal (`'` doubled),
    // for query languages such as ArcGIS `where` clauses.
    e.add_function("sql_string", |s: &str| s.replace('\'', "''"));
    e
});

/// Everything but RFC 3986 unreserved characters is encoded, so a value stays one path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a template could not be compiled (a connector error, reported at load time).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// Why a template could not be rendered for one event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("missing variable `{0}` in the event")]
    Missing(String),
    #[error("environment variable `{0}` is not set")]
    MissingSecret(String),
    #[error("`{path}`: {reason}")]
    Invalid { path: String, reason: String },
}

/// Where `${VAR}` values come from when rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read the process environment (only when a request is about to be sent).
    Env,
    /// Show `***` (logs, `hms-sync test`, audit records, parked jobs).
    Masked,
}

impl Secrets {
    fn resolve(self, name: &str) -> Result<String, RenderError> {
        match self {
            Secrets::Masked => Ok("***".to_string()),
            Secrets::Env => {
                std::env::var(name).map_err(|_| RenderError::MissingSecret(name.to_string()))
            }
        }
    }
}

/// One member of a plain path such as `data.object.id` or `items.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    Key(String),
    Index(usize),
}

fn parse_path(s: &str) -> Option<Vec<Member>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.split('.')
        .map(|m| {
            if !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()) {
                m.parse().ok().map(Member::Index)
            } else if !m.is_empty()
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && !m.as_bytes()[0].is_ascii_digit()
            {
                Some(Member::Key(m.to_string()))
            } else {
                None
            }
        })
        .collect()
}

/// `text` as literal and plain-path pieces, when every `{{ }}` in it holds only a plain path
/// and it has no `{% %}` or `{# #}` (else `None`: the template engine renders it whole).
fn plain_paths(text: &str) -> Result<Option<Vec<Piece>>, CompileError> {
    if text.contains("{%") || text.contains("{#") {
        return Ok(None);
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            return Ok(None);
        };
        let expr = &rest[start..start + len + 2];
        if expr.starts_with("{{-") || expr.ends_with("-}}") {
            // Whitespace control: the engine's.
            return Ok(None);
        }
        let Some(path) = parse_path(&expr[2..expr.len() - 2]) else {
            return Ok(None);
        };
        if start > 0 {
            pieces.push(Piece::Literal(rest[..start].to_string()));
        }
        let tpl = ENGINE
            .compile(expr.to_string())
            .map_err(|e| CompileError(format!("template does not compile: {e:#}")))?;
        pieces.push(Piece::Path(path, tpl));
        rest = &rest[start + len + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_string()));
    }
    Ok(Some(pieces))
}

fn lookup<'a>(root: &'a Json, path: &[Member]) -> Option<&'a Json> {
    path.iter().try_fold(root, |v, m| match (m, v) {
        (Member::Key(k), Json::Object(o)) => o.get(k),
        (Member::Index(i), Json::Array(a)) => a.get(*i),
        _ => None,
    })
}

fn display_path(path: &[Member]) -> String {
    path.iter()
        .map(|m| match m {
            Member::Key(k) => k.clone(),
            Member::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn to_upon(v: &Json) -> upon::Value {
    match v {
        Json::Null => upon::Value::None,
        Json::Bool(b) => upon::Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.is_u64()) {
            (Some(i), _) => upon::Value::Integer(i),
            // Above i64: as the event wrote it (a float would lose digits).
            (None, true) => upon::Value::String(n.to_string()),
            (None, false) => upon::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => upon::Value::String(s.clone()),
        Json::Array(a) => upon::Value::List(a.iter().map(to_upon).collect()),
        Json::Object(o) => {
            upon::Value::Map(o.iter().map(|(k, v)| (k.clone(), to_upon(v))).collect())
        }
    }
}

/// Text form of a scalar JSON value (what a URL segment or a header receives).
fn scalar_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

enum Piece {
    Literal(String),
    Expr(upon::Template<'static>),
    /// `{{ a.b }}`, a plain path: a string, integer or boolean found there is inserted as it
    /// is (what the template engine would write, without running it); anything else (missing,
    /// null, a float, a list) goes through the template, with its messages.
    Path(Vec<Member>, upon::Template<'static>),
    /// A `{field}` URL placeholder.
    Field(Vec<Member>),
    Secret(String),
}

/// A compiled string template: literal text, `{{ expr }}`, `${VAR}` and (in URLs) `{field}`.
pub struct StringTemplate {
    source: String,
    flavor: Flavor,
    pieces: Vec<Piece>,
    /// Set when the whole template is exactly one `{{ path }}`: the value keeps its JSON type.
    single_path: Option<Vec<Member>>,
}

impl std::fmt::Debug for StringTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StringTemplate({:?})", self.source)
    }
}

/// Which syntax a string template accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Body leaves and header values: `{{ expr }}` and `${VAR}`.
    Text,
    /// URLs: `{field}` (percent-encoded), `{{ expr }}` (percent-encoded) and `${VAR}`.
    Url,
}

impl StringTemplate {
    /// Compiles `source`; errors say what is wrong and where in the string.
    pub fn compile(source: &str, flavor: Flavor) -> Result<Self, CompileError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = source;
        let flush = |text: &mut String, pieces: &mut Vec<Piece>| -> Result<(), CompileError> {
            if text.is_empty() {
                return Ok(());
            }
            let t = std::mem::take(text);
            if let Some(split) = plain_paths(&t)? {
                pieces.extend(split);
            } else if t.contains("{{") || t.contains("{%") || t.contains("{#") {
                let tpl = ENGINE
                    .compile(t)
                    .map_err(|e| CompileError(format!("template does not compile: {e:#}")))?;
                pieces.push(Piece::Expr(tpl));
            } else {
                pieces.push(Piece::Literal(t));
            }
            Ok(())
        };
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("${") {
                let end = after
                    .find('}')
                    .ok_or_else(|| CompileError("unclosed `${`".into()))?;
                let name = &after[..end];
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(CompileError(format!(
                        "`${{{name}}}`: an environment variable name has only letters, digits and `_`"
                    )));
                }
                flush(&mut text, &mut pieces)?;
                pieces.push(Piece::Secret(name.to_string()));
                rest = &after[end + 1..];
            } else if rest.starts_with("{{") {
                let end = rest
                    .find("}}")
                    .ok_or_else(|| CompileError("unclosed `{{`".into()))?;
                if flavor == Flavor::Url {
                    // Each URL expression is its own piece so that only its value is encoded.
                    flush(&mut text, &mut pieces)?;
                    flush(&mut rest[..end + 2].to_string(), &mut pieces)?;
                } else {
                    text.push_str(&rest[..end + 2]);
                }
                rest = &rest[end + 2..];
            } else if flavor == Flavor::Url && rest.starts_with('{') {
                let end = rest
                    .find('}')
                    .ok_or_else(|| CompileError("unclosed `{` in URL".into()))?;
                let inner = &rest[1..end];
                let path = parse_path(inner).ok_or_else(|| {
                    CompileError(format!(
                        "`{{{inner}}}`: a URL placeholder names one event field, like {{permitId}} or {{data.id}}"
                    ))
                })?;
                flush(&mut text, &mut pieces)?;
                pieces.push(Piece::Field(path));
                rest = &rest[end + 1..];
            } else {
                let ch = rest.chars().next().unwrap_or_default();
                text.push(ch);
                rest = &rest[ch.len_utf8()..];
            }
        }
        flush(&mut text, &mut pieces)?;
        let single_path = source
            .trim()
            .strip_prefix("{{")
            .and_then(|s| s.strip_suffix("}}"))
            .filter(|inner| !inner.contains("{{") && !inner.contains("}}"))
            .and_then(parse_path);
        Ok(StringTemplate {
            source: source.to_string(),
            flavor,
            pieces,
            single_path,
        })
    }

    /// The text as written in the connector.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Names of the `${VAR}` secrets used.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Secret(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// Whether rendering depends on the event at all.
    pub fn is_constant(&self) -> bool {
        self.pieces
            .iter()
            .all(|p| matches!(p, Piece::Literal(_) | Piece::Secret(_)))
    }

    /// Event fields this template reads (plain paths only; used for the input schema).
    pub fn fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.single_path {
            out.push(display_path(p));
        }
        for piece in &self.pieces {
            match piece {
                Piece::Field(p) | Piece::Path(p, _) => out.push(display_path(p)),
                Piece::Expr(_) if self.single_path.is_none() => {
                    out.extend(expr_paths(&self.source));
                }
                _ => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Renders to text. URL pieces are percent-encoded; `{{ }}` in text is inserted as is.
    pub fn render_text(&self, event: &Json, secrets: Secrets) -> Result<String, RenderError> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Secret(name) => out.push_str(&secrets.resolve(name)?),
                Piece::Field(path) => {
                    let v = lookup(event, path)
                        .ok_or_else(|| RenderError::Missing(display_path(path)))?;
                    let text = scalar_text(v).ok_or_else(|| RenderError::Invalid {
                        path: display_path(path),
                        reason: "a URL segment must be a string, number or boolean".into(),
                    })?;
                    out.extend(utf8_percent_encode(&text, SEGMENT));
                }
                Piece::Path(path, tpl) => {
                    let found = match lookup(event, path) {
                        Some(Json::String(s)) => Some(s.as_str()),
                        Some(Json::Number(n)) if n.is_i64() => {
                            // Digits and `-`: nothing to encode.
                            let _ = write!(out, "{n}");
                            continue;
                        }
                        Some(Json::Bool(b)) => Some(if *b { "true" } else { "false" }),
                        _ => None,
                    };
                    let rendered;
                    let text = match found {
                        Some(t) => t,
                        None => {
                            rendered = render_expr(tpl, event)?;
                            &rendered
                        }
                    };
                    if self.flavor == Flavor::Url {
                        out.extend(utf8_percent_encode(text, SEGMENT));
                    } else {
                        out.push_str(text);
                    }
                }
                Piece::Expr(tpl) => {
                    let rendered = render_expr(tpl, event)?;
                    if self.flavor == Flavor::Url {
                        out.extend(utf8_percent_encode(&rendered, SEGMENT));
                    } else {
                        out.push_str(&rendered);
                    }
                }
            }
        }
        if self.flavor == Flavor::Url && !self.is_constant() && has_dot_segment(&out) {
            // `.` and `..` are not data in a URL path: a parser resolves them, so a value
            // could climb out of its segment (`/items/{id}/x` with id `..`).
            return Err(RenderError::Invalid {
                path: self.source.clone(),
                reason: "a value made a `.` or `..` path segment".into(),
            });
        }
        Ok(out)
    }

    /// Renders a body leaf: `None` when a variable is missing (the field is left out);
    /// a single `{{ path }}` keeps the value's JSON type.
    pub fn render_leaf(&self, event: &Json, secrets: Secrets) -> Result<Option<Json>, RenderError> {
        if let Some(path) = &self.single_path {
            return Ok(lookup(event, path).cloned());
        }
        match self.render_text(event, secrets) {
            Ok(s) => Ok(Some(Json::String(s))),
            Err(RenderError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Whether the path of `url` (after `scheme://authority`, before `?` or `#`) has a segment
/// that URL parsers resolve: `.` or `..`, also written with `%2e`.
fn has_dot_segment(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot also as `%2e`/`%2E` (checked without allocating: every URL a
/// connector renders passes here).
fn is_dot_segment(seg: &str) -> bool {
    let b = seg.as_bytes();
    let (mut i, mut dots) = (0, 0);
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'%'
            && b.get(i + 1) == Some(&b'2')
            && b.get(i + 2).is_some_and(|c| c | 0x20 == b'e')
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Best-effort list of plain variable paths inside `{{ ... }}` expressions (for schemas).
fn expr_paths(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let expr = after[..end].split('|').next().unwrap_or_default();
        if let Some(p) = parse_path(expr) {
            out.push(display_path(&p));
        }
        rest = &after[end + 2..];
    }
    out
}

fn render_expr(tpl: &upon::Template<'static>, event: &Json) -> Result<String, RenderError> {
    let mut missing: Option<String> = None;
    let result = tpl
        .render_from_fn(&ENGINE, |members: &[upon::ValueMember<'_>]| {
            let mut cur = event;
            let mut walked = Vec::new();
            for m in members {
                let next = match (m.access, cur) {
                    (upon::ValueAccess::Key(k), Json::Object(o)) => {
                        walked.push(k.to_string());
                        o.get(k)
                    }
                    (upon::ValueAccess::Index(i), Json::Array(a)) => {
                        walked.push(i.to_string());
                        a.get(i)
                    }
                    (upon::ValueAccess::Key(k), _) => {
                        walked.push(k.to_string());
                        None
                    }
                    (upon::ValueAccess::Index(i), _) => {
                        walked.push(i.to_string());
                        None
                    }
                };
                match next {
                    Some(v) => cur = v,
                    None if m.op == upon::ValueAccessOp::Optional => return Ok(upon::Value::None),
                    None => {
                        let path = walked.join(".");
                        missing = Some(path.clone());
                        return Err(format!("missing variable `{path}`"));
                    }
                }
            }
            Ok(to_upon(cur))
        })
        .to_string();
    match (result, missing) {
        (Ok(s), _) => Ok(s),
        (Err(_), Some(path)) => Err(RenderError::Missing(path)),
        // upon's message may quote the value it could not use: say what failed, not the value.
        (Err(_), None) => Err(RenderError::Invalid {
            path: tpl.source().to_string(),
            reason: "cannot be rendered for this event (a value of another type than the template expects?)".into(),
        }),
    }
}

/// A compiled body: the YAML tree with every string leaf a template.
#[derive(Debug)]
pub enum BodyTemplate {
    Object(Vec<(String, BodyTemplate)>),
    Array(Vec<BodyTemplate>),
    Leaf(StringTemplate),
    Const(Json),
    /// `{ $json: <tree> }`: the rendered tree sent as one JSON text (a string), as form APIs
    /// such as ArcGIS `applyEdits` expect for `updates=[...]`.
    JsonText(Box<BodyTemplate>),
}

/// The key that marks a subtree to be sent as JSON text.
pub const JSON_TEXT_KEY: &str = "$json";

impl BodyTemplate {
    /// Compiles a body tree; errors carry the dotted path of the failing leaf.
    pub fn compile(v: &Json) -> Result<Self, Vec<(String, CompileError)>> {
        let mut errors = Vec::new();
        let t = Self::compile_at(v, "", &mut errors);
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors)
        }
    }

    fn compile_at(v: &Json, path: &str, errors: &mut Vec<(String, CompileError)>) -> Self {
        match v {
            Json::Object(o) if o.len() == 1 && o.contains_key(JSON_TEXT_KEY) => {
                let inner = o.get(JSON_TEXT_KEY).unwrap_or(&Json::Null);
                BodyTemplate::JsonText(Box::new(Self::compile_at(inner, path, errors)))
            }
            Json::Object(o) => BodyTemplate::Object(
                o.iter()
                    .map(|(k, v)| {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        (k.clone(), Self::compile_at(v, &p, errors))
                    })
                    .collect(),
            ),
            Json::Array(a) => BodyTemplate::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| Self::compile_at(v, &format!("{path}[{i}]"), errors))
                    .collect(),
            ),
            Json::String(s) => match StringTemplate::compile(s, Flavor::Text) {
                Ok(t) => BodyTemplate::Leaf(t),
                Err(e) => {
                    errors.push((path.to_string(), e));
                    BodyTemplate::Const(Json::Null)
                }
            },
            other => BodyTemplate::Const(other.clone()),
        }
    }

    /// Renders the body for one event. Missing variables drop their field.
    pub fn render(&self, event: &Json, secrets: Secrets) -> Result<Json, RenderError> {
        Ok(self.render_opt(event, secrets)?.unwrap_or(Json::Null))
    }

    fn render_opt(&self, event: &Json, secrets: Secrets) -> Result<Option<Json>, RenderError> {
        Ok(match self {
            BodyTemplate::Const(v) => Some(v.clone()),
            BodyTemplate::Leaf(t) => t.render_leaf(event, secrets)?,
            BodyTemplate::JsonText(inner) => inner
                .render_opt(event, secrets)?
                .map(|v| Json::String(v.to_string())),
            BodyTemplate::Object(fields) => {
                let mut out = serde_json::Map::with_capacity(fields.len());
                for (k, t) in fields {
                    if let Some(v) = t.render_opt(event, secrets)? {
                        out.insert(k.clone(), v);
                    }
                }
                Some(Json::Object(out))
            }
            BodyTemplate::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for t in items {
                    if let Some(v) = t.render_opt(event, secrets)? {
                        out.push(v);
                    }
                }
                Some(Json::Array(out))
            }
        })
    }

    /// Every leaf template, for inspection (secrets, fields).
    pub fn leaves(&self) -> Vec<&StringTemplate> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a StringTemplate>) {
        match self {
            BodyTemplate::Leaf(t) => out.push(t),
            BodyTemplate::Object(f) => f.iter().for_each(|(_, t)| t.collect(out)),
            BodyTemplate::Array(a) => a.iter().for_each(|t| t.collect(out)),
            BodyTemplate::JsonText(inner) => inner.collect(out),
            BodyTemplate::Const(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_in_the_path_only() {
        for (url, dot) in [
            ("https://gis.example/a/b", false),
            ("https://gis.example/a/./b", true),
            ("https://gis.example/a/../b", true),
            ("https://gis.example/a/%2e%2E/b", true),
            ("https://gis.example/a/.%2e", true),
            ("https://gis.example/a/%2e", true),
            ("https://gis.example/a/...", false),
            ("https://gis.example/a/.b/c.d", false),
            ("https://gis.example/a/%2f", false),
            ("https://gis.example/a/%2", false),
            ("https://gis.example/a/b?x=..", false),
            ("https://gis.example/a/b#..", false),
            ("https://my.gis.example:8443/", false),
            ("https://gis.example/..", true),
        ] {
            assert_eq!(has_dot_segment(url), dot, "{url}");
        }
    }
    use serde_json::json;

    fn text(src: &str, ev: &Json) -> Result<String, RenderError> {
        StringTemplate::compile(src, Flavor::Text)
            .unwrap()
            .render_text(ev, Secrets::Masked)
    }

    /// The engine alone, for the text as one template (what plain paths must equal).
    fn engine(src: &str, ev: &Json) -> Result<String, RenderError> {
        render_expr(&ENGINE.compile(src.to_string()).unwrap(), ev)
    }

    #[test]
    fn plain_paths_render_exactly_as_the_engine_does() {
        let ev = json!({
            "s": "a b/é'\"", "i": -42, "u": 7, "big": 18446744073709551615u64, "f": 1.5,
            "t": true, "n": null, "list": [1, 2], "obj": {"k": "v", "deep": {"x": 3}},
        });
        let sources = [
            "{{ s }}",
            "{{ i }}",
            "{{ u }}",
            "{{ big }}",
            "{{ f }}",
            "{{ t }}",
            "{{ n }}",
            "{{ list }}",
            "{{ obj }}",
            "{{ obj.k }}",
            "{{ obj.deep.x }}",
            "{{ list.1 }}",
            "{{ missing }}",
            "{{ obj.missing }}",
            "{{ s.deeper }}",
            "{{ list.9 }}",
            "id-{{ i }}:{{ s }} / {{ t }}!",
            "{{s}}{{obj.k}}",
            "plain text",
        ];
        for src in sources {
            let fast = StringTemplate::compile(src, Flavor::Text).unwrap();
            assert!(
                fast.pieces.iter().all(|p| !matches!(p, Piece::Expr(_))),
                "{src}: compiled to plain paths"
            );
            assert_eq!(
                fast.render_text(&ev, Secrets::Masked),
                engine(src, &ev),
                "{src}"
            );
        }
        // Not plain paths: the engine renders the whole text.
        for src in [
            "{{ s | sql_string }}",
            "{% if t %}{{ s }}{% endif %}",
            "{{- s -}}",
        ] {
            let t = StringTemplate::compile(src, Flavor::Text).unwrap();
            assert!(
                t.pieces.iter().any(|p| matches!(p, Piece::Expr(_))),
                "{src}"
            );
            assert_eq!(
                t.render_text(&ev, Secrets::Masked),
                engine(src, &ev),
                "{src}"
            );
        }
    }

    fn url(src: &str, ev: &Json) -> Result<String, RenderError> {
        StringTemplate::compile(src, Flavor::Url)
            .unwrap()
            .render_text(ev, Secrets::Masked)
    }

    #[test]
    fn url_segments_are_percent_encoded_and_stay_on_their_path() {
        let base = "https://gis.example/item/roadwork/{permitId}";
        let cases = [
            ("RW-481", "https://gis.example/item/roadwork/RW-481"),
            ("../admin", "https://gis.example/item/roadwork/..%2Fadmin"),
            (
                "?a=b#frag",
                "https://gis.example/item/roadwork/%3Fa%3Db%23frag",
            ),
            ("a b/c", "https://gis.example/item/roadwork/a%20b%2Fc"),
            (
                "\r\nX: y",
                "https://gis.example/item/roadwork/%0D%0AX%3A%20y",
            ),
            ("ünï", "https://gis.example/item/roadwork/%C3%BCn%C3%AF"),
            ("%2F", "https://gis.example/item/roadwork/%252F"),
        ];
        for (value, want) in cases {
            assert_eq!(
                url(base, &json!({ "permitId": value })).unwrap(),
                want,
                "{value:?}"
            );
        }
        assert_eq!(
            url(base, &json!({ "permitId": 481 })).unwrap(),
            "https://gis.example/item/roadwork/481"
        );
        assert_eq!(
            url("https://x/{{ a.b }}/z", &json!({"a": {"b": "p/q"}})).unwrap(),
            "https://x/p%2Fq/z"
        );
    }

    #[test]
    fn missing_url_variable_is_an_error() {
        assert_eq!(
            url("https://x/{permitId}", &json!({})),
            Err(RenderError::Missing("permitId".into()))
        );
        assert!(matches!(
            url("https://x/{permitId}", &json!({"permitId": {"a": 1}})),
            Err(RenderError::Invalid { .. })
        ));
    }

    #[test]
    fn secrets_are_masked_or_read_from_the_environment_never_from_the_event() {
        let t = StringTemplate::compile("Bearer ${HMS_TEST_TOKEN_A}", Flavor::Text).unwrap();
        assert_eq!(
            t.render_text(&json!({}), Secrets::Masked).unwrap(),
            "Bearer ***"
        );
        std::env::set_var("HMS_TEST_TOKEN_A", "s3cret");
        assert_eq!(
            t.render_text(&json!({}), Secrets::Env).unwrap(),
            "Bearer s3cret"
        );
        let missing = StringTemplate::compile("${HMS_TEST_NOT_SET_X}", Flavor::Text).unwrap();
        assert_eq!(
            missing.render_text(&json!({}), Secrets::Env),
            Err(RenderError::MissingSecret("HMS_TEST_NOT_SET_X".into()))
        );
        // An event value that looks like a secret reference stays literal.
        let v = text("{{ x }}", &json!({"x": "${HMS_TEST_TOKEN_A}"})).unwrap();
        assert_eq!(v, "${HMS_TEST_TOKEN_A}");
        assert_eq!(t.secrets().collect::<Vec<_>>(), ["HMS_TEST_TOKEN_A"]);
    }

    #[test]
    fn single_expression_leaf_keeps_its_json_type() {
        let body = BodyTemplate::compile(&json!({
            "n": "{{ amount }}", "s": "{{ amount }} USD", "b": "{{ ok }}", "o": "{{ nested }}",
            "missing": "{{ nope }}", "also_missing": "x {{ nope }}", "c": 7,
            "list": ["{{ amount }}", "{{ nope }}"]
        }))
        .unwrap();
        let out = body
            .render(
                &json!({"amount": 12.5, "ok": true, "nested": {"a": [1]}}),
                Secrets::Masked,
            )
            .unwrap();
        assert_eq!(
            out,
            json!({"n": 12.5, "s": "12.5 USD", "b": true, "o": {"a": [1]}, "c": 7, "list": [12.5]})
        );
    }

    #[test]
    fn hostile_values_stay_literal_data_in_the_body() {
        let body =
            BodyTemplate::compile(&json!({"status": "{{ status }}", "note": "say: {{ status }}"}))
                .unwrap();
        let hostile = [
            r#"APPROVED", "x": {""#,
            r#""}, "x": {""#,
            "{{ secret }}",
            "${ARC_TOKEN}",
            "../../etc/passwd",
            "?a=b#c",
            "line1\r\nline2",
            "ünïcødé ✓ \u{0000}",
            "\\\"",
        ];
        for h in hostile {
            let ev = json!({ "status": h, "secret": "LEAK" });
            let out = body.render(&ev, Secrets::Masked).unwrap();
            let bytes = serde_json::to_vec(&out).unwrap();
            let back: Json = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back["status"], json!(h));
            assert_eq!(back["note"], json!(format!("say: {h}")));
            assert_eq!(back.as_object().unwrap().len(), 2, "{h:?}");
        }
    }

    #[test]
    fn json_text_subtrees_and_sql_strings() {
        let body = BodyTemplate::compile(&json!({
            "f": "json",
            "updates": {"$json": [{"attributes": {"OBJECTID": "{{ id }}", "s": "{{ s }}"}}]},
            "where": "permit_id = '{{ p | sql_string }}'"
        }))
        .unwrap();
        let out = body
            .render(
                &json!({"id": 7, "s": "a\"b", "p": "x' OR '1'='1"}),
                Secrets::Masked,
            )
            .unwrap();
        assert_eq!(
            out["updates"],
            json!(r#"[{"attributes":{"OBJECTID":7,"s":"a\"b"}}]"#)
        );
        assert_eq!(out["where"], json!("permit_id = 'x'' OR ''1''=''1'"));
    }

    #[test]
    fn compile_errors_are_reported() {
        assert!(StringTemplate::compile("{{ a ", Flavor::Text).is_err());
        assert!(StringTemplate::compile("{{ }}", Flavor::Text).is_err());
        assert!(StringTemplate::compile("${NOT CLOSED", Flavor::Text).is_err());
        assert!(StringTemplate::compile("https://x/{a b}", Flavor::Url).is_err());
        let errs = BodyTemplate::compile(&json!({"a": {"b": "{{ x"}})).unwrap_err();
        assert_eq!(errs[0].0, "a.b");
    }

    #[test]
    fn fields_lists_what_a_template_reads() {
        let t = StringTemplate::compile("https://x/{permitId}/{{ a.b }}", Flavor::Url).unwrap();
        assert_eq!(t.fields(), ["a.b", "permitId"]);
        let t = StringTemplate::compile("{{ startDate }}", Flavor::Text).unwrap();
        assert_eq!(t.fields(), ["startDate"]);
    }
}
