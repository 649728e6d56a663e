//! An endpoint's queue in this worker: deliveries that wait for its in-flight slot or its
//! rate without holding one of the worker's request slots.
//!
//! How much an endpoint may queue depends on trust. An endpoint whose last answer was a
//! quick success is trusted: its queue is bounded only by the worker's intake, so a burst to
//! a healthy endpoint is absorbed, not bounced through JetStream. Any other endpoint (new,
//! slow, failing) gets [`QUEUE_PER_SLOT`] waiting deliveries per in-flight slot. When a
//! trusted endpoint fails or slows down, every delivery waiting in its queue is evicted at
//! once, so a dead endpoint never sits on the intake other endpoints need.

use gancho_telemetry::names;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Deliveries an endpoint may have waiting in this worker, per request it may have in
/// flight. Past it, deliveries are parked instead of held (each held one counts against
/// the consumer's ack-pending window).
const QUEUE_PER_SLOT: usize = 4;

/// Counts a delivery as waiting in its endpoint's queue until dropped.
pub struct QueueGuard {
    queued: Arc<AtomicUsize>,
    epoch: u64,
    readmit: u64,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(names::DELIVERIES_QUEUED).decrement(1.0);
    }
}

/// Why a delivery left the queue before its turn.
pub(super) enum Left {
    /// The endpoint's config changed: look it up again.
    Readmitted,
    /// Evicted: the endpoint lost trust, paused, or its circuit opened.
    Evicted,
}

pub(super) struct Queue {
    queued: Arc<AtomicUsize>,
    /// Bound while untrusted.
    small_bound: usize,
    /// Bound while trusted: the worker's whole intake.
    large_bound: usize,
    pub(super) trusted: AtomicBool,
    /// Deliveries were parked because the queue was full: the release loop is poked when
    /// the queue empties, not only at its next look.
    overflow: AtomicBool,
    /// Bumped (with `evictions`) when the endpoint's config changed: waiters queued before
    /// look it up again instead of being deferred.
    readmits: AtomicU64,
    /// Bumped to evict every waiter queued before the bump.
    evictions: watch::Sender<u64>,
}

impl Queue {
    /// A queue for an endpoint with `cap` in-flight slots in a worker of `intake`.
    pub(super) fn new(cap: usize, intake: usize) -> Self {
        Self {
            queued: Arc::new(AtomicUsize::new(0)),
            small_bound: (cap * QUEUE_PER_SLOT).min(intake / 4).max(1),
            large_bound: intake,
            trusted: AtomicBool::new(false),
            overflow: AtomicBool::new(false),
            readmits: AtomicU64::new(0),
            evictions: watch::channel(0).0,
        }
    }

    /// How many may wait: a bulk lane's delivery or a trusted endpoint's, the whole intake.
    pub(super) fn bound(&self, bulk: bool) -> usize {
        if bulk || self.trusted.load(Ordering::Relaxed) {
            self.large_bound
        } else {
            self.small_bound
        }
    }

    pub(super) fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// A place in the queue, when it has fewer than `bound` waiting.
    pub(super) fn join(&self, bound: usize) -> Option<QueueGuard> {
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        if queued >= bound {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        metrics::gauge!(names::DELIVERIES_QUEUED).increment(1.0);
        Some(QueueGuard {
            queued: self.queued.clone(),
            epoch: *self.evictions.borrow(),
            readmit: self.readmits.load(Ordering::Relaxed),
        })
    }

    /// Resolves when `place` is evicted or readmitted, saying which.
    pub(super) async fn left(&self, place: &QueueGuard) -> Left {
        let mut evictions = self.evictions.subscribe();
        let _ = evictions.wait_for(|e| *e != place.epoch).await;
        if self.readmits.load(Ordering::Relaxed) != place.readmit {
            Left::Readmitted
        } else {
            Left::Evicted
        }
    }

    /// Evicts every delivery waiting now.
    pub(super) fn evict(&self) {
        self.evictions.send_modify(|e| *e += 1);
    }

    /// Sends every delivery waiting now round again ([`Left::Readmitted`]).
    pub(super) fn readmit(&self) {
        self.readmits.fetch_add(1, Ordering::Relaxed);
        self.evict();
    }

    /// Sets the trust from an answer; losing it evicts the waiters.
    pub(super) fn trust(&self, trusted: bool) {
        if self.trusted.swap(trusted, Ordering::Relaxed) && !trusted {
            self.evict();
        }
    }

    /// Room for parked deliveries to come back to.
    pub(super) fn room(&self) -> usize {
        self.bound(false).saturating_sub(self.len())
    }

    /// A delivery was parked because the queue was full.
    pub(super) fn overflowed(&self) {
        self.overflow.store(true, Ordering::Relaxed);
    }

    /// Whether the queue is empty while deliveries parked for lack of room in it wait: true
    /// once per overflow.
    pub(super) fn drained(&self) -> bool {
        self.len() == 0 && self.overflow.swap(false, Ordering::Relaxed)
    }
}
