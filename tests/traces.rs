//! Traces end to end, against a real OTLP/HTTP receiver whose requests are decoded with the
//! official OpenTelemetry protobuf definitions: an event's trace context comes in on its NATS
//! message or HTTP request, and its routing, each wait and each attempt are spans of that
//! trace, in order, with their parents; none holds the payload, the secret, a header value
//! or the signature.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use async_nats::jetstream::message::PublishMessage;
use gancho_proto::{Event, Message as _};
use gancho_test_harness::{wait_until, Answer, Receiver};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use std::collections::HashMap;
use std::process::Child;
use std::time::Duration;
use time::OffsetDateTime;

/// A trace id and span id the producer sends, and the payload marker no span may hold.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";
const MARKER: &str = "card-4111111111111111";

/// One span as the collector got it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace: String,
    id: String,
    parent: String,
    name: String,
    start: u64,
    end: u64,
    attributes: HashMap<String, String>,
    error: bool,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every span the collector received, decoded.
fn spans(collector: &Receiver) -> Vec<Span> {
    let mut out = Vec::new();
    for r in collector.received() {
        assert_eq!(r.path, "/v1/traces", "OTLP/HTTP posts traces to /v1/traces");
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        let request = ExportTraceServiceRequest::decode(&r.body[..]).unwrap();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|res| &res.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Span {
                        service: service.clone(),
                        trace: hex(&s.trace_id),
                        id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        start: s.start_time_unix_nano,
                        end: s.end_time_unix_nano,
                        attributes: s
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                            .collect(),
                        error: s.status.is_some_and(|st| st.code == 2),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The spans of `trace` once `done` holds for them (within 20 s).
async fn trace_of(collector: &Receiver, trace: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let of_trace = || {
        spans(collector)
            .into_iter()
            .filter(|s| s.trace == trace)
            .collect::<Vec<_>>()
    };
    wait_until("the trace's spans", Duration::from_secs(20), || {
        std::future::ready(done(&of_trace()))
    })
    .await;
    of_trace()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    let mut found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    found.sort_by_key(|s| s.start);
    found
}

/// No span holds the payload, the endpoint's secret, a header value or a signature.
fn nothing_secret(spans: &[Span], secret: &str, received: &[gancho_test_harness::Received]) {
    let signatures: Vec<String> = received
        .iter()
        .filter_map(|r| r.header("webhook-signature").map(str::to_owned))
        .collect();
    for s in spans {
        for (k, v) in &s.attributes {
            assert!(!v.contains(MARKER), "{}: {k} holds the payload", s.name);
            assert!(!v.contains(secret), "{}: {k} holds the secret", s.name);
            assert!(!v.contains("whsec_"), "{}: {k} holds a secret", s.name);
            for sig in &signatures {
                assert!(
                    !v.contains(sig.as_str()),
                    "{}: {k} holds the signature",
                    s.name
                );
            }
        }
    }
}

fn otlp(collector: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url("")),
        ("OTEL_SERVICE_NAME", String::new()),
    ]
}

/// `vars` as a role's environment: the ones set (an empty value leaves a variable out).
fn set<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (*k, v.as_str()))
        .collect()
}

