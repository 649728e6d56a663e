//! Retries through scheduled messages, the attempt log, the dead-letter queue, and 410 Gone.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_twice_gets_the_event_on_attempt_three() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[500, 500, 200]).await;
    let ep = env
        .endpoint(
            "acme",
            "ep1",
            &rx.url("/hook"),
            &[],
            &[],
            Some("0s,200ms,200ms"),
        )
        .await;
    let cancel = env.run_roles(1).await;
    env.publish(
        "acme",
        "charge.paid",
        "evt-retry-1",
        br#"{"amount":10}"#,
        &[],
    )
    .await;

    // While a retry waits, nothing occupies the consumer's ack-pending window: the waiting
    // retry is a scheduled message in the stream, not an unacked delivery.
    let saw_idle_wait = Arc::new(AtomicBool::new(false));
    wait_until("attempt 3", Duration::from_secs(20), || {
        let saw = saw_idle_wait.clone();
        let env = &env;
        let rx = &rx;
        async move {
            let n = rx.count();
            if (1..3).contains(&n) {
                let (_, ack_pending) = env.worker_consumer_state().await;
                if ack_pending == 0 && env.deliveries_left().await == 1 && rx.count() == n {
                    saw.store(true, Ordering::Relaxed);
                }
            }
            n >= 3
        }
    })
    .await;
    assert!(
        saw_idle_wait.load(Ordering::Relaxed),
        "a waiting retry must leave ack-pending at 0 with the retry held in the stream"
    );

    let got = rx.received();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(
            r.header("webhook-id"),
            Some("evt-retry-1"),
            "webhook-id is stable across retries"
        );
        support::verify(&ep, r).unwrap();
    }
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(180),
        "the retry waited {gap:?}, not the scheduled 200ms"
    );

    wait_until("three attempt records", Duration::from_secs(10), || async {
        env.attempts("acme", "ep1").await.len() == 3
    })
    .await;
    let attempts = env.attempts("acme", "ep1").await;
    let statuses: Vec<u32> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(attempts[0].outcome, "http_error");
    assert_eq!(attempts[2].outcome, "success");
    assert!(attempts[0].next_attempt_at.is_some());
    assert!(attempts[2].next_attempt_at.is_none());
    assert!(attempts.iter().all(|a| a.event_id == "evt-retry-1"));
    env.wait_drained(Duration::from_secs(10)).await;
    assert!(env.dead_letters().await.is_empty());
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_always_fails_ends_in_the_dead_letter_queue() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(500).body("database is down")).await;
    env.endpoint(
        "acme",
        "ep1",
        &rx.url("/hook"),
        &[],
        &[],
        Some("0s,100ms,100ms"),
    )
    .await;
    let cancel = env.run_roles(1).await;
    env.publish(
        "acme",
        "charge.paid",
        "evt-dead-1",
        br#"{"amount":10}"#,
        &[],
    )
    .await;
    wait_until("a dead letter", Duration::from_secs(20), || async {
        !env.dead_letters().await.is_empty()
    })
    .await;
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].kind, "exhausted");
    assert!(dead[0].reason.contains("3 attempts"), "{}", dead[0].reason);
    assert!(dead[0].reason.contains("HTTP 500"), "{}", dead[0].reason);
    let delivery = dead[0].delivery.as_ref().unwrap();
    assert_eq!(delivery.event_id, "evt-dead-1");
    assert_eq!(delivery.attempts, 3);
    assert_eq!(rx.count(), 3, "exactly the scheduled number of attempts");
    // The last attempt's record and the dead letter are written together: the record may
    // land a moment after the dead letter is seen.
    wait_until(
        "the third attempt's record",
        Duration::from_secs(5),
        || async { env.attempts("acme", "ep1").await.len() >= 3 },
    )
    .await;
    let attempts = env.attempts("acme", "ep1").await;
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[2].response_body.as_ref(), b"database is down");
    env.wait_drained(Duration::from_secs(10)).await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_endpoint() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let gone = Receiver::https_sequence(&env.ca, &[410]).await;
    let healthy = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint("acme", "gone", &gone.url("/hook"), &[], &[], None)
        .await;
    env.endpoint("acme", "ok", &healthy.url("/hook"), &[], &[], None)
        .await;
    let cancel = env.run_roles(2).await;
    env.publish("acme", "charge.paid", "evt-410-1", b"{}", &[])
        .await;
    wait_until(
        "the endpoint to be disabled",
        Duration::from_secs(20),
        || async {
            env.store
                .get_endpoint("acme", "gone")
                .await
                .unwrap()
                .map(|e| e.disabled)
                .unwrap_or(false)
        },
    )
    .await;
    let ep = env
        .store
        .get_endpoint("acme", "gone")
        .await
        .unwrap()
        .unwrap();
    assert!(ep.disabled_reason.unwrap().contains("410"));
    assert_eq!(gone.count(), 1, "no retry after 410 Gone");
    wait_until("the dead letter", Duration::from_secs(10), || async {
        env.dead_letters()
            .await
            .iter()
            .any(|d| d.kind == "endpoint_gone")
    })
    .await;

    // Later events skip the disabled endpoint and still reach the healthy one.
    env.publish("acme", "charge.paid", "evt-410-2", b"{}", &[])
        .await;
    wait_until("the healthy endpoint", Duration::from_secs(10), || {
        std::future::ready(healthy.count() == 2)
    })
    .await;
    assert_eq!(gone.count(), 1);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https(&env.ca, |n, _| {
        if n == 0 {
            Answer::status(429).header("retry-after", "1")
        } else {
            Answer::status(200)
        }
    })
    .await;
    env.endpoint(
        "acme",
        "ep1",
        &rx.url("/hook"),
        &[],
        &[],
        Some("0s,10ms,10ms"),
    )
    .await;
    let cancel = env.run_roles(1).await;
    env.publish("acme", "charge.paid", "evt-429", b"{}", &[])
        .await;
    wait_until("the second attempt", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 2)
    })
    .await;
    let got = rx.received();
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured ({gap:?})"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_for_a_deleted_endpoint_is_dead_lettered() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[500]).await;
    env.endpoint("acme", "ep1", &rx.url("/hook"), &[], &[], Some("0s,1s,1s"))
        .await;
    let cancel = env.run_roles(1).await;
    env.publish("acme", "charge.paid", "evt-deleted", b"{}", &[])
        .await;
    wait_until("the first attempt", Duration::from_secs(10), || {
        std::future::ready(rx.count() == 1)
    })
    .await;
    env.store.delete_endpoint("acme", "ep1").await.unwrap();
    wait_until("the dead letter", Duration::from_secs(20), || async {
        !env.dead_letters().await.is_empty()
    })
    .await;
    let dead = env.dead_letters().await;
    assert_eq!(dead[0].kind, "endpoint_gone");
    assert!(dead[0].reason.contains("deleted"), "{}", dead[0].reason);
    assert_eq!(rx.count(), 1, "nothing is sent to a deleted endpoint");
    cancel.cancel();
}
