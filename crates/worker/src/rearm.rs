//! Scheduled retries that JetStream did not fire. A retry waits on its own subject
//! (`gancho.retry.<delivery>`) with a `Nats-Schedule` time; at that time nats-server stores
//! the delivery on its partition subject and removes the schedule. When the server's store is
//! full at that moment the fire fails, and nats-server (2.15) does not try it again until it
//! restarts: the schedule stays in the stream, nothing is lost, but the delivery waits
//! forever. So the worker looks for schedules overdue by more than [`OVERDUE`] and publishes
//! them again, due at once, with `Nats-Expected-Last-Subject-Sequence` set to the stuck
//! message: the new schedule replaces it (schedules roll up per subject), and if the old one
//! fired or was replaced meanwhile the publish is refused, so no delivery is ever doubled,
//! whatever the number of workers looking.
//!
//! Reading every retry costs one request each, so a worker looks at the oldest retry every
//! [`LOOK_EVERY`] and goes through all of them only when there is reason to: at start-up,
//! after JetStream refused this worker's writes for lack of room, when the oldest retry is
//! overdue, and at least every [`SWEEP_EVERY`].

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use gancho_core::Subjects;
use gancho_store::full::Pressure;
use gancho_telemetry::names;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A schedule this late was not fired by JetStream and will not be.
pub const OVERDUE: Duration = Duration::from_secs(10);
/// How often the oldest retry is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(10);
/// The longest time between two looks at every retry.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// When a re-armed schedule fires: a moment from now.
const DUE_IN: Duration = Duration::from_secs(1);

const SCHEDULE: &str = "Nats-Schedule";
const SCHEDULE_TARGET: &str = "Nats-Schedule-Target";

pub(crate) async fn run(
    js: jetstream::Context,
    subjects: Subjects,
    pressure: Arc<Pressure>,
    cancel: CancellationToken,
) {
    let stream = subjects.deliveries_stream();
    let filter = subjects.retry_wildcard();
    // The first look comes after start-up settles; every worker sweeps once.
    let mut last_sweep: Option<Instant> = None;
    let mut recoveries = pressure.recoveries();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        let Ok(s) = js.get_stream(&stream).await else {
            continue;
        };
        let now_recoveries = pressure.recoveries();
        let reason = if last_sweep.is_none() {
            Some("start-up")
        } else if pressure.refusing() || now_recoveries != recoveries {
            Some("JetStream refused writes for lack of room")
        } else if last_sweep.is_some_and(|t| t.elapsed() >= SWEEP_EVERY) {
            Some("periodic")
        } else {
            match s.get_first_raw_message_by_subject(&filter, 0).await {
                Ok(m) if overdue(&m.headers, OffsetDateTime::now_utc()) => {
                    Some("the oldest retry is overdue")
                }
                _ => None,
            }
        };
        let Some(reason) = reason else { continue };
        recoveries = now_recoveries;
        last_sweep = Some(Instant::now());
        match sweep(&js, &s, &filter, &cancel).await {
            Ok((seen, rearmed)) if rearmed > 0 => warn!(
                seen,
                rearmed, reason, "Scheduled retries JetStream had not fired were scheduled again."
            ),
            Ok((seen, _)) => debug!(seen, reason, "No overdue scheduled retry."),
            Err(e) => info!(error = %e, "Cannot look for overdue scheduled retries; trying later."),
        }
    }
}

/// Goes through every retry once; returns how many it saw and how many it re-armed.
async fn sweep(
    js: &jetstream::Context,
    s: &jetstream::stream::Stream,
    filter: &str,
    cancel: &CancellationToken,
) -> Result<(u64, u64), async_nats::Error> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind as Kind;
    let (mut seen, mut rearmed) = (0u64, 0u64);
    let mut seq = 0;
    while !cancel.is_cancelled() {
        let m = match s.get_first_raw_message_by_subject(filter, seq).await {
            Ok(m) => m,
            Err(e) if e.kind() == Kind::NoMessageFound => break,
            Err(e) => return Err(e.into()),
        };
        seq = m.sequence + 1;
        seen += 1;
        if !overdue(&m.headers, OffsetDateTime::now_utc()) {
            continue;
        }
        let Some(target) = m.headers.get(SCHEDULE_TARGET) else {
            continue;
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            SCHEDULE,
            gancho_core::retry::schedule_at(OffsetDateTime::now_utc() + DUE_IN).as_str(),
        );
        headers.insert(SCHEDULE_TARGET, target.as_str());
        let publish = PublishMessage::build()
            .payload(m.payload.clone())
            .headers(headers)
            .expected_last_subject_sequence(m.sequence);
        let stored = async { js.send_publish(m.subject.to_string(), publish).await?.await }.await;
        match stored {
            Ok(_) => {
                rearmed += 1;
                metrics::counter!(names::RETRIES_REARMED).increment(1);
            }
            // It fired or was replaced since it was read: nothing to do.
            Err(e)
                if e.kind()
                    == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((seen, rearmed))
}

/// Whether a retry's schedule time is more than [`OVERDUE`] before `now`.
fn overdue(headers: &HeaderMap, now: OffsetDateTime) -> bool {
    headers
        .get(SCHEDULE)
        .and_then(|v| gancho_core::retry::parse_schedule_at(v.as_str()))
        .is_some_and(|at| at + OVERDUE < now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_schedules_well_past_their_time_are_overdue() {
        let now = OffsetDateTime::now_utc();
        let at = |t: OffsetDateTime| {
            let mut h = HeaderMap::new();
            h.insert(SCHEDULE, gancho_core::retry::schedule_at(t).as_str());
            h
        };
        assert!(overdue(&at(now - Duration::from_secs(60)), now));
        assert!(!overdue(&at(now - Duration::from_secs(2)), now));
        assert!(!overdue(&at(now + Duration::from_secs(60)), now));
        assert!(!overdue(&HeaderMap::new(), now), "not a schedule");
    }
}
