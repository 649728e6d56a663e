//! Per-endpoint scheduling: one dead endpoint does not slow the healthy ones, the in-flight
//! cap holds at the receiver, and the rate limit spreads deliveries out.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_does_not_slow_a_healthy_one() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    // "dead" hangs for 3 s on every request (its timeout is 1 s); "ok" answers at once.
    let dead = Receiver::https(&env.ca, |_, _| {
        Answer::status(200).after(Duration::from_secs(3))
    })
    .await;
    let ok = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint("acme", "dead", &dead.url("/hook"), &[], &[], None)
        .await;
    env.change("acme", "dead", |ep| {
        ep.timeout_ms = 1000;
        ep.max_in_flight = Some(2);
    })
    .await;
    env.endpoint("acme", "ok", &ok.url("/hook"), &[], &[], None)
        .await;
    // A worker with only 8 request slots: without per-endpoint caps, the dead endpoint's
    // hanging requests would hold them all and "ok" would crawl (about 8 per second).
    let cancel = env.run_roles_with(2, 8).await;
    for n in 0..200 {
        env.publish("acme", "charge.paid", &format!("evt-{n}"), b"{}", &[])
            .await;
    }
    wait_until(
        "every delivery to the healthy endpoint",
        Duration::from_secs(15),
        || std::future::ready(ok.count() == 200),
    )
    .await;
    assert!(
        dead.max_concurrent() <= 2,
        "the dead endpoint had {} requests open; its cap is 2",
        dead.max_concurrent()
    );
    // After 5 consecutive timeouts the circuit opens: the dead endpoint stops being tried
    // for every delivery, and its deliveries wait as scheduled messages, not attempts.
    wait_until("the circuit to open", Duration::from_secs(20), || async {
        env.attempts("acme", "dead").await.len() >= 5
    })
    .await;
    let tried = dead.count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        dead.count() <= tried + 2,
        "with the circuit open, at most a probe reaches the dead endpoint ({tried} -> {})",
        dead.count()
    );
    assert!(
        env.attempts("acme", "dead").await.len() < 20,
        "deferred deliveries are not counted as attempts"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_cap_holds_at_the_receiver() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let slow = Receiver::https(&env.ca, |_, _| {
        Answer::status(200).after(Duration::from_millis(100))
    })
    .await;
    env.endpoint("acme", "slow", &slow.url("/hook"), &[], &[], None)
        .await;
    env.change("acme", "slow", |ep| ep.max_in_flight = Some(3))
        .await;
    let cancel = env.run_roles(1).await;
    for n in 0..40 {
        env.publish("acme", "charge.paid", &format!("evt-{n}"), b"{}", &[])
            .await;
    }
    wait_until("every delivery", Duration::from_secs(30), || {
        std::future::ready(slow.count() == 40)
    })
    .await;
    assert_eq!(slow.max_concurrent(), 3, "three at a time, never more");
    let attempts = env.attempts("acme", "slow").await;
    assert!(attempts.iter().all(|a| a.attempt == 1 && a.status == 200));
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spreads_deliveries() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint("acme", "limited", &rx.url("/hook"), &[], &[], None)
        .await;
    env.change("acme", "limited", |ep| ep.rate_limit_per_sec = Some(10))
        .await;
    let cancel = env.run_roles(1).await;
    for n in 0..30 {
        env.publish("acme", "charge.paid", &format!("evt-{n}"), b"{}", &[])
            .await;
    }
    wait_until("every delivery", Duration::from_secs(30), || {
        std::future::ready(rx.count() == 30)
    })
    .await;
    let got = rx.received();
    let span = got.last().unwrap().at - got.first().unwrap().at;
    // 10 go at once (the burst), the other 20 at 10 per second.
    assert!(
        span >= Duration::from_millis(1800),
        "30 deliveries at 10/s took only {span:?}"
    );
    // No one-second window holds more than the burst plus the rate.
    for (i, first) in got.iter().enumerate() {
        let in_window = got[i..]
            .iter()
            .take_while(|r| r.at - first.at < Duration::from_secs(1))
            .count();
        assert!(in_window <= 20, "{in_window} deliveries within one second");
    }
    cancel.cancel();
}

