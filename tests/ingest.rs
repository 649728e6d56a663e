//! HTTP ingest against a real nats-server and receivers: an event sent over HTTP arrives
//! exactly like one published over NATS; the same id is delivered once; a batch reports each
//! item; JetStream not answering is a 503 naming the id, and the retry is delivered once;
//! only `publish` keys (and the admin) may send.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
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
        "acme:evt-nats",
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

/// Event ids and endpoint ids are unique only within a tenant: two tenants sending `evt-1`
/// to an endpoint each calls `primary`, within the duplicate window, over HTTP and over NATS,
/// both get every webhook, while the same id again in one tenant is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_may_use_the_same_event_and_endpoint_ids() {
    let env = support::Env::new().await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let (acme, globex) = (
        Receiver::https_sequence(&env.ca, &[200]).await,
        Receiver::https_sequence(&env.ca, &[200]).await,
    );
    for (tenant, rx) in [("acme", &acme), ("globex", &globex)] {
        env.tenant(tenant).await;
        env.endpoint(tenant, "primary", &rx.url("/hook"), &[], &[], None)
            .await;
    }
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    for tenant in ["acme", "globex"] {
        let (s, v) = post(
            &base,
            &format!("/v1/tenants/{tenant}/events"),
            TOKEN,
            json!({"id": "evt-1", "type": "charge.paid", "data": {"tenant": tenant}}),
        )
        .await;
        assert_eq!((s, &v), (202, &json!({"id": "evt-1", "duplicate": false})));
        env.publish(tenant, "charge.paid", "evt-2", br#"{}"#, &[])
            .await;
    }
    let (s, v) = post(
        &base,
        "/v1/tenants/globex/events",
        TOKEN,
        json!({"id": "evt-1", "type": "charge.paid", "data": {"tenant": "globex"}}),
    )
    .await;
    assert_eq!((s, &v), (202, &json!({"id": "evt-1", "duplicate": true})));
    wait_until("both tenants' webhooks", Duration::from_secs(20), || {
        std::future::ready(acme.count() == 2 && globex.count() == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (tenant, rx) in [("acme", &acme), ("globex", &globex)] {
        let mut ids: Vec<String> = rx
            .received()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        ids.sort();
        assert_eq!(ids, ["evt-1", "evt-2"], "{tenant}'s receiver");
        let first = rx
            .received()
            .into_iter()
            .find(|r| r.header("webhook-id") == Some("evt-1"))
            .unwrap();
        assert!(
            String::from_utf8_lossy(&first.body).contains(tenant),
            "{tenant} got its own evt-1"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_schema_applies_to_http_and_nats_events_without_a_restart() {
    let env = support::Env::new().await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint("acme", "ep1", &rx.url("/hook"), &["charge.*"], &[], None)
        .await;
    let put = |body: Value| {
        let base = base.clone();
        async move {
            support::http(
                "PUT",
                &format!("{base}/v1/tenants/acme/event-types/charge.paid"),
                Some(TOKEN),
                Some(&body.to_string()),
            )
            .await
        }
    };
    let schema = |max: u64| {
        json!({"type": "object", "required": ["amount"],
               "properties": {"amount": {"type": "integer", "minimum": 1, "maximum": max}}})
    };
    // A bad schema, and an example that breaks its schema, are refused.
    let (s, v) = put(json!({"schema": {"type": "nope"}})).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("JSON Schema"), "{v}");
    assert_eq!(
        v["error"]["field"], "schema",
        "the refusal names its field: {v}"
    );
    let (s, v) = put(json!({"schema": schema(1000), "example": {"amount": "ten"}})).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["field"], "example", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("example: data/amount"),
        "{v}"
    );
    let (s, v) = put(
        json!({"description": "A charge was paid.", "schema": schema(1000),
                            "example": {"amount": 990}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = support::http(
        "GET",
        &format!("{base}/v1/tenants/acme/event-types"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"][0]["name"], "charge.paid", "{v}");

    let send = |id: &'static str, data: Value| {
        let base = base.clone();
        async move {
            post(
                &base,
                "/v1/tenants/acme/events",
                TOKEN,
                json!({"id": id, "type": "charge.paid", "data": data}),
            )
            .await
        }
    };
    // Over HTTP: a failing payload is a 400 naming the path and the rule.
    wait_until("the schema in force", Duration::from_secs(10), || {
        let send = &send;
        async move { send("evt-bad", json!({"amount": "ten"})).await.0 == 400 }
    })
    .await;
    let (_, last) = send("evt-bad", json!({"amount": "ten"})).await;
    let msg = last["error"]["message"].as_str().unwrap();
    assert!(msg.contains("data/amount") && msg.contains("type"), "{msg}");
    let (s, v) = send("evt-ok", json!({"amount": 500})).await;
    assert_eq!(s, 202, "{v}");

    // Over NATS: the router dead-letters it as `schema`.
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    env.publish(
        "acme",
        "charge.paid",
        "evt-nats-bad",
        br#"{"amount":0}"#,
        &[],
    )
    .await;
    // Found by its rule: the probes above that came before the API's snapshot had the schema
    // were accepted (202) and are dead-lettered too, for the type of "ten".
    wait_until(
        "the schema dead letter",
        Duration::from_secs(20),
        || async {
            env.dead_letters()
                .await
                .iter()
                .any(|d| d.kind == "schema" && d.reason.contains("minimum"))
        },
    )
    .await;
    let dead = env.dead_letters().await;
    let d = dead
        .iter()
        .find(|d| d.kind == "schema" && d.reason.contains("minimum"))
        .unwrap();
    assert!(d.reason.contains("data/amount"), "{}", d.reason);
    wait_until("the valid event", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 1)
    })
    .await;
    assert_eq!(rx.received()[0].header("webhook-id"), Some("evt-ok"));

    // A changed schema takes effect without a restart.
    let (s, _) = put(json!({"schema": schema(100)})).await;
    assert_eq!(s, 200);
    wait_until("the new schema in force", Duration::from_secs(10), || {
        let send = &send;
        async move { send("evt-now-too-big", json!({"amount": 500})).await.0 == 400 }
    })
    .await;
    // Each process applies the change when its snapshot has it (the router's may come a
    // moment after the api's): publish until the router refuses one.
    let mut k = 0;
    wait_until("the router's new schema", Duration::from_secs(20), || {
        k += 1;
        let id = format!("evt-nats-big-{k}");
        let env = &env;
        async move {
            env.publish("acme", "charge.paid", &id, br#"{"amount":500}"#, &[])
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            env.dead_letters()
                .await
                .iter()
                .any(|d| d.kind == "schema" && d.reason.contains("maximum"))
        }
    })
    .await;

    // The CLI reads the catalog too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .args([
            "event-types",
            "get",
            "--tenant",
            "acme",
            "charge.paid",
            "--json",
        ])
        .env("GANCHO_API_URL", &base)
        .env("GANCHO_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"]["properties"]["amount"]["maximum"], 100, "{v}");
    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}
