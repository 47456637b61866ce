//! Property tests (proptest) of the pure core against any input: connector parsing, template
//! rendering, CEL filters, webhook signatures, Retry-After and the decision table.
//!
//! CI runs proptest's default number of cases; `scripts/fuzz.sh` runs many more
//! (`PROPTEST_CASES`). Failures found are kept as regressions in `proptest-regressions/props/` (committed).

mod connector;
mod filter;
mod render;
mod retry;
mod signature;

use proptest::prelude::*;
use serde_json::Value as Json;

/// Any JSON value: scalars of every kind (long, unicode, control characters, extreme numbers),
/// lists and objects nested a few levels.
pub fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Json::from),
        text().prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// Text a hostile sender would try: any unicode, and the characters that mean something to
/// JSON, URLs, headers, YAML and templates.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            prop_oneof![
                Just("\r\n".to_string()),
                Just("\n".to_string()),
                Just("\r".to_string()),
                Just("\u{0}".to_string()),
                Just("/".to_string()),
                Just("../".to_string()),
                Just("%2F".to_string()),
                Just("?".to_string()),
                Just("#".to_string()),
                Just("&".to_string()),
                Just("=".to_string()),
                Just("@".to_string()),
                Just(":".to_string()),
                Just("\"".to_string()),
                Just("\\".to_string()),
                Just("{{ x }}".to_string()),
                Just("${HOME}".to_string()),
                Just("{id}".to_string()),
                Just("\u{1F6A7}".to_string()),
                Just(" ".to_string()),
                "[a-z0-9]{1,4}".prop_map(String::from),
            ],
            0..12
        )
        .prop_map(|parts| parts.concat()),
    ]
}

/// An object key: plain names mostly, sometimes anything.
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-zA-Z0-9_]{0,6}".prop_map(String::from),
        1 => any::<String>(),
    ]
}
