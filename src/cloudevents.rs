//! CloudEvents 1.0 over HTTP, both ways (binary, structured and batched JSON modes): pure.
//!
//! Inbound, [`parse`] reads one request into its events; each event's attributes become `ce-*`
//! headers (values percent-encoded as the HTTP binding prescribes) and its data the body.
//! Outbound, [`binary_headers`] and [`structured_body`] write what a request carries. The
//! attribute rules are the specification's: `specversion` 1.0, non-empty `id`, `source` and
//! `type`, an RFC 3339 `time`, attribute names of lower-case letters and digits.

use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use serde_json::value::RawValue;
use serde_json::Value as Json;

/// The CloudEvents version spoken.
pub const SPEC_VERSION: &str = "1.0";
/// Media type of structured mode (JSON event format).
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Media type of batched mode (JSON batch format).
pub const BATCH: &str = "application/cloudevents-batch+json";

/// Attributes the specification defines (an extension cannot take these names).
pub const RESERVED: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "data_base64",
];

/// How a request carried its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Attributes in `ce-*` headers, data as the body.
    Binary,
    /// One JSON envelope (`application/cloudevents+json`).
    Structured,
    /// A JSON array of envelopes (`application/cloudevents-batch+json`).
    Batch,
}

/// One CloudEvent: context attributes as canonical strings, and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// `specversion`, `id`, `source`, `type` first, then the others by name;
    /// `datacontenttype` is kept apart.
    pub attributes: Vec<(String, String)>,
    pub datacontenttype: Option<String>,
    /// The data as bytes (binary mode: the body; structured: `data` as written, the text of a
    /// string `data` with a non-JSON content type, or `data_base64` decoded).
    pub data: Option<Bytes>,
}

/// Why a request is not a valid CloudEvent (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CeError {
    #[error("not a CloudEvent: no `ce-specversion` header, and the content type is neither {STRUCTURED} nor {BATCH}")]
    NotCloudEvent,
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("{at}missing attribute `{name}`")]
    Missing { at: String, name: &'static str },
    #[error("{at}specversion is not 1.0 (the only version supported)")]
    SpecVersion { at: String },
    /// `name` is shown escaped and cut to 40 characters: it comes from the sender.
    #[error("{at}attribute `{name}`: {why}")]
    Attribute {
        at: String,
        name: String,
        why: &'static str,
    },
}

impl CloudEvent {
    /// An attribute's value (`datacontenttype` included).
    pub fn attr(&self, name: &str) -> Option<&str> {
        if name == "datacontenttype" {
            return self.datacontenttype.as_deref();
        }
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `id` attribute.
    pub fn id(&self) -> &str {
        self.attr("id").unwrap_or_default()
    }

    /// The `source` attribute.
    pub fn source(&self) -> &str {
        self.attr("source").unwrap_or_default()
    }

    /// The `type` attribute.
    pub fn event_type(&self) -> &str {
        self.attr("type").unwrap_or_default()
    }

    /// The event as templates read it: every attribute by name, and `data` (its JSON when it is
    /// JSON, else its text; `data_base64` when it is not text).
    pub fn view(&self) -> Json {
        let mut o = serde_json::Map::new();
        for (k, v) in &self.attributes {
            o.insert(k.clone(), Json::String(v.clone()));
        }
        if let Some(ct) = &self.datacontenttype {
            o.insert("datacontenttype".into(), Json::String(ct.clone()));
        }
        if let Some(d) = &self.data {
            let json = self
                .datacontenttype
                .as_deref()
                .is_none_or(is_json_media_type);
            let parsed = json
                .then(|| serde_json::from_slice::<Json>(d).ok())
                .flatten();
            let text = std::str::from_utf8(d).ok().filter(|t| {
                !t.chars()
                    .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
            });
            match (parsed, text.ok_or(())) {
                (Some(v), _) => {
                    o.insert("data".into(), v);
                }
                (None, Ok(text)) => {
                    o.insert("data".into(), Json::String(text.to_string()));
                }
                (None, Err(_)) => {
                    o.insert(
                        "data_base64".into(),
                        Json::String(base64::engine::general_purpose::STANDARD.encode(d)),
                    );
                }
            }
        }
        Json::Object(o)
    }

    /// The NATS headers of the event: `ce-<attribute>` (percent-encoded) and `Content-Type`
    /// for `datacontenttype`.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .attributes
            .iter()
            .map(|(k, v)| (format!("ce-{k}"), percent_encode(v)))
            .collect();
        if let Some(ct) = &self.datacontenttype {
            out.push(("Content-Type".into(), percent_encode(ct)));
        }
        out
    }
}

