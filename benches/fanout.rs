//! Drain rate by fan-out, as operators run gancho: nats-server, `gancho router` and `gancho
//! worker` as separate processes (the release binary), an HTTPS receiver (rustls, HTTP/2) in
//! this process, 1 KiB payloads. For each fan-out F in 1, 10, 100, 1,000 and 10,000, a
//! tenant with F endpoints on `>` gets a backlog of 100,000 / F events; the clock runs from
//! starting the roles to the last webhook received. Also reported: the router's and the
//! worker's peak RSS (VmHWM) and CPU seconds. Each round starts a fresh server; the median of
//! `GANCHO_BENCH_ROUNDS` (default 3) rounds is reported.
//!
//! Run with `cargo bench -p gancho --bench fanout` (part of `make bench`); results go to
//! BENCHMARKS.md with the machine. `GANCHO_BENCH_FANOUTS=1,100` picks fan-outs.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

#[path = "../tests/support/mod.rs"]
mod support;

use gancho_test_harness::Receiver;
use std::process::Child;
use std::time::{Duration, Instant};

/// Deliveries per round, whatever the fan-out.
const DELIVERIES: usize = 100_000;

struct Round {
    elapsed: Duration,
    router_rss_mb: f64,
    worker_rss_mb: f64,
    router_cpu_s: f64,
    worker_cpu_s: f64,
}

/// Peak resident set (MB) and CPU seconds (user + system) of a running child, from /proc.
fn usage(child: &Child) -> (f64, f64) {
    gancho_telemetry::process_usage(&child.id().to_string()).map_or((0.0, 0.0), |u| {
        (u.peak_rss_bytes / (1024.0 * 1024.0), u.cpu_seconds)
    })
}

async fn round(fan_out: usize) -> Round {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_tally(&env.ca).await;
    let ids = (0..fan_out).map(|i| format!("e{i}"));
    env.endpoints_on_all("acme", ids, |id| rx.url(&format!("/{id}")))
        .await;

    let events = DELIVERIES / fan_out;
    let pad = "x".repeat(1024 - 40);
    let backlog = (0..events).map(|n| {
        let payload = format!(r#"{{"n":{n},"pad":"{pad}"}}"#);
        (format!("evt-{n}"), payload.into_bytes())
    });
    env.publish_many("acme", "charge.paid", backlog).await;

    let start = Instant::now();
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    let deadline = start + Duration::from_secs(600);
    while rx.distinct() < DELIVERIES {
        assert!(
            Instant::now() < deadline,
            "fan-out {fan_out}: not drained in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let (router_rss_mb, router_cpu_s) = usage(&router);
    let (worker_rss_mb, worker_cpu_s) = usage(&worker);
    assert_eq!(rx.count(), DELIVERIES, "fan-out {fan_out}: duplicates");
    support::terminate(&mut router);
    support::terminate(&mut worker);
    Round {
        elapsed,
        router_rss_mb,
        worker_rss_mb,
        router_cpu_s,
        worker_cpu_s,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("GANCHO_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let fan_outs: Vec<usize> = std::env::var("GANCHO_BENCH_FANOUTS")
        .ok()
        .map(|v| v.split(',').filter_map(|f| f.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100, 1_000, 10_000]);
    println!("| fan-out | events | rounds (deliveries/s) | median deliveries/s | router peak RSS | worker peak RSS | router CPU s | worker CPU s |");
    println!("|---|---|---|---|---|---|---|---|");
    for fan_out in fan_outs {
        let mut all = Vec::new();
        for _ in 0..rounds {
            all.push(round(fan_out).await);
        }
        let rates: Vec<f64> = all
            .iter()
            .map(|r| DELIVERIES as f64 / r.elapsed.as_secs_f64())
            .collect();
        let shown = rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "| {fan_out} | {} | {shown} | {:.0} | {:.0} MB | {:.0} MB | {:.1} | {:.1} |",
            DELIVERIES / fan_out,
            median(rates.clone()),
            median(all.iter().map(|r| r.router_rss_mb).collect()),
            median(all.iter().map(|r| r.worker_rss_mb).collect()),
            median(all.iter().map(|r| r.router_cpu_s).collect()),
            median(all.iter().map(|r| r.worker_cpu_s).collect()),
        );
    }
}
