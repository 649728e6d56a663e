//! Room in the events stream. With a byte limit (`GANCHO_EVENTS_MAX_BYTES`) the stream
//! refuses new events when full (`discard: new`), so that no event is ever dropped before it
//! is routed. Events the router has already routed are only kept for replay; when the stream
//! passes [`TRIM_AT`] of its limit, the router purges the older half of the routed events
//! (those at or below every tenant consumer's ack floor), again every second while it stays there:
//! the replay window shrinks before a producer is refused. The same happens, whatever the
//! stream's limit, while JetStream refuses the router's deliveries for lack of room (the
//! server's store is full): routed events are the room that can be given back at once.
//!
//! A full server store also caps the events stream. The room a worker frees by delivering
//! would otherwise go to whoever writes first, and producers sending again every few hundred
//! milliseconds win it against a router that waits: the store then fills with events nobody
//! can route (their deliveries have no room), and nothing is ever freed again. So when the
//! router's writes are refused for lack of room, its record limit becomes the count it holds
//! (`max_messages`, `discard: new`: producers are refused with "maximum messages exceeded",
//! which they take as full, and nothing stored is dropped), marked by
//! [`gancho_store::streams::FULL_STORE_CAP`] with the limit to put back. The room freed then
//! goes to deliveries; routed events are trimmed at [`TRIM_AT`] of the cap, so producers get
//! their share back as routing goes on. Once the router's writes have been taken for
//! [`LIFT_AFTER`], a router puts the limit back (any router: one that stopped while the cap
//! stood leaves it to the others). A byte limit would fit better, but nats-server refuses
//! to reserve one on a full store.
//!
//! The cap comes at the router's first refusal, so the store still holds what routing and
//! delivering free. It may hold nothing of the kind: a router that was down while producers
//! filled the store comes back to events only, none routed, and routing one needs room for
//! its deliveries. When a router has been refused for [`SHED_AFTER`] with no routed event to
//! trim, it purges the oldest tenth of the attempt log (a log that loses its oldest records
//! at its limits anyway), again every [`SHED_AFTER`] while that lasts: the room lets a few
//! events be routed, their deliveries free more once sent, and so on, while the cap keeps
//! the producers out (`gancho_router_attempts_shed_total`, and a warning each time).

use crate::room::{Room, FULL_BACKOFF_MAX};
use async_nats::jetstream::{self, stream};
use gancho_core::Subjects;
use gancho_store::streams::FULL_STORE_CAP;
use gancho_store::Live;
use gancho_telemetry::names;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Fraction of the events stream's limit at which routed events are trimmed.
pub const TRIM_AT: f64 = 0.8;
/// How often the events stream's usage is read.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long the router's writes must have been taken before the cap is lifted.
pub const LIFT_AFTER: Duration = Duration::from_secs(10);
/// How long a router refused with no routed event to trim waits before it sheds part of the
/// attempt log (longer than its pauses while the events stream is capped, so a router that
/// merely waits is not taken for stuck).
pub const SHED_AFTER: Duration = Duration::from_secs(10);
/// How long after its last refusal a router counts as refused: it tries again within
/// [`FULL_BACKOFF_MAX`].
const PRESSED_FOR: Duration = FULL_BACKOFF_MAX.saturating_add(Duration::from_secs(2));

pub(crate) fn spawn(
    js: jetstream::Context,
    subjects: Subjects,
    live: Arc<Live>,
    room: Arc<Room>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        // Since when refusals have been over (a write taken after the last one).
        let mut clear_since = Instant::now();
        // Since when the router has been refused with no routed event to trim, or last shed.
        let mut stuck_since: Option<Instant> = None;
        loop {
            let last_refusal = room.pressure.last_refusal();
            if last_refusal.is_some() {
                clear_since = Instant::now();
            }
            // A router that backs off retries within FULL_BACKOFF_MAX: pressed until then.
            let pressed = last_refusal.is_some_and(|t| t.elapsed() < PRESSED_FOR);
            let lift = match last_refusal {
                None if clear_since.elapsed() >= LIFT_AFTER => Lift::Now,
                // No write since the last refusal: lifting is safe only once nothing waits
                // to be routed (an idle router writes nothing).
                Some(t) if t.elapsed() >= LIFT_AFTER => Lift::OnceRouted,
                _ => Lift::No,
            };
            // A fresh refusal caps; an old one keeps trimming but caps no more, so a cap lifted
            // once everything is routed is not put back by the refusal before it.
            let fresh = last_refusal.is_some_and(|t| t.elapsed() < LIFT_AFTER);
            let state = Pressed {
                fresh,
                pressed,
                lift,
            };
            match look(&js, &subjects, &live, &room, state).await {
                Ok(true) => {
                    let since = *stuck_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= SHED_AFTER {
                        if let Err(e) = shed_attempts(&js, &subjects).await {
                            warn!(error = %e, "Cannot purge old attempt records to make room.");
                        }
                        stuck_since = Some(Instant::now());
                    }
                }
                Ok(false) => stuck_since = None,
                Err(e) => tracing::debug!(error = %e, "Cannot look at the events stream's room."),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    });
}

/// What the router's refusals call for.
#[derive(Clone, Copy)]
struct Pressed {
    /// A refusal within [`LIFT_AFTER`]: cap the events stream.
    fresh: bool,
    /// A refusal within [`PRESSED_FOR`]: trim routed events.
    pressed: bool,
    lift: Lift,
}

