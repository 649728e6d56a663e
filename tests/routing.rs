//! 3 tenants x 10 endpoints with different filters, 1,000 events: each endpoint receives
//! exactly the events that match it, signed with its own secret, and nothing of another
//! tenant's.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_core::Subscription;
use gancho_test_harness::{wait_until, Receiver};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// (filters, channels) of endpoint i in every tenant.
const ENDPOINTS: [(&[&str], &[&str]); 10] = [
    (&["invoice.paid"], &[]),
    (&["invoice.*"], &[]),
    (&["invoice.>"], &[]),
    (&[">"], &[]),
    (&["charge.paid", "pix.>"], &[]),
    (&["*.paid"], &[]),
    (&[">"], &["pix"]),
    (&["charge.*"], &["card", "pix"]),
    (&[], &[]),
    (&["nothing.matches.this"], &[]),
];
const TYPES: [&str; 7] = [
    "invoice.paid",
    "invoice.created",
    "invoice.paid.late",
    "charge.paid",
    "charge.refunded",
    "pix.payment.accepted",
    "pix.refund",
];
const CHANNELS: [&[&str]; 3] = [&[], &["pix"], &["card"]];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_gets_exactly_its_matching_events_signed() {
    let env = support::Env::new().await;
    let tenants = ["acme", "globex", "initech"];
    let mut receivers = HashMap::new();
    let mut endpoints = HashMap::new();
    for t in tenants {
        env.tenant(t).await;
        for (i, (filters, channels)) in ENDPOINTS.iter().enumerate() {
            let rx = Receiver::https_sequence(&env.ca, &[200]).await;
            let id = format!("ep{i}");
            let ep = env
                .endpoint(
                    t,
                    &id,
                    &rx.url(&format!("/{t}/{id}")),
                    filters,
                    channels,
                    None,
                )
                .await;
            receivers.insert((t, i), rx);
            endpoints.insert((t, i), ep);
        }
    }

    // The expected (tenant, endpoint) -> event ids, from the documented matching rules.
    let mut expected: HashMap<(&str, usize), BTreeSet<String>> = HashMap::new();
    let mut events = Vec::new();
    for n in 0..1000 {
        let t = tenants[n % 3];
        let ty = TYPES[(n / 3) % TYPES.len()];
        let ch = CHANNELS[(n / 21) % CHANNELS.len()];
        let id = format!("{t}-evt-{n}");
        for (i, (filters, channels)) in ENDPOINTS.iter().enumerate() {
            if Subscription::new(filters, channels)
                .unwrap()
                .matches(ty, ch)
            {
                expected.entry((t, i)).or_default().insert(id.clone());
            }
        }
        events.push((t, ty, ch, id));
    }
    let total: usize = expected.values().map(|s| s.len()).sum();
    assert!(total > 3000, "the filters should fan out ({total})");
    assert!(!expected.contains_key(&("acme", 9)));

    let cancel = env.run_roles(30).await;
    for (t, ty, ch, id) in &events {
        let payload = format!(r#"{{"tenant":"{t}","n":"{id}","amount":1990}}"#);
        env.publish(t, ty, id, payload.as_bytes(), ch).await;
    }
    wait_until("every expected delivery", Duration::from_secs(120), || {
        let got: usize = receivers.values().map(|r| r.count()).sum();
        std::future::ready(got >= total)
    })
    .await;
    env.wait_drained(Duration::from_secs(30)).await;

    for ((t, i), rx) in &receivers {
        let ep = &endpoints[&(*t, *i)];
        let got = rx.received();
        let ids: Vec<String> = got
            .iter()
            .map(|r| r.header("webhook-id").unwrap().to_owned())
            .collect();
        let unique: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(unique.len(), ids.len(), "{t}/ep{i} received duplicates");
        let want = expected.get(&(*t, *i)).cloned().unwrap_or_default();
        assert_eq!(unique, want, "{t}/ep{i} received the wrong set of events");
        for r in &got {
            support::verify(ep, r).unwrap_or_else(|e| panic!("{t}/ep{i}: signature: {e}"));
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(
                r.version,
                hyper::Version::HTTP_2,
                "HTTP/2 is negotiated by ALPN"
            );
            assert!(r.header("user-agent").unwrap().starts_with("gancho/"));
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let obj = body.as_object().unwrap();
            assert_eq!(obj.len(), 3, "body is {{type, timestamp, data}}: {body}");
            assert!(TYPES.contains(&obj["type"].as_str().unwrap()));
            assert!(time::OffsetDateTime::parse(
                obj["timestamp"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok());
            assert_eq!(
                obj["data"]["tenant"], *t,
                "another tenant's event reached {t}/ep{i}"
            );
            assert_eq!(obj["data"]["amount"], 1990);
        }
    }
    cancel.cancel();
}
