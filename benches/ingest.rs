//! HTTP ingest throughput through `gancho api` (the release binary) against a real
//! nats-server beside it: single-event requests from 64 keep-alive HTTP/1.1 connections, then
//! batches of 100 from 8. Every request waits for its PubAck (202 means durable). Prints
//! events/s and request latency percentiles. Run with `cargo bench -p gancho --bench ingest`
//! (part of `make bench`); results go to BENCHMARKS.md with the machine.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

#[path = "../tests/support/mod.rs"]
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-admin-token-0123456789";
const RUN: Duration = Duration::from_secs(10);

/// 1 KiB of JSON, as a payment notification with some line items might be.
fn payload(i: usize) -> String {
    let items: Vec<String> = (0..22)
        .map(|k| {
            format!(
                r#"{{"sku":"SKU-{k:04}","qty":{k},"price_cents":{}}}"#,
                990 + k
            )
        })
        .collect();
    format!(
        r#"{{"charge_id":"ch_{i:012}","amount":123456,"currency":"BRL","items":[{}]}}"#,
        items.join(",")
    )
}

async fn run(base: &str, connections: usize, batch: usize) -> (f64, Vec<Duration>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build_http();
    let path = if batch == 1 { "events" } else { "events/batch" };
    let url: hyper::Uri = format!("{base}/v1/tenants/acme/{path}").parse().unwrap();
    let start = Instant::now();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (client, url, counter) = (client.clone(), url.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while start.elapsed() < RUN {
                let events: Vec<String> = (0..batch)
                    .map(|k| {
                        let i = c * 10_000_000 + n * batch + k;
                        format!(
                            r#"{{"id":"bench-{i}","type":"charge.paid","data":{}}}"#,
                            payload(i)
                        )
                    })
                    .collect();
                let body = if batch == 1 {
                    events[0].clone()
                } else {
                    format!(r#"{{"events":[{}]}}"#, events.join(","))
                };
                let req = hyper::Request::post(url.clone())
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let t = Instant::now();
                let resp = client.request(req).await.unwrap();
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await.unwrap();
                latencies.push(t.elapsed());
                assert!(status == 202 || status == 200, "status {status}");
                counter.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                n += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    (
        counter.load(std::sync::atomic::Ordering::Relaxed) as f64 / secs,
        all,
    )
}

fn pct(v: &[Duration], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    println!("payload {} bytes", payload(0).len());
    for (label, connections, batch) in [
        ("single events, 64 connections", 64, 1),
        ("batches of 100, 8 connections", 8, 100),
    ] {
        let (rate, lat) = run(&base, connections, batch).await;
        println!(
            "{label}: {rate:.0} events/s; request latency p50 {:.1} ms, p99 {:.1} ms ({} requests)",
            pct(&lat, 0.50),
            pct(&lat, 0.99),
            lat.len()
        );
    }
    support::kill9(&mut api);
}
