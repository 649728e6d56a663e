//! The deliveries of one event to several endpoints of a partition travel as one message (a
//! `DeliveryBatch`), and each keeps its own outcome: a healthy endpoint gets each event once,
//! a failing one is retried on its own schedule with an attempt record per attempt, a paused
//! one holds its deliveries until it is resumed, and a batch that cannot be read is
//! dead-lettered with its reason.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_core::subject::{partition, PARTITIONS};
use gancho_test_harness::{wait_until, Answer, Receiver};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const EVENTS: usize = 20;
/// The events whose first attempt the failing endpoint refuses.
const FAILING: [&str; 4] = ["evt-0", "evt-5", "evt-10", "evt-15"];

/// `n` endpoint ids of tenant `acme` that share one partition, and that partition.
fn same_partition(n: usize) -> (Vec<String>, u32) {
    let mut by_partition: HashMap<u32, Vec<String>> = HashMap::new();
    for i in 0.. {
        let id = format!("b{i}");
        let p = partition("acme", &id, PARTITIONS);
        let ids = by_partition.entry(p).or_default();
        ids.push(id);
        if ids.len() == n {
            return (ids.clone(), p);
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_sharing_a_message_keep_their_own_outcomes() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let (ids, p) = same_partition(4);
    let (healthy, flaky_id, paused_id) = (&ids[..2], &ids[2], &ids[3]);

    let ok = Receiver::https_sequence(&env.ca, &[200]).await;
    // Fails the first attempt of every fifth event (too few in a row to open its circuit),
    // takes the second.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let flaky = Receiver::https(&env.ca, move |_, r| {
        let id = r.header("webhook-id").unwrap_or_default().to_owned();
        if FAILING.contains(&id.as_str()) && seen.lock().unwrap().insert(id) {
            Answer::status(500)
        } else {
            Answer::status(200)
        }
    })
    .await;
    let later = Receiver::https_sequence(&env.ca, &[200]).await;
    let mut eps = HashMap::new();
    for id in healthy {
        let ep = env
            .endpoint("acme", id, &ok.url(&format!("/{id}")), &[">"], &[], None)
            .await;
        eps.insert(id.clone(), ep);
    }
    let flaky_ep = env
        .endpoint(
            "acme",
            flaky_id,
            &flaky.url("/flaky"),
            &[">"],
            &[],
            Some("0s,1s"),
        )
        .await;
    let paused_ep = env
        .endpoint("acme", paused_id, &later.url("/paused"), &[">"], &[], None)
        .await;
    env.change("acme", paused_id, |ep| ep.paused = true).await;

    let events: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|i| (format!("evt-{i}"), format!("{{\"n\":{i}}}").into_bytes()))
        .collect();
    env.publish_many("acme", "charge.paid", events).await;

    // The router alone first: one message per event for the three endpoints of the partition
    // that take deliveries, and the paused endpoint's on its held subject.
    let mut router = env.spawn("router");
    let subjects = &env.layout.subjects;
    let held = subjects.held("acme", paused_id);
    wait_until("the fan-out", Duration::from_secs(30), || async {
        env.stored_on(&held).await == EVENTS
    })
    .await;
    assert_eq!(
        env.stored_on(&subjects.delivery(p)).await,
        EVENTS,
        "one message per event for the partition's endpoints"
    );

    let mut worker = env.spawn("worker");
    wait_until("the deliveries", Duration::from_secs(60), || {
        std::future::ready(ok.count() >= 2 * EVENTS && flaky.count() >= EVENTS + FAILING.len())
    })
    .await;
    // Every attempt recorded (the paused endpoint's deliveries stay in the stream, held).
    wait_until("the attempt records", Duration::from_secs(30), || async {
        env.attempts("acme", flaky_id).await.len() >= EVENTS + FAILING.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.stored_on(&format!("{}.>", subjects.prefix())).await,
        EVENTS,
        "only the paused endpoint's deliveries are left"
    );

    // Each healthy endpoint got every event once, signed with its own secret.
    let got = ok.received();
    assert_eq!(got.len(), 2 * EVENTS, "no duplicate to a healthy endpoint");
    for id in healthy {
        let mine: HashSet<&str> = got
            .iter()
            .filter(|r| r.path == format!("/{id}"))
            .map(|r| {
                support::verify(&eps[id], r).unwrap();
                r.header("webhook-id").unwrap()
            })
            .collect();
        assert_eq!(mine.len(), EVENTS, "{id}");
    }
    // The failing endpoint: a second attempt for the events it refused, recorded as such.
    let got = flaky.received();
    assert_eq!(got.len(), EVENTS + FAILING.len());
    for r in &got {
        support::verify(&flaky_ep, r).unwrap();
    }
    let attempts = env.attempts("acme", flaky_id).await;
    assert_eq!(
        attempts.len(),
        EVENTS + FAILING.len(),
        "one record per attempt"
    );
    let refused: HashSet<&str> = FAILING.into_iter().collect();
    for (attempt, status, events) in [
        (1, 500, FAILING.len()),
        (2, 200, FAILING.len()),
        (1, 200, EVENTS - FAILING.len()),
    ] {
        let got: HashSet<&str> = attempts
            .iter()
            .filter(|a| a.attempt == attempt && a.status == status)
            .map(|a| a.event_id.as_str())
            .collect();
        assert_eq!(got.len(), events, "attempt {attempt} answered {status}");
        assert_eq!(got.is_subset(&refused), status == 500 || attempt == 2);
    }
    for id in healthy {
        assert_eq!(env.attempts("acme", id).await.len(), EVENTS, "{id}");
    }

    // The paused endpoint got nothing until it is resumed, then everything once.
    assert_eq!(later.count(), 0);
    env.change("acme", paused_id, |ep| ep.paused = false).await;
    wait_until("the held deliveries", Duration::from_secs(60), || {
        std::future::ready(later.count() >= EVENTS)
    })
    .await;
    env.wait_drained(Duration::from_secs(30)).await;
    let got = later.received();
    let distinct: HashSet<&str> = got
        .iter()
        .map(|r| {
            support::verify(&paused_ep, r).unwrap();
            r.header("webhook-id").unwrap()
        })
        .collect();
    assert_eq!((got.len(), distinct.len()), (EVENTS, EVENTS));
    support::kill9(&mut router);
    support::kill9(&mut worker);
}

