//! Ordered delivery: an endpoint with `ordering: key` gets each key's deliveries in the order
//! of the events stream, through failures, retries, worker kills, partitions moving to a new
//! worker, a router kill, a pause and a nats-server restart; `ordering: endpoint` the same for
//! the whole endpoint; redrive and replay jobs send their copies in key order among
//! themselves; and an unordered endpoint on the same partition keeps its pace while an
//! ordered one is blocked.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_core::subject::{partition, PARTITIONS};
use gancho_store::model::OrderingMode;
use gancho_test_harness::{wait_until, Answer, Received, Receiver};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as a receiver saw it: the key, the event's number, the status answered.
type Seen = Arc<Mutex<Vec<(String, u64, u16)>>>;

/// A receiver that answers 500 to a fifth of the requests at random and takes 0-50 ms,
/// writing down each request's key (`charge_id`) and number (`n`) in the order they came.
async fn flaky(env: &support::Env, seen: Seen) -> Receiver {
    Receiver::https(&env.ca, move |_, r: &Received| {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
            // A request cut short (its worker lost the lane): no webhook arrived.
            return Answer::status(400);
        };
        let key = body["data"]["charge_id"].as_str().unwrap().to_owned();
        let n = body["data"]["n"].as_u64().unwrap();
        let status = if rand::random::<f64>() < 0.2 {
            500
        } else {
            200
        };
        seen.lock().unwrap().push((key, n, status));
        Answer::status(status).after(Duration::from_millis(rand::random::<u64>() % 50))
    })
    .await
}

/// Checks what a receiver saw against the order it must keep: per key, every request is
/// either the one sent just before (again) or the key's next event after that one got a
/// 200; never an earlier one, never one skipped. `expected[key]` lists the key's events in
/// order. Returns how many deliveries were sent again after a 200 (each counted once,
/// however many attempts its repeat took).
fn check_order(seen: &[(String, u64, u16)], expected: &HashMap<String, Vec<u64>>) -> usize {
    let mut at: HashMap<&str, (usize, bool)> = HashMap::new();
    let mut repeated = HashSet::new();
    for (i, (key, n, status)) in seen.iter().enumerate() {
        let order = &expected[key];
        let (pos, delivered) = at.entry(key).or_insert((0, false));
        if order[*pos] == *n {
            // The head again: a retry, or (once delivered) a repeat after a crash.
            if *delivered {
                repeated.insert((key, n));
            }
        } else {
            assert!(
                *delivered,
                "request {i}: key {key} got event {n} while event {} was not delivered yet",
                order[*pos]
            );
            assert_eq!(
                order.get(*pos + 1),
                Some(n),
                "request {i}: key {key} got event {n} after event {}: out of order",
                order[*pos]
            );
            *pos += 1;
            *delivered = false;
        }
        *delivered |= *status == 200;
    }
    repeated.len()
}

/// Whether every event of `expected` got a 200.
fn all_delivered(seen: &Seen, expected: &HashMap<String, Vec<u64>>) -> bool {
    let seen = seen.lock().unwrap();
    let done: HashSet<u64> = seen
        .iter()
        .filter(|(_, _, s)| *s == 200)
        .map(|(_, n, _)| *n)
        .collect();
    expected.values().flatten().all(|n| done.contains(n))
}

fn delivered(seen: &Seen) -> usize {
    let seen = seen.lock().unwrap();
    seen.iter()
        .filter(|(_, _, s)| *s == 200)
        .map(|(_, n, _)| *n)
        .collect::<HashSet<_>>()
        .len()
}

