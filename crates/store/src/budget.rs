//! A role's memory budget in bytes: what it may hold of messages at once, whatever their
//! size. Counts alone (slots, windows, intakes) bound memory only for small messages: at
//! 250 KB an event, the router's 256-event pulls and 4,096 publish slots and the worker's
//! 2,048-message intake came to hundreds of MB each, and a pull of many large messages
//! queued more than nats-server lets wait for one client (`max_pending`, 64 MiB), which
//! closes the connection as a slow consumer: acks lost on it came back as duplicates.
//!
//! A [`Budget`] is a semaphore of KiB. Pulls reserve bytes before they ask and ask the
//! server for at most that many (`max_bytes`); each message pulled keeps its share until it
//! is finished, and the rest of the reservation goes back when the pull ends. Publishes
//! and request bodies hold their size while in flight. Past the budget a role waits: it
//! pulls, publishes or sends less, never drops anything. A single message larger than the
//! whole budget takes all of it (so the budget is exceeded by at most one message).

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most one pull may ask for, in KiB (unless one message is larger: see
/// [`Budget::reserve`]). A worker's 16 partitions pulling at once ask the server for at most
/// 16 times this, well under nats-server's default per-client `max_pending` (64 MiB).
pub const PULL_MAX_KIB: u32 = 2 * 1024;

/// A role's budget for one kind of holding, in KiB.
#[derive(Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total_kib: u32,
}

/// Held bytes of a [`Budget`]: given back on drop.
pub type Held = OwnedSemaphorePermit;

/// KiB to hold for `bytes` (at least 1).
pub fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .max(1)
}

impl Budget {
    /// A budget of `bytes` (at least 1 MiB).
    pub fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes / 1024)
            .unwrap_or(u32::MAX >> 3)
            .clamp(1024, Semaphore::MAX_PERMITS as u32);
        Self {
            sem: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// The whole budget, in bytes.
    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_kib) * 1024
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

    /// Reserves bytes for a pull: waits for `at_least` KiB (the largest message the server
    /// may hand out, so a pull never asks for less than one message), then takes what else is
    /// free up to `at_most`. Split each message's share off with [`take`].
    pub async fn reserve(&self, at_least: u32, at_most: u32) -> Held {
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

/// Splits a message of `bytes` off a pull's reservation. The server never hands out more
/// than the pull asked for, so the reservation covers it; should it not, the message takes
/// what is left (the budget is then exceeded by less than that message).
pub fn take(reservation: &mut Held, bytes: usize) -> Option<Held> {
    let n = (kib(bytes) as usize).min(reservation.num_permits());
    reservation.split(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pulls_reserve_messages_keep_their_share_and_the_rest_goes_back() {
        let budget = Budget::new(4 << 20);
        let mut pull = budget.reserve(1024, PULL_MAX_KIB).await;
        assert_eq!(pull.num_permits(), 2048);
        let msg = take(&mut pull, 250_000).unwrap();
        assert_eq!(msg.num_permits(), 245);
        drop(pull);
        assert_eq!(budget.used_bytes(), 245 * 1024);
        // A second pull gets the rest, not more.
        let other = budget.reserve(1024, 8192).await;
        assert_eq!(other.num_permits(), 4096 - 245);
        drop((msg, other));
        assert_eq!(budget.used_bytes(), 0);
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