/// A `DeliveryBatch` whose first field claims a length its varint never finishes.
const GARBAGE: &[u8] = b"\x0a\xff\xff\xff";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_be_read_is_dead_lettered() {
    let env = support::Env::new().await;
    let cancel = env.run_roles(0).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(gancho_core::subject::BATCH_HEADER, "3");
    env.js
        .publish_with_headers(
            env.layout.subjects.delivery(5),
            headers,
            bytes::Bytes::from_static(GARBAGE),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    wait_until("the dead letter", Duration::from_secs(30), || async {
        !env.dead_letters().await.is_empty()
    })
    .await;
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].kind, "undecodable");
    assert!(
        dead[0].reason.contains("delivery batch does not decode"),
        "{}",
        dead[0].reason
    );
    assert_eq!(&dead[0].original[..], GARBAGE);
    env.wait_drained(Duration::from_secs(10)).await;
    cancel.cancel();
}

/// A batch message handed back because one delivery's outcome could not be stored (here: the
/// dead-letter stream is gone for a while) comes back to the same worker, which sends
/// nothing again: the healthy endpoint's outcome was stored, and the failing one's was kept
/// and is stored now. A message of one delivery (an endpoint alone in its partition) is kept
/// the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_handed_back_sends_only_what_was_not_done() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let (ids, p) = same_partition(2);
    let (ok_id, bad_id) = (&ids[0], &ids[1]);
    let alone_id = (0..)
        .map(|i| format!("a{i}"))
        .find(|id| partition("acme", id, PARTITIONS) != p)
        .unwrap();
    let ok = Receiver::https_sequence(&env.ca, &[200]).await;
    let bad = Receiver::https_sequence(&env.ca, &[500]).await;
    let alone = Receiver::https_sequence(&env.ca, &[500]).await;
    let ep = env
        .endpoint("acme", ok_id, &ok.url("/ok"), &[">"], &[], None)
        .await;
    // One attempt: its failure is a dead letter at once.
    env.endpoint("acme", bad_id, &bad.url("/bad"), &[">"], &[], Some("0s"))
        .await;
    env.endpoint(
        "acme",
        &alone_id,
        &alone.url("/alone"),
        &[">"],
        &[],
        Some("0s"),
    )
    .await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    // Both roles up (each makes the streams it lacks at start-up, so the dead letters' goes
    // only now).
    env.publish("acme", "charge.paid", "warm-up", b"{}", &[])
        .await;
    wait_until("the warm-up", Duration::from_secs(30), || async {
        ok.count() == 1 && env.dead_letters().await.len() == 2
    })
    .await;
    let subjects = &env.layout.subjects;
    env.js.delete_stream(subjects.dead_stream()).await.unwrap();
    let events: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("evt-{i}"), b"{}".to_vec()))
        .collect();
    env.publish_many("acme", "charge.paid", events).await;
    wait_until("the healthy deliveries", Duration::from_secs(30), || {
        std::future::ready(ok.count() >= 4)
    })
    .await;
    // The worker gives up on the dead-letter writes after 30 s and hands the messages back.
    let stream = env
        .js
        .get_stream(subjects.deliveries_stream())
        .await
        .unwrap();
    let consumer = subjects.worker_consumer(p);
    wait_until(
        "the messages handed back",
        Duration::from_secs(60),
        || async {
            let mut c: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer(&consumer).await.unwrap();
            c.info().await.is_ok_and(|i| i.num_redelivered >= 1)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    gancho_store::ensure(env.js.clone(), subjects.clone(), 1)
        .await
        .unwrap();
    wait_until("the dead letters", Duration::from_secs(60), || async {
        env.dead_letters().await.len() >= 6
    })
    .await;
    env.wait_drained(Duration::from_secs(30)).await;

    let dead = env.dead_letters().await;
    assert!(dead.iter().all(|d| d.kind == "exhausted"), "{dead:?}");
    assert_eq!(dead.len(), 6);
    // Each keeps its delivery, payload and all, once: not its bytes a second time.
    for d in &dead {
        let delivery = d
            .delivery
            .as_ref()
            .expect("a dead delivery keeps its delivery");
        assert!(!delivery.payload.is_empty());
        assert!(
            d.original.is_empty(),
            "the payload is stored once, not twice"
        );
    }
    // Each endpoint got the warm-up and each event once: the failing ones' outcomes were
    // kept while they could not be stored, and stored when their messages came back.
    for (name, rx) in [("in the batch", &bad), ("alone", &alone)] {
        let asked: Vec<_> = rx
            .received()
            .iter()
            .map(|r| r.headers.get("webhook-id").cloned())
            .collect();
        assert_eq!(
            asked.len(),
            4,
            "the failing endpoint {name} was asked {asked:?}"
        );
    }
    assert_eq!(env.attempts("acme", bad_id).await.len(), 4);
    assert_eq!(env.attempts("acme", &alone_id).await.len(), 4);
    let got = ok.received();
    assert_eq!(got.len(), 4, "the healthy endpoint got a delivery twice");
    for r in &got {
        support::verify(&ep, r).unwrap();
    }
    assert_eq!(env.attempts("acme", ok_id).await.len(), 4);
    support::kill9(&mut router);
    support::kill9(&mut worker);
}
