//! The first page of a tenant's endpoints when it has 10,000 of them, and another tenant's
//! event types and API keys beside them, through `gancho api` (the release binary) against a
//! real nats-server: the median of 50 requests each, each a fresh HTTP/1.1 connection. Run with `cargo bench -p gancho --bench api_list` (part of `make
//! bench`); results go to BENCHMARKS.md with the machine.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

const TOKEN: &str = "bench-admin-token-0123456789";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let endpoints = 10_000;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let ids = (0..endpoints).map(|i| format!("ep{i:05}"));
    env.endpoints_on_all("acme", ids, |_| "https://hooks.example.com/x".into())
        .await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let url = format!("{base}/v1/tenants/acme/endpoints");
    for (label, query) in [
        ("first page (limit 100)", ""),
        (
            "a middle page (limit 1000)",
            "?limit=1000&cursor=ZXAwNTAwMA",
        ),
    ] {
        let times = fifty_gets(&format!("{url}{query}"), |data| assert!(!data.is_empty())).await;
        println!("{endpoints} endpoints, {label}: {times}");
    }
    // A small tenant's event types and API keys, read from the config bucket beside the
    // 10,000 endpoints above: what they cost depends on the tenant's own keys, or on the
    // whole bucket's.
    env.tenant("small").await;
    for i in 0..20 {
        let (status, _) = support::http(
            "PUT",
            &format!("{base}/v1/tenants/small/event-types/charge.n{i:02}"),
            Some(TOKEN),
            Some(r#"{"description":"a charge"}"#),
        )
        .await;
        assert_eq!(status, 201);
    }
    for _ in 0..3 {
        let (status, _) = support::http(
            "POST",
            &format!("{base}/v1/tenants/small/api-keys"),
            Some(TOKEN),
            Some(r#"{"name":"bench","scopes":["read"]}"#),
        )
        .await;
        assert_eq!(status, 201);
    }
    for (label, path, n) in [
        ("a tenant's 20 event types", "event-types", 20),
        ("a tenant's 3 API keys", "api-keys", 3),
    ] {
        let times = fifty_gets(&format!("{base}/v1/tenants/small/{path}"), |data| {
            assert_eq!(data.len(), n);
        })
        .await;
        println!("{label} beside another's {endpoints} endpoints: {times}");
    }
    support::kill9(&mut api);
}

/// 50 `GET url` requests, each on a fresh connection, each answered 200 with a `data` list
/// that `check` accepts: their median and max.
async fn fifty_gets(url: &str, check: impl Fn(&[serde_json::Value])) -> String {
    let mut times = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let (status, body) = support::http("GET", url, Some(TOKEN), None).await;
        times.push(start.elapsed());
        assert_eq!(status, 200, "{body}");
        check(body["data"].as_array().unwrap());
    }
    times.sort();
    format!(
        "median {:.1} ms, max {:.1} ms over 50 requests",
        times[25].as_secs_f64() * 1000.0,
        times[49].as_secs_f64() * 1000.0
    )
}