/// Whether a media type is JSON (`application/json`, `text/json`, `*/*+json`).
pub fn is_json_media_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

fn essence(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Reads the events of one request: batched or structured by its content type, binary when
/// it has a `ce-specversion` header.
pub fn parse(headers: &HeaderMap, body: &Bytes) -> Result<(Mode, Vec<CloudEvent>), CeError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match content_type.map(essence).as_deref() {
        Some(BATCH) => {
            let raw: Vec<Box<RawValue>> =
                serde_json::from_slice(body).map_err(|e| CeError::Json(e.to_string()))?;
            let events = raw
                .iter()
                .enumerate()
                .map(|(i, r)| from_structured(r.get().as_bytes(), &format!("entry {i}: ")))
                .collect::<Result<_, _>>()?;
            Ok((Mode::Batch, events))
        }
        Some(STRUCTURED) => Ok((Mode::Structured, vec![from_structured(body, "")?])),
        _ if headers.contains_key("ce-specversion") => {
            Ok((Mode::Binary, vec![from_binary(headers, body)?]))
        }
        _ => Err(CeError::NotCloudEvent),
    }
}

/// Binary mode: attributes from `ce-*` headers, `datacontenttype` from `Content-Type`.
fn from_binary(headers: &HeaderMap, body: &Bytes) -> Result<CloudEvent, CeError> {
    let mut attributes = Vec::new();
    let mut datacontenttype = None;
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let bad = |why| CeError::Attribute {
            at: String::new(),
            name: shown(attr),
            why,
        };
        let text = value.to_str().map_err(|_| bad("not visible ASCII"))?;
        let decoded = percent_decode(text).ok_or_else(|| bad("bad percent-encoding"))?;
        if attr == "datacontenttype" {
            datacontenttype.get_or_insert(decoded);
            continue;
        }
        attributes.push((attr.to_string(), decoded));
    }
    if let Some(ct) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        datacontenttype = Some(ct.to_string());
    }
    let data = (!body.is_empty()).then(|| body.clone());
    finish(attributes, datacontenttype, data, "")
}

/// Structured mode: one JSON envelope; `data` kept as written.
fn from_structured(bytes: &[u8], at: &str) -> Result<CloudEvent, CeError> {
    let map: std::collections::BTreeMap<String, Box<RawValue>> = serde_json::from_slice(bytes)
        .map_err(|e| CeError::Json(format!("{at}{e} (expected a JSON object)")))?;
    let mut attributes = Vec::new();
    let mut datacontenttype = None;
    let mut data_raw: Option<&RawValue> = None;
    let mut data_b64 = None;
    for (name, raw) in &map {
        let bad = |why| CeError::Attribute {
            at: at.to_string(),
            name: shown(name),
            why,
        };
        match name.as_str() {
            "data" => {
                data_raw = Some(raw);
                continue;
            }
            "data_base64" => {
                let s: Option<String> =
                    serde_json::from_str(raw.get()).map_err(|_| bad("expected a string"))?;
                data_b64 = s;
                continue;
            }
            _ => {}
        }
        let value: Json = serde_json::from_str(raw.get()).map_err(|_| bad("not JSON"))?;
        let text = match value {
            Json::Null => continue,
            Json::String(s) => s,
            Json::Bool(b) => b.to_string(),
            Json::Number(n) => n.to_string(),
            _ => return Err(bad("expected a string, number or boolean")),
        };
        if name == "datacontenttype" {
            datacontenttype = Some(text);
        } else {
            attributes.push((name.clone(), text));
        }
    }
    let bad = |name: &str, why| CeError::Attribute {
        at: at.to_string(),
        name: name.to_string(),
        why,
    };
    let data = match (data_raw, data_b64) {
        (Some(_), Some(_)) => return Err(bad("data", "both `data` and `data_base64` are set")),
        (None, Some(b)) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|_| bad("data_base64", "not base64"))?,
        )),
        (Some(raw), None) if raw.get() == "null" => None,
        (Some(raw), None) => {
            let text_type = datacontenttype
                .as_deref()
                .is_some_and(|ct| !is_json_media_type(ct));
            match serde_json::from_str::<String>(raw.get()) {
                Ok(s) if text_type => Some(Bytes::from(s)),
                _ => Some(Bytes::copy_from_slice(raw.get().as_bytes())),
            }
        }
        (None, None) => None,
    };
    if data.is_some() && datacontenttype.is_none() && data_raw.is_some() {
        datacontenttype = Some("application/json".into());
    }
    finish(attributes, datacontenttype, data, at)
}

