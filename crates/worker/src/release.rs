//! Held deliveries: a paused endpoint's, and those parked while an endpoint's circuit is
//! open, it is stalled, or its queue in this worker is full. They wait on
//! `gancho.hold.<tenant>.<endpoint>` in the held stream, where no consumer reads them: they
//! take no ack-pending slot and spend no attempt. Every worker looks at the held subjects whenever its config
//! snapshot changes and every [`LOOK_EVERY`]; a subject whose endpoint is no longer paused
//! (resumed, disabled or deleted) is released: each message goes back to the partition
//! subject it came from (its `Gancho-Target` header) and is acked only after that publish is
//! stored, so the worker's usual rules apply to it: delivered, or dead-lettered as
//! `endpoint_disabled` or `endpoint_gone`.
//!
//! The held stream is apart from the deliveries stream so that a dead endpoint's pile does
//! not lie between the deliveries that are sent and removed within seconds: there, it left
//! the deliveries stream's blocks mostly holes, which nats-server loaded and compacted over
//! and over (a gigabyte of its heap after half an hour at fan-out 100 with a fifth of the
//! endpoints dead). Deliveries held by an older version, on `gancho.held.<tenant>.<endpoint>`
//! in the deliveries stream, are looked at and released the same way.
//!
//! Only the worker serving the endpoint's partition releases its subject, since it alone
//! knows the endpoint's gate: while the circuit is open, the endpoint is stalled or its
//! receiver's pause lasts, the parked deliveries stay; when a cool-down is over one is
//! released to be the probe (another at most every 10 s while none comes back); otherwise as
//! many go as the endpoint's queue has room for, the rest as it drains (looked at every
//! second while some wait).
//!
//! Workers releasing the same subject share one durable consumer named after it, and the
//! republish carries `Nats-Msg-Id: release:<held stream>:<held sequence>`, so two workers,
//! or a release redone after a crash, never make two deliveries of one held message.
//!
//! Parked deliveries are kept no longer than a deferred one would be: every [`SWEEP_EVERY`]
//! the worker reads each parked subject it keeps from its oldest message and dead-letters,
//! as `exhausted`, those older than their endpoint's whole retry schedule plus
//! `GANCHO_DEFER_GRACE`, up to the first younger one. Without it an endpoint dead for days
//! kept every delivery it was sent (let out one probe at a time) until it was disabled:
//! storage that grew for days, and with `GANCHO_DELIVERIES_MAX_BYTES` set, a router that
//! stopped routing for every tenant once they filled its room.
//!
//! A full store (the server's `max_file_store`) refuses the copy. Held deliveries and
//! unrouted events can fill it alone, and then nothing would ever free room: so a held
//! message whose copy is refused for lack of room is delivered from where it is, by the
//! worker's usual handler, and acked once its outcome is stored, which frees its room.