/// Says every 5 s how far the deliveries got and what waits; never ends.
async fn report(env: &support::Env, started: Instant, by_key: &Seen, by_endpoint: &Seen) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (pending, acks) = env.router_consumer_state().await;
        let waiting = match env.js.get_stream("GANCHO_ORDERED").await {
            Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        };
        eprintln!(
            "{:?}: {} keyed ({} requests), {} whole; events unrouted {pending} (+{acks} in hand), {waiting} ordered waiting",
            started.elapsed(),
            delivered(by_key),
            by_key.lock().unwrap().len(),
            delivered(by_endpoint)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_arrives_in_order_through_failures_kills_and_moves() {
    const EVENTS: u64 = 20_000;
    const KEYS: u64 = 200;
    /// Every tenth event is a `payment.*` one, which the endpoint-ordered endpoint gets.
    const EVERY: u64 = 10;
    let mut env = support::Env::new().await;
    env.tenant("acme").await;
    let schedule = format!("0s{}", ",100ms".repeat(11));
    let by_key = Arc::new(Mutex::new(Vec::new()));
    let by_endpoint = Arc::new(Mutex::new(Vec::new()));
    let keyed_rx = flaky(&env, by_key.clone()).await;
    let whole_rx = flaky(&env, by_endpoint.clone()).await;
    env.endpoint(
        "acme",
        "keyed",
        &keyed_rx.url("/"),
        &[">"],
        &[],
        Some(&schedule),
    )
    .await;
    env.endpoint(
        "acme",
        "whole",
        &whole_rx.url("/"),
        &["payment.*"],
        &[],
        Some(&schedule),
    )
    .await;
    env.change("acme", "keyed", |ep| {
        ep.ordering = OrderingMode::Key;
        ep.ordering_key = Some("/charge_id".into());
    })
    .await;
    env.change("acme", "whole", |ep| ep.ordering = OrderingMode::Endpoint)
        .await;

    // The backlog first, in order: event n is the n-th of the stream.
    let mut keyed: HashMap<String, Vec<u64>> = HashMap::new();
    let events: Vec<(u64, String)> = (0..EVENTS)
        .map(|n| {
            let key = format!("ch_{}", n % KEYS);
            keyed.entry(key.clone()).or_default().push(n);
            (n, key)
        })
        .collect();
    for chunk in events.chunks(1000) {
        for ty in ["charge.updated", "payment.updated"] {
            let of_type: Vec<_> = chunk
                .iter()
                .filter(|(n, _)| (n % EVERY == 0) == (ty == "payment.updated"))
                .map(|(n, key)| {
                    let payload = serde_json::json!({"charge_id": key, "n": n});
                    (format!("evt-{n}"), payload.to_string().into_bytes())
                })
                .collect();
            env.publish_many("acme", ty, of_type).await;
        }
    }
    // `endpoint` ordering is one key for the whole endpoint, in event order.
    let whole_order = HashMap::from([(
        "all".to_owned(),
        (0..EVENTS).filter(|n| n % EVERY == 0).collect::<Vec<u64>>(),
    )]);

    // Every role started, killed (SIGKILL) and reaped at the end or when killed midway.
    let roles = Mutex::new(vec![
        env.spawn("router"),
        env.spawn("router"),
        env.spawn("worker"),
    ]);
    let kill = |i: usize| {
        let mut roles = roles.lock().unwrap();
        support::kill9(&mut roles[i]);
    };
    let started = Instant::now();
    let progress = |n: usize| {
        let by_key = by_key.clone();
        async move {
            wait_until(
                &format!("{n} keyed deliveries"),
                Duration::from_secs(120),
                || std::future::ready(delivered(&by_key) >= n),
            )
            .await;
        }
    };
    let requests = || by_key.lock().unwrap().len();
    let faults = async {
        progress(3_000).await;
        kill(2);
        roles.lock().unwrap().push(env.spawn("worker"));
        progress(5_000).await;
        // Paused for 3 s: no request once those in flight are answered; resumed, each key
        // goes on from where it stood.
        env.change("acme", "keyed", |ep| ep.paused = true).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = requests();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(requests(), before, "requests went to a paused endpoint");
        env.change("acme", "keyed", |ep| ep.paused = false).await;
        progress(8_000).await;
        // A second worker midway: half the partitions move to it. A router killed and
        // started again.
        roles.lock().unwrap().push(env.spawn("worker"));
        kill(0);
        roles.lock().unwrap().push(env.spawn("router"));
        progress(12_000).await;
        kill(3);
        roles.lock().unwrap().push(env.spawn("worker"));
        progress(14_000).await;
    };
    tokio::select! {
        () = faults => {}
        () = report(&env, started, &by_key, &by_endpoint) => {}
    }
    // nats-server SIGKILLed and started again on its store: the lanes read their partitions
    // again and go on.
    env.nats.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.nats.restart();
    let rest = wait_until(
        "every keyed and whole-endpoint delivery",
        Duration::from_secs(240),
        || {
            std::future::ready(
                all_delivered(&by_key, &keyed) && all_delivered(&by_endpoint, &whole_order),
            )
        },
    );
    tokio::select! {
        () = rest => {}
        () = report(&env, started, &by_key, &by_endpoint) => {}
    }
    let took = started.elapsed();
    for role in roles.lock().unwrap().iter_mut() {
        support::kill9(role);
    }

    let key_repeats = check_order(&by_key.lock().unwrap(), &keyed);
    // The whole endpoint's requests, as one key.
    let as_one: Vec<(String, u64, u16)> = by_endpoint
        .lock()
        .unwrap()
        .iter()
        .map(|(_, n, s)| ("all".to_owned(), *n, *s))
        .collect();
    let whole_repeats = check_order(&as_one, &whole_order);
    let requests = by_key.lock().unwrap().len();
    eprintln!(
        "{EVENTS} keyed events over {KEYS} keys in {took:?}: {requests} requests, {key_repeats} sent again after a 200; {} whole-endpoint events, {whole_repeats} sent again",
        whole_order["all"].len()
    );
    // At least once: a repeat (always of the delivery just sent, checked above) comes from a
    // worker killed, or a server restarted, between a 200 and the delivery's removal, so at
    // most what each of the two kills and the restart had in flight (the endpoint's cap of
    // 64).
    assert!(
        key_repeats <= 3 * 64,
        "{key_repeats} deliveries sent again after a 200"
    );
    assert!(
        whole_repeats <= 3,
        "{whole_repeats} deliveries sent again after a 200"
    );
}

/// Two endpoint ids of tenant `acme` on one partition.
fn neighbours() -> (String, String) {
    let mut by_partition: HashMap<u32, String> = HashMap::new();
    for i in 0.. {
        let id = format!("n{i}");
        let p = partition("acme", &id, PARTITIONS);
        if let Some(other) = by_partition.insert(p, id.clone()) {
            return (other, id);
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_ordered_endpoint_does_not_slow_its_partition() {
    const BLOCKED_FOR: Duration = Duration::from_secs(60);
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let (ordered, unordered) = neighbours();
    let failing = Receiver::https(&env.ca, |_, _| Answer::status(503)).await;
    let healthy = Receiver::https(&env.ca, |_, _| Answer::status(200)).await;
    // Retries every 100 ms for longer than the test: its keys stay blocked throughout.
    let schedule = format!("0s{}", ",100ms".repeat(20));
    env.endpoint(
        "acme",
        &ordered,
        &failing.url("/"),
        &["charge.*"],
        &[],
        Some(&schedule),
    )
    .await;
    env.endpoint(
        "acme",
        &unordered,
        &healthy.url("/"),
        &["payment.*"],
        &[],
        None,
    )
    .await;
    env.change("acme", &ordered, |ep| {
        ep.ordering = OrderingMode::Key;
        ep.ordering_key = Some("/charge_id".into());
    })
    .await;
    let mut roles = [env.spawn("router"), env.spawn("worker")];
    // 500 charge events over 50 keys wait behind their failing heads.
    let blocked: Vec<_> = (0..500)
        .map(|n| {
            let payload = serde_json::json!({"charge_id": format!("ch_{}", n % 50), "n": n});
            (format!("c-{n}"), payload.to_string().into_bytes())
        })
        .collect();
    env.publish_many("acme", "charge.updated", blocked).await;
    // The unordered neighbour gets 50 events a second meanwhile.
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < BLOCKED_FOR {
        let batch: Vec<_> = (sent..sent + 5)
            .map(|n| (format!("p-{n}"), br#"{"ok":true}"#.to_vec()))
            .collect();
        env.publish_many("acme", "payment.updated", batch).await;
        sent += 5;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It kept its rate: when the minute ended, what it had received trailed what was
    // published by at most two seconds of events (its 50 a second).
    let by_end = healthy.distinct();
    assert!(
        by_end + 100 >= sent,
        "the unordered neighbour fell behind while its partition's ordered endpoint was blocked: {by_end} of {sent} arrived within the minute"
    );
    wait_until(
        "the neighbour's deliveries",
        Duration::from_secs(10),
        || std::future::ready(healthy.distinct() >= sent),
    )
    .await;
    // Each of the neighbour's webhooks arrived within a second of its event, all along.
    let arrivals: Vec<Instant> = healthy.received().iter().map(|r| r.at).collect();
    let late = arrivals
        .windows(2)
        .filter(|w| w[1].duration_since(w[0]) > Duration::from_secs(1))
        .count();
    assert_eq!(
        late, 0,
        "the unordered neighbour stalled while its partition's ordered endpoint was blocked"
    );
    // Only the keys' heads were tried (the first event of each key, 0 to 49: event n has
    // the key n % 50), and the endpoint was tried again (its circuit's probes, the first
    // 5 s after it opened) while the rest waited. Which head a probe takes is whichever
    // comes first: one not tried yet as well as one tried already.
    let requests = failing.received();
    let tried: Vec<u64> = requests
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["data"]["n"].as_u64().unwrap()
        })
        .collect();
    assert!(
        tried.iter().all(|&n| n < 50),
        "only the keys' heads may be tried: {tried:?}"
    );
    let first = requests.iter().map(|r| r.at).min().expect("a request");
    let last = requests.iter().map(|r| r.at).max().expect("a request");
    assert!(
        last.duration_since(first) >= Duration::from_secs(4),
        "the failing endpoint was tried again after its circuit opened (its probes): requests over {:?} only, heads {tried:?}",
        last.duration_since(first)
    );
    for role in &mut roles {
        support::kill9(role);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_is_set_shown_and_checked_through_the_api() {
    let env = support::Env::new().await;
    let (_api, base) = env.spawn_api("test-admin-token-0123456789").await;
    let api = support::TenantsApi::new(&base, "test-admin-token-0123456789");
    let (status, _) = api
        .call(
            "POST",
            String::new(),
            Some(serde_json::json!({"id": "acme"})),
        )
        .await;
    assert_eq!(status, 201);
    let url = "https://hooks.example.com/in";
    let create = |extra: serde_json::Value| {
        let mut body = serde_json::json!({"url": url});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        api.call("POST", "/acme/endpoints".into(), Some(body))
    };
    // Unordered unless asked.
    let (status, plain) = create(serde_json::json!({})).await;
    assert_eq!(status, 201, "{plain}");
    assert_eq!(plain["ordering"], "none");
    assert!(plain.get("ordering_key").is_none());
    // What is wrong is said.
    for (body, says) in [
        (serde_json::json!({"ordering": "key"}), "needs ordering_key"),
        (
            serde_json::json!({"ordering": "key", "ordering_key": "charge_id"}),
            "is not a JSON Pointer",
        ),
        (
            serde_json::json!({"ordering": "key", "ordering_key": "/a~2"}),
            "~0",
        ),
        (
            serde_json::json!({"ordering": "endpoint", "ordering_key": "/a"}),
            "only used with ordering \"key\"",
        ),
        (serde_json::json!({"ordering": "fifo"}), "\"fifo\""),
    ] {
        let (status, v) = create(body.clone()).await;
        assert_eq!(status, 422, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {v}"
        );
    }
    let (status, ep) =
        create(serde_json::json!({"ordering": "key", "ordering_key": "/charge_id"})).await;
    assert_eq!(status, 201, "{ep}");
    let path = format!("/acme/endpoints/{}", ep["id"].as_str().unwrap());
    let (_, got) = api.call("GET", path.clone(), None).await;
    assert_eq!(
        (got["ordering"].as_str(), got["ordering_key"].as_str()),
        (Some("key"), Some("/charge_id"))
    );
    // PATCH: another pointer; then the whole endpoint (the pointer goes); a bad one is refused
    // and changes nothing.
    let (status, v) = api
        .call(
            "PATCH",
            path.clone(),
            Some(serde_json::json!({"ordering_key": "/payment/id"})),
        )
        .await;
    assert_eq!(
        (status, v["ordering_key"].as_str()),
        (200, Some("/payment/id")),
        "{v}"
    );
    let (status, v) = api
        .call(
            "PATCH",
            path.clone(),
            Some(serde_json::json!({"ordering": "endpoint"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ordering"], "endpoint");
    assert!(v.get("ordering_key").is_none(), "{v}");
    let (status, v) = api
        .call(
            "PATCH",
            path.clone(),
            Some(serde_json::json!({"ordering": "key"})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let (_, got) = api.call("GET", path.clone(), None).await;
    assert_eq!(got["ordering"], "endpoint");
    let (status, v) = api
        .call("PATCH", path, Some(serde_json::json!({"ordering": "none"})))
        .await;
    assert_eq!((status, v["ordering"].as_str()), (200, Some("none")), "{v}");
}

/// Redrive and replay jobs for a `key`-ordered endpoint: each job's copies go in the order of
/// the events stream per key among themselves, through the same failures as live deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_send_an_ordered_endpoints_copies_in_key_order() {
    const EVENTS: u64 = 300;
    const KEYS: u64 = 10;
    const TOKEN: &str = "test-admin-token-0123456789";
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let seen: Seen = Arc::default();
    let rx = flaky(&env, seen.clone()).await;
    let schedule = format!("0s{}", ",100ms".repeat(11));
    env.endpoint("acme", "keyed", &rx.url("/"), &[">"], &[], Some(&schedule))
        .await;
    env.change("acme", "keyed", |ep| {
        ep.ordering = OrderingMode::Key;
        ep.ordering_key = Some("/charge_id".into());
    })
    .await;
    let since = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut expected: HashMap<String, Vec<u64>> = HashMap::new();
    let events = (0..EVENTS).map(|n| {
        let key = format!("ch_{}", n % KEYS);
        expected.entry(key.clone()).or_default().push(n);
        let payload = serde_json::json!({"charge_id": key, "n": n});
        (format!("evt-{n}"), payload.to_string().into_bytes())
    });
    env.publish_many("acme", "charge.updated", events.collect::<Vec<_>>())
        .await;

    // Routed while no worker runs, then the endpoint disabled: the worker dead-letters every
    // delivery, each key's in order.
    let mut router = env.spawn("router");
    let ordered = env.layout.subjects.ordered_stream();
    wait_until("the deliveries routed", Duration::from_secs(30), || async {
        let mut s = env.js.get_stream(&ordered).await.unwrap();
        s.info().await.unwrap().state.messages == EVENTS
    })
    .await;
    env.change("acme", "keyed", |ep| ep.disabled = true).await;
    let mut worker = env.spawn("worker");
    wait_until(
        "every delivery dead-lettered",
        Duration::from_secs(60),
        || async { env.dead_letters().await.len() == EVENTS as usize },
    )
    .await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "a disabled endpoint got requests"
    );
    env.change("acme", "keyed", |ep| ep.disabled = false).await;

    let (mut api, base) = env.spawn_api(TOKEN).await;
    let api_calls = support::TenantsApi::new(&base, TOKEN);
    let jobs = [
        (
            "/acme/dead-letters/redrive",
            serde_json::json!({"endpoint": "keyed", "pace": 1000}),
        ),
        (
            "/acme/endpoints/keyed/replay",
            serde_json::json!({"since": since, "pace": 1000}),
        ),
    ];
    for (path, body) in jobs {
        seen.lock().unwrap().clear();
        let (status, job) = api_calls.call("POST", path.into(), Some(body)).await;
        assert_eq!(status, 202, "{path}: {job}");
        wait_until(
            &format!("{path}: every copy delivered"),
            Duration::from_secs(90),
            || std::future::ready(all_delivered(&seen, &expected)),
        )
        .await;
        let repeats = check_order(&seen.lock().unwrap(), &expected);
        assert_eq!(repeats, 0, "{path}: copies sent again after a 200");
    }
    for role in [&mut router, &mut worker, &mut api] {
        support::kill9(role);
    }
}
