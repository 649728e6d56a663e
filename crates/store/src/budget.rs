//! A role's memory budget in bytes: what it may hold of messages at once, whatever their
//! size. Counts alone (slots, windows, intakes) bound memory only for small messages: at
//! 250 KB an event, the router's 256-event pulls and 4,096 publish slots and the worker's
//! 2,048-message intake came to hundreds of MB each, and a pull of many large messages
//! queued more than nats-server lets wait for one client (`max_pending`, 64 MiB), which
//! closes the connection as a slow consumer: acks lost on it came back as duplicates.
//!
//! A [`Budget`] is a semaphore of KiB. Publishes and request bodies hold their size while in
//! flight ([`Budget::hold`]). A consumer's [`Intake`] reserves bytes before each pull and
//! asks for as many messages as fit in them at the size its messages have had lately
//! ([`Sizes`]); each message pulled keeps its [`Share`] (topped up if it is larger than
//! expected) until it is finished, and the rest of the reservation goes back when the pull
//! ends.
//!
//! Past the budget a role waits: it pulls, publishes or sends less, never drops anything. A
//! single message larger than the whole budget takes all of it (so the budget is exceeded by
//! at most one message).
//!
//! Not the pull's `max_bytes`: with it, nats-server 2.15.1 ends a pull on a replicated
//! consumer with "409 Batch Completed" before the message it waits to replicate, the client
//! stops listening, and the message comes back only after the ack wait, for ever (a 3-node
//! cluster routed nothing).

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most one pull may reserve, in KiB (unless one message is larger). A worker's 16
/// partitions pulling at once ask the server for about 16 times this at most, well under
/// nats-server's default per-client `max_pending` (64 MiB).
pub const PULL_MAX_KIB: u32 = 2 * 1024;

/// A role's budget for one kind of holding, in KiB. Clones share it.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total_kib: u32,
}

/// Held bytes of a [`Budget`]: given back on drop.
pub type Held = OwnedSemaphorePermit;

/// KiB to hold for `bytes` (at least 1).
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .max(1)
}

impl Budget {
    /// A budget of `bytes` (at least 1 MiB).
    pub fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes / 1024)
            .unwrap_or(u32::MAX)
            .clamp(1024, Semaphore::MAX_PERMITS as u32);
        Self {
            sem: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> u64 {
        u64::from(self.total_kib).saturating_sub(self.sem.available_permits() as u64) * 1024
    }

    /// Holds `bytes` until the returned permit drops, waiting for them to be free. More than
    /// the whole budget holds the whole budget.
    pub async fn hold(&self, bytes: usize) -> Held {
        let n = kib(bytes).min(self.total_kib);
        self.sem
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the semaphore is never closed")
    }

    /// Waits for `at_least` KiB (one message of the expected size, so a pull always asks for
    /// at least one), then takes what else is free up to `at_most`.
    async fn reserve(&self, at_least: u32, at_most: u32) -> Held {
        let at_least = at_least.clamp(1, self.total_kib);
        let mut held = self
            .sem
            .clone()
            .acquire_many_owned(at_least)
            .await
            .expect("the semaphore is never closed");
        let more = at_most
            .saturating_sub(at_least)
            .min(self.sem.available_permits() as u32);
        if more > 0 {
            if let Ok(extra) = self.sem.clone().try_acquire_many_owned(more) {
                held.merge(extra);
            }
        }
        held
    }
}

/// A consumer's intake in bytes: its share of the role's budget, and the size its messages
/// have had lately.
#[derive(Debug)]
pub struct Intake {
    budget: Budget,
    sizes: Sizes,
}

/// A pulled message's share of its consumer's budget, held until it is finished.
#[derive(Debug)]
pub struct Share {
    held: Held,
    /// KiB the message weighs.
    wants: usize,
}

impl Intake {
    /// `largest`: the largest message the server may hand out (its `max_payload`), what
    /// the first pull expects.
    pub fn new(budget: Budget, largest: usize) -> Self {
        Self {
            budget,
            sizes: Sizes::new(largest),
        }
    }

    /// Like [`Intake::new`], expecting messages of `bytes` at first: for a consumer whose
    /// first pull asks for one message (a tenant's, of which a router may have thousands
    /// waiting), so that the waiting pulls do not each hold the largest possible message.
    pub fn expecting(budget: Budget, bytes: usize) -> Self {
        Self {
            budget,
            sizes: Sizes::new(bytes),
        }
    }

    /// Reserves bytes for a pull (up to [`PULL_MAX_KIB`], at least one message of the
    /// recent size) and says how many messages of that size fit in them.
    pub async fn reserve(&self) -> (Held, usize) {
        self.reserve_for(usize::MAX).await
    }

    /// Like [`Intake::reserve`], for a pull of at most `messages`: no more is reserved than
    /// they need at the recent size.
    pub async fn reserve_for(&self, messages: usize) -> (Held, usize) {
        let per = self.sizes.kib();
        let wanted = u32::try_from(messages.saturating_mul(per as usize)).unwrap_or(u32::MAX);
        let held = self
            .budget
            .reserve(per, PULL_MAX_KIB.max(per).min(wanted.max(per)))
            .await;
        let fit = self.sizes.fit(held.num_permits());
        (held, fit)
    }

