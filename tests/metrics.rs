//! What the roles export, read as Prometheus reads it: api, router and worker run as
//! separate processes; after a pipeline run their counters equal what the receiver saw,
//! every gancho metric has HELP and TYPE, and many tenants and endpoints add no series.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{nats::free_port, wait_until, Answer, Receiver};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

/// The sum of every series of `family` whose labels include each of `labels`.
fn sum(page: &str, family: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            (name == family && labels.iter().all(|p| series.contains(p)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The series names (with labels) of a page.
fn series(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect()
}

/// The body of `/metrics` (without the HTTP head).
fn scrape(port: u16) -> String {
    let raw = support::http_get(&format!("127.0.0.1:{port}"), "/metrics");
    raw.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_receiver_and_every_metric_is_described() {
    const NATS_EVENTS: usize = 200;
    const HTTP_EVENTS: usize = 50;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(200)).await;
    env.endpoint("acme", "ep1", &rx.url("/hook"), &[], &[], None)
        .await;
    // A jq filter that fails on every event: it matches none, and each failure is counted.
    env.endpoint("acme", "ep2", &rx.url("/never"), &[], &[], None)
        .await;
    env.change("acme", "ep2", |ep| {
        ep.filter = Some(r#"error("boom")"#.into())
    })
    .await;
    let (m_router, m_worker, m_api) = (free_port(), free_port(), free_port());
    let listen = |p: u16| format!("127.0.0.1:{p}");
    let (mut api, base) = env
        .spawn_api_with(TOKEN, &[("GANCHO_METRICS_LISTEN", &listen(m_api))])
        .await;
    // t007 (created below) gets series of its own; acme and the rest count as `other`.
    let listed = ("GANCHO_METRICS_TENANTS", "t007");
    let mut router = env.spawn_with(
        &["router"],
        &[("GANCHO_METRICS_LISTEN", &listen(m_router)), listed],
    );
    let mut worker = env.spawn_with(
        &["worker"],
        &[("GANCHO_METRICS_LISTEN", &listen(m_worker)), listed],
    );

    env.publish_many(
        "acme",
        "charge.paid",
        (0..NATS_EVENTS).map(|i| (format!("nats-{i}"), b"{}".to_vec())),
    )
    .await;
    let events: Vec<_> = (0..HTTP_EVENTS)
        .map(|i| json!({"id": format!("http-{i}"), "type": "charge.paid", "data": {}}))
        .collect();
    let (s, v) = support::http(
        "POST",
        &format!("{base}/v1/tenants/acme/events/batch"),
        Some(TOKEN),
        Some(&json!({ "events": events }).to_string()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let total = NATS_EVENTS + HTTP_EVENTS;
    wait_until("every event delivered", Duration::from_secs(60), || {
        std::future::ready(rx.count() == total)
    })
    .await;
    // The gauges and counters are sampled or written a moment after the work.
    wait_until("the worker's counters", Duration::from_secs(15), || {
        let w = scrape(m_worker);
        std::future::ready(sum(&w, "gancho_delivery_attempts_total", &[]) as usize == total)
    })
    .await;

    let (r, w, a) = (scrape(m_router), scrape(m_worker), scrape(m_api));
    assert_eq!(
        sum(
            &r,
            "gancho_events_received_total",
            &["path=\"nats\"", "tenant=\"other\""]
        ) as usize,
        NATS_EVENTS
    );
    assert_eq!(
        sum(&r, "gancho_events_received_total", &["path=\"http\""]) as usize,
        HTTP_EVENTS
    );
    assert_eq!(
        sum(&r, "gancho_router_deliveries_created_total", &[]) as usize,
        total
    );
    assert_eq!(
        sum(
            &r,
            "gancho_filter_failures_total",
            &["reason=\"error\"", "role=\"router\""]
        ) as usize,
        total,
        "each event's failed filter"
    );
    assert_eq!(
        sum(
            &w,
            "gancho_delivery_attempts_total",
            &["outcome=\"success\"", "class=\"2xx\""]
        ) as usize,
        rx.count(),
        "the worker counts what the receiver got"
    );
    for (role, page) in [("router", &r), ("worker", &w), ("api", &a)] {
        assert!(
            sum(page, "gancho_process_resident_memory_bytes", &[]) > 0.0,
            "{role}"
        );
        assert_eq!(sum(page, "gancho_build_info", &[]), 1.0, "{role}");
        // Every gancho family has HELP and TYPE.
        let families: BTreeSet<&str> = page
            .lines()
            .filter(|l| l.starts_with("gancho_"))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(|n| {
                n.trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count")
            })
            .collect();
        assert!(!families.is_empty(), "{role}");
        for f in families {
            assert!(
                page.contains(&format!("# HELP {f} ")),
                "{role}: no HELP for {f}"
            );
            assert!(
                page.contains(&format!("# TYPE {f} ")),
                "{role}: no TYPE for {f}"
            );
        }
    }

    // A config change reaches every role, and each says how long it took.
    env.change("acme", "ep1", |ep| ep.description = "changed".into())
        .await;
    for (role, port) in [("router", m_router), ("worker", m_worker), ("api", m_api)] {
        let lag = "gancho_config_change_lag_seconds";
        wait_until(
            &format!("the {role}'s config change"),
            Duration::from_secs(10),
            || {
                let page = scrape(port);
                std::future::ready(sum(&page, &format!("{lag}_count"), &[]) >= 1.0)
            },
        )
        .await;
        let page = scrape(port);
        let seconds =
            sum(&page, &format!("{lag}_sum"), &[]) / sum(&page, &format!("{lag}_count"), &[]);
        assert!(
            (0.0..2.0).contains(&seconds),
            "{role}: a config change took {seconds} s to arrive, by its own measure"
        );
    }

    // 100 tenants with 10 endpoints each, and an event for each tenant: the only new series
    // are the listed tenant's, since no other label comes from a tenant or an endpoint.
    // After the periodic gauges (sampled every 5 s) have all appeared.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = (series(&scrape(m_router)), series(&scrape(m_worker)));
    for t in 0..100 {
        let tenant = format!("t{t:03}");
        env.tenant(&tenant).await;
        env.endpoints_on_all(&tenant, (0..10).map(|e| format!("ep{e}")), |_| {
            rx.url("/many")
        })
        .await;
    }
    // The roles' snapshots take the new endpoints in a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for t in 0..100 {
        let tenant = format!("t{t:03}");
        env.publish_many(
            &tenant,
            "charge.paid",
            [(format!("{tenant}-1"), b"{}".to_vec())],
        )
        .await;
    }
    wait_until("the tenants' deliveries", Duration::from_secs(60), || {
        std::future::ready(rx.count() == total + 1000)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = (series(&scrape(m_router)), series(&scrape(m_worker)));
    let new: Vec<_> = after
        .0
        .difference(&before.0)
        .chain(after.1.difference(&before.1))
        .collect();
    let unlisted: Vec<_> = new
        .iter()
        .filter(|s| !s.contains("tenant=\"t007\""))
        .collect();
    assert!(unlisted.is_empty(), "series added by tenants: {unlisted:?}");
    let (r, w) = (scrape(m_router), scrape(m_worker));
    assert_eq!(
        sum(&r, "gancho_events_received_total", &["tenant=\"t007\""]),
        1.0
    );
    assert_eq!(
        sum(
            &r,
            "gancho_router_deliveries_created_total",
            &["tenant=\"t007\""]
        ),
        10.0
    );
    assert_eq!(
        sum(
            &w,
            "gancho_delivery_attempts_total",
            &["tenant=\"t007\"", "outcome=\"success\""]
        ),
        10.0
    );
    assert_eq!(
        sum(&w, "gancho_delivery_attempts_total", &["tenant=\"other\""]) as usize,
        total + 990,
        "every unlisted tenant's attempts count as other"
    );

    support::terminate(&mut worker);
    support::terminate(&mut router);
    support::terminate(&mut api);
}

/// Every long-lived structure of the worker stays within its stated bound however many
/// deliveries pass (`gancho_retained_entries`): 100,000 deliveries, 1,000 events to 100
/// endpoints of which 10 answer 500, with the worker and the router as separate processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_structures_stay_within_their_bounds() {
    const EVENTS: usize = 1_000;
    const ENDPOINTS: usize = 100;
    const FAILING: usize = 10;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let ok = Receiver::https_tally(&env.ca).await;
    let failing = Receiver::https(&env.ca, |_, _| Answer::status(500)).await;
    env.endpoints_on_all("acme", (0..ENDPOINTS).map(|e| format!("ep{e:03}")), |id| {
        let n: usize = id[2..].parse().unwrap();
        if n < FAILING {
            failing.url("/failing")
        } else {
            ok.url(&format!("/{id}"))
        }
    })
    .await;
    let m_worker = free_port();
    let mut router = env.spawn("router");
    let mut worker = env.spawn_with(
        &["worker"],
        &[("GANCHO_METRICS_LISTEN", &format!("127.0.0.1:{m_worker}"))],
    );
    env.publish_many(
        "acme",
        "charge.paid",
        (0..EVENTS).map(|i| (format!("evt-{i}"), br#"{"amount":1}"#.to_vec())),
    )
    .await;
    let healthy = EVENTS * (ENDPOINTS - FAILING);
    wait_until(
        "every delivery to the healthy endpoints",
        Duration::from_secs(300),
        || std::future::ready(ok.distinct() >= healthy),
    )
    .await;
    assert_eq!(ok.count(), healthy, "a healthy endpoint got a duplicate");
    assert!(failing.count() > 0);
    // The gauges are sampled every 5 s.
    let entries = |page: &str, structure: &str| {
        sum(
            page,
            "gancho_retained_entries",
            &[&format!("structure=\"{structure}\"")],
        )
    };
    wait_until("the worker's gauges", Duration::from_secs(15), || {
        std::future::ready(entries(&scrape(m_worker), "gates") > 0.0)
    })
    .await;
    let page = scrape(m_worker);
    let gates = entries(&page, "gates") as usize;
    let lines = entries(&page, "failure_lines") as usize;
    let handed_back = entries(&page, "messages_handed_back") as usize;
    let finished = entries(&page, "messages_finished") as usize;
    assert!(
        gates <= ENDPOINTS,
        "{gates} gates for {ENDPOINTS} endpoints"
    );
    assert!(
        lines <= FAILING,
        "{lines} failed-attempt lines remembered for {FAILING} failing endpoints"
    );
    assert_eq!(
        handed_back, 0,
        "no message was handed back, none is remembered"
    );
    // Every message the worker finished in the last 90 s: each event's messages (one per
    // partition it reaches, at most 16) and the failing endpoints' retries.
    assert!(
        finished > 0 && finished <= EVENTS * 16 + EVENTS * FAILING * 2,
        "{finished} finished messages remembered"
    );
    assert_eq!(
        sum(&page, "gancho_delivery_copies_total", &[]),
        0.0,
        "nothing came back to the worker in a run without faults"
    );
    support::terminate(&mut worker);
    support::terminate(&mut router);
}

/// A receiver answers 429 with `Retry-After: 2` while 199 deliveries wait for it (one request
/// at a time, the first answered after a second): nothing reaches it before the pause ends,
/// every delivery arrives once, and each delivery that waited is deferred at most once
/// (`gancho_delivery_deferred_total`), instead of going round JetStream again and again
/// before the pause ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_pause_defers_each_waiting_delivery_at_most_once() {
    const EVENTS: usize = 200;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https(&env.ca, |n, _| {
        if n == 0 {
            Answer::status(429)
                .header("retry-after", "2")
                .after(Duration::from_secs(1))
        } else {
            Answer::status(200)
        }
    })
    .await;
    env.endpoint("acme", "ep1", &rx.url("/hook"), &[], &[], None)
        .await;
    env.change("acme", "ep1", |ep| ep.max_in_flight = Some(1))
        .await;
    let m_worker = free_port();
    let mut router = env.spawn("router");
    let mut worker = env.spawn_with(
        &["worker"],
        &[("GANCHO_METRICS_LISTEN", &format!("127.0.0.1:{m_worker}"))],
    );
    env.publish_many(
        "acme",
        "charge.paid",
        (0..EVENTS).map(|i| (format!("evt-{i}"), b"{}".to_vec())),
    )
    .await;
    // The first delivery's retry included: one 429, then every delivery once.
    wait_until("every delivery", Duration::from_secs(60), || {
        std::future::ready(rx.distinct() == EVENTS && rx.count() > EVENTS)
    })
    .await;
    let got = rx.received();
    // The 429 was answered a second after its request arrived; the pause runs 2 s from then.
    let paused_until = got[0].at + Duration::from_millis(2_950);
    let early = got[1..].iter().filter(|r| r.at < paused_until).count();
    assert_eq!(
        early, 0,
        "{early} requests reached the endpoint during its pause"
    );
    assert_eq!(rx.count(), EVENTS + 1, "one 429, then every delivery once");
    // The counters are written before the acks; give the scrape a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = scrape(m_worker);
    let deferred = sum(&page, "gancho_delivery_deferred_total", &[]) as usize;
    let by_reason: Vec<String> = page
        .lines()
        .filter(|l| l.starts_with("gancho_delivery_deferred_total"))
        .map(str::to_owned)
        .collect();
    println!(
        "deferrals: {deferred} for {} waiting: {by_reason:?}",
        EVENTS - 1
    );
    // Each delivery that waited was parked (the queue full: 4 may wait for the one slot) or
    // deferred to the end of the pause, once: before, 674 deferrals for these 199.
    let waited = EVENTS - 1;
    assert!(
        deferred <= waited,
        "{deferred} deferrals for {waited} deliveries that waited: {by_reason:?}"
    );
    support::terminate(&mut worker);
    support::terminate(&mut router);
}
