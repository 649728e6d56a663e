//! A tenant's lists (its API keys, its event types, the tenants themselves) hold what is
//! stored under that tenant and nothing else: not another tenant's whose id begins the same,
//! not what was deleted, revoked or purged, among many other tenants' documents.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use async_nats::jetstream;
use gancho_core::Subjects;
use gancho_store::{ApiKey, ConfigStore, Endpoint, EventType, Scope, Tenant};
use gancho_test_harness::NatsServer;
use time::OffsetDateTime;

fn tenant(id: &str) -> Tenant {
    Tenant {
        id: id.parse().unwrap(),
        name: id.to_uppercase(),
        created_at: OffsetDateTime::now_utc(),
        weight: 1,
        api_rate_limit_per_sec: None,
        ingest_rate_limit_per_sec: None,
    }
}

fn event_type(tenant: &str, name: &str) -> EventType {
    EventType {
        tenant: tenant.parse().unwrap(),
        name: name.into(),
        description: String::new(),
        schema: None,
        example: None,
        archived: false,
        created_at: OffsetDateTime::now_utc(),
        updated_at: OffsetDateTime::now_utc(),
    }
}

fn api_key(tenant: &str, id: &str) -> ApiKey {
    let (key, hash) = gancho_store::model::new_api_key();
    ApiKey {
        id: id.into(),
        tenant: tenant.parse().unwrap(),
        name: id.into(),
        prefix: key[..gancho_store::model::API_KEY_PREFIX_LEN].into(),
        scopes: vec![Scope::Read],
        hash,
        created_at: OffsetDateTime::now_utc(),
        last_used_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_lists_hold_its_own_documents_and_not_the_deleted_ones() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let layout = gancho_store::ensure(jetstream::new(client), Subjects::default(), 1)
        .await
        .unwrap()
        .with_keyring(
            gancho_store::Keyring::new(&gancho_store::Keyring::generate(), None).unwrap(),
        );
    let store = ConfigStore::new(&layout);
    // `ac` is a prefix of `acme`; `bulk` has many documents of its own around them.
    for id in ["ac", "acme", "bulk"] {
        store.create_tenant(&tenant(id)).await.unwrap();
    }
    for name in [
        "charge.paid",
        "charge.refunded",
        "payout.failed",
        "payout.sent",
    ] {
        store
            .put_event_type(&event_type("acme", name))
            .await
            .unwrap();
    }
    store
        .put_event_type(&event_type("ac", "account.opened"))
        .await
        .unwrap();
    for i in 0..300 {
        store
            .put_event_type(&event_type("bulk", &format!("type.n{i:03}")))
            .await
            .unwrap();
    }
    store
        .delete_event_type("acme", "charge.refunded")
        .await
        .unwrap();
    // A key purged (its history gone, a purge marker left) is not listed either.
    layout
        .config
        .purge("event_types.acme.payout.failed")
        .await
        .unwrap();
    let names = |v: Vec<EventType>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_event_types("acme").await.unwrap()),
        ["charge.paid", "payout.sent"],
        "acme's event types, without the one deleted and the one purged"
    );
    assert_eq!(
        names(store.list_event_types("ac").await.unwrap()),
        ["account.opened"],
        "ac's event types, without acme's"
    );
    assert_eq!(store.list_event_types("bulk").await.unwrap().len(), 300);

    for (t, id) in [
        ("acme", "key_a1"),
        ("acme", "key_a2"),
        ("acme", "key_a3"),
        ("ac", "key_b1"),
    ] {
        store.create_api_key(&api_key(t, id)).await.unwrap();
    }
    store.revoke_api_key("acme", "key_a2").await.unwrap();
    let ids = |v: Vec<ApiKey>| v.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_api_keys("acme").await.unwrap()),
        ["key_a1", "key_a3"],
        "acme's keys, without the one revoked"
    );
    assert_eq!(ids(store.list_api_keys("ac").await.unwrap()), ["key_b1"]);

    // Deleting a tenant deletes its endpoints (one deleted already) and its keys, and the
    // tenants listed after are the others.
    for id in ["ep1", "ep2"] {
        store
            .create_endpoint(&Endpoint::new(
                "acme".parse().unwrap(),
                id.parse().unwrap(),
                format!("https://hooks.example.com/{id}"),
            ))
            .await
            .unwrap();
    }
    store.delete_endpoint("acme", "ep2").await.unwrap();
    store.delete_tenant("acme").await.unwrap();
    assert!(store.get_endpoint("acme", "ep1").await.unwrap().is_none());
    assert!(store.list_api_keys("acme").await.unwrap().is_empty());
    let tenants: Vec<String> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id.as_str().to_owned())
        .collect();
    assert_eq!(tenants, ["ac", "bulk"]);
    assert_eq!(ids(store.list_api_keys("ac").await.unwrap()), ["key_b1"]);
}
