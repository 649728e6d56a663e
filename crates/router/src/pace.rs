//! Pacing the bulk lanes: a tenant with a backlog is routed only while its deliveries in the
//! bulk lanes (published and not yet done, fleet-wide) are under its share of
//! [`BULK_WINDOW`], so the backlog waits in the events stream, behind its tenant's own
//! consumer, and the bulk lanes stay a shallow buffer. That shallowness is what makes the
//! sharing fair between tenants that both have a backlog: the bulk lanes are served first in,
//! first out, so a deep lane would make a tenant whose backlog came later wait for all of the
//! earlier one's, and weights would mean nothing. Shares follow the weights: a tenant of
//! weight 3 beside one of weight 1 may have three quarters of the window.
//!
//! What is in the bulk lanes is read every [`LOOK_EVERY`] (the stream's count of messages by
//! subject, one request); what this router publishes in between is added to it, and a
//! tenant that reaches its share stops pulling until the next look shows room.

use crate::backlog::Backlogs;
use async_nats::jetstream;
use futures::TryStreamExt;
use gancho_core::Subjects;
use gancho_store::Live;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Bulk-lane messages (each a delivery, or a batch of one event's deliveries in one
/// partition) the tenants with a backlog may have published and not yet done, over the
/// fleet: about a third of a second of a worker's work at 1 KiB, little enough that one
/// worker's bulk share of its intake holds them all.
pub const BULK_WINDOW: u64 = 1024;
/// How often the bulk lanes are looked at.
pub const LOOK_EVERY: Duration = Duration::from_millis(50);

/// Each tenant's gate (open: it may pull) and what it has in the bulk lanes.
#[derive(Default)]
pub(crate) struct Pace {
    state: Mutex<HashMap<String, TenantPace>>,
}

struct TenantPace {
    gate: watch::Sender<bool>,
    /// In the bulk lanes at the last look.
    seen: u64,
    /// Published by this router since.
    since: u64,
    /// Its share of the window at the last look (while it has a backlog).
    share: Option<u64>,
}

impl Pace {
    /// The gate of `tenant`'s consumer: it pulls while this reads `true`.
    pub(crate) fn gate(&self, tenant: &str) -> watch::Receiver<bool> {
        let mut state = self.lock();
        state
            .entry(tenant.to_owned())
            .or_insert_with(|| TenantPace {
                gate: watch::channel(true).0,
                seen: 0,
                since: 0,
                share: None,
            })
            .gate
            .subscribe()
    }

    /// One more message of `tenant` in the bulk lanes: its gate closes once it has its share.
    pub(crate) fn published(&self, tenant: &str) {
        let mut state = self.lock();
        if let Some(t) = state.get_mut(tenant) {
            t.since += 1;
            if t.share.is_some_and(|share| t.seen + t.since >= share) {
                t.gate
                    .send_if_modified(|open| std::mem::replace(open, false));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantPace>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings every gate up to date with what the bulk lanes hold (`in_bulk`: tenant ->
    /// messages) and which tenants have a backlog.
    fn look(&self, in_bulk: &HashMap<String, u64>, backlogs: &Backlogs, live: &Live) {
        let accounts = live.load().accounts.clone();
        let mut state = self.lock();
        state.retain(|tenant, t| accounts.contains_key(tenant) || t.gate.receiver_count() > 0);
        let weight = |t: &str| accounts.get(t).map_or(1, |s| u64::from(s.weight.max(1)));
        let busy: Vec<String> = state
            .keys()
            .filter(|t| backlogs.is_bulk(t))
            .cloned()
            .collect();
        let total: u64 = busy.iter().map(|t| weight(t)).sum::<u64>().max(1);
        for (tenant, t) in state.iter_mut() {
            t.seen = in_bulk.get(tenant).copied().unwrap_or(0);
            t.since = 0;
            t.share = busy
                .contains(tenant)
                .then(|| (BULK_WINDOW * weight(tenant) / total).max(1));
            let open = t.share.is_none_or(|share| t.seen < share);
            if !open {
                // Held back for its share: it keeps its backlog status meanwhile.
                backlogs.keep(tenant);
            }
            t.gate
                .send_if_modified(|was| std::mem::replace(was, open) != open);
        }
    }
}

/// Looks at the bulk lanes every [`LOOK_EVERY`] until `cancel` fires.
pub(crate) async fn run(
    pace: Arc<Pace>,
    js: jetstream::Context,
    subjects: Subjects,
    live: Arc<Live>,
    backlogs: Arc<Backlogs>,
    cancel: CancellationToken,
) {
    let filter = format!("{}.deliveries.*.*", subjects.prefix());
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stream: Option<jetstream::stream::Stream> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let read = async {
            if stream.is_none() {
                stream = Some(js.get_stream(subjects.deliveries_stream()).await?);
            }
            let stream = stream.as_ref().expect("set above");
            let mut by_subject = stream.info_with_subjects(&filter).await?;
            let mut in_bulk: HashMap<String, u64> = HashMap::new();
            while let Some((subject, n)) = by_subject.try_next().await? {
                if let Some(tenant) = subject.rsplit('.').next() {
                    *in_bulk.entry(tenant.to_owned()).or_default() += n as u64;
                }
            }
            Ok::<_, async_nats::Error>(in_bulk)
        };
        match read.await {
            Ok(in_bulk) => pace.look(&in_bulk, &backlogs, &live),
            Err(e) => debug!(error = %e, "Cannot look at the bulk lanes; gates stay as they are."),
        }
    }
}
