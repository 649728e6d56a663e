//! What the routers' and the workers' consume loops share ([`crate::by_tenant`],
//! [`crate::partitioned`]): what a handler did with its message, keeping a message in hand
//! with progress acks, and seeing a stall.
//!
//! A stall can be seen: every message in hand is tracked from the moment it is taken to the
//! moment its handler returns. A watchdog task, owned by the consume loop and stopped with it, sets the
//! age of the oldest one as a gauge, and when no handler has finished its message (acked it:
//! [`Handled::Done`]) for the loop's `stall_after` while messages are in hand, it logs one
//! warning (repeated every [`STALL_REPEAT`] while the stall lasts) and counts the stall.

use async_nats::jetstream;
use gancho_telemetry::names;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// While a stall lasts, its warning is repeated this often (once per stall would hide one that
/// goes on for hours; once per check would flood the log).
pub const STALL_REPEAT: Duration = Duration::from_secs(300);
/// The default stall threshold of the consume loops (`stall_after` in their specs).
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// What a handler did with its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Its work is durable and the message acked: progress.
    Done,
    /// Nak'd (or left to its ack wait): it will come back. Not progress.
    HandedBack,
}

/// Runs `fut`, telling JetStream every `every` that `msg` is still being worked on, so work
/// that takes longer than the consumer's ack wait is not redelivered to another process.
///
/// A future of its own rather than an `async fn`: every delivery runs inside one, and an
/// `async fn` would hold `fut` twice (the argument, and the pinned copy it polls), which
/// the worker paid for in memory and in copying.
pub fn with_progress<F: Future>(
    msg: &jetstream::Message,
    every: Duration,
    fut: F,
) -> WithProgress<'_, F> {
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    WithProgress {
        fut,
        msg,
        progress,
        acking: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`with_progress`].
    pub struct WithProgress<'a, F> {
        #[pin]
        fut: F,
        msg: &'a jetstream::Message,
        progress: tokio::time::Interval,
        // The progress ack being sent (rare: once every few seconds of a long wait).
        acking: Option<futures::future::BoxFuture<'a, ()>>,
    }
}

impl<F: Future> Future for WithProgress<'_, F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(done) = this.fut.poll(cx) {
            return std::task::Poll::Ready(done);
        }
        if let Some(ack) = this.acking {
            if ack.as_mut().poll(cx).is_ready() {
                *this.acking = None;
            }
        }
        while this.progress.poll_tick(cx).is_ready() {
            if this.acking.is_none() {
                let msg: &jetstream::Message = this.msg;
                let mut ack: futures::future::BoxFuture<'_, ()> = Box::pin(async move {
                    let _ = msg.ack_with(jetstream::AckKind::Progress).await;
                });
                if ack.as_mut().poll(cx).is_pending() {
                    *this.acking = Some(ack);
                }
            }
        }
        std::task::Poll::Pending
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("cannot create consumer {durable} on {stream}: {reason}")]
    Create {
        durable: String,
        stream: String,
        reason: String,
    },
}

/// What a message weighs against a budget: its payload, subject and (about) its headers.
pub(crate) fn message_size(msg: &jetstream::Message) -> usize {
    msg.payload.len() + msg.subject.len() + 256
}

/// The messages in hand, by the order they were taken, and when one last finished.
pub(crate) struct Tracker {
    state: Mutex<TrackerState>,
}

struct TrackerState {
    next: u64,
    /// Ticket -> when its message was taken. The first entry is the oldest in hand.
    started: BTreeMap<u64, Instant>,
    last_done: Instant,
}

/// What the watchdog reads.
struct Sample {
    in_hand: usize,
    /// Age of the oldest message in hand.
    oldest: Duration,
    /// Time since progress was last possible to see: the later of the last finished message
    /// and the oldest one taken (so work arriving after an idle spell is not a stall).
    without_progress: Duration,
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(TrackerState {
                next: 0,
                started: BTreeMap::new(),
                last_done: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        // Nothing panics while holding it; recover the data if something ever did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn start(&self) -> u64 {
        let mut s = self.lock();
        let ticket = s.next;
        s.next += 1;
        s.started.insert(ticket, Instant::now());
        ticket
    }

    pub(crate) fn finish(&self, ticket: u64, handled: Handled) {
        let mut s = self.lock();
        s.started.remove(&ticket);
        if handled == Handled::Done {
            s.last_done = Instant::now();
        }
    }

    fn sample(&self) -> Sample {
        let s = self.lock();
        let now = Instant::now();
        let oldest = s.started.values().next().copied();
        let since = oldest.map_or(s.last_done, |o| o.max(s.last_done));
        Sample {
            in_hand: s.started.len(),
            oldest: oldest.map_or(Duration::ZERO, |o| now - o),
            without_progress: now - since,
        }
    }
}

/// Samples the tracker until aborted: gauges every check, a warning and a count per stall.
/// `room` (the router's gate, read `false` while it waits for room in the store) tells a
/// wait for storage from a stall: messages that do not finish while it is closed are said
/// once to be waiting for room, and not counted as a stall.
pub(crate) async fn watch(
    tracker: Arc<Tracker>,
    role: &'static str,
    label: &'static str,
    stall_after: Duration,
    room: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let every = (stall_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: Option<Instant> = None;
    let mut said_waiting = false;
    loop {
        tick.tick().await;
        let sample = tracker.sample();
        metrics::gauge!(names::CONSUMER_OLDEST_IN_HAND, "stream" => label)
            .set(sample.oldest.as_secs_f64());
        metrics::gauge!(names::CONSUMER_IN_HAND, "stream" => label).set(sample.in_hand as f64);
        let stalled = sample.in_hand > 0 && sample.without_progress >= stall_after;
        let waiting_for_room = room.as_ref().is_some_and(|open| !*open.borrow());
        if stalled && waiting_for_room && warned.is_none() {
            if !said_waiting {
                info!(
                    role,
                    in_hand = sample.in_hand,
                    without_progress_secs = sample.without_progress.as_secs(),
                    "No message finished for {}s: they wait for room in the store (not a stall).",
                    sample.without_progress.as_secs(),
                );
                said_waiting = true;
            }
            continue;
        }
        said_waiting &= stalled;
        let first = warned.is_none();
        let due = warned.is_none_or(|at| at.elapsed() >= STALL_REPEAT);
        match (stalled, warned) {
            (true, _) if due => {
                if first {
                    metrics::counter!(names::CONSUMER_STALLS, "stream" => label).increment(1);
                }
                warn!(
                    role,
                    in_hand = sample.in_hand,
                    oldest_secs = sample.oldest.as_secs(),
                    without_progress_secs = sample.without_progress.as_secs(),
                    "No message finished for {}s while {} are in hand; is JetStream answering?",
                    sample.without_progress.as_secs(),
                    sample.in_hand,
                );
                warned = Some(Instant::now());
            }
            (false, Some(_)) => {
                // A warning too, so that whoever saw the stall at `warn` sees its end.
                warn!(role, "Messages are finishing again; the stall is over.");
                warned = None;
            }
            _ => {}
        }
    }
}
