use super::*;
use std::time::Duration;

const SEED: &str = include_str!("../../connectors/gis-ddot.yaml");

fn problems(text: &str) -> Vec<String> {
    match parse("c.yaml", text) {
        Ok(_) => vec![],
        Err(Problems(p)) => p.into_iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn the_seed_connector_parses_unchanged() {
    let AnyConnector::Outbound(c) = parse("gis-ddot.yaml", SEED).unwrap() else {
        panic!("outbound expected")
    };
    assert_eq!(c.id, "ddot.gis.outbound.v1");
    assert_eq!(c.consumer, "ddot_gis_outbound_v1");
    assert_eq!(c.trigger.topic, "permit.updated");
    assert_eq!(c.target.method, reqwest::Method::PATCH);
    assert_eq!(c.retry.max, 5);
    assert_eq!(c.retry.backoff, Duration::from_millis(3000));
    assert_eq!(secrets_used(&c), ["ARC_TOKEN"]);
}

#[test]
fn every_problem_is_reported_with_its_position() {
    let text = "\
id: bad id
type: outbound
trigger:
  topic: permit.updated
  filtr: object.x == 1
map:
  to:
    url: \"ftp://x/{a}\"
    method: PATCHY
    headers: { \"Authorization\": \"Bearer {{ tok \" }
    body:
      a: \"{{ a \"
retry:
  max: 0
";
    let got = problems(text);
    let want = [
        "c.yaml:5:3: unknown key `filtr` in `trigger` (did you mean `filter`?)",
        "c.yaml:1:5: id `bad id`: use letters, digits, '.', '_' and '-' only",
        "c.yaml:9:13: method `PATCHY`: expected one of GET, POST, PUT, PATCH, DELETE",
        "c.yaml:8:10: url `ftp://x/{a}`: scheme `ftp`: expected http or https",
    ];
    for w in want {
        assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
    }
    assert!(
        got.iter().any(|g| g == "c.yaml:10:33: unclosed `{{`"),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|g| g.starts_with("c.yaml:12:10: body `a`")),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|g| g.starts_with("c.yaml:14:8: retry.max")),
        "{got:#?}"
    );
}

#[test]
fn filter_that_does_not_compile() {
    let text = SEED.replace("object.agency == \"DDOT\"", "object.agency ==");
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("c.yaml:6:11: filter does not compile"),
        "{got:?}"
    );
}

#[test]
fn method_case_gets_a_hint() {
    let got = problems(&SEED.replace("method: PATCH", "method: patch"));
    assert_eq!(got, ["c.yaml:11:13: method `patch`: expected one of GET, POST, PUT, PATCH, DELETE (did you mean `PATCH`?)"]);
}

#[test]
fn type_errors_come_from_serde_with_a_position() {
    let got = problems(&SEED.replace("max: 5", "max: lots"));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("c.yaml:18:"), "{got:?}");
}

#[test]
fn duplicate_ids_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, SEED).unwrap();
    std::fs::write(&b, SEED).unwrap();
    let err = load_files(&[a.clone(), b.clone()]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    let msg = err.0[0].to_string();
    assert!(
        msg.starts_with(&format!(
            "{}:2:5: duplicate connector id `ddot.gis.outbound.v1`",
            b.display()
        )),
        "{msg}"
    );
}

#[test]
fn subjects() {
    for ok in ["permit.updated", "permit.*", "permit.>", ">"] {
        assert_eq!(rules::subject_problem(ok), None, "{ok}");
    }
    for bad in ["", "a..b", "a.>.b", "a.b*", "has space", ".a"] {
        assert!(rules::subject_problem(bad).is_some(), "{bad}");
    }
}

