//! Fixing it alone: recover, replay and redrive as jobs, against a real nats-server, router,
//! worker and api, and real HTTPS receivers counting each webhook by `webhook-id`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;

const TOKEN: &str = "test-admin-token-0123456789";

/// Requests and 2xx answers per (path, webhook-id).
#[derive(Clone, Default)]
struct Tally {
    requests: Arc<Mutex<HashMap<(String, String), u32>>>,
    delivered: Arc<Mutex<HashMap<(String, String), u32>>>,
}

impl Tally {
    fn note(&self, path: &str, id: &str, ok: bool) {
        let key = (path.to_owned(), id.to_owned());
        *self
            .requests
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default() += 1;
        if ok {
            *self.delivered.lock().unwrap().entry(key).or_default() += 1;
        }
    }
    fn requests(&self, path: &str, id: &str) -> u32 {
        let key = (path.to_owned(), id.to_owned());
        self.requests
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(0)
    }
    fn delivered(&self, path: &str, id: &str) -> u32 {
        let key = (path.to_owned(), id.to_owned());
        self.delivered
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(0)
    }
    fn delivered_on(&self, path: &str) -> u32 {
        let d = self.delivered.lock().unwrap();
        d.iter()
            .filter(|((p, _), _)| p == path)
            .map(|(_, n)| n)
            .sum()
    }
}

async fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    support::http(
        method,
        &format!("{base}{path}"),
        Some(TOKEN),
        body.as_deref(),
    )
    .await
}

/// Starts a job and waits until it is no longer running; returns it.
async fn run_job(base: &str, path: &str, body: Value) -> Value {
    let (s, job) = call(base, "POST", path, Some(body)).await;
    assert_eq!(s, 202, "{path}: {job}");
    assert_eq!(job["state"], "running");
    wait_job(base, job["id"].as_str().unwrap(), Duration::from_secs(60)).await
}

