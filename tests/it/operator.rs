//! Fit with the operator's tools: `/metrics` through `promtool check metrics`, the Grafana dashboard's queries, and `--log-format json`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::status::{scene, Scene};

/// Metric names declared in src/metrics.rs (`pub const NAME: &str = "metric";`).
fn declared_metrics() -> BTreeSet<String> {
    let src = include_str!("../../src/metrics.rs");
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter(|l| l.contains(": &str = \""))
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .collect()
}

/// Every PromQL expression of the dashboard (panels, rows' panels, template queries).
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// Metric selectors of a PromQL expression: identifiers right before `{` outside strings.
fn selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut ident, mut quoted) = (String::new(), false);
    for ch in expr.chars() {
        if quoted {
            quoted = ch != '"';
            continue;
        }
        match ch {
            '"' => {
                quoted = true;
                ident.clear();
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => ident.push(c),
            '{' if !ident.is_empty() => out.push(std::mem::take(&mut ident)),
            _ => ident.clear(),
        }
    }
    out
}

#[test]
fn grafana_dashboard_queries_only_declared_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("config/grafana-dashboard.json is valid JSON");
    let known = declared_metrics();
    assert!(known.contains("sync_ok_total"), "{known:?}");
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut all = Vec::new();
    exprs(&dash["panels"], &mut all);
    assert!(all.len() >= 10, "{all:?}");
    let mut used = BTreeSet::new();
    for e in &all {
        let sel = selectors(e);
        assert!(!sel.is_empty(), "no metric in {e}");
        for s in sel {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| s.strip_suffix(suffix))
                .filter(|b| known.contains(*b))
                .unwrap_or(&s)
                .to_string();
            assert!(known.contains(&base), "{e}: {s} is not in src/metrics.rs");
            used.insert(base);
        }
        assert!(
            !e.contains("sync_latency_ms_bucket") || e.contains("histogram_quantile("),
            "latency quantiles come from histogram_quantile: {e}"
        );
    }
    for wanted in [
        "sync_ok_total",
        "sync_fail_total",
        "sync_retry_total",
        "sync_parked_total",
        "sync_latency_ms",
        "sync_in_flight",
        "webhook_received_total",
        "webhook_rejected_total",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
    assert!(all.iter().any(|e| e.contains("sum by (connector, reason)")));
    // Every datasource is the import input; panel ids are unique.
    let text = dash.to_string();
    assert!(
        !text.contains("\"uid\":\"prometheus\""),
        "a hard-wired datasource"
    );
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{p:#}");
        }
    }
    assert_eq!(
        selectors(r#"sum(rate(a_total{x="b{c}"}[5m])) / b"#),
        ["a_total"]
    );
}

fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("promtool"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "promtool not found on PATH: run scripts/install-test-tools.sh \
             (apt-get install prometheus; CI does)"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_apart_from_the_ms_unit() {
    let promtool = promtool();
    let Scene {
        rt,
        setup: _setup,
        nats: _nats,
    } = scene().await;
    let url = format!("http://{}/metrics", rt.http_addr());
    let text = get_text(&url).await;
    for m in [
        "sync_ok_total",
        "sync_parked_total",
        "sync_latency_ms_bucket",
    ] {
        assert!(text.contains(m), "{m} missing from /metrics:\n{text}");
    }
    let mut child = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("promtool check metrics ({}):\n{report}", out.status);
    let complaints: Vec<&str> = report.lines().filter(|l| !l.trim().is_empty()).collect();
    // The seed's name `sync_latency_ms` is not in base units (seconds): promtool says so, and
    // that is the only thing it may say.
    for c in &complaints {
        assert!(
            c.contains("sync_latency_ms"),
            "promtool complains about more than sync_latency_ms:\n{report}\n---\n{text}"
        );
    }
    assert!(
        out.status.success() || !complaints.is_empty(),
        "promtool failed without saying why"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_log_format_json_logs_json_lines() {
    let nats = Nats::start().await;
    let target = Target::start().await;
    let setup = Setup::new(
        &nats,
        &[(
            "a.yaml",
            simple_connector("json.logs.v1", "json.logs", &target, ""),
        )],
        "",
    );
    let (status, lines) = stderr_until(
        &setup,
        &["up", "--log-format", "json"],
        Duration::from_secs(20),
        "no start-up line within 20 s",
        |lines| lines.iter().any(|l| l.contains("hms-sync up: http://")),
    )
    .await;
    // SIGTERM: the shutdown lines are JSON too.
    assert!(status.success(), "{status}");
    assert!(
        lines.iter().any(|l| l.contains("\"stopped\"")),
        "{lines:#?}"
    );
    for l in &lines {
        let v: Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\nall:\n{lines:#?}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
    }
}
