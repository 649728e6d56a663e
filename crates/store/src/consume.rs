//! The consume loop the router and the worker share: a durable pull consumer with explicit
//! acks, messages processed concurrently up to a bound, and a drain on shutdown.
//!
//! Lifecycle: a slot (semaphore permit) is taken before a message is pulled from the server
//! buffer, so a message is only taken when it can be worked on at once; each message's task
//! owns its slot and releases it when the handler returns (after its ack or nak). On
//! cancellation no new message is taken, and [`run`] returns once every slot is back.
//!
//! A stall can be seen: every message in hand is tracked from the moment it is taken to the
//! moment its handler returns. A watchdog task, owned by [`run`] and stopped with it, sets the
//! age of the oldest one as a gauge, and when no handler has finished its message (acked it:
//! [`Handled::Done`]) for [`Spec::stall_after`] while messages are in hand, it logs one
//! warning (repeated every [`STALL_REPEAT`] while the stall lasts) and counts the stall.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use gancho_telemetry::names;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// While a stall lasts, its warning is repeated this often (once per stall would hide one that
/// goes on for hours; once per check would flood the log).
pub const STALL_REPEAT: Duration = Duration::from_secs(300);
/// How long one pull waits for messages before it ends and the next one is sent.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Pause before pulling again after a pull request failed (no JetStream leader, say).
const PULL_RETRY: Duration = Duration::from_secs(1);
/// The default of [`Spec::stall_after`].
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

/// What a role consumes and how.
pub struct Spec {
    /// For log lines and spans: `router` or `worker`.
    pub role: &'static str,
    pub stream: String,
    pub durable: String,
    pub filter: String,
    pub ack_wait: Duration,
    /// Consumer-wide; part of the consumer's config, so the same in every process.
    pub max_ack_pending: i64,
    /// Messages handled at once in this process.
    pub concurrency: usize,
    /// Most messages one pull asks for.
    pub max_batch: usize,
    /// The `stream` label of this consumer's metrics: `events` or `deliveries`.
    pub metric_label: &'static str,
    /// No message finished for this long while some are in hand is a stall: a warning and
    /// `gancho_consumer_stalls_total`. Default [`STALL_AFTER`].
    pub stall_after: Duration,
    /// When given, nothing is pulled while it reads `false` (the router waiting for room in
    /// the deliveries stream). Messages in hand finish as usual.
    pub gate: Option<tokio::sync::watch::Receiver<bool>>,
    /// The bytes of messages in hand: each pull asks for no more messages than fit in what
    /// it could reserve, and each message keeps its share until it is finished.
    pub budget: crate::budget::Budget,
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

/// Consumes until `cancel` fires, calling `handle` for each message on its own task.
pub async fn run<F, Fut>(
    js: jetstream::Context,
    spec: Spec,
    cancel: CancellationToken,
    handle: F,
) -> Result<(), ConsumeError>
where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let consumer: consumer::PullConsumer = js
        .create_consumer_on_stream(
            consumer::pull::Config {
                durable_name: Some(spec.durable.clone()),
                description: Some(format!("gancho {}s", spec.role)),
                filter_subject: spec.filter.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                max_ack_pending: spec.max_ack_pending,
                ..Default::default()
            },
            spec.stream.clone(),
        )
        .await
        .map_err(|e| ConsumeError::Create {
            durable: spec.durable.clone(),
            stream: spec.stream.clone(),
            reason: e.to_string(),
        })?;
    let concurrency = spec.concurrency.max(1);
    info!(role = spec.role, consumer = %spec.durable, concurrency, "Consuming.");

