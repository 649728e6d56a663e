//! The portal in a real browser: headless Chromium (over WebDriver) against the built `gancho`
//! roles, a real nats-server and real HTTPS receivers. A tenant's person opens a link, adds
//! an endpoint, sees its secret once, sends a test event and reads its attempt; a read-only
//! session sees no control that changes anything; hostile content (an endpoint description
//! and a receiver's answer made of `<script>` and `<img onerror>`) shows as text and nothing
//! runs: the tests fail on any dialog or console error. From start to finish (a receiver
//! that fails, pause, resume, recover) with the mouse, with the keyboard alone, and inside a
//! frame on another site; a site not allowed to frame it cannot. A dead letter selected in
//! its view is sent again once. The event catalog shows the API's refusals at their field, and
//! a schema edited there refuses a bad event at ingest; the jobs view follows a replay to done
//! and cancels a paced one; every view renders in Brazilian Portuguese; the operator's title,
//! accent and logo apply. One browser at a time.
//! Screenshots of each view go to `target/portal-screenshots/`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::browser::Browser;

/// The tests of this file take turns: one browser at a time on a 2-core machine.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOKEN: &str = "test-admin-token-0123456789";
const HOSTILE: &str = "<script>alert('script')</script><img src=x onerror=\"alert('img')\">";

/// POSTs `body` to `path` with the admin token; it must answer `want`: the answer.
async fn post(base: &str, path: &str, body: serde_json::Value, want: u16) -> serde_json::Value {
    let (status, v) = support::http(
        "POST",
        &format!("{base}{path}"),
        Some(TOKEN),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, want, "POST {path}: {v}");
    v
}

/// [`post`] that must create (201).
async fn create(base: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    post(base, path, body, 201).await
}

/// [`post`] that must start a job (202): the job.
async fn start_job(base: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    post(base, path, body, 202).await
}

/// Mints a link of `tenant` with `scope` through the API.
async fn link(base: &str, tenant: &str, scope: &str) -> String {
    minted(base, tenant, scope).await.1
}

/// Mints a link of `tenant` with `scope` through the API: (session id, link).
async fn minted(base: &str, tenant: &str, scope: &str) -> (String, String) {
    let v = create(
        base,
        &format!("/v1/tenants/{tenant}/portal-sessions"),
        json!({ "scope": scope }),
    )
    .await;
    (
        v["id"].as_str().unwrap().to_owned(),
        v["url"].as_str().unwrap().to_owned(),
    )
}

/// The roles of a portal test: a router, a worker and an api serving the portal, with the
/// tenant `acme` created; killed when dropped.
struct Roles {
    base: String,
    children: Vec<std::process::Child>,
}

impl Roles {
    async fn start(env: &support::Env) -> Self {
        let router = env.spawn("router");
        let worker = env.spawn("worker");
        let (api, base) = env.spawn_portal_api(TOKEN, &[]).await;
        create(&base, "/v1/tenants", json!({"id": "acme"})).await;
        Self {
            base,
            children: vec![api, router, worker],
        }
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        for child in &mut self.children {
            support::kill9(child);
        }
    }
}

