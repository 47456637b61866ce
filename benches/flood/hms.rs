//! The flood bench's system under test: `hms-sync up` as a child process.
//!
//! The release binary, so that its CPU time and peak RSS are its own, with one connector per
//! topic pointed at the target.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::opts::{FLAKY_BACKOFF_MS, MAX_ACK_PENDING, PULL_BATCH};
use crate::procfs::{pid_cpu, status_mb, threads_cpu};
use crate::report::PhaseResult;
use crate::scenarios::{phase_limit, progress, publish, topic, wait_drained, Run, Scenario};

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn connector_yaml(i: usize, sc: &Scenario, target: std::net::SocketAddr) -> String {
    let ordering = if sc.ordered {
        "\n  orderingKey: \"{{ permitId }}\""
    } else {
        ""
    };
    let retry = if sc.fail > 0.0 {
        format!("retry:\n  max: 10\n  backoffMs: {FLAKY_BACKOFF_MS}\n")
    } else {
        "retry:\n  max: 5\n  backoffMs: 3000\n".to_string()
    };
    format!(
        r#"id: flood.c{i}
type: outbound
trigger:
  topic: {topic}
  filter: object.agency == "DDOT"{ordering}
map:
  from: canonical
  to:
    url: "http://{target}/item/roadwork/{{permitId}}"
    method: PATCH
    headers:
      X-Flood-Seq: "{{{{ floodSeq }}}}"
      X-Flood-Sent-At-Ns: "{{{{ floodSentAtNs }}}}"{permit}
    body:
      start_date: "{{{{ startDate }}}}"
      end_date: "{{{{ endDate }}}}"
      status: "{{{{ status }}}}"
{retry}"#,
        topic = topic(i),
        permit = if sc.ordered {
            "\n      X-Permit-Id: \"{{ permitId }}\""
        } else {
            ""
        }
    )
}

/// The hms-sync child: SIGTERM (it drains), then killed if it has not stopped within 30 s.
struct HmsChild {
    child: Child,
    perf: Option<Child>,
}