use crate::deliver::Ctx;
use crate::gate::Parked;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream::Stream};
use futures::TryStreamExt;
use gancho_core::subject::TARGET_HEADER;
use gancho_core::Subjects;
use gancho_store::consume::Handled;
use gancho_store::refusal;
use gancho_store::Live;
use gancho_telemetry::names;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often held subjects are looked at when nothing in the config changed (a worker that
/// crashed between a resume and its release leaves work only this long).
pub const LOOK_EVERY: Duration = Duration::from_secs(10);
/// Held messages moved per round trip.
const BATCH: usize = 256;
/// A release consumer nobody pulled from for this long is removed by the server.
const CONSUMER_IDLE: Duration = Duration::from_secs(60);

/// The least time between two looks, however often the loop is poked.
const LOOK_SPACING: Duration = Duration::from_millis(250);

/// How often held subjects are looked at while some wait for an open circuit's cool-down to
/// end (to let one out as the probe).
const LOOK_WHILE_PARKED: Duration = Duration::from_secs(1);

/// How often the parked subjects are swept of deliveries that outlived their patience.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What the release loop needs from the worker.
pub(crate) struct Parking {
    /// The worker's delivery context: its gates, its handler (for held messages the store
    /// has no room to copy), its dead letters, and `wake_release`, poked when a delivery is
    /// parked or a circuit closes.
    pub ctx: Arc<Ctx>,
    /// The partitions this worker serves: it alone releases their endpoints' subjects.
    pub owned: watch::Receiver<Vec<u32>>,
}

pub(crate) async fn run(live: Arc<Live>, parking: Parking, cancel: CancellationToken) {
    let (js, subjects) = (&parking.ctx.js, &parking.ctx.subjects);
    let mut changes = live.changes();
    let mut parked = false;
    let mut swept = tokio::time::Instant::now();
    // A busy server can time out a look now and then; only a run of failures is news.
    let mut failures = 0u32;
    loop {
        // A release cut short by shutdown is redone by the next worker: every held message
        // is acked only after its republish is stored, under a message id.
        let sweep = swept.elapsed() >= SWEEP_EVERY;
        let looked = tokio::select! {
            _ = cancel.cancelled() => return,
            r = look(js, subjects, &live, &parking, sweep, &cancel) => r,
        };
        if sweep {
            swept = tokio::time::Instant::now();
        }
        match looked {
            Ok(waiting) => {
                failures = 0;
                parked = waiting;
            }
            Err(e) => {
                failures += 1;
                if failures % 6 == 3 {
                    warn!(error = %e, failures, "Cannot release held deliveries; trying again later.");
                } else {
                    tracing::debug!(error = %e, "A look at held deliveries failed.");
                }
            }
        }
        let looked_at = tokio::time::Instant::now();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changes.changed() => {}
            _ = parking.ctx.wake_release.notified() => {}
            _ = tokio::time::sleep(if parked { LOOK_WHILE_PARKED } else { LOOK_EVERY }) => {}
        }
        // Every parked delivery pokes the loop: a thousand a second must not become a
        // thousand looks (each one a stream info request to JetStream).
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(looked_at + LOOK_SPACING) => {}
        }
    }
}

/// Where held deliveries wait: the held stream, and the deliveries stream's subjects of an
/// older version.
#[derive(Clone, Copy)]
enum Place {
    Held,
    Legacy,
}

impl Place {
    fn stream(self, subjects: &Subjects) -> String {
        match self {
            Place::Held => subjects.held_stream(),
            Place::Legacy => subjects.deliveries_stream(),
        }
    }
    fn wildcard(self, subjects: &Subjects) -> String {
        match self {
            Place::Held => subjects.held_wildcard(),
            Place::Legacy => subjects.legacy_held_wildcard(),
        }
    }
    /// The message id of a released copy of held message `seq`: what an older version
    /// writes for its own subjects, so a release it shares with one makes no duplicate.
    fn release_id(self, seq: u64) -> String {
        match self {
            Place::Held => format!("release:held:{seq}"),
            Place::Legacy => format!("release:{seq}"),
        }
    }
}

/// Counts what is held and releases the subjects of this worker's partitions whose endpoint
/// is not paused, in both places. Returns whether some wait on the gate.
async fn look(
    js: &jetstream::Context,
    subjects: &Subjects,
    live: &Live,
    parking: &Parking,
    sweep: bool,
    cancel: &CancellationToken,
) -> Result<bool, async_nats::Error> {
    let mut total = 0;
    let mut waiting = false;
    for place in [Place::Held, Place::Legacy] {
        let (held, waits) = look_in(place, js, subjects, live, parking, sweep, cancel).await?;
        total += held;
        waiting |= waits;
    }
    metrics::gauge!(names::DELIVERIES_HELD_NOW).set(total as f64);
    Ok(waiting)
}

