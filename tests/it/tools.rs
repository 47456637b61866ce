//! Small things users expect (issue 18 point 4): `--version`, `--help` with the environment,
//! shell completions, `hms-sync config` with secrets as `***`, `hms-bus publish` verbatim,
//! JSON logs with real fields (and start-up errors as JSON), the text console line unchanged.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("NATS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    code_and_text(&out)
}

const HMS: &str = env!("CARGO_BIN_EXE_hms-sync");
const BUS: &str = env!("CARGO_BIN_EXE_hms-bus");

#[test]
fn version_help_and_completions() {
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(run(HMS, &["--version"]).1, format!("hms-sync {version}\n"));
    assert_eq!(run(BUS, &["--version"]).1, format!("hms-bus {version}\n"));
    let (code, help, _) = run(HMS, &["--help"]);
    assert_eq!(code, 0);
    for want in [
        "Environment:",
        "NATS_URL",
        "HMS_ADMIN_TOKEN",
        "HMS_SYNC_LOG",
        "trace",
        "resync",
        "completions",
    ] {
        assert!(help.contains(want), "{want} not in --help:\n{help}");
    }
    let (_, help, _) = run(HMS, &["resync", "--help"]);
    assert!(
        help.contains("--dry-run") && help.contains("Show what would be sent"),
        "{help}"
    );
    // A usage error names the argument and exits 2.
    let (code, _, err) = run(HMS, &["--log-format", "xml", "status"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--log-format") && err.contains("xml"), "{err}");
    let (code, _, err) = run(HMS, &["resync", "x.v1", "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--since `yesterday`: expected a duration"),
        "{err}"
    );

    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = run(HMS, &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        for word in ["resync", "trace", "parked", "since", "admin-token"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let (_, bus_script, _) = run(HMS, &["completions", "bash", "--bin", "hms-bus"]);
    assert!(bus_script.contains("hms-bus") && bus_script.contains("publish"));
    // The bash script is valid bash, and completes the subcommands.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hms-sync.bash");
    std::fs::write(&file, run(HMS, &["completions", "bash"]).1).unwrap();
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && f=$(complete -p hms-sync | sed 's/.*-F \\([^ ]*\\).*/\\1/') && COMP_WORDS=(hms-sync res) && COMP_CWORD=1 && COMP_LINE='hms-sync res' && COMP_POINT=12 && $f hms-sync res hms-sync && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    let words = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        words.lines().any(|w| w == "resync"),
        "completions of `res`: {words}"
    );
}

#[test]
fn config_prints_the_effective_config_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hms-sync.yaml");
    std::fs::write(
        &file,
        "nats:\n  url: nats://hms:Pa55word-in-url@127.0.0.1:4222\n  embedded: false\n  user: hms\n  password: ${HMS_IT_NATS_PW}\nhttp:\n  listen: 0.0.0.0:7500\n  adminListen: 127.0.0.1:7501\n  adminToken: literal-admin-token-123456\noutbound:\n  proxy: http://proxyuser:proxy-secret@127.0.0.1:3128\n",
    )
    .unwrap();
    let out = Command::new(HMS)
        .args(["config", "--config"])
        .arg(&file)
        .env("HMS_IT_NATS_PW", "env-password-xyz")
        .env_remove("NATS_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in [
        "Pa55word-in-url",
        "env-password-xyz",
        "literal-admin-token",
        "proxy-secret",
        "proxyuser",
        "HMS_IT_NATS_PW",
    ] {
        assert!(!text.contains(secret), "{secret} shows:\n{text}");
    }
    for want in [
        "# effective runtime config (",
        "url: nats://***@127.0.0.1:4222",
        "password: '***'",
        "adminToken: '***'",
        "proxy: http://***@127.0.0.1:3128",
        "adminListen: 127.0.0.1:7501",
        "maxInFlight: 64",
        "chartSampleMs: 10000",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    // --nats-url wins, as for every command; --json prints JSON.
    let out = Command::new(HMS)
        .args([
            "config",
            "--json",
            "--nats-url",
            "nats://127.0.0.1:4333",
            "--config",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nats"]["url"], "nats://127.0.0.1:4333");
    assert_eq!(v["nats"]["password"], "***");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hms_bus_publish_as_the_seed_writes_it() {
    std::env::set_var("ARC_TOKEN", "arc-secret-token");
    let (nats, target) = nats_and_target().await;
    let (_setup, rt, _js) = start_with(&nats, &[("gis.yaml", seed_connector(&target))], "").await;
    // The seed's command, verbatim, from a folder without a config (the defaults), NATS_URL set.
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(BUS)
        .args(["publish", "permit.updated", "--data", SEED_PERMIT])
        .current_dir(dir.path())
        .env("NATS_URL", nats.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("published permit.updated to stream HMS_EVENTS seq "),
        "{stdout}"
    );
    eventually(Duration::from_secs(20), "the PATCH", || async {
        target.count() == 1
    })
    .await;
    let r = &target.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PATCH", "/item/roadwork/RW-481")
    );
    rt.shutdown().await;
}

/// Runs `hms-sync ARGS up --config <setup>` until `done` sees its stderr lines, then SIGTERM;
/// returns every line.
async fn up_lines(setup: &Setup, args: &[&str], done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let args: Vec<&str> = args.iter().copied().chain(["up"]).collect();
    let late = "not seen within 30 s";
    let (status, lines) = stderr_until(setup, &args, Duration::from_secs(30), late, done).await;
    assert!(status.success());
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_delivery_fields_and_text_stays_the_seeds() {
    let nats = Nats::start().await;
    let target = Target::start().await;
    target.respond(|r, _| {
        if r.path.ends_with("/J-2") {
            (404, vec![])
        } else {
            (200, vec![])
        }
    });
    let setup = Setup::new(
        &nats,
        &[(
            "a.yaml",
            simple_connector("tools.json.v1", "tools.json", &target, "retry:\n  max: 1\n"),
        )],
        "",
    );
    let js = async_nats::jetstream::new(nats.client().await);
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            // Published once `up` made the stream (it retries until then).
            for id in ["J-1", "J-2"] {
                loop {
                    let body = serde_json::json!({"id": id, "n": 1}).to_string();
                    if let Ok(ack) = js.publish("tools.json", body.into()).await {
                        if ack.await.is_ok() {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    let lines = up_lines(&setup, &["--log-format", "json"], |ls| {
        ls.iter().filter(|l| l.contains("\"url\"")).count() >= 2
            && ls.iter().any(|l| l.contains("parked event"))
    })
    .await;
    publisher.await.unwrap();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let delivered = parsed
        .iter()
        .find(|v| v["fields"]["status"] == 200)
        .unwrap_or_else(|| panic!("no delivery line: {lines:#?}"));
    let f = &delivered["fields"];
    assert_eq!(f["connector"], "tools.json.v1");
    assert_eq!(f["method"], "PUT");
    assert_eq!(f["url"], format!("{}/items/J-1", target.url()));
    assert!(f["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{f}");
    assert!(f["stream_seq"].as_u64().is_some(), "{f}");
    assert_eq!(f["attempt"], 1);
    assert_eq!(f["idempotency_key"].as_str().map(str::len), Some(32), "{f}");
    assert_eq!(
        f["message"],
        format!("[tools.json.v1] PUT {}/items/J-1 200 OK", target.url())
    );
    let parked = parsed
        .iter()
        .find(|v| v["fields"]["parked_id"].is_u64())
        .unwrap_or_else(|| panic!("no park line: {lines:#?}"));
    assert_eq!(parked["fields"]["error"], "HTTP 404");
    assert_eq!(parked["level"], "WARN");

    // The text console: the seed's line, exactly, without the fields.
    let setup2 = Setup::new(
        &nats,
        &[(
            "a.yaml",
            simple_connector("tools.json.v1", "tools.json", &target, "retry:\n  max: 1\n"),
        )],
        "",
    );
    let want = format!("INFO [tools.json.v1] PUT {}/items/J-3 200 OK", target.url());
    let js2 = js.clone();
    // The consumer exists since the first run: it gets the event whenever `up` starts.
    let publisher = tokio::spawn(async move {
        let _ = js2
            .publish(
                "tools.json",
                serde_json::json!({"id": "J-3", "n": 1}).to_string().into(),
            )
            .await;
    });
    let lines = up_lines(&setup2, &[], |ls| ls.iter().any(|l| l.contains("J-3"))).await;
    publisher.await.unwrap();
    let line = lines.iter().find(|l| l.contains("J-3")).unwrap();
    assert_eq!(line.trim(), want, "{lines:#?}");
}

#[test]
fn start_up_errors_are_json_lines_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hms-sync.yaml");
    std::fs::write(&file, "nats:\n  embedded: false\nhttp:\n  listn: 1\n").unwrap();
    let (code, out, err) = run(
        HMS,
        &[
            "--log-format",
            "json",
            "up",
            "--config",
            &file.display().to_string(),
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    let v: Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {err}"));
    assert_eq!(v["level"], "ERROR");
    let msg = v["fields"]["message"].as_str().unwrap();
    assert!(
        msg.contains("hms-sync.yaml:4:3: http: unknown field `listn`"),
        "{msg}"
    );
    assert_eq!(v["fields"]["error"], msg);
    // In text: `error: ...`.
    let (code, _, err) = run(HMS, &["up", "--config", &file.display().to_string()]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: ") && err.contains("unknown field `listn`"),
        "{err}"
    );
}
