//! `consume::with_progress`: work that outlasts the consumer's ack wait keeps its message
//! (no redelivery to another process), and the work's result comes back as soon as it is done.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use gancho_store::consume::with_progress;
use gancho_test_harness::NatsServer;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_work_keeps_its_message_past_the_ack_wait() {
    let server = NatsServer::start();
    let js = jetstream::new(server.connect().await);
    let stream = js
        .create_stream(stream::Config {
            name: "WORK".into(),
            subjects: vec!["work".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("w".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    js.publish("work", "x".into()).await.unwrap().await.unwrap();
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    let msg = batch.next().await.unwrap().unwrap();

    // Three ack waits of work, with progress every 300 ms.
    let started = Instant::now();
    let work = tokio::time::sleep(Duration::from_millis(3_000));
    let out = with_progress(&msg, Duration::from_millis(300), async {
        work.await;
        42
    })
    .await;
    assert_eq!(out, 42);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3_500),
        "returned after {took:?}"
    );

    // Nobody else got it meanwhile: never redelivered, still pending on us.
    let mut again = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_millis(300))
        .messages()
        .await
        .unwrap();
    assert!(again.next().await.is_none(), "the message was redelivered");
    let mut c = consumer.clone();
    let info = c.info().await.unwrap();
    assert_eq!(info.num_ack_pending, 1);
    assert_eq!(info.num_redelivered, 0);
    msg.ack().await.unwrap();

    // Without progress the same wait loses the message to a redelivery: the test can fail.
    // (After the last pull has expired, so that it cannot take the message.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    js.publish("work", "y".into()).await.unwrap().await.unwrap();
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let _msg = batch.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut again = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    assert!(
        again.next().await.is_some(),
        "no redelivery without progress"
    );
}