    let handle = Arc::new(handle);
    let permits = Arc::new(Semaphore::new(concurrency));
    let intake = Arc::new(crate::budget::Intake::new(
        spec.budget,
        js.client().server_info().max_payload,
    ));
    let tracker = Arc::new(Tracker::new());
    let watchdog = tokio::spawn(
        watch(
            tracker.clone(),
            spec.role,
            spec.metric_label,
            spec.stall_after,
        )
        .instrument(tracing::info_span!("watchdog", role = spec.role)),
    );
    // Explicit pulls, each for exactly as many messages as there are free slots, instead of
    // the client's prefetching message stream: a pulled message starts its ack wait at
    // once, so one should only be pulled when it can be worked on; and the prefetching
    // stream's count of outstanding messages can drift above the truth when a pull's reply
    // races its messages, after which it asks for nothing until its 30 s pull expires (seen
    // at a concurrency of 1: two events, then 30 s of nothing, over and over).
    let mut gate = spec.gate.clone();
    'pulls: loop {
        if let Some(gate) = &mut gate {
            while !*gate.borrow_and_update() {
                tokio::select! {
                    _ = cancel.cancelled() => break 'pulls,
                    changed = gate.changed() => if changed.is_err() { break },
                }
            }
        }
        let first = tokio::select! {
            _ = cancel.cancelled() => break 'pulls,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let mut slots = vec![first];
        while slots.len() < spec.max_batch.max(1) {
            match permits.clone().try_acquire_owned() {
                Ok(p) => slots.push(p),
                Err(_) => break,
            }
        }
        // Bytes too: as many messages as fit in what the budget has free, at the size the
        // events have had lately (budget.rs says why not the pull's max_bytes).
        let (mut reserved, fit) = tokio::select! {
            _ = cancel.cancelled() => break 'pulls,
            r = intake.reserve() => r,
        };
        slots.truncate(fit);
        let batch = consumer
            .batch()
            .max_messages(slots.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                warn!(role = spec.role, error = %e, "Cannot pull from the consumer; trying again in a second.");
                drop(slots);
                tokio::select! {
                    _ = cancel.cancelled() => break 'pulls,
                    _ = tokio::time::sleep(PULL_RETRY) => continue 'pulls,
                }
            }
        };
        // Messages are worked on as they arrive; the pull ends when it is full or expires,
        // and its unused slots go back when `slots` drops.
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => {
                    hand_back(&mut batch, spec.role).await;
                    break 'pulls;
                }
                next = batch.next() => next,
            };
            let msg = match next {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    warn!(role = spec.role, error = %e, "Consumer hiccup; pulling again.");
                    break;
                }
                None => break,
            };
            let permit = slots
                .pop()
                .expect("a pull never yields more than it asked for");
            let mut share = intake.take(&mut reserved, message_size(&msg));
            let handle = handle.clone();
            let ticket = tracker.start();
            let tracker = tracker.clone();
            let intake = intake.clone();
            let progress_every = spec.ack_wait / 3;
            tokio::spawn(
                async move {
                    // Larger than the pull expected: its share first, kept in hand meanwhile.
                    if !share.is_whole() {
                        with_progress(&msg, progress_every, intake.complete(&mut share)).await;
                    }
                    let handled = handle(msg).await;
                    tracker.finish(ticket, handled);
                    drop(permit);
                    drop(share);
                }
                .instrument(tracing::info_span!("message", role = spec.role)),
            );
        }
    }
    // Drain: every slot back means every message taken was acked or nak'd.
    let _ = permits.acquire_many(concurrency as u32).await;
    // Acks are only queued on the connection: send them before the process may exit, or a
    // message done here is redelivered and done twice.
    if let Err(e) = js.client().flush().await {
        warn!(role = spec.role, error = %e, "Cannot flush the last acks; their messages may be redelivered.");
    }
    watchdog.abort();
    info!(role = spec.role, "Stopped consuming.");
    Ok(())
}

/// What a message weighs against a budget: its payload, subject and (about) its headers.
pub(crate) fn message_size(msg: &jetstream::Message) -> usize {
    msg.payload.len() + msg.subject.len() + 256
}

/// On shutdown, gives back at once the messages of the current pull that arrived (or arrive
/// within [`HAND_BACK_WAIT`]) but were not started, instead of leaving them to the ack wait:
/// another process takes them without delay. Any still on the way come back after the ack
/// wait.
async fn hand_back(batch: &mut consumer::pull::Batch, role: &str) {
    let mut handed = 0usize;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(HAND_BACK_WAIT, batch.next()).await {
        if msg.ack_with(jetstream::AckKind::Nak(None)).await.is_ok() {
            handed += 1;
        }
    }
    if handed > 0 {
        info!(role, handed, "Handed back messages pulled but not started.");
    }
}

/// How long a stopping consumer waits for more of its pull to arrive, to hand it back.
const HAND_BACK_WAIT: Duration = Duration::from_millis(50);

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
pub(crate) async fn watch(
    tracker: Arc<Tracker>,
    role: &'static str,
    label: &'static str,
    stall_after: Duration,
) {
    let every = (stall_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: Option<Instant> = None;
    loop {
        tick.tick().await;
        let sample = tracker.sample();
        metrics::gauge!(names::CONSUMER_OLDEST_IN_HAND, "stream" => label)
            .set(sample.oldest.as_secs_f64());
        metrics::gauge!(names::CONSUMER_IN_HAND, "stream" => label).set(sample.in_hand as f64);
        let stalled = sample.in_hand > 0 && sample.without_progress >= stall_after;
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
