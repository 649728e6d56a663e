//! Operational events: an endpoint subscribed to `gancho.>` hears, signed like any webhook,
//! that a delivery was given up on, that an endpoint failing for too long (3 s here) was
//! disabled, and that a failing endpoint recovered; the endpoint they are about never gets
//! them, nor does one subscribed to everything (`>`).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_hear_about_exhausted_deliveries_disabled_and_recovered_endpoints() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let flaky_down = Arc::new(AtomicBool::new(true));
    let down = flaky_down.clone();
    let rx = Receiver::https(&env.ca, move |_, r| match r.path.as_str() {
        "/dying" => Answer::status(503),
        "/flaky" if down.load(Ordering::Relaxed) => Answer::status(500),
        _ => Answer::status(200),
    })
    .await;
    let ops = env
        .endpoint("acme", "ops", &rx.url("/ops"), &["gancho.>"], &[], None)
        .await;
    env.endpoint("acme", "all", &rx.url("/all"), &[">"], &[], None)
        .await;
    env.endpoint(
        "acme",
        "dying",
        &rx.url("/dying"),
        &["charge.*"],
        &[],
        Some("0s,1s"),
    )
    .await;
    env.endpoint(
        "acme",
        "flaky",
        &rx.url("/flaky"),
        &["refund.*"],
        &[],
        Some("0s,1s,1s,1s,1s,1s,1s,1s"),
    )
    .await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn_with(&["worker"], &[("GANCHO_DISABLE_AFTER", "3s")]);

    // The dying endpoint fails every attempt: each event is given up on after 2, and after
    // 3 s of failures the endpoint is disabled.
    for i in 0..8 {
        env.publish_many(
            "acme",
            "charge.paid",
            [(format!("evt-{i}"), b"{}".to_vec())],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // The flaky one fails, then recovers.
    env.publish_many(
        "acme",
        "refund.created",
        [("ref-1".to_string(), b"{}".to_vec())],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    flaky_down.store(false, Ordering::Relaxed);

    let ops_events = |ty: &str| -> Vec<Value> {
        rx.received()
            .iter()
            .filter(|r| r.path == "/ops")
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
            .filter(|b| b["type"] == ty)
            .collect()
    };
    wait_until("every operational event", Duration::from_secs(40), || {
        std::future::ready(
            !ops_events("gancho.delivery.exhausted").is_empty()
                && ops_events("gancho.endpoint.disabled").len() == 1
                && ops_events("gancho.endpoint.recovered").len() == 1,
        )
    })
    .await;
    let exhausted = &ops_events("gancho.delivery.exhausted")[0];
    assert_eq!(exhausted["data"]["endpoint_id"], "dying", "{exhausted}");
    assert_eq!(exhausted["data"]["attempts"], 2, "{exhausted}");
    assert!(exhausted["data"]["event_id"]
        .as_str()
        .unwrap()
        .starts_with("evt-"));
    let disabled = &ops_events("gancho.endpoint.disabled")[0];
    assert_eq!(disabled["data"]["endpoint_id"], "dying", "{disabled}");
    assert!(disabled["data"]["failing_since"].is_string(), "{disabled}");
    let recovered = &ops_events("gancho.endpoint.recovered")[0];
    assert_eq!(recovered["data"]["endpoint_id"], "flaky", "{recovered}");
    // Signed like any webhook.
    for r in rx.received().iter().filter(|r| r.path == "/ops") {
        support::verify(&ops, r).unwrap();
    }
    let ep = env
        .store
        .get_endpoint("acme", "dying")
        .await
        .unwrap()
        .unwrap();
    assert!(ep.disabled, "disabled after failing for 3 s");
    assert!(
        ep.disabled_reason
            .as_deref()
            .unwrap()
            .contains("no successful delivery"),
        "{:?}",
        ep.disabled_reason
    );
    let flaky = env
        .store
        .get_endpoint("acme", "flaky")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(flaky.failing_since, None, "cleared by the success");
    // Never to the endpoint it is about, nor to one that did not ask for them.
    for r in rx.received() {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        if body["type"].as_str().unwrap().starts_with("gancho.") {
            assert_eq!(r.path, "/ops", "{body}");
        }
    }
    support::terminate(&mut worker);
    support::terminate(&mut router);
}

/// A tenant none of whose endpoints listens for operational events gets none stored: a dead
/// endpoint's deliveries given up on at its traffic's rate would otherwise each become an
/// event in the events stream, routed for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_listening_means_no_operational_events() {
    let env = support::Env::new().await;
    env.tenant("quiet").await;
    let rx = Receiver::https(&env.ca, |_, r| match r.path.as_str() {
        "/dying" => Answer::status(503),
        _ => Answer::status(200),
    })
    .await;
    env.endpoint(
        "quiet",
        "dying",
        &rx.url("/dying"),
        &["charge.*"],
        &[],
        Some("0s"),
    )
    .await;
    // Listens to everything but gancho's own events (`>` never matches them).
    env.endpoint("quiet", "all", &rx.url("/all"), &[">"], &[], None)
        .await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    env.publish_many(
        "quiet",
        "charge.paid",
        (0..5).map(|i| (format!("evt-{i}"), b"{}".to_vec())),
    )
    .await;
    wait_until(
        "every delivery given up on",
        Duration::from_secs(30),
        || async { env.dead_letters().await.len() == 5 },
    )
    .await;
    // The router has routed what the worker published by now, if anything.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let subjects = &env.layout.subjects;
    let ops = env
        .read_stream(
            &subjects.events_stream(),
            &subjects.event("quiet", "gancho."),
        )
        .await;
    assert!(ops.is_empty(), "{} operational events stored", ops.len());
    assert!(
        rx.received()
            .iter()
            .all(|r| r.path != "/all" || !String::from_utf8_lossy(&r.body).contains("gancho.")),
        "an operational event was delivered"
    );
    support::terminate(&mut worker);
    support::terminate(&mut router);
}
