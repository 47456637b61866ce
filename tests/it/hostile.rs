//! Hostile input (issue 15, point 3): connector files, events and webhooks built to break
//! parsers, each answered with a position or a reason, never a crash or a hang.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Runs the binary with `args`, killing it after `limit`; (exit code, stdout + stderr, took).
fn run_bounded(args: &[&std::ffi::OsStr], limit: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let readers = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hms-sync {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (code, readers.join().unwrap(), started.elapsed())
}

fn validate(path: &Path) -> (Option<i32>, String) {
    let (code, out, _) = run_bounded(
        &["validate".as_ref(), path.as_os_str()],
        Duration::from_secs(30),
    );
    assert!(!out.contains("panicked"), "{out}");
    (code, out)
}

const HEAD: &str = "id: hostile.v1\ntype: outbound\ntrigger:\n  topic: t\nmap:\n  to:\n    url: http://127.0.0.1:9/x\n    method: PUT\n";

#[test]
fn hostile_connector_files_get_a_position_never_a_crash_or_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let deep_block: String = (0..500)
        .map(|i| format!("{}k{i}:\n", "  ".repeat(i + 3)))
        .collect();
    let mut big = String::from(HEAD);
    big.push_str("    body:\n");
    let mut i = 0;
    while big.len() < 10 * 1024 * 1024 {
        big.push_str(&format!("      f{i}: \"{{{{ x }}}}\"\n"));
        i += 1;
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "syntax.yaml",
            b"id: a\ntype: outbound\ntrigger:\n  topic: [t\n".to_vec(),
            ":5:1: YAML syntax",
        ),
        (
            "types.yaml",
            b"id: a\ntype: outbound\ntrigger:\n  topic: {a: 1}\n".to_vec(),
            ":4:10: trigger.topic: invalid type: map",
        ),
        (
            "retry-type.yaml",
            format!("{HEAD}retry:\n  max: many\n").into_bytes(),
            ":10:8: retry.max: invalid type: string",
        ),
        (
            "deep-block.yaml",
            format!("{HEAD}    body:\n{deep_block}").into_bytes(),
            ":135:257: recursion limit exceeded",
        ),
        (
            "deep-flow.yaml",
            format!(
                "{HEAD}    body: {}{}\n",
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
            .into_bytes(),
            ":9:266: YAML syntax: recursion limit exceeded",
        ),
        ("big.yaml", big.into_bytes(), ":1:1: the file is 104"),
        (
            "dup-id.yaml",
            format!("id: first.v1\n{HEAD}").into_bytes(),
            ":2:1: duplicate key `id` (first written at 1:1)",
        ),
        (
            "dup-header.yaml",
            format!("{HEAD}    headers: {{ A: x, A: y }}\n").into_bytes(),
            ":9:22: duplicate key `map.to.headers.A` (first written at 9:16)",
        ),
        (
            "non-utf8.yaml",
            b"id: a\ntype: outbound\ntrigger:\n  topic: t\xff\xfe\n".to_vec(),
            ":4:11: not UTF-8 text",
        ),
        ("empty.yaml", Vec::new(), ":1:1: missing field `id`"),
        (
            "not-a-map.yaml",
            b"- 1\n- 2\n".to_vec(),
            ":1:1: invalid type: sequence, expected a connector",
        ),
        (
            "nul.yaml",
            b"id: a\x00\ntype: outbound\n".to_vec(),
            ":1:6: control characters are not allowed",
        ),
    ];
    for (name, bytes, want) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let (code, out) = validate(&path);
        assert_eq!(code, Some(2), "{name}: {out}");
        assert!(
            out.contains(&format!("{}{want}", path.display())),
            "{name}: expected `{want}` in:\n{}",
            &out[..out.len().min(2000)]
        );
    }
    // `up` refuses a folder holding such a file (naming it), and neither crashes nor hangs.
    let setup = Setup::at("nats://127.0.0.1:9", &[], "");
    std::fs::write(
        setup.dir.path().join("connectors/bad.yaml"),
        b"id: a\ntype: outbound\ntrigger:\n  topic: t\xff\n",
    )
    .unwrap();
    let (code, out, _) = run_bounded(
        &[
            "up".as_ref(),
            "--config".as_ref(),
            setup.config_path().as_os_str(),
        ],
        Duration::from_secs(30),
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("bad.yaml:4:11: not UTF-8 text"), "{out}");
    let _ = std::io::stdout().flush();
}
