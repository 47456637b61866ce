//! Review from the status page (issue 18 point 3, issue 13 point 4) in real headless chromium
//! under chromedriver: the page asks for the admin token once and keeps it in the tab, lists
//! parked jobs per connector, shows one in full (original event, attempts, the request with
//! secrets masked), and its Replay button makes the target receive the job with its original
//! Idempotency-Key, its Discard button drops one for good (with a reason); each action is
//! audited with who and when. Charts and the event search too.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;
use crate::webdriver::Browser;

const ID: &str = "review.gis.v1";
const TOKEN: &str = "review-admin-token-5d2c8e1b";
const SECRET: &str = "the-targets-bearer-secret";
const XSS: &str = "<b id=\"xss\">boom</b>";
const T: Duration = Duration::from_secs(30);

fn connector(target: &Target) -> String {
    format!(
        "id: {ID}\ntype: outbound\ntrigger:\n  topic: review.permit\nmap:\n  to:\n    url: \"{}/items/{{id}}\"\n    method: PUT\n    headers: {{ \"Authorization\": \"Bearer ${{HMS_IT_REVIEW_SECRET}}\" }}\n    body:\n      id: \"{{{{ id }}}}\"\n      note: \"{{{{ note }}}}\"\nretry:\n  max: 1\n",
        target.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_in_headless_chromium_replay_reaches_the_target_with_the_original_key() {
    std::env::set_var("HMS_IT_REVIEW_SECRET", SECRET);
    let (nats, target) = nats_and_target().await;
    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    target.respond(move |r, _| {
        if r.path.contains("RW-9") && !f.load(Ordering::SeqCst) {
            (503, vec![])
        } else if r.path.contains("RW-7") {
            // Refused for good: parked at once, then discarded from the page.
            (422, vec![])
        } else {
            (200, vec![])
        }
    });
    let setup = Setup::with_http(
        &nats,
        &[("gis.yaml", connector(&target))],
        &format!("  adminListen: 127.0.0.1:0\n  adminToken: {TOKEN}\n  chartSampleMs: 200\n"),
        "",
    );
    let rt = setup.start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    for i in 1..=3 {
        publish(
            &js,
            "review.permit",
            json!({"id": format!("RW-{i}"), "note": "ok"}),
        )
        .await;
    }
    publish(&js, "review.permit", json!({"id": "RW-9", "note": XSS})).await;
    eventually(T, "3 delivered, 1 parked", || async {
        stream_messages(&js, "HMS_SYNC_PARKED").await.len() == 1 && target.count() == 4
    })
    .await;
    let parked_id: u64 = 1;
    let first_key = target
        .requests()
        .into_iter()
        .find(|r| r.path == "/items/RW-9")
        .unwrap()
        .headers["idempotency-key"]
        .to_str()
        .unwrap()
        .to_string();

    let b = Browser::start().await;
    let url = format!("http://{}/", rt.admin_addr());
    b.goto(&url).await;
    // The page asks for the token.
    b.wait_until(
        "the token form",
        "return getComputedStyle(document.getElementById('login')).display !== 'none';",
        T,
    )
    .await;
    b.type_into("#token", TOKEN).await;
    b.type_into("#operator", "Rosa Ramírez").await;
    b.click("#login-submit").await;
    b.wait_until(
        "the page rendered",
        "return document.body.getAttribute('data-rendered') === '1';",
        T,
    )
    .await;
    assert_eq!(
        b.script(
            "return sessionStorage.getItem('hms-admin-token');",
            json!([])
        )
        .await,
        TOKEN,
        "kept in the tab"
    );
    assert_eq!(
        b.script(
            "return document.body.getAttribute('data-actions');",
            json!([])
        )
        .await,
        "1"
    );

    // The parked job, listed under its connector with reason, attempts and age.
    let row = format!("#parked-jobs [data-connector=\"{ID}\"] tr[data-parked-id=\"{parked_id}\"]");
    b.wait_for(&row, T).await;
    let text = b.text(&row).await;
    assert!(text.contains("HTTP 503") && text.contains(" s"), "{text}");
    // Its detail: the original event, every attempt, the request with secrets masked.
    b.click(&format!(
        "button[data-action=\"show\"][data-parked-id=\"{parked_id}\"]"
    ))
    .await;
    b.wait_for("#parked-job #parked-request", T).await;
    let event = b.text("#parked-event").await;
    // The payload as JSON text (its quotes escaped), the markup in it as text.
    assert!(
        event.contains("\"id\": \"RW-9\"") && event.contains(r#"<b id=\"xss\">boom</b>"#),
        "{event}"
    );
    let request = b.text("#parked-request").await;
    assert!(
        request.starts_with(&format!("PUT {}/items/RW-9\n", target.url())),
        "{request}"
    );
    assert!(request.contains("Authorization: Bearer ***\n"), "{request}");
    assert!(
        request.contains(&format!("Idempotency-Key: {first_key}\n")),
        "{request}"
    );
    assert!(!request.contains(SECRET), "{request}");
    let detail = b.text("#parked-job").await;
    assert!(
        detail.contains("#1") && detail.contains("HTTP 503"),
        "{detail}"
    );
    // Data is text, never markup.
    assert_eq!(
        b.script("return document.getElementById('xss') === null;", json!([]))
            .await,
        true
    );

    // Replay: the target gets the job with its original key.
    fixed.store(true, Ordering::SeqCst);
    b.click(&format!(
        "button[data-action=\"replay\"][data-parked-id=\"{parked_id}\"]"
    ))
    .await;
    b.wait_until(
        "the replay done",
        "return document.body.getAttribute('data-last-action') === 'replayed';",
        T,
    )
    .await;
    assert!(b.text("#action-result").await.contains("by Rosa Ramírez"));
    eventually(T, "the replayed job at the target", || async {
        target
            .requests()
            .iter()
            .filter(|r| r.path == "/items/RW-9")
            .count()
            == 2
    })
    .await;
    let keys: Vec<String> = target
        .requests()
        .into_iter()
        .filter(|r| r.path == "/items/RW-9")
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, [first_key.clone(), first_key.clone()]);
    // Audited with who, from where, when.
    let review = eventually_some(T, "the review record", || async {
        audit_records(&js)
            .await
            .into_iter()
            .find(|r| r["kind"] == "review")
    })
    .await;
    assert_eq!(review["action"], "replayed", "{review:#}");
    assert_eq!(review["by"], "Rosa Ramírez");
    assert_eq!(review["via"], "status page");
    assert_eq!(review["from"], "127.0.0.1");
    assert_eq!(review["parkedId"], parked_id);
    assert!(
        review["at"].is_string() && review["hash"].is_string(),
        "{review:#}"
    );
    b.wait_for("#parked-none", T).await;

    // Charts: inline SVG per connector, points from the sampled history.
    b.wait_until(
        "a chart with points",
        &format!(
            "const s = document.querySelector('svg[data-chart=\"delivered\"][data-connector=\"{ID}\"]'); return !!s && Number(s.getAttribute('data-points')) >= 1 && !!s.querySelector('polyline');"
        ),
        T,
    )
    .await;
    for kind in ["lag", "p99"] {
        let found = b
            .find(&format!(
                "svg[data-chart=\"{kind}\"][data-connector=\"{ID}\"]"
            ))
            .await;
        assert!(found.is_some(), "{kind} chart");
    }

    // Where is my event? The same search on the page.
    b.type_into("#trace-value", "id=RW-9").await;
    b.click("#trace-go").await;
    let sel = format!(".trace-connector[data-connector=\"{ID}\"]");
    b.wait_for(&sel, T).await;
    b.wait_until(
        "delivered by the replay",
        &format!(
            "return document.querySelector('{sel}').getAttribute('data-outcome') === 'delivered';"
        ),
        T,
    )
    .await;
    assert!(b.text(&sel).await.contains(&first_key));
    // The page as a reviewer sees it now: the charts, the search, the replayed job.
    let shot = b.screenshot().await;
    assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n"));
    // `HMS_SAVE_REVIEW_SCREENSHOT=docs/review-page.png` refreshes the README's picture.
    if let Some(dest) = std::env::var_os("HMS_SAVE_REVIEW_SCREENSHOT") {
        std::fs::write(Path::new(env!("CARGO_MANIFEST_DIR")).join(dest), &shot).unwrap();
    }

    // A reload keeps the token (same tab): no prompt.
    b.goto(&url).await;
    b.wait_until(
        "rendered again",
        "return document.body.getAttribute('data-rendered') === '1';",
        T,
    )
    .await;
    assert_eq!(
        b.script(
            "return getComputedStyle(document.getElementById('login')).display;",
            json!([])
        )
        .await,
        "none"
    );

    // Discard: a job the target refuses for good (422) is dropped from the page, with a
    // reason; it leaves the list, is never sent again, and is audited with who and why.
    publish(
        &js,
        "review.permit",
        json!({"id": "RW-7", "note": "refused"}),
    )
    .await;
    let discard_id = eventually_some(T, "RW-7 parked", || async {
        stream_raw(&js, "HMS_SYNC_PARKED")
            .await
            .into_iter()
            .find(|m| {
                m.subject.starts_with("sync.parked.")
                    && String::from_utf8_lossy(&m.payload).contains("/items/RW-7")
            })
            .map(|m| m.sequence)
    })
    .await;
    b.goto(&url).await;
    b.wait_until(
        "rendered with the new job",
        "return document.body.getAttribute('data-rendered') === '1';",
        T,
    )
    .await;
    let row = format!("#parked-jobs [data-connector=\"{ID}\"] tr[data-parked-id=\"{discard_id}\"]");
    b.wait_for(&row, T).await;
    let text = b.text(&row).await;
    assert!(text.contains("HTTP 422"), "{text}");
    b.click(&format!(
        "button[data-action=\"show\"][data-parked-id=\"{discard_id}\"]"
    ))
    .await;
    b.wait_for(&format!("#parked-job[data-parked-id=\"{discard_id}\"]"), T)
        .await;
    b.type_into("#discard-reason", "the target refuses it for good")
        .await;
    b.click(&format!(
        "button[data-action=\"discard\"][data-parked-id=\"{discard_id}\"]"
    ))
    .await;
    b.wait_until(
        "the discard done",
        "return document.body.getAttribute('data-last-action') === 'discarded';",
        T,
    )
    .await;
    let result = b.text("#action-result").await;
    assert!(result.contains("Discarded by Rosa Ramírez"), "{result}");
    b.wait_for("#parked-none", T).await;
    let review = eventually_some(T, "the discard's review record", || async {
        audit_records(&js)
            .await
            .into_iter()
            .find(|r| r["kind"] == "review" && r["action"] == "discarded")
    })
    .await;
    assert_eq!(review["parkedId"], discard_id, "{review:#}");
    assert_eq!(review["reason"], "the target refuses it for good");
    assert_eq!(review["by"], "Rosa Ramírez");
    assert_eq!(review["via"], "status page");
    assert_eq!(review["from"], "127.0.0.1");
    assert!(
        review["at"].is_string() && review["hash"].is_string(),
        "{review:#}"
    );
    // Never sent again: an event published after it is delivered, RW-7 stays at one request.
    publish(&js, "review.permit", json!({"id": "RW-8", "note": "ok"})).await;
    eventually(T, "RW-8 delivered", || async {
        target
            .requests()
            .iter()
            .any(|r| r.path == "/items/RW-8" && r.status == 200)
    })
    .await;
    assert_eq!(
        target
            .requests()
            .iter()
            .filter(|r| r.path == "/items/RW-7")
            .count(),
        1
    );
    b.quit().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_the_page_shows_jobs_but_offers_no_actions() {
    let crate::status::Scene {
        rt,
        setup: _setup,
        nats: _nats,
    } = crate::status::scene().await;
    let b = Browser::start().await;
    b.goto(&format!("http://{}/", rt.http_addr())).await;
    b.wait_until(
        "rendered",
        "return document.body.getAttribute('data-rendered') === '1';",
        T,
    )
    .await;
    assert_eq!(
        b.script(
            "return document.body.getAttribute('data-actions');",
            json!([])
        )
        .await,
        "0"
    );
    b.click("#parked-jobs button[data-action=\"show\"]").await;
    b.wait_for("#parked-job", T).await;
    assert!(b.find("button[data-action=\"replay\"]").await.is_none());
    assert!(b.find("button[data-action=\"discard\"]").await.is_none());
    assert!(b.find("#discard-reason").await.is_none());
    let note = b.text("#parked-job").await;
    assert!(note.contains("need http.adminToken"), "{note}");
    let v: Value = b
        .script(
            "return document.querySelectorAll('#parked-jobs tr[data-parked-id]').length;",
            json!([]),
        )
        .await;
    assert_eq!(v, 2, "both parked jobs listed");
    b.quit().await;
    rt.shutdown().await;
}
