//! Storage limits without loss, with real nats-server streams a few MB small. A deliveries
//! stream at its room (GANCHO_DELIVERIES_MAX_BYTES) behind a dead endpoint makes the router
//! wait (events stay in their stream, and its stall watch says they wait for room) while the
//! workers keep retrying; once the endpoint recovers every event arrives
//! and nothing is dead-lettered. A full events stream refuses new events over HTTP with 507
//! and loses none it accepted.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";
const LIMIT: u64 = 1 << 20;

async fn stream_state(env: &support::Env, name: String) -> (u64, i64, u64) {
    let mut s = env.js.get_stream(name).await.unwrap();
    let info = s.info().await.unwrap();
    (info.state.bytes, info.config.max_bytes, info.state.messages)
}

/// The deliveries and held streams together: bytes, the larger byte limit of the two,
/// messages. (The router's room counts the ordered stream too; these tests' endpoints are
/// not ordered but the last one's, which looks at the ordered stream itself.)
async fn room_state(env: &support::Env) -> (u64, i64, u64) {
    let subjects = &env.layout.subjects;
    let (d_bytes, d_max, d_msgs) = stream_state(env, subjects.deliveries_stream()).await;
    let (h_bytes, h_max, h_msgs) = stream_state(env, subjects.held_stream()).await;
    (d_bytes + h_bytes, d_max.max(h_max), d_msgs + h_msgs)
}