/// Checks the required attributes and orders them.
fn finish(
    mut attributes: Vec<(String, String)>,
    datacontenttype: Option<String>,
    data: Option<Bytes>,
    at: &str,
) -> Result<CloudEvent, CeError> {
    let bad = |name: &str, why| CeError::Attribute {
        at: at.to_string(),
        name: shown(name),
        why,
    };
    for (name, value) in &attributes {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(bad(name, "a name is lower-case letters and digits"));
        }
        if value.chars().any(char::is_control) {
            return Err(bad(name, "control characters are not allowed"));
        }
    }
    let get = |n: &str| attributes.iter().find(|(k, _)| k == n).map(|(_, v)| v);
    match get("specversion") {
        None => {
            return Err(CeError::Missing {
                at: at.into(),
                name: "specversion",
            })
        }
        Some(v) if v != SPEC_VERSION => return Err(CeError::SpecVersion { at: at.into() }),
        Some(_) => {}
    }
    for name in ["id", "source", "type"] {
        match get(name) {
            None => {
                return Err(CeError::Missing {
                    at: at.into(),
                    name,
                })
            }
            Some(v) if v.is_empty() => return Err(bad(name, "must not be empty")),
            Some(_) => {}
        }
    }
    if let Some(t) = get("time") {
        if time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_err() {
            return Err(bad("time", "not an RFC 3339 timestamp"));
        }
    }
    if datacontenttype
        .as_deref()
        .is_some_and(|c| c.chars().any(char::is_control))
    {
        return Err(bad("datacontenttype", "control characters are not allowed"));
    }
    let rank = |k: &str| match k {
        "specversion" => 0,
        "id" => 1,
        "source" => 2,
        "type" => 3,
        _ => 4,
    };
    attributes.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(a.0.cmp(&b.0)));
    attributes.dedup_by(|a, b| a.0 == b.0);
    Ok(CloudEvent {
        attributes,
        datacontenttype,
        data,
    })
}

/// A name from the sender as an error shows it: escaped, at most 40 characters.
fn shown(name: &str) -> String {
    name.escape_debug().take(40).collect()
}

/// The attributes of an outgoing event (`map.to.format: cloudevents...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// `id`: the idempotency key.
    pub id: String,
    /// `source`: a URI reference.
    pub source: String,
    /// `type`.
    pub event_type: String,
    /// `time`, RFC 3339: when the event was published.
    pub time: String,
    /// `subject`, when set.
    pub subject: Option<String>,
    /// Extension attributes (names checked at load).
    pub extensions: Vec<(String, String)>,
}

