//! Several `hms-sync up` instances as child processes, for tests of what holds across them.

use std::process::{Child, Command, Stdio};

use crate::harness::{free_port, Setup};

/// `hms-sync up` as a child process on its own HTTP port.
pub struct Instance {
    pub child: Child,
    pub http: String,
}

impl Instance {
    pub fn start(setup: &Setup) -> Instance {
        Instance::from_config(&setup.config_path(), free_port())
    }

    /// `hms-sync up --config <config>` listening on 127.0.0.1:`port`.
    pub fn from_config(config: &std::path::Path, port: u16) -> Instance {
        let child = Command::new(env!("CARGO_BIN_EXE_hms-sync"))
            .args(["up", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env(
                "HMS_SYNC_LOG",
                std::env::var("HMS_T_INSTANCE_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(
                std::env::var("HMS_T_INSTANCE_LOG_DIR")
                    .ok()
                    .and_then(|d| std::fs::File::create(format!("{d}/instance-{port}.log")).ok())
                    .map(Stdio::from)
                    .unwrap_or_else(Stdio::null),
            )
            .spawn()
            .unwrap();
        Instance {
            child,
            http: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `sync_ok_total` of the connector on this instance (0 when it does not answer).
    pub async fn delivered(&self, connector: &str) -> f64 {
        let Ok(resp) = reqwest::get(format!("{}/metrics", self.http)).await else {
            return 0.0;
        };
        let text = resp.text().await.unwrap_or_default();
        let series = format!("sync_ok_total{{connector=\"{connector}\"}}");
        text.lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.http))
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
