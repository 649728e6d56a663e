//! Endpoint lifecycle through the API, with real roles and receivers counting: pause holds
//! deliveries (no attempts, nothing in the worker's ack-pending window) and resume delivers
//! each held one exactly once; disabling a paused endpoint dead-letters what it held as
//! `endpoint_disabled`, deleting one as `endpoint_gone`; an endpoint disabled by a 410 is
//! re-enabled with a PATCH.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Receiver};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

struct Api {
    base: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/v1/tenants/acme{path}", self.base);
        let body = body.map(|b| b.to_string());
        support::http(method, &url, Some(TOKEN), body.as_deref()).await
    }

    /// Creates an endpoint on `filter` at `url`; returns its id.
    async fn endpoint(&self, url: &str, filter: &str, extra: Value) -> String {
        let mut body = json!({"url": url, "filter_types": [filter]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, v) = self.call("POST", "/endpoints", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    async fn held(&self, id: &str) -> u64 {
        self.ok("GET", &format!("/endpoints/{id}"), None).await["held"]
            .as_u64()
            .unwrap()
    }

    /// Makes sure every role's snapshot holds every config change made so far: creates an
    /// endpoint for `marker.<n>` events (the KV watch is ordered, so a role that knows it
    /// knows everything before it) and publishes markers until its receiver gets one. Keep
    /// the returned receiver: markers still on their way go to it.
    async fn sync(&self, env: &support::Env, n: u32) -> Receiver {
        let rx = Receiver::https_sequence(&env.ca, &[200]).await;
        let ty = format!("marker.s{n}");
        self.endpoint(&rx.url("/marker"), &ty, json!({})).await;
        let mut k = 0;
        wait_until(
            "every role to see the config",
            Duration::from_secs(20),
            || {
                k += 1;
                let (rx, ty) = (&rx, &ty);
                async move {
                    env.publish("acme", ty, &format!("evt-{ty}-{k}"), b"{}", &[])
                        .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    rx.count() > 0
                }
            },
        )
        .await;
        rx
    }
}

async fn start(env: &support::Env) -> (std::process::Child, Api) {
    let (api, base) = env.spawn_api(TOKEN).await;
    let (status, v) = support::http(
        "POST",
        &format!("{base}/v1/tenants"),
        Some(TOKEN),
        Some(r#"{"id":"acme"}"#),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    (api, Api { base })
}

async fn publish_n(env: &support::Env, prefix: &str, n: usize) {
    env.publish_many(
        "acme",
        "charge.paid",
        (0..n).map(|i| (format!("{prefix}-{i}"), br#"{"amount":1}"#.to_vec())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_and_resume_delivers_each_held_event_once() {
    const N: usize = 300;
    let env = support::Env::new().await;
    let (mut api_process, api) = start(&env).await;
    let paused_rx = Receiver::https_sequence(&env.ca, &[200]).await;
    let healthy_rx = Receiver::https_sequence(&env.ca, &[200]).await;
    // First answer 500 three times, so three retries are waiting when it is paused.
    let retrying_rx = Receiver::https_sequence(&env.ca, &[500, 500, 500, 200]).await;
    let paused = api
        .endpoint(&paused_rx.url("/p"), "charge.*", json!({}))
        .await;
    api.endpoint(&healthy_rx.url("/h"), "charge.*", json!({}))
        .await;
    let retrying = api
        .endpoint(
            &retrying_rx.url("/r"),
            "refund.*",
            json!({"retry_schedule": "0s,5s"}),
        )
        .await;
    let cancel = env.run_roles(3).await;

    // Three refunds fail once each; their retries wait 5 s as scheduled messages.
    for i in 0..3 {
        env.publish(
            "acme",
            "refund.created",
            &format!("evt-refund-{i}"),
            b"{}",
            &[],
        )
        .await;
    }
    wait_until("three failed attempts", Duration::from_secs(10), || {
        std::future::ready(retrying_rx.count() == 3)
    })
    .await;
    let v = api
        .ok("POST", &format!("/endpoints/{paused}/pause"), None)
        .await;
    assert_eq!(v["paused"], true, "{v}");
    assert!(v["paused_at"].is_string(), "{v}");
    api.ok("POST", &format!("/endpoints/{retrying}/pause"), None)
        .await;
    let _markers = api.sync(&env, 1).await;

    publish_n(&env, "evt-held", N).await;
    wait_until(
        "the healthy endpoint to get every event",
        Duration::from_secs(30),
        || std::future::ready(healthy_rx.count() == N),
    )
    .await;
    wait_until("every event held", Duration::from_secs(10), || async {
        api.held(&paused).await == N as u64
    })
    .await;
    // The retries fire while their endpoint is paused: held too, without an attempt.
    wait_until("the retries held", Duration::from_secs(15), || async {
        api.held(&retrying).await == 3
    })
    .await;
    assert_eq!(paused_rx.count(), 0, "a paused endpoint got a request");
    assert_eq!(
        retrying_rx.count(),
        3,
        "a paused endpoint's retry was attempted"
    );
    let (_, ack_pending) = env.worker_consumer_state().await;
    assert_eq!(
        ack_pending, 0,
        "held deliveries must not occupy ack-pending"
    );
    let (_, list) = api.call("GET", "/endpoints", None).await;
    let shown = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == paused.as_str())
        .unwrap();
    assert_eq!(shown["paused"], true);

    let v = api
        .ok("POST", &format!("/endpoints/{paused}/resume"), None)
        .await;
    assert_eq!(v["paused"], false, "{v}");
    assert!(v.get("paused_at").is_none(), "{v}");
    // Resume through PATCH works the same.
    api.ok(
        "PATCH",
        &format!("/endpoints/{retrying}"),
        Some(json!({"paused": false})),
    )
    .await;
    wait_until(
        "every held event delivered",
        Duration::from_secs(30),
        || std::future::ready(paused_rx.count() >= N && retrying_rx.count() >= 6),
    )
    .await;
    // Nothing more comes: each held event exactly once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(paused_rx.count(), N);
    assert_eq!(paused_rx.distinct(), N, "a held event was delivered twice");
    assert_eq!(retrying_rx.count(), 6);
    assert_eq!(api.held(&paused).await, 0);

    // Holding spent no attempt: every held event's first attempt is attempt 1, every
    // waiting retry's is attempt 2.
    wait_until("the attempt records", Duration::from_secs(10), || async {
        env.attempts("acme", &paused).await.len() == N
    })
    .await;
    assert!(env
        .attempts("acme", &paused)
        .await
        .iter()
        .all(|a| a.attempt == 1 && a.outcome == "success"));
    let retried = env.attempts("acme", &retrying).await;
    assert_eq!(
        retried.iter().filter(|a| a.attempt == 2).count(),
        3,
        "{retried:?}"
    );
    assert!(env.dead_letters().await.is_empty());
    cancel.cancel();
    support::terminate(&mut api_process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_or_deleting_a_paused_endpoint_dead_letters_what_it_held() {
    const N: usize = 50;
    let env = support::Env::new().await;
    let (mut api_process, api) = start(&env).await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    let disabled = api.endpoint(&rx.url("/d"), "charge.*", json!({})).await;
    let deleted = api.endpoint(&rx.url("/x"), "charge.*", json!({})).await;
    let cancel = env.run_roles(2).await;
    for id in [&disabled, &deleted] {
        api.ok("POST", &format!("/endpoints/{id}/pause"), None)
            .await;
    }
    let _markers = api.sync(&env, 1).await;
    publish_n(&env, "evt-drop", N).await;
    wait_until(
        "every event held twice",
        Duration::from_secs(20),
        || async { api.held(&disabled).await == N as u64 && api.held(&deleted).await == N as u64 },
    )
    .await;

    api.ok(
        "PATCH",
        &format!("/endpoints/{disabled}"),
        Some(json!({"disabled": true})),
    )
    .await;
    api.ok("DELETE", &format!("/endpoints/{deleted}"), None)
        .await;
    wait_until(
        "every held event dead-lettered",
        Duration::from_secs(30),
        || async { env.dead_letters().await.len() == 2 * N },
    )
    .await;
    let dead = env.dead_letters().await;
    for (id, kind) in [
        (&disabled, "endpoint_disabled"),
        (&deleted, "endpoint_gone"),
    ] {
        let mine: Vec<_> = dead
            .iter()
            .filter(|d| d.delivery.as_ref().unwrap().endpoint_id == *id)
            .collect();
        assert_eq!(mine.len(), N, "dead letters of {id}");
        assert!(mine.iter().all(|d| d.kind == kind), "{id}: {mine:?}");
    }
    assert_eq!(
        rx.count(),
        0,
        "a disabled or deleted endpoint got a request"
    );
    cancel.cancel();
    support::terminate(&mut api_process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_disabled_by_a_410_is_re_enabled_with_a_patch() {
    let env = support::Env::new().await;
    let (mut api_process, api) = start(&env).await;
    let rx = Receiver::https_sequence(&env.ca, &[410, 200]).await;
    let id = api.endpoint(&rx.url("/g"), "charge.*", json!({})).await;
    let cancel = env.run_roles(1).await;
    env.publish("acme", "charge.paid", "evt-gone-1", b"{}", &[])
        .await;
    wait_until("the 410 to disable it", Duration::from_secs(20), || async {
        api.ok("GET", &format!("/endpoints/{id}"), None).await["disabled"] == true
    })
    .await;
    let v = api.ok("GET", &format!("/endpoints/{id}"), None).await;
    assert!(
        v["disabled_reason"].as_str().unwrap().contains("410"),
        "{v}"
    );

    let v = api
        .ok(
            "PATCH",
            &format!("/endpoints/{id}"),
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(v["disabled"], false, "{v}");
    assert!(v.get("disabled_reason").is_none(), "{v}");
    let _markers = api.sync(&env, 1).await;
    env.publish("acme", "charge.paid", "evt-gone-2", b"{}", &[])
        .await;
    wait_until(
        "the re-enabled endpoint to get the next event",
        Duration::from_secs(20),
        || std::future::ready(rx.count() == 2),
    )
    .await;
    assert_eq!(rx.received()[1].header("webhook-id"), Some("evt-gone-2"));
    cancel.cancel();
    support::terminate(&mut api_process);
}
