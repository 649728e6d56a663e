//! HTTP ingest against a real nats-server and receivers: an event sent over HTTP arrives
//! exactly like one published over NATS; the same id is delivered once; a batch reports each
//! item; JetStream not answering is a 503 naming the id, and the retry is delivered once;
//! only `publish` keys (and the admin) may send.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Receiver};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

async fn post(base: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    support::http(
        "POST",
        &format!("{base}{path}"),
        Some(token),
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_over_http_are_delivered_like_nats_ones() {
    let env = support::Env::new().await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    env.tenant("acme").await;
    env.tenant("globex").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    let ep = env
        .endpoint("acme", "ep1", &rx.url("/hook"), &["charge.*"], &[], None)
        .await;
    let (_, key) = post(
        &base,
        "/v1/tenants/acme/api-keys",
        TOKEN,
        json!({"name": "billing", "scopes": ["publish"]}),
    )
    .await;
    let publish_key = key["key"].as_str().unwrap().to_owned();
    let (_, key) = post(
        &base,
        "/v1/tenants/acme/api-keys",
        TOKEN,
        json!({"name": "ops", "scopes": ["manage"]}),
    )
    .await;
    let manage_key = key["key"].as_str().unwrap().to_owned();
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");

    // The same event over NATS and over HTTP: same body, same headers.
    let data = r#"{"amount":1990,"currency":"BRL","items":[{"sku":"a"}]}"#;
    let at = time::macros::datetime!(2026-11-28 10:30:05 UTC);
    let ev = gancho_proto::Event {
        id: "evt-nats".into(),
        tenant: "acme".into(),
        r#type: "charge.paid".into(),
        occurred_at: Some(gancho_proto::timestamp(at)),
        payload: bytes::Bytes::from(data),
        ..Default::default()
    };
    use gancho_proto::Message as _;
    env.publish_raw(
        &env.layout.subjects.event("acme", "charge.paid"),
        ev.encode_to_vec(),
        "evt-nats",
    )
    .await;
    let body = format!(
        r#"{{"id":"evt-http","type":"charge.paid","data":{data},"occurred_at":"2026-11-28T10:30:05Z"}}"#
    );
    let (s, v) = support::http(
        "POST",
        &format!("{base}/v1/tenants/acme/events"),
        Some(&publish_key),
        Some(&body),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v, json!({"id": "evt-http", "duplicate": false}));
    wait_until("both webhooks", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 2)
    })
    .await;
    let got = rx.received();
    let nats = got
        .iter()
        .find(|r| r.header("webhook-id") == Some("evt-nats"))
        .unwrap();
    let http = got
        .iter()
        .find(|r| r.header("webhook-id") == Some("evt-http"))
        .unwrap();
    assert_eq!(nats.body, http.body, "same body either way");
    let names = |r: &gancho_test_harness::Received| {
        let mut n: Vec<String> = r.headers.keys().map(|k| k.to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(names(nats), names(http));
    support::verify(&ep, http).unwrap();

    // The same id twice: one delivery.
    let (s, v) = support::http(
        "POST",
        &format!("{base}/v1/tenants/acme/events"),
        Some(&publish_key),
        Some(&body),
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(v["duplicate"], true, "{v}");

    // A batch: a duplicate, an invalid item and a valid one.
    let (s, v) = post(
        &base,
        "/v1/tenants/acme/events/batch",
        &publish_key,
        json!({"events": [
            {"id": "evt-http", "type": "charge.paid", "data": {}},
            {"id": "evt-bad", "type": "charge..paid", "data": {}},
            {"id": "evt-batch", "type": "charge.refunded", "data": {"amount": 5}},
            {"id": "evt-scalar", "type": "charge.paid", "data": 5},
        ]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let statuses: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["duplicate", "invalid", "accepted", "invalid"],
        "{v}"
    );
    assert!(
        v["results"][1]["error"].as_str().unwrap().contains("type"),
        "{v}"
    );
    assert!(
        v["results"][3]["error"].as_str().unwrap().contains("data"),
        "{v}"
    );
    wait_until("the batch's valid event", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rx.count(),
        3,
        "the duplicate and the invalid ones are not delivered"
    );
    assert_eq!(rx.distinct(), 3);

    // Who may send: a manage key may not; another tenant's publish key sees no tenant.
    let (s, v) = post(
        &base,
        "/v1/tenants/acme/events",
        &manage_key,
        json!({"type": "charge.paid", "data": {}}),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"publish\""),
        "{v}"
    );
    let (s, _) = post(
        &base,
        "/v1/tenants/globex/events",
        &publish_key,
        json!({"type": "charge.paid", "data": {}}),
    )
    .await;
    assert_eq!(s, 404);
    // Bad input names the field.
    let (s, v) = post(
        &base,
        "/v1/tenants/acme/events",
        TOKEN,
        json!({"type": "charge.paid", "data": {}, "id": "has space"}),
    )
    .await;
    assert_eq!(
        (
            s,
            v["error"]["message"].as_str().unwrap().starts_with("id ")
        ),
        (422, true),
        "{v}"
    );

    // JetStream not answering: 503 naming the id, retry safe; after it is back, the retry
    // is delivered exactly once.
    env.nats.pause();
    let (s, v) = post(
        &base,
        "/v1/tenants/acme/events",
        TOKEN,
        json!({"id": "evt-outage", "type": "charge.paid", "data": {}}),
    )
    .await;
    env.nats.resume();
    assert_eq!(s, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("evt-outage") && msg.contains("same id"),
        "{msg}"
    );
    wait_until("the retry accepted", Duration::from_secs(30), || {
        let base = &base;
        async move {
            let body = json!({"id": "evt-outage", "type": "charge.paid", "data": {}});
            post(base, "/v1/tenants/acme/events", TOKEN, body).await.0 == 202
        }
    })
    .await;
    wait_until("the retried event", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 4)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outage = rx
        .received()
        .iter()
        .filter(|r| r.header("webhook-id") == Some("evt-outage"))
        .count();
    assert_eq!(outage, 1, "delivered exactly once");

    // The CLI: one event, then a JSON-lines file in batches, reporting each problem.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(
        &file,
        "{\"id\":\"cli-1\",\"type\":\"charge.paid\",\"data\":{}}\n\n\
         {\"id\":\"cli-2\",\"type\":\"charge..paid\",\"data\":{}}\n\
         {\"id\":\"cli-3\",\"type\":\"charge.paid\",\"data\":[1]}\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
            .args(args)
            .env("GANCHO_API_URL", &base)
            .env("GANCHO_TOKEN", &publish_key)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = cli(&[
        "events",
        "send",
        "--tenant",
        "acme",
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert!(!out.status.success(), "an invalid line fails the command");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["counts"],
        json!({"accepted": 2, "invalid": 1}),
        "{report}"
    );
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("line 3: invalid"),
        "{report}"
    );
    let out = cli(&[
        "events",
        "send",
        "--tenant",
        "acme",
        "--type",
        "charge.paid",
        "--data",
        "{\"n\":1}",
        "--id",
        "cli-4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cli-4"));
    wait_until("the CLI's events", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 7)
    })
    .await;
    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_duplicate_window_applies_to_the_existing_stream() {
    let env = support::Env::new().await;
    let window = || async {
        let mut s = env
            .js
            .get_stream(env.layout.subjects.events_stream())
            .await
            .unwrap();
        s.info().await.unwrap().config.duplicate_window
    };
    assert_eq!(
        window().await,
        Duration::from_secs(120),
        "the documented default"
    );
    let mut router = env.spawn_with(&["router"], &[("GANCHO_DUPLICATE_WINDOW", "10m")]);
    wait_until("the new window", Duration::from_secs(20), || async {
        window().await == Duration::from_secs(600)
    })
    .await;
    support::terminate(&mut router);
}
