//! The JetStream behaviour gancho's retries rely on, checked against the real server: a
//! message on `gancho.retry.<id>` with `Nats-Schedule: @at <time>` fires into its target
//! subject at that time and reaches the workers' consumer (filtered on deliveries), and a
//! second schedule on the same subject replaces the first instead of firing twice.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use async_nats::jetstream::{self, consumer, message::PublishMessage};
use async_nats::HeaderMap;
use futures::StreamExt;
use gancho_core::Subjects;
use gancho_test_harness::NatsServer;
use std::time::{Duration, Instant};

async fn schedule(
    js: &jetstream::Context,
    subjects: &Subjects,
    id: &str,
    when: Duration,
    body: &str,
) {
    let mut h = HeaderMap::new();
    h.insert(
        "Nats-Schedule",
        gancho_core::retry::schedule_at(time::OffsetDateTime::now_utc() + when).as_str(),
    );
    h.insert("Nats-Schedule-Target", subjects.delivery(0).as_str());
    js.send_publish(
        subjects.retry(id),
        PublishMessage::build()
            .payload(body.to_owned().into())
            .headers(h),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

#[tokio::test]
async fn scheduled_retries_fire_once_into_the_deliveries_subject() {
    let server = NatsServer::start();
    let js = jetstream::new(server.connect().await);
    let subjects = Subjects::default();
    gancho_store::ensure(js.clone(), subjects.clone(), 1)
        .await
        .unwrap();
    let consumer: consumer::PullConsumer = js
        .create_consumer_on_stream(
            consumer::pull::Config {
                durable_name: Some("w".into()),
                filter_subject: subjects.deliveries_wildcard(),
                ..Default::default()
            },
            subjects.deliveries_stream(),
        )
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();

    let start = Instant::now();
    schedule(&js, &subjects, "d1", Duration::from_millis(600), "first").await;
    // Same delivery id again (a worker redid an attempt after a crash): replaces, not adds.
    schedule(&js, &subjects, "d1", Duration::from_millis(700), "second").await;
    schedule(&js, &subjects, "d2", Duration::from_millis(300), "other").await;

    let mut got = Vec::new();
    while let Ok(Some(msg)) =
        tokio::time::timeout(Duration::from_millis(1500), messages.next()).await
    {
        let msg = msg.unwrap();
        assert_eq!(msg.subject.as_str(), subjects.delivery(0));
        got.push((
            String::from_utf8(msg.payload.to_vec()).unwrap(),
            start.elapsed(),
        ));
        msg.ack().await.unwrap();
    }
    let bodies: Vec<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
    println!("fired: {got:?}");
    assert_eq!(
        bodies,
        ["other", "second"],
        "each retry subject fires once, with its latest schedule"
    );
    assert!(
        got[0].1 >= Duration::from_millis(250),
        "fired early: {:?}",
        got[0].1
    );
    assert!(
        got[1].1 >= Duration::from_millis(650),
        "fired early: {:?}",
        got[1].1
    );
    let mut stream = js.get_stream(subjects.deliveries_stream()).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        0,
        "schedules are purged once fired"
    );
}
