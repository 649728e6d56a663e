//! `batch::Batched`, the attempt records' fast batch, against a real nats-server: every write
//! it confirms is stored, once; a write it cannot confirm is answered so that its caller
//! writes it alone; a stream without fast batches turns them off.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use gancho_store::batch::{Batched, Unbatched};
use gancho_test_harness::NatsServer;
use std::collections::HashSet;
use std::time::Duration;

async fn records_stream(js: &jetstream::Context, batched: bool) -> stream::Stream {
    js.create_stream(stream::Config {
        name: "REC".into(),
        subjects: vec!["rec.>".into()],
        allow_batch_publish: batched,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The payloads stored in REC, in order.
async fn stored(js: &jetstream::Context) -> Vec<String> {
    let stream = js.get_stream("REC").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let count = stream.get_info().await.unwrap().state.messages;
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < count {
        let msg = messages.next().await.unwrap().unwrap();
        out.push(String::from_utf8(msg.payload.to_vec()).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_confirmed_and_stored_once() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let js = jetstream::new(client.clone());
    records_stream(&js, true).await;
    let batched = Batched::start(client);

    // Bursts (many in flight, past the flow window) and a trickle (one at a time, each
    // confirmed by its batch's end, not by a flow ack).
    let burst = futures::stream::iter(0..2_000)
        .map(|i| {
            let batched = batched.clone();
            async move {
                batched
                    .write(format!("rec.t.e{}", i % 7).into(), format!("b{i}").into())
                    .await
            }
        })
        .buffer_unordered(500)
        .collect::<Vec<_>>()
        .await;
    assert!(burst.iter().all(Result::is_ok), "{burst:?}");
    for i in 0..20 {
        let started = std::time::Instant::now();
        batched
            .write("rec.t.slow".into(), format!("s{i}").into())
            .await
            .unwrap();
        // Confirmed within milliseconds, not left for a flow ack that will not come.
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a lone write took {:?}",
            started.elapsed()
        );
    }

    let payloads = stored(&js).await;
    assert_eq!(payloads.len(), 2_020, "each write stored once");
    let distinct: HashSet<_> = payloads.iter().collect();
    assert_eq!(distinct.len(), 2_020);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_fast_batches_turns_them_off() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let js = jetstream::new(client.clone());
    records_stream(&js, false).await;
    let batched = Batched::start(client);

    let first = batched.write("rec.a".into(), "1".into()).await;
    assert_eq!(first, Err(Unbatched::Broken), "refused by the stream");
    // Off from then on: answered at once, for the caller to write alone.
    let second = batched.write("rec.a".into(), "2".into()).await;
    assert_eq!(second, Err(Unbatched::Off));
    assert!(stored(&js).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_breaks_the_batch_and_confirms_nothing_unstored() {
    let mut server = NatsServer::start();
    let client = server.connect().await;
    let js = jetstream::new(client.clone());
    records_stream(&js, true).await;
    let batched = Batched::start(client.clone());

    // Writes keep coming while the server restarts: each is confirmed (stored) or answered
    // for its caller to write alone, which the test does with a PubAck, as the worker does.
    let writer = {
        let batched = batched.clone();
        let js = js.clone();
        tokio::spawn(async move {
            let mut alone = 0;
            for i in 0..3_000 {
                let payload = format!("r{i}");
                if batched
                    .write("rec.t.e".into(), payload.clone().into())
                    .await
                    .is_err()
                {
                    alone += 1;
                    loop {
                        if let Ok(ack) = js.publish("rec.t.e", payload.clone().into()).await {
                            if ack.await.is_ok() {
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            alone
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Stopped as an operator stops it (SIGTERM: what it acknowledged is on disk), then
    // started again on the same store.
    let pid = server.pid().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    while std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.restart();
    let alone = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writes finish")
        .unwrap();
    assert!(
        alone > 0,
        "the restart broke no batch: the test did not test it"
    );

    let payloads = stored(&js).await;
    let distinct: HashSet<_> = payloads.iter().collect();
    assert_eq!(distinct.len(), 3_000, "every write stored: none lost");
    // A write stored before its batch broke may be stored again alone, never more than
    // the writes made alone.
    assert!(payloads.len() - distinct.len() <= alone);
}
