//! JetStream out of room. A stream at its own limit with `discard: new` ("maximum bytes
//! exceeded") and a server or account at its storage limit ("insufficient resources", with a
//! full disk or `max_file_store` reached) both refuse writes; none of them drops a stored
//! message. Which errors say so is told by [`crate::refusal::Refusal`]. Each role keeps one [`Pressure`]: it turns refusals into a wait (the callers back
//! off and try again), one log line when refusals start and one when writes are taken again,
//! the `gancho_storage_full` gauge and the time spent waiting.

use gancho_telemetry::names;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Refusals are over once writes are taken and none was refused for this long: near full,
/// small writes pass while larger ones are refused, and one wait should be one wait.
pub const CLEAR_AFTER: Duration = Duration::from_secs(2);

/// One role's view of whether JetStream takes its writes.
pub struct Pressure {
    role: &'static str,
    refusing: AtomicBool,
    /// When refusals started, and the last one.
    since: Mutex<Option<(Instant, Instant)>>,
    /// How many times refusals ended (writes were taken again).
    recoveries: AtomicU64,
}

impl Pressure {
    pub const fn new(role: &'static str) -> Self {
        Self {
            role,
            refusing: AtomicBool::new(false),
            since: Mutex::new(None),
            recoveries: AtomicU64::new(0),
        }
    }

    /// A write was refused for lack of room (`why` is JetStream's answer).
    pub fn refused(&self, why: &str) {
        let now = Instant::now();
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        match since.as_mut() {
            Some((_, last)) => {
                *last = now;
                return;
            }
            None => *since = Some((now, now)),
        }
        drop(since);
        self.refusing.store(true, Ordering::Relaxed);
        metrics::gauge!(names::STORAGE_FULL, "role" => self.role).set(1.0);
        warn!(
            role = self.role,
            answer = why,
            "JetStream has no room for writes; waiting for room (nothing stored is dropped). Free space, raise the server's max_file_store or the stream limits."
        );
    }

    /// A write was taken. Cheap unless refusals were going on; they are over once none came
    /// for [`CLEAR_AFTER`].
    pub fn stored(&self) {
        if !self.refusing.load(Ordering::Relaxed) {
            return;
        }
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        let Some((first, last)) = *since else {
            return;
        };
        if last.elapsed() < CLEAR_AFTER {
            return;
        }
        *since = None;
        drop(since);
        self.refusing.store(false, Ordering::Relaxed);
        let waited = first.elapsed();
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(names::STORAGE_FULL, "role" => self.role).set(0.0);
        metrics::counter!(names::STORAGE_WAIT, "role" => self.role)
            .increment(waited.as_millis() as u64);
        info!(
            role = self.role,
            waited_s = waited.as_secs_f64(),
            "JetStream takes writes again."
        );
    }

    /// When the last refusal came, while refusals go on (none since writes were taken again).
    pub fn last_refusal(&self) -> Option<Instant> {
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(_, last)| last)
    }

    /// Whether the last write was refused for lack of room.
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// How many times refusals have ended so far.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_starts_at_a_refusal_and_ends_at_the_next_write() {
        let p = Pressure::new("worker");
        p.stored();
        assert_eq!(p.recoveries(), 0, "nothing to recover from");
        p.refused("insufficient resources");
        p.refused("insufficient resources");
        assert!(p.refusing());
        p.stored();
        assert!(
            p.refusing(),
            "a write taken right after a refusal ends nothing"
        );
        *p.since.lock().unwrap() = Some((Instant::now(), Instant::now() - CLEAR_AFTER));
        p.stored();
        assert!(!p.refusing());
        assert_eq!(p.recoveries(), 1);
    }
}
