//! Endpoint filters and transforms in jq, against real roles and real HTTPS receivers: a
//! filter lets through exactly the events it says `true` to; a transform's output is the body,
//! signed as sent; a transform that fails dead-letters that delivery alone (kind
//! `transform`); runaway programs are cut off while the roles go on delivering; and the API
//! refuses programs that do not compile, forbidden functions and a transform on the fixed
//! Open Finance body, at create and at PATCH, and answers `endpoints/try`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Receiver};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";
const EVENTS: usize = 1_000;

/// The `n` of each webhook's standard body.
fn ns(rx: &Receiver) -> BTreeSet<u64> {
    rx.received()
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            v["data"]["n"].as_u64().unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_transforms_shape_what_each_endpoint_gets() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    env.tenant("rogue").await;
    let rx: Vec<Receiver> =
        futures::future::join_all((0..8).map(|_| Receiver::https_sequence(&env.ca, &[200]))).await;
    let [plain, big, shaped, picky, rogue_plain, rogue_filtered, rogue_shaped, _] = &rx[..] else {
        unreachable!()
    };
    let url = |r: &Receiver| r.url("/in");
    env.endpoint("acme", "plain", &url(plain), &[">"], &[], None)
        .await;
    env.endpoint("acme", "big", &url(big), &[">"], &[], None)
        .await;
    env.change("acme", "big", |ep| {
        ep.filter = Some(".data.amount >= 100000".into());
    })
    .await;
    let shaped_ep = env
        .endpoint("acme", "shaped", &url(shaped), &[">"], &[], None)
        .await;
    env.change("acme", "shaped", |ep| {
        ep.transform = Some("{id: .data.charge_id, status: .type}".into());
    })
    .await;
    env.endpoint("acme", "picky", &url(picky), &[">"], &[], Some("0s"))
        .await;
    env.change("acme", "picky", |ep| {
        ep.transform =
            Some(r#"if .data.n % 10 == 0 then error("no tens: \(.data.n)") else . end"#.into());
    })
    .await;
    // Another tenant's runaway programs: each is cut off, this tenant's plain endpoint gets
    // everything, and acme (above) is not slowed or starved.
    env.endpoint("rogue", "plain", &url(rogue_plain), &[">"], &[], None)
        .await;
    let runaway_filters = [
        "def f: f; f",
        "def f: [f]; f",
        "[range(1e9)] | length > 0",
        "[repeat(.)] | length > 0",
    ];
    for (i, program) in runaway_filters.iter().enumerate() {
        let id = format!("loop{i}");
        env.endpoint("rogue", &id, &url(rogue_filtered), &[">"], &[], None)
            .await;
        env.change("rogue", &id, |ep| ep.filter = Some((*program).into()))
            .await;
    }
    env.endpoint(
        "rogue",
        "shaped",
        &url(rogue_shaped),
        &[">"],
        &[],
        Some("0s"),
    )
    .await;
    env.change("rogue", "shaped", |ep| {
        ep.transform = Some("def f: [f]; f".into());
    })
    .await;
    let cancel = env.run_roles(10).await;

    env.publish_many(
        "acme",
        "charge.paid",
        (0..EVENTS).map(|n| {
            let payload = json!({"n": n, "amount": n * 200, "charge_id": format!("ch_{n}")});
            (format!("evt-{n}"), payload.to_string().into_bytes())
        }),
    )
    .await;
    env.publish_many(
        "rogue",
        "charge.paid",
        (0..50).map(|n| (format!("evt-{n}"), json!({"n": n}).to_string().into_bytes())),
    )
    .await;

    let all: BTreeSet<u64> = (0..EVENTS as u64).collect();
    wait_until("every delivery", Duration::from_secs(90), || {
        std::future::ready(
            plain.count() == EVENTS
                && big.count() == EVENTS / 2
                && shaped.count() == EVENTS
                && picky.count() == EVENTS - EVENTS / 10
                && rogue_plain.count() == 50,
        )
    })
    .await;
    assert_eq!(ns(plain), all);
    // The filter: exactly the events of 100,000 and more.
    assert_eq!(ns(big), (EVENTS as u64 / 2..EVENTS as u64).collect());
    // The transform: its output is the body, and the signature covers it.
    let mut ids = BTreeSet::new();
    for r in shaped.received() {
        support::verify(&shaped_ep, &r).unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["status"], "charge.paid", "{v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        ids.insert(v["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), EVENTS);
    // A failing transform: exactly its failures dead-lettered, the rest delivered.
    assert_eq!(
        ns(picky),
        all.iter().copied().filter(|n| n % 10 != 0).collect()
    );
    wait_until("the dead letters", Duration::from_secs(30), || async {
        env.dead_letters().await.len() == EVENTS / 10 + 50
    })
    .await;
    let dead = env.dead_letters().await;
    let picky_dead: Vec<_> = dead
        .iter()
        .filter(|d| d.delivery.as_ref().unwrap().endpoint_id == "picky")
        .collect();
    assert_eq!(picky_dead.len(), EVENTS / 10);
    // Each delivery carries its event's sequence in the events stream, one per event.
    let sequences: BTreeSet<u64> = picky_dead
        .iter()
        .map(|d| d.delivery.as_ref().unwrap().event_sequence)
        .collect();
    assert_eq!(sequences.len(), EVENTS / 10);
    assert!(!sequences.contains(&0));
    for d in &picky_dead {
        assert_eq!(d.kind, "transform");
        let n = d
            .delivery
            .as_ref()
            .unwrap()
            .event_id
            .trim_start_matches("evt-");
        assert!(d.reason.contains(&format!("no tens: {n}")), "{}", d.reason);
    }
    // The runaway transform: every delivery dead-lettered with why, nothing sent.
    let rogue_dead: Vec<_> = dead
        .iter()
        .filter(|d| {
            let d = d.delivery.as_ref().unwrap();
            d.endpoint_id == "shaped" && d.tenant == "rogue"
        })
        .collect();
    assert_eq!(rogue_dead.len(), 50);
    assert!(
        rogue_dead
            .iter()
            .all(|d| d.kind == "transform" && d.reason.contains("cut off")),
        "{:?}",
        rogue_dead[0].reason
    );
    assert_eq!(rogue_shaped.count(), 0);
    // The runaway filters matched nothing.
    assert_eq!(rogue_filtered.count(), 0);
    // No attempt was spent on a failed transform.
    assert!(env
        .attempts("acme", "picky")
        .await
        .iter()
        .all(|a| a.status == 200));

    // A replay applies the filter as the router does: the 500 it lets through again.
    let (mut api, base) = env.spawn_api(TOKEN).await;
    let (s, job) = call(
        &base,
        "POST",
        "/endpoints/big/replay",
        Some(json!({"since": "2020-01-01T00:00:00Z", "pace": 1000})),
    )
    .await;
    assert_eq!(s, 202, "{job}");
    let path = format!("/jobs/{}", job["id"].as_str().unwrap());
    wait_until("the replay", Duration::from_secs(60), || async {
        call(&base, "GET", &path, None).await.1["state"] == "done"
    })
    .await;
    let (_, job) = call(&base, "GET", &path, None).await;
    assert_eq!(job["sent"], EVENTS / 2, "{job}");
    wait_until("the replayed events", Duration::from_secs(30), || {
        std::future::ready(big.count() == EVENTS)
    })
    .await;
    assert_eq!(ns(big), (EVENTS as u64 / 2..EVENTS as u64).collect());
    support::kill9(&mut api);
    cancel.cancel();
}

