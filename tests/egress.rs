//! Webhooks through an egress proxy (`GANCHO_EGRESS_PROXY`), with a real HTTP CONNECT proxy
//! that leaves from its own address (127.0.0.2): every webhook the receiver gets came through
//! it; a proxy that is down gives `proxy_error` attempts and delivery resumes when it is back;
//! the SSRF guard still checks the target (the proxy's own loopback address is exempt), and
//! by name the check is the proxy's.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, ConnectProxy, ProxyRules, Receiver, PROXY_SOURCE};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_webhook_goes_through_the_proxy_and_resumes_after_it_fails() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint(
        "acme",
        "ep",
        &rx.url("/hook"),
        &[">"],
        &[],
        Some("0s,2s,5s,10s,20s,30s"),
    )
    .await;
    let rules = ProxyRules {
        credentials: Some("gancho:s3cret pass".into()),
        ..Default::default()
    };
    let proxy = ConnectProxy::start(0, rules.clone()).await;
    let port = proxy.addr().port();
    let url = format!("http://gancho:s3cret%20pass@127.0.0.1:{port}");
    let mut router = env.spawn("router");
    let mut worker = env.spawn_with(&["worker"], &[("GANCHO_EGRESS_PROXY", &url)]);

    env.publish_many(
        "acme",
        "charge.paid",
        (0..50).map(|i| (format!("up-{i}"), b"{}".to_vec())),
    )
    .await;
    wait_until("50 webhooks", Duration::from_secs(30), || {
        std::future::ready(rx.distinct() == 50)
    })
    .await;
    let direct: Vec<_> = rx
        .received()
        .iter()
        .filter(|r| r.peer.ip() != PROXY_SOURCE)
        .map(|r| r.peer)
        .collect();
    assert!(
        direct.is_empty(),
        "webhooks that skipped the proxy: {direct:?}"
    );
    let target = format!("127.0.0.1:{}", rx.addr().port());
    let targets = proxy.targets();
    assert!(!targets.is_empty());
    assert!(targets.iter().all(|t| *t == target), "{targets:?}");

    // The proxy goes down: attempts fail as proxy_error, nothing reaches the receiver.
    drop(proxy);
    env.publish_many(
        "acme",
        "charge.paid",
        (0..10).map(|i| (format!("down-{i}"), b"{}".to_vec())),
    )
    .await;
    wait_until("proxy_error attempts", Duration::from_secs(20), || async {
        env.attempts("acme", "ep")
            .await
            .iter()
            .any(|a| a.outcome == "proxy_error")
    })
    .await;
    let attempts = env.attempts("acme", "ep").await;
    let failed = attempts
        .iter()
        .find(|a| a.outcome == "proxy_error")
        .unwrap();
    assert!(
        failed.error.contains(&format!("127.0.0.1:{port}")),
        "{}",
        failed.error
    );
    assert!(!failed.error.contains("s3cret"), "{}", failed.error);
    assert_eq!(rx.distinct(), 50);

    // Back on the same port: the retries go through it.
    let proxy = ConnectProxy::start(port, rules).await;
    wait_until(
        "the webhooks held up by the proxy",
        Duration::from_secs(90),
        || std::future::ready(rx.distinct() == 60),
    )
    .await;
    assert!(rx.received().iter().all(|r| r.peer.ip() == PROXY_SOURCE));
    assert!(!proxy.targets().is_empty());
    let dead = env.dead_letters().await;
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    assert!(support::terminate(&mut worker));
    assert!(support::terminate(&mut router));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_is_still_checked_through_the_proxy() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    let port = rx.addr().port();
    // Stored directly (the API would refuse them): a name that resolves to loopback, and a
    // public address the proxy's policy refuses.
    let local = format!("https://localhost:{port}/hook");
    env.endpoint("acme", "local", &local, &["local.*"], &[], Some("0s"))
        .await;
    env.endpoint(
        "acme",
        "public",
        "https://1.1.1.1/hook",
        &["public.*"],
        &[],
        Some("0s"),
    )
    .await;
    let proxy = ConnectProxy::start(
        0,
        ProxyRules {
            refuse_port_443: true,
            ..Default::default()
        },
    )
    .await;
    let url = format!("http://127.0.0.1:{}", proxy.addr().port());
    let mut router = env.spawn("router");
    // Private endpoints not allowed: the proxy on loopback still is.
    let guarded = [
        ("GANCHO_EGRESS_PROXY", url.as_str()),
        ("GANCHO_ALLOW_PRIVATE_ENDPOINTS", "false"),
    ];
    let mut worker = env.spawn_with(&["worker"], &guarded);
    env.publish("acme", "local.check", "l-1", b"{}", &[]).await;
    env.publish("acme", "public.check", "p-1", b"{}", &[]).await;
    let outcome = |ep: &'static str| {
        let env = &env;
        async move {
            env.attempts("acme", ep)
                .await
                .first()
                .map(|a| (a.outcome.clone(), a.error.clone()))
        }
    };
    wait_until("both attempts", Duration::from_secs(20), || async {
        outcome("local").await.is_some() && outcome("public").await.is_some()
    })
    .await;
    let (kind, error) = outcome("local").await.unwrap();
    assert_eq!(kind, "blocked", "{error}");
    assert!(error.contains("private"), "{error}");
    let (kind, error) = outcome("public").await.unwrap();
    assert_eq!(kind, "proxy_error", "{error}");
    assert!(error.contains("refused CONNECT 1.1.1.1:443"), "{error}");
    // The proxy was asked for the checked public address, never for the private one.
    assert_eq!(proxy.targets(), ["1.1.1.1:443"]);
    assert_eq!(rx.count(), 0);
    assert!(support::terminate(&mut worker));

    // By name, the worker leaves the check to the proxy: this one lets loopback through.
    let by_name = [
        ("GANCHO_EGRESS_PROXY", url.as_str()),
        ("GANCHO_EGRESS_PROXY_BY_NAME", "true"),
        ("GANCHO_ALLOW_PRIVATE_ENDPOINTS", "false"),
    ];
    let mut worker = env.spawn_with(&["worker"], &by_name);
    env.publish("acme", "local.check", "l-2", b"{}", &[]).await;
    wait_until("the webhook by name", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 1)
    })
    .await;
    assert_eq!(rx.received()[0].peer.ip(), PROXY_SOURCE);
    assert!(
        proxy.targets().contains(&format!("localhost:{port}")),
        "{:?}",
        proxy.targets()
    );
    assert!(support::terminate(&mut worker));
    assert!(support::terminate(&mut router));
}
