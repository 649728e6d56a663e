//! Held deliveries: a paused endpoint's, and those parked while an endpoint's circuit is
//! open. A paused endpoint's deliveries wait on `gancho.held.<tenant>.<endpoint>`
//! in the deliveries stream, where no consumer reads them: they take no ack-pending slot
//! and spend no attempt. Every worker looks at the held subjects whenever its config
//! snapshot changes and every [`LOOK_EVERY`]; a subject whose endpoint is no longer paused
//! (resumed, disabled or deleted) is released: each message goes back to the partition
//! subject it came from (its `Gancho-Target` header) and is acked only after that publish is
//! stored, so the worker's usual rules apply to it: delivered, or dead-lettered as
//! `endpoint_disabled` or `endpoint_gone`.
//!
//! Only the worker serving the endpoint's partition releases its subject, since it alone
//! knows the endpoint's circuit: while the circuit is open the parked deliveries stay; when
//! its cool-down is over one is released to be the probe (another at most every 10 s while
//! none comes back); when it closes, all of them go.
//!
//! Workers releasing the same subject share one durable consumer named after it, and the
//! republish carries `Nats-Msg-Id: release:<held sequence>`, so two workers, or a release
//! redone after a crash, never make two deliveries of one held message.
//!
//! A full store (the server's `max_file_store`) refuses the copy. Held deliveries and
//! unrouted events can fill it alone, and then nothing would ever free room: so a held
//! message whose copy is refused for lack of room is delivered from where it is, by the
//! worker's usual handler, and acked once its outcome is stored, which frees its room.

use crate::gate::{Gates, Parked};
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream::Stream};
use futures::TryStreamExt;
use gancho_core::subject::TARGET_HEADER;
use gancho_core::Subjects;
use gancho_store::consume::Handled;
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

/// The worker's delivery handler, for held messages the store has no room to copy.
pub(crate) type Deliver =
    Arc<dyn Fn(jetstream::Message) -> futures::future::BoxFuture<'static, Handled> + Send + Sync>;

/// What the release loop needs from the worker.
pub(crate) struct Parking {
    pub gates: Arc<Gates>,
    /// The partitions this worker serves: it alone releases their endpoints' subjects.
    pub owned: watch::Receiver<Vec<u32>>,
    /// Poked when a delivery is parked or a circuit closes.
    pub wake: Arc<tokio::sync::Notify>,
    /// Delivers a held message in place (its copy refused for lack of room).
    pub deliver: Deliver,
}

pub(crate) async fn run(
    js: jetstream::Context,
    subjects: Subjects,
    live: Arc<Live>,
    parking: Parking,
    cancel: CancellationToken,
) {
    let mut changes = live.changes();
    let mut parked = false;
    // A busy server can time out a look now and then; only a run of failures is news.
    let mut failures = 0u32;
    loop {
        // A release cut short by shutdown is redone by the next worker: every held message
        // is acked only after its republish is stored, under a message id.
        let looked = tokio::select! {
            _ = cancel.cancelled() => return,
            r = look(&js, &subjects, &live, &parking) => r,
        };
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
            _ = parking.wake.notified() => {}
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

/// Counts what is held and releases the subjects of this worker's partitions whose endpoint
/// is not paused: all of a subject, or one delivery to probe an open circuit whose cool-down
/// is over, or none while it cools down. Returns whether some wait for a cool-down.
async fn look(
    js: &jetstream::Context,
    subjects: &Subjects,
    live: &Live,
    parking: &Parking,
) -> Result<bool, async_nats::Error> {
    let stream = js.get_stream(subjects.deliveries_stream()).await?;
    let mut held = stream.info_with_subjects(subjects.held_wildcard()).await?;
    let mut total = 0usize;
    let mut releasable = Vec::new();
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
        // Parked while its circuit is open (in this worker: a fresh one has no gate, and
        // releases them all).
        match parking.gates.peek(t, e).map(|g| g.parked()) {
            None | Some(Parked::Release) => releasable.push((subject, None)),
            Some(Parked::Probe) => {
                waiting = true;
                releasable.push((subject, Some(1)));
            }
            Some(Parked::Keep) => waiting = true,
        }
    }
    metrics::gauge!(names::DELIVERIES_HELD_NOW).set(total as f64);
    for (subject, limit) in releasable {
        let n = release(js, &stream, subjects, &subject, limit, &parking.deliver).await?;
        if n > 0 && limit.is_none() {
            info!(subject, deliveries = n, "Released held deliveries.");
        }
    }
    Ok(waiting)
}

/// Moves every message on `held` back to its partition subject.
async fn release(
    js: &jetstream::Context,
    stream: &Stream,
    subjects: &Subjects,
    held: &str,
    limit: Option<usize>,
    deliver: &Deliver,
) -> Result<u64, async_nats::Error> {
    let name = subjects.release_consumer(held);
    let consumer: consumer::PullConsumer = stream
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
                .message_id(format!("release:{seq}"));
            let copied = async { js.send_publish(target, publish).await?.into_future().await };
            match copied.await {
                Ok(_) => {
                    m.ack().await?;
                    Ok(true)
                }
                Err(e) if gancho_store::full::is_full(&e.to_string()) => {
                    // No room for the copy: delivered from here, acked after its outcome.
                    Ok(matches!(deliver(m).await, Handled::Done))
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
