//! SIGTERM of a worker under load, as an orchestrator stops a pod: the worker stops pulling,
//! finishes the requests it has in flight (or, past `GANCHO_SHUTDOWN_GRACE`, leaves them to
//! be redelivered), hands back what it pulled but did not start, and exits 0 within the grace.
//! Another worker delivers the rest: nothing is lost, and a duplicate is only a request cut
//! mid-flight, arriving again with the same webhook-id.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Sends SIGTERM and waits up to `patience` for the exit; returns the status and how long it
/// took (SIGKILL and a failed test past `patience`).
fn sigterm(child: &mut Child, patience: Duration) -> (ExitStatus, Duration) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let sent = Instant::now();
    while sent.elapsed() < patience {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, sent.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    support::kill9(child);
    panic!("the worker did not exit within {patience:?} of SIGTERM");
}

/// Requests shorter than the grace: every one in flight at the signal is finished and acked,
/// those waiting for the endpoint's turn are handed back, so the second worker sends
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_loses_nothing() {
    const EVENTS: usize = 2000;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https(&env.ca, |_, _| {
        Answer::status(200).after(Duration::from_millis(100))
    })
    .await;
    env.endpoint("acme", "ep", &rx.url("/hook"), &[">"], &[], None)
        .await;
    // 20 at a time: most of what the worker holds waits for a turn, and is handed back at
    // the signal rather than sent.
    env.change("acme", "ep", |e| e.max_in_flight = Some(20))
        .await;
    let mut router = env.spawn("router");
    let mut first = env.spawn_with(&["worker"], &[("GANCHO_SHUTDOWN_GRACE", "10s")]);
    let publisher = env.publish_in_background(
        "acme",
        "charge.paid",
        EVENTS,
        100,
        Duration::from_millis(20),
    );

    wait_until("deliveries under way", Duration::from_secs(60), || {
        std::future::ready(rx.count() >= 300)
    })
    .await;
    let (status, took) = sigterm(&mut first, Duration::from_secs(15));
    let at_exit = rx.count();
    assert!(status.success(), "the worker exited with {status}");
    assert!(
        took <= Duration::from_secs(11),
        "the worker took {took:?} to stop, beyond its 10 s grace"
    );
    assert!(at_exit < EVENTS, "the signal came after the load was over");

    let mut second = env.spawn("worker");
    publisher.await.unwrap();
    wait_until("every event delivered", Duration::from_secs(90), || {
        std::future::ready(rx.distinct() == EVENTS)
    })
    .await;
    env.wait_drained(Duration::from_secs(30)).await;
    let twice: Vec<_> = rx.tally().into_iter().filter(|(_, n)| *n > 1).collect();
    println!(
        "sigterm: the worker stopped in {took:?} with {at_exit} of {EVENTS} delivered; {} requests in all, {} duplicates",
        rx.count(),
        twice.len()
    );
    assert!(
        twice.is_empty(),
        "requests finished before the exit were sent again: {twice:?}"
    );
    assert!(support::terminate(&mut second));
    assert!(support::terminate(&mut router));
}

/// Requests longer than the grace: the worker exits 0 when the grace runs out, and the
/// requests it cut arrive again (same webhook-id), from the other worker; nothing else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_exits_and_only_cut_requests_repeat() {
    const EVENTS: usize = 30;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    // The first 30 requests hang for 4 s (the endpoint's timeout is 5 s); later ones answer
    // at once.
    let rx = Receiver::https(&env.ca, |n, _| {
        if n < EVENTS {
            Answer::status(200).after(Duration::from_secs(4))
        } else {
            Answer::status(200)
        }
    })
    .await;
    env.endpoint("acme", "ep", &rx.url("/hook"), &[">"], &[], None)
        .await;
    let mut router = env.spawn("router");
    let mut first = env.spawn_with(&["worker"], &[("GANCHO_SHUTDOWN_GRACE", "1s")]);
    env.publish_many(
        "acme",
        "charge.paid",
        (0..EVENTS).map(|i| (format!("evt-{i}"), b"{}".to_vec())),
    )
    .await;
    wait_until("every request in flight", Duration::from_secs(30), || {
        std::future::ready(rx.count() == EVENTS)
    })
    .await;
    let (status, took) = sigterm(&mut first, Duration::from_secs(10));
    assert!(status.success(), "the worker exited with {status}");
    assert!(
        took <= Duration::from_secs(2),
        "the worker took {took:?} to stop, beyond its 1 s grace"
    );

    let mut second = env.spawn("worker");
    wait_until(
        "the cut requests sent again",
        Duration::from_secs(60),
        || std::future::ready(rx.count() == 2 * EVENTS),
    )
    .await;
    env.wait_drained(Duration::from_secs(30)).await;
    let tally = rx.tally();
    assert_eq!(tally.len(), EVENTS);
    assert!(
        tally.values().all(|n| *n == 2),
        "each cut request arrives once more, with its webhook-id: {tally:?}"
    );
    assert!(support::terminate(&mut second));
    assert!(support::terminate(&mut router));
}