#[test]
fn auth_lookup_and_response_check_are_validated_with_positions() {
    let text = "\
id: s
type: outbound
trigger: { topic: fee.created }
auth:
  type: bearer
  token: sk_live_literal
  tokn: x
lookup:
  url: https://x.example/q
  as: 1bad
responseCheck: \"body.ok ==\"
map:
  to: { url: \"https://x.example/{id}\", method: POST }
";
    let p = problems(text);
    assert!(
        p.iter()
            .any(|m| m
                .starts_with("c.yaml:7:3: unknown key `tokn` in `auth` (did you mean `token`?)")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("c.yaml:6:10: `token` must be `${VAR}`")),
        "{p:#?}"
    );
    assert!(p.iter().any(|m| m.contains("as `1bad`")), "{p:#?}");
    assert!(
        p.iter()
            .any(|m| m.starts_with("c.yaml:11:16: responseCheck does not compile")),
        "{p:#?}"
    );
    let p = problems(&text.replace("type: bearer", "type: basic"));
    assert!(p.iter().any(|m| m.contains("auth type `basic`")), "{p:#?}");
}

#[test]
fn the_saas_examples_parse() {
    for (file, secrets) in [
        (
            include_str!("../../connectors/arcgis-roadwork.outbound.yaml"),
            &["ARCGIS_PASSWORD", "ARCGIS_USERNAME"][..],
        ),
        (
            include_str!("../../connectors/google-calendar-crew.outbound.yaml"),
            &["GOOGLE_SERVICE_ACCOUNT_KEY"][..],
        ),
        (
            include_str!("../../connectors/stripe-lane-fee.outbound.yaml"),
            &["STRIPE_SECRET_KEY"][..],
        ),
    ] {
        let AnyConnector::Outbound(c) = parse("x.yaml", file).unwrap() else {
            panic!("outbound expected")
        };
        assert!(c.auth.is_some(), "{}", c.id);
        assert_eq!(secrets_used(&c), secrets, "{}", c.id);
        // The generated schema does not ask the event for what the lookup supplies.
        assert_eq!(
            c.schema.check(&serde_json::json!({
                "permitId": "RW-1", "crew": {"calendarId": "c", "eventId": "e"}
            })),
            Ok(()),
            "{}",
            c.id
        );
    }
}
/// The inbound rules, through the whole loader.
mod inbound {
    use super::*;
    use crate::connector::inbound::template_capture;
    use crate::connector::model::DEFAULT_MAX_BODY_BYTES;
    use crate::signature::{HmacSpec, Scheme, SigEncoding};

    const STRIPE: &str = "\
id: stripe.fees.inbound.v1
type: inbound
source:
  webhookUrl: /webhooks/stripe
  signature:
    scheme: stripe
    secret: ${STRIPE_WEBHOOK_SECRET}
    toleranceSec: 300
publish:
  topic: fee.paid
  idFrom: \"{{ id }}\"
  body: { feeId: \"{{ data.object.metadata.feeId }}\" }
";

    fn problems(text: &str) -> Vec<String> {
        match parse("c.yaml", text) {
            Ok(_) => vec![],
            Err(Problems(p)) => p.into_iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn the_product_example_compiles() {
        let AnyConnector::Inbound(c) = parse("c.yaml", STRIPE).unwrap() else {
            panic!("inbound expected")
        };
        assert_eq!(c.webhook_url, "/webhooks/stripe");
        assert_eq!(c.signature.scheme, Scheme::Stripe);
        assert_eq!(c.signature.tolerance_sec, 300);
        assert_eq!(c.publish.capture, "fee.paid");
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.secret_names(), ["STRIPE_WEBHOOK_SECRET"]);
    }

    #[test]
    fn captures_of_templated_topics() {
        let cases = [
            ("stripe.{{ type }}", Some("stripe.>")),
            ("hms.github.{{ event.kind }}.x", Some("hms.github.>")),
            ("{{ type }}", None),
            ("stripe{{ type }}", None),
            ("a.*.{{ type }}", None),
        ];
        for (topic, want) in cases {
            assert_eq!(template_capture(topic).as_deref(), want, "{topic}");
        }
    }

    #[test]
    fn inbound_problems_are_reported_with_their_position() {
        let cases: Vec<(String, &str)> = vec![
            (
                STRIPE.replace("scheme: stripe", "scheme: stripey"),
                "c.yaml:6:13: scheme `stripey`: expected one of stripe, github, standard-webhooks, hmac-sha256",
            ),
            (
                STRIPE.replace("${STRIPE_WEBHOOK_SECRET}", "whsec_literal"),
                "c.yaml:7:13: a secret is read from the environment: write exactly `${NAME}` (never the secret itself)",
            ),
            (
                STRIPE.replace("toleranceSec: 300", "toleranceSec: 0"),
                "c.yaml:8:19: toleranceSec must be above 0",
            ),
            (
                STRIPE.replace("topic: fee.paid", "topic: \"{{ type }}\""),
                "c.yaml:10:10: topic `{{ type }}`: a templated topic starts with literal tokens, e.g. `stripe.{{ type }}`, so that HMS_EVENTS captures `stripe.>`",
            ),
            (
                STRIPE.replace("topic: fee.paid", "topic: sync.parked.x"),
                "c.yaml:10:10: topic `sync.parked.x`: `sync.parked` is hms-sync's own subject",
            ),
            (
                STRIPE.replace("topic: fee.paid", "topic: fee.*"),
                "c.yaml:10:10: topic `fee.*`: an event is published on one subject: no wildcards",
            ),
            (
                STRIPE.replace("\"{{ id }}\"", "\"{{ id \""),
                "c.yaml:11:11: unclosed `{{`",
            ),
            (
                STRIPE.replace("/webhooks/stripe", "webhooks/stripe"),
                "c.yaml:4:15: webhookUrl `webhooks/stripe` must be a path starting with '/'",
            ),
            (
                STRIPE.replace("/webhooks/stripe", "/metrics"),
                "c.yaml:4:15: webhookUrl `/metrics` is served by hms-sync itself; use e.g. `/webhooks/<name>`",
            ),
            (
                STRIPE.replace("    toleranceSec: 300\n", "    header: X-Sig\n"),
                "c.yaml:8:5: `header` applies to scheme `hmac-sha256` only; `stripe` fixes its headers",
            ),
            (
                STRIPE.replace("scheme: stripe", "scheme: github"),
                "c.yaml:8:5: scheme `github` signs no timestamp: `toleranceSec` does not apply",
            ),
            (
                STRIPE.replace("scheme: stripe", "scheme: hmac-sha256")
                    .replace("    toleranceSec: 300\n", ""),
                "c.yaml:5:3: scheme `hmac-sha256` needs `header` (the header carrying the signature)",
            ),
            (
                STRIPE.replace("scheme: stripe", "scheme: hmac-sha256")
                    .replace("    toleranceSec: 300\n", "    header: X-Sig\n    encoding: base32\n"),
                "c.yaml:9:15: encoding `base32`: expected `hex` or `base64`",
            ),
            (
                STRIPE.replace("secret: ${STRIPE_WEBHOOK_SECRET}", "secrets: [\"${A}\", \"oops\"]"),
                "c.yaml:7:23: a secret is read from the environment: write exactly `${NAME}` (never the secret itself)",
            ),
            (
                STRIPE.replace("feeId: \"{{ data.object.metadata.feeId }}\"", "k: \"${SECRET}\""),
                "c.yaml:12:9: publish.body cannot use `${VAR}`: secrets never go on the bus",
            ),
            (
                STRIPE.replace("    toleranceSec: 300\n", "    tolerance: 300\n"),
                "c.yaml:8:5: unknown key `tolerance` in `source.signature` (did you mean `toleranceSec`?)",
            ),
            (
                format!("{STRIPE}trigger: {{ topic: x }}\n"),
                "c.yaml:13:1: `trigger` belongs to outbound connectors; an inbound one has `source` and `publish`",
            ),
        ];
        for (text, want) in cases {
            let got = problems(&text);
            assert!(
                got.iter().any(|g| g == want),
                "missing {want:?} in {got:#?}"
            );
        }
        let no_sig = "id: a\ntype: inbound\nsource:\n  webhookUrl: /w\npublish:\n  topic: x\n";
        assert_eq!(
            problems(no_sig),
            ["c.yaml:3:1: an inbound connector needs `source.signature` (scheme and secret): unsigned webhooks are not accepted"]
        );
    }

    #[test]
    fn hmac_sha256_with_rotation_compiles() {
        let text = "\
id: shop.orders.inbound.v1
type: inbound
source:
  webhookUrl: /webhooks/shop
  maxBodyBytes: 65536
  signature:
    scheme: hmac-sha256
    header: X-Shopify-Hmac-Sha256
    encoding: base64
    secrets: [\"${SHOP_OLD}\", \"${SHOP_NEW}\"]
publish:
  topic: \"shop.{{ topic }}\"
";
        let AnyConnector::Inbound(c) = parse("c.yaml", text).unwrap() else {
            panic!("inbound expected")
        };
        assert_eq!(c.max_body_bytes, 65536);
        assert_eq!(c.publish.capture, "shop.>");
        assert_eq!(c.secret_names(), ["SHOP_NEW", "SHOP_OLD"]);
        assert_eq!(
            c.signature.scheme,
            Scheme::HmacSha256(HmacSpec {
                header: "x-shopify-hmac-sha256".into(),
                encoding: SigEncoding::Base64,
                prefix: String::new()
            })
        );
    }
}

#[test]
fn a_lookup_url_never_takes_its_host_from_the_event() {
    let text = "\
id: s
type: outbound
trigger: { topic: fee.created }
lookup:
  url: \"http://{{ host }}:8080/q\"
map:
  to: { url: \"https://x.example/{id}\", method: POST }
";
    let p = problems(text);
    assert!(
        p.iter().any(
            |m| m.starts_with("c.yaml:5:8: url `http://{{ host }}:8080/q`")
                && m.contains("must be written out")
                && m.contains("lookup.allowHosts")
        ),
        "{p:#?}"
    );
    // Listing the hosts the template may produce makes it valid (checked again per request).
    let allowed = text.replace("  url:", "  allowHosts: [\"gis.example:8080\"]\n  url:");
    assert!(problems(&allowed).is_empty(), "{:#?}", problems(&allowed));
}
