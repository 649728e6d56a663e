//! An endpoint's circuit breaker, and since when it owes an answer (its stall watch).
//!
//! The circuit opens after [`FAILURES_TO_OPEN`] consecutive failures (no response, timeout,
//! 5xx, 408; a 429 is answered by the adaptive rate instead); while open, deliveries wait
//! for the end of the cool-down; then one delivery is let through as a probe: success closes
//! the circuit, failure re-opens it with a doubled cool-down (up to [`MAX_COOLDOWN`]).

use super::Heard;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive failures that open the circuit.
pub const FAILURES_TO_OPEN: u32 = 5;
/// First cool-down of an open circuit; doubles after each failed probe.
pub(super) const FIRST_COOLDOWN: Duration = Duration::from_secs(5);
/// Longest cool-down.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(300);
/// A released probe that has not come back within this long (its delivery found the probe
/// slot taken, or was lost to a crash) is followed by another.
const PROBE_RELEASE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone)]
pub(super) struct State {
    pub(super) failures: u32,
    pub(super) open_until: Option<Instant>,
    pub(super) cooldown: Duration,
    pub(super) probing: bool,
    /// When a parked delivery was last released to serve as the probe.
    probe_released: Option<Instant>,
    /// Since when the endpoint owes an answer: its last answer, or the start of a request
    /// while none was in flight (whichever is later).
    owes_since: Option<Instant>,
}

/// The circuit of one endpoint in this worker.
#[derive(Debug, Default)]
pub(super) struct Circuit(pub(super) Mutex<State>);

/// Whether an attempt's outcome opened or closed the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    Opened,
    Closed,
}

impl Circuit {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy for a gate that replaces this one at the same URL (the same receiver).
    pub(super) fn copy(&self) -> Self {
        Self(Mutex::new(self.lock().clone()))
    }

    /// `Some(wait)` while the circuit refuses deliveries. When a cool-down has ended, the
    /// first caller becomes the probe and is let through.
    pub(super) fn wait(&self) -> Option<Duration> {
        let mut c = self.lock();
        let until = c.open_until?;
        let now = Instant::now();
        if now < until {
            return Some(until - now);
        }
        if c.probing {
            // A probe is in flight; the others wait for its verdict, as long as a cool-down
            // (a failed probe doubles it; a good one lets them through on their next turn).
            return Some(c.cooldown.max(Duration::from_secs(1)));
        }
        c.probing = true;
        None
    }

    /// `Some(remaining)` while the circuit is open and cooling down (no probe is chosen).
    pub(super) fn cooling_for(&self) -> Option<Duration> {
        let until = self.lock().open_until?;
        Some(
            until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        )
    }

    /// Feeds an attempt's outcome to the circuit and the stall watch.
    pub(super) fn record(&self, heard: Heard) -> Option<Flip> {
        let mut c = self.lock();
        if heard != Heard::Silent {
            c.owes_since = Some(Instant::now());
        }
        let was_open = c.open_until.is_some();
        // A 429 says the endpoint is there and wants fewer requests: the adaptive rate answers
        // it, not the circuit (which would stop everything for a cool-down).
        if matches!(heard, Heard::Healthy | Heard::Throttled) {
            *c = State {
                owes_since: c.owes_since,
                ..State::default()
            };
            return was_open.then_some(Flip::Closed);
        }
        c.failures += 1;
        if c.probing || c.failures >= FAILURES_TO_OPEN && c.open_until.is_none() {
            c.cooldown = if c.probing {
                (c.cooldown * 2).min(MAX_COOLDOWN)
            } else {
                FIRST_COOLDOWN
            };
            c.open_until = Some(Instant::now() + c.cooldown);
            c.probing = false;
        }
        (!was_open && c.open_until.is_some()).then_some(Flip::Opened)
    }

    /// The endpoint owes an answer from now (a request starts while none is in flight).
    pub(super) fn owe_from_now(&self) {
        self.lock().owes_since = Some(Instant::now());
    }

    /// Whether the endpoint has owed an answer for at least `long`.
    pub(super) fn owes_for(&self, long: Duration) -> bool {
        self.lock()
            .owes_since
            .is_some_and(|since| since.elapsed() >= long)
    }

    /// For an open circuit's parked deliveries: whether one is to be let out now as the
    /// probe (the cool-down is over, no probe is under way, and none was let out lately).
    /// `None` when the circuit is closed.
    pub(super) fn probe_due(&self) -> Option<bool> {
        let mut c = self.lock();
        let until = c.open_until?;
        let now = Instant::now();
        if now < until
            || c.probing
            || c.probe_released
                .is_some_and(|at| now.duration_since(at) < PROBE_RELEASE_EVERY)
        {
            return Some(false);
        }
        c.probe_released = Some(now);
        Some(true)
    }

    pub(super) fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }
}