/// A 429 with `Retry-After: 2` pauses the endpoint: no request reaches it for 2 s (its
/// queued deliveries wait without spending attempts), while another endpoint on the same
/// worker keeps being delivered; then everything arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_pauses_the_endpoint_and_not_the_others() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let paused = Receiver::https(&env.ca, |n, _| {
        if n == 0 {
            Answer::status(429).header("retry-after", "2")
        } else {
            Answer::status(200)
        }
    })
    .await;
    let other = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint(
        "acme",
        "paused",
        &paused.url("/hook"),
        &["a.*"],
        &[],
        Some("0s,1s,1s,1s,1s"),
    )
    .await;
    env.change("acme", "paused", |ep| ep.max_in_flight = Some(1))
        .await;
    env.endpoint("acme", "other", &other.url("/hook"), &["b.*"], &[], None)
        .await;
    let cancel = env.run_roles(2).await;
    for n in 0..10 {
        env.publish("acme", "a.created", &format!("a-{n}"), b"{}", &[])
            .await;
    }
    wait_until("the 429", Duration::from_secs(10), || {
        std::future::ready(paused.count() >= 1)
    })
    .await;
    // The other endpoint is delivered all through the pause.
    for n in 0..20 {
        env.publish("acme", "b.created", &format!("b-{n}"), b"{}", &[])
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("every delivery to both", Duration::from_secs(30), || {
        std::future::ready(paused.distinct() == 10 && other.distinct() == 20)
    })
    .await;
    let got = paused.received();
    let first = got[0].at;
    let early: Vec<_> = got[1..]
        .iter()
        .map(|r| r.at.duration_since(first))
        .filter(|d| *d < Duration::from_millis(1950))
        .collect();
    assert!(
        early.is_empty(),
        "requests during the 2 s pause, after: {early:?}"
    );
    let during = other
        .received()
        .iter()
        .filter(|r| r.at > first && r.at.duration_since(first) < Duration::from_secs(2))
        .count();
    assert!(
        during >= 5,
        "only {during} deliveries to the other endpoint during the pause"
    );
    // The 429 was one attempt; the deliveries that waited spent none. (The record of the
    // last one is written after its answer reached the receiver: wait for it, then for any
    // more, which would be wrong.)
    wait_until("every attempt record", Duration::from_secs(10), || async {
        env.attempts("acme", "paused").await.len() >= 11
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attempts = env.attempts("acme", "paused").await;
    assert_eq!(attempts.len(), 11, "{attempts:?}");
    assert_eq!(paused.count(), 11);
    cancel.cancel();
}

/// Deliveries waiting on the held subjects (paused endpoints', and those parked while a
/// circuit is open).
async fn held(env: &support::Env) -> usize {
    env.stored_on(&env.layout.subjects.held_wildcard()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_parks_its_deliveries_until_a_probe_gets_through() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    // 503 until `up`, then 200.
    let up = Arc::new(AtomicBool::new(false));
    let rx = {
        let up = up.clone();
        Receiver::https(&env.ca, move |_, _| {
            Answer::status(if up.load(Ordering::SeqCst) { 200 } else { 503 })
        })
        .await
    };
    env.endpoint("acme", "down", &rx.url("/hook"), &[], &[], None)
        .await;
    env.change("acme", "down", |ep| ep.max_in_flight = Some(1))
        .await;
    let cancel = env.run_roles(1).await;
    for n in 0..60 {
        env.publish("acme", "charge.paid", &format!("evt-{n}"), b"{}", &[])
            .await;
    }
    // Five failures open the circuit; what comes after is parked once, not retried (what
    // finds the one slot and its queue of 4 taken is parked from the start).
    wait_until(
        "the circuit to open and the deliveries to be parked",
        Duration::from_secs(30),
        || async { rx.count() >= 5 && held(&env).await >= 50 },
    )
    .await;
    let tried = rx.count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        rx.count() <= tried + 1,
        "while the circuit cools down at most a probe goes out ({tried} -> {})",
        rx.count()
    );
    assert!(tried <= 8, "{tried} requests before the circuit opened");
    // The endpoint comes back: the next probe gets through and everything parked follows.
    up.store(true, Ordering::SeqCst);
    wait_until("every event delivered", Duration::from_secs(60), || async {
        let delivered: std::collections::HashSet<String> = env
            .attempts("acme", "down")
            .await
            .into_iter()
            .filter(|a| a.status == 200)
            .map(|a| a.event_id)
            .collect();
        delivered.len() == 60
    })
    .await;
    assert_eq!(held(&env).await, 0, "nothing left parked");
    let attempts = env.attempts("acme", "down").await;
    assert!(
        attempts.len() < 60 + 20,
        "parked deliveries spend no attempt ({} attempts)",
        attempts.len()
    );
    cancel.cancel();
}

/// A delivery's patience runs from when its endpoint first could not take it, not from when
/// the router made it: deliveries that waited in a backlog longer than the patience (no
/// worker was running) are delivered when their endpoint is merely busy, not given up at
/// its first refusal (a soak whose backlog outgrew the patience dead-lettered a healthy
/// endpoint's delivery so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_older_than_the_patience_is_delivered_not_given_up() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(200)).await;
    env.endpoint("acme", "busy", &rx.url("/hook"), &[], &[], None)
        .await;
    // Patience: a retry schedule of 1 s in all, then 2 s of grace. One request at a time and
    // five a second: most of the ten are refused (queued full, then parked) at first.
    env.change("acme", "busy", |ep| {
        ep.max_in_flight = Some(1);
        ep.rate_limit_per_sec = Some(5);
        ep.retry_schedule = Some("0s,1s".into());
    })
    .await;
    let mut router = env.spawn("router");
    for n in 0..10 {
        env.publish("acme", "charge.paid", &format!("evt-{n}"), b"{}", &[])
            .await;
    }
    wait_until("the deliveries routed", Duration::from_secs(30), || async {
        env.deliveries_left().await == 10
    })
    .await;
    // Older than the patience before any worker sees them.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut worker = env.spawn_with(&["worker"], &[("GANCHO_DEFER_GRACE", "2s")]);
    wait_until("every delivery", Duration::from_secs(30), || {
        std::future::ready(rx.count() == 10)
    })
    .await;
    assert!(
        env.dead_letters().await.is_empty(),
        "{:?}",
        env.dead_letters().await
    );
    support::terminate(&mut worker);
    support::terminate(&mut router);
}

/// A dead endpoint's parked deliveries do not wait for its circuit to close: once older than
/// its retry schedule plus `GANCHO_DEFER_GRACE` they are dead-lettered as `exhausted`, each
/// once, without a request, while the endpoint stays dead (before, they stayed parked until
/// a probe got through or the endpoint was disabled days later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_deliveries_outlive_their_patience_into_dead_letters_while_the_endpoint_stays_dead()
{
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(503)).await;
    env.endpoint("acme", "dead", &rx.url("/hook"), &[], &[], None)
        .await;
    // Patience: a retry schedule of 1 s in all, then 3 s of grace.
    env.change("acme", "dead", |ep| {
        ep.max_in_flight = Some(1);
        ep.retry_schedule = Some("0s,1s".into());
    })
    .await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn_with(&["worker"], &[("GANCHO_DEFER_GRACE", "3s")]);
    for n in 0..60 {
        env.publish("acme", "charge.paid", &format!("evt-{n}"), b"{}", &[])
            .await;
    }
    // Five failures open the circuit; the rest are parked.
    wait_until(
        "the deliveries to be parked",
        Duration::from_secs(30),
        || async { held(&env).await >= 40 },
    )
    .await;
    // A sweep every 10 s: each parked delivery goes within a sweep of turning 4 s old. Before,
    // one went out per probe (cool-downs of 5, 10, 20 s...): a handful in this time.
    wait_until(
        "every delivery dead-lettered",
        Duration::from_secs(45),
        || async { env.dead_letters().await.len() >= 60 },
    )
    .await;
    let dead = env.dead_letters().await;
    let events: std::collections::HashSet<String> = dead
        .iter()
        .filter_map(|d| d.delivery.as_ref().map(|d| d.event_id.clone()))
        .collect();
    assert_eq!(dead.len(), 60, "each delivery dead-lettered once");
    assert_eq!(events.len(), 60, "every event's delivery dead-lettered");
    assert!(
        dead.iter().all(|d| d.kind == "exhausted"),
        "{:?}",
        dead.iter().map(|d| &d.kind).collect::<Vec<_>>()
    );
    let swept = dead
        .iter()
        .filter(|d| d.reason.contains("(parked)") && d.reason.contains("plus 3s"))
        .count();
    assert!(
        swept >= 40,
        "{swept} dead-lettered from where they were parked: {:?}",
        dead.first().map(|d| &d.reason)
    );
    assert_eq!(held(&env).await, 0, "nothing left parked");
    assert!(
        rx.count() < 20,
        "the swept deliveries spent no request ({} requests)",
        rx.count()
    );
    support::kill9(&mut worker);
    support::kill9(&mut router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_is_parked_long_before_its_requests_time_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    // "hole" takes every request and says nothing (its timeout is 8 s) until `up`.
    let up = Arc::new(AtomicBool::new(false));
    let hole = {
        let up = up.clone();
        Receiver::https(&env.ca, move |_, _| {
            if up.load(Ordering::SeqCst) {
                Answer::status(200)
            } else {
                Answer::status(200).after(Duration::from_secs(30))
            }
        })
        .await
    };
    let ok = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint("acme", "hole", &hole.url("/hook"), &[], &[], None)
        .await;
    env.change("acme", "hole", |ep| {
        ep.timeout_ms = 8000;
        ep.max_in_flight = Some(4);
    })
    .await;
    env.endpoint("acme", "ok", &ok.url("/hook"), &[], &[], None)
        .await;
    let cancel = env.run_roles(2).await;
    let sent = std::time::Instant::now();
    for n in 0..40 {
        env.publish("acme", "charge.paid", &format!("evt-{n}"), b"{}", &[])
            .await;
    }
    // Four requests take its slots; a second without an answer and the other 36 are parked,
    // not bounced round JetStream until the first timeouts at 8 s.
    wait_until(
        "the silent endpoint's deliveries to be parked",
        Duration::from_secs(20),
        || async { held(&env).await >= 36 },
    )
    .await;
    let parked_after = sent.elapsed();
    println!("36 deliveries parked {parked_after:?} after the events were sent");
    assert!(
        parked_after < Duration::from_secs(6),
        "parked only after {parked_after:?}: it waited for the timeouts"
    );
    assert_eq!(
        hole.count(),
        4,
        "only the in-flight cap's requests went out"
    );
    wait_until(
        "the healthy endpoint to get all 40",
        Duration::from_secs(20),
        || async { ok.distinct() == 40 },
    )
    .await;
    // It answers again: once its silent requests time out, the parked ones go out.
    up.store(true, Ordering::SeqCst);
    wait_until("every event delivered", Duration::from_secs(40), || async {
        let delivered: std::collections::HashSet<String> = env
            .attempts("acme", "hole")
            .await
            .into_iter()
            .filter(|a| a.status == 200)
            .map(|a| a.event_id)
            .collect();
        delivered.len() == 40
    })
    .await;
    assert_eq!(held(&env).await, 0, "nothing left parked");
    let attempts = env.attempts("acme", "hole").await.len();
    assert!(
        attempts <= 40 + 4,
        "parking spends no attempt: {attempts} attempts for 40 events and 4 timeouts"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_429s_lower_the_rate_and_answers_bring_it_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    // 429 without Retry-After while `busy`, then 200.
    let busy = Arc::new(AtomicBool::new(true));
    let rx = {
        let busy = busy.clone();
        Receiver::https(&env.ca, move |_, _| {
            Answer::status(if busy.load(Ordering::SeqCst) {
                429
            } else {
                200
            })
        })
        .await
    };
    env.endpoint("acme", "small", &rx.url("/hook"), &[], &[], None)
        .await;
    env.change("acme", "small", |ep| ep.rate_limit_per_sec = Some(20))
        .await;
    let cancel = env.run_roles(1).await;
    for n in 0..400 {
        env.publish("acme", "charge.paid", &format!("evt-{n}"), b"{}", &[])
            .await;
    }
    let in_window = |from: Instant, secs: f64| {
        rx.received()
            .iter()
            .filter(|r| r.at >= from && r.at < from + Duration::from_secs_f64(secs))
            .count()
    };
    // 429s for 4 s: 20/s halves once a second (10, 5, 2, 1).
    wait_until("the first request", Duration::from_secs(20), || async {
        rx.count() > 0
    })
    .await;
    let first = rx.received()[0].at;
    tokio::time::sleep_until((first + Duration::from_secs(4)).into()).await;
    busy.store(false, Ordering::SeqCst);
    let back = Instant::now();
    let slowed = in_window(back - Duration::from_secs(1), 1.0);
    println!("requests in the last second of 429s: {slowed}");
    // Halved once a second from 20/s: 2/s or the floor of 1/s by now (5/s if a step came
    // late on a loaded machine); still sending (a 429 says the receiver is there: it lowers
    // the rate, it does not open the circuit).
    assert!(
        (1..=5).contains(&slowed),
        "{slowed} requests in the 4th second of 429s to an endpoint limited to 20/s"
    );
    // Answers without 429: a tenth of the limit (2/s) more each second, back to 20/s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let early = in_window(back, 2.0);
    let late = in_window(back + Duration::from_secs(10), 2.0);
    println!("after the 429s stopped: {early} requests in the first 2 s, {late} in s 10-12");
    assert!(
        early <= 16,
        "{early} requests in the first 2 s after the 429s: the rate came back at once"
    );
    assert!(
        (28..=20 * 2 + 2).contains(&late),
        "{late} requests in s 10-12 after the 429s: the rate did not climb back to 20/s"
    );
    cancel.cancel();
}