impl HmsChild {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn cpu(&self) -> f64 {
        pid_cpu(self.pid())
    }
    fn stop(&mut self) {
        if let Some(p) = &mut self.perf {
            // SAFETY: plain signal to our own child.
            unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
            let _ = p.wait();
        }
        self.perf = None;
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HmsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

pub async fn run_hms(run: &Run<'_>, dir: &Path) -> Result<PhaseResult, String> {
    let (sc, o, nats, target) = (run.sc, run.o, run.nats, run.target);
    let label = format!("{} hms-sync", sc.name);
    let conn_dir = dir.join("connectors");
    let _ = std::fs::remove_dir_all(&conn_dir);
    std::fs::create_dir_all(&conn_dir).map_err(|e| e.to_string())?;
    for i in 0..sc.busy + sc.idle {
        std::fs::write(
            conn_dir.join(format!("c{i:04}.yaml")),
            connector_yaml(i, sc, target),
        )
        .map_err(|e| e.to_string())?;
    }
    let http_port = free_port()?;
    let cfg = dir.join("hms-sync.yaml");
    std::fs::write(
        &cfg,
        format!(
            "nats:\n  url: {}\n  embedded: false\nhttp:\n  listen: 127.0.0.1:{http_port}\nconnectors:\n  dir: connectors\ndelivery:\n  maxInFlight: {in_flight}\n  pullBatch: {PULL_BATCH}\n  maxAckPending: {MAX_ACK_PENDING}\nendpoints:\n  defaults:\n    maxInFlight: {in_flight}\n",
            nats.url(),
            in_flight = run.o.in_flight
        ),
    )
    .map_err(|e| e.to_string())?;
    let log_path = dir.join("hms-sync.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(hms_bin());
    cmd.arg("--config")
        .arg(&cfg)
        .arg("up")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(filter) = &o.hms_log {
        cmd.env("HMS_SYNC_LOG", filter);
    }
    if !sc.backlog {
        // A new consumer starts 1 s before `up` started (Runtime::start's margin): let the
        // baselines' live events fall out of that window.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let (nats0, tgt0) = (pid_cpu(nats.pid()), threads_cpu("fl-tgt"));
    let spawned = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("start {}: {e}", hms_bin().display()))?;
    let mut hms = HmsChild { child, perf: None };
    eprintln!("   hms-sync pid {}", hms.pid());
    if let Some(perf_dir) = &o.perf {
        let _ = std::fs::create_dir_all(perf_dir);
        hms.perf = Command::new("perf")
            .args([
                "record",
                "-F",
                &perf_hz(),
                "--call-graph",
                "dwarf,8192",
                "-o",
            ])
            .arg(perf_dir.join(format!("{}.perf.data", sc.name)))
            .args(["-p", &hms.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("   perf: {e}"))
            .ok();
    }
    // Ready: every connector runs with its consumer in place.
    let http = reqwest::Client::new();
    let ready_url = format!("http://127.0.0.1:{http_port}/readyz");
    let startup = loop {
        if let Ok(Some(status)) = hms.child.try_wait() {
            return Err(format!(
                "hms-sync exited ({status}); see its log:\n{}",
                tail(&log_path, 20)
            ));
        }
        if spawned.elapsed() > Duration::from_secs(180) {
            return Err(format!(
                "not ready within 180 s; log:\n{}",
                tail(&log_path, 20)
            ));
        }
        let ok = tokio::time::timeout(Duration::from_secs(10), http.get(&ready_url).send())
            .await
            .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()));
        if ok {
            break spawned.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "   ready after {startup:.2} s ({} connectors)",
        sc.busy + sc.idle
    );
    let mut idle = None;
    let mut readyz = None;
    if sc.idle > 0 {
        // Settle, then the idle window: nothing is published.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (c0, n0, t0) = (hms.cpu(), pid_cpu(nats.pid()), Instant::now());
        let secs = o.idle_seconds.max(1.0);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            progress(&format!(
                "   idle window: {:.0}/{secs:.0} s",
                t0.elapsed().as_secs_f64()
            ));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        progress("");
        let w = t0.elapsed().as_secs_f64();
        idle = Some((
            (hms.cpu() - c0) / w * 100.0,
            (pid_cpu(nats.pid()) - n0) / w * 100.0,
            status_mb(hms.pid(), "VmRSS:"),
        ));
        // How long /readyz takes with every connector idle (median and worst of 20).
        let mut took = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let ok = http
                .get(&ready_url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                took.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        took.sort_by(f64::total_cmp);
        if let (Some(mid), Some(worst)) = (took.get(took.len() / 2), took.last()) {
            eprintln!(
                "   /readyz: median {mid:.1} ms, worst {worst:.1} ms of {}",
                took.len()
            );
            readyz = Some((*mid, *worst));
        }
    }
    let t0 = Instant::now();
    if !sc.backlog {
        publish(run.bus, run.topics, sc, o.payload_bytes, sc.rate, &label).await?;
    }
    let timed_out = wait_drained(&label, run.sink, sc.events, phase_limit(sc)).await;
    let wall = t0.elapsed().as_secs_f64();
    let mut r = PhaseResult::from_sink(sc, "hms-sync", run.sink, timed_out);
    r.cpu_s = hms.cpu();
    r.peak_rss_mb = status_mb(hms.pid(), "VmHWM:");
    r.nats_cpu_s = pid_cpu(nats.pid()) - nats0;
    r.target_cpu_s = threads_cpu("fl-tgt") - tgt0;
    r.startup_s = Some(startup);
    r.readyz_ms = readyz;
    if let Some((cpu_pct, nats_pct, rss)) = idle {
        r.idle_cpu_pct_of_core = Some(cpu_pct);
        r.idle_nats_cpu_pct_of_core = Some(nats_pct);
        r.idle_rss_mb = rss;
    }
    r.note = if sc.backlog {
        "CPU from spawn (start-up included)".into()
    } else {
        "CPU from spawn (start-up, idle window included)".into()
    };
    hms.stop();
    r.log_lines = std::fs::read(&log_path)
        .ok()
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64);
    r.finish(wall);
    Ok(r)
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The hms-sync binary under test: this build's, or `FLOOD_HMS_BIN` (to compare two builds).
pub fn hms_bin() -> PathBuf {
    std::env::var_os("FLOOD_HMS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hms-sync")))
}

/// Sampling frequency of `--perf` (`FLOOD_PERF_HZ`, default 199).
fn perf_hz() -> String {
    std::env::var("FLOOD_PERF_HZ").unwrap_or_else(|_| "199".into())
}
