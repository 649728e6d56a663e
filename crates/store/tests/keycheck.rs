//! The key-check record on an installation's first start, with the server's store full: the
//! role waits for room instead of stopping (its work is what frees room).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use async_nats::jetstream::{self, stream};
use gancho_core::Subjects;
use gancho_store::Keyring;
use gancho_test_harness::NatsServer;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_on_a_full_store_waits_for_room_to_write_the_key_check() {
    let server = NatsServer::start_with_config("jetstream { max_file_store: 2MB }");
    let js = jetstream::new(server.connect().await);
    let layout = gancho_store::ensure(js.clone(), Subjects::default(), 1)
        .await
        .unwrap();
    // Fill the store with something else.
    js.create_stream(stream::Config {
        name: "FILLER".into(),
        subjects: vec!["filler".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let mut refused = false;
    for _ in 0..64 {
        let stored = async { js.publish("filler", chunk.clone()).await?.await }.await;
        if let Err(e) = stored {
            assert_eq!(
                gancho_store::refusal::Refusal::of(&e),
                gancho_store::refusal::Refusal::Full,
                "{e:?}"
            );
            refused = true;
            break;
        }
    }
    assert!(refused, "the 2 MB store never filled");

    let keyring = Keyring::new(&Keyring::generate(), None).unwrap();
    let config = layout.config.clone();
    let check = tokio::spawn(async move { keyring.check(&config).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !check.is_finished(),
        "the check gave up on a full store: {:?}",
        check.await
    );
    // Room again: the record is written and the check passes.
    js.get_stream("FILLER")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let checked = tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .expect("the check goes on once there is room")
        .unwrap();
    assert_eq!(checked, Ok(()));
}
