//! Room in the events stream. With a byte limit (`GANCHO_EVENTS_MAX_BYTES`) the stream
//! refuses new events when full (`discard: new`), so that no event is ever dropped before it
//! is routed. Events the router has already routed are only kept for replay; when the stream
//! passes [`TRIM_AT`] of its limit, the router purges the older half of the routed events
//! (those at or below every tenant consumer's ack floor), again every second while it stays there:
//! the replay window shrinks before a producer is refused. The same happens, whatever the
//! stream's limit, while JetStream refuses the router's deliveries for lack of room (the
//! server's store is full): routed events are the room that can be given back at once.

use crate::room::Room;
use async_nats::jetstream;
use gancho_core::Subjects;
use gancho_store::Live;
use gancho_telemetry::names;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Fraction of the events stream's limit at which routed events are trimmed.
pub const TRIM_AT: f64 = 0.8;
/// How often the events stream's usage is read.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub(crate) fn spawn(
    js: jetstream::Context,
    subjects: Subjects,
    live: Arc<Live>,
    room: Arc<Room>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let pressed = room.pressure.refusing();
            if let Err(e) = look(&js, &subjects, &live, pressed).await {
                tracing::debug!(error = %e, "Cannot look at the events stream's room.");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    });
}

async fn look(
    js: &jetstream::Context,
    subjects: &Subjects,
    live: &Live,
    pressed: bool,
) -> Result<(), async_nats::Error> {
    let mut s = js.get_stream(subjects.events_stream()).await?;
    let info = s.info().await?;
    let (bytes, max) = (info.state.bytes, info.config.max_bytes);
    metrics::gauge!(names::STREAM_BYTES, "stream" => "events").set(bytes as f64);
    metrics::gauge!(names::STREAM_MAX_BYTES, "stream" => "events").set(max as f64);
    let near_full = max > 0 && (bytes as f64) >= TRIM_AT * max as f64;
    if !near_full && !pressed {
        return Ok(());
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
        return Ok(());
    }
    let floor = gancho_store::by_tenant::routed_floor(&consumers, last);
    // Everything at or below the ack floor is routed; keep the rest.
    if floor < first {
        if near_full {
            warn!(bytes, max_bytes = max, "The events stream is near full and holds no routed events to trim; producers will be refused until the router catches up.");
        }
        return Ok(());
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
    Ok(())
}
