//! The harness itself, against real nats-server processes.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use gancho_test_harness::{NatsCluster, NatsServer};
use std::time::Duration;

#[tokio::test]
async fn standalone_server_publishes_and_consumes_through_jetstream() {
    let server = NatsServer::start();
    let js = jetstream::new(server.connect().await);
    js.create_stream(stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..10 {
        js.publish(format!("t.{i}"), format!("m{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer: consumer::PullConsumer = js
        .get_stream("T")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some("c".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for i in 0..10 {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(msg.payload.as_ref(), format!("m{i}").as_bytes());
        msg.ack().await.unwrap();
    }
}

#[tokio::test]
async fn restart_keeps_port_and_jetstream_state() {
    let mut server = NatsServer::start();
    let port = server.port();
    {
        let js = jetstream::new(server.connect().await);
        js.create_stream(stream::Config {
            name: "KEEP".into(),
            subjects: vec!["keep".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("keep", "persisted".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    server.restart();
    assert_eq!(server.port(), port);
    let js = jetstream::new(server.connect().await);
    let mut s = js.get_stream("KEEP").await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 1);
    let msg = s.get_raw_message(1).await.unwrap();
    assert_eq!(msg.payload.as_ref(), b"persisted");
}

#[tokio::test]
async fn three_node_cluster_serves_an_r3_stream() {
    let cluster = NatsCluster::start();
    assert_eq!(cluster.nodes.len(), 3);
    let client = cluster.connect().await;
    cluster.wait_for_jetstream(&client).await;
    let js = jetstream::new(client);
    // Creating an R3 stream needs all three peers; the meta leader may still be settling.
    let mut stream = None;
    for _ in 0..100 {
        match js
            .create_stream(stream::Config {
                name: "R3".into(),
                subjects: vec!["r3.>".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await
        {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let mut stream = stream.expect("an R3 stream within 20 s");
    for i in 0..5 {
        js.publish(format!("r3.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.state.messages, 5);
    let cluster_info = info.cluster.clone().expect("cluster info on an R3 stream");
    assert_eq!(cluster_info.replicas.len(), 2, "a leader and two replicas");
}
