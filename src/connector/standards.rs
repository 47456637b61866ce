//! Validation of an outbound connector's `map.to.format` (CloudEvents), `map.to.cloudevents`
//! and `map.to.sign` (signed requests).

use super::model::{CloudEventsSpec, Format, Sign};
use super::problems::Report;
use super::raw::RawTo;
use super::signing::{compile_scheme, compile_secrets};
use super::yaml_pos::Positions;
use crate::cloudevents::RESERVED;
use crate::signature::Scheme;
use crate::template::{Flavor, StringTemplate};
use crate::wire::{Encoding, HeaderName};

/// Schemes an outgoing request may be signed with.
const OUTBOUND_SCHEMES: [&str; 2] = ["standard-webhooks", "hmac-sha256"];

/// `map.to.format` and `map.to.cloudevents`. `headers` are the compiled `map.to.headers`.
pub fn compile_format(
    to: &RawTo,
    id: &str,
    encoding: Encoding,
    headers: &[(HeaderName, StringTemplate)],
    pos: &Positions,
    r: &mut Report<'_>,
) -> Format {
    let structured = match to.format.as_deref() {
        None => {
            if to.cloudevents.is_some() {
                r.at(
                    pos.key("map.to.cloudevents"),
                    "`cloudevents` needs `format: cloudevents` or `format: cloudevents-structured`",
                );
            }
            return Format::Plain;
        }
        Some("cloudevents") => false,
        Some("cloudevents-structured") => true,
        Some(other) => {
            r.at(
                pos.value("map.to.format"),
                format!("format `{other}`: expected `cloudevents` (binary mode) or `cloudevents-structured`"),
            );
            return Format::Plain;
        }
    };
    if structured && encoding == Encoding::Form {
        r.at(
            pos.value("map.to.encoding"),
            "`cloudevents-structured` carries the body as JSON `data`: use `encoding: json`, or `format: cloudevents` (binary mode) for a form body",
        );
    }
    for (name, _) in headers {
        if name.as_str().starts_with("ce-") {
            r.at(
                pos.key(&format!("map.to.headers.{name}")),
                format!("header `{name}` is written by `format: cloudevents` (set attributes under `map.to.cloudevents`)"),
            );
        }
    }
    let raw = to.cloudevents.as_ref();
    let attribute = |r: &mut Report<'_>, text: &str, key: &str| -> Option<StringTemplate> {
        let at = pos.value(&format!("map.to.cloudevents.{key}"));
        let t = r.template(text, Flavor::Text, at)?;
        if t.secrets().next().is_some() {
            r.at(
                at,
                format!("`{key}` cannot use `${{VAR}}`: CloudEvents attributes are not secret"),
            );
            return None;
        }
        Some(t)
    };
    let default_source = format!("urn:hms-sync:{id}");
    let source = raw
        .and_then(|c| c.source.as_deref())
        .and_then(|s| attribute(r, s, "source"))
        .or_else(|| StringTemplate::compile(&default_source, Flavor::Text).ok());
    let event_type = raw
        .and_then(|c| c.event_type.as_deref())
        .and_then(|s| attribute(r, s, "type"));
    let subject = raw
        .and_then(|c| c.subject.as_deref())
        .and_then(|s| attribute(r, s, "subject"));
    let mut extensions = Vec::new();
    for (name, value) in raw.map(|c| &c.extensions).into_iter().flatten() {
        let key = format!("extensions.{name}");
        let valid = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid || RESERVED.contains(&name.as_str()) {
            r.at(
                pos.key(&format!("map.to.cloudevents.{key}")),
                format!("extension `{name}`: a name of at most 20 lower-case letters and digits, not one of {}", RESERVED.join(", ")),
            );
            continue;
        }
        if let Some(t) = attribute(r, value, &key) {
            extensions.push((name.clone(), t));
        }
    }
    let Some(source) = source else {
        return Format::Plain;
    };
    let spec = CloudEventsSpec {
        source,
        event_type,
        subject,
        extensions,
    };
    if structured {
        Format::CloudEventsStructured(spec)
    } else {
        Format::CloudEvents(spec)
    }
}