/// Counts what is held in `place` and releases the subjects of this worker's partitions
/// whose endpoint is not paused: all of a subject, as many as the endpoint's queue has room
/// for, one to probe an open circuit whose cool-down is over, or none while it cools down,
/// stalls or is paused by its receiver. With `sweep`, the subjects whose endpoint's gate
/// keeps some are first swept of those that outlived their patience. Returns how many are
/// held there and whether some wait on the gate.
async fn look_in(
    place: Place,
    js: &jetstream::Context,
    subjects: &Subjects,
    live: &Live,
    parking: &Parking,
    sweep: bool,
    cancel: &CancellationToken,
) -> Result<(usize, bool), async_nats::Error> {
    let stream = js.get_stream(place.stream(subjects)).await?;
    let mut held = stream.info_with_subjects(place.wildcard(subjects)).await?;
    let mut total = 0usize;
    let mut releasable = Vec::new();
    let mut kept = Vec::new();
    let mut waiting = false;
    let owned = parking.owned.borrow().clone();
    while let Some((subject, count)) = held.try_next().await? {
        total += count;
        let Some((t, e)) = subjects.parse_held(&subject) else {
            // Not a subject gancho writes; move it back all the same.
            releasable.push((subject, None));
            continue;
        };
        let partition = gancho_core::subject::partition(t, e, gancho_core::subject::PARTITIONS);
        if !owned.contains(&partition) {
            continue;
        }
        // Held while paused and enabled. Disabled: the worker dead-letters what it held as
        // `endpoint_disabled`; not in the snapshot (deleted): as `endpoint_gone`.
        let (holding, stopped) = match live.load().endpoint(t, e) {
            Some(ep) => (ep.config.paused && !ep.config.disabled, ep.config.disabled),
            None => (false, true),
        };
        if holding {
            continue;
        }
        if stopped {
            // Whatever its circuit says: they go without a request.
            releasable.push((subject, None));
            continue;
        }
        // Parked by the endpoint's gate in this worker (a fresh worker has none, and
        // releases them all).
        let gate = parking.ctx.gates.peek(t, e);
        match gate.as_ref().map(|g| g.parked()) {
            None => releasable.push((subject, None)),
            Some(Parked::Release(room)) if room >= count => releasable.push((subject, None)),
            Some(Parked::Release(room)) => {
                // Its queue takes only so many now: the rest go as it drains (which pokes
                // this loop), or at the next look.
                if let Some(g) = &gate {
                    g.overflowed();
                }
                waiting = true;
                kept.push(subject.clone());
                releasable.push((subject, Some(room)));
            }
            Some(Parked::Probe) => {
                waiting = true;
                kept.push(subject.clone());
                releasable.push((subject, Some(1)));
            }
            Some(Parked::Keep) => {
                waiting = true;
                kept.push(subject);
            }
        }
    }
    if sweep {
        sweep_kept(&stream, subjects, kept, &parking.ctx, cancel).await?;
    }
    for (subject, limit) in releasable {
        let n = release(
            place,
            js,
            &stream,
            subjects,
            &subject,
            limit,
            &parking.ctx,
            cancel,
        )
        .await?;
        if n > 0 && limit.is_none() {
            info!(subject, deliveries = n, "Released held deliveries.");
        }
    }
    Ok((total, waiting))
}