    /// Splits the share of a pulled message of `bytes` off its pull's reservation: all it
    /// weighs, or what is left ([`Intake::complete`] holds the rest).
    pub fn take(&self, reservation: &mut Held, bytes: usize) -> Share {
        self.sizes.saw(bytes);
        let wants = (kib(bytes) as usize).min(self.budget.total_kib as usize);
        let n = wants.min(reservation.num_permits());
        let held = reservation
            .split(n)
            .expect("never more than the reservation holds");
        Share { held, wants }
    }

    /// Holds what `share` lacks (a message larger than its pull expected), waiting for it to
    /// be free.
    pub async fn complete(&self, share: &mut Share) {
        if !share.is_whole() {
            let more = self
                .budget
                .hold((share.wants - share.held.num_permits()) * 1024)
                .await;
            share.held.merge(more);
        }
    }
}

impl Share {
    /// Whether it holds all its message weighs (nothing to wait for).
    pub fn is_whole(&self) -> bool {
        self.held.num_permits() >= self.wants
    }
}

/// The size of the messages a consumer has been getting, in KiB: the largest lately. A
/// larger message raises it at once; each smaller one lowers it by a sixty-fourth, so after
/// a few hundred small messages a burst of large ones is forgotten. It starts at the largest
/// message the server may hand out, so a first pull of large messages cannot overshoot the
/// budget (a pull of small ones starts with a few and grows within a few hundred).
#[derive(Debug)]
struct Sizes(std::sync::atomic::AtomicU32);

impl Sizes {
    /// Sizes starting at `largest` bytes (the server's `max_payload`).
    fn new(largest: usize) -> Self {
        Self(std::sync::atomic::AtomicU32::new(kib(largest)))
    }

    fn kib(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed).max(1)
    }

    fn saw(&self, bytes: usize) {
        let k = kib(bytes);
        let _ = self.0.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |old| Some(k.max(old.saturating_sub(old.div_ceil(64)))),
        );
    }

    /// Messages of the recent size that fit in `reserved` KiB (at least 1).
    fn fit(&self, reserved: usize) -> usize {
        (reserved / self.kib() as usize).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pulls_reserve_messages_keep_their_share_and_the_rest_goes_back() {
        let intake = Intake::new(Budget::new(4 << 20), 1 << 20);
        let (mut pull, fit) = intake.reserve().await;
        assert_eq!((pull.num_permits(), fit), (2048, 2));
        let msg = intake.take(&mut pull, 250_000);
        assert_eq!(msg.held.num_permits(), 245);
        assert!(msg.is_whole());
        drop(pull);
        assert_eq!(intake.budget.used_bytes(), 245 * 1024);
        // A second pull gets the rest, not more.
        let other = intake.budget.reserve(1024, 8192).await;
        assert_eq!(other.num_permits(), 4096 - 245);
        drop((msg, other));
        assert_eq!(intake.budget.used_bytes(), 0);
    }

    #[tokio::test]
    async fn a_message_larger_than_expected_is_topped_up() {
        let intake = Intake::new(Budget::new(4 << 20), 16 << 10);
        let (pull, fit) = intake.reserve().await;
        assert_eq!(fit, PULL_MAX_KIB as usize / 16);
        drop(pull);
        let mut reservation = intake.budget.reserve(16, 16).await;
        let mut msg = intake.take(&mut reservation, 250_000);
        assert_eq!(msg.held.num_permits(), 16);
        assert!(!msg.is_whole());
        intake.complete(&mut msg).await;
        assert_eq!(msg.held.num_permits(), 245);
        assert!(msg.is_whole());
        drop((msg, reservation));
        assert_eq!(intake.budget.used_bytes(), 0);
    }

    #[test]
    fn sizes_follow_the_largest_lately() {
        let sizes = Sizes::new(1 << 20);
        assert_eq!(sizes.fit(2048), 2);
        sizes.saw(250_000);
        assert_eq!(sizes.kib(), 1008, "a smaller message lowers it a little");
        for _ in 0..100 {
            sizes.saw(250_000);
        }
        assert_eq!(sizes.kib(), 245);
        assert_eq!(sizes.fit(2048), 8);
        for _ in 0..400 {
            sizes.saw(1_000);
        }
        assert!(sizes.kib() < 4, "{}", sizes.kib());
        assert_eq!(sizes.fit(2048), 2048 / sizes.kib() as usize);
    }

    #[tokio::test]
    async fn holding_waits_for_room_and_a_giant_takes_the_whole_budget() {
        let budget = Arc::new(Budget::new(1 << 20));
        let giant = budget.hold(10 << 20).await;
        assert_eq!(budget.used_bytes(), 1 << 20);
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.hold(1).await.num_permits() })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "nothing is free while the giant holds it"
        );
        drop(giant);
        assert_eq!(waiting.await.unwrap(), 1);
    }
}