/// axe-core finds no serious or critical accessibility violation on the view shown as `view`.
async fn accessible(browser: &Browser, view: &str) {
    let found = browser.accessibility_violations().await;
    assert!(found.is_empty(), "{view}: {found:#?}");
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
    let _turn = ONE_BROWSER.lock().await;
    let env = support::Env::new().await;
    // Every answer is hostile: a body and a header value made of markup.
    let rx = Receiver::https(&env.ca, |_, _| {
        Answer::status(200)
            .header("content-type", &format!("text/plain; note={HOSTILE}"))
            .body(HOSTILE)
    })
    .await;
    let roles = Roles::start(&env).await;
    let base = roles.base.clone();
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
    accessible(&browser, "endpoints-empty").await;

    // An endpoint, with a description made of markup.
    browser.click("a", "Add an endpoint").await;
    browser.wait_for("h1", "Add an endpoint").await;
    browser.fill("URL", &rx.url("/hooks")).await;
    browser.fill("Description", HOSTILE).await;
    browser.screenshot("endpoint-new").await;
    accessible(&browser, "endpoint-new").await;
    browser.click("button", "Add the endpoint").await;
    browser.wait_for("#secret", "whsec_").await;
    browser
        .wait_for("h1", "<script>alert('script')</script>")
        .await;
    browser.screenshot("endpoint-created").await;
    accessible(&browser, "endpoint-created").await;
    nothing_ran(&browser, "after the endpoint was added").await;

    // A test event, its attempt and the receiver's answer, as text.
    browser.click("button", "Send a test event").await;
    browser.wait_for("details summary", "200").await;
    browser.wait_for("pre", "<img src=x onerror=").await;
    browser.wait_for("dd", "note=<script>").await;
    assert_eq!(rx.count(), 1, "the receiver got the test event once");
    browser.screenshot("endpoint-test-event").await;
    accessible(&browser, "endpoint-test-event").await;
    nothing_ran(&browser, "after the test event").await;

    // The secret was shown once: the endpoint's page again does not show it.
    browser.refresh().await;
    browser.wait_for("h1", "<script>").await;
    assert!(
        browser.all("#secret").await.is_empty(),
        "the secret is shown again"
    );

    // The delivery log, and back.
    browser.click("a.button", "Delivery log").await;
    browser.wait_for("h1", "Delivery log").await;
    browser.wait_for("summary", "200").await;
    browser.screenshot("delivery-log").await;
    accessible(&browser, "delivery-log").await;
    // The event's page: its delivery and attempts.
    browser.click("summary", "200").await;
    browser.click("dd a", "").await;
    browser.wait_for("h2", "delivered").await;
    browser.screenshot("event").await;
    accessible(&browser, "event").await;
    browser.back().await;
    browser.wait_for("h1", "Delivery log").await;
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
    accessible(&browser, "endpoint-read-only").await;
    nothing_ran(&browser, "in the read-only session").await;

    // The link a second time: used, and the page says so.
    browser.goto(&read).await;
    browser.wait_for("h1", "This link was used already").await;
    browser.wait_for("p", "new one").await;
    browser.screenshot("link-used").await;
    accessible(&browser, "link-used").await;
    assert_eq!(browser.dialog().await, None);

    // A link opened after its 10 minutes: expired, and the page says so.
    let (id, late) = minted(&base, "acme", "read").await;
    env.age_portal_session("acme", &id, "link_expires_at").await;
    browser.goto(&late).await;
    browser.wait_for("h1", "This link has expired").await;

    // Another tenant's endpoint id in the address: the not-found view, nothing of it shown.
    create(&base, "/v1/tenants", json!({"id": "globex"})).await;
    let theirs = create(
        &base,
        "/v1/tenants/globex/endpoints",
        json!({ "url": rx.url("/globex-only"), "description": "Globex payouts" }),
    )
    .await;
    let (id, read) = minted(&base, "acme", "read").await;
    browser.goto(&read).await;
    browser.wait_for("h1", "Endpoints").await;
    browser
        .goto(&format!(
            "{base}/portal/#/endpoints/{}",
            theirs["id"].as_str().unwrap()
        ))
        .await;
    browser.wait_for("h1", "Not found").await;
    let page = browser.text("body").await;
    assert!(
        !page.contains("globex-only") && !page.contains("Globex payouts"),
        "{page}"
    );
    browser.screenshot("not-found").await;
    accessible(&browser, "not-found").await;

    // Ended by its tenant's admin: within 5 s the page stops and says so.
    let (status, v) = support::http(
        "DELETE",
        &format!("{base}/v1/tenants/acme/portal-sessions/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 204, "{v}");
    let ended = std::time::Instant::now();
    for n in 0.. {
        browser
            .run(
                "location.hash = arguments[0]",
                json!([format!("#/endpoints?look={n}")]),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if browser.text("h1").await.contains("The session has ended") {
            break;
        }
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "the page still works 5 s after its session was ended: {}",
            browser.text("body").await
        );
    }
    // The used, expired and ended sessions and the other tenant's endpoint were refused by
    // the API (the browser logs those answers); nothing else went wrong.
    assert_eq!(browser.dialog().await, None);
    for e in browser.console_errors().await {
        assert!(
            e.contains("the server responded with a status of 401")
                || e.contains("the server responded with a status of 404"),
            "{e}"
        );
    }

    // Every field the API has, from the form: a receiver that asks for a client certificate
    // and checks a token, with an extra header of the partner's.
    let client = env.ca.issue_client("gancho-worker");
    let bank = Receiver::https_mtls(&env.ca, |_, r| {
        match (r.header("x-validation-token"), r.header("x-partner-id")) {
            (Some("s3cr3t-t0ken"), Some("42")) => Answer::status(202),
            _ => Answer::status(401).body("token or partner id missing"),
        }
    })
    .await;
    browser.goto(&link(&base, "acme", "manage").await).await;
    browser.click("a", "Add an endpoint").await;
    browser.fill("URL", &bank.url("/webhooks")).await;
    browser.fill("Description", "Bank with mTLS").await;
    browser
        .choose("Profile", "a token the receiver checks")
        .await;
    browser.choose("Sent in", "a header").await;
    browser
        .fill("Header or parameter name", "x-validation-token")
        .await;
    browser.fill("Token value", "s3cr3t-t0ken").await;
    browser.fill("Extra headers", "x-partner-id: 42").await;
    browser.fill("Client certificate", &client.cert_pem).await;
    browser.fill("Client key", "not a key").await;
    browser.fill("CA certificates", env.ca.ca_pem()).await;
    // The API's refusal about one field shows under that field, the rest of the form kept.
    browser.click("button", "Add the endpoint").await;
    browser
        .wait_for(
            "#ep-client_key-error",
            "client_key must be a PEM private key",
        )
        .await;
    let invalid = browser
        .run(
            "return [...document.querySelectorAll('[aria-invalid=true]')].map((e) => e.id === document.activeElement.id && e.getAttribute('aria-describedby'))",
            json!([]),
        )
        .await;
    assert_eq!(
        invalid,
        json!(["ep-client_key-error"]),
        "only the client key is marked invalid, it has the focus and its message describes it"
    );
    assert_eq!(
        browser.text(".error").await,
        "",
        "the refusal is shown once, at its field"
    );
    accessible(&browser, "endpoint-new-refused").await;
    for e in browser.console_errors().await {
        assert!(
            e.contains("the server responded with a status of 422"),
            "{e}"
        );
    }
    browser.fill("Client key", &client.key_pem).await;
    browser.screenshot("endpoint-new-mtls").await;
    accessible(&browser, "endpoint-new-mtls").await;
    browser.click("button", "Add the endpoint").await;
    browser.wait_for("h1", "Bank with mTLS").await;
    browser.click("button", "Send a test event").await;
    browser.wait_for("details summary", "202").await;
    assert_eq!(bank.count(), 1, "the bank got the test event once");
    browser.refresh().await;
    browser.wait_for("dd", "token").await;
    let page = browser.text("body").await;
    assert!(!page.contains("s3cr3t-t0ken"), "the token is shown: {page}");
    assert!(!page.contains("PRIVATE KEY"), "the client key is shown");
    nothing_ran(&browser, "after the mTLS endpoint").await;
}

/// What gancho gave up on, in the dead letters view: the kind and the reason shown; the one
/// selected is sent again once (and leaves the list), the other stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_selected_dead_letter_is_sent_again_once() {
    let _turn = ONE_BROWSER.lock().await;
    let env = support::Env::new().await;
    let healed = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(Mutex::new(Vec::<String>::new()));
    let (h, d) = (healed.clone(), delivered.clone());
    let rx = Receiver::https(&env.ca, move |_, r| {
        let ok = h.load(Ordering::Relaxed);
        if ok {
            let id = r.header("webhook-id").unwrap_or_default().to_owned();
            d.lock().unwrap().push(id);
        }
        Answer::status(if ok { 200 } else { 500 })
    })
    .await;
    let roles = Roles::start(&env).await;
    let base = roles.base.clone();
    // One attempt: a 500 is a dead letter at once.
    create(
        &base,
        "/v1/tenants/acme/endpoints",
        json!({"url": rx.url("/in"), "retry_schedule": "0s"}),
    )
    .await;
    for id in ["lost-a", "lost-b"] {
        env.publish("acme", "charge.paid", id, b"{}", &[]).await;
    }
    wait_until("two dead letters", Duration::from_secs(30), || async {
        env.dead_letters().await.len() == 2
    })
    .await;
    healed.store(true, Ordering::Relaxed);

    let browser = Browser::start().await;
    browser.goto(&link(&base, "acme", "manage").await).await;
    browser.wait_for("h1", "Endpoints").await;
    browser.click("nav a", "Dead letters").await;
    browser.wait_for("h1", "Dead letters").await;
    browser.wait_for("label", "lost-a").await;
    browser.wait_for("label", "lost-b").await;
    browser.wait_for("span", "exhausted").await;
    browser.wait_for("td", "500").await;
    browser.screenshot("dead-letters").await;
    accessible(&browser, "dead-letters").await;

    let seq = browser
        .run(
            "return [...document.querySelectorAll('input[type=checkbox]')]
               .find((b) => b.labels[0].textContent.includes('lost-a')).value",
            json!([]),
        )
        .await;
    let seq: u64 = seq.as_str().unwrap().parse().unwrap();
    browser.click("label", "lost-a").await;
    browser.click("button", "Redrive selected").await;
    browser.click("button", "Yes, redrive selected").await;
    browser.wait_for("h1", "Job").await;
    browser.wait_for("#job-state", "done").await;
    browser.wait_for("#job-sent", "1").await;
    wait_until(
        "the selected one delivered",
        Duration::from_secs(20),
        || std::future::ready(!delivered.lock().unwrap().is_empty()),
    )
    .await;
    browser.screenshot("dead-letter-redriven").await;

    // Gone from the list; the other one stays.
    browser.click("nav a", "Dead letters").await;
    browser.wait_for("label", "lost-b").await;
    let page = browser.text("main").await;
    assert!(
        !page.contains("lost-a"),
        "a dead letter sent again is still listed: {page}"
    );
    // A second redrive of the same one (as from a page left open) sends nothing.
    let job = start_job(
        &base,
        "/v1/tenants/acme/dead-letters/redrive",
        json!({ "sequences": [seq] }),
    )
    .await;
    let job_url = format!(
        "{base}/v1/tenants/acme/jobs/{}",
        job["id"].as_str().unwrap()
    );
    wait_until(
        "the second redrive done",
        Duration::from_secs(20),
        || async { support::http("GET", &job_url, Some(TOKEN), None).await.1["state"] == "done" },
    )
    .await;
    let second = support::http("GET", &job_url, Some(TOKEN), None).await.1;
    assert_eq!(second["sent"], 0, "the second redrive sent again: {second}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        *delivered.lock().unwrap(),
        vec!["lost-a".to_owned()],
        "only the selected one, once"
    );
    nothing_ran(&browser, "in the dead letters view").await;

    // The jobs view lists it, done.
    browser.click("nav a", "Jobs").await;
    browser.wait_for("h1", "Jobs").await;
    browser
        .wait_for("tr", "redrive of 1 selected dead letter")
        .await;
    browser.wait_for("td span", "done").await;
    browser.screenshot("jobs").await;
    accessible(&browser, "jobs").await;
    nothing_ran(&browser, "in the jobs view").await;
}

/// A receiver that answers 500 while `down`, else 200, and keeps the `webhook-id` and body
/// of each request it answered 200.
struct Flaky {
    rx: Receiver,
    down: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    delivered: Arc<Mutex<Vec<(String, String)>>>,
}

impl Flaky {
    async fn start(env: &support::Env) -> Self {
        let down = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let (d, f, ok) = (down.clone(), failed.clone(), delivered.clone());
        let rx = Receiver::https(&env.ca, move |_, r| {
            if d.load(Ordering::SeqCst) {
                f.fetch_add(1, Ordering::SeqCst);
                return Answer::status(500).body("down for maintenance until 03:00");
            }
            let id = r.header("webhook-id").unwrap_or_default().to_owned();
            let body = String::from_utf8_lossy(&r.body).into_owned();
            ok.lock().unwrap().push((id, body));
            Answer::status(200)
        })
        .await;
        Self {
            rx,
            down,
            failed,
            delivered,
        }
    }

    /// How many 200s each `webhook-id` got.
    fn per_id(&self) -> HashMap<String, u32> {
        let mut n = HashMap::new();
        for (id, _) in self.delivered.lock().unwrap().iter() {
            *n.entry(id.clone()).or_default() += 1;
        }
        n
    }

    /// 200s whose body contains `text`.
    fn bodies_with(&self, text: &str) -> usize {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| b.contains(text))
            .count()
    }
}

