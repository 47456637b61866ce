//! The status page at `GET /` in a real headless browser (Debian's chromium): rendered DOM, escaping, and a screenshot check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::status::{scene, Scene, ID, OTHER, XSS};

/// Debian's chromium (`scripts/install-test-tools.sh`), or `CHROMIUM_BIN`.
fn chromium() -> PathBuf {
    let bin = std::env::var_os("CHROMIUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        bin.exists(),
        "chromium not found at {}: the status page test needs a real browser. \
         Run scripts/install-test-tools.sh (apt-get install chromium; CI does), \
         or set CHROMIUM_BIN",
        bin.display()
    );
    bin
}

/// Runs headless chromium on `url` with `extra` flags; returns its stdout.
async fn browse(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        // Virtual time: the page's fetches and its 2 s refresh run before the dump/screenshot.
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM after the page's script ran (retried a few times: the first render may race).
async fn rendered_dom(url: &str) -> String {
    let mut dom = String::new();
    for _ in 0..3 {
        dom = browse(url, &["--dump-dom".to_string()]).await;
        if dom.contains("data-rendered=\"1\"") && dom.contains("failure-table") {
            break;
        }
    }
    dom
}

/// The text of the table row of connector `id` (tags dropped).
fn row_text(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("data-connector=\"{id}\""))
        .unwrap_or_else(|| panic!("no row for {id} in the rendered page:\n{dom}"));
    let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
    let mut text = String::new();
    let mut in_tag = false;
    for ch in dom[start..end].chars() {
        match ch {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push('|');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_live_in_headless_chromium() {
    chromium(); // fail first and clearly when there is no browser
                // Bind every part: the NATS server lives as long as its binding.
    let Scene {
        rt,
        setup: _setup,
        nats: _nats,
    } = scene().await;
    let url = format!("http://{}/", rt.http_addr());

    // (a) The DOM after the script fetched /api/connectors and /api/overview.
    let dom = rendered_dom(&url).await;
    assert!(
        dom.contains("data-rendered=\"1\""),
        "never rendered:\n{dom}"
    );
    let row = row_text(&dom, ID);
    assert!(row.contains(ID), "{row}");
    assert!(row.contains("|running|"), "state: {row}");
    assert!(row.contains("|3|"), "delivered 3: {row}");
    assert!(row.contains("|2|"), "2 parked jobs: {row}");
    assert!(row.contains(" ms"), "latency: {row}");
    assert!(row_text(&dom, OTHER).contains("|1|"), "{dom}");
    // The parked jobs' errors, in recent failures.
    assert!(dom.contains("failure-table"), "{dom}");
    assert!(dom.contains("HTTP 404"), "the 404's error: {dom}");
    assert!(dom.contains("schema check failed"), "{dom}");
    // Data is text, never markup: the event's `<b id="xss">` makes no element. Error texts
    // name the field and the rule, never the event's value: it does not show at all.
    assert!(
        !dom.contains(XSS),
        "markup from data was rendered as HTML:\n{dom}"
    );
    assert!(
        !dom.contains("&lt;b id=") && !dom.contains("boom"),
        "the event's value shows on the status page:\n{dom}"
    );
    // The overview: NATS state and parked total.
    assert!(dom.contains("id=\"nats\">connected<"), "NATS state: {dom}");
    assert!(dom.contains("id=\"parked\">2<"), "parked total: {dom}");

    // (b) A screenshot: a real PNG of the window size, not a blank page.
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("status.png");
    browse(
        &url,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,800".to_string(),
        ],
    )
    .await;
    check_screenshot(&shot);
    // `HMS_SAVE_SCREENSHOT=docs/status-page.png` refreshes the README's picture.
    if let Some(dest) = std::env::var_os("HMS_SAVE_SCREENSHOT") {
        let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join(dest);
        std::fs::copy(&shot, &dest).unwrap();
    }
    rt.shutdown().await;
}

/// The file is a PNG of 1280x800 whose pixels are not all one colour (and not nearly so).
fn check_screenshot(path: &Path) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG signature"
    );
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("PNG decodes");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let frame = reader.next_frame(&mut buf).expect("PNG frame decodes");
    assert_eq!((frame.width, frame.height), (1280, 800), "window size");
    let px = frame.line_size / frame.width as usize;
    let pixels: Vec<&[u8]> = buf[..frame.buffer_size()].chunks(px).collect();
    let colours: std::collections::HashSet<&[u8]> = pixels.iter().copied().collect();
    assert!(
        colours.len() > 16,
        "the screenshot is blank or nearly: {} colours",
        colours.len()
    );
    // Text and tables cover a fair part of the page, not a few stray pixels.
    let background = pixels[pixels.len() / 2];
    let other = pixels.iter().filter(|p| **p != background).count();
    assert!(
        other * 100 / pixels.len() >= 2,
        "only {other} of {} pixels differ from the background",
        pixels.len()
    );
}
