//! Delivery profiles through the API and real HTTPS receivers. `token`: the static token
//! arrives in the configured header or query parameter, next to a valid signature; it is
//! never in an API answer, the attempt log or the config bucket in clear; a PATCH switches
//! it; bad settings are refused with what to fix.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Receiver};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

async fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    support::http(
        method,
        &format!("{base}/v1/tenants/acme{path}"),
        Some(TOKEN),
        body.as_deref(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_profile_sends_its_token_and_never_shows_it() {
    let env = support::Env::new().await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;

    // Bad settings say what to fix.
    let bad = [
        (json!({"profile": "token"}), "needs a token"),
        (
            json!({"token": {"header": "validationtoken", "value": "t"}}),
            "only used by profile \"token\"",
        ),
        (
            json!({"profile": "token", "token": {"header": "x-t", "query": "t", "value": "t"}}),
            "exactly one of",
        ),
        (
            json!({"profile": "token", "token": {"header": "webhook-id", "value": "t"}}),
            "token.header",
        ),
        (
            json!({"profile": "token", "token": {"query": "t", "value": "has space"}}),
            "token.value",
        ),
        (json!({"profile": "soap"}), "standard, token"),
    ];
    for (extra, want) in bad {
        let mut body = json!({"url": rx.url("/x")});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (s, v) = call(&base, "POST", "/endpoints", Some(body.clone())).await;
        assert_eq!(s, 422, "{body} -> {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{body}: {v}"
        );
    }

    let (s, header_ep) = call(
        &base,
        "POST",
        "/endpoints",
        Some(
            json!({"id": "hdr", "url": rx.url("/hdr"), "profile": "token",
                    "token": {"header": "validationtoken", "value": "tok-first-123"}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{header_ep}");
    let (s, query_ep) = call(
        &base,
        "POST",
        "/endpoints",
        Some(
            json!({"id": "qry", "url": rx.url("/qry?tenant=acme"), "profile": "token",
                    "token": {"query": "token", "value": "q&v=1/2"}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{query_ep}");
    for v in [&header_ep, &query_ep] {
        assert!(!v.to_string().contains("tok-first") && !v.to_string().contains("q&v"));
        assert_eq!(v["profile"], "token");
    }
    assert_eq!(header_ep["token"], json!({"header": "validationtoken"}));
    let (_, list) = call(&base, "GET", "/endpoints", None).await;
    assert!(!list.to_string().contains("tok-first"), "{list}");

    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    env.publish("acme", "charge.paid", "evt-tok-1", b"{}", &[])
        .await;
    wait_until("both webhooks", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 2)
    })
    .await;
    let got = rx.received();
    let by_path = |p: &str| got.iter().find(|r| r.path.starts_with(p)).unwrap().clone();
    let hdr = by_path("/hdr");
    assert_eq!(hdr.header("validationtoken"), Some("tok-first-123"));
    support::verify_with(header_ep["secret"].as_str().unwrap(), &hdr).unwrap();
    let qry = by_path("/qry");
    assert_eq!(qry.path, "/qry?tenant=acme&token=q%26v%3D1%2F2");
    assert!(qry.header("validationtoken").is_none());

    // Rotation: a PATCH switches the token for the next request.
    let (s, v) = call(
        &base,
        "PATCH",
        "/endpoints/hdr",
        Some(json!({"token": {"header": "validationtoken", "value": "tok-second-456"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(!v.to_string().contains("tok-second"));
    let mut n = 0;
    wait_until("the new token", Duration::from_secs(20), || {
        n += 1;
        let id = format!("evt-tok-rot-{n}");
        let (env, rx) = (&env, &rx);
        async move {
            env.publish("acme", "charge.paid", &id, b"{}", &[]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            rx.received()
                .iter()
                .any(|r| r.header("validationtoken") == Some("tok-second-456"))
        }
    })
    .await;

    // Nowhere in clear: not in the attempt log (its URL drops the query), not in the bucket.
    wait_until("attempt records", Duration::from_secs(10), || async {
        !env.attempts("acme", "qry").await.is_empty()
    })
    .await;
    for a in env.attempts("acme", "qry").await {
        assert!(!a.url.contains("token="), "{}", a.url);
    }
    let stream = format!("KV_{}", env.layout.subjects.config_bucket());
    for (subject, bytes) in env.read_stream(&stream, "$KV.").await {
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["tok-first-123", "tok-second-456", "q&v=1/2"] {
            assert!(!text.contains(secret), "{secret} in clear in {subject}");
        }
    }
    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openfinance_br_templated_path_202_only_three_attempts() {
    use gancho_proto::{Event, Message as _};
    let env = support::Env::new().await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    env.tenant("acme").await;
    // 200 and 302 are failures for this profile; the third attempt's 202 is the success.
    let rx = gancho_test_harness::Receiver::https_mtls(&env.ca, |n, _| {
        gancho_test_harness::Answer::status([200, 302, 202].get(n).copied().unwrap_or(200))
    })
    .await;
    let client = env.ca.issue_client("gancho-acme");
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints",
        Some(json!({"url": rx.url("/base/"), "profile": "openfinance-br"})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("needs a client certificate"), "{v}");
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints",
        Some(
            json!({"id": "ofb", "url": rx.url("/base/"), "profile": "openfinance-br",
                    "client_cert": client.cert_pem, "client_key": client.key_pem,
                    "retry_schedule": "0s,300ms,300ms"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    let publish = |id: &'static str, payment: Option<&'static str>| {
        let env = &env;
        async move {
            let mut ev = Event {
                id: id.into(),
                tenant: "acme".into(),
                r#type: "pix.payment.updated".into(),
                occurred_at: Some(gancho_proto::timestamp(
                    time::macros::datetime!(2026-11-28 10:30:05.250 UTC),
                )),
                payload: bytes::Bytes::from_static(b"{}"),
                ..Default::default()
            };
            if let Some(p) = payment {
                ev.attributes.insert("paymentId".into(), p.into());
            }
            let subject = env.layout.subjects.event("acme", "pix.payment.updated");
            env.publish_raw(&subject, ev.encode_to_vec(), id).await;
        }
    };
    publish("evt-ofb-1", Some("pay-123")).await;
    wait_until("three attempts", Duration::from_secs(20), || {
        std::future::ready(rx.count() >= 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = rx.received();
    assert_eq!(
        got.len(),
        3,
        "exactly 3 attempts: 200 and 302 fail, 202 succeeds"
    );
    let mut ids = std::collections::HashSet::new();
    for r in &got {
        assert_eq!(
            r.path,
            "/base/open-banking/webhook/v1/payments/v3/pix/payments/pay-123"
        );
        assert_eq!(
            &r.body[..],
            br#"{"data":{"timestamp":"2026-11-28T10:30:05Z"}}"#
        );
        assert!(r.header("webhook-signature").is_none());
        let id = r.header("x-webhook-interaction-id").unwrap().to_owned();
        assert_eq!(id.len(), 36, "{id}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 3, "a fresh interaction id on every attempt");
    wait_until("attempt records", Duration::from_secs(10), || async {
        env.attempts("acme", "ofb").await.len() == 3
    })
    .await;
    let outcomes: Vec<_> = env
        .attempts("acme", "ofb")
        .await
        .into_iter()
        .map(|a| (a.status, a.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (200, "http_error".to_string()),
            (302, "http_error".to_string()),
            (202, "success".to_string())
        ]
    );
    // The attempt log names the URL requested, the payment's path included: what a support
    // team quotes when asked "which URL did you call?".
    for a in env.attempts("acme", "ofb").await {
        assert_eq!(
            a.url,
            rx.url("/base/open-banking/webhook/v1/payments/v3/pix/payments/pay-123"),
            "attempt {}",
            a.attempt
        );
    }

    // Without paymentId: dead-lettered at once as invalid, no request.
    publish("evt-ofb-2", None).await;
    wait_until(
        "the invalid dead letter",
        Duration::from_secs(20),
        || async { env.dead_letters().await.iter().any(|d| d.kind == "invalid") },
    )
    .await;
    let dead = env.dead_letters().await;
    let d = dead.iter().find(|d| d.kind == "invalid").unwrap();
    assert!(d.reason.contains("\"paymentId\""), "{}", d.reason);
    assert_eq!(rx.count(), 3);
    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}