impl Outgoing {
    fn pairs(&self) -> Vec<(&str, &str)> {
        let mut v = vec![
            ("specversion", SPEC_VERSION),
            ("id", self.id.as_str()),
            ("source", self.source.as_str()),
            ("type", self.event_type.as_str()),
            ("time", self.time.as_str()),
        ];
        if let Some(s) = &self.subject {
            v.push(("subject", s.as_str()));
        }
        v.extend(
            self.extensions
                .iter()
                .map(|(k, val)| (k.as_str(), val.as_str())),
        );
        v
    }
}

/// Binary mode: the `ce-*` headers of an outgoing event (values percent-encoded); the body's
/// `Content-Type` is its `datacontenttype`.
pub fn binary_headers(e: &Outgoing) -> Vec<(String, String)> {
    e.pairs()
        .into_iter()
        .map(|(k, v)| (format!("ce-{k}"), percent_encode(v)))
        .collect()
}

/// Structured mode: the JSON envelope of an outgoing event whose data is `data` (a JSON text,
/// inserted as written) of media type `datacontenttype`.
pub fn structured_body(
    e: &Outgoing,
    datacontenttype: Option<&str>,
    data: Option<&[u8]>,
) -> Vec<u8> {
    let mut o = serde_json::Map::new();
    for (k, v) in e.pairs() {
        o.insert(k.to_string(), Json::String(v.to_string()));
    }
    let json_data = data.filter(|d| serde_json::from_slice::<&RawValue>(d).is_ok());
    match (data, json_data) {
        (Some(_), Some(_)) | (None, _) => {}
        (Some(d), None) => match std::str::from_utf8(d) {
            Ok(text) => {
                o.insert("data".into(), Json::String(text.to_string()));
            }
            Err(_) => {
                o.insert(
                    "data_base64".into(),
                    Json::String(base64::engine::general_purpose::STANDARD.encode(d)),
                );
            }
        },
    }
    if data.is_some() {
        let ct = datacontenttype.unwrap_or("application/json");
        o.insert("datacontenttype".into(), Json::String(ct.to_string()));
    }
    let mut out = serde_json::to_vec(&Json::Object(o)).unwrap_or_else(|_| b"{}".to_vec());
    if let Some(d) = json_data {
        // `{...}` -> `{...,"data":<d>}`: the data exactly as rendered.
        out.pop();
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(d);
        out.push(b'}');
    }
    out
}

