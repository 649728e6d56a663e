//! An endpoint's rate: the configured limit (governor), and the lower one its 429s set
//! (AIMD: halved at a 429, a step back up at answers without one, each at most once a
//! second; [`gancho_core::retry::lowered_rate`]).

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The clock the rate limiters' answers are read against. One for the process: making a
/// clock queries the CPU (`cpuid`, a trap to the hypervisor on a VM), which cost a sixth of
/// the worker's CPU when it was made for every admission.
static CLOCK: std::sync::LazyLock<DefaultClock> = std::sync::LazyLock::new(DefaultClock::default);

/// How an answer moved the endpoint's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateChange {
    /// A 429 lowered it to this many requests a second.
    Lowered(u32),
    /// Answers without 429 raised it a step, to this.
    Raised(u32),
    /// Back to its usual rate: the lowered limit is lifted.
    Restored,
}

/// An endpoint's rate as its 429s set it.
#[derive(Default)]
pub(super) struct Adaptive {
    /// The lowered rate and its limiter, while the endpoint is slowed.
    pub(super) slowed: Option<(u32, Arc<DefaultDirectRateLimiter>)>,
    /// What the rate climbs back to: the configured limit, or the rate requests were
    /// starting at when the endpoint was first slowed.
    pub(super) ceiling: u32,
    pub(super) last_change: Option<Instant>,
    /// Requests started in the current second and the one before (the observed rate of an
    /// endpoint without a configured limit).
    window: Option<Instant>,
    pub(super) this_second: u32,
    pub(super) last_second: u32,
}

/// The rate of one endpoint in this worker.
pub(super) struct Rate {
    /// The configured requests a second, if any.
    configured: Option<u32>,
    limiter: Option<DefaultDirectRateLimiter>,
    pub(super) adaptive: Mutex<Adaptive>,
}

impl Rate {
    pub(super) fn new(configured: Option<u32>) -> Self {
        Self {
            configured,
            limiter: configured
                .and_then(NonZeroU32::new)
                .map(|r| DefaultDirectRateLimiter::direct(Quota::per_second(r))),
            adaptive: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Adaptive> {
        self.adaptive.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(wait)` when the rate (configured, or lowered after 429s) refuses a request now;
    /// `None` takes a token from each.
    pub(super) fn wait(&self) -> Option<Duration> {
        // The lowered rate first: a request it refuses takes no token of the configured limit.
        if let Some(slowed) = self.slowed_limiter() {
            if let Err(not_until) = slowed.check() {
                return Some(not_until.wait_time_from(CLOCK.now()));
            }
        }
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check() {
                return Some(not_until.wait_time_from(CLOCK.now()));
            }
        }
        None
    }

    /// Waits for a token of the lowered rate, then of the configured limit.
    pub(super) async fn take(&self) {
        // The lowered rate may change while this waits (another 429 halves it, answers raise
        // it): each wake asks the limiter in force then, not the one in force when it began.
        while let Some(slowed) = self.slowed_limiter() {
            match slowed.check() {
                Ok(()) => break,
                Err(not_until) => tokio::time::sleep(not_until.wait_time_from(CLOCK.now())).await,
            }
        }
        // The configured limit's token last: deliveries waiting out a lowered rate hold none,
        // so when it is lifted they go at the configured rate, not all at once.
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
    }

    fn slowed_limiter(&self) -> Option<Arc<DefaultDirectRateLimiter>> {
        self.lock().slowed.as_ref().map(|(_, l)| l.clone())
    }

    /// Counts a request starting now (the observed rate).
    pub(super) fn started(&self) {
        let mut a = self.lock();
        let now = Instant::now();
        match a.window {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            Some(start) if now.duration_since(start) < Duration::from_secs(2) => {
                a.last_second = a.this_second;
                a.this_second = 0;
                a.window = Some(start + Duration::from_secs(1));
            }
            _ => {
                a.last_second = 0;
                a.this_second = 0;
                a.window = Some(now);
            }
        }
        a.this_second += 1;
    }

    /// The receiver answered 429: halve the endpoint's rate (at most once a second), down to
    /// [`gancho_core::retry::MIN_RATE`]. Returns the new rate when it changed.
    pub(super) fn slow_down(&self) -> Option<u32> {
        use gancho_core::retry::{lowered_rate, RATE_STEP_EVERY};
        let mut a = self.lock();
        if a.last_change
            .is_some_and(|at| at.elapsed() < RATE_STEP_EVERY)
        {
            return None;
        }
        let current = match &a.slowed {
            Some((rate, _)) => *rate,
            None => {
                let observed = a.this_second.max(a.last_second).max(1);
                let ceiling = self.configured.unwrap_or(observed).max(1);
                a.ceiling = ceiling;
                // What it was actually sent at: below a configured limit, halving the limit
                // would not slow it down.
                ceiling.min(observed)
            }
        };
        let next = lowered_rate(current);
        if a.slowed.as_ref().is_some_and(|(r, _)| *r == next) {
            a.last_change = Some(Instant::now());
            return None;
        }
        a.slowed = Some((next, Arc::new(slowed_limiter(next))));
        a.last_change = Some(Instant::now());
        Some(next)
    }

    /// An answer without 429: one step back toward the ceiling (at most once a second).
    /// Returns `Some(None)` when the adaptive limit is lifted, `Some(Some(rate))` on a step.
    pub(super) fn speed_up(&self) -> Option<Option<u32>> {
        use gancho_core::retry::{raised_rate, RATE_STEP_EVERY};
        let mut a = self.lock();
        let (rate, _) = a.slowed.as_ref()?;
        if a.last_change
            .is_some_and(|at| at.elapsed() < RATE_STEP_EVERY)
        {
            return None;
        }
        let next = raised_rate(*rate, a.ceiling);
        if next.is_none() {
            self.spend_saved_burst();
        }
        a.slowed = next.map(|r| (r, Arc::new(slowed_limiter(r))));
        a.last_change = Some(Instant::now());
        Some(next)
    }

    /// Empties the configured limit's burst. It fills while a lowered rate holds the endpoint
    /// below it; spent when the lowered rate is lifted, the way back ends at the configured
    /// rate instead of a burst to a receiver that was answering 429 a few seconds ago.
    fn spend_saved_burst(&self) {
        let (Some(limiter), Some(rate)) = (&self.limiter, self.configured) else {
            return;
        };
        // The burst is the rate (one second's worth); bounded, as tokens refill meanwhile.
        for _ in 0..rate.min(100_000) {
            if limiter.check().is_err() {
                break;
            }
        }
    }

    /// Whether 429s hold the endpoint below its usual rate.
    pub(super) fn is_slowed(&self) -> bool {
        self.lock().slowed.is_some()
    }
}

/// A limiter for a rate lowered by 429s: evenly spaced requests, no burst.
pub(super) fn slowed_limiter(rate: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(rate.max(1)).expect("at least 1");
    DefaultDirectRateLimiter::direct(Quota::per_second(rate).allow_burst(NonZeroU32::MIN))
}
