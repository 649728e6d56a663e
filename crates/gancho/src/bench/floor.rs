//! `gancho bench --floor`: what the deliveries cost with nothing of gancho in the way, doing
//! what gancho's storage and HTTP must do at the least and nothing of its logic:
//!
//! - **per event**, one message published with its `Nats-Msg-Id` to a stream of events (by
//!   a producer on a thread of its own, whose CPU is left out, as `gancho bench`'s sender is
//!   left out of gancho's), read back through a pull consumer and acked;
//! - **per delivery message**, as gancho writes them (one per partition of the event's
//!   endpoints, up to [`gancho_router::BATCH_MAX`] endpoints each, partitioned as gancho
//!   partitions them): published with a message id to a work-queue stream, its PubAck
//!   awaited before the event is acked, read back through a pull consumer and acked once
//!   its endpoints are answered;
//! - **per delivery**, one HTTP/2 POST over TLS to the sink (the same JSON shape and size
//!   as a webhook, with a `webhook-id`) and, once answered, one attempt-sized record stored
//!   in JetStream with its PubAck awaited.
//!
//! Left out: signing, the config snapshot, the gate, rate limits, retries, metrics.

use super::{get_json, http_client, progress, Proc, TENANT};
use anyhow::bail;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests in flight: the worker's default concurrency.
pub(super) const CONCURRENCY: usize = gancho_worker::DEFAULT_CONCURRENCY;
/// Bytes of each record: about what an attempt record of a 200 takes.
pub(super) const RECORD_BYTES: usize = 300;
/// Events in hand at once in the routing stage: the router's default concurrency.
const ROUTING: usize = 1024;
/// Events published before their PubAcks are awaited, as `gancho bench`'s sender does.
const PRODUCER_WINDOW: usize = 1000;
/// The header naming a delivery message's endpoints (`3,17,42`).
const MEMBERS: &str = "Floor-Endpoints";

