//! Room for deliveries: the deliveries stream, the held stream and the ordered stream together
//! (a paused or dead endpoint's pile takes room as it did when it lay in the deliveries
//! stream, and so do the ordered deliveries waiting for their key's turn). The deliveries
//! and held streams have no byte limit of their own (JetStream refuses
//! `discard: new` with message schedules, and `discard: old` would delete deliveries never
//! sent), so their room is the operator's `GANCHO_DELIVERIES_MAX_BYTES`, kept here: every
//! delivery the router publishes first reserves its size, and none is published past
//! [`HIGH_WATER`] of the room; the router then stops pulling events until the stream, as
//! read every [`LOOK_EVERY`], is below [`RESUME`]. The workers' retries, deferrals and holds
//! are never refused, so a stream full of failing deliveries cannot wedge them. Events wait
//! in their own stream meanwhile; nothing is dropped.
//!
//! Beyond that room, JetStream itself may refuse a delivery: the server's store is full
//! (`max_file_store`, a full disk). The router then stops pulling events for a while (1 s,
//! doubling up to 30 s while refusals go on, 2 s while the events stream is capped), hands
//! the event back, and tries again; routed events are trimmed meanwhile ([`crate::trim`]) so
//! the store can take deliveries again.

use async_nats::jetstream;
use gancho_telemetry::names;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Fraction of the room at which routing stops.
pub const HIGH_WATER: f64 = 0.9;
/// Fraction below which routing starts again.
pub const RESUME: f64 = 0.8;
/// How often the stream's usage is read.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// The first pause in pulling events after JetStream refused a delivery for lack of room.
const FULL_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest pause while refusals go on.
pub const FULL_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The longest pause while the events stream is capped ([`crate::trim`]): producers no longer
/// take the room deliveries free, so it is the router's to use at once.
pub const CAPPED_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Whether the router may route now, given the stream's usage and whether it could before.
pub fn has_room(bytes: u64, max_bytes: i64, had_room: bool) -> bool {
    if max_bytes <= 0 {
        return true;
    }
    let used = bytes as f64 / max_bytes as f64;
    if had_room {
        used < HIGH_WATER
    } else {
        used < RESUME
    }
}

/// The router's view of the room: bytes last read, plus every delivery reserved since (and
/// those still unacknowledged from before), so a delivery stored after the read counts.
pub(crate) struct Room {
    max: i64,
    observed: AtomicU64,
    /// Reserved since the last read, plus those in flight at that read.
    reserved: AtomicU64,
    /// Reserved and not yet acknowledged (or failed).
    in_flight: AtomicU64,
    open: AtomicBool,
    gate: watch::Sender<bool>,
    /// Whether JetStream takes the router's writes.
    pub(crate) pressure: gancho_store::full::Pressure,
    /// While JetStream refuses writes: the pause in pulling, and when it ends.
    backoff: Mutex<(Duration, Option<Instant>)>,
    /// Whether the events stream is capped because the server's store is full.
    capped: AtomicBool,
}

impl Room {
    /// An open room of `max` bytes (0 or less: no limit) that drives `gate`.
    fn new(max: i64, gate: watch::Sender<bool>) -> Self {
        metrics::gauge!(names::EVENTS_CAPPED).set(0.0);
        Self {
            max,
            observed: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            open: AtomicBool::new(true),
            gate,
            pressure: gancho_store::full::Pressure::new("router"),
            backoff: Mutex::new((Duration::ZERO, None)),
            capped: AtomicBool::new(false),
        }
    }

    /// Takes `bytes` of room for a delivery; `false` (and routing stops) when there is none.
    pub(crate) fn reserve(&self, bytes: u64) -> bool {
        if self.max <= 0 {
            return true;
        }
        if self.open.load(Ordering::Relaxed) {
            let reserved = self.reserved.fetch_add(bytes, Ordering::Relaxed) + bytes;
            let used = self.observed.load(Ordering::Relaxed) + reserved;
            if (used as f64) < HIGH_WATER * self.max as f64 {
                self.in_flight.fetch_add(bytes, Ordering::Relaxed);
                return true;
            }
            self.reserved.fetch_sub(bytes, Ordering::Relaxed);
            self.close();
        }
        false
    }

    /// Marks a reservation's publish as acknowledged (or failed); it stays counted until the
    /// next read of the stream, which then holds it.
    pub(crate) fn release(&self, bytes: u64) {
        if self.max > 0 {
            self.in_flight.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// JetStream refused a delivery for lack of room: pulling stops for a pause that doubles
    /// while refusals go on. Returns how long the event should wait before it comes back.
    pub(crate) fn refused(self: &Arc<Self>, why: &str) -> Duration {
        self.pressure.refused(why);
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if backoff.1.is_some_and(|until| until > now) {
            return backoff.0;
        }
        let longest = if self.capped.load(Ordering::Relaxed) {
            CAPPED_BACKOFF_MAX
        } else {
            FULL_BACKOFF_MAX
        };
        let pause = (backoff.0 * 2).clamp(FULL_BACKOFF_MIN, longest);
        *backoff = (pause, Some(now + pause));
        drop(backoff);
        self.gate.send_replace(false);
        let room = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            room.update_gate();
        });
        pause
    }

