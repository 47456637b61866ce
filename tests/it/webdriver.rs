//! A small WebDriver client for the page tests: Debian's chromedriver driving headless
//! chromium (`scripts/install-test-tools.sh` installs both; no browser download), spoken to
//! with plain HTTP+JSON (W3C WebDriver).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually_some, free_port};

/// The key under which W3C WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn bin(var: &str, default: &str, package: &str) -> PathBuf {
    let bin = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        bin.exists(),
        "{} not found: the page tests drive a real browser. Run scripts/install-test-tools.sh \
         (apt-get install {package}; CI does), or set {var}",
        bin.display()
    );
    bin
}

/// A headless chromium under chromedriver, closed on drop.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        hms_sync::http_client::install_crypto();
        let chromium = bin("CHROMIUM_BIN", "/usr/bin/chromium", "chromium");
        let driver_bin = bin(
            "CHROMEDRIVER_BIN",
            "/usr/bin/chromedriver",
            "chromium-driver",
        );
        let port = free_port();
        let driver = tokio::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually_some(Duration::from_secs(20), "chromedriver ready", || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r = http.get(format!("{base}/status")).send().await.ok()?;
                let v: Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
                (v["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--force-device-scale-factor=1", "--window-size=1280,1400",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let r = http
            .post(format!("{base}/session"))
            .header("content-type", "application/json")
            .body(caps.to_string())
            .send()
            .await
            .expect("new session");
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v:#}"))
            .to_string();
        Browser {
            http,
            session: format!("{base}/session/{id}"),
            _driver: driver,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = tokio::time::timeout(Duration::from_secs(60), req.send())
            .await
            .expect("chromedriver answers within 60 s")
            .expect("chromedriver answers");
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        let v = self
            .call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
        assert!(v.is_null(), "navigate to {url}: {v:#}");
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The element for a CSS selector, when there is one now.
    pub async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(str::to_string)
    }

    /// Waits (at most `timeout`) for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> String {
        eventually_some(timeout, &format!("an element {css}"), || self.find(css)).await
    }

    /// Waits until `script` returns true.
    pub async fn wait_until(&self, what: &str, script: &str, timeout: Duration) {
        eventually_some(timeout, what, || async {
            (self.script(script, json!([])).await == true).then_some(())
        })
        .await;
    }

    pub async fn click(&self, css: &str) {
        let e = self.wait_for(css, Duration::from_secs(20)).await;
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/element/{e}/click"),
                Some(json!({})),
            )
            .await;
        assert!(v.is_null(), "click {css}: {v:#}");
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css, Duration::from_secs(20)).await;
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/element/{e}/value"),
                Some(json!({ "text": text })),
            )
            .await;
        assert!(v.is_null(), "type into {css}: {v:#}");
    }

    /// The text of the first element matching `css` ("" when none).
    pub async fn text(&self, css: &str) -> String {
        self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a screenshot"))
            .expect("base64")
    }

    pub async fn quit(self) {
        let _ = self.call(reqwest::Method::DELETE, "", None).await;
    }
}