/// Percent-encodes a header value as the HTTP binding prescribes: space, `"`, `%` and
/// everything outside printable ASCII, byte by byte of its UTF-8.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if ('\u{21}'..='\u{7e}').contains(&c) && c != '"' && c != '%' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Decodes a header value: a double-quoted string is unescaped first, then one round of
/// percent-decoding; `None` for a broken escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let t = s.trim();
    let unquoted;
    let t = if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        let mut u = String::new();
        let mut chars = t[1..t.len() - 1].chars();
        while let Some(c) = chars.next() {
            u.push(if c == '\\' { chars.next()? } else { c });
        }
        unquoted = u;
        unquoted.as_str()
    } else {
        t
    };
    let b = t.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = t.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const BINARY: [(&str, &str); 6] = [
        ("ce-specversion", "1.0"),
        ("ce-type", "com.example.someevent"),
        ("ce-time", "2018-04-05T03:56:24Z"),
        ("ce-id", "1234-1234-1234"),
        ("ce-source", "/mycontext/subcontext"),
        ("content-type", "application/json; charset=utf-8"),
    ];

    #[test]
    fn binary_mode() {
        let body = Bytes::from_static(b"{\"permitId\": \"RW-481\"}");
        let (mode, events) = parse(&headers(&BINARY), &body).unwrap();
        assert_eq!(mode, Mode::Binary);
        let e = &events[0];
        assert_eq!(
            e.attributes,
            vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), "1234-1234-1234".into()),
                ("source".into(), "/mycontext/subcontext".into()),
                ("type".into(), "com.example.someevent".into()),
                ("time".into(), "2018-04-05T03:56:24Z".into()),
            ]
        );
        assert_eq!(e.data.as_ref(), Some(&body));
        assert_eq!(
            e.datacontenttype.as_deref(),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(e.view()["data"]["permitId"], "RW-481");
        let h = e.headers();
        assert!(h.contains(&("ce-id".into(), "1234-1234-1234".into())));
        assert!(h.contains(&(
            "Content-Type".into(),
            "application/json;%20charset=utf-8".into()
        )));
    }

    #[test]
    fn binary_mode_decodes_header_values() {
        let mut pairs = BINARY.to_vec();
        pairs.push(("ce-subject", "Euro%20%E2%82%AC%20%F0%9F%98%80"));
        pairs.push(("ce-comment", "\"quoted \\\"old\\\" style\""));
        let (_, events) = parse(&headers(&pairs), &Bytes::new()).unwrap();
        let e = &events[0];
        assert_eq!(e.attr("subject"), Some("Euro \u{20ac} \u{1F600}"));
        assert_eq!(e.attr("comment"), Some("quoted \"old\" style"));
        assert_eq!(e.data, None);
        // Published again percent-encoded, as it arrived.
        assert!(e.headers().contains(&(
            "ce-subject".into(),
            "Euro%20%E2%82%AC%20%F0%9F%98%80".into()
        )));
        for bad in ["%C0%A0", "%zz", "%4"] {
            let mut p = BINARY.to_vec();
            p.push(("ce-subject", bad));
            assert!(
                matches!(
                    parse(&headers(&p), &Bytes::new()),
                    Err(CeError::Attribute { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn structured_and_batched_modes() {
        let one = br#"{"specversion":"1.0","type":"com.example.someevent","source":"/x","id":"A-1","time":"2018-04-05T17:31:00Z","comexampleextension1":"value","comexampleothervalue":5,"datacontenttype":"application/json","data":{ "n": 1.50 }}"#;
        let h = headers(&[(
            "content-type",
            "application/cloudevents+json; charset=UTF-8",
        )]);
        let (mode, events) = parse(&h, &Bytes::from_static(one)).unwrap();
        assert_eq!(mode, Mode::Structured);
        let e = &events[0];
        assert_eq!(
            e.data.as_deref(),
            Some(&b"{ \"n\": 1.50 }"[..]),
            "data as written"
        );
        assert_eq!(e.attr("comexampleothervalue"), Some("5"));
        assert_eq!(e.id(), "A-1");
        let text = br#"{"specversion":"1.0","type":"t","source":"s","id":"2","datacontenttype":"text/xml","data":"<much wow=\"xml\"/>"}"#;
        let b64 = br#"{"specversion":"1.0","type":"t","source":"s","id":"3","datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#;
        let batch = format!(
            "[{}, {}, {}]",
            String::from_utf8_lossy(one),
            String::from_utf8_lossy(text),
            String::from_utf8_lossy(b64)
        );
        let h = headers(&[("content-type", BATCH)]);
        let (mode, events) = parse(&h, &Bytes::from(batch)).unwrap();
        assert_eq!(mode, Mode::Batch);
        assert_eq!(events.len(), 3);
        assert_eq!(events[1].data.as_deref(), Some(&b"<much wow=\"xml\"/>"[..]));
        assert_eq!(events[1].view()["data"], "<much wow=\"xml\"/>");
        assert_eq!(events[2].data.as_deref(), Some(&[0u8, 1, 2][..]));
        assert_eq!(events[2].view()["data_base64"], "AAEC");
        let (_, none) = parse(&h, &Bytes::from_static(b"[]")).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn what_is_refused() {
        let s = |body: &'static str| {
            parse(
                &headers(&[("content-type", STRUCTURED)]),
                &Bytes::from_static(body.as_bytes()),
            )
            .map(|_| ())
        };
        let cases: Vec<(&str, Result<(), CeError>)> = vec![
            (
                r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#,
                Err(CeError::SpecVersion { at: String::new() }),
            ),
            (
                r#"{"specversion":"1.0","source":"s","type":"t"}"#,
                Err(CeError::Missing {
                    at: String::new(),
                    name: "id",
                }),
            ),
            (
                r#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#,
                Err(CeError::Attribute {
                    at: String::new(),
                    name: "id".into(),
                    why: "must not be empty",
                }),
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","time":"yesterday"}"#,
                Err(CeError::Attribute {
                    at: String::new(),
                    name: "time".into(),
                    why: "not an RFC 3339 timestamp",
                }),
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","Bad-Name":"x"}"#,
                Err(CeError::Attribute {
                    at: String::new(),
                    name: "Bad-Name".into(),
                    why: "a name is lower-case letters and digits",
                }),
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}"#,
                Err(CeError::Attribute {
                    at: String::new(),
                    name: "data".into(),
                    why: "both `data` and `data_base64` are set",
                }),
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#,
                Ok(()),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(s(body), want, "{body}");
        }
        assert!(matches!(s("[1]"), Err(CeError::Json(_))));
        let injected =
            s(r#"{"specversion":"1.0","id":"1","source":"s","type":"t","a\nFAKE LOG LINE":"x"}"#);
        assert_eq!(
            injected.unwrap_err().to_string(),
            "attribute `a\\nFAKE LOG LINE`: a name is lower-case letters and digits",
            "what the sender wrote is shown escaped"
        );
        let plain = headers(&[("content-type", "application/json")]);
        assert_eq!(
            parse(&plain, &Bytes::from_static(b"{}")),
            Err(CeError::NotCloudEvent)
        );
        let batch = headers(&[("content-type", BATCH)]);
        assert!(matches!(
            parse(&batch, &Bytes::from_static(br#"[{"specversion":"1.0"}]"#)),
            Err(CeError::Missing { at, .. }) if at == "entry 0: "
        ));
    }

    fn outgoing() -> Outgoing {
        Outgoing {
            id: "k1".into(),
            source: "urn:hms-sync:ddot.gis.outbound.v1".into(),
            event_type: "permit.updated".into(),
            time: "2024-05-10T08:00:00Z".into(),
            subject: Some("RW 481".into()),
            extensions: vec![("agency".into(), "DDOT".into())],
        }
    }

    #[test]
    fn outgoing_binary_headers() {
        assert_eq!(
            binary_headers(&outgoing()),
            vec![
                ("ce-specversion".to_string(), "1.0".to_string()),
                ("ce-id".into(), "k1".into()),
                (
                    "ce-source".into(),
                    "urn:hms-sync:ddot.gis.outbound.v1".into()
                ),
                ("ce-type".into(), "permit.updated".into()),
                ("ce-time".into(), "2024-05-10T08:00:00Z".into()),
                ("ce-subject".into(), "RW%20481".into()),
                ("ce-agency".into(), "DDOT".into()),
            ]
        );
    }

    #[test]
    fn outgoing_structured_envelope_parses_back() {
        let data = br#"{"start_date":"2024-05-10","n":1.50}"#;
        let body = structured_body(&outgoing(), Some("application/json"), Some(data));
        let h = headers(&[("content-type", STRUCTURED)]);
        let (_, events) = parse(&h, &Bytes::from(body.clone())).unwrap();
        let e = &events[0];
        assert_eq!(
            e.data.as_deref(),
            Some(&data[..]),
            "data exactly as rendered"
        );
        assert_eq!(e.attr("subject"), Some("RW 481"));
        assert_eq!(e.attr("agency"), Some("DDOT"));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        let no_data = structured_body(&outgoing(), None, None);
        let v: Json = serde_json::from_slice(&no_data).unwrap();
        assert!(v.get("data").is_none() && v.get("datacontenttype").is_none());
        let text = structured_body(&outgoing(), Some("text/plain"), Some(b"a=b&c"));
        let v: Json = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["data"], "a=b&c");
    }

    #[test]
    fn percent_encoding_round_trips() {
        for s in ["plain", "Euro \u{20ac} \u{1F600}", "100% \"sure\"", ""] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(
            percent_encode("Euro \u{20ac} \u{1F600}"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("\u{20ac}"));
    }
}