async fn wait_job(base: &str, id: &str, patience: Duration) -> Value {
    let path = format!("/v1/tenants/acme/jobs/{id}");
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + patience;
    while std::time::Instant::now() < deadline {
        let (s, job) = call(base, "GET", &path, None).await;
        if s == 200 && job["state"] != "running" {
            return job;
        }
        last = job;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("job {id} still running: {last}");
}

fn now() -> String {
    time::OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_recover_and_redrive_send_exactly_what_they_should() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let tally = Tally::default();
    let healed = Arc::new(AtomicBool::new(false));
    let (t, h) = (tally.clone(), healed.clone());
    let rx = Receiver::https(&env.ca, move |_, r| {
        let id = r.header("webhook-id").unwrap_or_default().to_owned();
        let ok = match r.path.as_str() {
            // Fails the first request of each event, then takes it.
            "/e" => t.requests("/e", &id) >= 1,
            "/c" => !id.starts_with("bad-") || h.load(Ordering::Relaxed),
            "/d" => h.load(Ordering::Relaxed),
            _ => true,
        };
        t.note(&r.path, &id, ok);
        Answer::status(if ok { 200 } else { 500 })
    })
    .await;
    env.endpoint("acme", "a", &rx.url("/a"), &["charge.*"], &[], None)
        .await;
    env.endpoint("acme", "c", &rx.url("/c"), &["refund.*"], &[], Some("0s"))
        .await;
    env.endpoint("acme", "d", &rx.url("/d"), &["invoice.*"], &[], Some("0s"))
        .await;
    env.endpoint(
        "acme",
        "e",
        &rx.url("/e"),
        &["payout.*"],
        &[],
        Some("0s,4s"),
    )
    .await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    let t0 = now();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let charges: Vec<String> = (0..20).map(|i| format!("evt-a-{i}")).collect();
    env.publish_many(
        "acme",
        "charge.paid",
        charges.iter().map(|id| (id.clone(), b"{}".to_vec())),
    )
    .await;
    let refunds: Vec<String> = (0..5)
        .flat_map(|i| [format!("ok-{i}"), format!("bad-{i}")])
        .collect();
    env.publish_many(
        "acme",
        "refund.created",
        refunds.iter().map(|id| (id.clone(), b"{}".to_vec())),
    )
    .await;
    let invoices: Vec<String> = (0..3).map(|i| format!("inv-{i}")).collect();
    env.publish_many(
        "acme",
        "invoice.paid",
        invoices.iter().map(|id| (id.clone(), b"{}".to_vec())),
    )
    .await;
    wait_until("the first round", Duration::from_secs(30), || async {
        tally.delivered_on("/a") == 20
            && tally.delivered_on("/c") == 5
            && env.dead_letters().await.len() == 8
    })
    .await;

    // Replay within seconds of the originals: every charge arrives once more, same id.
    let job = run_job(
        &base,
        "/v1/tenants/acme/endpoints/a/replay",
        json!({"since": t0, "pace": 1000}),
    )
    .await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["sent"], 20, "{job}");
    wait_until("the replayed charges", Duration::from_secs(30), || {
        std::future::ready(tally.delivered_on("/a") == 40)
    })
    .await;
    for id in &charges {
        assert_eq!(
            tally.delivered("/a", id),
            2,
            "{id}: the original and the replay"
        );
    }

    // Recover: only the dead-lettered refunds, once each; a second recover sends nothing.
    healed.store(true, Ordering::Relaxed);
    let job = run_job(
        &base,
        "/v1/tenants/acme/endpoints/c/recover",
        json!({"since": t0, "pace": 1000}),
    )
    .await;
    assert_eq!(job["sent"], 5, "{job}");
    wait_until("the recovered refunds", Duration::from_secs(30), || {
        std::future::ready(tally.delivered_on("/c") == 10)
    })
    .await;
    for id in &refunds {
        assert_eq!(tally.delivered("/c", id), 1, "{id}");
    }
    let job = run_job(
        &base,
        "/v1/tenants/acme/endpoints/c/recover",
        json!({"since": t0}),
    )
    .await;
    assert_eq!(job["sent"], 0, "nothing left to recover: {job}");

    // Redrive all: the invoices' dead letters; a second redrive-all sends nothing.
    let job = run_job(&base, "/v1/tenants/acme/dead-letters/redrive", json!({})).await;
    assert_eq!(job["sent"], 3, "{job}");
    wait_until("the redriven invoices", Duration::from_secs(30), || {
        std::future::ready(tally.delivered_on("/d") == 3)
    })
    .await;
    let (_, dl) = call(&base, "GET", "/v1/tenants/acme/dead-letters", None).await;
    assert_eq!(dl["data"].as_array().unwrap().len(), 0, "{dl}");
    // The second one from the CLI, waiting for it.
    let out = env
        .command(
            &["jobs", "redrive", "--tenant", "acme", "--wait", "--json"],
            &[("GANCHO_API_URL", &base), ("GANCHO_TOKEN", TOKEN)],
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["sent"], 0, "{job}");

    // A replay does not cancel an original's pending retry: each payout fails once, is
    // replayed (delivered), and its original retry still comes, 4 s later.
    let t1 = now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let payouts: Vec<String> = (0..5).map(|i| format!("pay-{i}")).collect();
    env.publish_many(
        "acme",
        "payout.sent",
        payouts.iter().map(|id| (id.clone(), b"{}".to_vec())),
    )
    .await;
    wait_until(
        "the payouts' first attempts",
        Duration::from_secs(20),
        || std::future::ready(payouts.iter().all(|id| tally.requests("/e", id) == 1)),
    )
    .await;
    let job = run_job(
        &base,
        "/v1/tenants/acme/endpoints/e/replay",
        json!({"since": t1, "pace": 1000}),
    )
    .await;
    assert_eq!(job["sent"], 5, "{job}");
    wait_until(
        "the replays and the original retries",
        Duration::from_secs(30),
        || std::future::ready(payouts.iter().all(|id| tally.delivered("/e", id) == 2)),
    )
    .await;

    // Bad requests say what to fix.
    for (path, body, words) in [
        ("/v1/tenants/acme/endpoints/a/replay", json!({}), "since"),
        (
            "/v1/tenants/acme/endpoints/a/replay",
            json!({"since": "soon"}),
            "RFC 3339",
        ),
        (
            "/v1/tenants/acme/endpoints/a/replay",
            json!({"since": t0, "pace": 0}),
            "pace",
        ),
        (
            "/v1/tenants/acme/endpoints/nope/replay",
            json!({"since": t0}),
            "nope",
        ),
        (
            "/v1/tenants/acme/dead-letters/redrive",
            json!({"kind": "lost"}),
            "kind",
        ),
    ] {
        let (s, v) = call(&base, "POST", path, Some(body)).await;
        assert!((400..500).contains(&s), "{path}: {s} {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(words), "{path}: {msg}");
    }

    // The list, a job a page: every job once, the newest first (the jobs view shows the
    // first page).
    let mut listed: Vec<(time::OffsetDateTime, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tenants/acme/jobs?limit=1&cursor={c}"),
            None => "/v1/tenants/acme/jobs?limit=1".to_owned(),
        };
        let (s, page) = call(&base, "GET", &path, None).await;
        assert_eq!(s, 200, "{page}");
        for job in page["data"].as_array().unwrap() {
            let at = time::OffsetDateTime::parse(job["created_at"].as_str().unwrap(), &Rfc3339);
            listed.push((at.unwrap(), job["id"].as_str().unwrap().to_owned()));
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let (_, all) = call(&base, "GET", "/v1/tenants/acme/jobs", None).await;
    assert_eq!(listed.len(), all["data"].as_array().unwrap().len());
    assert!(listed.len() >= 4, "{listed:?}");
    let ids: HashSet<&String> = listed.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), listed.len(), "a job listed twice: {listed:?}");
    assert!(
        listed.windows(2).all(|w| w[0].0 >= w[1].0),
        "not newest first: {listed:?}"
    );
    // A cursor of the list as it was before (a job id: a page open across the upgrade) is
    // refused with what to do, not answered with an empty page.
    use base64::Engine as _;
    let old = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&listed[0].1);
    let (s, v) = call(
        &base,
        "GET",
        &format!("/v1/tenants/acme/jobs?cursor={old}"),
        None,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("first page"),
        "{v}"
    );
    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_its_api_being_killed_can_be_cancelled_and_does_not_hold_up_live_deliveries()
{
    const N: usize = 600;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let tally = Tally::default();
    let t = tally.clone();
    let rx = Receiver::https(&env.ca, move |_, r| {
        t.note(&r.path, r.header("webhook-id").unwrap_or_default(), true);
        Answer::status(200)
    })
    .await;
    env.endpoint("acme", "a", &rx.url("/a"), &["charge.*"], &[], None)
        .await;
    env.endpoint("acme", "live", &rx.url("/live"), &["ping.*"], &[], None)
        .await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    let t0 = now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ids: Vec<String> = (0..N).map(|i| format!("evt-{i}")).collect();
    env.publish_many(
        "acme",
        "charge.paid",
        ids.iter().map(|id| (id.clone(), b"{}".to_vec())),
    )
    .await;
    wait_until("the originals", Duration::from_secs(60), || {
        std::future::ready(tally.delivered_on("/a") == N as u32)
    })
    .await;

    // A replay at 100 a second; its api is killed after 2 s and another takes the job over.
    let (s, job) = call(
        &base,
        "POST",
        "/v1/tenants/acme/endpoints/a/replay",
        Some(json!({"since": t0, "pace": 100})),
    )
    .await;
    assert_eq!(s, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Live deliveries to another endpoint are not queued behind the job.
    let live: Vec<String> = (0..20).map(|i| format!("ping-{i}")).collect();
    env.publish_many(
        "acme",
        "ping.sent",
        live.iter().map(|id| (id.clone(), b"{}".to_vec())),
    )
    .await;
    wait_until("the live pings", Duration::from_secs(10), || {
        std::future::ready(tally.delivered_on("/live") == 20)
    })
    .await;
    let (_, job) = call(&base, "GET", &format!("/v1/tenants/acme/jobs/{id}"), None).await;
    assert_eq!(
        job["state"], "running",
        "the pings arrived while the job ran: {job}"
    );
    assert!(job["done"].as_u64().unwrap() > 0, "{job}");
    support::kill9(&mut api);
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let job = wait_job(&base, &id, Duration::from_secs(90)).await;
    assert_eq!(job["state"], "done", "{job}");
    wait_until("every replay", Duration::from_secs(30), || {
        std::future::ready(tally.delivered_on("/a") == 2 * N as u32)
    })
    .await;
    let doubled: HashSet<&String> = ids
        .iter()
        .filter(|id| tally.delivered("/a", id) != 2)
        .collect();
    assert!(doubled.is_empty(), "each once more, no more: {doubled:?}");

    // A cancelled job stops.
    let (s, job) = call(
        &base,
        "POST",
        "/v1/tenants/acme/endpoints/a/replay",
        Some(json!({"since": t0, "pace": 20})),
    )
    .await;
    assert_eq!(s, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (s, job) = call(
        &base,
        "DELETE",
        &format!("/v1/tenants/acme/jobs/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{job}");
    assert_eq!(job["state"], "cancelled");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_cancel = tally.delivered_on("/a");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        tally.delivered_on("/a"),
        after_cancel,
        "nothing sent after the cancel"
    );
    assert!(after_cancel < 3 * N as u32, "it stopped early");
    let (s, _) = call(
        &base,
        "DELETE",
        &format!("/v1/tenants/acme/jobs/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 409, "cancelling twice");
    let (_, list) = call(&base, "GET", "/v1/tenants/acme/jobs", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_of_listed_dead_letters_sends_exactly_those_once() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    env.tenant("globex").await;
    let tally = Tally::default();
    let healed = Arc::new(AtomicBool::new(false));
    let (t, h) = (tally.clone(), healed.clone());
    let rx = Receiver::https(&env.ca, move |_, r| {
        let id = r.header("webhook-id").unwrap_or_default().to_owned();
        let ok = h.load(Ordering::Relaxed);
        t.note(&r.path, &id, ok);
        Answer::status(if ok { 200 } else { 500 })
    })
    .await;
    // One attempt each: a 500 is a dead letter at once.
    env.endpoint("acme", "a", &rx.url("/a"), &[">"], &[], Some("0s"))
        .await;
    env.endpoint("globex", "g", &rx.url("/g"), &[">"], &[], Some("0s"))
        .await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    env.publish_many(
        "acme",
        "charge.paid",
        (0..3).map(|i| (format!("evt-{i}"), b"{}".to_vec())),
    )
    .await;
    env.publish_many("globex", "charge.paid", [("evt-g".into(), b"{}".to_vec())])
        .await;
    wait_until("four dead letters", Duration::from_secs(30), || async {
        env.dead_letters().await.len() == 4
    })
    .await;
    healed.store(true, Ordering::Relaxed);
    let seqs = |tenant: &'static str| {
        let base = base.clone();
        async move {
            let (s, page) = call(
                &base,
                "GET",
                &format!("/v1/tenants/{tenant}/dead-letters"),
                None,
            )
            .await;
            assert_eq!(s, 200, "{page}");
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    (
                        d["seq"].as_u64().unwrap(),
                        d["event"]["id"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let acme = seqs("acme").await;
    let globex = seqs("globex").await;
    assert_eq!((acme.len(), globex.len()), (3, 1));
    let redrive = "/v1/tenants/acme/dead-letters/redrive";

    // What is wrong is said, and nothing is sent.
    for (body, says) in [
        (
            json!({"sequences": [globex[0].0]}),
            "is not one of tenant acme's dead letters",
        ),
        (
            json!({"sequences": [acme[0].0], "endpoint": "a"}),
            "leave out endpoint",
        ),
        (json!({"sequences": []}), "sequences must list 1 to 1000"),
    ] {
        let (s, err) = call(&base, "POST", redrive, Some(body.clone())).await;
        assert_eq!(s, 422, "{body}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {err}"
        );
    }

    // The one selected: delivered once; the others stay dead letters.
    let (picked, event) = acme[1].clone();
    let job = run_job(&base, redrive, json!({"sequences": [picked]})).await;
    assert_eq!(
        (
            job["state"].as_str(),
            job["sent"].as_u64(),
            job["selected"].as_u64(),
            job["kind"].as_str()
        ),
        (Some("done"), Some(1), Some(1), Some("redrive")),
        "{job}"
    );
    wait_until(
        "the selected one delivered",
        Duration::from_secs(20),
        || std::future::ready(tally.delivered("/a", &event) == 1),
    )
    .await;
    let left: Vec<u64> = seqs("acme").await.into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        left,
        {
            let mut l = vec![acme[0].0, acme[2].0];
            l.sort_unstable_by(|a, b| b.cmp(a));
            l
        },
        "the others are still dead letters (newest first)"
    );
    assert_eq!(seqs("globex").await.len(), 1);

    // Again: nothing to send.
    let job = run_job(&base, redrive, json!({"sequences": [picked]})).await;
    assert_eq!(
        (
            job["state"].as_str(),
            job["sent"].as_u64(),
            job["skipped"].as_u64()
        ),
        (Some("done"), Some(0), Some(1)),
        "{job}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tally.delivered("/a", &event), 1, "sent once");
    for other in [&acme[0].1, &acme[2].1] {
        assert_eq!(tally.delivered("/a", other), 0, "{other} was not selected");
    }
    for child in [&mut api, &mut router, &mut worker] {
        support::kill9(child);
    }
}
