//! The bad-input table of RELIABILITY.md, against a real `gancho api` (private endpoints not
//! allowed), router and worker: each row sends one kind of bad input and checks the answer's
//! status and what its message says to fix; around them, events accepted before and after are
//! both delivered, so nothing already accepted was lost. Malformed, non-JSON and mismatched
//! events over NATS are rows of `invalid_events.rs`; bad config values of `cli.rs`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Receiver};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "bad-input-admin-token-0123456789";

fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_and_loses_nothing() {
    let env = support::Env::new().await;
    let (mut api, base) = env
        .spawn_api_with(TOKEN, &[("GANCHO_ALLOW_PRIVATE_ENDPOINTS", "false")])
        .await;
    let call =
        |method: &'static str, path: String, token: Option<&'static str>, body: Option<String>| {
            let url = format!("{base}{path}");
            async move { support::http(method, &url, token, body.as_deref()).await }
        };
    for t in ["acme", "globex"] {
        let (s, v) = call(
            "POST",
            "/v1/tenants".into(),
            Some(TOKEN),
            Some(json!({"id": t}).to_string()),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint("acme", "ledger", &rx.url("/hook"), &["charge.*"], &[], None)
        .await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn("worker");
    let send = |id: &'static str| {
        call(
            "POST",
            "/v1/tenants/acme/events".into(),
            Some(TOKEN),
            Some(json!({"id": id, "type": "charge.paid", "data": {"amount": 1990}}).to_string()),
        )
    };
    assert_eq!(send("evt-before").await.0, 202);

    // Endpoint URLs: 422, saying what to fix, never echoing a password.
    let long = format!("https://hooks.example.com/{}", "a".repeat(10_000));
    for (url, want) in [
        ("https://10.0.0.5/hook", "private address"),
        (
            "https://169.254.169.254/latest/meta-data/",
            "private address",
        ),
        ("https://[::ffff:127.0.0.1]/hook", "private address"),
        ("https://localhost/hook", "private address"),
        // Refused at create as the worker would refuse every delivery: what a resolver reads
        // as loopback or this host, though not spelt 127.0.0.1.
        ("https://127.1/hook", "private address"),
        ("https://2130706433/hook", "private address"),
        ("https://0x7f.0.0.1/hook", "private address"),
        ("https://0177.0.0.1/hook", "private address"),
        ("https://0/hook", "private address"),
        ("https://LOCALHOST./hook", "private address"),
        ("http://hooks.example.com/hook", "is not https"),
        (
            "https://ops:hunter22@hooks.example.com/hook",
            "user name or password",
        ),
        ("https://hooks.example.com:0/hook", "1 to 65535"),
        ("https://hooks.example.com:70000/hook", "1 to 65535"),
        (
            "https://pagamentos.açaí.com.br/hook",
            "pagamentos.xn--aa-4iaz.com.br",
        ),
        ("https://hooks.example.com/cobrança", "percent-encode"),
        (long.as_str(), "longer than 2048"),
    ] {
        let (s, v) = call(
            "POST",
            "/v1/tenants/acme/endpoints".into(),
            Some(TOKEN),
            Some(json!({ "url": url }).to_string()),
        )
        .await;
        assert_eq!(s, 422, "{url}: {v}");
        assert!(message(&v).contains(want), "{url}: {v}");
        assert!(!v.to_string().contains("hunter22"), "{url}: {v}");
    }
    // An odd but valid port is a receiver's business.
    let (s, v) = call(
        "POST",
        "/v1/tenants/acme/endpoints".into(),
        Some(TOKEN),
        Some(json!({"id": "odd-port", "url": "https://hooks.example.com:8443/hook", "filter_types": ["refund.*"]}).to_string()),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    // Tokens: missing, wrong, and another tenant's key.
    let (s, v) = call("GET", "/v1/tenants/acme/endpoints".into(), None, None).await;
    assert_eq!(s, 401, "{v}");
    assert!(message(&v).contains("Authorization"), "{v}");
    let (s, v) = call(
        "GET",
        "/v1/tenants/acme/endpoints".into(),
        Some("whk_nope"),
        None,
    )
    .await;
    assert_eq!(s, 401, "{v}");
    let (s, key) = call(
        "POST",
        "/v1/tenants/globex/api-keys".into(),
        Some(TOKEN),
        Some(json!({"name": "ops", "scopes": ["manage"]}).to_string()),
    )
    .await;
    assert_eq!(s, 201, "{key}");
    let globex: &'static str = Box::leak(key["key"].as_str().unwrap().to_owned().into_boxed_str());
    let (s, v) = call(
        "GET",
        "/v1/tenants/acme/endpoints".into(),
        Some(globex),
        None,
    )
    .await;
    // Another tenant's data is not found, the same answer as a tenant that does not exist.
    assert_eq!(s, 404, "another tenant's key: {v}");
    assert!(message(&v).contains("acme"), "{v}");
    let (s, v) = call(
        "DELETE",
        "/v1/tenants/acme/endpoints/ledger".into(),
        Some(globex),
        None,
    )
    .await;
    assert_eq!(s, 404, "another tenant's key cannot delete: {v}");

    // Ids and unknown tenants.
    let (s, v) = call(
        "POST",
        "/v1/tenants".into(),
        Some(TOKEN),
        Some(json!({"id": "Bad Id!"}).to_string()),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).contains("id"), "{v}");
    let (s, v) = call(
        "GET",
        "/v1/tenants/nobody/endpoints".into(),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(message(&v).contains("nobody"), "{v}");
    let (s, v) = call(
        "POST",
        "/v1/tenants/nobody/events".into(),
        Some(TOKEN),
        Some(json!({"id": "evt-x", "type": "charge.paid", "data": {}}).to_string()),
    )
    .await;
    assert_eq!(s, 404, "an event for an unknown tenant: {v}");

    // Events over HTTP: not JSON, not an object, too large.
    let (s, v) = call(
        "POST",
        "/v1/tenants/acme/events".into(),
        Some(TOKEN),
        Some("amount=1990".into()),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        "POST",
        "/v1/tenants/acme/events".into(),
        Some(TOKEN),
        Some(json!({"id": "evt-scalar", "type": "charge.paid", "data": 5}).to_string()),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).contains("data"), "{v}");
    let big = "x".repeat(300 * 1024);
    let (s, v) = call(
        "POST",
        "/v1/tenants/acme/events".into(),
        Some(TOKEN),
        Some(json!({"id": "evt-big", "type": "charge.paid", "data": {"pad": big}}).to_string()),
    )
    .await;
    assert_eq!(s, 413, "{v}");

    let addr = base.trim_start_matches("http://").to_owned();
    // Huge headers: refused (431), and the API goes on answering.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let huge = format!(
        "GET /v1/tenants HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A body trickled a byte a second: 408 once the body timeout (10 s) is over.
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/tenants HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                n = s.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if s.write_all(b" ").await.is_err() {
                        break;
                    }
                }
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    });
    let answer = tokio::time::timeout(Duration::from_secs(20), trickle)
        .await
        .expect("a trickled body is cut off")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("send it at once"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );

    // A head trickled a byte a second: the connection is closed after the header timeout.
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        for b in b"GET /v1/tenants HTTP/1.1\r\nhost: x\r\nx-slow: "
            .iter()
            .cycle()
        {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
            {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickled head is cut off");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );

    // After all that, the API answers and everything accepted arrives.
    assert_eq!(send("evt-after").await.0, 202);
    wait_until("both events", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 2)
    })
    .await;
    let ids: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&"evt-before".to_owned()) && ids.contains(&"evt-after".to_owned()),
        "{ids:?}"
    );
    let (s, v) = call(
        "GET",
        "/v1/tenants/acme/endpoints".into(),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
    for child in [&mut api, &mut router, &mut worker] {
        assert!(support::terminate(child));
    }
}

