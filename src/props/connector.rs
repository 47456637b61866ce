//! Connector parsing never panics: any text, YAML-like token soup, and connector-shaped
//! documents with hostile values are either a connector or problems at positions in the file;
//! a connector that compiles renders any event without panicking.

use std::path::Path;

use proptest::prelude::*;

use crate::connector::{parse_with, AnyConnector};
use crate::template::Secrets;

fn no_files(_: &Path) -> std::io::Result<String> {
    Err(std::io::Error::other("no files in property tests"))
}

/// Parses `text`; problems must sit inside the file (or just past its end).
fn check(text: &str) -> Option<AnyConnector> {
    match parse_with("p.yaml", text, &no_files) {
        Ok(c) => Some(c),
        Err(problems) => {
            assert!(!problems.0.is_empty(), "an error without a problem");
            // YAML's line breaks: LF, CR (and CR LF), NEL, LS, PS.
            let lines = text
                .replace("\r\n", "\n")
                .split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
                .count();
            for p in &problems.0 {
                assert!(p.pos.line >= 1 && p.pos.col >= 1, "{p}");
                assert!(p.pos.line <= lines + 1, "{p} (the file has {lines} lines)");
                assert!(p.to_string().starts_with("p.yaml:"), "{p}");
            }
            None
        }
    }
}

/// Pieces of YAML and of connectors, glued at random.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "id: ",
            "type: ",
            "outbound",
            "inbound",
            "trigger:",
            "topic: ",
            "filter: ",
            "orderingKey: ",
            "map:",
            "to:",
            "url: ",
            "method: ",
            "PUT",
            "PATCH",
            "headers:",
            "body:",
            "encoding: ",
            "form",
            "json",
            "retry:",
            "max: ",
            "backoffMs: ",
            "rateLimit: ",
            "perSecond: ",
            "timeoutMs: ",
            "source:",
            "webhookUrl: ",
            "signature:",
            "scheme: ",
            "stripe",
            "publish:",
            "secret: ",
            "lookup:",
            "auth:",
            "\n",
            "\n  ",
            "\n    ",
            "  ",
            "- ",
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "'",
            "&a ",
            "*a",
            "!!str ",
            "!!binary ",
            "{{ x }}",
            "{{",
            "}}",
            "${X}",
            "# c",
            "|",
            ">",
            "?",
            "~",
            "null",
            "-1",
            "1e999",
            "0x10",
            ".inf",
            "18446744073709551616",
            "<<: *a",
            "http://127.0.0.1:9/{id}",
            "\t",
            "\u{feff}",
            "\u{0}",
            "é",
            "%",
        ])
        .prop_map(String::from),
        "[a-z0-9.]{1,8}".prop_map(String::from),
    ]
}

/// A YAML scalar holding any text (JSON string syntax is YAML double-quoted syntax).
fn quoted() -> impl Strategy<Value = String> {
    super::text().prop_map(|s| serde_json::to_string(&s).unwrap_or_default())
}

/// A connector document of the right shape with hostile values in every slot.
fn connector_doc() -> impl Strategy<Value = String> {
    (
        (quoted(), quoted(), quoted(), quoted()),
        (quoted(), quoted(), quoted(), quoted()),
        (any::<i64>(), any::<i64>(), any::<f64>(), any::<u64>()),
        prop::sample::select(vec!["PUT", "PATCH", "POST", "GET", "DELETE", "put", "BREW"]),
        prop::sample::select(vec!["json", "form", "xml"]),
    )
        .prop_map(
            |((id, topic, filter, key), (url_tail, header, leaf, form_leaf), (max, backoff, per_second, timeout), method, encoding)| {
                format!(
                    "id: {id}\ntype: outbound\ntrigger:\n  topic: {topic}\n  filter: {filter}\n  orderingKey: {key}\nmap:\n  to:\n    url: \"http://127.0.0.1:9/x/{{id}}/\"{url_tail}\n    method: {method}\n    headers: {{ X-A: {header} }}\n    body:\n      a: {leaf}\n      b: [{form_leaf}, 1, null]\n    encoding: {encoding}\nretry:\n  max: {max}\n  backoffMs: {backoff}\nrateLimit: {{ perSecond: {per_second} }}\ntimeoutMs: {timeout}\n"
                )
            },
        )
}

/// A well-formed connector with templates from `pieces` in the URL, a header and the body.
fn valid_doc() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "{{ a }}",
        "{{ b.c }}",
        "{{ l.0 }}",
        "{{ a | sql_string }}",
        "{{ missing }}",
        "x",
        "-",
        " ",
        "{{ n }}",
    ]);
    (
        prop::collection::vec(piece.clone(), 1..4),
        prop::collection::vec(piece, 1..4),
    )
        .prop_map(|(h, b)| {
            format!(
                "id: props.valid.v1\ntype: outbound\ntrigger:\n  topic: t\nmap:\n  to:\n    url: \"http://127.0.0.1:9/x/{{id}}\"\n    method: PUT\n    headers: {{ X-A: {} }}\n    body:\n      a: {}\n",
                serde_json::to_string(&h.concat()).unwrap_or_default(),
                serde_json::to_string(&b.concat()).unwrap_or_default(),
            )
        })
}

proptest! {
    #[test]
    fn any_text_is_a_connector_or_problems_with_positions(text in "\\PC{0,300}") {
        check(&text);
    }

    #[test]
    fn yaml_token_soup_never_panics(tokens in prop::collection::vec(token(), 0..60)) {
        check(&tokens.concat());
    }

    #[test]
    fn connector_shaped_documents_with_hostile_values(doc in connector_doc(), event in super::json()) {
        if let Some(AnyConnector::Outbound(c)) = check(&doc) {
            let _ = crate::request::build(&c, &event, Some("k"), Secrets::Masked);
        }
    }

    #[test]
    fn a_compiled_connector_renders_any_event(doc in valid_doc(), event in super::json(), id in super::text()) {
        let c = match check(&doc) {
            Some(AnyConnector::Outbound(c)) => c,
            other => panic!("{doc} did not compile: {}", other.is_some()),
        };
        let mut event = event;
        if let Some(o) = event.as_object_mut() {
            o.insert("id".into(), serde_json::Value::String(id));
        }
        if let Ok(r) = crate::request::build(&c, &event, Some("k"), Secrets::Masked) {
            let url = url::Url::parse(&r.url).expect("a rendered URL parses");
            prop_assert_eq!(url.host_str(), Some("127.0.0.1"));
            for (_, v) in &r.headers {
                prop_assert!(!v.as_bytes().iter().any(|b| *b == b'\r' || *b == b'\n'));
            }
        }
    }
}
