//! One delivery, from message to ack, in three stages: intake (the message, its endpoint as
//! the config stands, the endpoint's gate: [`intake`]), the attempt (the request and what its
//! answer means for the endpoint: [`attempt`]) and the outcome (the writes it needs, then the
//! ack: [`outcome`]). What happens is said through [`crate::emit`]; the message is acked only
//! after every write its outcome needs is acknowledged by JetStream.

mod attempt;
mod intake;
mod ordered;
mod outcome;
mod recall;

pub(crate) use ordered::{Head, Resolved};

use crate::gate::Gates;
use crate::http;
use async_nats::jetstream;
use bytes::Bytes;
use gancho_core::Subjects;
use gancho_proto::{to_datetime, Delivery, Message as _};
use gancho_store::consume;
use gancho_store::{ConfigStore, Live};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

/// Delay before a delivery whose outcome could not be recorded is tried again.
const NAK_DELAY: Duration = Duration::from_secs(1);
/// How long the worker keeps re-sending an outcome's writes before handing the delivery back.
const WRITE_PATIENCE: Duration = Duration::from_secs(30);
/// How long the worker keeps re-sending writes JetStream refuses for lack of room.
const FULL_PATIENCE: Duration = Duration::from_secs(2);
/// Delay before a delivery handed back for lack of room is tried again.
const FULL_NAK_DELAY: Duration = Duration::from_secs(10);

/// How long `delivery` has waited for its endpoint: since the endpoint first could not take
/// it (deferred or parked), not since the router made it. A delivery that sat in a backlog
/// (a worker behind, a fleet down) has not waited for its endpoint, and was given up the first
/// time that endpoint's circuit was open: one of 14.4 million healthy deliveries in a soak
/// whose backlog outgrew the patience. One parked by an older version has no mark: since
/// the router made it, as before.
fn waited(delivery: &Delivery) -> Option<Duration> {
    let since = delivery
        .waiting_since
        .as_ref()
        .or(delivery.created_at.as_ref())
        .and_then(to_datetime)?;
    Some(
        (OffsetDateTime::now_utc() - since)
            .try_into()
            .unwrap_or_default(),
    )
}

/// Keeps `msg` ours while `fut` runs (see [`consume::with_progress`]).
fn with_progress<'a, F: std::future::Future + 'a>(
    msg: &'a jetstream::Message,
    fut: F,
) -> impl std::future::Future<Output = F::Output> + 'a {
    consume::with_progress(msg, crate::PROGRESS_EVERY, fut)
}

/// Keeps a delivery's message ours while `fut` runs. A batch member's message is already
/// kept by its batch for as long as any member is in hand, so a member adds no timer of
/// its own: at fan-out 100 that was two timers and their progress acks per delivery.
fn keep_while<'a, F: std::future::Future + 'a>(
    unit: Unit<'a>,
    fut: F,
) -> impl std::future::Future<Output = F::Output> + 'a {
    if unit.alone {
        futures::future::Either::Left(with_progress(unit.msg, fut))
    } else {
        futures::future::Either::Right(fut)
    }
}

/// Where a delivery came from: a message of its own, or a batch message (the deliveries of
/// one event to several endpoints of a partition), which is acked once every delivery's
/// outcome is stored.
#[derive(Clone, Copy)]
struct Unit<'a> {
    msg: &'a jetstream::Message,
    alone: bool,
    /// What was done of the message before it came back, and what is done of it now
    /// ([`recall`]).
    left: &'a std::sync::Mutex<recall::Left>,
}

impl Unit<'_> {
    /// The delivery's own bytes, as a hold keeps them: its message's, unless it came in a
    /// batch.
    fn bytes(&self, delivery: &Delivery) -> Bytes {
        if self.alone {
            self.msg.payload.clone()
        } else {
            Bytes::from(delivery.encode_to_vec())
        }
    }
}

pub(crate) struct Ctx {
    pub js: jetstream::Context,
    /// The deliveries stream's name, whose messages [`recall::Recall`] remembers.
    pub deliveries_stream: String,
    pub subjects: Subjects,
    pub live: Arc<Live>,
    pub store: ConfigStore,
    pub client: http::Client,
    pub jitter: f64,
    /// How much longer than its retry schedule a delivery may keep being deferred or parked.
    pub defer_grace: Duration,
    pub user_agent: String,
    pub gates: Arc<Gates>,
    /// Pokes the release loop: a delivery was parked, or a circuit closed.
    pub wake_release: Arc<tokio::sync::Notify>,
    /// The worker's HTTP request slots (its configured concurrency).
    pub requests: Semaphore,
    /// Held (before a request slot) by the deliveries of the bulk lanes, so that they never
    /// take every request slot from the tenants without a backlog.
    pub bulk_requests: Semaphore,
    /// The bytes of the request bodies being sent (a tenth of the worker's memory budget):
    /// each attempt holds its body's size from before it is rendered until it is answered.
    pub bodies: gancho_store::budget::Budget,
    /// The attempt records' fast batch, when the attempts stream takes them
    /// ([`gancho_store::batch`]).
    pub records: Option<gancho_store::batch::Batched>,
    /// Whether JetStream takes this worker's writes.
    pub pressure: Arc<gancho_store::full::Pressure>,
    /// Endpoints' failing-since marks, and disabling those failing too long.
    pub health: crate::operational::Health,
    /// How often a failed attempt may be logged, per endpoint.
    pub failure_lines: FailureLines,
    /// The deliveries messages this worker finished lately, has in hand, or handed back
    /// with outcomes stored or kept.
    pub recall: recall::Recall,
}

/// At most one failed-attempt line a second per endpoint.
#[derive(Default)]
pub(crate) struct FailureLines(
    std::sync::Mutex<std::collections::HashMap<(String, String), (Instant, u64)>>,
);

impl FailureLines {
    /// Endpoints remembered now (at most 100,000: past it the memory starts over).
    pub(crate) fn entries(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// `Some(lines left out since the last one)` when a line may be written now.
    fn allow(&self, tenant: &str, endpoint: &str) -> Option<u64> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        let now = Instant::now();
        let key = (tenant.to_owned(), endpoint.to_owned());
        let Some(entry) = map.get_mut(&key) else {
            map.insert(key, (now, 0));
            return Some(0);
        };
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            let left_out = entry.1;
            *entry = (now, 0);
            Some(left_out)
        } else {
            entry.1 += 1;
            None
        }
    }
}