/// Config a role refuses to start with: one line naming the key and why, and no secret.
#[test]
fn config_with_an_unknown_key_or_a_bad_server_list_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gancho.toml");
    std::fs::write(&file, "retry_shedule = \"0s,5s\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .arg("router")
        .arg("--config")
        .arg(&file)
        .env("GANCHO_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("retry_shedule"), "{stderr}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .arg("router")
        .env(
            "GANCHO_NATS_URL",
            "nats://127.0.0.1:1,nats://ops:hunter22@127.0.0.1:notaport",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("GANCHO_NATS_URL") && stderr.contains("notaport"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter22"), "{stderr}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .arg("worker")
        .env("GANCHO_NATS_URL", "nats://127.0.0.1:1")
        .env("GANCHO_RESOLVE", "hooks.example.com=not-an-ip")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("invalid resolve entry") && stderr.contains("name=ip"),
        "{stderr}"
    );
}

/// DNS rebinding: a host name that was harmless when the endpoint was created and now answers
/// a private address. The API checks names without resolving them; the worker resolves each
/// connection itself and refuses private answers, so the webhook never reaches the address.
/// `GANCHO_RESOLVE` pins the name to 127.0.0.1 in the worker, so the real guard runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_now_resolves_to_a_private_address_is_refused() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::http(|_, _| gancho_test_harness::Answer::status(200)).await;
    let url = format!("http://rebind.gancho.test:{}/hook", rx.addr().port());
    gancho_core::net::check_endpoint_url(&url, true, false).expect("the API takes the name");
    env.endpoint("acme", "ep", &url, &["charge.*"], &[], Some("0s"))
        .await;
    let pin = ("GANCHO_RESOLVE", "rebind.gancho.test=127.0.0.1");
    let http = ("GANCHO_ALLOW_HTTP_ENDPOINTS", "true");
    let mut router = env.spawn("router");
    let mut worker = env.spawn_with(
        &["worker"],
        &[("GANCHO_ALLOW_PRIVATE_ENDPOINTS", "false"), http, pin],
    );
    env.publish("acme", "charge.paid", "evt-1", b"{}", &[])
        .await;
    wait_until("the attempt", Duration::from_secs(20), || async {
        env.attempts("acme", "ep").await.len() == 1
    })
    .await;
    let a = &env.attempts("acme", "ep").await[0];
    assert_ne!(a.outcome, "success", "{a:?}");
    assert!(a.error.contains("private addresses"), "{a:?}");
    assert_eq!(rx.count(), 0, "the private address was reached");

    // The same pin with private addresses allowed reaches the receiver: it was the guard.
    assert!(support::terminate(&mut worker));
    let mut worker = env.spawn_with(&["worker"], &[http, pin]);
    env.publish("acme", "charge.paid", "evt-2", b"{}", &[])
        .await;
    wait_until("the allowed delivery", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 1)
    })
    .await;
    assert!(support::terminate(&mut worker));
    assert!(support::terminate(&mut router));
}