/// `path` under acme's routes, as the admin.
async fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    support::TenantsApi::new(base, TOKEN)
        .call(method, format!("/acme{path}"), body)
        .await
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_checks_programs_and_tries_them() {
    let env = support::Env::new().await;
    let (mut api, base) = env.spawn_api(TOKEN).await;
    env.tenant("acme").await;
    let url = "https://hooks.example.com/in";

    // A program that does not compile: 422 with what and where, at create and at PATCH.
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints",
        Some(json!({"url": url, "filter": ".data |\n  nosuch(1)"})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        message(&v).contains("filter: undefined filter `nosuch` at line 2, column 3"),
        "{v}"
    );
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints",
        Some(json!({"url": url, "transform": "{a: "})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).starts_with("transform: expected"), "{v}");
    // Each forbidden function, refused with why.
    for (name, code) in [
        ("env", "env.GANCHO_ADMIN_TOKEN"),
        ("$ENV", "$ENV.GANCHO_ENCRYPTION_KEY"),
        ("halt", "halt"),
        ("halt_error", "halt_error"),
        ("input", "input"),
        ("inputs", "[inputs]"),
        ("debug", ". | debug"),
        ("stderr", "stderr"),
        ("now", "now > 0"),
        ("localtime", "0 | localtime"),
        ("strflocaltime", r#"0 | strflocaltime("%H")"#),
        ("import", r#"import "m" as m; ."#),
        ("include", r#"include "m"; ."#),
    ] {
        let (s, v) = call(
            &base,
            "POST",
            "/endpoints",
            Some(json!({"url": url, "filter": code})),
        )
        .await;
        assert_eq!(s, 422, "{code}: {v}");
        let m = message(&v);
        assert!(
            m.contains("not available")
                && (m.contains(&format!("`{name}`")) || name.starts_with('i')),
            "{code}: {v}"
        );
    }
    // 4 KiB of `[`: refused before it is parsed.
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints",
        Some(json!({"url": url, "filter": "[".repeat(4096)})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).contains("deeper than 64"), "{v}");
    // Too long.
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints",
        Some(json!({"url": url, "filter": ".".repeat(5000)})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).contains("at most 4096"), "{v}");
    // The id `try` is the route's.
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints",
        Some(json!({"id": "try", "url": url})),
    )
    .await;
    assert_eq!(s, 422, "{v}");

    // During an upgrade: a worker of a version without programs is alive (its key says only
    // the time), so programs are refused until it is gone; one that says `jq` is fine.
    env.layout
        .workers
        .put("w-old", "1764800000".into())
        .await
        .unwrap();
    env.layout
        .routers
        .put("r-new", "1764800000 jq".into())
        .await
        .unwrap();
    let with_filter = json!({"id": "e1", "url": url, "filter": ".data.amount >= 100000",
                             "transform": "{id: .data.charge_id, status: .type}"});
    let (s, v) = call(&base, "POST", "/endpoints", Some(with_filter.clone())).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        message(&v).contains("1 of the workers alive run an older one"),
        "{v}"
    );
    env.layout.workers.delete("w-old").await.unwrap();

    // Stored and shown; PATCH changes and removes them.
    let (s, v) = call(&base, "POST", "/endpoints", Some(with_filter)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["filter"], ".data.amount >= 100000");
    let (s, v) = call(
        &base,
        "PATCH",
        "/endpoints/e1",
        Some(json!({"filter": "now"})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).contains("`now`"), "{v}");
    let (s, v) = call(
        &base,
        "PATCH",
        "/endpoints/e1",
        Some(json!({"transform": "{a: }"})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).starts_with("transform: expected"), "{v}");
    let (s, v) = call(
        &base,
        "PATCH",
        "/endpoints/e1",
        Some(json!({"filter": null, "transform": ".data"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("filter").is_none(), "{v}");
    assert_eq!(v["transform"], ".data");
    let (_, v) = call(&base, "GET", "/endpoints/e1", None).await;
    assert_eq!(v["transform"], ".data");
    // A transform on the fixed Open Finance body.
    let (s, v) = call(
        &base,
        "PATCH",
        "/endpoints/e1",
        Some(json!({"profile": "openfinance-br"})),
    )
    .await;
    assert_eq!(s, 422, "{v}");

    // Try: the filter's verdict and the transform's body, nothing stored.
    let event = json!({"type": "charge.paid", "data": {"charge_id": "ch_9", "amount": 150000}});
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints/try",
        Some(json!({"filter": ".data.amount >= 100000",
                    "transform": "{id: .data.charge_id, status: .type}", "event": event})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["filter"], json!({"matches": true}));
    assert_eq!(
        v["transform"]["body"],
        json!({"id": "ch_9", "status": "charge.paid"})
    );
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints/try",
        Some(json!({"filter": "def f: f; f", "transform": "error(\"no\")", "event": event})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["filter"]["matches"], false);
    assert!(
        v["filter"]["error"].as_str().unwrap().contains("cut off"),
        "{v}"
    );
    assert_eq!(v["transform"]["error"], "no");
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints/try",
        Some(json!({"filter": "(", "event": event})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = call(
        &base,
        "POST",
        "/endpoints/try",
        Some(json!({"event": event})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    support::kill9(&mut api);
}
