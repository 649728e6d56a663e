//! Standard Webhooks `v1a` (ed25519) through the API and a worker: the receiver holds only the
//! public keys the API shows, and an independent implementation (Python's `cryptography`,
//! `scripts/verify-v1a.py`) verifies every delivery; during a rotation both signatures
//! verify, each with its key; an `hmac` endpoint rotated to `ed25519` carries both kinds.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use base64::Engine as _;
use gancho_test_harness::{wait_until, Received, Receiver};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

/// Runs `scripts/verify-v1a.py` on `requests` with `keys`; panics with its output on failure.
fn verify_independently(requests: &[Received], keys: &[&str]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Installed the way `make test` does (a venv under .tools/), once per run; a no-op when
    // it is there already.
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let out = std::process::Command::new("make")
            .arg("-C")
            .arg(&root)
            .arg("--no-print-directory")
            .arg("py-cryptography")
            .output()
            .expect("run make (it installs Python's cryptography package into .tools/venv)");
        assert!(
            out.status.success(),
            "make py-cryptography failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let python = root.join(".tools/venv/bin/python");
    let list: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({
                "id": r.header("webhook-id").unwrap(),
                "timestamp": r.header("webhook-timestamp").unwrap(),
                "signature": r.header("webhook-signature").unwrap(),
                "body": base64::engine::general_purpose::STANDARD.encode(&r.body),
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.json");
    std::fs::write(&file, serde_json::to_vec(&list).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .arg(root.join("scripts/verify-v1a.py"))
        .arg(&file)
        .args(keys)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "independent verification: {text}");
    assert!(
        text.contains(&format!("{} requests", requests.len())),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_verify_v1a_with_the_public_key_through_a_rotation() {
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

    // An ed25519 endpoint: the answer shows its public key, never a secret.
    let (status, ep) = call(
        "POST",
        "/acme/endpoints".into(),
        Some(json!({"url": rx.url("/ed"), "signing": "ed25519", "filter_types": ["charge.*"]})),
    )
    .await;
    assert_eq!(status, 201, "{ep}");
    assert_eq!(ep["signing"], "ed25519");
    assert!(ep.get("secret").is_none(), "a signing key was shown: {ep}");
    let first = ep["public_keys"][0]["key"].as_str().unwrap().to_owned();
    assert!(first.starts_with("whpk_"), "{ep}");
    let id = ep["id"].as_str().unwrap().to_owned();

    // An hmac endpoint, rotated to ed25519 below.
    let (status, hmac) = call(
        "POST",
        "/acme/endpoints".into(),
        Some(json!({"url": rx.url("/mixed"), "filter_types": ["invoice.*"]})),
    )
    .await;
    assert_eq!(status, 201, "{hmac}");
    assert_eq!(hmac["signing"], "hmac");
    assert!(hmac.get("public_keys").is_none(), "{hmac}");
    let hmac_secret = hmac["secret"].as_str().unwrap().to_owned();
    let hmac_id = hmac["id"].as_str().unwrap().to_owned();

    // Mistakes say what to fix.
    let (status, v) = call(
        "POST",
        "/acme/endpoints".into(),
        Some(json!({"url": rx.url("/x"), "signing": "ed25519", "secret": hmac_secret})),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert!(v.to_string().contains("whsk_"), "{v}");
    let (status, v) = call(
        "PATCH",
        format!("/acme/endpoints/{id}"),
        Some(json!({"signing": "hmac"})),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert!(v.to_string().contains("secret/rotate"), "{v}");

    let cancel = env.run_roles(2).await;
    for n in 0..20 {
        env.publish(
            "acme",
            "charge.paid",
            &format!("before-{n}"),
            format!(r#"{{"n":{n}}}"#).as_bytes(),
            &[],
        )
        .await;
    }
    let on = |path: &'static str, prefix: &'static str| {
        let rx = &rx;
        move || -> Vec<Received> {
            rx.received()
                .into_iter()
                .filter(|r| r.path == path && r.header("webhook-id").unwrap().starts_with(prefix))
                .collect()
        }
    };
    let before = on("/ed", "before-");
    wait_until("the first 20 webhooks", Duration::from_secs(30), || {
        std::future::ready(before().len() == 20)
    })
    .await;
    verify_independently(&before(), &[&first]);

    // Rotate both: during the grace each webhook carries a signature for each key.
    let (status, rotated) = call(
        "POST",
        format!("/acme/endpoints/{id}/secret/rotate"),
        Some(json!({"grace": "1h"})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated.get("secret").is_none(), "{rotated}");
    let keys = rotated["public_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{rotated}");
    let second = keys[0]["key"].as_str().unwrap().to_owned();
    assert_eq!(keys[1]["key"], first.as_str());
    assert!(keys[1]["expires_at"].is_string(), "{rotated}");
    let (status, mixed) = call(
        "POST",
        format!("/acme/endpoints/{hmac_id}/secret/rotate"),
        Some(json!({"grace": "1h", "signing": "ed25519"})),
    )
    .await;
    assert_eq!(status, 200, "{mixed}");
    assert_eq!(mixed["signing"], "ed25519");
    let mixed_key = mixed["public_keys"][0]["key"].as_str().unwrap().to_owned();
    // GET shows the same keys.
    let (_, got) = call("GET", format!("/acme/endpoints/{id}"), None).await;
    assert_eq!(got["public_keys"], rotated["public_keys"]);

    // Publish until the worker's snapshot has both rotations.
    let mut n = 0;
    wait_until(
        "webhooks signed after the rotation",
        Duration::from_secs(10),
        || {
            n += 1;
            let (env, rx) = (&env, &rx);
            async move {
                env.publish("acme", "charge.paid", &format!("after-{n}"), b"{}", &[])
                    .await;
                env.publish(
                    "acme",
                    "invoice.paid",
                    &format!("after-inv-{n}"),
                    b"{}",
                    &[],
                )
                .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let two = |path: &str| {
                    rx.received().iter().any(|r| {
                        r.path == path
                            && r.header("webhook-signature").unwrap().split(' ').count() == 2
                    })
                };
                two("/ed") && two("/mixed")
            }
        },
    )
    .await;
    for i in 0..20 {
        env.publish("acme", "charge.paid", &format!("during-{i}"), b"{}", &[])
            .await;
        env.publish(
            "acme",
            "invoice.paid",
            &format!("during-inv-{i}"),
            b"{}",
            &[],
        )
        .await;
    }
    let during = on("/ed", "during-");
    let mixed_during = on("/mixed", "during-");
    wait_until(
        "the webhooks during the grace",
        Duration::from_secs(30),
        || std::future::ready(during().len() == 20 && mixed_during().len() == 20),
    )
    .await;
    // Each webhook verifies with the new public key and with the old one.
    verify_independently(&during(), &[&second, &first]);
    // The hmac endpoint rotated to ed25519: v1a with the public key, v1 with the old secret.
    verify_independently(&mixed_during(), &[&mixed_key]);
    for r in mixed_during() {
        support::verify_with(&hmac_secret, &r).unwrap();
    }
    cancel.cancel();
    support::kill9(&mut api);
}
