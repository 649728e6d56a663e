//! The portal in a real browser: headless Chromium (over WebDriver) against the built `gancho`
//! roles, a real nats-server and a real HTTPS receiver. A tenant's person opens a link, adds
//! an endpoint, sees its secret once, sends a test event and reads its attempt; a read-only
//! session sees no control that changes anything; hostile content (an endpoint description
//! and a receiver's answer made of `<script>` and `<img onerror>`) shows as text and nothing
//! runs: the test fails on any dialog or console error. Screenshots of each view go to
//! `target/portal-screenshots/`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{Answer, Receiver};
use serde_json::json;
use support::browser::Browser;

const TOKEN: &str = "test-admin-token-0123456789";
const HOSTILE: &str = "<script>alert('script')</script><img src=x onerror=\"alert('img')\">";

/// Mints a link of `tenant` with `scope` through the API.
async fn link(base: &str, tenant: &str, scope: &str) -> String {
    let (status, v) = support::http(
        "POST",
        &format!("{base}/v1/tenants/{tenant}/portal-sessions"),
        Some(TOKEN),
        Some(&json!({ "scope": scope }).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["url"].as_str().unwrap().to_owned()
}

/// Nothing ran that the page did not mean to: no dialog, no script but the page's own, no
/// error in the console.
async fn nothing_ran(browser: &Browser, when: &str) {
    assert_eq!(browser.dialog().await, None, "a dialog opened {when}");
    let scripts = browser
        .run(
            "return document.querySelectorAll('script').length",
            json!([]),
        )
        .await;
    assert_eq!(scripts, json!(1), "a script element was added {when}");
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors {when}: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_adds_an_endpoint_and_reads_its_test_event_in_a_browser() {
    let env = support::Env::new().await;
    // Every answer is hostile: a body and a header value made of markup.
    let rx = Receiver::https(&env.ca, |_, _| {
        Answer::status(200)
            .header("content-type", &format!("text/plain; note={HOSTILE}"))
            .body(HOSTILE)
    })
    .await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    let (mut api, base) = env.spawn_portal_api(TOKEN, &[]).await;
    let (status, v) = support::http(
        "POST",
        &format!("{base}/v1/tenants"),
        Some(TOKEN),
        Some(r#"{"id": "acme"}"#),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let url = link(&base, "acme", "manage").await;
    let browser = Browser::start().await;

    // The link opens a session and leaves the address bar.
    browser.goto(&url).await;
    browser.wait_for("h1", "Endpoints").await;
    browser.wait_for("p", "No endpoints yet").await;
    assert!(
        !browser.url().await.contains("gpl_"),
        "the link's token stays in the address bar"
    );
    browser.screenshot("endpoints-empty").await;

    // An endpoint, with a description made of markup.
    browser.click("a", "Add an endpoint").await;
    browser.wait_for("h1", "Add an endpoint").await;
    browser.fill("URL", &rx.url("/hooks")).await;
    browser.fill("Description", HOSTILE).await;
    browser.screenshot("endpoint-new").await;
    browser.click("button", "Add the endpoint").await;
    browser.wait_for("#secret", "whsec_").await;
    browser
        .wait_for("h1", "<script>alert('script')</script>")
        .await;
    browser.screenshot("endpoint-created").await;
    nothing_ran(&browser, "after the endpoint was added").await;

    // A test event, its attempt and the receiver's answer, as text.
    browser.click("button", "Send a test event").await;
    browser.wait_for("details summary", "200").await;
    browser.wait_for("pre", "<img src=x onerror=").await;
    browser.wait_for("dd", "note=<script>").await;
    assert_eq!(rx.count(), 1, "the receiver got the test event once");
    browser.screenshot("endpoint-test-event").await;
    nothing_ran(&browser, "after the test event").await;

    // The secret was shown once: the endpoint's page again does not show it.
    browser.refresh().await;
    browser.wait_for("h1", "<script>").await;
    assert!(
        browser.all("#secret").await.is_empty(),
        "the secret is shown again"
    );

    // The delivery log, and back.
    browser.click("a", "Delivery log").await;
    browser.wait_for("h1", "Delivery log").await;
    browser.wait_for("summary", "200").await;
    browser.screenshot("delivery-log").await;
    browser.back().await;
    browser.wait_for("h1", "<script>").await;
    nothing_ran(&browser, "in the delivery log").await;

    // A read-only session in the same browser: the endpoint, and no control that changes it.
    let read = link(&base, "acme", "read").await;
    browser.goto(&read).await;
    browser.wait_for("h1", "Endpoints").await;
    browser.wait_for(".who", "read only").await;
    assert!(
        browser
            .all("a.button[href='#/endpoints/new']")
            .await
            .is_empty(),
        "a read-only session is offered to add an endpoint"
    );
    browser.click("td a", "https://").await;
    browser.wait_for("h1", "<script>").await;
    let buttons = browser
        .run(
            "return [...document.querySelectorAll('button, a.button')].map((b) => b.textContent)",
            json!([]),
        )
        .await;
    for control in [
        "Edit",
        "Pause",
        "Delete",
        "Send a test event",
        "Rotate",
        "Recover",
        "Replay",
    ] {
        assert!(
            !buttons
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b.as_str().unwrap().contains(control)),
            "a read-only session is offered {control}: {buttons}"
        );
    }
    browser.screenshot("endpoint-read-only").await;
    nothing_ran(&browser, "in the read-only session").await;

    // The link a second time: used, and the page says so.
    browser.goto(&read).await;
    browser.wait_for("h1", "This link was used already").await;
    browser.wait_for("p", "new one").await;
    browser.screenshot("link-used").await;
    assert_eq!(browser.dialog().await, None);
    for role in [&mut api, &mut router, &mut worker] {
        support::kill9(role);
    }
}