/// The endpoints of each delivery message gancho writes for an event to `endpoints`
/// endpoints named `e0`, `e1`, …: grouped by partition, at most `BATCH_MAX` in one.
fn delivery_messages(endpoints: usize) -> Vec<Vec<usize>> {
    let partitions = gancho_core::subject::PARTITIONS;
    let mut by_partition = vec![Vec::new(); partitions as usize];
    for e in 0..endpoints {
        let p = gancho_core::subject::partition(TENANT, &format!("e{e}"), partitions);
        by_partition[p as usize].push(e);
    }
    by_partition
        .iter()
        .flat_map(|members| members.chunks(gancho_router::BATCH_MAX))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Runs the floor against the sink at `sink_port`, with `procs` (nats-server and the sink)
/// measured.
#[allow(
    clippy::too_many_lines,
    reason = "the floor's run in order (its streams, its three stages, then the measure), each step a call"
)]
pub(super) async fn run(
    args: &super::BenchArgs,
    nats_url: &str,
    sink_port: u16,
    ca: &Path,
    procs: &[Proc],
) -> anyhow::Result<Value> {
    let quiet = args.json;
    let client = http_client(ca, true)?;
    let stats = format!("https://127.0.0.1:{sink_port}/stats");
    let ready = Instant::now();
    while get_json(&client, &stats).await.is_none() {
        if ready.elapsed() > Duration::from_secs(30) {
            bail!("the sink did not answer in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let streams = [
        (
            "FLOOR_EVENTS",
            "floor.events",
            stream::RetentionPolicy::Limits,
        ),
        (
            "FLOOR_DELIVERIES",
            "floor.deliveries",
            stream::RetentionPolicy::WorkQueue,
        ),
        ("FLOOR", "floor.records.>", stream::RetentionPolicy::Limits),
    ];
    for (name, subject, retention) in streams {
        js.get_or_create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            retention,
            ..Default::default()
        })
        .await?;
    }
    let messages = delivery_messages(args.endpoints);
    let deliveries = args.events * args.endpoints;
    if !quiet {
        eprintln!(
            "gancho bench --floor: {deliveries} deliveries ({} events x {} endpoints, {} delivery messages per event), {CONCURRENCY} requests in flight",
            args.events,
            args.endpoints,
            messages.len()
        );
    }
    let self_pid = std::process::id().to_string();
    let own_cpu = || gancho_telemetry::process_usage(&self_pid).map_or(0.0, |u| u.cpu_seconds);
    let before: Vec<f64> = procs.iter().map(|p| p.usage().1).collect();
    let own_before = own_cpu();
    let bar = progress(quiet, deliveries as u64, "deliveries");
    let started = Instant::now();

    let producer = produce(nats_url.to_owned(), args.events, args.payload_bytes);
    let routing = route(&js, args.events, &messages, args.payload_bytes);
    let delivering = deliver(
        &js,
        &client,
        sink_port,
        deliveries,
        args.payload_bytes,
        &bar,
    );
    let (produced, routed, delivered) = tokio::join!(producer, routing, delivering);
    let producer_cpu = produced?;
    routed?;
    delivered?;

    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let own = own_cpu() - own_before - producer_cpu;
    let per = |cpu: f64| (cpu / deliveries as f64 * 1e7).round() / 10.0;
    let mut processes = vec![
        json!({"name": "client", "cpu_s": (own * 100.0).round() / 100.0,
        "cpu_us_per_delivery": per(own)}),
    ];
    let mut total = own;
    for (p, before) in procs.iter().zip(before) {
        let (rss, cpu) = p.usage();
        total += cpu - before;
        processes.push(
            json!({"name": p.name, "peak_rss_mib": (rss * 10.0).round() / 10.0,
            "cpu_s": ((cpu - before) * 100.0).round() / 100.0,
            "cpu_us_per_delivery": per(cpu - before)}),
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let last = get_json(&client, &stats).await.unwrap_or_default();
    // What JetStream stored: each event once, and every delivery message written.
    let mut stored = Vec::new();
    for name in ["FLOOR_EVENTS", "FLOOR_DELIVERIES"] {
        let s = js.get_stream(name).await?;
        stored.push(s.cached_info().state.last_sequence);
    }
    Ok(json!({
        "floor": true,
        "events": args.events,
        "endpoints": args.endpoints,
        "payload_bytes": args.payload_bytes,
        "record_bytes": RECORD_BYTES,
        "delivery_messages_per_event": messages.len(),
        "events_stored": stored[0],
        "delivery_messages_stored": stored[1],
        "producer_cpu_s": (producer_cpu * 100.0).round() / 100.0,
        "deliveries": deliveries,
        "received": last["distinct"].as_u64(),
        "deliveries_per_s": (deliveries as f64 / elapsed.as_secs_f64()).round(),
        "mb_per_s": (deliveries as f64 * args.payload_bytes as f64 / elapsed.as_secs_f64() / 1e5).round() / 10.0,
        "cpu_us_per_delivery": per(total),
        "cores": cores,
        // What the machine's cores would allow if they did nothing else.
        "ceiling_per_s": (cores as f64 / (total / deliveries as f64)).round(),
        "processes": processes,
    }))
}

/// Publishes `events` events of `payload_bytes` with their message ids, from a thread of its
/// own with a connection of its own; returns that thread's CPU seconds.
async fn produce(nats_url: String, events: usize, payload_bytes: usize) -> anyhow::Result<f64> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let run = || -> anyhow::Result<f64> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let js = jetstream::new(async_nats::connect(&nats_url).await?);
                let payload = Bytes::from(vec![b'e'; payload_bytes]);
                let mut n = 0;
                while n < events {
                    let end = (n + PRODUCER_WINDOW).min(events);
                    let mut acks = Vec::with_capacity(end - n);
                    for i in n..end {
                        let publish = PublishMessage::build()
                            .payload(payload.clone())
                            .message_id(format!("{TENANT}:evt-{i}"));
                        acks.push(js.send_publish("floor.events", publish).await?);
                    }
                    for ack in acks {
                        ack.await?;
                    }
                    n = end;
                }
                anyhow::Ok(())
            })?;
            Ok(gancho_telemetry::process_usage("thread-self").map_or(0.0, |u| u.cpu_seconds))
        };
        let _ = done.send(run());
    });
    result.await?
}