fn spawn(env: &support::Env, role: &str, vars: &[(&'static str, String)]) -> Child {
    let vars = set(vars);
    env.spawn_with(&[role], &vars)
}

async fn publish_traced(env: &support::Env, id: &str, traceparent: &str) {
    let ev = Event {
        id: id.into(),
        tenant: "acme".into(),
        r#type: "charge.paid".into(),
        occurred_at: Some(gancho_proto::timestamp(OffsetDateTime::now_utc())),
        payload: format!(r#"{{"card":"{MARKER}"}}"#).into_bytes().into(),
        ..Default::default()
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent);
    env.js
        .send_publish(
            env.layout.subjects.event("acme", "charge.paid"),
            PublishMessage::build()
                .payload(ev.encode_to_vec().into())
                .headers(headers)
                .message_id(gancho_core::subject::event_message_id("acme", id)),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_a_traceparent_is_one_trace_through_waits_and_attempts() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let collector = Receiver::http(|_, _| Answer::status(200)).await;
    let rx = Receiver::https_sequence(&env.ca, &[500, 500, 200]).await;
    let ep = env
        .endpoint("acme", "pay", &rx.url("/in"), &[">"], &[], Some("0s,1s,1s"))
        .await;
    let vars = otlp(&collector);
    let log_file = tempfile::NamedTempFile::new().unwrap();
    let worker_vars = set(&vars);
    let mut roles = [
        spawn(&env, "router", &vars),
        env.spawn_logging(&["worker"], &worker_vars, log_file.as_file()),
    ];
    publish_traced(&env, "evt-1", &format!("00-{TRACE}-{PRODUCER_SPAN}-01")).await;
    wait_until("three attempts", Duration::from_secs(30), || {
        std::future::ready(rx.count() == 3)
    })
    .await;
    let trace = trace_of(&collector, TRACE, |s| {
        named(s, "POST").len() == 3 && named(s, "gancho wait").len() == 2
    })
    .await;

    let route = named(&trace, "gancho route");
    assert_eq!(route.len(), 1, "{trace:#?}");
    let route = route[0];
    assert_eq!(
        route.parent, PRODUCER_SPAN,
        "the route span's parent is the producer's"
    );
    assert_eq!(route.service, "gancho-router");
    assert_eq!(route.attributes["gancho.deliveries"], "1");
    assert_eq!(route.attributes["gancho.event.id"], "evt-1");
    let attempts = named(&trace, "POST");
    let waits = named(&trace, "gancho wait");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.parent, route.id, "attempt {i} hangs from the route span");
        assert_eq!(a.service, "gancho-worker");
        assert_eq!(a.attributes["gancho.attempt"], (i + 1).to_string());
        assert_eq!(a.attributes["url.full"], rx.url("/in"));
        assert_eq!(a.attributes["gancho.endpoint.id"], "pay");
        let status = if i < 2 { "500" } else { "200" };
        assert_eq!(a.attributes["http.response.status_code"], status);
        assert_eq!(a.error, i < 2, "attempt {i}: failed attempts are errors");
        assert!(a.start >= route.start && a.end >= a.start);
    }
    for (i, w) in waits.iter().enumerate() {
        assert_eq!(w.parent, route.id);
        assert_eq!(w.attributes["gancho.wait.reason"], "retry");
        // Each wait runs from the failed attempt to the next one (the 1 s of the schedule).
        assert!(
            w.start >= attempts[i].end && w.end <= attempts[i + 1].start + 5_000_000,
            "wait {i} lies between attempts {i} and {}",
            i + 1
        );
        assert!(w.end - w.start >= 900_000_000, "wait {i}: {w:?}");
    }
    nothing_secret(&trace, &ep.secret, &rx.received());
    // Each failed attempt's log line names its trace and span. (The worker writes at most one
    // failure line in each second of the clock and counts the rest in the next line's
    // `suppressed`, so a retry that fails within the same second has no line of its own.)
    let log = std::fs::read_to_string(log_file.path()).unwrap();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Delivery failed"))
        .collect();
    assert!(!failures.is_empty(), "no failed-attempt line in:\n{log}");
    let first = format!("trace_id={TRACE} span_id={}", attempts[0].id);
    assert!(
        failures[0].contains(&first),
        "no line with {first} in:\n{log}"
    );
    for line in &failures {
        assert!(
            attempts[..2]
                .iter()
                .any(|a| line.contains(&format!("trace_id={TRACE} span_id={}", a.id))),
            "a failure line names no failed attempt's span: {line}"
        );
    }
    // Trace context for the receiver is off by default: no traceparent reached it.
    assert!(
        rx.received()
            .iter()
            .all(|r| r.header("traceparent").is_none()),
        "a traceparent went out unasked"
    );
    for role in &mut roles {
        support::kill9(role);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_asks_gets_a_trace_of_its_own_linked_to_gancho_s() {
    const TRACE_4: &str = "aaaabbbbccccddddeeeeffff00001111";
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let collector = Receiver::http(|_, _| Answer::status(200)).await;
    let rx = Receiver::https_sequence(&env.ca, &[503, 200]).await;
    env.endpoint("acme", "pay", &rx.url("/in"), &[">"], &[], Some("0s,200ms"))
        .await;
    env.change("acme", "pay", |ep| ep.trace_context = true)
        .await;
    let vars = otlp(&collector);
    let mut roles = [spawn(&env, "router", &vars), spawn(&env, "worker", &vars)];
    publish_traced(&env, "evt-4", &format!("00-{TRACE_4}-{PRODUCER_SPAN}-01")).await;
    let trace = trace_of(&collector, TRACE_4, |s| named(s, "POST").len() == 2).await;
    let sent: Vec<(String, String)> = rx
        .received()
        .iter()
        .map(|r| {
            let tp = r
                .header("traceparent")
                .expect("a traceparent on each attempt");
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{tp}");
            (parts[1].to_owned(), parts[2].to_owned())
        })
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0].0, sent[1].0,
        "one trace for the delivery, every attempt"
    );
    assert_ne!(sent[0].1, sent[1].1, "a span per attempt");
    assert_ne!(sent[0].0, TRACE_4, "the platform's trace id stays inside");
    for (i, attempt) in named(&trace, "POST").iter().enumerate() {
        assert_eq!(
            attempt.links,
            vec![sent[i].clone()],
            "attempt {i} links to what it sent"
        );
    }
    for role in &mut roles {
        support::kill9(role);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_continues_the_callers_trace() {
    const TOKEN: &str = "test-admin-token-0123456789";
    let env = support::Env::new().await;
    let collector = Receiver::http(|_, _| Answer::status(200)).await;
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(200)).await;
    env.tenant("acme").await;
    env.endpoint("acme", "pay", &rx.url("/in"), &[">"], &[], None)
        .await;
    let vars = otlp(&collector);
    let api_vars = set(&vars);
    let (mut api, base) = env.spawn_api_with(TOKEN, &api_vars).await;
    let mut roles = [spawn(&env, "router", &vars), spawn(&env, "worker", &vars)];
    let send = |token: String, id: &'static str, traceparent: String| {
        let base = base.clone();
        async move {
            let body =
                serde_json::json!({"id": id, "type": "charge.paid", "data": {"card": MARKER}})
                    .to_string();
            let auth = format!("Bearer {token}");
            let (status, _, answer) = support::raw(
                "POST",
                &base,
                "/v1/tenants/acme/events",
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                    ("traceparent", traceparent.as_str()),
                ],
                &body,
            )
            .await;
            assert_eq!(status, 202, "{answer}");
        }
    };
    send(
        TOKEN.into(),
        "evt-http",
        format!("00-{TRACE}-{PRODUCER_SPAN}-01"),
    )
    .await;
    let trace = trace_of(&collector, TRACE, |s| named(s, "POST").len() == 1).await;
    let ingest = named(&trace, "gancho ingest");
    assert_eq!(ingest.len(), 1, "{trace:#?}");
    assert_eq!(ingest[0].parent, PRODUCER_SPAN);
    assert_eq!(ingest[0].service, "gancho-api");
    let route = named(&trace, "gancho route");
    assert_eq!(route.len(), 1);
    assert_eq!(
        route[0].parent, ingest[0].id,
        "routing continues the ingest span"
    );
    assert_eq!(named(&trace, "POST")[0].parent, route[0].id);

    // A tenant's publish key cannot choose not to be traced (nor to be): its `traceparent`
    // says "not sampled", gancho's sampler (all, by default) decides, and the spans are of
    // the caller's trace still.
    const UNSAMPLED: &str = "11112222333344445555666677778888";
    let (status, key) = support::TenantsApi::new(&base, TOKEN)
        .call(
            "POST",
            "/acme/api-keys".into(),
            Some(serde_json::json!({"name": "producer", "scopes": ["publish"]})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    send(
        key["key"].as_str().unwrap().to_owned(),
        "evt-key",
        format!("00-{UNSAMPLED}-{PRODUCER_SPAN}-00"),
    )
    .await;
    let trace = trace_of(&collector, UNSAMPLED, |s| named(s, "POST").len() == 1).await;
    assert_eq!(named(&trace, "gancho ingest")[0].parent, PRODUCER_SPAN);
    support::kill9(&mut api);
    for role in &mut roles {
        support::kill9(role);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_worker_kill_stays_in_its_trace() {
    const TRACE_3: &str = "0af7651916cd43dd8448eb211c80319c";
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let collector = Receiver::http(|_, _| Answer::status(200)).await;
    let rx = Receiver::https_sequence(&env.ca, &[500, 200]).await;
    env.endpoint("acme", "pay", &rx.url("/in"), &[">"], &[], Some("0s,10s"))
        .await;
    let vars = otlp(&collector);
    let mut router = spawn(&env, "router", &vars);
    let mut worker = spawn(&env, "worker", &vars);
    publish_traced(&env, "evt-3", &format!("00-{TRACE_3}-{PRODUCER_SPAN}-01")).await;
    wait_until("the first attempt", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 1)
    })
    .await;
    // The first attempt's span is out before the worker dies.
    trace_of(&collector, TRACE_3, |s| named(s, "POST").len() == 1).await;
    support::kill9(&mut worker);
    let mut second = spawn(&env, "worker", &vars);
    let trace = trace_of(&collector, TRACE_3, |s| named(s, "POST").len() == 2).await;
    let route = named(&trace, "gancho route")[0];
    let attempts = named(&trace, "POST");
    assert_eq!(attempts[1].parent, route.id);
    assert_eq!(attempts[1].attributes["gancho.attempt"], "2");
    assert_eq!(attempts[1].attributes["http.response.status_code"], "200");
    let waits = named(&trace, "gancho wait");
    assert_eq!(waits.len(), 1, "{trace:#?}");
    assert!(
        waits[0].end - waits[0].start >= 9_000_000_000,
        "the retry's wait spans its 10 s: {:?}",
        waits[0]
    );
    for role in [&mut router, &mut second] {
        support::kill9(role);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_costs_spans_never_deliveries() {
    const EVENTS: usize = 40;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    // Takes every export and answers only after the test is over.
    let collector = Receiver::http(|_, _| Answer::status(200).after(Duration::from_secs(60))).await;
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(200)).await;
    env.endpoint("acme", "pay", &rx.url("/in"), &[">"], &[], None)
        .await;
    let mut vars = otlp(&collector);
    vars.push(("GANCHO_TRACE_QUEUE", "4".into()));
    let metrics = format!("127.0.0.1:{}", gancho_test_harness::nats::free_port());
    vars.push(("GANCHO_METRICS_LISTEN", metrics.clone()));
    let mut worker = spawn(&env, "worker", &vars);
    vars.pop();
    let mut router = spawn(&env, "router", &vars);
    for n in 0..EVENTS {
        let trace = format!("{n:032x}");
        publish_traced(
            &env,
            &format!("evt-s{n}"),
            &format!("00-{trace}-{PRODUCER_SPAN}-01"),
        )
        .await;
    }
    wait_until("every delivery", Duration::from_secs(20), || {
        std::future::ready(rx.count() == EVENTS)
    })
    .await;
    let dropped = || {
        let page = support::http_get(&metrics, "/metrics");
        support::metric(&page, r#"gancho_trace_spans_total{result="dropped"}"#).unwrap_or(0.0)
    };
    wait_until("spans dropped and counted", Duration::from_secs(10), || {
        std::future::ready(dropped() > 0.0)
    })
    .await;
    for role in [&mut router, &mut worker] {
        support::kill9(role);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_behind_the_rate_limit_says_why() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let collector = Receiver::http(|_, _| Answer::status(200)).await;
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(200)).await;
    env.endpoint("acme", "pay", &rx.url("/in"), &[">"], &[], None)
        .await;
    env.change("acme", "pay", |ep| ep.rate_limit_per_sec = Some(1))
        .await;
    let vars = otlp(&collector);
    let mut roles = [spawn(&env, "router", &vars), spawn(&env, "worker", &vars)];
    let traces: Vec<String> = (1..=3).map(|n| format!("{:032x}", 0xabc0 + n)).collect();
    for (n, trace) in traces.iter().enumerate() {
        publish_traced(
            &env,
            &format!("evt-r{n}"),
            &format!("00-{trace}-{PRODUCER_SPAN}-01"),
        )
        .await;
    }
    wait_until(
        "three deliveries at 1 a second",
        Duration::from_secs(20),
        || std::future::ready(rx.count() == 3),
    )
    .await;
    // The one sent last waited a second or more behind the others, and its span says why.
    let mut waited = Vec::new();
    for trace in &traces {
        let spans = trace_of(&collector, trace, |s| named(s, "POST").len() == 1).await;
        waited.extend(named(&spans, "gancho wait").into_iter().cloned());
    }
    let longest = waited
        .iter()
        .max_by_key(|w| w.end - w.start)
        .unwrap_or_else(|| panic!("no wait span in {traces:?}"));
    assert!(
        ["rate_limited", "queued"].contains(&longest.attributes["gancho.wait.reason"].as_str()),
        "{longest:?}"
    );
    assert!(longest.end - longest.start >= 900_000_000, "{longest:?}");
    for role in &mut roles {
        support::kill9(role);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_changes_nothing_about_delivery() {
    const EVENTS: usize = 20;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[500, 200]).await;
    env.endpoint("acme", "pay", &rx.url("/in"), &[">"], &[], Some("0s,100ms"))
        .await;
    // Nothing listens there: every export is refused at once.
    let nowhere = format!(
        "http://127.0.0.1:{}",
        gancho_test_harness::nats::free_port()
    );
    let metrics = format!("127.0.0.1:{}", gancho_test_harness::nats::free_port());
    let mut vars = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", nowhere),
        ("GANCHO_METRICS_LISTEN", metrics.clone()),
    ];
    let mut worker = spawn(&env, "worker", &vars);
    vars.pop();
    let mut router = spawn(&env, "router", &vars);
    for n in 0..EVENTS {
        let trace = format!("{:032x}", 0xdead_0000 + n);
        publish_traced(
            &env,
            &format!("evt-u{n}"),
            &format!("00-{trace}-{PRODUCER_SPAN}-01"),
        )
        .await;
    }
    // Every event delivered, the first one after a retry, as without traces.
    wait_until("every delivery", Duration::from_secs(20), || {
        std::future::ready(rx.tally().len() == EVENTS && rx.count() == EVENTS + 1)
    })
    .await;
    let failed = || {
        let page = support::http_get(&metrics, "/metrics");
        support::metric(&page, r#"gancho_trace_spans_total{result="failed"}"#).unwrap_or(0.0)
    };
    wait_until("spans counted as failed", Duration::from_secs(15), || {
        std::future::ready(failed() > 0.0)
    })
    .await;
    for role in [&mut router, &mut worker] {
        support::kill9(role);
    }
}

/// A delivery given up while it waited (its endpoint's circuit open, its patience spent)
/// ends its wait with a span that says so: the trace of a webhook that never arrived shows
/// where it waited, why, and that it was dead-lettered, not a trace that stops at routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_ends_in_a_dead_letter_is_a_span_that_says_so() {
    const EVENTS: usize = 12;
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let collector = Receiver::http(|_, _| Answer::status(200)).await;
    let rx = Receiver::https(&env.ca, |_, _| Answer::status(503)).await;
    env.endpoint("acme", "dead", &rx.url("/in"), &[">"], &[], Some("0s,1s"))
        .await;
    // One request at a time: five failures open the circuit while most deliveries wait.
    env.change("acme", "dead", |ep| ep.max_in_flight = Some(1))
        .await;
    let vars = otlp(&collector);
    let mut worker_vars = vars.clone();
    worker_vars.push(("GANCHO_DEFER_GRACE", "3s".into()));
    let mut roles = [
        spawn(&env, "router", &vars),
        spawn(&env, "worker", &worker_vars),
    ];
    let traces: Vec<String> = (0..EVENTS)
        .map(|n| format!("{:032x}", 0xdead_0000 + n))
        .collect();
    for (n, trace) in traces.iter().enumerate() {
        publish_traced(
            &env,
            &format!("evt-d{n}"),
            &format!("00-{trace}-{PRODUCER_SPAN}-01"),
        )
        .await;
    }
    wait_until(
        "every delivery dead-lettered",
        Duration::from_secs(60),
        || async { env.dead_letters().await.len() >= EVENTS },
    )
    .await;
    // The deliveries given up without a request of their own: their event ids.
    let unsent: Vec<usize> = env
        .dead_letters()
        .await
        .iter()
        .filter_map(|d| d.delivery.as_ref())
        .filter(|d| d.attempts == 0)
        .map(|d| d.event_id.trim_start_matches("evt-d").parse().unwrap())
        .collect();
    assert!(
        !unsent.is_empty(),
        "some deliveries were given up while they waited, without a request"
    );
    for n in unsent {
        let spans = trace_of(&collector, &traces[n], |s| {
            named(s, "gancho wait")
                .iter()
                .any(|w| w.attributes.contains_key("gancho.dead_letter.kind"))
        })
        .await;
        let waits = named(&spans, "gancho wait");
        let last = waits.last().unwrap();
        assert_eq!(
            last.attributes["gancho.dead_letter.kind"], "exhausted",
            "{last:?}"
        );
        assert!(
            last.error,
            "a wait that ends in a dead letter is an error: {last:?}"
        );
        assert!(
            !last.attributes["gancho.wait.reason"].is_empty(),
            "{last:?}"
        );
        // It waited out its patience: the retry schedule (1 s) plus the grace (3 s).
        assert!(last.end - last.start >= 4_000_000_000, "{last:?}");
        assert!(
            named(&spans, "POST").is_empty(),
            "a delivery dead-lettered before its first request has no attempt span: {spans:?}"
        );
        let route = named(&spans, "gancho route");
        assert_eq!(
            last.parent, route[0].id,
            "the wait is a child of the route span"
        );
    }
    for role in &mut roles {
        support::kill9(role);
    }
}
