//! Which workers are alive, and which partitions of the deliveries stream each one serves.
//!
//! Every worker keeps a key of its own (its id) in the workers bucket, refreshed every
//! [`HEARTBEAT`]; the bucket's max age ([`crate::streams::MEMBER_TTL`]) removes the key of a
//! worker that stopped refreshing it, and a worker that stops cleanly deletes its key. Each
//! worker reads the live keys just as often and computes the same assignment from them
//! ([`assign`]): the partitions dealt round-robin over the sorted ids. No worker decides for
//! another; while two views differ (for a few seconds after a worker joins or dies), the
//! partition consumers' pins keep a partition with one worker at a time.

use async_nats::jetstream::kv;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a worker refreshes its key and reads the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// The partitions `me` serves when `members` are alive: partition `p` goes to the
/// `p mod n`-th of the sorted ids. `me` counts even when its own key is not visible yet.
pub fn assign(members: &[String], me: &str, partitions: u32) -> Vec<u32> {
    let mut all: Vec<&str> = members.iter().map(String::as_str).collect();
    all.push(me);
    all.sort_unstable();
    all.dedup();
    let n = all.len() as u32;
    let mine = all.iter().position(|m| *m == me).expect("me was added") as u32;
    (0..partitions).filter(|p| p % n == mine).collect()
}

/// A random id for this worker process: 16 hex characters, valid as a KV key.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Keeps `me` alive in `bucket` and publishes the partitions it should serve on `owned`
/// (after each read of the live workers, when it changed) until `cancel` fires; then deletes
/// its key so the others take over at their next read.
pub async fn run(
    bucket: kv::Store,
    me: String,
    partitions: u32,
    owned: watch::Sender<Vec<u32>>,
    cancel: CancellationToken,
) {
    let mut warned = false;
    let mut last_count = 0usize;
    loop {
        match beat(&bucket, &me).await {
            Ok(members) => {
                if warned {
                    info!("The workers bucket answers again.");
                    warned = false;
                }
                let count = members.len().max(1);
                if count != last_count {
                    info!(
                        workers = count,
                        "Workers alive changed; partitions dealt again."
                    );
                    last_count = count;
                }
                metrics::gauge!(gancho_telemetry::names::WORKERS_ALIVE).set(count as f64);
                let mine = assign(&members, &me, partitions);
                owned.send_if_modified(|have| {
                    let changed = *have != mine;
                    *have = mine;
                    changed
                });
            }
            Err(e) if !warned => {
                warn!(error = %e, "Cannot refresh this worker in the workers bucket; keeping its partitions as they are.");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
    if let Err(e) = bucket.delete(&me).await {
        warn!(error = %e, "Cannot remove this worker from the workers bucket; the others take over when its entry expires.");
    }
}

/// Refreshes `me` and lists the live workers.
async fn beat(bucket: &kv::Store, me: &str) -> Result<Vec<String>, String> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    bucket
        .put(me, now.into())
        .await
        .map_err(|e| e.to_string())?;
    let mut keys = bucket.keys().await.map_err(|e| e.to_string())?;
    let mut members = Vec::new();
    while let Some(key) = keys.next().await {
        members.push(key.map_err(|e| e.to_string())?);
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_shares_differ_by_at_most_one() {
        for n in 1..=20usize {
            let members: Vec<String> = (0..n).map(|i| format!("{:016x}", i * 7919)).collect();
            let mut owners = vec![0u32; 16];
            let mut shares = Vec::new();
            for m in &members {
                let mine = assign(&members, m, 16);
                shares.push(mine.len());
                for p in mine {
                    owners[p as usize] += 1;
                }
            }
            assert!(owners.iter().all(|&o| o == 1), "n={n}: {owners:?}");
            let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "n={n}: {shares:?}");
        }
    }

    #[test]
    fn a_worker_not_yet_listed_counts_itself() {
        assert_eq!(assign(&[], "a", 4), vec![0, 1, 2, 3]);
        assert_eq!(assign(&ids(&["b"]), "a", 4), vec![0, 2]);
        assert_eq!(assign(&ids(&["a"]), "b", 4), vec![1, 3]);
        // Listed twice (its own key and itself) is still one worker.
        assert_eq!(assign(&ids(&["a", "b"]), "a", 4), vec![0, 2]);
    }

    #[test]
    fn every_worker_computes_the_same_owner() {
        let members = ids(&["c", "a", "b"]);
        let a = assign(&members, "a", 16);
        let b = assign(&members, "b", 16);
        let c = assign(&members, "c", 16);
        assert_eq!(a.len() + b.len() + c.len(), 16);
        assert!(a.iter().all(|p| !b.contains(p) && !c.contains(p)));
    }
}