    /// Whether the events stream is capped ([`crate::trim`]): pauses are then short.
    pub(crate) fn set_capped(&self, capped: bool) {
        if self.capped.swap(capped, Ordering::Relaxed) != capped {
            metrics::gauge!(names::EVENTS_CAPPED).set(if capped { 1.0 } else { 0.0 });
        }
    }

    /// A delivery was stored: refusals, if any, are over.
    pub(crate) fn stored(&self) {
        if self.pressure.refusing() {
            *self.backoff.lock().unwrap_or_else(|e| e.into_inner()) = (Duration::ZERO, None);
            self.pressure.stored();
            self.update_gate();
        }
    }

    /// Opens the gate when there is room and no pause is going on.
    fn update_gate(&self) {
        let paused = self
            .backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .is_some_and(|until| until > Instant::now());
        self.gate
            .send_replace(self.open.load(Ordering::Relaxed) && !paused);
    }

    fn close(&self) {
        if self.open.swap(false, Ordering::Relaxed) {
            warn!(
                max_bytes = self.max,
                "Deliveries (sent or held) are at the high-water mark of their room; routing waits for room (events stay in their stream)."
            );
            metrics::gauge!(names::ROUTER_WAITING_FOR_ROOM).set(1.0);
            self.gate.send_replace(false);
        }
    }

    /// Waits until `bytes` of room are reserved.
    pub(crate) async fn wait_for(&self, bytes: u64) {
        let start = Instant::now();
        while !self.reserve(bytes) {
            tokio::time::sleep(LOOK_EVERY).await;
        }
        if start.elapsed() >= LOOK_EVERY {
            metrics::counter!(names::STORAGE_WAIT, "role" => "router")
                .increment(start.elapsed().as_millis() as u64);
        }
    }
}

/// Watches the bytes of `streams` (deliveries, held, ordered) together against `max_bytes` until
/// `cancel` (without a limit there is nothing to watch). The receiver reads `true` while the
/// router may pull events. A failed look keeps the last answer.
pub(crate) fn watch(
    js: jetstream::Context,
    streams: [String; 3],
    max_bytes: Option<u64>,
    cancel: CancellationToken,
) -> (Arc<Room>, watch::Receiver<bool>) {
    let (gate, rx) = watch::channel(true);
    let room = Arc::new(Room::new(
        max_bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        gate,
    ));
    metrics::gauge!(names::STREAM_MAX_BYTES, "stream" => "deliveries").set(room.max as f64);
    if room.max <= 0 {
        // No room to keep: nothing to watch, the gate stays open.
        return (room, rx);
    }
    let watcher = room.clone();
    tokio::spawn(async move {
        let room = watcher;
        let mut waiting_since: Option<Instant> = None;
        loop {
            let mut read = Some(0u64);
            for stream in &streams {
                // `get_stream` reads the stream's info: one request, not two.
                let bytes = js
                    .get_stream(stream)
                    .await
                    .ok()
                    .map(|s| s.cached_info().state.bytes);
                read = read.zip(bytes).map(|(a, b)| a + b);
            }
            if let Some(bytes) = read {
                metrics::gauge!(names::DELIVERIES_ROOM_USED).set(bytes as f64);
                room.observed.store(bytes, Ordering::Relaxed);
                room.reserved
                    .store(room.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
                let was_open = room.open.load(Ordering::Relaxed);
                let open = has_room(bytes, room.max, was_open);
                if was_open && !open {
                    room.close();
                }
                if !open && waiting_since.is_none() {
                    waiting_since = Some(Instant::now());
                }
                if !was_open && open {
                    let waited = waiting_since
                        .take()
                        .map(|t| t.elapsed())
                        .unwrap_or_default();
                    info!(
                        bytes,
                        max_bytes = room.max,
                        waited_s = waited.as_secs_f64(),
                        "Room for deliveries again; routing resumes."
                    );
                    room.open.store(true, Ordering::Relaxed);
                    metrics::gauge!(names::ROUTER_WAITING_FOR_ROOM).set(0.0);
                    room.update_gate();
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    });
    (room, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_stops_at_the_high_water_mark_and_resumes_lower() {
        assert!(has_room(10, -1, false), "no limit: always room");
        assert!(has_room(89, 100, true));
        assert!(!has_room(90, 100, true));
        assert!(
            !has_room(85, 100, false),
            "not before it falls below the resume mark"
        );
        assert!(has_room(79, 100, false));
    }

    #[test]
    fn reservations_stop_at_the_high_water_mark() {
        let (gate, rx) = watch::channel(true);
        let room = Room::new(1000, gate);
        let mut taken = 0;
        while room.reserve(100) {
            taken += 1;
        }
        assert_eq!(taken, 8, "800 of 1000 bytes, the next would pass 90%");
        assert!(!*rx.borrow(), "pulling stops");
        assert!(
            !room.reserve(1),
            "closed until the stream is read below the resume mark"
        );
    }
}
