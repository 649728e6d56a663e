//! The delivery log at a million: 1,000,000 attempt records of one endpoint in
//! `GANCHO_ATTEMPTS` (1% of them 5xx, each for its own event, written as the worker writes
//! them), then through `gancho api` (the release binary) the median of 21 requests each of:
//! the first page of `status=5xx`, the first page unfiltered, the page after 5,000 records,
//! and `GET events/{id}` for events spread over the log. Prints the medians and the RSS of
//! nats-server and the api before and after. Run with `cargo bench -p gancho --bench
//! attempt_log` (part of `make bench`); results go to BENCHMARKS.md with the machine.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

const TOKEN: &str = "bench-admin-token-0123456789";
const RECORDS: u64 = 1_000_000;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pid_of(pattern: &str) -> u32 {
    let out = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let nats_pid = pid_of(&env.nats.store_dir().display().to_string());
    env.write_attempts("acme", RECORDS, |_| "ep1".to_owned(), |i| i % 100 == 50)
        .await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let api_pid = api.id();
    let rss_before = (rss_kib(nats_pid), rss_kib(api_pid));

    let log = format!("{base}/v1/tenants/acme/endpoints/ep1/attempts");
    // The cursor of the page after the newest 5,000 records.
    let (_, v) = support::http("GET", &format!("{log}?limit=1000"), Some(TOKEN), None).await;
    let mut cursor = v["next"].as_str().unwrap().to_owned();
    for _ in 0..4 {
        let (_, v) = support::http(
            "GET",
            &format!("{log}?limit=1000&cursor={cursor}"),
            Some(TOKEN),
            None,
        )
        .await;
        cursor = v["next"].as_str().unwrap().to_owned();
    }
    let cases: Vec<(String, String, usize)> = vec![
        (
            "first page of status=5xx (100)".into(),
            format!("{log}?status=5xx"),
            100,
        ),
        (
            "first page of status=503 (100)".into(),
            format!("{log}?status=503"),
            100,
        ),
        ("first page, no filter (100)".into(), log.clone(), 100),
        (
            "the page after 5,000 records (100)".into(),
            format!("{log}?cursor={cursor}"),
            100,
        ),
    ];
    println!("{RECORDS} attempts on one endpoint, 1% 503; medians of 21 requests:");
    for (label, url, want) in cases {
        let mut times = Vec::new();
        for _ in 0..21 {
            let t = Instant::now();
            let (status, v) = support::http("GET", &url, Some(TOKEN), None).await;
            times.push(t.elapsed());
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["data"].as_array().unwrap().len(), want, "{label}");
        }
        println!("  {label}: {:.1} ms", median(times).as_secs_f64() * 1e3);
    }
    let mut times = Vec::new();
    for k in 0..21u64 {
        let id = (k * 47_619 + 50) % RECORDS;
        let t = Instant::now();
        let (status, v) = support::http(
            "GET",
            &format!("{base}/v1/tenants/acme/events/evt-{id}"),
            Some(TOKEN),
            None,
        )
        .await;
        times.push(t.elapsed());
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["deliveries"][0]["attempts"].as_array().unwrap().len(), 1);
    }
    println!(
        "  GET events/{{id}}, ids spread over the log: {:.1} ms",
        median(times).as_secs_f64() * 1e3
    );
    let rss_after = (rss_kib(nats_pid), rss_kib(api_pid));
    println!(
        "RSS nats-server {} -> {} MiB, api {} -> {} MiB",
        rss_before.0 / 1024,
        rss_after.0 / 1024,
        rss_before.1 / 1024,
        rss_after.1 / 1024
    );
    support::terminate(&mut api);
}