/// The durable consumer that reads `held` (shared by every worker releasing it).
async fn reader(
    stream: &Stream,
    subjects: &Subjects,
    held: &str,
) -> Result<consumer::PullConsumer, async_nats::Error> {
    let name = subjects.release_consumer(held);
    let consumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: held.to_owned(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 4 * BATCH as i64,
                inactive_threshold: CONSUMER_IDLE,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

/// Sweeps each subject of `kept` of the deliveries that outlived their patience.
async fn sweep_kept(
    stream: &Stream,
    subjects: &Subjects,
    kept: Vec<String>,
    ctx: &Ctx,
    cancel: &CancellationToken,
) -> Result<(), async_nats::Error> {
    for subject in kept {
        let n = sweep_outlived(stream, subjects, &subject, ctx, cancel).await?;
        if n > 0 {
            info!(
                subject,
                deliveries = n,
                "Dead-lettered parked deliveries older than their retry schedule plus the grace."
            );
        }
    }
    Ok(())
}

/// Dead-letters the messages on `held`, oldest first, that outlived their patience, up to
/// the first that did not; that one and those after it are handed back at once (a nak
/// without delay). Returns how many were dead-lettered.
async fn sweep_outlived(
    stream: &Stream,
    subjects: &Subjects,
    held: &str,
    ctx: &Ctx,
    cancel: &CancellationToken,
) -> Result<u64, async_nats::Error> {
    let consumer = reader(stream, subjects, held).await?;
    let mut expired = 0u64;
    while !cancel.is_cancelled() {
        let msgs: Vec<jetstream::Message> = consumer
            .fetch()
            .max_messages(BATCH)
            .messages()
            .await?
            .try_collect()
            .await?;
        if msgs.is_empty() {
            break;
        }
        let mut outlived = Vec::new();
        let mut young = Vec::new();
        for m in msgs {
            match young.is_empty().then(|| ctx.sweepable(&m)).flatten() {
                Some(delivery) => outlived.push((m, delivery)),
                None => young.push(m),
            }
        }
        let back = young
            .iter()
            .map(|m| gancho_store::writes::hand_back(m, None));
        let gone = outlived.into_iter().map(|(m, d)| ctx.expire_parked(m, d));
        let (back, gone) = futures::join!(
            futures::future::join_all(back),
            futures::future::join_all(gone)
        );
        let done = gone.iter().filter(|h| matches!(h, Handled::Done)).count();
        expired += done as u64;
        if let Some(Err(e)) = back.into_iter().find(Result::is_err) {
            return Err(e);
        }
        if !young.is_empty() || done < gone.len() {
            // The rest are younger; or an outcome could not be stored: next sweep.
            break;
        }
    }
    Ok(expired)
}

/// Moves every message on `held` (in `place`) back to its partition subject.
#[allow(
    clippy::too_many_arguments,
    reason = "the place, its stream and subject, the limit, and the worker's context and token"
)]
async fn release(
    place: Place,
    js: &jetstream::Context,
    stream: &Stream,
    subjects: &Subjects,
    held: &str,
    limit: Option<usize>,
    ctx: &Ctx,
    cancel: &CancellationToken,
) -> Result<u64, async_nats::Error> {
    let consumer = reader(stream, subjects, held).await?;
    let wildcard = subjects.deliveries_wildcard();
    let deliveries_prefix = wildcard.trim_end_matches('>');
    let mut released = 0u64;
    loop {
        let left = limit.map_or(BATCH, |l| l.saturating_sub(released as usize));
        if left == 0 {
            return Ok(released);
        }
        let msgs: Vec<jetstream::Message> = consumer
            .fetch()
            .max_messages(left.min(BATCH))
            .messages()
            .await?
            .try_collect()
            .await?;
        if msgs.is_empty() {
            return Ok(released);
        }
        let moves = msgs.into_iter().map(|m| async move {
            let target = m
                .headers
                .as_ref()
                .and_then(|h| h.get(TARGET_HEADER))
                .map(|v| v.as_str().to_owned())
                .filter(|t| t.starts_with(deliveries_prefix))
                .unwrap_or_else(|| subjects.delivery(0));
            let seq = m.info().map(|i| i.stream_sequence)?;
            let publish = PublishMessage::build()
                .payload(m.payload.clone())
                .message_id(place.release_id(seq));
            let copied = async { js.send_publish(target, publish).await?.into_future().await };
            match copied.await {
                Ok(_) => {
                    m.ack().await?;
                    Ok(true)
                }
                Err(e) if refusal::is_full(&e) => {
                    // No room for the copy: delivered from here, acked after its outcome.
                    Ok(matches!(
                        ctx.handle(m, cancel.child_token()).await,
                        Handled::Done
                    ))
                }
                Err(e) => Err(async_nats::Error::from(e)),
            }
        });
        let mut moved = 0u64;
        let mut failed = None;
        for result in futures::future::join_all(moves).await {
            match result {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(e) => failed = Some(e),
            }
        }
        released += moved;
        metrics::counter!(names::DELIVERY_RELEASED).increment(moved);
        if let Some(e) = failed {
            return Err(e);
        }
        if moved == 0 {
            // Everything handed back (no room even to record an outcome): try again later.
            return Ok(released);
        }
    }
}
