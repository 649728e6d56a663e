//! Secret rotation through the API: during the grace both signatures are sent and each
//! verifies; from the expiry on only the new one, at that moment, not at the next snapshot.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Receiver};
use serde_json::{json, Value};
use std::time::Duration;
use time::OffsetDateTime;

const TOKEN: &str = "test-admin-token-0123456789";

fn verifies(secret: &str, r: &gancho_test_harness::Received) -> bool {
    support::verify_with(secret, r).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_secrets_sign_during_the_grace_then_only_the_new() {
    let env = support::Env::new().await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let tenants = support::TenantsApi::new(&base, TOKEN);
    let call =
        |method: &'static str, path: String, body: Option<Value>| tenants.call(method, path, body);
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    assert_eq!(
        call("POST", String::new(), Some(json!({"id": "acme"})))
            .await
            .0,
        201
    );
    let (status, ep) = call(
        "POST",
        "/acme/endpoints".into(),
        Some(json!({"url": rx.url("/hook")})),
    )
    .await;
    assert_eq!(status, 201, "{ep}");
    let id = ep["id"].as_str().unwrap().to_owned();
    let old = ep["secret"].as_str().unwrap().to_owned();
    let cancel = env.run_roles(1).await;

    // Bad grace values say what to fix.
    let (status, v) = call(
        "POST",
        format!("/acme/endpoints/{id}/secret/rotate"),
        Some(json!({"grace": "8d"})),
    )
    .await;
    assert_eq!(status, 422, "{v}");

    let (status, v) = call(
        "POST",
        format!("/acme/endpoints/{id}/secret/rotate"),
        Some(json!({"grace": "4s"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let new = v["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let expiry = OffsetDateTime::now_utc() + Duration::from_secs(4);

    // During the grace: publish until the worker's snapshot has the rotation, then the
    // webhook carries two signatures, each verifying with its secret.
    let mut n = 0;
    wait_until(
        "a webhook signed with both secrets",
        Duration::from_secs(3),
        || {
            n += 1;
            let id = format!("evt-grace-{n}");
            let env = &env;
            let rx = &rx;
            async move {
                env.publish("acme", "charge.paid", &id, b"{}", &[]).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                rx.received()
                    .iter()
                    .any(|r| r.header("webhook-signature").unwrap().split(' ').count() == 2)
            }
        },
    )
    .await;
    let both = rx
        .received()
        .into_iter()
        .find(|r| r.header("webhook-signature").unwrap().split(' ').count() == 2)
        .unwrap();
    assert!(verifies(&old, &both) && verifies(&new, &both));

    // After the expiry, with no config change since: only the new secret signs.
    let wait = (expiry - OffsetDateTime::now_utc()).unsigned_abs() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    env.publish("acme", "charge.paid", "evt-after", b"{}", &[])
        .await;
    wait_until(
        "the webhook after the expiry",
        Duration::from_secs(10),
        || {
            std::future::ready(
                rx.received()
                    .iter()
                    .any(|r| r.header("webhook-id") == Some("evt-after")),
            )
        },
    )
    .await;
    let after = rx
        .received()
        .into_iter()
        .find(|r| r.header("webhook-id") == Some("evt-after"))
        .unwrap();
    assert_eq!(
        after
            .header("webhook-signature")
            .unwrap()
            .split(' ')
            .count(),
        1
    );
    assert!(verifies(&new, &after));
    assert!(
        !verifies(&old, &after),
        "the old secret still signs after its expiry"
    );
    cancel.cancel();
    support::kill9(&mut api);
}
