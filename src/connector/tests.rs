use super::*;

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
        assert_eq!(raw::subject_problem(ok), None, "{ok}");
    }
    for bad in ["", "a..b", "a.>.b", "a.b*", "has space", ".a"] {
        assert!(raw::subject_problem(bad).is_some(), "{bad}");
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
