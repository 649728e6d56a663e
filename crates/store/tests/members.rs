//! Workers agree on who is alive from the workers bucket: a worker refreshed while the others
//! read is never taken for dead (each such mistake moves partitions), a clean stop is seen at
//! once, a dead worker within the bucket's max age.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use async_nats::jetstream;
use gancho_core::Subjects;
use gancho_store::members::{assign, run};
use gancho_test_harness::{wait_until, NatsServer};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Member {
    id: String,
    owned: watch::Receiver<Vec<u32>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

fn join(bucket: &jetstream::kv::Store, id: &str) -> Member {
    let (tx, owned) = watch::channel(Vec::new());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(bucket.clone(), id.to_owned(), 16, tx, cancel.clone()));
    Member {
        id: id.to_owned(),
        owned,
        cancel,
        task,
    }
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Waits until every member of `members` serves its share of `alive`.
async fn dealt(members: &[&Member], alive: &[&str], within: Duration) {
    let alive = ids(alive);
    wait_until(
        &format!("the workers deal the partitions over {alive:?}"),
        within,
        || async {
            members
                .iter()
                .all(|m| *m.owned.borrow() == assign(&alive, &m.id, 16))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_agree_on_who_is_alive_while_keys_are_refreshed() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let layout = gancho_store::ensure(jetstream::new(client), Subjects::default(), 1)
        .await
        .unwrap();
    let bucket = layout.workers.clone();

    let mut a = join(&bucket, "a");
    let b = join(&bucket, "b");
    let mut c = join(&bucket, "c");
    // A fourth one refreshing its key every 5 ms: a reader that lists the keys while one is
    // rewritten can miss it, and would deal its partitions away and back.
    let noisy = {
        let bucket = bucket.clone();
        tokio::spawn(async move {
            loop {
                bucket.put("n", "alive".into()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    dealt(
        &[&a, &b, &c],
        &["a", "b", "c", "n"],
        Duration::from_secs(10),
    )
    .await;

    // Five heartbeats with a refresh every 5 ms: no worker's share moves.
    a.owned.mark_unchanged();
    c.owned.mark_unchanged();
    let mut b_owned = b.owned.clone();
    b_owned.mark_unchanged();
    let moved = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            _ = a.owned.changed() => "a",
            _ = b_owned.changed() => "b",
            _ = c.owned.changed() => "c",
        }
    })
    .await;
    assert!(
        moved.is_err(),
        "worker {} dealt the partitions again while every worker was alive",
        moved.unwrap()
    );

    // A clean stop deletes the key: the others take its partitions without waiting for it to
    // expire.
    noisy.abort();
    let _ = noisy.await;
    bucket.delete("n").await.unwrap();
    dealt(&[&a, &b, &c], &["a", "b", "c"], Duration::from_secs(1)).await;
    b.cancel.cancel();
    b.task.await.unwrap();
    dealt(&[&a, &c], &["a", "c"], Duration::from_secs(1)).await;

    // A worker that dies keeps its key until the bucket's max age: its partitions move then.
    c.task.abort();
    let died = std::time::Instant::now();
    dealt(&[&a], &["a"], Duration::from_secs(12)).await;
    let after = died.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "a dead worker's partitions moved after {after:?}, before its key could expire"
    );
    a.cancel.cancel();
    a.task.await.unwrap();
}