/// `map.to.sign`. `headers` are the compiled `map.to.headers` (they cannot set what the
/// signature writes).
pub fn compile_sign(
    to: &RawTo,
    headers: &[(HeaderName, StringTemplate)],
    pos: &Positions,
    r: &mut Report<'_>,
) -> Option<Sign> {
    let raw = to.sign.as_ref()?;
    let at = "map.to.sign";
    let scheme = compile_scheme(raw, at, &OUTBOUND_SCHEMES, pos, r);
    let secrets = compile_secrets(raw.secret.as_deref(), raw.secrets.as_deref(), at, pos, r);
    let scheme = scheme?;
    if matches!(scheme, Scheme::HmacSha256(_)) && secrets.len() > 1 {
        r.at(
            pos.key(&format!("{at}.secrets")),
            "hmac-sha256 carries one signature: give one `secret`",
        );
    }
    let written: Vec<String> = match &scheme {
        Scheme::HmacSha256(spec) => vec![spec.header.clone()],
        _ => ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .map(String::from)
            .to_vec(),
    };
    for (name, _) in headers {
        if written.iter().any(|w| w == name.as_str()) {
            r.at(
                pos.key(&format!("map.to.headers.{name}")),
                format!("header `{name}` is written by `map.to.sign`"),
            );
        }
    }
    Some(Sign { scheme, secrets })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::connector::{parse, AnyConnector, Connector, Format};
    use crate::request::{self, EventOrigin, Request};
    use crate::template::Secrets;

    fn yaml(to_extra: &str) -> String {
        format!(
            "id: partner.out\ntype: outbound\ntrigger: {{ topic: permit.updated }}\nmap:\n  to:\n    url: https://partner.example/hooks\n    method: POST\n    body: {{ permitId: \"{{{{ permitId }}}}\" }}\n{to_extra}"
        )
    }

    fn outbound(text: &str) -> Connector {
        match parse("c.yaml", text) {
            Ok(AnyConnector::Outbound(c)) => *c,
            other => panic!("{other:?}"),
        }
    }

    /// The request `c` makes of `{"permitId": "RW-481"}` published on `permit.updated`
    /// (key `k1`), as a CloudEvent.
    fn permit_cloud_event(c: &Connector) -> Request {
        let ev = json!({"permitId": "RW-481"});
        let mut r = request::build(c, &ev, Some("k1"), Secrets::Masked).unwrap();
        let origin = EventOrigin {
            topic: "permit.updated",
            time: "2024-05-10T08:00:00Z",
        };
        request::cloud_event(c, &mut r, &ev, "k1", origin).unwrap();
        r
    }

    fn problems(text: &str) -> String {
        match parse("c.yaml", text) {
            Err(p) => p.to_string(),
            Ok(_) => String::new(),
        }
    }

    #[test]
    fn what_is_refused_names_its_place() {
        let cases = [
            (
                "    sign: { scheme: stripe, secret: \"${S}\" }\n",
                "c.yaml:9:21: scheme `stripe`: expected one of standard-webhooks, hmac-sha256",
            ),
            (
                "    sign: { scheme: standard-webhooks, secret: whsec_abc }\n",
                "c.yaml:9:48: a secret is read from the environment",
            ),
            (
                "    sign: { scheme: hmac-sha256, secret: \"${S}\" }\n",
                "c.yaml:9:5: scheme `hmac-sha256` needs `header`",
            ),
            (
                "    sign: { scheme: standard-webhooks, secret: \"${S}\", prefix: x }\n",
                "`prefix` applies to scheme `hmac-sha256` only",
            ),
            (
                "    headers: { webhook-id: x }\n    sign: { scheme: standard-webhooks, secret: \"${S}\" }\n",
                "c.yaml:9:16: header `webhook-id` is written by `map.to.sign`",
            ),
            (
                "    format: cloudevent\n",
                "c.yaml:9:13: format `cloudevent`: expected `cloudevents` (binary mode) or `cloudevents-structured`",
            ),
            (
                "    cloudevents: { source: x }\n",
                "`cloudevents` needs `format: cloudevents`",
            ),
            (
                "    format: cloudevents-structured\n    encoding: form\n",
                "use `encoding: json`",
            ),
            (
                "    format: cloudevents\n    headers: { ce-id: x }\n",
                "header `ce-id` is written by `format: cloudevents`",
            ),
            (
                "    format: cloudevents\n    cloudevents: { extensions: { Region: x, time: y } }\n",
                "extension `Region`",
            ),
            (
                "    format: cloudevents\n    cloudevents: { source: \"${SRC}\" }\n",
                "`source` cannot use `${VAR}`",
            ),
            (
                "    format: cloudevents\n    cloudevents: { sauce: x }\n",
                "unknown key `sauce` in `map.to.cloudevents` (did you mean `source`?)",
            ),
        ];
        for (extra, want) in cases {
            let got = problems(&yaml(extra));
            assert!(got.contains(want), "{extra}\n got: {got}\nwant: {want}");
        }
        let both = problems(&yaml(
            "    format: cloudevents\n    cloudevents: { extensions: { Region: x, time: y } }\n",
        ));
        assert!(both.contains("extension `time`"), "{both}");
    }

    #[test]
    fn inbound_cloudevents_keys() {
        let inbound = |source_extra: &str| {
            format!(
                "id: ce.in\ntype: inbound\nsource:\n  webhookUrl: /webhooks/ce\n{source_extra}  signature: {{ scheme: standard-webhooks, secret: \"${{S}}\" }}\npublish: {{ topic: ce.in }}\n"
            )
        };
        let cases = [
            ("  format: cloudevent\n", "c.yaml:5:11: format `cloudevent`: expected `json` (default) or `cloudevents`"),
            ("  allowedRate: 10\n", "c.yaml:5:3: `allowedRate` belongs to the CloudEvents handshake: it needs `format: cloudevents`"),
            ("  format: cloudevents\n  allowedRate: 0\n", "c.yaml:6:16: allowedRate is requests per minute: above 0"),
            ("  format: cloudevents\n  allowedOrigins: [\"a b\"]\n", "origin `a b`"),
        ];
        for (extra, want) in cases {
            let got = problems(&inbound(extra));
            assert!(got.contains(want), "{extra}\n got: {got}\nwant: {want}");
        }
        let ok =
            "  format: cloudevents\n  allowedOrigins: [Events.Example.org]\n  allowedRate: 120\n";
        match parse("c.yaml", &inbound(ok)) {
            Ok(AnyConnector::Inbound(c)) => assert_eq!(
                c.format,
                crate::connector::InboundFormat::CloudEvents {
                    allowed_origins: Some(vec!["events.example.org".into()]),
                    allowed_rate: Some(120),
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_binary_cloudevent_request() {
        let c = outbound(&yaml(
            "    format: cloudevents\n    cloudevents:\n      subject: \"{{ permitId }}\"\n      extensions: { agency: DDOT }\n",
        ));
        assert!(matches!(c.target.format, Format::CloudEvents(_)));
        let r = permit_cloud_event(&c);
        assert_eq!(
            r.to_text(),
            "POST https://partner.example/hooks\n\
             Content-Type: application/json\n\
             Idempotency-Key: k1\n\
             Ce-Specversion: 1.0\n\
             Ce-Id: k1\n\
             Ce-Source: urn:hms-sync:partner.out\n\
             Ce-Type: permit.updated\n\
             Ce-Time: 2024-05-10T08:00:00Z\n\
             Ce-Subject: RW-481\n\
             Ce-Agency: DDOT\n\
             \n\
             {\"permitId\":\"RW-481\"}\n"
        );
    }

    #[test]
    fn a_structured_cloudevent_request_signed() {
        let c = outbound(&yaml(
            "    format: cloudevents-structured\n    cloudevents: { source: /ddot/permits, type: gov.ddot.permit.updated }\n    sign: { scheme: standard-webhooks, secret: \"${HMS_TEST_SIGN_SECRET}\" }\n",
        ));
        let mut r = permit_cloud_event(&c);
        let body: serde_json::Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"specversion": "1.0", "id": "k1", "source": "/ddot/permits",
                   "type": "gov.ddot.permit.updated", "time": "2024-05-10T08:00:00Z",
                   "datacontenttype": "application/json", "data": {"permitId": "RW-481"}})
        );
        let sign = c.target.sign.as_ref().unwrap();
        let mut shown = r.clone();
        request::sign_masked(sign, &mut shown, "k1").unwrap();
        let text = shown.to_text();
        assert!(text.contains("Content-Type: application/cloudevents+json; charset=utf-8\n"));
        assert!(text.contains("Webhook-Id: k1\nWebhook-Timestamp: <unix time at send>\nWebhook-Signature: v1,***\n"), "{text}");
        // Unset, then malformed, then usable: errors name the variable, never a value.
        std::env::remove_var("HMS_TEST_SIGN_SECRET");
        let e = request::sign(sign, &mut r.clone(), "k1", 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable `HMS_TEST_SIGN_SECRET` is not set"
        );
        std::env::set_var("HMS_TEST_SIGN_SECRET", "not-base64!");
        let e = request::sign(sign, &mut r.clone(), "k1", 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("`${HMS_TEST_SIGN_SECRET}` is not a Standard Webhooks secret"),
            "{e}"
        );
        assert!(!e.to_string().contains("not-base64!"));
        std::env::set_var(
            "HMS_TEST_SIGN_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        request::sign(sign, &mut r, "k1", 1_614_265_330).unwrap();
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert!(headers.contains(&("webhook-id", "k1")));
        assert!(headers.contains(&("webhook-timestamp", "1614265330")));
        std::env::remove_var("HMS_TEST_SIGN_SECRET");
    }

    #[test]
    fn an_hmac_signed_request() {
        let c = outbound(&yaml(
            "    sign: { scheme: hmac-sha256, secret: \"${HMS_TEST_HMAC}\", header: X-Partner-Signature, prefix: \"sha256=\" }\n",
        ));
        std::env::set_var("HMS_TEST_HMAC", "s3cret");
        let mut r = request::build(&c, &json!({"permitId": "1"}), Some("k"), Secrets::Env).unwrap();
        request::sign(c.target.sign.as_ref().unwrap(), &mut r, "k", 0).unwrap();
        let body = r.body.clone().unwrap();
        let want = format!(
            "sha256={}",
            crate::signature::sign::hmac_sha256(
                "s3cret",
                &body,
                crate::signature::SigEncoding::Hex
            )
        );
        let got = r
            .headers
            .iter()
            .find(|(k, _)| k == "x-partner-signature")
            .unwrap();
        assert_eq!(got.1.to_str().unwrap(), want);
        std::env::remove_var("HMS_TEST_HMAC");
    }

    /// The `hmac-sha256` signature, checked without the project's own helpers: RFC 4231's
    /// test case 2 through [`crate::signature::sign`], then the connector's request against
    /// the `hmac` and `sha2` crates called directly over the exact body bytes. Only the body
    /// is signed: the message id and the timestamp change nothing.
    #[test]
    fn an_hmac_signature_matches_an_independent_computation() {
        use base64::Engine as _;
        use hmac::{Hmac, Mac};

        use crate::signature::{self, HmacSpec, Scheme, SigEncoding};

        // RFC 4231, test case 2: HMAC-SHA-256 of "what do ya want for nothing?" under "Jefe".
        const KEY: &[u8] = b"Jefe";
        const RFC_DATA: &[u8] = b"what do ya want for nothing?";
        const RFC_HEX: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        const RFC_B64: &str = "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=";
        let spec = |encoding: SigEncoding, prefix: &str| {
            Scheme::HmacSha256(HmacSpec {
                header: "x-partner-signature".into(),
                encoding,
                prefix: prefix.into(),
            })
        };
        let header = |value: String| vec![("x-partner-signature".to_string(), value)];
        for (id, t) in [("k1", 0), ("another id", 1_700_000_000)] {
            let hex_spec = spec(SigEncoding::Hex, "sha256=");
            assert_eq!(
                signature::sign(&hex_spec, &[KEY], id, t, RFC_DATA),
                Ok(header(format!("sha256={RFC_HEX}"))),
                "hex, id {id}, t {t}"
            );
            let b64_spec = spec(SigEncoding::Base64, "");
            assert_eq!(
                signature::sign(&b64_spec, &[KEY], id, t, RFC_DATA),
                Ok(header(RFC_B64.to_string())),
                "base64, id {id}, t {t}"
            );
        }

        // The connector's request, its secret `Jefe`: the header carries the HMAC of the body
        // exactly as sent.
        const BODY: &[u8] = br#"{"permitId":"RW-481"}"#;
        let independent = {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(KEY).unwrap();
            mac.update(BODY);
            mac.finalize().into_bytes().to_vec()
        };
        // Python's hmac module gives the same.
        assert_eq!(
            hex::encode(&independent),
            "31538ceb9ac630832329a23c521fe301611192dd15695541e0e906cc17d2c85f"
        );
        let cases = [
            (
                "header: X-Partner-Signature, prefix: \"sha256=\"",
                format!("sha256={}", hex::encode(&independent)),
            ),
            (
                "header: X-Partner-Signature, encoding: base64",
                base64::engine::general_purpose::STANDARD.encode(&independent),
            ),
        ];
        std::env::set_var("HMS_TEST_HMAC_INDEPENDENT", "Jefe");
        for (keys, want) in cases {
            let c = outbound(&yaml(&format!(
                "    sign: {{ scheme: hmac-sha256, secret: \"${{HMS_TEST_HMAC_INDEPENDENT}}\", {keys} }}\n"
            )));
            let event = json!({"permitId": "RW-481"});
            let r = request::build(&c, &event, Some("k1"), Secrets::Env).unwrap();
            assert_eq!(r.body.as_deref(), Some(BODY), "{keys}");
            let sign = c.target.sign.as_ref().unwrap();
            for (id, t) in [("k1", 0), ("k2", 1_700_000_000)] {
                let mut signed = r.clone();
                request::sign(sign, &mut signed, id, t).unwrap();
                let values: Vec<&str> = signed
                    .headers
                    .iter()
                    .filter(|(k, _)| k == "x-partner-signature")
                    .map(|(_, v)| v.to_str().unwrap())
                    .collect();
                assert_eq!(values, vec![want.as_str()], "{keys}, id {id}, t {t}");
                assert_eq!(
                    signed.headers.len(),
                    r.headers.len() + 1,
                    "{keys}: the signature is the one header added"
                );
            }
        }
        std::env::remove_var("HMS_TEST_HMAC_INDEPENDENT");
    }
}