/// The payloads of the events that fail, and of those held while paused.
const FAILED: &str = r#""amount":990"#;
const HELD: &str = r#""amount":15"#;

/// Where the scenario runs: the portal as the page, or inside a frame of another site's page
/// (which serves `page` with the link put in its iframe).
enum Place<'a> {
    Top,
    Framed {
        site: &'a str,
        page: &'a Arc<Mutex<String>>,
    },
}

/// From start to finish, as a tenant's support person: open a fresh link; add an endpoint
/// (retries 0s,1s, so failures are given up on at once); see its secret once; a test event
/// and its 200; the receiver fails: the failed attempts with its answer in the delivery log;
/// pause: new events are held and the count shows; the receiver is fixed; resume: they
/// arrive; recover: every delivery given up on arrives. Each delivery arrives exactly once.
async fn start_to_finish(
    browser: &mut Browser,
    env: &support::Env,
    base: &str,
    tenant: &str,
    place: Place<'_>,
    name: &str,
) {
    create(base, "/v1/tenants", json!({ "id": tenant })).await;
    let rx = Flaky::start(env).await;
    let url = link(base, tenant, "manage").await;
    match place {
        Place::Top => browser.goto(&url).await,
        Place::Framed { site, page } => {
            *page.lock().unwrap() = url;
            browser.goto(&format!("{site}/dashboard")).await;
            browser.wait_for("h1", "Acme dashboard").await;
            browser.enter_frame().await;
        }
    }
    browser.wait_for("p", "No endpoints yet").await;

    browser.click("a", "Add an endpoint").await;
    browser.wait_for("h1", "Add an endpoint").await;
    browser.fill("URL", &rx.rx.url("/payments")).await;
    browser.fill("Description", "Payments").await;
    browser.fill("Retry schedule", "0s,1s").await;
    browser.click("button", "Add the endpoint").await;
    browser.wait_for("#secret", "whsec_").await;
    browser.wait_for("h1", "Payments").await;

    browser.click("button", "Send a test event").await;
    browser.wait_for("details summary", "200").await;
    browser.screenshot(&format!("{name}-test-event")).await;
    if name == "mouse" {
        accessible(browser, "test-event").await;
    }
    nothing_ran(browser, "after the test event").await;

    // The receiver fails: three events, each tried twice and given up on.
    rx.down.store(true, Ordering::SeqCst);
    let ids = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{tenant}-{prefix}-{i}")).collect()
    };
    let failed = ids("failed", 3);
    env.publish_many(
        tenant,
        "charge.paid",
        failed
            .iter()
            .map(|id| (id.clone(), format!("{{{FAILED}}}").into_bytes())),
    )
    .await;
    wait_until("6 failed attempts", Duration::from_secs(30), || {
        std::future::ready(rx.failed.load(Ordering::SeqCst) >= 6)
    })
    .await;
    browser.click("a.button", "Delivery log").await;
    browser.wait_for("h1", "Delivery log").await;
    browser.fill("Status", "5xx").await;
    browser.click("button", "Filter").await;
    browser.wait_for("summary", "500").await;
    wait_until(
        "the 6 failed attempts listed",
        Duration::from_secs(10),
        || async { browser.all("details").await.len() == 6 },
    )
    .await;
    browser.click("summary", "500").await;
    browser.wait_for("pre", "down for maintenance").await;
    browser.screenshot(&format!("{name}-failed-attempts")).await;
    if name == "mouse" {
        accessible(browser, "failed-attempts").await;
    }
    browser.click("a", "← Endpoint").await;
    browser.wait_for("h1", "Payments").await;

    // Paused: new events are held, and the count shows.
    browser.click("button", "Pause").await;
    browser.wait_for("#state", "paused").await;
    let held = ids("held", 2);
    env.publish_many(
        tenant,
        "charge.paid",
        held.iter()
            .map(|id| (id.clone(), format!("{{{HELD}}}").into_bytes())),
    )
    .await;
    browser.wait_for("#state", "paused, 2 held").await;
    browser.screenshot(&format!("{name}-paused")).await;
    if name == "mouse" {
        accessible(browser, "paused").await;
    }

    // Fixed and resumed: the held ones arrive.
    rx.down.store(false, Ordering::SeqCst);
    browser.click("button", "Resume").await;
    browser.wait_for("#state", "active").await;
    wait_until("the held events delivered", Duration::from_secs(30), || {
        std::future::ready(rx.bodies_with(HELD) == held.len())
    })
    .await;

    // Recover since a quarter of an hour ago: what was given up on arrives.
    browser.choose("From", "15 minutes ago").await;
    browser.click("button", "Recover what failed").await;
    browser.wait_for("#job-state", "done").await;
    browser.screenshot(&format!("{name}-recovered")).await;
    if name == "mouse" {
        accessible(browser, "recovered").await;
    }
    wait_until(
        "the failed events delivered",
        Duration::from_secs(30),
        || std::future::ready(rx.bodies_with(FAILED) == failed.len()),
    )
    .await;
    nothing_ran(browser, "after the recovery").await;

    // The tenant's whole delivery log, from the navigation bar: every attempt, each with the
    // endpoint it went to.
    browser.click("nav a", "Delivery log").await;
    browser
        .wait_for("h1", "Delivery log of every endpoint")
        .await;
    browser.wait_for("summary", "/payments").await;
    browser.screenshot(&format!("{name}-tenant-log")).await;
    if name == "mouse" {
        accessible(browser, "tenant-log").await;
    }

    // Once each: the test event and the five events, and nothing more after a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = rx.per_id();
    assert_eq!(got.len(), 1 + failed.len() + held.len(), "{got:?}");
    assert_eq!(rx.bodies_with(FAILED), failed.len());
    assert_eq!(rx.bodies_with(HELD), held.len());
    assert!(
        got.values().all(|n| *n == 1),
        "a delivery arrived twice: {got:?}"
    );
    if matches!(place, Place::Framed { .. }) {
        browser.top().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_start_to_finish_with_the_mouse_the_keyboard_and_in_a_frame() {
    let _turn = ONE_BROWSER.lock().await;
    let env = support::Env::new().await;
    // Another site's dashboard that frames the portal: `http://localhost:<port>`, a different
    // origin from the api's `http://127.0.0.1:<port>`.
    let page = Arc::new(Mutex::new(String::new()));
    let framing = |page: Arc<Mutex<String>>| {
        move |_, _: &gancho_test_harness::Received| {
            Answer::status(200)
                .header("content-type", "text/html; charset=utf-8")
                .body(&format!(
                    "<!doctype html><title>Acme</title><h1>Acme dashboard</h1><iframe title=\"Webhooks\" src=\"{}\" width=\"1100\" height=\"800\"></iframe>",
                    page.lock().unwrap()
                ))
        }
    };
    let dashboard = Receiver::http(framing(page.clone())).await;
    let stranger = Receiver::http(framing(page.clone())).await;
    let site = format!("http://localhost:{}", dashboard.addr().port());
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    let (mut api, base) = env
        .spawn_portal_api(TOKEN, &[("GANCHO_PORTAL_FRAME_ANCESTORS", site.as_str())])
        .await;
    let mut browser = Browser::start().await;

    start_to_finish(&mut browser, &env, &base, "acme", Place::Top, "mouse").await;
    browser.keyboard(true);
    start_to_finish(&mut browser, &env, &base, "globex", Place::Top, "keyboard").await;
    browser.keyboard(false);
    start_to_finish(
        &mut browser,
        &env,
        &base,
        "initech",
        Place::Framed {
            site: &site,
            page: &page,
        },
        "framed",
    )
    .await;

    // A site not listed in GANCHO_PORTAL_FRAME_ANCESTORS: the browser refuses to show it.
    *page.lock().unwrap() = link(&base, "acme", "read").await;
    browser
        .goto(&format!(
            "http://localhost:{}/dashboard",
            stranger.addr().port()
        ))
        .await;
    browser.wait_for("h1", "Acme dashboard").await;
    wait_until("the frame refused", Duration::from_secs(10), || async {
        browser
            .console_errors()
            .await
            .iter()
            .any(|e| e.contains("frame-ancestors"))
    })
    .await;
    browser.enter_frame().await;
    assert!(
        browser.all("#main").await.is_empty(),
        "the portal showed inside a site that may not frame it"
    );
    browser.top().await;
    for role in [&mut api, &mut router, &mut worker] {
        support::kill9(role);
    }
}

/// The event catalog, in a portal with the operator's title, accent and logo, opened by the
/// platform (the admin token minted the link): an example the schema refuses is shown next to
/// its field with the failing path; the schema, edited in the view, then refuses a bad event
/// over HTTP ingest with its path, an event it accepted before the edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_edited_in_the_catalog_refuses_a_bad_event_at_ingest() {
    let _turn = ONE_BROWSER.lock().await;
    let env = support::Env::new().await;
    let logo = std::env::temp_dir().join(format!("gancho-logo-{}.svg", std::process::id()));
    std::fs::write(
        &logo,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="60" height="20" viewBox="0 0 60 20"><rect width="60" height="20" rx="4" fill="#0b6e4f"/></svg>"##,
    )
    .unwrap();
    let (mut api, base) = env
        .spawn_portal_api(
            TOKEN,
            &[
                ("GANCHO_PORTAL_TITLE", "Pagamentos <Acme>"),
                ("GANCHO_PORTAL_ACCENT", "#0b6e4f"),
                ("GANCHO_PORTAL_LOGO", logo.to_str().unwrap()),
            ],
        )
        .await;
    create(&base, "/v1/tenants", json!({"id": "acme"})).await;
    let ingest = |id: String, data: serde_json::Value| {
        let url = format!("{base}/v1/tenants/acme/events");
        async move {
            let body = json!({"id": id, "type": "charge.paid", "data": data}).to_string();
            support::http("POST", &url, Some(TOKEN), Some(&body)).await
        }
    };
    let browser = Browser::start().await;
    browser.goto(&link(&base, "acme", "manage").await).await;
    browser.wait_for("h1", "Endpoints").await;

    // The operator's brand, and who opened the session.
    browser.wait_for(".brand span", "Pagamentos <Acme>").await;
    browser
        .wait_for("#opened-by", "opened by the platform")
        .await;
    let looks = browser
        .run(
            "const img = document.querySelector('.brand img');
             return [document.title, img.getAttribute('src'), img.complete && img.naturalWidth,
                     getComputedStyle(document.documentElement).getPropertyValue('--accent').trim()];",
            json!([]),
        )
        .await;
    assert_eq!(
        looks,
        json!(["Endpoints · Pagamentos <Acme>", "logo", 60, "#0b6e4f"]),
        "title, logo and accent"
    );

    // A type with a schema whose example it refuses: the API's refusal at the field.
    browser.click("nav a", "Event catalog").await;
    browser
        .wait_for("p", "No event types in the catalog yet")
        .await;
    browser.click("a", "Add an event type").await;
    browser.wait_for("h1", "Add an event type").await;
    browser.fill("Name", "charge.paid").await;
    browser
        .fill("Description", "A charge was paid: its amount in cents.")
        .await;
    browser.fill("Schema", "{\"type\": \"object\"").await;
    browser.click("button", "Add an event type").await;
    browser
        .wait_for("#type-schema-error", "This is not JSON")
        .await;
    browser
        .fill(
            "Schema",
            r#"{"type": "object", "required": ["amount"], "properties": {"amount": {"type": "integer", "minimum": 1, "description": "in cents"}}}"#,
        )
        .await;
    browser.fill("Example", r#"{"amount": "9.90"}"#).await;
    browser.click("button", "Add an event type").await;
    browser.wait_for("#type-example-error", "data/amount").await;
    let said = browser.text("#type-example-error").await;
    assert!(
        said.starts_with("The server refused this: example: data/amount"),
        "the refusal is the API's message after the lead: {said}"
    );
    browser.screenshot("event-type-refused").await;
    accessible(&browser, "event-type-refused").await;
    browser.fill("Example", r#"{"amount": 990}"#).await;
    browser.click("button", "Add an event type").await;
    browser.wait_for("h1", "charge.paid").await;
    browser.wait_for("td code", "data/amount").await;
    browser.wait_for("td", "≥ 1").await;
    browser.screenshot("event-type").await;
    accessible(&browser, "event-type").await;

    // Accepted before the edit; the edit requires a currency of BRL; refused after it.
    let before = ingest(
        "evt-usd-0".into(),
        json!({"amount": 990, "currency": "USD"}),
    )
    .await;
    assert_eq!(before.0, 202, "{}", before.1);
    browser.click("a", "Edit").await;
    browser.wait_for("h1", "Edit event type").await;
    browser
        .fill(
            "Schema",
            r#"{"type": "object", "required": ["amount", "currency"], "properties": {"amount": {"type": "integer", "minimum": 1}, "currency": {"enum": ["BRL"]}}}"#,
        )
        .await;
    // The old example lacks the currency now: refused at its field until it has one.
    browser.click("button", "Save").await;
    browser
        .wait_for("#type-example-error", "\"currency\" is a required property")
        .await;
    browser
        .fill("Example", r#"{"amount": 990, "currency": "BRL"}"#)
        .await;
    browser.click("button", "Save").await;
    browser.wait_for("td code", "data/currency").await;
    // The refusals are the only errors the browser noted: the API's 422s.
    let errors = browser.console_errors().await;
    assert!(
        errors
            .iter()
            .all(|e| e.contains("/event-types/charge.paid") && e.contains("422")),
        "{errors:#?}"
    );
    browser.wait_for("td", "one of \"BRL\"").await;
    // Config changes reach the api within moments: each try a new event, until refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut tries = 0;
    let refused = loop {
        tries += 1;
        let answer = ingest(
            format!("evt-usd-{tries}"),
            json!({"amount": 990, "currency": "USD"}),
        )
        .await;
        if answer.0 != 202 || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        refused.0, 400,
        "the edited schema does not apply at ingest: {}",
        refused.1
    );
    let message = refused.1["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("data/currency"),
        "the refusal names the failing path: {message}"
    );
    browser.click("nav a", "Event catalog").await;
    browser.wait_for("td", "A charge was paid").await;
    browser.screenshot("event-catalog").await;
    accessible(&browser, "event-catalog").await;
    nothing_ran(&browser, "in the event catalog").await;
    support::kill9(&mut api);
    let _ = std::fs::remove_file(&logo);
}

/// The jobs view: a replay started from an endpoint's page shows in it and moves to done; a
/// paced replay started meanwhile is cancelled from its row, and nothing more is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_moves_to_done_and_a_paced_job_is_cancelled_in_the_jobs_view() {
    let _turn = ONE_BROWSER.lock().await;
    let env = support::Env::new().await;
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(200)).await;
    let roles = Roles::start(&env).await;
    let base = roles.base.clone();
    let ep = create(
        &base,
        "/v1/tenants/acme/endpoints",
        json!({"url": rx.url("/in"), "description": "Ledger"}),
    )
    .await;
    let id = ep["id"].as_str().unwrap().to_owned();
    const EVENTS: usize = 40;
    env.publish_many(
        "acme",
        "charge.paid",
        (0..EVENTS).map(|n| (format!("evt-{n}"), format!("{{\"n\":{n}}}").into_bytes())),
    )
    .await;
    wait_until("the events delivered", Duration::from_secs(30), || {
        std::future::ready(rx.count() == EVENTS)
    })
    .await;

    let browser = Browser::start().await;
    browser.goto(&link(&base, "acme", "manage").await).await;
    browser.wait_for("h1", "Endpoints").await;
    browser.click("a", &rx.url("/in")).await;
    browser.wait_for("h1", "Ledger").await;
    browser.click("button", "Replay everything").await;
    browser.wait_for("h1", "Job").await;
    browser.click("a", "← Jobs").await;
    browser.wait_for("h1", "Jobs").await;
    browser.wait_for("tr", &format!("replay of {id}")).await;
    wait_until(
        "the replay done in the jobs view",
        Duration::from_secs(30),
        || async {
            browser
                .text("tbody")
                .await
                .contains(&format!("{EVENTS} of {EVENTS}"))
        },
    )
    .await;
    browser.wait_for("td span", "done").await;
    wait_until("the replay delivered", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 2 * EVENTS)
    })
    .await;

    // A replay at one record a second: cancelled from its row while it runs.
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let paced = start_job(
        &base,
        &format!("/v1/tenants/acme/endpoints/{id}/replay"),
        json!({"since": since.format(&time::format_description::well_known::Rfc3339).unwrap(), "pace": 1}),
    )
    .await;
    let paced_id = paced["id"].as_str().unwrap().to_owned();
    let row = format!("tr[data-job='{paced_id}']");
    browser.wait_for(&row, "running").await;
    browser.screenshot("jobs-running").await;
    accessible(&browser, "jobs-running").await;
    browser
        .click(&format!("{row} button"), "Cancel the job")
        .await;
    browser
        .click(&format!("{row} button"), "Yes, cancel the job")
        .await;
    browser.wait_for("h1", "Jobs").await;
    browser.wait_for(&row, "cancelled").await;
    let sent_at_cancel = rx.count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        rx.count() <= sent_at_cancel + 1,
        "the cancelled job went on sending: {} then {}",
        sent_at_cancel,
        rx.count()
    );
    assert!(
        rx.count() < 3 * EVENTS,
        "the paced job sent everything before it was cancelled"
    );
    nothing_ran(&browser, "in the jobs view").await;
}

