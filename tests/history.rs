//! "Why didn't my webhook arrive?": the delivery log through the API, against a real
//! nats-server, router, worker and api, and real HTTPS receivers. An endpoint answers 500 for
//! a while, then 200: its log shows each attempt with its status, newest first, filters
//! work and pages never overlap. One event's page shows every attempt of every delivery. Dead
//! letters of each kind are listed with their reasons.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";
const N: usize = 30;
/// Events whose first two attempts get a 500 (few enough that the circuit stays closed).
const FLAKY: [&str; 4] = ["evt-0", "evt-7", "evt-14", "evt-21"];
/// Every attempt: one per event, two more for each flaky one.
const ATTEMPTS: usize = N + 2 * FLAKY.len();

async fn get(base: &str, path: &str) -> (u16, Value) {
    support::http("GET", &format!("{base}{path}"), Some(TOKEN), None).await
}

/// Every page of `path` (which has a `?`), `limit` at a time: the records, and how many
/// pages it took.
async fn walk(base: &str, path: &str, limit: usize) -> (Vec<Value>, usize) {
    let (mut all, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let url = match &cursor {
            None => format!("{path}&limit={limit}"),
            Some(c) => format!("{path}&limit={limit}&cursor={c}"),
        };
        let (s, v) = get(base, &url).await;
        assert_eq!(s, 200, "{url}: {v}");
        let data = v["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        all.extend(data.iter().cloned());
        pages += 1;
        match v["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (all, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_answers_why_a_webhook_did_not_arrive() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    // The first 2 requests of a flaky event fail with 500, the third is a 200.
    let counts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        u32,
    >::new()));
    let seen = counts.clone();
    let rx = Receiver::https(&env.ca, move |_, r| {
        let id = r.header("webhook-id").unwrap_or_default().to_owned();
        let flaky = FLAKY.contains(&id.as_str());
        let mut c = seen.lock().unwrap();
        let n = c.entry(id).or_default();
        *n += 1;
        if flaky && *n <= 2 {
            Answer::status(500).body("try later")
        } else {
            Answer::status(200)
        }
    })
    .await;
    env.endpoint(
        "acme",
        "billing",
        &rx.url("/hook"),
        &["charge.*"],
        &[],
        Some("0s,1s,1s,1s"),
    )
    .await;
    // One that always fails and gives up after two attempts.
    let dead_rx = Receiver::https(&env.ca, |_, _| Answer::status(503)).await;
    env.endpoint(
        "acme",
        "broken",
        &dead_rx.url("/hook"),
        &["refund.*"],
        &[],
        Some("0s,1s"),
    )
    .await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");

    env.publish_many(
        "acme",
        "charge.paid",
        (0..N).map(|i| (format!("evt-{i}"), br#"{"amount":100}"#.to_vec())),
    )
    .await;
    env.publish_many(
        "acme",
        "refund.created",
        [("evt-refund".to_string(), br#"{"amount":5}"#.to_vec())],
    )
    .await;
    // An event the router cannot deliver: its payload is not JSON.
    env.publish_many(
        "acme",
        "charge.paid",
        [("evt-bad".to_string(), b"not json".to_vec())],
    )
    .await;
    wait_until("every event delivered", Duration::from_secs(60), || {
        std::future::ready(rx.distinct() == N && rx.count() == ATTEMPTS)
    })
    .await;
    wait_until(
        "the refund dead-lettered",
        Duration::from_secs(30),
        || async { env.dead_letters().await.len() == 2 },
    )
    .await;
    wait_until(
        "every attempt recorded",
        Duration::from_secs(10),
        || async { env.attempts("acme", "billing").await.len() == ATTEMPTS },
    )
    .await;

    // The whole log, newest first, 7 at a time: every attempt once, no page overlapping.
    let logpath = "/v1/tenants/acme/endpoints/billing/attempts?x=1";
    let (all, pages) = walk(&base, logpath, 7).await;
    assert_eq!(all.len(), ATTEMPTS, "every attempt once");
    assert_eq!(pages, ATTEMPTS.div_ceil(7));
    let seqs: Vec<u64> = all.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    // `at` is when an attempt started; the log is in the order attempts ended.
    let fails = all.iter().filter(|a| a["status"] == 500).count();
    assert_eq!(fails, 2 * FLAKY.len());
    let a = all.iter().find(|a| a["status"] == 500).unwrap();
    assert_eq!(a["outcome"], "http_error");
    assert_eq!(a["response_body"], "try later");
    assert!(a["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(a["url"].as_str().unwrap().ends_with("/hook"));

    // Filters: by status class, exact status, outcome, and time.
    for (query, want) in [
        ("status=5xx", 2 * FLAKY.len()),
        ("status=500", 2 * FLAKY.len()),
        ("status=503", 0),
        ("status=2xx", N),
        ("outcome=success", N),
        ("outcome=timeout", 0),
        // Every outcome an attempt can have is a filter, the proxy's too.
        ("outcome=proxy_error", 0),
        ("status=5xx&outcome=http_error", 2 * FLAKY.len()),
    ] {
        let (got, _) = walk(
            &base,
            &format!("/v1/tenants/acme/endpoints/billing/attempts?{query}"),
            25,
        )
        .await;
        assert_eq!(got.len(), want, "{query}");
        if query.starts_with("status=5") && want > 0 {
            assert!(got.iter().all(|a| a["status"] == 500), "{query}");
        }
    }
    // Since and until split the log in two at a time: every record on one side, the newer
    // ones after the older ones. Half a second after the last first attempt started, the
    // first attempts are recorded and the retries (a second later) are not.
    use time::format_description::well_known::Rfc3339;
    let first_round = all
        .iter()
        .filter(|a| a["attempt"] == 1)
        .map(|a| time::OffsetDateTime::parse(a["at"].as_str().unwrap(), &Rfc3339).unwrap())
        .max()
        .unwrap();
    let middle = (first_round + Duration::from_millis(500))
        .format(&Rfc3339)
        .unwrap();
    let (newer, _) = walk(
        &base,
        &format!("/v1/tenants/acme/endpoints/billing/attempts?since={middle}"),
        50,
    )
    .await;
    let (older, _) = walk(
        &base,
        &format!("/v1/tenants/acme/endpoints/billing/attempts?until={middle}"),
        50,
    )
    .await;
    assert_eq!(older.len(), N, "the first attempts, before {middle}");
    assert_eq!(
        newer.len() + older.len(),
        ATTEMPTS,
        "each record on one side"
    );
    let oldest_newer = newer.iter().map(|a| a["seq"].as_u64().unwrap()).min();
    let newest_older = older.iter().map(|a| a["seq"].as_u64().unwrap()).max();
    assert!(oldest_newer > newest_older);
    let (s, v) = get(
        &base,
        &format!("/v1/tenants/acme/endpoints/billing/attempts?since={middle}&until={middle}"),
    )
    .await;
    assert_eq!(s, 400, "{v}");

    // The tenant's delivery log: both endpoints' attempts in one log, newest first, with the
    // same filters; `endpoint` narrows it to one.
    let (tenant_log, _) = walk(&base, "/v1/tenants/acme/attempts?x=1", 9).await;
    assert_eq!(tenant_log.len(), ATTEMPTS + 2, "billing's and broken's");
    let seqs: Vec<u64> = tenant_log
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first");
    let (broken, _) = walk(&base, "/v1/tenants/acme/attempts?status=503", 9).await;
    assert_eq!(broken.len(), 2, "broken's two 503s");
    assert!(broken.iter().all(|a| a["endpoint_id"] == "broken"));
    let (billing, _) = walk(&base, "/v1/tenants/acme/attempts?endpoint=billing", 50).await;
    assert_eq!(billing, all, "the same as the endpoint's own log");

    // One event: its delivery, every attempt oldest first, and its state.
    let (s, ev) = get(&base, "/v1/tenants/acme/events/evt-7").await;
    assert_eq!(s, 200, "{ev}");
    assert_eq!(ev["type"], "charge.paid");
    let d = &ev["deliveries"][0];
    assert_eq!(ev["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(d["endpoint_id"], "billing");
    assert_eq!(d["state"], "delivered");
    let statuses: Vec<u64> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 200]);
    let numbers: Vec<u64> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    let (_, ev) = get(&base, "/v1/tenants/acme/events/evt-3").await;
    assert_eq!(ev["deliveries"][0]["attempts"][0]["status"], 200, "{ev}");

    // The refund: given up on, with the reason, on the event's page and in the dead letters.
    let (_, ev) = get(&base, "/v1/tenants/acme/events/evt-refund").await;
    let d = &ev["deliveries"][0];
    assert_eq!(d["state"], "dead", "{ev}");
    assert_eq!(d["dead_letter"]["kind"], "exhausted");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 2);
    let (s, dl) = get(&base, "/v1/tenants/acme/dead-letters?kind=exhausted").await;
    assert_eq!(s, 200, "{dl}");
    let data = dl["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["endpoint_id"], "broken");
    assert_eq!(data[0]["event"]["id"], "evt-refund");
    assert_eq!(data[0]["event"]["data"], json!({"amount": 5}));
    assert!(data[0]["reason"].as_str().unwrap().contains("503"), "{dl}");
    // The event the router refused, under `_events`, with its reason.
    let (_, dl) = get(&base, "/v1/tenants/acme/dead-letters?endpoint=_events").await;
    let data = dl["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{dl}");
    assert_eq!(data[0]["kind"], "not_json");
    assert_eq!(data[0]["event"]["id"], "evt-bad");
    let (_, ev) = get(&base, "/v1/tenants/acme/events/evt-bad").await;
    assert_eq!(ev["dead_letters"][0]["kind"], "not_json", "{ev}");
    let (_, dl) = get(&base, "/v1/tenants/acme/dead-letters?x=1&limit=1").await;
    assert_eq!(dl["data"].as_array().unwrap().len(), 1);
    assert!(dl["next"].is_string(), "two dead letters, one per page");

    // Questions that cannot be answered get a 4xx saying what to fix.
    for (path, status, words) in [
        ("/v1/tenants/acme/events/evt-nothing", 404, "no attempt"),
        (
            "/v1/tenants/acme/endpoints/billing/attempts?status=5x",
            400,
            "status",
        ),
        (
            "/v1/tenants/acme/endpoints/billing/attempts?outcome=bad",
            400,
            "outcome",
        ),
        (
            "/v1/tenants/acme/endpoints/billing/attempts?since=yesterday",
            400,
            "RFC 3339",
        ),
        (
            "/v1/tenants/acme/endpoints/billing/attempts?cursor=zz",
            400,
            "cursor",
        ),
        ("/v1/tenants/acme/dead-letters?kind=lost", 400, "kind"),
        ("/v1/tenants/acme/attempts?outcome=late", 400, "outcome"),
        (
            "/v1/tenants/acme/attempts?endpoint=no%20such",
            400,
            "endpoint",
        ),
        ("/v1/tenants/nobody/attempts", 404, "nobody"),
        ("/v1/tenants/nobody/dead-letters", 404, "nobody"),
    ] {
        let (s, v) = get(&base, path).await;
        assert_eq!(s, status, "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(words), "{path}: {msg}");
    }

    // The same from the CLI.
    let cli = |args: &[&str]| {
        let out = env
            .command(args, &[("GANCHO_API_URL", &base), ("GANCHO_TOKEN", TOKEN)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = cli(&["events", "get", "--tenant", "acme", "evt-7"]);
    assert!(text.contains("state delivered"), "{text}");
    assert_eq!(text.matches("http_error").count(), 2, "{text}");
    assert_eq!(text.matches("success").count(), 1, "{text}");
    let text = cli(&[
        "attempts",
        "list",
        "--tenant",
        "acme",
        "--endpoint",
        "billing",
        "--status",
        "5xx",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2 * FLAKY.len());
    // Without --endpoint, the tenant's log, each attempt with its endpoint.
    let text = cli(&["attempts", "list", "--tenant", "acme", "--status", "503"]);
    assert!(text.contains("ENDPOINT_ID"), "{text}");
    assert_eq!(text.matches("broken").count(), 2, "{text}");
    let text = cli(&["dead-letters", "list", "--tenant", "acme"]);
    assert!(
        text.contains("exhausted") && text.contains("evt-refund"),
        "{text}"
    );
    assert!(
        text.contains("not_json") && text.contains("evt-bad"),
        "{text}"
    );
    // --follow prints the newest 10, then an attempt that happens after it started.
    let mut follow = env
        .command(
            &[
                "attempts",
                "list",
                "--tenant",
                "acme",
                "--endpoint",
                "billing",
                "--follow",
                "--json",
            ],
            &[("GANCHO_API_URL", &base), ("GANCHO_TOKEN", TOKEN)],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.publish_many(
        "acme",
        "charge.paid",
        [("evt-follow".to_string(), br#"{"amount":1}"#.to_vec())],
    )
    .await;
    wait_until(
        "--follow to print the new attempt",
        Duration::from_secs(20),
        || {
            std::future::ready(
                lines
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.contains("evt-follow")),
            )
        },
    )
    .await;
    let printed = lines.lock().unwrap().clone();
    assert_eq!(
        printed.len(),
        11,
        "the newest 10, then the new one: {printed:?}"
    );
    let seqs: Vec<u64> = printed
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );
    assert!(printed[10].contains("evt-follow"));
    support::terminate(&mut follow);

    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_reaches_the_endpoint_signed_and_answers_with_the_attempt() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https(&env.ca, |_, r| {
        Answer::status(if r.path == "/down" { 503 } else { 200 }).body("got it")
    })
    .await;
    // Subscribed to something else entirely: a test event goes anyway.
    let ep = env
        .endpoint(
            "acme",
            "billing",
            &rx.url("/hook"),
            &["charge.*"],
            &[],
            None,
        )
        .await;
    env.endpoint("acme", "down", &rx.url("/down"), &[], &[], Some("0s"))
        .await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    let post = |path: &'static str, body: Option<Value>| {
        let base = base.clone();
        async move {
            let body = body.map(|b| b.to_string());
            support::http(
                "POST",
                &format!("{base}{path}"),
                Some(TOKEN),
                body.as_deref(),
            )
            .await
        }
    };

    let (s, v) = post("/v1/tenants/acme/endpoints/billing/test", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["type"], "gancho.test");
    assert_eq!(v["attempt"]["status"], 200, "{v}");
    assert_eq!(v["attempt"]["response_body"], "got it");
    let got = rx.received();
    let r = got
        .iter()
        .find(|r| r.header("webhook-id") == v["event_id"].as_str())
        .expect("the receiver got the test event");
    support::verify(&ep, r).unwrap();
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["type"], "gancho.test");
    assert_eq!(body["data"]["endpoint_id"], "billing");

    // The catalog's example for a type, when asked.
    let (s, v) = support::http(
        "PUT",
        &format!("{base}/v1/tenants/acme/event-types/charge.paid"),
        Some(TOKEN),
        Some(&json!({"description": "paid", "example": {"amount": 1990}}).to_string()),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = post(
        "/v1/tenants/acme/endpoints/billing/test",
        Some(json!({"type": "charge.paid"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let got = rx.received();
    let r = got
        .iter()
        .find(|r| r.header("webhook-id") == v["event_id"].as_str())
        .unwrap();
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["data"], json!({"amount": 1990}));

    // A failing endpoint: the answer says how it failed.
    let (s, v) = post("/v1/tenants/acme/endpoints/down/test", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["attempt"]["status"], 503);
    assert_eq!(v["attempt"]["outcome"], "http_error");

    for (path, body, status, words) in [
        ("/v1/tenants/acme/endpoints/nope/test", None, 404, "nope"),
        (
            "/v1/tenants/acme/endpoints/billing/test",
            Some(json!({"type": "refund.none"})),
            404,
            "catalog",
        ),
        (
            "/v1/tenants/acme/endpoints/billing/test",
            Some(json!({"kind": "x"})),
            400,
            "body",
        ),
    ] {
        let (s, v) = post(path, body).await;
        assert_eq!(s, status, "{path}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(words),
            "{v}"
        );
    }
    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}
