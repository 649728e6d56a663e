//! The live snapshot follows the KV bucket: creates, updates, deletes, a bad document, and a
//! nats-server restart in between.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use async_nats::jetstream;
use gancho_core::{RetrySchedule, Subjects};
use gancho_store::{ConfigStore, Endpoint, Live, StoreError, Tenant};
use gancho_test_harness::{wait_until, NatsServer};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

fn endpoint(id: &str, filters: &[&str]) -> Endpoint {
    let mut ep = Endpoint::new(
        "acme".parse().unwrap(),
        id.parse().unwrap(),
        format!("https://hooks.example.com/{id}"),
    );
    ep.filter_types = filters.iter().map(|s| s.to_string()).collect();
    ep
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_follows_the_bucket_across_a_server_restart() {
    let mut server = NatsServer::start();
    let client = server.connect().await;
    let layout = gancho_store::ensure(jetstream::new(client), Subjects::default(), 1)
        .await
        .unwrap()
        .with_keyring(
            gancho_store::Keyring::new(&gancho_store::Keyring::generate(), None).unwrap(),
        );
    let store = ConfigStore::new(&layout);
    store
        .create_tenant(&Tenant {
            id: "acme".parse().unwrap(),
            name: "Acme".into(),
            created_at: OffsetDateTime::now_utc(),
            weight: 1,
            api_rate_limit_per_sec: None,
            ingest_rate_limit_per_sec: None,
        })
        .await
        .unwrap();
    // One endpoint exists before the snapshot starts: it must be loaded at start.
    store
        .create_endpoint(&endpoint("ep1", &["invoice.*"]))
        .await
        .unwrap();
    assert!(matches!(
        store.create_endpoint(&endpoint("ep1", &[])).await,
        Err(StoreError::Conflict(_))
    ));

    let cancel = CancellationToken::new();
    let live = Live::start(&layout, RetrySchedule::default(), cancel.clone())
        .await
        .unwrap();
    assert_eq!(
        live.load().endpoints("acme").len(),
        1,
        "loaded before start returns"
    );
    let ep1 = live.load().endpoint("acme", "ep1").unwrap().clone();
    assert!(ep1.subscription.matches::<&str>("invoice.paid", &[]));
    assert!(!ep1.subscription.matches::<&str>("charge.paid", &[]));

    store
        .create_endpoint(&endpoint("ep2", &[">"]))
        .await
        .unwrap();
    store
        .update_endpoint("acme", "ep1", |ep| {
            ep.filter_types = vec!["charge.*".into()];
            Ok(())
        })
        .await
        .unwrap();
    wait_until(
        "ep2 and the new ep1 filter",
        Duration::from_secs(10),
        || {
            let snap = live.load();
            std::future::ready(
                snap.endpoints("acme").len() == 2
                    && snap
                        .endpoint("acme", "ep1")
                        .is_some_and(|e| e.subscription.matches::<&str>("charge.paid", &[])),
            )
        },
    )
    .await;

    // A document that does not parse is skipped; the others keep working.
    layout
        .config
        .put("endpoints.acme.broken", "{not json".into())
        .await
        .unwrap();
    store.delete_endpoint("acme", "ep2").await.unwrap();
    wait_until("ep2 to go", Duration::from_secs(10), || {
        std::future::ready(live.load().endpoints("acme").len() == 1)
    })
    .await;

    // The server restarts; changes made afterwards still reach the snapshot.
    server.restart();
    let mut changed = false;
    for _ in 0..100 {
        if store.create_endpoint(&endpoint("ep3", &[])).await.is_ok() {
            changed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(changed, "the store works again after the restart");
    wait_until("ep3 after the restart", Duration::from_secs(20), || {
        std::future::ready(live.load().endpoint("acme", "ep3").is_some())
    })
    .await;
    assert!(live.load().endpoint("acme", "ep1").is_some());
    assert!(live.load().endpoint("acme", "broken").is_none());

    // Deleting the tenant deletes its endpoints.
    store.delete_tenant("acme").await.unwrap();
    wait_until(
        "the tenant's endpoints to go",
        Duration::from_secs(10),
        || std::future::ready(live.load().endpoints("acme").is_empty()),
    )
    .await;
    cancel.cancel();
}
