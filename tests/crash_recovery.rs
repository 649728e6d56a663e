//! SIGKILL of the router and of the worker in the middle of a 5,000-event run: after a restart
//! every (event, endpoint) pair arrives at least once, and every duplicate carries the same
//! webhook-id (receivers dedupe on it).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Receiver};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const EVENTS: usize = 5000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_roles_lose_nothing() {
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
    let js = env.js.clone();
    let subjects = env.layout.subjects.clone();
    let publisher = tokio::spawn(async move {
        let mut acks = Vec::new();
        for n in 0..EVENTS {
            let ev = gancho_proto::Event {
                id: format!("evt-{n}"),
                tenant: "acme".into(),
                r#type: "charge.paid".into(),
                payload: format!(r#"{{"n":{n}}}"#).into_bytes().into(),
                ..Default::default()
            };
            use gancho_proto::Message as _;
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(ev.encode_to_vec().into())
                .message_id(format!("evt-{n}"));
            acks.push(
                js.send_publish(subjects.event("acme", "charge.paid"), publish)
                    .await
                    .unwrap(),
            );
            if acks.len() == 500 {
                for ack in acks.drain(..) {
                    ack.await.unwrap();
                }
            }
        }
        for ack in acks {
            ack.await.unwrap();
        }
    });

    wait_until(
        "some deliveries before killing the router",
        Duration::from_secs(60),
        || std::future::ready(a.count() >= 500),
    )
    .await;
    support::kill9(&mut router);
    let router_killed_at = a.count() + b.count();
    router = env.spawn("router");

    wait_until(
        "more deliveries before killing the worker",
        Duration::from_secs(60),
        || std::future::ready(a.count() + b.count() >= router_killed_at + 2000),
    )
    .await;
    support::kill9(&mut worker);
    worker = env.spawn("worker");
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
    wait_until("every pair at least once", Duration::from_secs(120), || {
        std::future::ready(expect_ids(&a).len() == EVENTS && expect_ids(&b).len() == EVENTS)
    })
    .await;
    wait_until(
        "the deliveries stream to drain",
        Duration::from_secs(60),
        || async { env.deliveries_left().await == 0 },
    )
    .await;
    let elapsed = started.elapsed();

    let (seen_a, seen_b) = (expect_ids(&a), expect_ids(&b));
    for n in 0..EVENTS {
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
        "crash recovery: {} deliveries expected, {} received, {dups} duplicates (all with a repeated webhook-id); drained {elapsed:?} after the last publish",
        2 * EVENTS,
        a.count() + b.count()
    );
    support::kill9(&mut router);
    support::kill9(&mut worker);
}
