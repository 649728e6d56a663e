//! `gancho dev` and the README's "Try it", automated: dev starts its own nats-server under
//! ./.gancho/, saves an admin token, and its demo receiver prints a webhook published with
//! `gancho publish` (which finds dev's NATS by default) with its signature checked. Ctrl-C
//! stops everything, the child nats-server included.
//!
//! Uses the dev ports the README documents (NATS 4222, demo receiver 8099); both are outside
//! the kernel's ephemeral range, so no other test can hold them by chance. A second test
//! holds 4222 and checks that dev then takes a free port.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `gancho dev` in `dir`, finding NATS by itself, with its API and metrics on the given
/// ports, and its stdout line by line.
fn spawn_dev(
    dir: &std::path::Path,
    args: &[&str],
    api_port: u16,
    metrics_port: u16,
) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut dev = Command::new(env!("CARGO_BIN_EXE_gancho"))
        .arg("dev")
        .args(args)
        .current_dir(dir)
        .env_remove("GANCHO_NATS_URL")
        .env_remove("GANCHO_ADMIN_TOKEN")
        .env(
            "GANCHO_NATS_SERVER",
            gancho_test_harness::nats_server_binary(),
        )
        .env("GANCHO_API_LISTEN", format!("127.0.0.1:{api_port}"))
        .env("GANCHO_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(dev.stdout.take().unwrap());
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (dev, lines)
}