/// Tenant acme's endpoint ep1, answering 503 until the flag returned is cleared, retried every
/// second for 45 s.
async fn failing_endpoint(env: &support::Env) -> (Receiver, Arc<AtomicBool>) {
    env.tenant("acme").await;
    let dead = Arc::new(AtomicBool::new(true));
    let flag = dead.clone();
    let rx = Receiver::https(&env.ca, move |_, _| {
        Answer::status(if flag.load(Ordering::Relaxed) {
            503
        } else {
            200
        })
    })
    .await;
    let schedule = std::iter::once("0s")
        .chain(std::iter::repeat_n("1s", 45))
        .collect::<Vec<_>>()
        .join(",");
    env.endpoint("acme", "ep1", &rx.url("/hook"), &[], &[], Some(&schedule))
        .await;
    (rx, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_deliveries_stream_waits_and_loses_nothing() {
    const N: usize = 2_000;
    let env = support::Env::new().await;
    let (rx, dead) = failing_endpoint(&env).await;
    let limits = [("GANCHO_DELIVERIES_MAX_BYTES", "1MiB")];
    // The router's log, with its stall warning after 1 s: waiting for room is no stall.
    let router_log = tempfile::NamedTempFile::new().unwrap();
    let mut router = env.spawn_logging(
        &["router"],
        &[
            limits[0],
            ("GANCHO_STALL_WARNING_AFTER", "1s"),
            ("RUST_LOG", "info"),
        ],
        router_log.as_file(),
    );
    let mut worker = env.spawn_with(&["worker"], &limits);

    let payload = json!({"pad": "x".repeat(1000)}).to_string().into_bytes();
    env.publish_many(
        "acme",
        "charge.paid",
        (0..N).map(|i| (format!("evt-full-{i}"), payload.clone())),
    )
    .await;
    // The router fills the stream to its high-water mark (90 %; it stops short of it by less
    // than one delivery, these are about 1.3 KiB), then publishes nothing more: events wait in
    // their stream or in the router's hands. (Measured from 80 %, the router's last 10 % on a
    // slow machine read as publishing past its room: 690 then 758 in one `make test`.)
    wait_until(
        "the deliveries stream at its high-water mark",
        Duration::from_secs(60),
        || async {
            let (bytes, _, _) = room_state(&env).await;
            bytes as f64 >= 0.9 * LIMIT as f64 - 8192.0
        },
    )
    .await;
    // While the endpoint is dead the deliveries do not grow: the workers' rescheduled retries
    // and parked deliveries replace the deliveries they came from (they are never refused, so
    // they may pass the room for a moment), and the router waits.
    let (_, _, before) = room_state(&env).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, _, after) = room_state(&env).await;
    assert!(
        after <= before + 64,
        "the router kept publishing past its room: {before} then {after} deliveries"
    );
    let (pending, in_hand) = env.router_consumer_state().await;
    assert!(
        pending + in_hand as u64 > 0,
        "events wait, in their stream or in the router's hands"
    );
    let (bytes, max, _) = room_state(&env).await;
    assert_eq!(
        max, -1,
        "no limit of their own: with discard old they would drop deliveries"
    );
    assert!(bytes < 3 * LIMIT, "{bytes} bytes, room {LIMIT}");
    assert!(
        rx.count() > 0,
        "the workers keep attempting while the stream is full"
    );
    // Its events wait for room, and it says so, without calling it a stall.
    wait_until(
        "the router to say its events wait for room",
        Duration::from_secs(15),
        || {
            let text = std::fs::read_to_string(router_log.path()).unwrap();
            std::future::ready(text.contains("they wait for room in the store (not a stall)"))
        },
    )
    .await;
    let text = std::fs::read_to_string(router_log.path()).unwrap();
    assert!(
        !text.contains("is JetStream answering?"),
        "waiting for room was called a stall: {}",
        text.lines()
            .find(|l| l.contains("is JetStream answering?"))
            .unwrap_or_default()
    );

    // The endpoint recovers: everything arrives, nothing is dead-lettered.
    dead.store(false, Ordering::Relaxed);
    wait_until("every event delivered", Duration::from_secs(180), || {
        std::future::ready(rx.distinct() == N)
    })
    .await;
    assert!(env.dead_letters().await.is_empty(), "nothing dead-lettered");
    support::terminate(&mut worker);
    support::terminate(&mut router);
}

/// Ordered deliveries waiting for their key's turn take room too: behind an ordered endpoint
/// that fails, they pile up in the ordered stream, and the router stops at the room's
/// high-water mark there as it does for the deliveries stream; once the endpoint answers,
/// every delivery arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_deliveries_count_against_the_room() {
    const N: usize = 1_000;
    const KEYS: usize = 50;
    let env = support::Env::new().await;
    let (rx, dead) = failing_endpoint(&env).await;
    env.change("acme", "ep1", |ep| {
        ep.ordering = gancho_store::model::OrderingMode::Key;
        ep.ordering_key = Some("/k".into());
    })
    .await;
    let limits = [("GANCHO_DELIVERIES_MAX_BYTES", "1MiB")];
    let mut router = env.spawn_with(&["router"], &limits);
    let mut worker = env.spawn_with(&["worker"], &limits);
    let ordered = || async { stream_state(&env, env.layout.subjects.ordered_stream()).await };
    env.publish_many(
        "acme",
        "charge.paid",
        (0..N).map(|i| {
            let payload = json!({"k": format!("key-{}", i % KEYS), "pad": "x".repeat(1000)});
            (format!("evt-ordered-{i}"), payload.to_string().into_bytes())
        }),
    )
    .await;
    // Each key's head failing: the rest of each key waits in the ordered stream, up to the
    // room's high-water mark (90%), and no further.
    wait_until(
        "the ordered stream at the room's high-water mark",
        Duration::from_secs(60),
        || async {
            let (bytes, _, _) = ordered().await;
            bytes as f64 >= 0.9 * LIMIT as f64 - 8192.0
        },
    )
    .await;
    // As in the test above: the router reads the streams every 250 ms and reserves a
    // delivery's payload and a little more, so it may finish a few dozen past the mark (one
    // `make test` saw 735 then 750); the old router routed all of them (749 then 1,000).
    let (_, _, before) = ordered().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (bytes, _, after) = ordered().await;
    assert!(
        after <= before + 64,
        "the router kept publishing ordered deliveries past its room: {before} then {after}"
    );
    assert!(bytes < LIMIT + 64 * 1024, "{bytes} bytes, room {LIMIT}");
    assert!(
        (after as usize) < N,
        "the events past the room wait in their stream: {after} of {N} routed"
    );
    dead.store(false, Ordering::Relaxed);
    wait_until("every event delivered", Duration::from_secs(180), || {
        std::future::ready(rx.distinct() == N)
    })
    .await;
    support::terminate(&mut worker);
    support::terminate(&mut router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_events_stream_refuses_new_events_and_keeps_the_accepted_ones() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let (mut api, base) = env
        .spawn_api_with(TOKEN, &[("GANCHO_EVENTS_MAX_BYTES", "1MiB")])
        .await;
    let data = json!({"pad": "x".repeat(4000)});
    let mut accepted = 0u64;
    let mut refusal = None;
    for i in 0..1_000 {
        let body = json!({"id": format!("evt-{i}"), "type": "charge.paid", "data": data});
        let (s, v) = support::http(
            "POST",
            &format!("{base}/v1/tenants/acme/events"),
            Some(TOKEN),
            Some(&body.to_string()),
        )
        .await;
        match s {
            202 => accepted += 1,
            _ => {
                refusal = Some((s, v, i));
                break;
            }
        }
    }
    let (status, v, i) = refusal.expect("a 1 MiB stream fills within 1,000 events of 4 KB");
    assert_eq!(status, 507, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("evt-{i}")) && msg.contains("full"),
        "{msg}"
    );
    let (_, max, messages) = stream_state(&env, env.layout.subjects.events_stream()).await;
    assert_eq!(max, LIMIT as i64);
    assert_eq!(messages, accepted, "every accepted event is still there");
    support::terminate(&mut api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_events_are_trimmed_so_producers_can_go_on() {
    const N: usize = 600;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint("acme", "ep1", &rx.url("/hook"), &[], &[], None)
        .await;
    let limits = [("GANCHO_EVENTS_MAX_BYTES", "1MiB")];
    let (mut api, base) = env.spawn_api_with(TOKEN, &limits).await;
    let mut router = env.spawn_with(&["router"], &limits);
    let mut worker = env.spawn_with(&["worker"], &limits);
    // 600 events of 4 KB: more than twice the room. A producer that gets 507 waits and sends
    // the same event again, as the message says.
    let data = json!({"pad": "x".repeat(4000)});
    let mut refused = 0;
    for i in 0..N {
        let body = json!({"id": format!("evt-{i}"), "type": "charge.paid", "data": data});
        loop {
            let (s, v) = support::http(
                "POST",
                &format!("{base}/v1/tenants/acme/events"),
                Some(TOKEN),
                Some(&body.to_string()),
            )
            .await;
            match s {
                202 => break,
                507 => {
                    refused += 1;
                    assert!(refused < 2_000, "the store never made room: {v}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => panic!("{s} {v}"),
            }
        }
    }
    let (bytes, max, _) = stream_state(&env, env.layout.subjects.events_stream()).await;
    assert!(bytes <= max as u64);
    wait_until("every event delivered", Duration::from_secs(60), || {
        std::future::ready(rx.distinct() == N)
    })
    .await;
    eprintln!("{refused} requests were refused with 507 and sent again");
    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_brought_to_the_configured_settings_at_start_up() {
    use async_nats::jetstream::stream;
    let env = support::Env::new().await;
    let subjects = env.layout.subjects.clone();
    // A deliveries limit set by hand with discard old (it would drop deliveries), and an
    // events stream with the old discard policy.
    let mut d = env
        .js
        .get_stream(subjects.deliveries_stream())
        .await
        .unwrap();
    let mut cfg = d.info().await.unwrap().config.clone();
    cfg.max_bytes = 1 << 20;
    cfg.discard = stream::DiscardPolicy::Old;
    env.js.update_stream(cfg).await.unwrap();
    let mut e = env.js.get_stream(subjects.events_stream()).await.unwrap();
    let mut cfg = e.info().await.unwrap().config.clone();
    cfg.discard = stream::DiscardPolicy::Old;
    env.js.update_stream(cfg).await.unwrap();

    // The config bucket's history cut by hand.
    let kv_stream = format!("KV_{}", subjects.config_bucket());
    let mut k = env.js.get_stream(&kv_stream).await.unwrap();
    let mut cfg = k.info().await.unwrap().config.clone();
    cfg.max_messages_per_subject = 1;
    env.js.update_stream(cfg).await.unwrap();

    let mut router = env.spawn_with(
        &["router"],
        &[
            ("GANCHO_EVENTS_MAX_BYTES", "2MiB"),
            ("GANCHO_DUPLICATE_WINDOW", "5m"),
        ],
    );
    wait_until("the settings applied", Duration::from_secs(20), || async {
        let d = stream_state(&env, subjects.deliveries_stream()).await;
        let mut e = env.js.get_stream(subjects.events_stream()).await.unwrap();
        let ec = e.info().await.unwrap().config.clone();
        let mut k = env.js.get_stream(&kv_stream).await.unwrap();
        let kc = k.info().await.unwrap().config.clone();
        d.1 == -1
            && ec.max_bytes == 2 << 20
            && ec.discard == stream::DiscardPolicy::New
            && ec.duplicate_window == Duration::from_secs(300)
            && kc.max_messages_per_subject == gancho_store::streams::CONFIG_HISTORY
    })
    .await;
    support::terminate(&mut router);

    // A retention JetStream cannot change stops start-up with a line that says what to do.
    env.js
        .delete_stream(subjects.deliveries_stream())
        .await
        .unwrap();
    env.js
        .create_stream(stream::Config {
            name: subjects.deliveries_stream(),
            subjects: vec![subjects.deliveries_wildcard()],
            ..Default::default()
        })
        .await
        .unwrap();
    let out = env.command(&["router"], &[]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("retention") && stderr.contains("nats stream rm GANCHO_DELIVERIES"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_attempt_log_drops_its_oldest_records_and_delivery_goes_on() {
    let (bytes, max, records, _) = full_attempt_log(("GANCHO_ATTEMPTS_MAX_BYTES", "1MiB")).await;
    assert_eq!(max, LIMIT as i64);
    assert!(bytes <= LIMIT, "{bytes}");
    assert!(
        (records as usize) < FULL_LOG_EVENTS,
        "the oldest records made room: {records} kept of {FULL_LOG_EVENTS}"
    );
}

/// The record limit is what bounds nats-server's memory for the log: it keeps an index entry
/// per distinct subject, and each attempt's subject names its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_log_keeps_at_most_its_record_limit_and_so_its_subjects() {
    let (_, _, records, subjects) = full_attempt_log(("GANCHO_ATTEMPTS_MAX_RECORDS", "300")).await;
    assert!(records <= 300, "{records} records kept, 300 allowed");
    assert!(
        (200..=300).contains(&subjects),
        "nats-server indexes {subjects} subjects for the 300 newest attempts"
    );
}

const FULL_LOG_EVENTS: usize = 1_000;

/// Delivers [`FULL_LOG_EVENTS`] events to one endpoint with the attempt log limited by
/// `limit`: every event arrives once, and the worker says the log is at its limit. Returns
/// the attempt log's bytes, byte limit, records and distinct subjects.
async fn full_attempt_log(limit: (&str, &str)) -> (u64, i64, u64, u64) {
    const N: usize = FULL_LOG_EVENTS;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    // 2 KB answers: each attempt record keeps the first 4 KiB of the body.
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(200).body(&"r".repeat(2_000))).await;
    env.endpoint("acme", "ep1", &rx.url("/hook"), &[], &[], None)
        .await;
    let limits = [limit];
    let mut router = env.spawn_with(&["router"], &limits);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut worker = env.spawn_logging(&["worker"], &limits, log.as_file());
    env.publish_many(
        "acme",
        "charge.paid",
        (0..N).map(|i| (format!("evt-log-{i}"), b"{}".to_vec())),
    )
    .await;
    wait_until("every event delivered", Duration::from_secs(60), || {
        std::future::ready(rx.distinct() == N)
    })
    .await;
    let mut stream = env
        .js
        .get_stream(env.layout.subjects.attempts_stream())
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(rx.count(), N, "no attempt repeated for want of room");
    // Not silently: the worker says the log is full (it looks every few seconds).
    wait_until(
        "the worker to say the log is full",
        Duration::from_secs(15),
        || {
            let text = std::fs::read_to_string(log.path()).unwrap();
            std::future::ready(text.contains("A log is at its size or record limit"))
        },
    )
    .await;
    support::terminate(&mut worker);
    support::terminate(&mut router);
    (
        info.state.bytes,
        info.config.max_bytes,
        info.state.messages,
        info.state.subjects_count,
    )
}

/// The server's own store fills up (`max_file_store`) under load, with one endpoint failing:
/// producers are refused, the router and the worker wait instead of dropping or doubling
/// anything, and once the failing endpoint recovers every event accepted reaches both
/// endpoints. Scheduled retries that JetStream could not fire while full are re-armed. The
/// worker's consumers are paused until the store is full, so it fills on any machine. The
/// router caps the events stream while the store is full, and lifts the cap afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_store_makes_every_role_wait_and_loses_nothing() {
    full_server_store("8MB", 4000, 2000).await;
}

/// The same with a store so small that parked deliveries and unrouted events fill it alone:
/// the copy that would release a parked delivery is refused, so it is delivered from where it
/// is (before, nothing was delivered again: no copy could be stored and no event trimmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_deliveries_in_a_full_store_are_delivered_in_place() {
    full_server_store("5MB", 2500, 3500).await;
}

/// `events` of `pad` bytes each: their deliveries alone must take more than the store (the
/// workers are paused, and the router trims only routed events), so it fills however the
/// producer and the router race. 2,500 of 2 KB fitted in 8 MB once the router had trimmed,
/// and the producer was refused only if it was still sending by then.
///
/// Events of 3.5 KB in 5 MB stalled every run before the events stream was capped: the
/// producer, sending again every 200 ms, took the room each delivery freed, until the store
/// held nothing but events whose deliveries had no room.
async fn full_server_store(max_file_store: &str, events: usize, pad: usize) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    let n = events;
    /// Events sent before the producer starts, enough to open the failing endpoint's circuit.
    const PARKED_FIRST: usize = 20;
    let nats = gancho_test_harness::NatsServer::start_with_config(&format!(
        "jetstream {{ max_file_store: {max_file_store} }}"
    ));
    let env = support::Env::with_nats(nats).await;
    env.tenant("acme").await;
    let failing = Arc::new(AtomicBool::new(true));
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let (flag, record) = (failing.clone(), delivered.clone());
    let rx = Receiver::https(&env.ca, move |_, r| {
        if r.path == "/flaky" && flag.load(Ordering::Relaxed) {
            return Answer::status(503);
        }
        let id = r.header("webhook-id").unwrap_or_default().to_owned();
        record.lock().unwrap().insert((r.path.clone(), id));
        Answer::status(200)
    })
    .await;
    let schedule = std::iter::once("0s")
        .chain(std::iter::repeat_n("2s", 49))
        .collect::<Vec<_>>()
        .join(",");
    env.endpoint("acme", "ok", &rx.url("/ok"), &[], &[], None)
        .await;
    env.endpoint(
        "acme",
        "flaky",
        &rx.url("/flaky"),
        &[],
        &[],
        Some(&schedule),
    )
    .await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    // The roles are up and delivering before the store fills (a small store fills within a
    // second, before a worker has even started).
    env.publish("acme", "charge.paid", "warm-up", b"{}", &[])
        .await;
    wait_until("the warm-up delivery", Duration::from_secs(30), || {
        std::future::ready(!delivered.lock().unwrap().is_empty())
    })
    .await;

    // The store fills whatever this machine's speed: once some of the failing endpoint's
    // deliveries are parked (its circuit opened), the worker's consumers are paused, so the
    // deliveries the router writes stay, and the events behind them, until JetStream refuses
    // the producer.
    for i in 0..PARKED_FIRST {
        env.publish("acme", "charge.paid", &format!("first-{i}"), b"{}", &[])
            .await;
    }
    let held_stream = env.layout.subjects.held_stream();
    let held = env.layout.subjects.held_wildcard();
    wait_until("deliveries parked", Duration::from_secs(60), || async {
        let Ok(stream) = env.js.get_stream(&held_stream).await else {
            return false;
        };
        let Ok(mut by_subject) = stream.info_with_subjects(&held).await else {
            return false;
        };
        matches!(
            futures::TryStreamExt::try_next(&mut by_subject).await,
            Ok(Some(_))
        )
    })
    .await;
    let paused = pause_workers(&env, true).await;
    assert!(paused > 0, "no worker consumer to pause");

    // A producer that, refused for lack of room, waits and sends the same event again.
    let refusals = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let (js, subject, refusals) = (
            env.js.clone(),
            env.layout.subjects.event("acme", "charge.paid"),
            refusals.clone(),
        );
        let payload = json!({"pad": "x".repeat(pad)}).to_string().into_bytes();
        // 64 publishes in flight at once: the producer outruns the router, so the events and
        // deliveries waiting fill the store however fast this machine routes and delivers.
        tokio::spawn(async move {
            use futures::StreamExt as _;
            futures::stream::iter(0..n)
                .map(|i| {
                    let (js, subject, refusals, payload) = (&js, &subject, &refusals, &payload);
                    async move {
                        let id = format!("evt-{i}");
                        loop {
                            let publish = acme_charge(&id, payload);
                            let acked =
                                async { js.send_publish(subject.clone(), publish).await?.await }
                                    .await;
                            match acked {
                                Ok(_) => break,
                                Err(e) => {
                                    assert!(gancho_store::refusal::is_full(&e), "{e:?}");
                                    refusals.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        }
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<()>>()
                .await;
        })
    };
    wait_until("the server's store full", Duration::from_secs(120), || {
        std::future::ready(refusals.load(Ordering::Relaxed) > 0)
    })
    .await;
    // Full for a while: everyone waits, nobody gives up.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(router.try_wait().unwrap().is_none(), "the router runs");
    assert!(worker.try_wait().unwrap().is_none(), "the worker runs");
    pause_workers(&env, false).await;
    failing.store(false, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(240), producer)
        .await
        .expect("every event accepted in the end")
        .unwrap();
    wait_until(
        "every event delivered to both endpoints",
        Duration::from_secs(240),
        || std::future::ready(delivered.lock().unwrap().len() == 2 * (n + 1 + PARKED_FIRST)),
    )
    .await;
    let dead = env.dead_letters().await;
    assert!(dead.is_empty(), "nothing dead-lettered: {:?}", dead.first());
    // The events stream was capped at its count while the store was full, and is not any more.
    wait_until(
        "the events stream's record limit put back",
        Duration::from_secs(60),
        || async {
            let Ok(stream) = env.js.get_stream(env.layout.subjects.events_stream()).await else {
                return false;
            };
            let config = &stream.cached_info().config;
            !config
                .metadata
                .contains_key(gancho_store::streams::FULL_STORE_CAP)
                && config.max_messages <= 0
        },
    )
    .await;
    eprintln!(
        "{} publishes were refused for lack of room and sent again; {} requests in all",
        refusals.load(Ordering::Relaxed),
        rx.count()
    );
    support::terminate(&mut worker);
    support::terminate(&mut router);
}

/// A router that was down while producers filled the server's store comes back to events
/// only, none routed: routing one needs room for its deliveries, and nothing it may trim
/// exists. It caps the events stream and sheds the oldest part of the attempt log, and every
/// event is delivered once (before, it waited for an operator to free space).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_back_to_a_store_full_of_unrouted_events_routes_them_all() {
    const EARLIER: usize = 400;
    let nats =
        gancho_test_harness::NatsServer::start_with_config("jetstream { max_file_store: 3MB }");
    let env = support::Env::with_nats(nats).await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint("acme", "ok", &rx.url("/ok"), &[], &[], None)
        .await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    // Deliveries before the outage leave their attempt records in the log.
    for i in 0..EARLIER {
        env.publish("acme", "charge.paid", &format!("earlier-{i}"), b"{}", &[])
            .await;
    }
    wait_until(
        "the earlier events delivered",
        Duration::from_secs(60),
        || std::future::ready(rx.distinct() == EARLIER),
    )
    .await;
    // The router is down while the producer fills the store, whose replay window an earlier
    // full store had already trimmed to nothing (else the router trims the routed events).
    support::terminate(&mut router);
    env.js
        .get_stream(env.layout.subjects.events_stream())
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let subject = env.layout.subjects.event("acme", "charge.paid");
    let payload = json!({"pad": "x".repeat(3000)}).to_string();
    let mut accepted = 0usize;
    loop {
        let publish = acme_charge(&format!("evt-{accepted}"), payload.as_bytes());
        match async { env.js.send_publish(subject.clone(), publish).await?.await }.await {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert!(gancho_store::refusal::is_full(&e), "{e:?}");
                break;
            }
        }
        assert!(accepted < 5_000, "the store never filled");
    }
    let mut router = env.spawn("router");
    wait_until(
        "every event accepted delivered once the router is back",
        Duration::from_secs(180),
        || std::future::ready(rx.distinct() == EARLIER + accepted),
    )
    .await;
    assert_eq!(rx.count(), EARLIER + accepted, "no event delivered twice");
    let attempts = env
        .js
        .get_stream(env.layout.subjects.attempts_stream())
        .await
        .unwrap();
    assert!(
        attempts.cached_info().state.first_sequence > 1,
        "the oldest attempt records made the room"
    );
    eprintln!("{accepted} events filled the store while the router was down");
    support::terminate(&mut worker);
    support::terminate(&mut router);
}

/// A `charge.paid` event `id` of tenant acme, stamped now, as a publish under its message id
/// (sent again, it is stored once).
fn acme_charge(id: &str, payload: &[u8]) -> async_nats::jetstream::message::PublishMessage {
    use gancho_proto::Message as _;
    let ev = gancho_proto::Event {
        id: id.to_owned(),
        tenant: "acme".into(),
        r#type: "charge.paid".into(),
        occurred_at: Some(gancho_proto::timestamp(time::OffsetDateTime::now_utc())),
        payload: bytes::Bytes::copy_from_slice(payload),
        ..Default::default()
    };
    async_nats::jetstream::message::PublishMessage::build()
        .payload(ev.encode_to_vec().into())
        .message_id(gancho_core::subject::event_message_id(&ev.tenant, &ev.id))
}

/// Pauses (`true`, for ten minutes) or resumes every consumer of the workers on the deliveries
/// stream (JetStream's consumer pause): paused, a consumer hands nothing out. Returns how
/// many it changed.
async fn pause_workers(env: &support::Env, pause: bool) -> usize {
    let subjects = &env.layout.subjects;
    let stream = env
        .js
        .get_stream(subjects.deliveries_stream())
        .await
        .unwrap();
    let until = time::OffsetDateTime::now_utc() + Duration::from_secs(600);
    let mut changed = 0;
    for p in 0..gancho_core::subject::PARTITIONS {
        for name in [
            subjects.worker_consumer(p),
            subjects.worker_bulk_consumer(p),
        ] {
            let done = if pause {
                stream.pause_consumer(&name, until).await
            } else {
                stream.resume_consumer(&name).await
            };
            if done.is_ok() {
                changed += 1;
            }
        }
    }
    changed
}
