//! The binary's command line: invalid configuration stops start-up with one line naming the
//! key (exit 64), and `gancho publish` + `gancho sink` work against a real server.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use std::process::Command;

fn gancho() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gancho"))
}

#[test]
fn bad_config_exits_64_with_one_line() {
    // Portal logos: an SVG with a script, one with an event handler, a file that is neither.
    let dir = std::env::temp_dir().join(format!("gancho-logos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let logo = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let scripted = logo(
        "scripted.svg",
        r#"<svg xmlns="http://www.w3.org/2000/svg"><script>fetch('/v1')</script></svg>"#,
    );
    let handler = logo(
        "handler.svg",
        r#"<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect/></svg>"#,
    );
    let text = logo("logo.txt", "ACME");
    let logos = [
        (scripted.as_str(), "the SVG holds a script; remove it"),
        (handler.as_str(), "the SVG holds an event handler (onload=)"),
        (text.as_str(), "neither a PNG nor an SVG"),
        ("/nonexistent/logo.svg", "cannot read it"),
    ];
    let cases = [
        (
            "GANCHO_RETRY_SCHEDULE",
            "0s,5x",
            "invalid retry_schedule \"0s,5x\"",
        ),
        ("GANCHO_STREAM_REPLICAS", "zero", "invalid stream_replicas"),
        ("GANCHO_API_LISTEN", "localhost", "invalid api_listen"),
        ("GANCHO_SUBJECT_PREFIX", "a.b", "invalid subject_prefix"),
        ("GANCHO_DUPLICATE_WINDOW", "0s", "invalid duplicate_window"),
        (
            "GANCHO_PORTAL_PUBLIC_URL",
            "hooks.example.com",
            "invalid portal_public_url \"hooks.example.com\"",
        ),
        ("GANCHO_SHUTDOWN_GRACE", "forever", "invalid shutdown_grace"),
        (
            "GANCHO_LOG_FORMAT",
            "xml",
            "invalid log_format \"xml\": expected text or json",
        ),
        (
            "GANCHO_DELIVERIES_MAX_BYTES",
            "lots",
            "invalid deliveries_max_bytes \"lots\": expected a size like 512MiB",
        ),
        (
            "GANCHO_ENCRYPTION_KEY",
            "c2hvcnQ=",
            "GANCHO_ENCRYPTION_KEY must be 32 random bytes in base64",
        ),
        ("GANCHO_TRACE_QUEUE", "none", "invalid trace_queue"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "collector:4318",
            "OTEL_EXPORTER_OTLP_ENDPOINT: \"collector:4318\" is not an http:// or https:// URL",
        ),
        (
            "GANCHO_PORTAL_ACCENT",
            "blue",
            "invalid portal_accent \"blue\": a colour as #rrggbb",
        ),
        (
            "GANCHO_PORTAL_ACCENT",
            "#ffe066",
            "invalid portal_accent #ffe066: too light to read on white",
        ),
        (
            "GANCHO_PORTAL_TITLE",
            "Acme\u{7}",
            "invalid portal_title: at most 60 characters, no control characters",
        ),
    ];
    let logo_cases = logos
        .iter()
        .map(|(path, want)| ("GANCHO_PORTAL_LOGO", *path, *want));
    for (key, value, want) in cases.into_iter().chain(logo_cases) {
        let out = gancho()
            .arg("router")
            .env("GANCHO_NATS_URL", "nats://127.0.0.1:1")
            .env(key, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{key}={value}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(want), "{key}={value}: {stderr}");
        if key.contains("KEY") {
            assert!(!stderr.contains(value), "a key is never echoed: {stderr}");
        }
        if key == "GANCHO_PORTAL_LOGO" {
            assert!(stderr.contains("invalid portal_logo"), "{stderr}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // Without a key the worker and the api refuse to start; `gancho keygen` prints one.
    let out = gancho()
        .arg("worker")
        .env("GANCHO_NATS_URL", "nats://127.0.0.1:1")
        .env_remove("GANCHO_ENCRYPTION_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GANCHO_ENCRYPTION_KEY") && stderr.contains("gancho keygen"),
        "{stderr}"
    );
    let out = gancho().arg("keygen").output().unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert_eq!(key.lines().count(), 1);
    assert!(
        gancho_store::Keyring::new(key.trim(), None).is_ok(),
        "{key}"
    );
    let out = gancho()
        .arg("worker")
        .env_remove("GANCHO_NATS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GANCHO_NATS_URL"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gancho.toml");
    std::fs::write(&file, "stream_replicas = \"three\"\n").unwrap();
    let out = gancho()
        .arg("router")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("stream_replicas"), "{stderr}");
}

#[tokio::test]
async fn the_api_refuses_to_start_without_an_admin_token() {
    let env = support::Env::new().await;
    let out = gancho()
        .arg("api")
        .env("GANCHO_NATS_URL", env.nats.url())
        .env("GANCHO_ENCRYPTION_KEY", &env.key)
        .env("GANCHO_METRICS_LISTEN", "127.0.0.1:0")
        .env_remove("GANCHO_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing admin_token: set GANCHO_ADMIN_TOKEN"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_the_sink_with_a_valid_signature() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let port = gancho_test_harness::nats::free_port();
    let ep = env
        .endpoint(
            "acme",
            "ep1",
            &format!("http://127.0.0.1:{port}/in"),
            &["invoice.*"],
            &[],
            None,
        )
        .await;
    let sink = gancho()
        .args([
            "sink",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--secret",
            &ep.secret,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut sink = Guard(sink);
    let mut router = Guard(env.spawn("router"));
    let metrics_port = gancho_test_harness::nats::free_port();
    let mut worker = Guard(
        Command::new(env!("CARGO_BIN_EXE_gancho"))
            .arg("worker")
            .env("GANCHO_NATS_URL", env.nats.url())
            .env("GANCHO_ENCRYPTION_KEY", &env.key)
            .env("GANCHO_ALLOW_PRIVATE_ENDPOINTS", "true")
            .env("GANCHO_ALLOW_HTTP_ENDPOINTS", "true")
            .env("GANCHO_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let out = gancho()
        .args([
            "publish",
            "--tenant",
            "acme",
            "--type",
            "invoice.paid",
            "--id",
            "evt-cli-1",
            "--data",
            r#"{"amount":1990}"#,
        ])
        .env("GANCHO_NATS_URL", env.nats.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("published evt-cli-1"));

    let bad = gancho()
        .args([
            "publish",
            "--tenant",
            "acme",
            "--type",
            "invoice.paid",
            "--data",
            "amount=1",
        ])
        .env("GANCHO_NATS_URL", env.nats.url())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a JSON document"));

    // The sink prints one line per webhook; read until ours shows up.
    use std::io::BufRead;
    let stdout = sink.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("evt-cli-1"))
    });
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), line)
        .await
        .expect("the sink printed the webhook within 30 s")
        .unwrap()
        .unwrap();
    assert!(line.contains("signature=valid"), "{line}");
    assert!(line.contains("type=invoice.paid"), "{line}");

    // The worker's /metrics counts the attempt by outcome.
    let metrics_url = format!("127.0.0.1:{metrics_port}");
    let mut metrics = String::new();
    gancho_test_harness::wait_until(
        "the success in /metrics",
        std::time::Duration::from_secs(10),
        || {
            let url = metrics_url.clone();
            let got = support::http_get(&url, "/metrics");
            metrics = got.clone();
            std::future::ready(
                got.contains(
                    "gancho_delivery_attempts_total{outcome=\"success\",class=\"2xx\",tenant=\"other\"} 1",
                ),
            )
        },
    )
    .await;
    assert!(
        metrics.contains("gancho_delivery_attempt_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(support::http_get(&metrics_url, "/readyz").contains("ready"));

    // SIGTERM drains and exits cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = worker.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not stop on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        exit.success(),
        "the worker exits 0 after a drain, got {exit}"
    );
    router.kill();
}

/// A blocking HTTP/1.1 GET; the body, or "" when nothing answers.
struct Guard(std::process::Child);
impl Guard {
    fn kill(&mut self) {
        support::kill9(&mut self.0);
    }
}
impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `gancho <args>` against `api` with `token`; (exit success, stdout, stderr).
fn manage(api: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gancho"))
        .args(args)
        .env("GANCHO_API_URL", api)
        .env("GANCHO_TOKEN", token)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_tenants_keys_and_endpoints() {
    let env = support::Env::new().await;
    let admin = "cli-admin-token-0123456789";
    let (child, api) = env.spawn_api(admin).await;
    let _api = Guard(child);

    let (ok, out, err) = manage(
        &api,
        admin,
        &["tenants", "create", "acme", "--name", "Acme Pagamentos"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("Acme Pagamentos"), "{out}");
    let (ok, out, _) = manage(&api, admin, &["tenants", "list"]);
    assert!(ok && out.starts_with("ID") && out.contains("acme"), "{out}");

    // A tenant key, as a script would take it.
    let (ok, out, err) = manage(
        &api,
        admin,
        &[
            "api-keys", "create", "--tenant", "acme", "--name", "billing", "--scopes", "manage",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let key: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let key = key["key"].as_str().unwrap().to_owned();

    // The tenant key manages endpoints.
    let (ok, out, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "create",
            "--tenant",
            "acme",
            "--url",
            "https://hooks.example.com/a",
            "--type",
            "invoice.*",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let ep: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let id = ep["id"].as_str().unwrap().to_owned();
    assert!(ep["secret"].as_str().unwrap().starts_with("whsec_"));
    let (ok, out, _) = manage(&api, &key, &["endpoints", "list", "--tenant", "acme"]);
    assert!(
        ok && out.contains(&id) && out.contains("invoice.*"),
        "{out}"
    );

    // jq programs: a filter and a transform set, shown, tried and removed.
    let (ok, out, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "update",
            "--tenant",
            "acme",
            &id,
            "--filter",
            ".data.amount >= 100000",
            "--transform",
            "{id: .data.charge_id}",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let ep: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ep["filter"], ".data.amount >= 100000");
    let event = r#"{"type": "charge.paid", "data": {"amount": 150000, "charge_id": "ch_1"}}"#;
    let (ok, out, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "try",
            "--tenant",
            "acme",
            "--filter",
            ".data.amount >= 100000",
            "--transform",
            "{id: .data.charge_id}",
            "--event",
            event,
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("filter     matches"), "{out}");
    assert!(out.contains(r#"transform  {"id":"ch_1"}"#), "{out}");
    // Ordered delivery per key, then a pointer that is not one: the API's message.
    let (ok, out, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "update",
            "--tenant",
            "acme",
            &id,
            "--ordering",
            "key",
            "--ordering-key",
            "/charge_id",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let ep: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (ep["ordering"].as_str(), ep["ordering_key"].as_str()),
        (Some("key"), Some("/charge_id"))
    );
    let (ok, _, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "update",
            "--tenant",
            "acme",
            &id,
            "--ordering-key",
            "charge_id",
        ],
    );
    assert!(!ok && err.contains("is not a JSON Pointer"), "{err}");
    let (ok, _, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "update",
            "--tenant",
            "acme",
            &id,
            "--ordering",
            "none",
        ],
    );
    assert!(ok, "{err}");
    // Trace context for the receiver, on and off.
    for on in ["true", "false"] {
        let (ok, out, err) = manage(
            &api,
            &key,
            &[
                "endpoints",
                "update",
                "--tenant",
                "acme",
                &id,
                "--trace-context",
                on,
                "--json",
            ],
        );
        assert!(ok, "{err}");
        let ep: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(ep["trace_context"].to_string(), on, "{ep}");
    }
    // An event type given to --filter, its meaning before jq: pointed at --type.
    let (ok, _, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "update",
            "--tenant",
            "acme",
            &id,
            "--filter",
            "invoice.*",
        ],
    );
    assert!(!ok && err.contains("--type \"invoice.*\""), "{err}");
    // A program that does not compile: the API's message.
    let (ok, _, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "update",
            "--tenant",
            "acme",
            &id,
            "--filter",
            ".a | now",
        ],
    );
    assert!(!ok && err.contains("`now`"), "{err}");
    let (ok, out, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "update",
            "--tenant",
            "acme",
            &id,
            "--no-filter",
            "--no-transform",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let ep: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        ep.get("filter").is_none() && ep.get("transform").is_none(),
        "{ep}"
    );
    let (ok, out, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "update",
            "--tenant",
            "acme",
            &id,
            "--description",
            "billing hooks",
        ],
    );
    assert!(ok && out.contains("billing hooks"), "{out}{err}");
    let (ok, out, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "rotate",
            "--tenant",
            "acme",
            &id,
            "--grace",
            "1h",
        ],
    );
    assert!(ok && out.contains("whsec_"), "{out}{err}");

    // Errors print the API's message and exit non-zero.
    let (ok, _, err) = manage(&api, &key, &["tenants", "list"]);
    assert!(
        !ok && err.contains("403") && err.contains("admin token"),
        "{err}"
    );
    let (ok, _, err) = manage(
        &api,
        &key,
        &[
            "endpoints",
            "create",
            "--tenant",
            "acme",
            "--url",
            "ftp://x",
        ],
    );
    assert!(!ok && err.contains("https://"), "{err}");

    let (ok, out, _) = manage(
        &api,
        &key,
        &["endpoints", "delete", "--tenant", "acme", &id],
    );
    assert!(ok && out.contains("Deleted"), "{out}");
    let (ok, out, _) = manage(&api, admin, &["api-keys", "list", "--tenant", "acme"]);
    assert!(
        ok && out.contains("billing") && out.contains("manage"),
        "{out}"
    );

    // Every subcommand explains itself with an example.
    for args in [
        vec!["tenants", "create", "--help"],
        vec!["api-keys", "create", "--help"],
        vec!["endpoints", "rotate", "--help"],
    ] {
        let (ok, out, _) = manage(&api, admin, &args);
        assert!(ok && out.contains("Example: gancho"), "{args:?}: {out}");
    }
}

/// Each command's help lists the options it reads: the client commands none of the roles'
/// settings, `publish` only where NATS is, and `bench` the roles' settings under a heading of
/// their own (it passes them to the processes it starts).
#[test]
fn each_command_shows_the_options_it_reads() {
    let help = |args: &[&str]| {
        let out = gancho().args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let role_settings = [
        "--nats-url",
        "--encryption-key",
        "--subject-prefix",
        "--worker-concurrency",
    ];
    for client in [
        &["endpoints"][..],
        &["endpoints", "create"],
        &["tenants", "list"],
        &["attempts"],
        &["dead-letters"],
        &["jobs"],
        &["events"],
        &["keygen"],
        &["openapi"],
        &["sink"],
    ] {
        let text = help(client);
        for flag in role_settings {
            assert!(
                !text.contains(flag),
                "`gancho {}` lists {flag}:\n{text}",
                client.join(" ")
            );
        }
    }
    let publish = help(&["publish"]);
    assert!(
        publish.contains("--nats-url") && publish.contains("--subject-prefix"),
        "{publish}"
    );
    assert!(!publish.contains("--encryption-key"), "{publish}");
    for role in ["router", "worker", "api", "dev"] {
        let text = help(&[role]);
        for flag in role_settings {
            assert!(text.contains(flag), "`gancho {role}` lacks {flag}:\n{text}");
        }
    }
    let bench = help(&["bench"]);
    let heading = bench
        .find("Settings of the roles it starts:")
        .unwrap_or_else(|| panic!("{bench}"));
    assert!(bench[..heading].contains("--endpoints"), "{bench}");
    assert!(bench[heading..].contains("--worker-concurrency"), "{bench}");
    assert!(
        !bench[..heading].contains("--worker-concurrency"),
        "{bench}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let env = support::Env::new().await;
    let mut router = env
        .command(
            &["router"],
            &[("GANCHO_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = router.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("gancho started"))
    })
    .await
    .unwrap()
    .expect("the start-up line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["message"], "gancho started.", "{line}");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["role"], "router");
    support::terminate(&mut router);
}

/// Runs `gancho bench <args> --json` to the end and returns its report.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = gancho()
        .arg("bench")
        .args(args)
        .arg("--json")
        .env(
            "GANCHO_NATS_SERVER",
            gancho_test_harness::nats_server_binary(),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `gancho bench <args>` stops at once with `message` on stderr.
fn bench_refuses(args: &[&str], message: &str) {
    let out = gancho().arg("bench").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(message), "{stderr}");
}

/// The processes a bench report accounts for, in its order.
fn process_names(report: &serde_json::Value) -> Vec<String> {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `gancho bench --floor`: each event is stored once and read back, each delivery message
/// gancho would write for it (one per partition of its endpoints) is stored and read back,
/// the sink gets every request once (a record whose PubAck failed would fail the run), and
/// the report splits the CPU between the client, nats-server and the sink. 2,000 deliveries: with 200, the three processes' CPU could all stay under the
/// kernel's 10 ms accounting tick, and a run measured as costing nothing has no ceiling.
#[test]
fn bench_floor_measures_without_gancho() {
    let r = bench_json(&["--floor", "--endpoints", "4", "--events", "500"]);
    assert_eq!(r["deliveries"], 2000, "{r}");
    assert_eq!(r["received"], 2000, "{r}");
    assert_eq!(r["events_stored"], 500, "{r}");
    let per_event = r["delivery_messages_per_event"].as_u64().unwrap();
    assert!((1..=4).contains(&per_event), "{r}");
    assert_eq!(r["delivery_messages_stored"], 500 * per_event, "{r}");
    assert_eq!(process_names(&r), ["client", "nats-server", "sink"], "{r}");
    assert!(r["ceiling_per_s"].as_f64().unwrap() > 0.0, "{r}");
    // It measures the floor alone: a flag that only means something to gancho's run is refused.
    bench_refuses(&["--floor", "--rate", "10"], "cannot be used with");
}

/// `gancho bench --compare OLD`: alternating rounds of two builds' roles (here the same
/// binary twice, as a build of another commit is not at hand), each process's CPU per delivery
/// over the sink's per round and as medians with the change.
#[test]
fn bench_compares_two_builds_in_alternating_rounds() {
    let exe = env!("CARGO_BIN_EXE_gancho");
    let r = bench_json(&[
        "--compare",
        exe,
        "--rounds",
        "2",
        "--endpoints",
        "2",
        "--events",
        "100",
    ]);
    let runs = r["rounds"].as_array().unwrap();
    let order: Vec<&str> = runs.iter().map(|x| x["build"].as_str().unwrap()).collect();
    assert_eq!(order, ["old", "new", "new", "old"], "{r}");
    assert!(runs.iter().all(|x| x["duplicates"] == 0), "{r}");
    let worker = r["medians"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["what"] == "worker-1 CPU / sink CPU")
        .unwrap_or_else(|| panic!("no worker row: {r}"));
    for build in ["old", "new"] {
        assert!(worker[build].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(worker["change"].is_number(), "{r}");
    bench_refuses(
        &["--compare", "/nonexistent/gancho"],
        "--compare: no binary at /nonexistent/gancho",
    );
    bench_refuses(&["--compare", exe, "--floor"], "cannot be used with");
}

/// `gancho bench --compare-floor`: at each fan-out, the floor and gancho in alternating
/// rounds on the same deliveries, with gancho's CPU per delivery over the floor's in all and
/// per process.
#[test]
fn bench_compares_gancho_with_its_floor_at_each_fan_out() {
    let r = bench_json(&[
        "--compare-floor",
        "--fan-outs",
        "1,4",
        "--deliveries",
        "2000",
        "--rounds",
        "2",
    ]);
    let scenarios = r["scenarios"].as_array().unwrap();
    let shapes: Vec<(u64, u64)> = scenarios
        .iter()
        .map(|s| {
            (
                s["fan_out"].as_u64().unwrap(),
                s["events"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shapes, [(1, 2000), (4, 500)], "{r}");
    for s in scenarios {
        let rounds = s["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{r}");
        for round in rounds {
            assert_eq!(round["duplicates"], 0, "{r}");
            for side in ["floor_us", "gancho_us"] {
                assert!(round[side]["all"].as_f64().unwrap() > 0.0, "{r}");
            }
            // The floor's client stands in for gancho's roles; both have a nats-server and a sink.
            assert!(round["floor_us"]["client"].as_f64().unwrap() > 0.0, "{r}");
            assert!(round["gancho_us"]["workers"].as_f64().unwrap() > 0.0, "{r}");
        }
        for k in [
            "all",
            "roles / client",
            "worker / client",
            "nats-server",
            "sink",
        ] {
            assert!(s["medians"][k].as_f64().unwrap() > 0.0, "{k}: {r}");
        }
    }
    bench_refuses(
        &["--compare-floor", "--fan-outs", "0"],
        "--fan-outs: 0 is not from 1 to --deliveries",
    );
    bench_refuses(&["--compare-floor", "--rate", "10"], "cannot be used with");
    bench_refuses(&["--deliveries", "10"], "--compare-floor");
}

/// `gancho bench --nats-url` runs on an existing server (here a 3-node cluster, streams with 3
/// replicas) under a subject prefix of its own, reports the replication, and deletes its
/// streams and buckets afterwards, leaving what was there before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_on_an_existing_cluster_and_cleans_up() {
    use futures::TryStreamExt as _;
    let cluster = gancho_test_harness::nats::NatsCluster::start();
    let client = cluster.connect().await;
    cluster.wait_for_jetstream(&client).await;
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "THEIRS".into(),
        subjects: vec!["theirs.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let url = cluster.urls();
    let r = bench_json(&[
        "--nats-url",
        &url,
        "--stream-replicas",
        "3",
        "--endpoints",
        "2",
        "--events",
        "100",
        "--timeout",
        "60s",
    ]);
    assert_eq!(r["deliveries"], 200, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["cluster"]["replicas"], 3, "{r}");
    assert_eq!(
        r["cluster"]["peers"].as_array().map(Vec::len),
        Some(2),
        "{r}"
    );
    assert!(
        !process_names(&r).contains(&"nats-server".to_owned()),
        "no nats-server of its own: {r}"
    );
    let streams: Vec<String> = js.stream_names().try_collect().await.unwrap();
    assert_eq!(streams, ["THEIRS"], "only what was there before is left");
    bench_refuses(&["--nats-url", &url, "--floor"], "leave out --nats-url");
}

/// `gancho bench` on a small run: every process of its own, two workers, a dead endpoint;
/// the report counts exactly the healthy deliveries, none twice, with latencies and the usage
/// of every process.
#[test]
fn bench_reports_a_small_run() {
    let r = bench_json(&[
        "--endpoints",
        "5",
        "--events",
        "200",
        "--dead-share",
        "0.2",
        "--workers",
        "2",
        "--worker-concurrency",
        "64",
    ]);
    assert_eq!(r["dead_endpoints"], 1, "{r}");
    assert_eq!(r["deliveries"], 800, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    // A shared flag on bench's command line reaches the processes it starts.
    assert_eq!(r["settings"]["GANCHO_WORKER_CONCURRENCY"], "64", "{r}");
    assert!(r["deliveries_per_s"].as_f64().unwrap() > 0.0, "{r}");
    let p50 = r["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = r["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{r}");
    assert_eq!(
        process_names(&r),
        [
            "nats-server",
            "sink",
            "api",
            "router",
            "worker-1",
            "worker-2"
        ]
    );
    assert!(r["processes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["peak_rss_mib"].as_f64().unwrap() > 0.0));
    // Bad arguments say what to fix.
    bench_refuses(
        &["--subject-prefix", "mine"],
        "sets --subject-prefix itself",
    );
    bench_refuses(
        &["--dead-share", "1.5"],
        "--dead-share must be from 0 to 0.9",
    );
}

/// Every role runs without transparent huge pages, unless `MIMALLOC_ALLOW_THP` chooses: with
/// them, the memory a backlog took stays resident in 2 MiB pages after it is freed
/// (RELIABILITY.md, "What a backlog leaves").
#[test]
fn roles_run_without_transparent_huge_pages_unless_told() {
    use std::io::BufRead;
    for (allow, expected) in [(None, "0"), (Some("1"), "1")] {
        let mut cmd = gancho();
        cmd.args(["sink", "--listen", "127.0.0.1:0", "--quiet"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        match allow {
            Some(v) => cmd.env("MIMALLOC_ALLOW_THP", v),
            None => cmd.env_remove("MIMALLOC_ALLOW_THP"),
        };
        let mut sink = cmd.spawn().unwrap();
        // Up once it says where it listens (its output goes to stdout or stderr).
        let out = sink.stdout.take().unwrap();
        let err = sink.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if line.contains("listening on") {
                        let _ = tx.send(());
                    }
                }
            });
        }
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the sink says where it listens");
        let status = std::fs::read_to_string(format!("/proc/{}/status", sink.id())).unwrap();
        let thp = status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(str::trim)
            .unwrap_or_else(|| {
                panic!("this kernel's /proc/<pid>/status has no THP_enabled line to check")
            });
        assert_eq!(thp, expected, "MIMALLOC_ALLOW_THP={allow:?}");
        sink.kill().unwrap();
        sink.wait().unwrap();
    }
}
