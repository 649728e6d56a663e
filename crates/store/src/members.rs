//! Which workers are alive, and which partitions of the deliveries stream each one serves.
//!
//! Every worker keeps a key of its own (its id) in the workers bucket, refreshed every
//! [`HEARTBEAT`]; a worker that stops cleanly deletes its key, and the bucket's max age
//! ([`crate::streams::MEMBER_TTL`]) removes the key of one that died. Each worker watches the
//! bucket and counts a key alive for [`crate::streams::MEMBER_TTL`] after its last refresh
//! arrived, then computes the same assignment from the live ids ([`assign`]): the partitions
//! dealt round-robin over the sorted ids. No worker decides for another; while two views
//! differ (for a few seconds after a worker joins or dies), the partition consumers' pins keep
//! a partition with one worker at a time.
//!
//! A watch, not a listing of the keys: a listing races with the refreshes (a key rewritten
//! while the list is read can be left out), and a worker that misses a live one deals the
//! partitions as if it were dead, then back again two seconds later; every such flap moves
//! partitions and stalls them for a pull or a pin timeout.

use crate::streams::MEMBER_TTL;
use async_nats::jetstream::kv;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a worker refreshes its key.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// The partitions `me` serves when `members` are alive: partition `p` goes to the
/// `p mod n`-th of the sorted ids. `me` counts even when its own key is not visible yet.
pub fn assign(members: &[String], me: &str, partitions: u32) -> Vec<u32> {
    let all = everyone(members, me);
    let n = all.len() as u32;
    let mine = all.iter().position(|m| *m == me).expect("me was added") as u32;
    (0..partitions).filter(|p| p % n == mine).collect()
}

/// The live ids and `me` (counted even when its own key is not visible yet), sorted, once each.
fn everyone<'a>(members: &'a [String], me: &'a str) -> Vec<&'a str> {
    let mut all: Vec<&str> = members.iter().map(String::as_str).collect();
    all.push(me);
    all.sort_unstable();
    all.dedup();
    all
}

/// A random id for this worker process: 16 hex characters, valid as a KV key.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The workers this one has heard from: each id with when its last refresh arrived.
#[derive(Debug, Default)]
struct View {
    seen: HashMap<String, Instant>,
    /// The watch has delivered what the bucket held when it started.
    current: bool,
}

impl View {
    /// Applies one watched entry; true when the set of members changed.
    fn apply(&mut self, entry: &kv::Entry, at: Instant) -> bool {
        self.current |= entry.seen_current;
        match entry.operation {
            kv::Operation::Put => self.seen.insert(entry.key.clone(), at).is_none(),
            kv::Operation::Delete | kv::Operation::Purge => self.seen.remove(&entry.key).is_some(),
        }
    }

    /// The ids refreshed within the last [`MEMBER_TTL`], forgetting the others.
    fn alive(&mut self, now: Instant) -> Vec<String> {
        self.seen
            .retain(|_, at| now.duration_since(*at) < MEMBER_TTL);
        self.seen.keys().cloned().collect()
    }

    /// Whether this worker's own refreshes come back through the watch: when they stop, the
    /// watch (or the connection) is behind and the others look dead when they are not.
    fn hears(&self, me: &str, now: Instant) -> bool {
        self.seen
            .get(me)
            .is_some_and(|at| now.duration_since(*at) < MEMBER_TTL)
    }
}

/// Keeps `me` alive in `bucket` and publishes the partitions it should serve on `owned` (at
/// every heartbeat and whenever a worker joins or leaves, when it changed) until `cancel`
/// fires; then deletes its key so the others take over at once.
pub async fn run(
    bucket: kv::Store,
    me: String,
    partitions: u32,
    owned: watch::Sender<Vec<u32>>,
    cancel: CancellationToken,
) {
    let mut last_count = 0usize;
    keep_alive(bucket, "workers", me.clone(), cancel, |members| {
        let count = members.len().max(1);
        if count != last_count {
            info!(
                workers = count,
                "Workers alive changed; partitions dealt again."
            );
            last_count = count;
        }
        metrics::gauge!(gancho_telemetry::names::WORKERS_ALIVE).set(count as f64);
        let mine = assign(members, &me, partitions);
        owned.send_if_modified(|have| {
            let changed = *have != mine;
            *have = mine;
            changed
        });
    })
    .await;
}

