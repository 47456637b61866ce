//! Template rendering holds values as data, whatever they are: a JSON body is valid JSON that
//! holds the literal values (a single `{{ v }}` keeps the value itself), a URL value never
//! leaves its path segment, a header never gains CR or LF, a form body decodes to the values.

use std::sync::LazyLock;

use percent_encoding::percent_decode_str;
use proptest::prelude::*;
use serde_json::{json, Value as Json};

use crate::connector::{parse, AnyConnector, Connector};
use crate::request::build;
use crate::template::Secrets;

fn connector(yaml: &str) -> Connector {
    match parse("props.yaml", yaml) {
        Ok(AnyConnector::Outbound(c)) => *c,
        Ok(_) => panic!("not outbound"),
        Err(p) => panic!("{p}"),
    }
}

static JSON_BODY: LazyLock<Connector> = LazyLock::new(|| {
    connector(
        "id: props.render.v1\ntype: outbound\ntrigger:\n  topic: t\nmap:\n  to:\n    url: \"http://127.0.0.1:9/items/{id}/sub?fixed=1\"\n    method: PUT\n    headers: { X-Value: \"v={{ v }}\", Authorization: \"Bearer ${PROPS_TOKEN}\" }\n    body:\n      exact: \"{{ v }}\"\n      text: \"pre {{ s }} post\"\n      nested: { deep: [\"{{ v }}\"] }\n      literal: 5\n",
    )
});

static FORM_BODY: LazyLock<Connector> = LazyLock::new(|| {
    connector(
        "id: props.form.v1\ntype: outbound\ntrigger:\n  topic: t\nmap:\n  to:\n    url: \"http://127.0.0.1:9/charges\"\n    method: POST\n    body:\n      amount: \"{{ s }}\"\n      note: \"x{{ s }}x\"\n    encoding: form\n",
    )
});

static EXPR_URL: LazyLock<Connector> = LazyLock::new(|| {
    connector(
        "id: props.url.v1\ntype: outbound\ntrigger:\n  topic: t\nmap:\n  to:\n    url: \"http://127.0.0.1:9/a/{{ s }}/b\"\n    method: GET\n",
    )
});

/// The one segment of `url` after `/items/` (or `/a/`), decoded, and the URL's other parts.
fn segment(url: &str, before: &str, after: &str) -> (String, url::Url) {
    let parsed = url::Url::parse(url).expect("the URL parses");
    let segs: Vec<&str> = parsed.path_segments().expect("a path").collect();
    assert_eq!(
        segs.len(),
        3,
        "{url}: the value made more or fewer segments"
    );
    assert_eq!(segs[0], before, "{url}");
    assert_eq!(segs[2], after, "{url}");
    let decoded = percent_decode_str(segs[1])
        .decode_utf8()
        .expect("UTF-8")
        .into_owned();
    (decoded, parsed)
}

/// What a scalar becomes in text (a URL segment, a header).
fn text_of(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

proptest! {
    #[test]
    fn a_json_body_is_valid_json_holding_the_literal_values(v in super::json(), s in super::text()) {
        let event = json!({"id": "x", "v": v, "s": s});
        let r = build(&JSON_BODY, &event, Some("k"), Secrets::Masked);
        // A header may refuse the value (CR/LF, control characters): then nothing is sent.
        let Ok(r) = r else { return Ok(()) };
        let body: Json = serde_json::from_slice(r.body.as_deref().unwrap_or_default())
            .expect("the body is valid JSON");
        prop_assert_eq!(&body["exact"], &v);
        prop_assert_eq!(&body["nested"]["deep"][0], &v);
        prop_assert_eq!(&body["text"], &Json::String(format!("pre {s} post")));
        prop_assert_eq!(&body["literal"], &json!(5));
        prop_assert_eq!(body.as_object().map(|o| o.len()), Some(4), "no field injected");
    }

    #[test]
    fn a_url_value_never_leaves_its_path_segment(id in prop_oneof![
        super::text().prop_map(Json::String),
        any::<i64>().prop_map(Json::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Json::from),
        any::<bool>().prop_map(Json::Bool),
    ]) {
        let event = json!({"id": id, "v": 1, "s": ""});
        let r = build(&JSON_BODY, &event, Some("k"), Secrets::Masked);
        if matches!(text_of(&id).as_deref(), Some(".") | Some("..")) {
            // A dot segment is no data: refused (the event is parked), never resolved.
            prop_assert!(r.is_err());
            return Ok(());
        }
        let r = r.expect("renders");
        let (decoded, url) = segment(&r.url, "items", "sub");
        prop_assert_eq!(Some(decoded), text_of(&id));
        prop_assert_eq!(url.host_str(), Some("127.0.0.1"));
        prop_assert_eq!(url.port(), Some(9));
        prop_assert_eq!(url.query(), Some("fixed=1"));
        prop_assert_eq!(url.fragment(), None);
        prop_assert_eq!(url.username(), "");
    }

    #[test]
    fn a_url_expression_stays_in_its_segment_too(s in super::text()) {
        let event = json!({"s": s});
        let r = build(&EXPR_URL, &event, None, Secrets::Masked);
        if s == "." || s == ".." {
            prop_assert!(r.is_err());
            return Ok(());
        }
        let r = r.expect("renders");
        let (decoded, url) = segment(&r.url, "a", "b");
        prop_assert_eq!(decoded, s);
        prop_assert_eq!(url.host_str(), Some("127.0.0.1"));
        prop_assert_eq!(url.query(), None);
    }

    #[test]
    fn a_header_never_gains_cr_or_lf(v in super::json()) {
        let event = json!({"id": "x", "v": v, "s": ""});
        match build(&JSON_BODY, &event, Some("k"), Secrets::Masked) {
            Ok(r) => {
                for (name, value) in &r.headers {
                    prop_assert!(
                        !value.as_bytes().iter().any(|b| *b == b'\r' || *b == b'\n'),
                        "{name}: {value:?}"
                    );
                }
                let x = r
                    .headers
                    .iter()
                    .find(|(n, _)| n == "x-value")
                    .and_then(|(_, v)| v.to_str().ok().map(str::to_string));
                match (&v, text_of(&v)) {
                    // Floats in `{{ }}`: the same number (digits may be written out).
                    (Json::Number(n), _) if n.is_f64() => {
                        let shown = x.as_deref().and_then(|x| x.strip_prefix("v=")).map(str::parse::<f64>);
                        prop_assert_eq!(shown.and_then(Result::ok), n.as_f64());
                    }
                    (_, Some(text)) if text.is_ascii() => {
                        prop_assert_eq!(x, Some(format!("v={text}")));
                    }
                    _ => {}
                }
                let auth = r.headers.iter().find(|(n, _)| n == "authorization").map(|(_, v)| v.as_bytes().to_vec());
                prop_assert_eq!(auth, Some(b"Bearer ***".to_vec()), "a value never reaches a secret");
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(!text.contains('\r') && !text.contains('\n'), "{text:?}");
            }
        }
    }

    #[test]
    fn a_form_body_decodes_to_the_values(s in super::text()) {
        let event = json!({"s": s});
        let r = build(&FORM_BODY, &event, None, Secrets::Masked).expect("renders");
        let body = r.body.unwrap_or_default();
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        prop_assert_eq!(
            fields,
            vec![("amount".to_string(), s.clone()), ("note".to_string(), format!("x{s}x"))]
        );
    }
}
