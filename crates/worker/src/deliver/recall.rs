//! What this worker remembers of the deliveries stream's messages it was given, by stream
//! sequence, so that a message coming back does not send its webhooks again. A message comes
//! back to the worker that serves its partition when
//! - its ack was lost (a failover, a partition between the worker and the consumer's
//!   leader): its outcomes are stored, so the copy is acked and nothing is sent
//!   ([`Arrival::Finished`]);
//! - a consumer leader elected meanwhile (one that never saw the progress acks) delivers it
//!   again while this worker still works on it: the copy is answered as the first one is
//!   ([`Arrival::Copy`]);
//! - it was handed back because an outcome could not be stored: the outcomes decided (the
//!   webhook sent and answered) are kept here and stored when it comes back, instead of
//!   sending again ([`Left`]); for a batch, so are which of its deliveries' outcomes are
//!   stored.
//!
//! The fault suite's cluster partition row gave up to 2,536 duplicates in 10,000 deliveries
//! before this: the worker sent, could not store the outcomes for 30 s, handed the messages
//! back and sent them again. After a crash or a partition move the new worker has none of
//! this and sends again, with the same `webhook-id`.

use super::outcome::Next;
use async_nats::jetstream;
use gancho_proto::Attempt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a finished message is remembered: its ack lost, a copy comes back after the
/// consumer's ack wait (10 s), or after a partition heals (the fault suite's is 30 s).
const FINISHED_FOR: Duration = Duration::from_secs(90);
/// Most finished messages remembered (the oldest are forgotten first): 90 s at about
/// 2,200 messages a second, about 4 MB.
const FINISHED_MAX: usize = 200_000;
/// Most handed-back messages remembered; past it the memory starts over (duplicates, never a
/// loss). It fills only while JetStream does not take the worker's writes.
const LEFT_MAX: usize = 10_000;

/// What is known of a message when it arrives.
pub(super) enum Arrival {
    /// Not in hand: work on it, with what was done of it before (empty when nothing).
    New(Left),
    /// A copy of a message in hand: it is answered (acked or handed back) with the first.
    Copy,
    /// Finished here lately (its outcomes stored): ack the copy, send nothing.
    Finished,
}

/// What was done of a message handed back.
#[derive(Default)]
pub(super) struct Left {
    /// The endpoints (of a batch) whose outcome is stored.
    pub stored: HashSet<String>,
    /// Outcomes decided but not stored, by endpoint id: stored when the message comes back.
    pub unstored: HashMap<String, Decided>,
}

impl Left {
    fn is_empty(&self) -> bool {
        self.stored.is_empty() && self.unstored.is_empty()
    }

    /// The outcome decided for `endpoint` and not stored, taken out.
    pub(super) fn decided(this: &Mutex<Self>, endpoint: &str) -> Option<Decided> {
        lock(this).unstored.remove(endpoint)
    }

    /// Notes that `endpoint`'s outcome is stored.
    pub(super) fn stored(this: &Mutex<Self>, endpoint: &str) {
        let mut left = lock(this);
        left.unstored.remove(endpoint);
        left.stored.insert(endpoint.to_owned());
    }

    /// Keeps an outcome that could not be stored.
    pub(super) fn unstored(this: &Mutex<Self>, endpoint: &str, decided: Decided) {
        lock(this).unstored.insert(endpoint.to_owned(), decided);
    }
}

/// An attempt's outcome as decided: what its delivery's attempt count became, its record,
/// and what follows.
pub(super) struct Decided {
    pub attempts: u32,
    pub record: Option<Attempt>,
    pub next: Next,
}

/// How a message's turn in this worker ended.
pub(super) enum Ending {
    /// Its outcomes are stored and it was acked.
    Finished,
    /// Handed back, with what was done of it.
    HandedBack(Left),
}

#[derive(Default)]
pub(crate) struct Recall(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    /// Messages being worked on, with the copies of each that came meanwhile.
    in_hand: HashMap<u64, Vec<jetstream::Message>>,
    finished: HashSet<u64>,
    /// `finished` in the order it was filled, to forget the oldest.
    finished_order: VecDeque<(Instant, u64)>,
    left: HashMap<u64, Left>,
}

/// Room kept beyond what a collection holds before it is given back: a burst (a backlog
/// after a restart) grows these to its peak, and their capacity would otherwise stay there.
const SLACK: usize = 4096;

