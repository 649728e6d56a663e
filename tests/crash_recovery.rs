//! SIGKILL of the router and of the worker: a soak that kills each three times in a
//! 20,000-event run (every (event, endpoint) pair arrives at least once, every duplicate
//! carries the same webhook-id), and a router killed in the middle of fan-outs of 1,000 (no
//! duplicate at all). The fault suite (`tests/faults.rs`) kills each role once per row.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Receiver};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The soak: the router and the worker killed three times each. `make test-slow` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow soak; run with make test-slow"]
async fn repeated_kills_lose_nothing() {
    run(20_000, 3).await;
}

async fn run(events: usize, kill_rounds: usize) {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let a = Receiver::https_sequence(&env.ca, &[200]).await;
    let b = Receiver::https_sequence(&env.ca, &[200]).await;
    let ep_a = env
        .endpoint("acme", "a", &a.url("/a"), &[">"], &[], None)
        .await;
    env.endpoint("acme", "b", &b.url("/b"), &["charge.*"], &[], None)
        .await;

    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");

    // Publish in the background so the kills land while events are still arriving.
    let publisher = env.publish_in_background("acme", "charge.paid", events, 500, Duration::ZERO);

    // Each round: let some deliveries through, SIGKILL the router and restart it, let more
    // through, SIGKILL the worker and restart it.
    let step = events / (2 * kill_rounds + 2);
    for _ in 0..kill_rounds {
        for role in ["router", "worker"] {
            let before = a.count() + b.count();
            wait_until("deliveries before a kill", Duration::from_secs(120), || {
                std::future::ready(a.count() + b.count() >= before + step)
            })
            .await;
            let child = if role == "router" {
                &mut router
            } else {
                &mut worker
            };
            support::kill9(child);
            *child = env.spawn(role);
        }
    }
    publisher.await.unwrap();

    let started = Instant::now();
    let expect_ids = |rx: &Receiver| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in rx.received() {
            *seen
                .entry(r.header("webhook-id").unwrap().to_owned())
                .or_default() += 1;
        }
        seen
    };
    wait_until("every pair at least once", Duration::from_secs(300), || {
        std::future::ready(expect_ids(&a).len() == events && expect_ids(&b).len() == events)
    })
    .await;
    env.wait_drained(Duration::from_secs(60)).await;
    let elapsed = started.elapsed();

    let (seen_a, seen_b) = (expect_ids(&a), expect_ids(&b));
    for n in 0..events {
        let id = format!("evt-{n}");
        assert!(seen_a.contains_key(&id), "{id} never reached endpoint a");
        assert!(seen_b.contains_key(&id), "{id} never reached endpoint b");
    }
    // A duplicate is the same webhook-id (and the same signed body) arriving twice.
    let dups = (a.count() - seen_a.len()) + (b.count() - seen_b.len());
    for r in a.received().iter().take(50) {
        support::verify(&ep_a, r).unwrap();
    }
    println!(
        "crash recovery ({kill_rounds} kill rounds): {} deliveries expected, {} received, {dups} duplicates (all with a repeated webhook-id); drained {elapsed:?} after the last publish",
        2 * events,
        a.count() + b.count()
    );
    support::kill9(&mut router);
    support::kill9(&mut worker);
}

/// A router SIGKILLed in the middle of fan-outs of 1,000 and started again: every delivery
/// arrives, none twice (JetStream drops the re-published ones by their `Nats-Msg-Id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_mid_fan_out_duplicates_nothing() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_tally(&env.ca).await;
    let endpoints = 1_000;
    for i in 0..endpoints {
        let id = format!("e{i}");
        env.endpoint("acme", &id, &rx.url(&format!("/{id}")), &[">"], &[], None)
            .await;
    }
    let events = 50;
    for n in 0..events {
        env.publish("acme", "charge.paid", &format!("evt-{n}"), b"{}", &[])
            .await;
    }
    let expected = (endpoints * events) as u64;
    // The messages the fan-outs write: one per event and partition, at most 16 deliveries
    // each.
    let messages = (events
        * support::per_partition("acme", endpoints)
            .values()
            .map(|n| n.div_ceil(16))
            .sum::<usize>()) as u64;

    // A few events at a time, so the kill lands mid-way: at the default concurrency a
    // loaded machine saw the router write all the messages between two looks at the
    // stream. The events being fanned out at the kill are partly written, and are redone in
    // full after.
    let mut router = env.spawn_with(&["router"], &[("GANCHO_ROUTER_CONCURRENCY", "4")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.deliveries_left().await < messages / 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    support::kill9(&mut router);
    let at_kill = env.deliveries_left().await;
    assert!(at_kill > 0, "the router created no deliveries");
    assert!(
        at_kill < messages,
        "the router wrote all {messages} messages before the kill; nothing was tested"
    );

    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    wait_until("every delivery", Duration::from_secs(120), || {
        std::future::ready(rx.distinct() == expected as usize)
    })
    .await;
    env.wait_drained(Duration::from_secs(30)).await;
    let twice: Vec<_> = rx
        .tally()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .take(5)
        .collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(rx.count(), expected as usize);
    println!("router killed with {at_kill} of {messages} messages written; all {expected} deliveries arrived once");
    support::kill9(&mut router);
    support::kill9(&mut worker);
}
