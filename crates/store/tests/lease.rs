//! A lease has one holder at a time: another cannot take it while it is renewed, takes it at
//! once when it is given up, and within the bucket's max age when its holder stops renewing;
//! a holder whose lease was taken learns it at its next renewal, and stops trusting a lease
//! it could not renew before anyone else may take it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use async_nats::jetstream;
use gancho_core::Subjects;
use gancho_store::lease::{Lease, LeaseError, RENEW_EVERY, TRUST_FOR};
use gancho_store::streams::MEMBER_TTL;
use gancho_test_harness::NatsServer;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_lease_has_one_holder_at_a_time() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let layout = gancho_store::ensure(jetstream::new(client), Subjects::default(), 1)
        .await
        .unwrap();
    let bucket = &layout.leases;

    let mut a = Lease::take(bucket, "ordered.3", "worker-a").await.unwrap();
    assert!(a.held());
    // Held and renewed: another cannot take it.
    for _ in 0..2 {
        match Lease::take(bucket, "ordered.3", "worker-b").await {
            Err(LeaseError::Held { holder, .. }) => assert_eq!(holder, "worker-a"),
            other => panic!("taken twice: {other:?}"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
        a.renew().await.unwrap();
        assert!(a.held());
    }
    // Another key is another lease.
    let other = Lease::take(bucket, "ordered.4", "worker-b").await.unwrap();

    // Given up: taken at once.
    a.give_up().await;
    let b = Lease::take(bucket, "ordered.3", "worker-b").await.unwrap();

    // Its holder stops renewing (dies): it stops trusting it first, then another takes it
    // within the bucket's max age (and the server's expiry sweep).
    let stopped = Instant::now();
    let c = loop {
        if stopped.elapsed() >= TRUST_FOR {
            assert!(!b.held(), "trusted past {TRUST_FOR:?} without a renewal");
        }
        match Lease::take(bucket, "ordered.3", "worker-c").await {
            Ok(c) => break c,
            Err(LeaseError::Held { .. }) => {
                assert!(b.held() || stopped.elapsed() >= TRUST_FOR);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            stopped.elapsed() < MEMBER_TTL * 3,
            "the lease never expired"
        );
    };
    let taken_after = stopped.elapsed();
    assert!(
        taken_after >= TRUST_FOR,
        "taken after {taken_after:?}, while b still trusted it"
    );
    assert!(c.held());
    // The old holder learns it at its next renewal, and stays out.
    let mut b = b;
    match b.renew().await {
        Err(LeaseError::Held { holder, .. }) => assert_eq!(holder, "worker-c"),
        other => panic!("a lost lease renewed: {other:?}"),
    }
    assert!(!b.held());
    assert!(b.renew().await.is_err());
    drop(other);
}
