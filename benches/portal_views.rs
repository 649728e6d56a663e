//! The portal's views at scale: a tenant with 10,000 endpoints and 1,000,000 attempt records
//! (100 per endpoint, 1% of them 5xx, written as the worker writes them), then, through `gancho
//! api` (the release binary) with a portal session's token, the API calls each view makes when
//! it loads, made as the page makes them (together where the page makes them together). Each
//! view's figure is the wall time of its calls, the median (p50) and p90 of 21 loads; the goal
//! is 300 ms at p50. Run with `cargo bench -p gancho --bench portal_views` (part of `make
//! bench`); results go to BENCHMARKS.md with the machine.
#![allow(
    clippy::too_many_lines,
    reason = "a benchmark reads top to bottom: its set-up, its load and its figures in one place"
)]
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

#[path = "../tests/support/mod.rs"]
mod support;

use serde_json::json;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-admin-token-0123456789";
const ENDPOINTS: u64 = 10_000;
const RECORDS: u64 = 1_000_000;
const LOADS: usize = 21;

fn endpoint(i: u64) -> String {
    format!("ep{:05}", i % ENDPOINTS)
}

/// GETs `paths` together, as the page's `Promise.all` does: the wall time; each must be a 200.
async fn load(base: &str, session: &str, paths: &[String]) -> Duration {
    let start = Instant::now();
    let answers = futures::future::join_all(paths.iter().map(|p| {
        let url = format!("{base}/v1/tenants/acme{p}");
        async move { (support::http("GET", &url, Some(session), None).await, url) }
    }))
    .await;
    let took = start.elapsed();
    for ((status, v), url) in answers {
        assert_eq!(status, 200, "{url}: {v}");
        if let Some(data) = v.get("data") {
            assert!(!data.as_array().unwrap().is_empty(), "{url}: nothing");
        }
    }
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let start = Instant::now();
    env.endpoints_on_all("acme", (0..ENDPOINTS).map(endpoint), |id| {
        format!("https://hooks.example.com/{id}")
    })
    .await;
    println!(
        "{ENDPOINTS} endpoints in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // The log: record i is endpoint i % 10,000's, for event evt-i; each endpoint's 51st
    // record is a 503 (1% of the log, one per endpoint).
    env.write_attempts("acme", RECORDS, endpoint, |i| (i / ENDPOINTS) % 100 == 50)
        .await;

    let (mut api, base) = env.spawn_portal_api(TOKEN, &[]).await;
    // A portal session, as the page holds one.
    let (status, v) = support::http(
        "POST",
        &format!("{base}/v1/tenants/acme/portal-sessions"),
        Some(TOKEN),
        Some(&json!({"scope": "manage"}).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let token = v["url"].as_str().unwrap().rsplit("#t=").next().unwrap();
    let (status, v) = support::http(
        "POST",
        &format!("{base}/portal/session"),
        None,
        Some(&json!({ "token": token }).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let session = v["session"].as_str().unwrap().to_owned();

    // Endpoint 4,321 has 100 records, one every 10,000 in the log; its 51st is a 503.
    let ep = endpoint(4_321);
    let views: Vec<(&str, Vec<String>)> = vec![
        (
            "endpoints (first page of 50)",
            vec!["/endpoints?limit=50".into()],
        ),
        (
            "endpoints, searched by part of a URL",
            vec!["/endpoints?limit=50&q=ep0432".into()],
        ),
        (
            "an endpoint (its record and its last 100 attempts)",
            vec![
                format!("/endpoints/{ep}"),
                format!("/endpoints/{ep}/attempts?limit=100"),
            ],
        ),
        (
            "an endpoint's delivery log (50)",
            vec![format!("/endpoints/{ep}/attempts?limit=50")],
        ),
        (
            "an endpoint's delivery log, status 5xx",
            vec![format!("/endpoints/{ep}/attempts?limit=50&status=5xx")],
        ),
        (
            "the tenant's delivery log (50)",
            vec!["/attempts?limit=50".into()],
        ),
        (
            "the tenant's delivery log, status 5xx",
            vec!["/attempts?limit=50&status=5xx".into()],
        ),
        (
            "an event (every delivery and attempt)",
            vec![format!("/events/evt-{}", 4_321 + 50 * ENDPOINTS)],
        ),
        (
            "add an endpoint (the event-type catalog)",
            vec!["/event-types?limit=1000".into()],
        ),
    ];
    // The catalog view needs one type to show.
    let (status, v) = support::http(
        "PUT",
        &format!("{base}/v1/tenants/acme/event-types/charge.paid"),
        Some(TOKEN),
        Some(&json!({"description": "A charge was paid."}).to_string()),
    )
    .await;
    assert!(status == 200 || status == 201, "{status} {v}");
    println!(
        "{ENDPOINTS} endpoints, {RECORDS} attempts; each view's API calls on load, {LOADS} loads:"
    );
    println!("| view | p50 | p90 |");
    println!("|---|---|---|");
    let mut worst = Duration::ZERO;
    for (label, paths) in &views {
        let mut times = Vec::with_capacity(LOADS);
        for _ in 0..LOADS {
            times.push(load(&base, &session, paths).await);
        }
        times.sort();
        let (p50, p90) = (times[LOADS / 2], times[LOADS * 9 / 10]);
        worst = worst.max(p50);
        println!(
            "| {label} | {:.1} ms | {:.1} ms |",
            p50.as_secs_f64() * 1e3,
            p90.as_secs_f64() * 1e3
        );
    }
    println!(
        "slowest view at p50: {:.1} ms (goal: 300 ms)",
        worst.as_secs_f64() * 1e3
    );
    support::terminate(&mut api);
}
