//! mTLS to endpoints, with a receiver that requires client certificates from a test CA the
//! worker does not trust globally (no GANCHO_EXTRA_CA_FILE: each endpoint brings its `ca`).
//! The endpoint with a certificate is delivered to; another endpoint on the same host without
//! one gets `tls_error` naming the cause, never the first one's pooled connection; the key is
//! never in the config bucket in clear nor in an API answer.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

/// A version 1 certificate and its key (`openssl x509 -req` without extensions), as people
/// make them by hand.
const V1_CERT: &str = include_str!("fixtures/v1-client-cert.pem");
const V1_KEY: &str = include_str!("fixtures/v1-client-key.pem");

async fn create(base: &str, body: Value) -> (u16, Value) {
    support::http(
        "POST",
        &format!("{base}/v1/tenants/acme/endpoints"),
        Some(TOKEN),
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_endpoint_with_a_client_certificate_gets_through() {
    let env = support::Env::new().await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    env.tenant("acme").await;
    let rx = Receiver::https_mtls(&env.ca, |_, _| Answer::status(200)).await;
    let client = env.ca.issue_client("gancho-acme");
    let ca = env.ca.ca_pem().to_owned();

    // Bad settings are refused, and the key is never echoed.
    for (body, want) in [
        (json!({"client_cert": client.cert_pem}), "go together"),
        (
            json!({"client_cert": client.cert_pem, "client_key": "-----BEGIN PRIVATE KEY-----\nnope\n"}),
            "client_key must be a PEM private key",
        ),
        (json!({"ca": "not pem"}), "ca must be PEM certificates"),
        // A version 1 certificate and its own key: they do go together, but it cannot be
        // presented, and the answer says why (not that the key does not match).
        (
            json!({"client_cert": V1_CERT, "client_key": V1_KEY}),
            "X.509 version 1 certificate",
        ),
    ] {
        let mut b = json!({"url": rx.url("/x")});
        b.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (s, v) = create(&base, b).await;
        assert_eq!(s, 422, "{v}");
        assert!(v.to_string().contains(want), "{v}");
        assert!(!v.to_string().contains("nope"));
    }

    let (s, with_cert) = create(
        &base,
        json!({"id": "with-cert", "url": rx.url("/a"), "filter_types": ["pay.a"],
               "client_cert": client.cert_pem, "client_key": client.key_pem, "ca": ca,
               "retry_schedule": "0s"}),
    )
    .await;
    assert_eq!(s, 201, "{with_cert}");
    assert!(with_cert.get("client_key").is_none());
    assert!(!with_cert.to_string().contains("PRIVATE KEY"));
    assert_eq!(with_cert["client_cert"], client.cert_pem.as_str());
    let (s, _) = create(
        &base,
        json!({"id": "without-cert", "url": rx.url("/b"), "filter_types": ["pay.b"],
               "ca": ca, "retry_schedule": "0s"}),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = create(
        &base,
        json!({"id": "no-ca", "url": rx.url("/c"), "filter_types": ["pay.c"],
               "retry_schedule": "0s"}),
    )
    .await;
    assert_eq!(s, 201);

    // An endpoint stored with a version 1 certificate before the API refused them: its
    // attempts say what is wrong with it.
    env.endpoint("acme", "v1-cert", &rx.url("/d"), &["pay.d"], &[], None)
        .await;
    env.change("acme", "v1-cert", |ep| {
        ep.client_cert = Some(V1_CERT.into());
        ep.client_key = Some(V1_KEY.into());
        ep.retry_schedule = Some("0s".into());
    })
    .await;

    let mut router = env.spawn("router");
    let mut worker = env
        .command(&["worker"], &[])
        .env_remove("GANCHO_EXTRA_CA_FILE")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.publish("acme", "pay.a", "evt-mtls-1", b"{}", &[]).await;
    wait_until("the mTLS delivery", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 1)
    })
    .await;
    // Same host and port, warm pool: the endpoint without a certificate must still fail.
    env.publish("acme", "pay.b", "evt-mtls-2", b"{}", &[]).await;
    env.publish("acme", "pay.c", "evt-mtls-3", b"{}", &[]).await;
    env.publish("acme", "pay.d", "evt-mtls-5", b"{}", &[]).await;
    wait_until("the failures recorded", Duration::from_secs(20), || async {
        !env.attempts("acme", "without-cert").await.is_empty()
            && !env.attempts("acme", "no-ca").await.is_empty()
            && !env.attempts("acme", "v1-cert").await.is_empty()
    })
    .await;
    let v1 = &env.attempts("acme", "v1-cert").await[0];
    assert_eq!(v1.outcome, "tls_error", "{v1:?}");
    assert!(
        v1.error.contains("X.509 version 1") && !v1.error.contains("do not go together"),
        "{}",
        v1.error
    );
    let failed = &env.attempts("acme", "without-cert").await[0];
    assert_eq!(failed.outcome, "tls_error", "{failed:?}");
    assert!(
        failed.error.contains("client certificate"),
        "{}",
        failed.error
    );
    let untrusted = &env.attempts("acme", "no-ca").await[0];
    assert_eq!(untrusted.outcome, "tls_error", "{untrusted:?}");
    assert!(
        untrusted.error.contains("endpoint's ca"),
        "{}",
        untrusted.error
    );
    env.publish("acme", "pay.a", "evt-mtls-4", b"{}", &[]).await;
    wait_until("the second mTLS delivery", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 2)
    })
    .await;
    assert!(rx.received().iter().all(|r| r.path == "/a"));

    let stream = format!("KV_{}", env.layout.subjects.config_bucket());
    for (subject, bytes) in env.read_stream(&stream, "$KV.").await {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "a client key in clear in {subject}"
        );
    }
    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}
