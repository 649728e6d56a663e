//! Large events, as invoices with line items or statements are: 250,000-byte payloads sent
//! as a backlog to real roles (router and worker as separate processes) and an HTTPS receiver
//! that reads every body. With no fault, every delivery arrives exactly once; the router's
//! and the worker's resident memory (VmHWM, from /proc) stays within their budget
//! (`GANCHO_ROUTER_MEMORY`, `GANCHO_WORKER_MEMORY`) plus one largest message; with a 64 MiB
//! budget the same runs still deliver everything once, slower. Before the budgets, a pull of
//! many large messages made nats-server drop the worker as a slow consumer, and the acks
//! lost with its connection came back as duplicates (19 of 2,000 at 400 x 5).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Receiver};
use std::time::Duration;

/// Bytes of each event's JSON payload.
const PAYLOAD: usize = 250_000;
/// The largest message either role handles here: one event's payload, encoded once.
const LARGEST: u64 = 300 * 1024;

/// Peak resident memory of a child process, in bytes.
fn peak_rss(child: &std::process::Child) -> u64 {
    gancho_telemetry::process_usage(&child.id().to_string()).map_or(0.0, |u| u.peak_rss_bytes)
        as u64
}

/// Sends `events` events of [`PAYLOAD`] bytes to `endpoints` endpoints as a backlog, then
/// starts the router and the worker with `memory` as their budget (`None`: the default)
/// and checks that every delivery arrives once. Returns the roles' peak RSS (router,
/// worker).
async fn backlog(events: usize, endpoints: usize, memory: Option<&str>) -> (u64, u64) {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_tally(&env.ca).await;
    env.endpoints_on_all("acme", (0..endpoints).map(|e| format!("ep{e:03}")), |id| {
        rx.url(&format!("/{id}"))
    })
    .await;
    let blob = "x".repeat(PAYLOAD - 11);
    let payload = format!(r#"{{"blob":"{blob}"}}"#).into_bytes();
    assert_eq!(payload.len(), PAYLOAD);
    env.publish_many(
        "acme",
        "invoice.issued",
        (0..events).map(|i| (format!("evt-{i}"), payload.clone())),
    )
    .await;
    let budget: Vec<(&str, &str)> = memory
        .map(|m| vec![("GANCHO_ROUTER_MEMORY", m), ("GANCHO_WORKER_MEMORY", m)])
        .unwrap_or_default();
    let mut router = env.spawn_with(&["router"], &budget);
    let mut worker = env.spawn_with(&["worker"], &budget);
    let expected = events * endpoints;
    wait_until(
        &format!("{expected} deliveries of {PAYLOAD} bytes"),
        Duration::from_secs(900),
        || std::future::ready(rx.distinct() >= expected),
    )
    .await;
    // Nothing more comes: a late duplicate would be seen here.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peaks = (peak_rss(&router), peak_rss(&worker));
    eprintln!(
        "{events} x {endpoints} of {PAYLOAD} B, budget {}: peak RSS router {:.1} MiB, worker {:.1} MiB",
        memory.unwrap_or("default"),
        peaks.0 as f64 / (1 << 20) as f64,
        peaks.1 as f64 / (1 << 20) as f64
    );
    assert_eq!(
        rx.count(),
        expected,
        "{} duplicates with no fault",
        rx.count() - expected
    );
    assert!(
        rx.tally().values().all(|&n| n == 1),
        "a delivery arrived twice"
    );
    support::terminate(&mut worker);
    support::terminate(&mut router);
    peaks
}

fn within(role: &str, peak: u64, budget: u64) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    assert!(
        peak <= budget + LARGEST,
        "the {role} peaked at {:.1} MiB, over its budget of {:.0} MiB plus one message",
        mib(peak),
        mib(budget)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_to_5_endpoints_arrive_once_within_the_default_budgets() {
    let (router, worker) = backlog(400, 5, None).await;
    within("router", router, gancho_router::DEFAULT_MEMORY);
    within("worker", worker, gancho_worker::DEFAULT_MEMORY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_arrive_once_within_a_64_mib_budget() {
    let (router, worker) = backlog(100, 5, Some("64MiB")).await;
    // Within the default budget at least: the small one slows the roles down, and the
    // binaries themselves (a debug build here) weigh more than a quarter of 64 MiB.
    within("router", router, gancho_router::DEFAULT_MEMORY);
    within("worker", worker, gancho_worker::DEFAULT_MEMORY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "2.5 GB of webhooks; run with make test-slow"]
async fn large_events_to_50_endpoints_arrive_once_within_the_default_budgets() {
    let (router, worker) = backlog(200, 50, None).await;
    within("router", router, gancho_router::DEFAULT_MEMORY);
    within("worker", worker, gancho_worker::DEFAULT_MEMORY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "3 GB of webhooks through a 64 MiB budget; run with make test-slow"]
async fn every_large_backlog_arrives_once_within_a_64_mib_budget() {
    backlog(400, 5, Some("64MiB")).await;
    backlog(200, 50, Some("64MiB")).await;
}
