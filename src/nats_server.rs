//! The embedded default: a local nats-server child process started from `nats-server.conf`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::bus::Bus;

/// A running nats-server child; stopped (SIGTERM, then SIGKILL) by [`EmbeddedServer::stop`]
/// or killed on drop.
pub struct EmbeddedServer {
    child: Child,
}

/// Finds the nats-server binary: explicit path, `NATS_SERVER_BIN`, the project's
/// `.tools/nats-server/bin/nats-server` beside `conf`, then `PATH`.
pub fn find_binary(explicit: Option<&Path>, conf: &Path) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    if let Some(dir) = conf.parent() {
        let local = dir.join(".tools/nats-server/bin/nats-server");
        if local.exists() {
            return local;
        }
    }
    PathBuf::from("nats-server")
}

impl EmbeddedServer {
    /// Starts `bin -c conf` in the folder of `conf` (its log goes to `.data/nats-server.log`
    /// there) and waits until `url` answers.
    pub async fn start(bin: &Path, conf: &Path, url: &str) -> Result<EmbeddedServer, String> {
        if !conf.exists() {
            return Err(format!(
                "{}: nats-server configuration not found",
                conf.display()
            ));
        }
        let dir = conf.parent().unwrap_or(Path::new("."));
        let log = dir.join(".data/nats-server.log");
        if let Some(parent) = log.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let child = Command::new(bin)
            .arg("-c")
            .arg(conf)
            .arg("--log")
            .arg(&log)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} ({e}); install it with scripts/install-nats-server.sh or set NATS_SERVER_BIN",
                    bin.display()
                )
            })?;
        let mut server = EmbeddedServer { child };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if Bus::reachable(url).await {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "nats-server exited at start-up ({status}); see {}",
                    log.display()
                ));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("nats-server did not answer at {url} within 15 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks the server to stop (SIGTERM: it flushes its store), waits up to 10 s, then kills it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