/// A durable pull consumer `name` on `stream`, acked one message at a time, with at most
/// `pending` messages unacked.
async fn reader(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    pending: usize,
) -> anyhow::Result<consumer::PullConsumer> {
    let consumer = js
        .get_stream(stream)
        .await?
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: i64::try_from(pending).unwrap_or(i64::MAX),
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

/// Reads the events back and, for each, publishes its delivery messages (awaiting their
/// PubAcks) before acking it.
async fn route(
    js: &jetstream::Context,
    events: usize,
    messages: &[Vec<usize>],
    payload_bytes: usize,
) -> anyhow::Result<()> {
    let consumer = reader(js, "FLOOR_EVENTS", "floor_router", ROUTING).await?;
    let payload = Bytes::from(vec![b'd'; payload_bytes]);
    let messages: Arc<[String]> = messages
        .iter()
        .map(|m| {
            m.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    consumer
        .messages()
        .await?
        .take(events)
        .map_err(anyhow::Error::from)
        .try_for_each_concurrent(ROUTING, |msg| {
            let (payload, messages) = (payload.clone(), messages.clone());
            async move {
                let seq = msg.info().map_err(anyhow::Error::msg)?.stream_sequence;
                let publishes = messages.iter().enumerate().map(|(k, members)| {
                    let publish = PublishMessage::build()
                        .payload(payload.clone())
                        .header(MEMBERS, members.as_str())
                        .message_id(format!("{TENANT}:evt-{seq}:{k}"));
                    async move {
                        js.send_publish("floor.deliveries", publish).await?.await?;
                        anyhow::Ok(())
                    }
                });
                futures::future::try_join_all(publishes).await?;
                msg.ack().await.map_err(anyhow::Error::msg)?;
                Ok(())
            }
        })
        .await
}

/// Reads the delivery messages back, POSTs each of their endpoints' deliveries and stores a
/// record for each, then acks the message; returns once `deliveries` are done.
async fn deliver(
    js: &jetstream::Context,
    client: &super::HttpClient,
    sink_port: u16,
    deliveries: usize,
    payload_bytes: usize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let consumer = reader(js, "FLOOR_DELIVERIES", "floor_worker", CONCURRENCY).await?;
    let pad = "x".repeat(payload_bytes);
    let record = Bytes::from(vec![b'r'; RECORD_BYTES]);
    let requests = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let done = std::sync::atomic::AtomicUsize::new(0);
    let one = |endpoint: usize, id: String| {
        let (pad, record, requests) = (&pad, record.clone(), requests.clone());
        async move {
            let _slot = requests.acquire_owned().await?;
            let timestamp = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let body = format!(
                r#"{{"type":"bench.floor","timestamp":"{timestamp}","data":{{"pad":"{pad}"}}}}"#
            );
            let req = http::Request::post(format!("https://127.0.0.1:{sink_port}/e{endpoint}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("webhook-id", format!("floor_{id}"))
                .header("webhook-timestamp", timestamp)
                .body(Full::new(Bytes::from(body)))?;
            let resp = client.request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            if !status.is_success() {
                bail!("the sink answered {status}");
            }
            js.publish(
                format!("floor.records.e{endpoint}.2xx.success.{id}"),
                record,
            )
            .await?
            .await?;
            bar.inc(1);
            anyhow::Ok(())
        }
    };
    let mut msgs = consumer.messages().await?;
    let mut in_hand = futures::stream::FuturesUnordered::new();
    while done.load(std::sync::atomic::Ordering::Relaxed) < deliveries {
        tokio::select! {
            Some(msg) = msgs.next(), if in_hand.len() < CONCURRENCY => {
                let msg = msg.map_err(anyhow::Error::msg)?;
                let members: Vec<usize> = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(MEMBERS))
                    .map(|v| v.as_str().split(',').filter_map(|e| e.parse().ok()).collect())
                    .unwrap_or_default();
                let seq = msg.info().map_err(anyhow::Error::msg)?.stream_sequence;
                let sends = members
                    .into_iter()
                    .map(|e| one(e, format!("{seq}_{e}")))
                    .collect::<Vec<_>>();
                let done = &done;
                in_hand.push(async move {
                    let n = futures::future::try_join_all(sends).await?.len();
                    msg.ack().await.map_err(anyhow::Error::msg)?;
                    done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    anyhow::Ok(())
                });
            }
            Some(r) = in_hand.next() => r?,
            else => bail!("the floor's delivery messages stopped coming"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_messages_cover_every_endpoint_once_a_partition_at_a_time() {
        for endpoints in [1, 10, 100, 1000] {
            let messages = delivery_messages(endpoints);
            let mut all: Vec<usize> = messages.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..endpoints).collect::<Vec<_>>());
            assert!(messages
                .iter()
                .all(|m| !m.is_empty() && m.len() <= gancho_router::BATCH_MAX));
        }
        assert_eq!(delivery_messages(1).len(), 1);
        assert_eq!(
            delivery_messages(100).len(),
            16,
            "every partition, none full"
        );
    }
}