impl Inner {
    /// Gives back the room a burst left: a collection holding less than half its capacity
    /// (and more than [`SLACK`] short of it) is shrunk to one and a half times its length, so
    /// steady traffic does not shrink and grow it in turn.
    fn shrink_after_burst(&mut self) {
        let wasteful = |len: usize, capacity: usize| capacity > 2 * len + SLACK;
        let len = self.finished.len();
        if wasteful(len, self.finished.capacity()) {
            self.finished.shrink_to(len + len / 2);
        }
        let len = self.finished_order.len();
        if wasteful(len, self.finished_order.capacity()) {
            self.finished_order.shrink_to(len + len / 2);
        }
        let len = self.in_hand.len();
        if wasteful(len, self.in_hand.capacity()) {
            self.in_hand.shrink_to(len + len / 2);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recall {
    /// Notes that the message at `seq` arrived (`msg`, kept when it is a copy).
    pub(super) fn arrive(&self, seq: u64, msg: &jetstream::Message) -> Arrival {
        let mut inner = lock(&self.0);
        if let Some(copies) = inner.in_hand.get_mut(&seq) {
            copies.push(msg.clone());
            return Arrival::Copy;
        }
        if inner.finished.contains(&seq) {
            return Arrival::Finished;
        }
        inner.in_hand.insert(seq, Vec::new());
        Arrival::New(inner.left.remove(&seq).unwrap_or_default())
    }

    /// Notes how the message at `seq` ended here; returns the copies that came meanwhile,
    /// to be answered the same way.
    pub(super) fn leave(&self, seq: u64, ending: Ending) -> Vec<jetstream::Message> {
        let mut inner = lock(&self.0);
        let copies = inner.in_hand.remove(&seq).unwrap_or_default();
        match ending {
            Ending::Finished => {
                let now = Instant::now();
                while let Some(&(at, old)) = inner.finished_order.front() {
                    if now.duration_since(at) < FINISHED_FOR
                        && inner.finished_order.len() < FINISHED_MAX
                    {
                        break;
                    }
                    inner.finished_order.pop_front();
                    inner.finished.remove(&old);
                }
                if inner.finished.insert(seq) {
                    inner.finished_order.push_back((now, seq));
                }
                inner.shrink_after_burst();
            }
            Ending::HandedBack(left) if !left.is_empty() => {
                if inner.left.len() >= LEFT_MAX {
                    inner.left.clear();
                }
                inner.left.insert(seq, left);
            }
            Ending::HandedBack(_) => {}
        }
        copies
    }

    /// Messages remembered now: (finished, handed back with something done).
    pub(crate) fn entries(&self) -> (usize, usize) {
        let inner = lock(&self.0);
        (inner.finished.len(), inner.left.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decided() -> Decided {
        Decided {
            attempts: 1,
            record: None,
            next: Next::Done,
        }
    }

    #[test]
    fn the_room_a_burst_took_is_given_back_once_it_is_over() {
        let recall = Recall::default();
        let burst = 100_000;
        for seq in 0..burst {
            lock(&recall.0).in_hand.insert(seq, Vec::new());
        }
        for seq in 0..burst {
            recall.leave(seq, Ending::Finished);
        }
        let peak = lock(&recall.0).finished_order.capacity();
        assert!(peak >= burst as usize);
        // The burst's records age out while steady traffic goes on.
        {
            let mut inner = lock(&recall.0);
            let old = Instant::now() - FINISHED_FOR - Duration::from_secs(1);
            for entry in &mut inner.finished_order {
                entry.0 = old;
            }
        }
        for seq in burst..burst + 1_000 {
            lock(&recall.0).in_hand.insert(seq, Vec::new());
            recall.leave(seq, Ending::Finished);
        }
        let inner = lock(&recall.0);
        assert_eq!(inner.finished.len(), 1_000);
        assert!(
            inner.finished_order.capacity() <= 2 * 1_000 + SLACK,
            "{} kept of {peak}",
            inner.finished_order.capacity()
        );
        assert!(inner.finished.capacity() <= 2 * 1_000 + 2 * SLACK);
        assert!(inner.in_hand.capacity() <= SLACK * 2);
    }

    #[test]
    fn a_finished_message_is_known_and_a_left_one_comes_back_with_its_outcomes() {
        let recall = Recall::default();
        let mut inner = lock(&recall.0);
        inner.in_hand.insert(7, Vec::new());
        drop(inner);
        assert!(recall.leave(7, Ending::Finished).is_empty());
        assert_eq!(recall.entries(), (1, 0));
        let left = Mutex::new(Left::default());
        Left::stored(&left, "a");
        Left::unstored(&left, "b", decided());
        let left = left.into_inner().unwrap();
        recall.leave(8, Ending::HandedBack(left));
        assert_eq!(recall.entries(), (1, 1));
        // Nothing done: nothing kept.
        recall.leave(9, Ending::HandedBack(Left::default()));
        assert_eq!(recall.entries(), (1, 1));
        let inner = lock(&recall.0);
        let left = inner.left.get(&8).unwrap();
        assert!(left.stored.contains("a") && left.unstored.contains_key("b"));
    }

    #[test]
    fn finished_messages_are_forgotten_oldest_first_past_the_bound() {
        let recall = Recall::default();
        for seq in 0..(FINISHED_MAX as u64 + 10) {
            recall.leave(seq, Ending::Finished);
        }
        let inner = lock(&recall.0);
        assert_eq!(inner.finished.len(), FINISHED_MAX);
        assert!(!inner.finished.contains(&9) && inner.finished.contains(&10));
    }

    #[test]
    fn handed_back_messages_are_bounded() {
        let recall = Recall::default();
        for seq in 0..(LEFT_MAX as u64 + 1) {
            let left = Mutex::new(Left::default());
            Left::stored(&left, "a");
            recall.leave(seq, Ending::HandedBack(left.into_inner().unwrap()));
        }
        assert!(recall.entries().1 <= LEFT_MAX);
    }
}
