//! Events that cannot be delivered go to the dead-letter stream with their reason; the router
//! keeps going and delivers the events after them.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_proto::{Event, Message as _};
use gancho_test_harness::{wait_until, Receiver};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_dead_lettered_and_the_rest_delivered() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_sequence(&env.ca, &[200]).await;
    env.endpoint("acme", "ep1", &rx.url("/hook"), &[">"], &[], None)
        .await;
    let cancel = env.run_roles(1).await;
    let subjects = env.layout.subjects.clone();

    env.publish("acme", "charge.paid", "before", b"{}", &[])
        .await;
    // 1. Bytes that are not a protobuf Event.
    env.publish_raw(
        &subjects.event("acme", "charge.paid"),
        b"\xff\xff\xff\xff\x0fgarbage".to_vec(),
        "garbage",
    )
    .await;
    // 2. A well-formed Event whose payload is not JSON.
    let not_json = Event {
        id: "not-json".into(),
        tenant: "acme".into(),
        r#type: "charge.paid".into(),
        payload: b"amount=10".to_vec().into(),
        ..Default::default()
    };
    env.publish_raw(
        &subjects.event("acme", "charge.paid"),
        not_json.encode_to_vec(),
        "not-json",
    )
    .await;
    // 3. An Event claiming another tenant than its subject.
    let mismatch = Event {
        id: "mismatch".into(),
        tenant: "globex".into(),
        r#type: "charge.paid".into(),
        payload: b"{}".to_vec().into(),
        ..Default::default()
    };
    env.publish_raw(
        &subjects.event("acme", "charge.paid"),
        mismatch.encode_to_vec(),
        "mismatch",
    )
    .await;
    for i in 0..5 {
        env.publish("acme", "charge.paid", &format!("after-{i}"), b"{}", &[])
            .await;
    }

    wait_until("the valid events", Duration::from_secs(20), || {
        std::future::ready(rx.count() == 6)
    })
    .await;
    wait_until("three dead letters", Duration::from_secs(10), || async {
        env.dead_letters().await.len() == 3
    })
    .await;
    let mut ids: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["after-0", "after-1", "after-2", "after-3", "after-4", "before"]
    );

    // The router works on events concurrently: dead letters may land in any order.
    let dead = env.dead_letters().await;
    let by_kind = |kind: &str| {
        dead.iter()
            .find(|d| d.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} dead letter in {dead:?}"))
    };
    let garbage = by_kind("undecodable");
    assert!(
        garbage.reason.contains("does not decode"),
        "{}",
        garbage.reason
    );
    assert_eq!(
        garbage.original.as_ref(),
        b"\xff\xff\xff\xff\x0fgarbage",
        "the original bytes are kept"
    );
    let not_json = by_kind("not_json");
    assert!(
        not_json.reason.contains("not a JSON document"),
        "{}",
        not_json.reason
    );
    let mismatch = by_kind("subject_mismatch");
    assert!(mismatch.reason.contains("globex"), "{}", mismatch.reason);
    assert!(dead
        .iter()
        .all(|d| d.subject == "gancho.events.acme.charge.paid"));
    cancel.cancel();
}
