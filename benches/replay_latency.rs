//! Does a large replay slow other endpoints' live deliveries? Router, worker and api run as
//! separate release processes against a real nats-server, with one HTTPS receiver. 100,000
//! events of 1 KiB are delivered to a `bulk` endpoint; then a `live` endpoint gets 100
//! events a second for 15 s, first alone and then while a replay of the 100,000 runs at
//! 200 (the default pace) and at 2,000 a second. Prints the live events' end-to-end latency (publish to arrival) p50 and
//! p99 in both runs. Run with `cargo bench -p gancho --bench replay_latency` (part of `make
//! bench`); results go to BENCHMARKS.md with the machine.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

#[path = "../tests/support/mod.rs"]
mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-admin-token-0123456789";
const BULK: usize = 100_000;
const LIVE_RATE: u64 = 100;
const LIVE_FOR: Duration = Duration::from_secs(15);
/// The default job pace, and ten times it.
const REPLAY_PACES: [u32; 2] = [200, 2_000];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Sends live events at LIVE_RATE for LIVE_FOR and returns their latencies, sorted.
async fn live_run(
    env: &support::Env,
    phase: &str,
    arrived: &Arc<Mutex<HashMap<String, Instant>>>,
) -> Vec<Duration> {
    let mut sent = HashMap::new();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < LIVE_FOR {
        let id = format!("{phase}-{i}");
        sent.insert(id.clone(), Instant::now());
        env.publish_many("acme", "ping.sent", [(id, b"{\"live\":true}".to_vec())])
            .await;
        i += 1;
        let next = start + Duration::from_micros(i * 1_000_000 / LIVE_RATE);
        tokio::time::sleep_until(next.into()).await;
    }
    wait_until("every live event", Duration::from_secs(60), || {
        let a = arrived.lock().unwrap();
        std::future::ready(sent.keys().all(|k| a.contains_key(k)))
    })
    .await;
    let a = arrived.lock().unwrap();
    let mut lat: Vec<Duration> = sent.iter().map(|(k, t)| a[k] - *t).collect();
    lat.sort();
    lat
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let bulk_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (a, b) = (arrived.clone(), bulk_count.clone());
    let rx = Receiver::https(&env.ca, move |_, r| {
        if r.path == "/live" {
            let id = r.header("webhook-id").unwrap_or_default().to_owned();
            a.lock().unwrap().insert(id, r.at);
        } else {
            b.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Answer::status(200)
    })
    .await;
    env.endpoint("acme", "bulk", &rx.url("/bulk"), &["charge.*"], &[], None)
        .await;
    env.endpoint("acme", "live", &rx.url("/live"), &["ping.*"], &[], None)
        .await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    let t0 = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pad = "x".repeat(1000);
    let payload = json!({ "pad": pad }).to_string().into_bytes();
    env.publish_many(
        "acme",
        "charge.paid",
        (0..BULK).map(|i| (format!("bulk-{i}"), payload.clone())),
    )
    .await;
    wait_until("the bulk delivered", Duration::from_secs(600), || {
        std::future::ready(bulk_count.load(std::sync::atomic::Ordering::Relaxed) >= BULK)
    })
    .await;

    let alone = live_run(&env, "alone", &arrived).await;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "live endpoint, {LIVE_RATE} events/s for {}s, beside a 1 KiB bulk endpoint:",
        LIVE_FOR.as_secs()
    );
    println!(
        "  alone:                 p50 {:.1} ms  p99 {:.1} ms",
        ms(percentile(&alone, 0.5)),
        ms(percentile(&alone, 0.99))
    );
    for pace in REPLAY_PACES {
        let (s, job) = support::http(
            "POST",
            &format!("{base}/v1/tenants/acme/endpoints/bulk/replay"),
            Some(TOKEN),
            Some(&json!({"since": t0, "pace": pace}).to_string()),
        )
        .await;
        assert_eq!(s, 202, "{job}");
        // The job is claimed within 2 s.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = bulk_count.load(std::sync::atomic::Ordering::Relaxed);
        let during = live_run(&env, &format!("during-{pace}"), &arrived).await;
        let replayed = bulk_count.load(std::sync::atomic::Ordering::Relaxed) - before;
        let id = job["id"].as_str().unwrap();
        support::http(
            "DELETE",
            &format!("{base}/v1/tenants/acme/jobs/{id}"),
            Some(TOKEN),
            None,
        )
        .await;
        println!(
            "  replay at {pace:>5}/s:     p50 {:.1} ms  p99 {:.1} ms  (p99 x{:.2}; {replayed} replayed meanwhile)",
            ms(percentile(&during, 0.5)),
            ms(percentile(&during, 0.99)),
            ms(percentile(&during, 0.99)) / ms(percentile(&alone, 0.99)),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}
