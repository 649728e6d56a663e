//! Endpoint lifecycle through the API, with real roles and receivers counting: pause holds
//! deliveries (no attempts, nothing in the worker's ack-pending window) and resume delivers
//! each held one exactly once; disabling a paused endpoint dead-letters what it held as
//! `endpoint_disabled`, deleting one as `endpoint_gone`; an endpoint disabled by a 410 is
//! re-enabled with a PATCH; what an older version held is released the same way; a changed URL, a disabled or deleted endpoint and a new rate
//! limit reach the deliveries already waiting for it (in the worker's queue, parked behind
//! an open circuit, or scheduled as retries).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Answer, Receiver};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token-0123456789";

struct Api {
    base: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/v1/tenants/acme{path}", self.base);
        let body = body.map(|b| b.to_string());
        support::http(method, &url, Some(TOKEN), body.as_deref()).await
    }

    /// Creates an endpoint on `filter` at `url`; returns its id.
    async fn endpoint(&self, url: &str, filter: &str, extra: Value) -> String {
        let mut body = json!({"url": url, "filter_types": [filter]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, v) = self.call("POST", "/endpoints", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    async fn held(&self, id: &str) -> u64 {
        self.ok("GET", &format!("/endpoints/{id}"), None).await["held"]
            .as_u64()
            .unwrap()
    }

    /// Makes sure every role's snapshot holds every config change made so far: creates an
    /// endpoint for `marker.<n>` events (the KV watch is ordered, so a role that knows it
    /// knows everything before it) and publishes markers until its receiver gets one. Keep
    /// the returned receiver: markers still on their way go to it.
    async fn sync(&self, env: &support::Env, n: u32) -> Receiver {
        let rx = Receiver::https_sequence(&env.ca, &[200]).await;
        let ty = format!("marker.s{n}");
        self.endpoint(&rx.url("/marker"), &ty, json!({})).await;
        let mut k = 0;
        wait_until(
            "every role to see the config",
            Duration::from_secs(20),
            || {
                k += 1;
                let (rx, ty) = (&rx, &ty);
                async move {
                    env.publish("acme", ty, &format!("evt-{ty}-{k}"), b"{}", &[])
                        .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    rx.count() > 0
                }
            },
        )
        .await;
        rx
    }
}

async fn start(env: &support::Env) -> (std::process::Child, Api) {
    let (api, base) = env.spawn_api(TOKEN).await;
    let (status, v) = support::http(
        "POST",
        &format!("{base}/v1/tenants"),
        Some(TOKEN),
        Some(r#"{"id":"acme"}"#),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    (api, Api { base })
}

async fn publish_n(env: &support::Env, prefix: &str, n: usize) {
    env.publish_many(
        "acme",
        "charge.paid",
        (0..n).map(|i| (format!("{prefix}-{i}"), br#"{"amount":1}"#.to_vec())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_and_resume_delivers_each_held_event_once() {
    const N: usize = 300;
    let env = support::Env::new().await;
    let (mut api_process, api) = start(&env).await;
    let paused_rx = Receiver::https_sequence(&env.ca, &[200]).await;
    let healthy_rx = Receiver::https_sequence(&env.ca, &[200]).await;
    // First answer 500 three times, so three retries are waiting when it is paused.
    let retrying_rx = Receiver::https_sequence(&env.ca, &[500, 500, 500, 200]).await;
    let paused = api
        .endpoint(&paused_rx.url("/p"), "charge.*", json!({}))
        .await;
    api.endpoint(&healthy_rx.url("/h"), "charge.*", json!({}))
        .await;
    let retrying = api
        .endpoint(
            &retrying_rx.url("/r"),
            "refund.*",
            json!({"retry_schedule": "0s,5s"}),
        )
        .await;
    let cancel = env.run_roles(3).await;

    // Three refunds fail once each; their retries wait 5 s as scheduled messages.
    for i in 0..3 {
        env.publish(
            "acme",
            "refund.created",
            &format!("evt-refund-{i}"),
            b"{}",
            &[],
        )
        .await;
    }
    wait_until("three failed attempts", Duration::from_secs(10), || {
        std::future::ready(retrying_rx.count() == 3)
    })
    .await;
    let v = api
        .ok("POST", &format!("/endpoints/{paused}/pause"), None)
        .await;
    assert_eq!(v["paused"], true, "{v}");
    assert!(v["paused_at"].is_string(), "{v}");
    api.ok("POST", &format!("/endpoints/{retrying}/pause"), None)
        .await;
    let _markers = api.sync(&env, 1).await;

    publish_n(&env, "evt-held", N).await;
    wait_until(
        "the healthy endpoint to get every event",
        Duration::from_secs(30),
        || std::future::ready(healthy_rx.count() == N),
    )
    .await;
    wait_until("every event held", Duration::from_secs(10), || async {
        api.held(&paused).await == N as u64
    })
    .await;
    // The retries fire while their endpoint is paused: held too, without an attempt.
    wait_until("the retries held", Duration::from_secs(15), || async {
        api.held(&retrying).await == 3
    })
    .await;
    assert_eq!(paused_rx.count(), 0, "a paused endpoint got a request");
    assert_eq!(
        retrying_rx.count(),
        3,
        "a paused endpoint's retry was attempted"
    );
    let (_, ack_pending) = env.worker_consumer_state().await;
    assert_eq!(
        ack_pending, 0,
        "held deliveries must not occupy ack-pending"
    );
    let (_, list) = api.call("GET", "/endpoints", None).await;
    let shown = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == paused.as_str())
        .unwrap();
    assert_eq!(shown["paused"], true);

    let v = api
        .ok("POST", &format!("/endpoints/{paused}/resume"), None)
        .await;
    assert_eq!(v["paused"], false, "{v}");
    assert!(v.get("paused_at").is_none(), "{v}");
    // Resume through PATCH works the same.
    api.ok(
        "PATCH",
        &format!("/endpoints/{retrying}"),
        Some(json!({"paused": false})),
    )
    .await;
    wait_until(
        "every held event delivered",
        Duration::from_secs(30),
        || std::future::ready(paused_rx.count() >= N && retrying_rx.count() >= 6),
    )
    .await;
    // Nothing more comes: each held event exactly once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(paused_rx.count(), N);
    assert_eq!(paused_rx.distinct(), N, "a held event was delivered twice");
    assert_eq!(retrying_rx.count(), 6);
    assert_eq!(api.held(&paused).await, 0);

    // Holding spent no attempt: every held event's first attempt is attempt 1, every
    // waiting retry's is attempt 2.
    wait_until("the attempt records", Duration::from_secs(10), || async {
        env.attempts("acme", &paused).await.len() == N
    })
    .await;
    assert!(env
        .attempts("acme", &paused)
        .await
        .iter()
        .all(|a| a.attempt == 1 && a.outcome == "success"));
    let retried = env.attempts("acme", &retrying).await;
    assert_eq!(
        retried.iter().filter(|a| a.attempt == 2).count(),
        3,
        "{retried:?}"
    );
    assert!(env.dead_letters().await.is_empty());
    cancel.cancel();
    support::terminate(&mut api_process);
}

/// Held deliveries wait in the held stream, not among the deliveries that are sent at once;
/// those an older version held on `gancho.held.<tenant>.<endpoint>` in the deliveries stream
/// are counted by the API and released once each on resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_held_by_an_older_version_are_counted_and_released_once() {
    use futures::TryStreamExt;
    const N: usize = 100;
    let env = support::Env::new().await;
    let (mut api_process, api) = start(&env).await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    let id = api.endpoint(&rx.url("/old"), "charge.*", json!({})).await;
    let cancel = env.run_roles(1).await;
    api.ok("POST", &format!("/endpoints/{id}/pause"), None)
        .await;
    let _markers = api.sync(&env, 1).await;
    publish_n(&env, "evt-old", N).await;
    wait_until("every event held", Duration::from_secs(20), || async {
        api.held(&id).await == N as u64
    })
    .await;
    cancel.cancel();

    let subjects = &env.layout.subjects;
    let messages = |name: String| {
        let js = env.js.clone();
        async move {
            let mut s = js.get_stream(name).await.unwrap();
            s.info().await.unwrap().state.messages
        }
    };
    assert_eq!(messages(subjects.held_stream()).await, N as u64);
    assert_eq!(
        env.stored_on(&subjects.legacy_held_wildcard()).await,
        0,
        "held deliveries lie among the deliveries"
    );

    // Where an older version held them: the same messages on the legacy subject, in the
    // deliveries stream.
    let held = env.js.get_stream(subjects.held_stream()).await.unwrap();
    let mover = held
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let msgs: Vec<_> = mover
        .fetch()
        .max_messages(N)
        .messages()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(msgs.len(), N);
    for m in msgs {
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(m.payload.clone())
            .headers(m.headers.clone().unwrap());
        env.js
            .send_publish(subjects.legacy_held("acme", &id), publish)
            .await
            .unwrap()
            .await
            .unwrap();
        m.ack().await.unwrap();
    }
    drop(mover);
    wait_until(
        "the held stream emptied",
        Duration::from_secs(10),
        || async { messages(subjects.held_stream()).await == 0 },
    )
    .await;
    assert_eq!(api.held(&id).await, N as u64, "the legacy ones are counted");

    let cancel = env.run_roles(2).await;
    api.ok("POST", &format!("/endpoints/{id}/resume"), None)
        .await;
    wait_until(
        "every held event delivered",
        Duration::from_secs(30),
        || std::future::ready(rx.count() >= N),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.count(), N, "a held event was delivered twice");
    assert_eq!(rx.distinct(), N);
    assert_eq!(api.held(&id).await, 0);
    assert_eq!(env.stored_on(&subjects.legacy_held_wildcard()).await, 0);
    assert!(env.dead_letters().await.is_empty());
    cancel.cancel();
    support::terminate(&mut api_process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_or_deleting_a_paused_endpoint_dead_letters_what_it_held() {
    const N: usize = 50;
    let env = support::Env::new().await;
    let (mut api_process, api) = start(&env).await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    let disabled = api.endpoint(&rx.url("/d"), "charge.*", json!({})).await;
    let deleted = api.endpoint(&rx.url("/x"), "charge.*", json!({})).await;
    let cancel = env.run_roles(2).await;
    for id in [&disabled, &deleted] {
        api.ok("POST", &format!("/endpoints/{id}/pause"), None)
            .await;
    }
    let _markers = api.sync(&env, 1).await;
    publish_n(&env, "evt-drop", N).await;
    wait_until(
        "every event held twice",
        Duration::from_secs(20),
        || async { api.held(&disabled).await == N as u64 && api.held(&deleted).await == N as u64 },
    )
    .await;

    api.ok(
        "PATCH",
        &format!("/endpoints/{disabled}"),
        Some(json!({"disabled": true})),
    )
    .await;
    api.ok("DELETE", &format!("/endpoints/{deleted}"), None)
        .await;
    wait_until(
        "every held event dead-lettered",
        Duration::from_secs(30),
        || async { env.dead_letters().await.len() == 2 * N },
    )
    .await;
    let dead = env.dead_letters().await;
    for (id, kind) in [
        (&disabled, "endpoint_disabled"),
        (&deleted, "endpoint_gone"),
    ] {
        let mine: Vec<_> = dead
            .iter()
            .filter(|d| d.delivery.as_ref().unwrap().endpoint_id == *id)
            .collect();
        assert_eq!(mine.len(), N, "dead letters of {id}");
        assert!(mine.iter().all(|d| d.kind == kind), "{id}: {mine:?}");
    }
    assert_eq!(
        rx.count(),
        0,
        "a disabled or deleted endpoint got a request"
    );
    cancel.cancel();
    support::terminate(&mut api_process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_disabled_by_a_410_is_re_enabled_with_a_patch() {
    let env = support::Env::new().await;
    let (mut api_process, api) = start(&env).await;
    let rx = Receiver::https_sequence(&env.ca, &[410, 200]).await;
    let id = api.endpoint(&rx.url("/g"), "charge.*", json!({})).await;
    let cancel = env.run_roles(1).await;
    env.publish("acme", "charge.paid", "evt-gone-1", b"{}", &[])
        .await;
    wait_until("the 410 to disable it", Duration::from_secs(20), || async {
        api.ok("GET", &format!("/endpoints/{id}"), None).await["disabled"] == true
    })
    .await;
    let v = api.ok("GET", &format!("/endpoints/{id}"), None).await;
    assert!(
        v["disabled_reason"].as_str().unwrap().contains("410"),
        "{v}"
    );

    let v = api
        .ok(
            "PATCH",
            &format!("/endpoints/{id}"),
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(v["disabled"], false, "{v}");
    assert!(v.get("disabled_reason").is_none(), "{v}");
    let _markers = api.sync(&env, 1).await;
    env.publish("acme", "charge.paid", "evt-gone-2", b"{}", &[])
        .await;
    wait_until(
        "the re-enabled endpoint to get the next event",
        Duration::from_secs(20),
        || std::future::ready(rx.count() == 2),
    )
    .await;
    assert_eq!(rx.received()[1].header("webhook-id"), Some("evt-gone-2"));
    cancel.cancel();
    support::terminate(&mut api_process);
}

/// Webhook ids a receiver got on `path`, each with when it arrived.
fn got(rx: &Receiver, path: &str) -> Vec<(String, Instant)> {
    rx.received()
        .into_iter()
        .filter(|r| r.path == path)
        .map(|r| (r.header("webhook-id").unwrap().to_owned(), r.at))
        .collect()
}

/// Fails if `path` got a request more than 1 s after `changed` (when the API answered).
fn quiet_after(rx: &Receiver, path: &str, changed: Instant) {
    let late = got(rx, path)
        .into_iter()
        .filter(|(_, at)| *at > changed + Duration::from_secs(1))
        .count();
    assert_eq!(
        late, 0,
        "{late} requests reached {path} more than 1 s after the change was answered"
    );
}

/// The dead letters of endpoint `id`, as (kind, event id).
async fn dead_of(env: &support::Env, id: &str) -> Vec<(String, String)> {
    env.dead_letters()
        .await
        .into_iter()
        .filter_map(|d| {
            let delivery = d.delivery?;
            (delivery.endpoint_id == id).then_some((d.kind, delivery.event_id))
        })
        .collect()
}

/// Events `evt-<ty>-0` .. `evt-<ty>-<n-1>` of type `<ty>.created`.
async fn publish_type(env: &support::Env, ty: &str, n: usize) {
    env.publish_many(
        "acme",
        &format!("{ty}.created"),
        (0..n).map(|i| (format!("evt-{ty}-{i}"), br#"{"amount":1}"#.to_vec())),
    )
    .await;
}

/// Waits until each of `n` events of `ty` is either a success at `path` or a dead letter of
/// endpoint `id`, then checks: each exactly once (no event both delivered and dead, no
/// dead letter twice), the dead letters of `kind`, except `exhausted` for an event whose
/// every attempt (`attempts` of them, at `failed_path`) was made before the change.
#[allow(clippy::too_many_arguments)]
async fn each_once(
    env: &support::Env,
    rx: &Receiver,
    ty: &str,
    n: usize,
    path: &str,
    id: &str,
    kind: &str,
    failed: Option<(&str, usize, Instant)>,
) {
    let settled = || async { got(rx, path).len() + dead_of(env, id).await.len() };
    wait_until(
        &format!("every {ty} delivery delivered or dead-lettered"),
        Duration::from_secs(90),
        || async { settled().await >= n },
    )
    .await;
    // Nothing more comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let delivered: Vec<String> = got(rx, path).into_iter().map(|(id, _)| id).collect();
    let dead = dead_of(env, id).await;
    let mut all: Vec<&str> = delivered
        .iter()
        .map(String::as_str)
        .chain(dead.iter().map(|(_, e)| e.as_str()))
        .collect();
    all.sort_unstable();
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..n).map(|i| format!("evt-{ty}-{i}")).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(
        all,
        expected,
        "{ty}: every event once, delivered or dead-lettered ({} delivered, {} dead)",
        delivered.len(),
        dead.len()
    );
    for (k, event) in &dead {
        if k == kind {
            continue;
        }
        let (failed_path, attempts, changed) =
            failed.unwrap_or_else(|| panic!("{ty}: {event} dead-lettered as {k}, not {kind}"));
        let tries: Vec<_> = got(rx, failed_path)
            .into_iter()
            .filter(|(e, _)| e == event)
            .collect();
        assert!(
            k == "exhausted"
                && tries.len() == attempts
                && tries
                    .iter()
                    .all(|(_, at)| *at <= changed + Duration::from_secs(1)),
            "{ty}: {event} dead-lettered as {k} with {} attempts",
            tries.len()
        );
    }
}

/// Moves the first endpoint to `/new` on `rx`, disables the second and deletes the third,
/// one after the other; returns when the API answered each.
async fn move_disable_delete(
    api: &Api,
    rx: &Receiver,
    ids: [&str; 3],
) -> (Instant, Instant, Instant) {
    let [moved, disabled, deleted] = ids;
    let new_url = rx.url("/new");
    api.ok(
        "PATCH",
        &format!("/endpoints/{moved}"),
        Some(json!({"url": new_url})),
    )
    .await;
    let moved_at = Instant::now();
    api.ok(
        "PATCH",
        &format!("/endpoints/{disabled}"),
        Some(json!({"disabled": true})),
    )
    .await;
    let disabled_at = Instant::now();
    api.ok("DELETE", &format!("/endpoints/{deleted}"), None)
        .await;
    (moved_at, disabled_at, Instant::now())
}

/// An api, three endpoints (`moved.*`, `disabled.*`, `deleted.*`, with `extra`) whose old
/// addresses (`/old-<name>` on one receiver) answer `status`, and the roles.
struct Three {
    env: support::Env,
    api_process: std::process::Child,
    api: Api,
    rx: Receiver,
    ids: [String; 3],
    cancel: tokio_util::sync::CancellationToken,
}

async fn three(status: u16, extra: Value) -> Three {
    let env = support::Env::new().await;
    let (api_process, api) = start(&env).await;
    let rx = Receiver::https(&env.ca, move |_, r: &gancho_test_harness::Received| {
        Answer::status(if r.path.starts_with("/old") {
            status
        } else {
            200
        })
    })
    .await;
    let mut ids = Vec::new();
    for name in ["moved", "disabled", "deleted"] {
        let url = rx.url(&format!("/old-{name}"));
        ids.push(
            api.endpoint(&url, &format!("{name}.*"), extra.clone())
                .await,
        );
    }
    let cancel = env.run_roles(3).await;
    Three {
        env,
        api_process,
        api,
        rx,
        ids: ids.try_into().unwrap(),
        cancel,
    }
}

/// The busiest second of `arrivals`: how many fell within one second of each other.
fn busiest_second(mut arrivals: Vec<Instant>) -> usize {
    arrivals.sort_unstable();
    let mut most = 0;
    let mut start = 0;
    for end in 0..arrivals.len() {
        while arrivals[end] - arrivals[start] >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_deliveries_already_waiting_in_the_worker() {
    const N: usize = 200;
    let env = support::Env::new().await;
    let (mut api_process, api) = start(&env).await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    let limited = json!({"rate_limit_per_sec": 5});
    let moved = api
        .endpoint(&rx.url("/old"), "moved.*", limited.clone())
        .await;
    let disabled = api
        .endpoint(&rx.url("/disabled"), "disabled.*", limited.clone())
        .await;
    let deleted = api
        .endpoint(&rx.url("/deleted"), "deleted.*", limited.clone())
        .await;
    let faster = api.endpoint(&rx.url("/faster"), "faster.*", limited).await;
    let cancel = env.run_roles(4).await;
    for ty in ["moved", "disabled", "deleted", "faster"] {
        publish_type(&env, ty, N).await;
    }
    // Each endpoint has sent its first few; the rest wait in the worker for the rate.
    wait_until("every endpoint under way", Duration::from_secs(20), || {
        std::future::ready(
            ["/old", "/disabled", "/deleted", "/faster"]
                .iter()
                .all(|p| got(&rx, p).len() >= 5),
        )
    })
    .await;

    let (moved_at, disabled_at, deleted_at) =
        move_disable_delete(&api, &rx, [&moved, &disabled, &deleted]).await;
    api.ok(
        "PATCH",
        &format!("/endpoints/{faster}"),
        Some(json!({"rate_limit_per_sec": 50})),
    )
    .await;
    let faster_at = Instant::now();

    each_once(
        &env,
        &rx,
        "disabled",
        N,
        "/disabled",
        &disabled,
        "endpoint_disabled",
        None,
    )
    .await;
    quiet_after(&rx, "/disabled", disabled_at);
    each_once(
        &env,
        &rx,
        "deleted",
        N,
        "/deleted",
        &deleted,
        "endpoint_gone",
        None,
    )
    .await;
    quiet_after(&rx, "/deleted", deleted_at);

    wait_until(
        "the faster endpoint drained",
        Duration::from_secs(60),
        || std::future::ready(got(&rx, "/faster").len() >= N),
    )
    .await;
    let after: Vec<Instant> = got(&rx, "/faster")
        .into_iter()
        .map(|(_, at)| at)
        .filter(|at| *at > faster_at + Duration::from_secs(1))
        .collect();
    let most = busiest_second(after);
    assert!(
        most > 10,
        "after 5/s became 50/s the queue still went at {most} in its busiest second"
    );

    // The moved endpoint's queue drains at 5/s, every one at the new URL.
    wait_until(
        "the moved endpoint drained",
        Duration::from_secs(90),
        || std::future::ready(got(&rx, "/old").len() + got(&rx, "/new").len() >= N),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    quiet_after(&rx, "/old", moved_at);
    let mut ids: Vec<String> = got(&rx, "/old")
        .into_iter()
        .chain(got(&rx, "/new"))
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N, "every moved delivery once");
    assert_eq!(got(&rx, "/old").len() + got(&rx, "/new").len(), N);
    assert!(
        got(&rx, "/new").len() >= N / 2,
        "the waiting deliveries went to the new URL"
    );
    for id in [&moved, &faster] {
        assert!(dead_of(&env, id).await.is_empty(), "dead letters of {id}");
    }
    cancel.cancel();
    support::terminate(&mut api_process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_deliveries_parked_behind_an_open_circuit() {
    const N: usize = 200;
    // The old addresses fail, so each endpoint's circuit opens after five and the rest
    // are parked; the new one answers.
    let two_tries = json!({"rate_limit_per_sec": 5, "retry_schedule": "0s,2s"});
    let Three {
        env,
        mut api_process,
        api,
        rx,
        ids: [moved, disabled, deleted],
        cancel,
    } = three(500, two_tries).await;
    for ty in ["moved", "disabled", "deleted"] {
        publish_type(&env, ty, N).await;
    }
    wait_until("every delivery parked", Duration::from_secs(30), || async {
        let mut all = true;
        for id in [&moved, &disabled, &deleted] {
            all &= api.held(id).await + 5 >= N as u64;
        }
        all
    })
    .await;

    let (moved_at, disabled_at, deleted_at) =
        move_disable_delete(&api, &rx, [&moved, &disabled, &deleted]).await;

    // A delivery whose two attempts both failed before the change is `exhausted`.
    for (name, delivered_on, id, kind, at) in [
        ("moved", "/new", &moved, "none", moved_at),
        (
            "disabled",
            "/never",
            &disabled,
            "endpoint_disabled",
            disabled_at,
        ),
        ("deleted", "/never", &deleted, "endpoint_gone", deleted_at),
    ] {
        let old = format!("/old-{name}");
        each_once(
            &env,
            &rx,
            name,
            N,
            delivered_on,
            id,
            kind,
            Some((&old, 2, at)),
        )
        .await;
        quiet_after(&rx, &old, at);
    }
    cancel.cancel();
    support::terminate(&mut api_process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_scheduled_retries() {
    const N: usize = 200;
    // A 400 fails the attempt without opening the circuit: every delivery waits for its
    // retry, 20 s later, as a scheduled message.
    let Three {
        env,
        mut api_process,
        api,
        rx,
        ids: [moved, disabled, deleted],
        cancel,
    } = three(400, json!({"retry_schedule": "0s,20s"})).await;
    for ty in ["moved", "disabled", "deleted"] {
        publish_type(&env, ty, N).await;
    }
    wait_until("every first attempt", Duration::from_secs(30), || {
        std::future::ready(
            ["/old-moved", "/old-disabled", "/old-deleted"]
                .iter()
                .all(|p| got(&rx, p).len() >= N),
        )
    })
    .await;

    let (moved_at, disabled_at, deleted_at) =
        move_disable_delete(&api, &rx, [&moved, &disabled, &deleted]).await;

    each_once(&env, &rx, "moved", N, "/new", &moved, "none", None).await;
    each_once(
        &env,
        &rx,
        "disabled",
        N,
        "/never",
        &disabled,
        "endpoint_disabled",
        None,
    )
    .await;
    each_once(
        &env,
        &rx,
        "deleted",
        N,
        "/never",
        &deleted,
        "endpoint_gone",
        None,
    )
    .await;
    for (path, at) in [
        ("/old-moved", moved_at),
        ("/old-disabled", disabled_at),
        ("/old-deleted", deleted_at),
    ] {
        quiet_after(&rx, path, at);
        assert_eq!(got(&rx, path).len(), N, "{path}: only the first attempts");
    }
    cancel.cancel();
    support::terminate(&mut api_process);
}