/// With a browser in Brazilian Portuguese, every view renders from the Portuguese catalog: no
/// text of the English catalog that differs in Portuguese shows anywhere, the page is marked
/// `pt-BR`, and axe finds nothing serious. Each view is saved as `pt-BR-<view>.png` beside
/// the English screenshots. The switch then turns the page English for the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_renders_in_brazilian_portuguese() {
    let _turn = ONE_BROWSER.lock().await;
    let env = support::Env::new().await;
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(500).body("fora do ar")).await;
    let roles = Roles::start(&env).await;
    let base = roles.base.clone();
    let ep = create(
        &base,
        "/v1/tenants/acme/endpoints",
        json!({"url": rx.url("/in"), "description": "Razão social", "retry_schedule": "0s"}),
    )
    .await;
    let id = ep["id"].as_str().unwrap().to_owned();
    let (status, v) = support::http(
        "PUT",
        &format!("{base}/v1/tenants/acme/event-types/charge.paid"),
        Some(TOKEN),
        Some(&json!({"description": "Cobrança paga", "schema": {"type": "object", "required": ["valor"], "properties": {"valor": {"type": "integer"}}}, "example": {"valor": 990}}).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    env.publish("acme", "charge.paid", "evt-1", br#"{"valor":990}"#, &[])
        .await;
    wait_until("a dead letter", Duration::from_secs(30), || async {
        env.dead_letters().await.len() == 1
    })
    .await;
    let job = start_job(
        &base,
        &format!("/v1/tenants/acme/endpoints/{id}/recover"),
        json!({"since": "2020-01-01T00:00:00Z"}),
    )
    .await;
    let job_id = job["id"].as_str().unwrap().to_owned();

    // The English catalog's texts that read otherwise in Portuguese.
    let catalog = |name: &str| -> HashMap<String, serde_json::Value> {
        let path = format!(
            "{}/../api/portal/strings/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (en, pt) = (catalog("en"), catalog("pt-BR"));
    let english: Vec<String> = en
        .iter()
        .filter(|(k, v)| v.is_string() && pt[*k] != **v && !v.as_str().unwrap().contains('{'))
        .map(|(_, v)| v.as_str().unwrap().trim().to_owned())
        .collect();

    // The API's codes the catalog words: `http_error`, and as older pages showed them,
    // `http error` (not those that are also a Portuguese word of the catalog: `schema`).
    let codes: Vec<String> = en
        .keys()
        .filter_map(|k| k.strip_prefix("outcome.").or(k.strip_prefix("dead.kind.")))
        .flat_map(|c| [c.to_owned(), c.replace('_', " ")])
        .filter(|c| !pt.values().any(|v| v == c))
        .collect();

    let browser = Browser::start_in("pt-BR").await;
    browser.goto(&link(&base, "acme", "manage").await).await;
    browser.wait_for("h1", "Endpoints").await;
    let views = [
        ("endpoints", "#/endpoints".to_owned(), "Endpoints"),
        ("endpoint", format!("#/endpoints/{id}"), "Razão social"),
        (
            "endpoint-new",
            "#/endpoints/new".into(),
            "Adicionar um endpoint",
        ),
        (
            "endpoint-edit",
            format!("#/endpoints/{id}/edit"),
            "Editar endpoint",
        ),
        (
            "delivery-log",
            "#/attempts".into(),
            "Registro de entregas de todos os endpoints",
        ),
        ("event", "#/events/evt-1".into(), "Buscar um evento"),
        ("dead-letters", "#/dead-letters".into(), "Não entregues"),
        ("jobs", "#/jobs".into(), "Tarefas"),
        ("job", format!("#/jobs/{job_id}"), "Tarefa"),
        (
            "event-catalog",
            "#/event-types".into(),
            "Catálogo de eventos",
        ),
        (
            "event-type",
            "#/event-types/charge.paid".into(),
            "charge.paid",
        ),
        (
            "event-type-new",
            "#/event-types/new".into(),
            "Adicionar um tipo de evento",
        ),
        (
            "event-type-edit",
            "#/event-types/charge.paid/edit".into(),
            "Editar tipo de evento",
        ),
    ];
    for (name, hash, title) in &views {
        browser
            .run("location.hash = arguments[0]", json!([hash]))
            .await;
        browser.wait_for("h1", title).await;
        // Settled: nothing is loading any more.
        wait_until("the view loaded", Duration::from_secs(10), || async {
            !browser.text("main").await.contains("Carregando")
        })
        .await;
        let lang = browser
            .run("return document.documentElement.lang", json!([]))
            .await;
        assert_eq!(lang, json!("pt-BR"), "{name}");
        let shown = browser
            .run(
                "const texts = [];
                 const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
                 while (walk.nextNode()) {
                   const t = walk.currentNode.textContent.trim();
                   if (t && walk.currentNode.parentElement.closest('[hidden], noscript, select#lang') === null) texts.push(t);
                 }
                 for (const o of document.querySelectorAll('option, input[placeholder], textarea[placeholder]')) {
                   if (o.closest('select#lang') === null) texts.push((o.textContent || o.getAttribute('placeholder') || '').trim());
                 }
                 return texts;",
                json!([]),
            )
            .await;
        let among = |words: &[String]| -> Vec<String> {
            shown
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t.as_str())
                .filter(|t| words.iter().any(|w| w == t))
                .map(str::to_owned)
                .collect()
        };
        let left = among(&english);
        assert!(
            left.is_empty(),
            "{name}: English shown in Portuguese: {left:?}"
        );
        // Nor the API's codes as they are: outcomes and dead-letter kinds are words too.
        let raw = among(&codes);
        assert!(raw.is_empty(), "{name}: codes shown as they are: {raw:?}");
        if *name == "dead-letters" {
            browser.wait_for("span.badge", "tentativas esgotadas").await;
        }
        browser.screenshot(&format!("pt-BR-{name}")).await;
        accessible(&browser, &format!("pt-BR {name}")).await;
    }
    nothing_ran(&browser, "in Portuguese").await;

    // The switch: English from now on in this session, through a reload too.
    browser.run(
        "const s = document.getElementById('lang'); s.value = 'en'; s.dispatchEvent(new Event('change'));",
        json!([]),
    )
    .await;
    browser.wait_for("h1", "Edit event type").await;
    browser.wait_for("nav a", "Dead letters").await;
    browser.refresh().await;
    browser.wait_for("nav a", "Event catalog").await;
    let lang = browser
        .run("return document.documentElement.lang", json!([]))
        .await;
    assert_eq!(lang, json!("en"));
}