/// Keeps api process `me` alive in the api processes' `bucket` and publishes how many are
/// alive (this one included) on `alive`, when it changed, until `cancel`; then deletes its key.
pub async fn count(
    bucket: kv::Store,
    me: String,
    alive: watch::Sender<usize>,
    cancel: CancellationToken,
) {
    keep_alive(bucket, "api processes", me.clone(), cancel, |members| {
        let n = everyone(members, &me).len();
        metrics::gauge!(gancho_telemetry::names::API_PROCESSES_ALIVE).set(n as f64);
        alive.send_if_modified(|have| {
            let changed = *have != n;
            *have = n;
            changed
        });
    })
    .await;
}

/// The membership loop: refreshes `me` in `bucket` every [`HEARTBEAT`], watches the bucket,
/// and calls `deal` with the live ids at every heartbeat and whenever one joins or leaves,
/// from a whole view only; `what` names the members in log lines.
#[allow(
    clippy::too_many_lines,
    reason = "the heartbeat and the watch of the members share one select loop and its state"
)]
async fn keep_alive(
    bucket: kv::Store,
    what: &'static str,
    me: String,
    cancel: CancellationToken,
    mut deal_with: impl FnMut(&[String]),
) {
    let mut view = View::default();
    let mut entries: Option<kv::Watch> = None;
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        if entries.is_none() {
            // Every entry again from the start: what the old watch missed is caught up here.
            match bucket.watch_with_history(">").await {
                Ok(w) => {
                    entries = Some(w);
                    view.current = false;
                }
                Err(e) if !warned => {
                    warn!(error = %e, members = what, "Cannot watch the members bucket; keeping what this process last dealt.");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        let next = async {
            match entries.as_mut() {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        let deal = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = beat.tick() => {
                match bucket.put(&me, now_text().into()).await {
                    Ok(_) if warned => {
                        info!(members = what, "The members bucket answers again.");
                        warned = false;
                    }
                    Ok(_) => {}
                    Err(e) if !warned => {
                        warn!(error = %e, members = what, "Cannot refresh this process in the members bucket; keeping what it last dealt.");
                        warned = true;
                    }
                    Err(_) => {}
                }
                true
            }
            entry = next => match entry {
                Some(Ok(entry)) => view.apply(&entry, Instant::now()) || entry.seen_current,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, members = what, "The members watch failed; watching again.");
                    entries = None;
                    false
                }
                None => {
                    entries = None;
                    false
                }
            },
        };
        let now = Instant::now();
        // Deal only from a whole view: the watch has caught up, and it brings this worker's
        // own refreshes back (else the others would look dead only because we are deaf).
        if !deal || !view.current || !view.hears(&me, now) {
            continue;
        }
        deal_with(&view.alive(now));
    }
    if let Err(e) = bucket.delete(&me).await {
        warn!(error = %e, members = what, "Cannot remove this process from the members bucket; the others see it gone when its entry expires.");
    }
}

/// What this version's roles support, after the time in each member's value: the api lets
/// an endpoint have a jq filter or transform only when every live router and worker says
/// `jq` ([`lacking`]). Values of older versions are the time alone.
pub const FEATURES: &str = "jq ordering";

fn now_text() -> String {
    format!(
        "{} {FEATURES}",
        time::OffsetDateTime::now_utc().unix_timestamp()
    )
}

/// Keeps router `me` alive in the routers' `bucket` until `cancel`, then deletes its key.
pub async fn present(bucket: kv::Store, me: String, cancel: CancellationToken) {
    keep_alive(bucket, "routers", me, cancel, |_| {}).await;
}

/// How many of the members alive in `bucket` do not say they support `feature` (members of
/// a version that does not know it).
pub async fn lacking(bucket: &kv::Store, feature: &str) -> Result<usize, kv::WatchError> {
    let mut keys = bucket.keys().await?;
    let mut n = 0;
    while let Some(key) = keys.next().await {
        let Ok(key) = key else { continue };
        if let Ok(Some(value)) = bucket.get(&key).await {
            let says = String::from_utf8_lossy(&value)
                .split_whitespace()
                .skip(1)
                .any(|f| f == feature);
            n += usize::from(!says);
        }
    }
    Ok(n)
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
