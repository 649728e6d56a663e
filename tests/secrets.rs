//! Endpoint secrets at rest: nothing readable in the config bucket (any revision, the raw
//! stream), a wrong key stops a role at start-up with one line, delivery goes on through a
//! key rotation, and `gancho secrets re-encrypt` finishes it (also from a clear-text store),
//! after which the old key can go.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use bytes::Bytes;
use gancho_store::Keyring;
use gancho_test_harness::{wait_until, Receiver};
use std::time::Duration;

/// Every message of the bucket's stream, every revision and deleted record included.
async fn raw_bucket(env: &support::Env) -> Vec<(String, Bytes)> {
    let stream = format!("KV_{}", env.layout.subjects.config_bucket());
    env.read_stream(&stream, "$KV.").await
}

fn key_id(key: &str) -> String {
    Keyring::new(key, None)
        .unwrap()
        .current_id()
        .unwrap()
        .to_owned()
}

/// Runs `gancho <args>` with these keys; (exit code, stdout, stderr).
fn gancho(
    env: &support::Env,
    args: &[&str],
    key: &str,
    old: Option<&str>,
) -> (i32, String, String) {
    let mut cmd = env.command(args, &[("GANCHO_ENCRYPTION_KEY", key)]);
    if let Some(old) = old {
        cmd.env("GANCHO_ENCRYPTION_OLD_KEY", old);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts a worker with these keys and waits until an event for `ep` arrives at `rx`
/// verified with `secret`.
async fn delivers(
    env: &support::Env,
    rx: &Receiver,
    secret: &str,
    key: &str,
    old: Option<&str>,
    n: &str,
) {
    let mut envs = vec![("GANCHO_ENCRYPTION_KEY", key)];
    if let Some(old) = old {
        envs.push(("GANCHO_ENCRYPTION_OLD_KEY", old));
    }
    let mut worker = env.spawn_with(&["worker"], &envs);
    let before = rx.count();
    let id = format!("evt-secrets-{n}");
    env.publish("acme", "charge.paid", &id, b"{}", &[]).await;
    wait_until("the webhook", Duration::from_secs(20), || {
        std::future::ready(rx.count() > before)
    })
    .await;
    let got = rx.received().pop().unwrap();
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    support::verify_with(secret, &got).unwrap();
    support::terminate(&mut worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_survive_a_key_rotation() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    let ep = env
        .endpoint("acme", "ep1", &rx.url("/hook"), &[], &[], None)
        .await;
    // A rotated-out secret is sealed too.
    let rotated = env
        .endpoint(
            "acme",
            "ep2",
            "https://hooks.example.com/x",
            &["none.*"],
            &[],
            None,
        )
        .await;
    env.change("acme", "ep2", |e| {
        e.previous_secrets
            .push(gancho_store::model::PreviousSecret {
                secret: e.secret.clone(),
                expires_at: time::OffsetDateTime::now_utc() + Duration::from_secs(3600),
            });
        e.secret = gancho_store::model::new_secret();
    })
    .await;
    let first = env.key.clone();
    let plain = |bytes: &Bytes| {
        let text = String::from_utf8_lossy(bytes);
        text.contains("whsec_") || text.contains(&ep.secret) || text.contains(&rotated.secret)
    };
    let raw = raw_bucket(&env).await;
    assert!(raw.len() >= 4, "{} messages", raw.len());
    for (subject, bytes) in &raw {
        assert!(!plain(bytes), "clear text in {subject}");
    }
    // A sealed secret is bound to its record: copied into another one, it does not open.
    let mut doc: serde_json::Value = serde_json::from_slice(
        &env.layout
            .config
            .get("endpoints.acme.ep1")
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let sealed = doc["secret"].as_str().unwrap().to_owned();
    assert!(
        sealed.starts_with(&format!("enc:v1:{}:", key_id(&first))),
        "{sealed}"
    );
    doc["id"] = "ep3".into();
    env.layout
        .config
        .put("endpoints.acme.ep3", doc.to_string().into())
        .await
        .unwrap();
    let err = env.store.get_endpoint("acme", "ep3").await.unwrap_err();
    assert!(
        err.to_string().contains("moved from another record"),
        "{err}"
    );
    assert!(!err.to_string().contains("whsec_"));
    env.layout.config.purge("endpoints.acme.ep3").await.unwrap();

    let mut router = env.spawn("router");
    delivers(&env, &rx, &ep.secret, &first, None, "1").await;

    // A worker (or api) with a wrong key stops at start-up with one line.
    let wrong = Keyring::generate();
    let (code, _, stderr) = gancho(&env, &["worker"], &wrong, None);
    assert_eq!(code, 64, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("GANCHO_ENCRYPTION_KEY") && stderr.contains(&key_id(&first)),
        "{stderr}"
    );
    assert!(!stderr.contains(&wrong) && !stderr.contains(&first));
    let (code, _, stderr) = env
        .command(&["api"], &[])
        .env_remove("GANCHO_ENCRYPTION_KEY")
        .output()
        .map(|o| {
            (
                o.status.code().unwrap_or(-1),
                (),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("gancho keygen"), "{stderr}");

    // Rotation: the new key seals, the old one still opens; delivery goes on.
    let second = Keyring::generate();
    delivers(&env, &rx, &ep.secret, &second, Some(&first), "2").await;
    let (code, stdout, stderr) = gancho(&env, &["secrets", "re-encrypt"], &second, Some(&first));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Sealed 2 endpoint(s)"), "{stdout}");
    // Only the new key remains anywhere in the bucket, and the old one is no longer needed.
    let old_id = format!("enc:v1:{}:", key_id(&first));
    for (subject, bytes) in raw_bucket(&env).await {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&old_id),
            "{subject} still sealed with the old key"
        );
        assert!(!plain(&bytes), "clear text in {subject}");
    }
    delivers(&env, &rx, &ep.secret, &second, None, "3").await;
    let (code, _, stderr) = gancho(&env, &["worker"], &first, None);
    assert_eq!(code, 64, "the old key alone is refused now: {stderr}");
    support::terminate(&mut router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_encrypt_leaves_no_clear_text_from_an_unencrypted_store() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    // Written the way a version without encryption stored it: clear text, two revisions,
    // and a deleted endpoint whose history still holds its secret.
    let clear = Keyring::none();
    let mut ep = gancho_store::Endpoint::new(
        "acme".parse().unwrap(),
        "ep1".parse().unwrap(),
        rx.url("/hook"),
    );
    ep.timeout_ms = 5_000;
    let old_secret = ep.secret.clone();
    assert!(!clear.has_key());
    for (key, doc) in [
        ("endpoints.acme.ep1", &ep),
        ("endpoints.acme.ep1", &ep),
        ("endpoints.acme.gone", &ep),
    ] {
        env.layout
            .config
            .put(key, serde_json::to_vec(doc).unwrap().into())
            .await
            .unwrap();
    }
    env.layout
        .config
        .delete("endpoints.acme.gone")
        .await
        .unwrap();
    assert!(raw_bucket(&env)
        .await
        .iter()
        .any(|(_, b)| String::from_utf8_lossy(b).contains(&old_secret)));

    // Clear text is still read (and delivered) before the migration.
    let mut router = env.spawn("router");
    delivers(&env, &rx, &old_secret, &env.key, None, "a").await;
    let (code, stdout, stderr) = gancho(&env, &["secrets", "re-encrypt"], &env.key, None);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Sealed 1 endpoint(s)"), "{stdout}");
    for (subject, bytes) in raw_bucket(&env).await {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("whsec_") && !text.contains(&old_secret),
            "clear text left in {subject}"
        );
    }
    delivers(&env, &rx, &old_secret, &env.key, None, "b").await;
    // Running it again finds nothing to do.
    let (code, stdout, _) = gancho(&env, &["secrets", "re-encrypt"], &env.key, None);
    assert_eq!(code, 0);
    assert!(stdout.contains("Sealed 0 endpoint(s)"), "{stdout}");
    support::terminate(&mut router);
}
