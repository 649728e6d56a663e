//! On a three-node JetStream cluster with every stream and the config bucket at R3, a node
//! killed in the middle of a run loses nothing: the router and the worker reconnect to the
//! other nodes and every delivery arrives.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use async_nats::jetstream::{self, message::PublishMessage};
use gancho_core::{RetrySchedule, Subjects};
use gancho_proto::{Event, Message as _};
use gancho_store::{ConfigStore, Endpoint, Live, Tenant};
use gancho_test_harness::{wait_until, NatsCluster, Receiver, TestCa};
use std::collections::HashSet;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_run_loses_nothing() {
    let mut cluster = NatsCluster::start();
    let client = cluster.connect().await;
    cluster.wait_for_jetstream(&client).await;
    let js = jetstream::new(client.clone());
    let subjects = Subjects::default();
    // R3 needs all three peers; the meta leader may still be settling.
    let mut layout = None;
    for _ in 0..100 {
        match gancho_store::ensure(js.clone(), subjects.clone(), 3).await {
            Ok(l) => {
                layout = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let layout = layout.expect("R3 streams within 20 s").with_keyring(
        gancho_store::Keyring::new(&gancho_store::Keyring::generate(), None).unwrap(),
    );
    let info = js
        .get_stream(subjects.deliveries_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.num_replicas, 3);

    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca_file(dir.path());
    let rx = Receiver::https_sequence(&ca, &[200]).await;
    let store = ConfigStore::new(&layout);
    store
        .create_tenant(&Tenant {
            id: "acme".parse().unwrap(),
            name: "Acme".into(),
            created_at: OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    let mut ep = Endpoint::new(
        "acme".parse().unwrap(),
        "ep1".parse().unwrap(),
        rx.url("/hook"),
    );
    ep.timeout_ms = 5000;
    ep.retry_schedule = Some("0s,200ms,500ms,1s,2s,5s".into());
    store.create_endpoint(&ep).await.unwrap();

    let cancel = CancellationToken::new();
    let live = Live::start(&layout, RetrySchedule::default(), cancel.clone())
        .await
        .unwrap();
    wait_until(
        "the endpoint in the snapshot",
        Duration::from_secs(10),
        || std::future::ready(live.load().endpoint("acme", "ep1").is_some()),
    )
    .await;
    let out = jetstream::new(cluster.connect().await);
    tokio::spawn(gancho_router::run(
        cluster.connect().await,
        out.clone(),
        layout.clone(),
        live.clone(),
        Default::default(),
        cancel.clone(),
    ));
    tokio::spawn(gancho_worker::run(
        cluster.connect().await,
        out,
        layout.clone(),
        live,
        gancho_worker::WorkerConfig {
            allow_private: true,
            extra_ca_file: Some(ca_file),
            ..Default::default()
        },
        cancel.clone(),
    ));

    let publish = |n: usize| {
        let js = js.clone();
        let subject = subjects.event("acme", "charge.paid");
        async move {
            let ev = Event {
                id: format!("evt-{n}"),
                tenant: "acme".into(),
                r#type: "charge.paid".into(),
                payload: b"{}".to_vec().into(),
                ..Default::default()
            };
            // A producer retries its publish until JetStream acknowledges it; Nats-Msg-Id
            // makes the retry safe.
            loop {
                let sent = js
                    .send_publish(
                        subject.clone(),
                        PublishMessage::build()
                            .payload(ev.encode_to_vec().into())
                            .message_id(ev.id.as_str()),
                    )
                    .await;
                if let Ok(ack) = sent {
                    if ack.await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    for n in 0..EVENTS / 2 {
        publish(n).await;
    }
    wait_until("the first deliveries", Duration::from_secs(60), || {
        std::future::ready(rx.count() >= 100)
    })
    .await;
    // SIGKILL one node while events are still flowing.
    cluster.nodes[1].kill();
    for n in EVENTS / 2..EVENTS {
        publish(n).await;
    }
    wait_until("every delivery", Duration::from_secs(120), || {
        let ids: HashSet<String> = rx
            .received()
            .iter()
            .map(|r| r.header("webhook-id").unwrap().to_owned())
            .collect();
        std::future::ready(ids.len() == EVENTS)
    })
    .await;
    let mut per_id: std::collections::HashMap<String, usize> = Default::default();
    for r in rx.received() {
        *per_id
            .entry(r.header("webhook-id").unwrap().to_owned())
            .or_default() += 1;
    }
    let mut histogram: std::collections::BTreeMap<usize, usize> = Default::default();
    for n in per_id.values() {
        *histogram.entry(*n).or_default() += 1;
    }
    // The test's own client may still be failing over: read stream state with retries.
    let deliveries_left = || async {
        let mut s = js.get_stream(subjects.deliveries_stream()).await.ok()?;
        s.info().await.ok().map(|i| i.state.messages)
    };
    wait_until(
        "the deliveries stream to drain",
        Duration::from_secs(60),
        || async { deliveries_left().await == Some(0) },
    )
    .await;
    let mut recorded = None;
    for _ in 0..150 {
        if let Ok(mut s) = js.get_stream(subjects.attempts_stream()).await {
            if let Ok(i) = s.info().await {
                recorded = Some(i.state.messages as usize);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recorded = recorded.expect("the attempts stream answers within 30 s");
    assert!(
        recorded >= EVENTS,
        "only {recorded} attempt records for {EVENTS} deliveries"
    );
    println!(
        "cluster: {EVENTS} events, {} webhooks received with one node killed; copies per event: {histogram:?}; attempt records {recorded}",
        rx.count(),
    );
    cancel.cancel();
}
