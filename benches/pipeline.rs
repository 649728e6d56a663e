//! End-to-end throughput: events published to JetStream, routed, delivered over HTTPS to local
//! receivers, on one machine (nats-server, router, worker and receivers all share its cores).
//! Run with `make bench`; results go to BENCHMARKS.md with the machine.
//!
//! `GANCHO_BENCH_EVENTS` (default 5000) events fan out to `GANCHO_BENCH_ENDPOINTS` (default 2)
//! endpoints; the clock runs from the first publish to the last webhook received. Three runs,
//! each on a fresh server; the median is reported.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

#[path = "../tests/support/mod.rs"]
mod support;

use gancho_test_harness::{wait_until, Receiver};
use std::time::{Duration, Instant};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run_once(events: usize, endpoints: usize) -> (Duration, usize) {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let mut receivers = Vec::new();
    for i in 0..endpoints {
        let rx = Receiver::https_sequence(&env.ca, &[200]).await;
        env.endpoint(
            "acme",
            &format!("ep{i}"),
            &rx.url("/hook"),
            &[">"],
            &[],
            None,
        )
        .await;
        receivers.push(rx);
    }
    let cancel = env.run_roles(endpoints).await;
    let payload =
        br#"{"id":"ch_1","amount":1990,"currency":"BRL","customer":"cus_9","method":"pix"}"#;
    let start = Instant::now();
    let backlog = (0..events).map(|n| (format!("evt-{n}"), payload.to_vec()));
    env.publish_many("acme", "charge.paid", backlog).await;
    let total = events * endpoints;
    wait_until("every delivery", Duration::from_secs(600), || {
        std::future::ready(receivers.iter().map(|r| r.count()).sum::<usize>() >= total)
    })
    .await;
    let elapsed = start.elapsed();
    cancel.cancel();
    (elapsed, total)
}

fn main() {
    let events = env_usize("GANCHO_BENCH_EVENTS", 5000);
    let endpoints = env_usize("GANCHO_BENCH_ENDPOINTS", 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rates = Vec::new();
    for round in 1..=3 {
        let (elapsed, total) = runtime.block_on(run_once(events, endpoints));
        let rate = total as f64 / elapsed.as_secs_f64();
        println!(
            "round {round}: {events} events x {endpoints} endpoints = {total} deliveries in {:.2} s = {rate:.0} deliveries/s",
            elapsed.as_secs_f64()
        );
        rates.push(rate);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "pipeline median: {:.0} deliveries/s ({events} events x {endpoints} endpoints, HTTPS, file storage, everything on this machine)",
        rates[1]
    );
}
