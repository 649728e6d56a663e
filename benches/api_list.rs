//! The first page of a tenant's endpoints when it has 10,000 of them, through `gancho api`
//! (the release binary) against a real nats-server: the median of 50 requests, each a fresh
//! HTTP/1.1 connection. Run with `cargo bench -p gancho --bench api_list` (part of `make
//! bench`); results go to BENCHMARKS.md with the machine.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

#[path = "../tests/support/mod.rs"]
mod support;

use futures::StreamExt;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-admin-token-0123456789";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let endpoints = 10_000;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let env_ref = &env;
    futures::stream::iter(0..endpoints)
        .map(|i| async move {
            env_ref
                .endpoint(
                    "acme",
                    &format!("ep{i:05}"),
                    "https://hooks.example.com/x",
                    &[">"],
                    &[],
                    None,
                )
                .await;
        })
        .buffer_unordered(32)
        .collect::<()>()
        .await;
    let port = gancho_test_harness::nats::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut api = env.spawn_with(
        &["api"],
        &[
            ("GANCHO_ADMIN_TOKEN", TOKEN),
            ("GANCHO_API_LISTEN", &listen),
        ],
    );
    let url = format!("http://{listen}/v1/tenants/acme/endpoints");
    gancho_test_harness::wait_until("the API", Duration::from_secs(30), || async {
        support::http("GET", &url, Some(TOKEN), None).await.0 == 200
    })
    .await;
    for (label, query) in [
        ("first page (limit 100)", ""),
        (
            "a middle page (limit 1000)",
            "?limit=1000&cursor=ZXAwNTAwMA",
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..50 {
            let start = Instant::now();
            let (status, body) =
                support::http("GET", &format!("{url}{query}"), Some(TOKEN), None).await;
            times.push(start.elapsed());
            assert_eq!(status, 200);
            assert!(!body["data"].as_array().unwrap().is_empty());
        }
        times.sort();
        println!(
            "{endpoints} endpoints, {label}: median {:.1} ms, max {:.1} ms over 50 requests",
            times[25].as_secs_f64() * 1000.0,
            times[49].as_secs_f64() * 1000.0
        );
    }
    support::kill9(&mut api);
}