/// Whether the events stream's cap may be lifted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lift {
    No,
    /// The router's writes have been taken for [`LIFT_AFTER`].
    Now,
    /// No refusal for [`LIFT_AFTER`], and no write either: once every event is routed.
    OnceRouted,
}

/// Caps the events stream at a fresh refusal, lifts the cap when `lift` says so, and trims
/// routed events when the stream is near its byte limit or its cap, or while `pressed`.
/// Returns whether the router is pressed with no routed event to trim.
async fn look(
    js: &jetstream::Context,
    subjects: &Subjects,
    live: &Live,
    room: &Room,
    Pressed {
        fresh,
        pressed,
        lift,
    }: Pressed,
) -> Result<bool, async_nats::Error> {
    let s = js.get_stream(subjects.events_stream()).await?;
    let info = s.cached_info();
    let (bytes, max) = (info.state.bytes, info.config.max_bytes);
    metrics::gauge!(names::STREAM_BYTES, "stream" => "events").set(bytes as f64);
    metrics::gauge!(names::STREAM_MAX_BYTES, "stream" => "events").set(max as f64);
    let capped = info.config.metadata.contains_key(FULL_STORE_CAP);
    if fresh && !capped {
        cap(js, info).await?;
    }
    room.set_capped(capped || fresh);
    let at_cap = capped
        && info.config.max_messages > 0
        && (info.state.messages as f64) >= TRIM_AT * info.config.max_messages as f64;
    let bytes_near_full = max > 0 && (bytes as f64) >= TRIM_AT * max as f64;
    let near_full = at_cap || bytes_near_full;
    let lifting = capped && lift != Lift::No;
    if !near_full && !pressed && !lifting {
        return Ok(false);
    }
    let first = info.state.first_sequence;
    let last = info.state.last_sequence;
    let consumers =
        gancho_store::by_tenant::consumers(&s, subjects, &subjects.router_consumer()).await?;
    // A tenant whose consumer is not set up yet has events nobody has routed: wait for it.
    let tenants = live.load().accounts.clone();
    if tenants
        .keys()
        .any(|t| !consumers.iter().any(|(c, _)| c == t))
    {
        return Ok(false);
    }
    let floor = gancho_store::by_tenant::routed_floor(&consumers, last);
    if lifting && (lift == Lift::Now || floor >= last) {
        uncap(js, info).await?;
        room.set_capped(false);
    }
    if !near_full && !pressed {
        return Ok(false);
    }
    // Everything at or below the ack floor is routed; keep the rest.
    if floor < first {
        if bytes_near_full {
            warn!(bytes, max_bytes = max, "The events stream is near full and holds no routed events to trim; producers will be refused until the router catches up.");
        }
        return Ok(pressed);
    }
    // The older half of the routed events (at least one).
    let cut = first + (floor + 1 - first).div_ceil(2);
    let purged = s.purge().sequence(cut).await?;
    metrics::counter!(names::EVENTS_TRIMMED).increment(purged.purged);
    info!(
        purged = purged.purged,
        below_sequence = cut,
        "Storage was near full: trimmed the oldest routed events (the replay window now starts later)."
    );
    Ok(false)
}

/// Caps the events stream at the count it holds, keeping the record limit to put back.
async fn cap(js: &jetstream::Context, info: &stream::Info) -> Result<(), async_nats::Error> {
    let mut config = info.config.clone();
    let held = i64::try_from(info.state.messages.max(1)).unwrap_or(i64::MAX);
    config
        .metadata
        .insert(FULL_STORE_CAP.to_owned(), config.max_messages.to_string());
    config.max_messages = if config.max_messages > 0 {
        config.max_messages.min(held)
    } else {
        held
    };
    js.update_stream(config).await?;
    warn!(
        events = held,
        "The server's store is full: the events stream takes no more events than it holds, so the room freed by deliveries goes to routing; producers are refused until routing has made room (nothing accepted is dropped)."
    );
    Ok(())
}

/// Puts back the record limit the events stream had before it was capped.
async fn uncap(js: &jetstream::Context, info: &stream::Info) -> Result<(), async_nats::Error> {
    let mut config = info.config.clone();
    let before = config
        .metadata
        .remove(FULL_STORE_CAP)
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(-1);
    config.max_messages = if before > 0 { before } else { -1 };
    js.update_stream(config).await?;
    info!("The router's writes are taken again: the events stream takes new events again.");
    Ok(())
}

/// Purges the oldest tenth of the attempt log (at least one record).
async fn shed_attempts(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<(), async_nats::Error> {
    let s = js.get_stream(subjects.attempts_stream()).await?;
    let state = &s.cached_info().state;
    if state.messages == 0 {
        warn!("The server's store is full and holds nothing the router may free (the events waiting are all unrouted, the attempt log is empty): free space or raise nats-server's max_file_store.");
        return Ok(());
    }
    let (first, last) = (state.first_sequence, state.last_sequence);
    let cut = first + (last + 1 - first).div_ceil(10);
    let purged = s.purge().sequence(cut).await?;
    metrics::counter!(names::ATTEMPTS_SHED).increment(purged.purged);
    warn!(
        purged = purged.purged,
        below_sequence = cut,
        "The server's store is full and holds nothing else the router may free: purged the oldest tenth of the attempt log to make room for routing. Free space or raise nats-server's max_file_store."
    );
    Ok(())
}