/// Ctrl-C to `dev`; its exit status, within 20 s.
fn interrupt(dev: &mut std::process::Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = dev.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "gancho dev did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One dev at a time: the other test holds port 4222.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_the_readme_demo() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let api_port = gancho_test_harness::nats::free_port();
    let metrics_port = gancho_test_harness::nats::free_port();
    let (mut dev, lines) = spawn_dev(dir.path(), &[], api_port, metrics_port);
    let wait_line = |what: &str, pred: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("gancho dev printed no line with {what} within 30 s"),
            }
        }
    };
    wait_line("the banner", &|l| l.contains("gancho dev is running"));
    let portal_prefix = format!("http://127.0.0.1:{api_port}/portal/#t=");
    let portal = wait_line("the portal link", &|l| l.contains(&portal_prefix));
    let api_export = format!("export GANCHO_API_URL=http://127.0.0.1:{api_port} ");
    wait_line("the CLI exports", &|l| l.contains(&api_export));
    // The printed link opens a session of the demo tenant (what the page does with it).
    let link_token = portal
        .split(&portal_prefix)
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (s, v) = support::http(
        "POST",
        &format!("http://127.0.0.1:{api_port}/portal/session"),
        None,
        Some(&serde_json::json!({"token": link_token}).to_string()),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["tenant"].as_str(), Some("demo"), "{v}");
    let token = std::fs::read_to_string(dir.path().join(".gancho/admin-token")).unwrap();
    let token = token.trim();
    assert!(token.len() >= 16);
    assert!(
        dir.path().join(".gancho/nats").is_dir(),
        "NATS data lives under .gancho/"
    );

    // Step 1: a tenant and an endpoint pointing at the demo receiver.
    let api = format!("http://127.0.0.1:{api_port}");
    let (s, v) = support::http(
        "POST",
        &format!("{api}/v1/tenants"),
        Some(token),
        Some(r#"{"id":"acme","name":"Acme Pagamentos"}"#),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = support::http(
        "POST",
        &format!("{api}/v1/tenants/acme/endpoints"),
        Some(token),
        Some(r#"{"url":"http://127.0.0.1:8099/acme","filter_types":["invoice.*"]}"#),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    // Step 2: publish, without saying where NATS is.
    let publish = |ty: &str, id: &str| {
        Command::new(env!("CARGO_BIN_EXE_gancho"))
            .args(["publish", "--tenant", "acme", "--type", ty, "--id", id])
            .args(["--data", r#"{"amount":1990,"currency":"BRL"}"#])
            .env_remove("GANCHO_NATS_URL")
            .output()
            .unwrap()
    };
    let out = publish("charge.paid", "evt-not-matching");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = publish("invoice.paid", "evt-readme-1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Step 3: the demo receiver prints it, signature checked.
    let line = wait_line("the webhook", &|l| l.starts_with("webhook "));
    assert!(
        line.contains("id=evt-readme-1"),
        "only the matching event arrives: {line}"
    );
    assert!(line.contains("signature=valid"), "{line}");
    assert!(
        line.contains(r#""data":{"amount":1990,"currency":"BRL"}"#),
        "{line}"
    );

    // Step 4: over HTTP, with a key that may only publish.
    let (s, v) = support::http(
        "POST",
        &format!("{api}/v1/tenants/acme/api-keys"),
        Some(token),
        Some(r#"{"name":"billing","scopes":["publish"]}"#),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"].as_str().unwrap().to_owned();
    let event = r#"{"id":"inv-2026-0001","type":"invoice.created","data":{"amount":990}}"#;
    let (s, v) = support::http(
        "POST",
        &format!("{api}/v1/tenants/acme/events"),
        Some(&key),
        Some(event),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["duplicate"], false);
    let line = wait_line("the HTTP event", &|l| l.contains("id=inv-2026-0001"));
    assert!(line.contains("signature=valid"), "{line}");
    let (s, v) = support::http(
        "POST",
        &format!("{api}/v1/tenants/acme/events"),
        Some(&key),
        Some(event),
    )
    .await;
    assert_eq!((s, v["duplicate"].as_bool()), (202, Some(true)), "{v}");

    // Ctrl-C: dev drains, exits 0, and its nats-server goes with it.
    let exit = interrupt(&mut dev);
    assert!(exit.success(), "gancho dev exits 0 on Ctrl-C, got {exit}");
    let nats_gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::net::TcpStream::connect("127.0.0.1:4222").is_err()
    });
    assert!(nats_gone, "the child nats-server stopped with gancho dev");
}

/// With port 4222 taken (another NATS, or another `gancho dev`), dev's nats-server takes a
/// free port and says which; `gancho publish` run from the same directory finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_takes_a_free_port_when_4222_is_taken() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Held for the whole test (if something else already holds it, so much the better).
    let _held = std::net::TcpListener::bind("127.0.0.1:4222");
    let dir = tempfile::tempdir().unwrap();
    let api_port = gancho_test_harness::nats::free_port();
    let metrics_port = gancho_test_harness::nats::free_port();
    let demo_port = gancho_test_harness::nats::free_port();
    let demo = format!("127.0.0.1:{demo_port}");
    let (mut dev, lines) = spawn_dev(
        dir.path(),
        &["--demo-listen", &demo],
        api_port,
        metrics_port,
    );
    let mut nats = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(url) = line.trim().strip_prefix("NATS") {
            nats = Some(url.trim().to_owned());
        }
        if line.contains("demo receiver") {
            break;
        }
    }
    let nats = nats.expect("gancho dev printed where its NATS is");
    assert!(
        nats.starts_with("nats://127.0.0.1:") && !nats.ends_with(":4222"),
        "dev's NATS is on another port: {nats}"
    );
    let token = std::fs::read_to_string(dir.path().join(".gancho/admin-token")).unwrap();
    let (s, v) = support::http(
        "POST",
        &format!("http://127.0.0.1:{api_port}/v1/tenants"),
        Some(token.trim()),
        Some(r#"{"id":"acme"}"#),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let out = Command::new(env!("CARGO_BIN_EXE_gancho"))
        .args(["publish", "--tenant", "acme", "--type", "invoice.paid"])
        .args(["--data", r#"{"amount":1}"#])
        .current_dir(dir.path())
        .env_remove("GANCHO_NATS_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gancho publish found dev's NATS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    interrupt(&mut dev);
}
