//! A receiver's pause: a 429 or 503 with `Retry-After` says when the endpoint may be called
//! again, and nothing starts to it before then.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Until when the receiver asked for a pause, if it did.
#[derive(Debug, Default)]
pub(super) struct Pause(Mutex<Option<Instant>>);

impl Pause {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pauses for `wait` from now. Returns whether this starts or extends a pause (a shorter
    /// one inside the current pause changes nothing).
    pub(super) fn extend(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        let mut p = self.lock();
        if p.is_some_and(|u| u >= until) {
            return false;
        }
        *p = Some(until);
        true
    }

    /// `Some(remaining)` while the pause lasts.
    pub(super) fn remaining(&self) -> Option<Duration> {
        let mut p = self.lock();
        let until = (*p)?;
        let now = Instant::now();
        if now < until {
            return Some(until - now);
        }
        *p = None;
        None
    }

    /// A copy for a gate that replaces this one at the same URL.
    pub(super) fn copy(&self) -> Self {
        Self(Mutex::new(*self.lock()))
    }
}
