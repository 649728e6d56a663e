//! Per-endpoint admission: an in-flight cap, a rate limit (governor) and a circuit breaker,
//! so that one slow or dead endpoint cannot take the capacity healthy endpoints need.
//!
//! A delivery is either sent at once ([`Admission::Go`]), parked in the endpoint's bounded
//! queue in this worker ([`Admission::Queue`]: it waits for the endpoint's in-flight slot
//! without holding one of the worker's shared request slots), or, past that bound or while
//! the circuit is open, rescheduled for later without counting as an attempt
//! ([`Admission::Defer`]).
//!
//! How much an endpoint may queue depends on trust. An endpoint whose last answer was a
//! quick success is trusted: its queue is bounded only by the worker's intake, so a burst to
//! a healthy endpoint is absorbed, not bounced through JetStream. Any other endpoint (new,
//! slow, failing) gets 4 waiting deliveries per in-flight slot. When a
//! trusted endpoint fails or slows down, every delivery waiting in its queue is evicted
//! (deferred) at once, so a dead endpoint never sits on the intake other endpoints need.
//!
//! The circuit opens after [`FAILURES_TO_OPEN`] consecutive failures (no response, timeout,
//! 5xx, 408; a 429 is answered by the adaptive rate instead); while open, deliveries are
//! deferred to the end of the cool-down; then one delivery is let through as a probe:
//! success closes the circuit, failure re-opens it with a doubled cool-down (up to
//! [`MAX_COOLDOWN`]). State is per worker process.

use gancho_core::policy::Wait;
use gancho_telemetry::names;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// In-flight cap of an endpoint that sets none.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
/// Deliveries an endpoint may have waiting in this worker, per request it may have in
/// flight. Past it, deliveries are rescheduled instead of held (each held one counts against
/// the consumer's ack-pending window).
const QUEUE_PER_SLOT: usize = 4;
/// Consecutive failures that open the circuit.
pub const FAILURES_TO_OPEN: u32 = 5;
/// First cool-down of an open circuit; doubles after each failed probe.
const FIRST_COOLDOWN: Duration = Duration::from_secs(5);
/// Longest cool-down.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(300);
/// How long a rate-limited delivery that finds its endpoint's queue full waits at least
/// before it is tried again (one that finds the queue full for a free slot is parked).
const QUEUE_FULL_DELAY: Duration = Duration::from_millis(500);
/// Gates kept before idle ones are dropped. An idle gate (nobody holds it, circuit closed)
/// carries nothing worth keeping: a new one starts untrusted, which is safe.
const PRUNE_AT: usize = 4096;
/// A successful answer slower than this makes an endpoint untrusted.
pub const SLOW_ANSWER: Duration = Duration::from_secs(2);
/// An endpoint with every in-flight slot taken and no answer (of any status) for this long
/// is stalled: what arrives for it is parked, not queued or bounced through JetStream, until
/// it answers again or its circuit opens. A black hole is known for one at this point, long
/// before its requests time out.
pub const STALL_AFTER: Duration = Duration::from_secs(1);

/// What an attempt said about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A success, or an answer that says the endpoint is up (a 4xx other than 408 and 429).
    Healthy,
    /// 429: up, and asking for fewer requests.
    Throttled,
    /// A 5xx or 408.
    Failed,
    /// No answer: a timeout, a refused or reset connection, a TLS failure.
    Silent,
}

/// What a delivery waiting in an endpoint's queue does when it leaves it.
pub enum Turn {
    /// Send it; the permit is the endpoint's in-flight slot.
    Go(OwnedSemaphorePermit),
    /// Reschedule it after `after`, not counting an attempt.
    Defer { reason: Wait, after: Duration },
    /// The endpoint's config changed while it waited (deleted, disabled, paused, a new rate
    /// or in-flight cap): look the endpoint up again and admit it afresh.
    Again,
}

/// What to do with a delivery now.
pub enum Admission {
    /// Send it; the permit is the endpoint's in-flight slot.
    Go(OwnedSemaphorePermit),
    /// Wait in the endpoint's queue ([`Gate::wait_turn`]); the guard keeps its place counted.
    Queue(QueueGuard),
    /// Reschedule it after `after`, not counting an attempt.
    Defer { reason: Wait, after: Duration },
}

#[derive(Debug, Default, Clone)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
    probing: bool,
    /// The receiver asked for a pause (429 or 503 with `Retry-After`) until then.
    paused_until: Option<Instant>,
    /// When a parked delivery was last released to serve as the probe.
    probe_released: Option<Instant>,
    /// Since when the endpoint owes an answer: its last answer, or the start of a request
    /// while none was in flight (whichever is later).
    owes_since: Option<Instant>,
}

/// What to do with an endpoint's parked deliveries (set aside while its circuit is open, it
/// is stalled, or its queue in this worker is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// The circuit is closed and nothing holds them: release as many as its queue has room
    /// for (what comes back beyond that would only be parked again).
    Release(usize),
    /// The cool-down is over and no probe is under way: release one, to be the probe.
    Probe,
    /// Cooling down, or a probe is under way: leave them.
    Keep,
}

/// The clock the rate limiters' answers are read against. One for the process: making a
/// clock queries the CPU (`cpuid`, a trap to the hypervisor on a VM), which cost a sixth of
/// the worker's CPU when it was made for every admission.
static CLOCK: std::sync::LazyLock<DefaultClock> = std::sync::LazyLock::new(DefaultClock::default);

/// A released probe that has not come back within this long (its delivery found the probe
/// slot taken, or was lost to a crash) is followed by another.
const PROBE_RELEASE_EVERY: Duration = Duration::from_secs(10);

/// An endpoint's rate as its 429s set it (AIMD, [`gancho_core::retry::lowered_rate`]).
#[derive(Default)]
struct Adaptive {
    /// The lowered rate and its limiter, while the endpoint is slowed.
    slowed: Option<(u32, Arc<DefaultDirectRateLimiter>)>,
    /// What the rate climbs back to: the configured limit, or the rate requests were
    /// starting at when the endpoint was first slowed.
    ceiling: u32,
    last_change: Option<Instant>,
    /// Requests started in the current second and the one before (the observed rate of an
    /// endpoint without a configured limit).
    window: Option<Instant>,
    this_second: u32,
    last_second: u32,
}

/// One endpoint's admission state in this worker.
pub struct Gate {
    settings: (Option<u32>, Option<u32>),
    /// The URL it was made for: a gate made for another address carries no circuit over.
    url: String,
    /// Config revision its settings come from: an older one never replaces it.
    revision: u64,
    /// Bumped (with `evictions`) when the endpoint's config changed: waiters queued before
    /// look it up again instead of being deferred.
    readmits: AtomicU64,
    in_flight: Arc<Semaphore>,
    /// In-flight slots in all.
    cap: usize,
    limiter: Option<DefaultDirectRateLimiter>,
    adaptive: Mutex<Adaptive>,
    queued: Arc<AtomicUsize>,
    /// Queue bound while untrusted.
    small_bound: usize,
    /// Queue bound while trusted: the worker's whole intake.
    large_bound: usize,
    trusted: AtomicBool,
    /// Deliveries were parked because its queue was full ([`Gate::overflowed`]): the release
    /// loop is poked when the queue empties, not only at its next look.
    overflow: AtomicBool,
    /// When (unix milliseconds) the endpoint's current run of failed attempts began; 0 after
    /// a success. What `failing_since` is written from ([`crate::operational::Health`]).
    failing_from: AtomicI64,
    /// Bumped when the endpoint loses trust; waiters queued before the bump are evicted.
    evictions: watch::Sender<u64>,
    circuit: Mutex<Circuit>,
}

/// Counts a delivery as waiting in its endpoint's queue until dropped.
pub struct QueueGuard {
    queued: Arc<AtomicUsize>,
    epoch: u64,
    readmit: u64,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(names::DELIVERIES_QUEUED).decrement(1.0);
    }
}

impl Gate {
    fn new(settings: &Settings<'_>, intake: usize) -> Self {
        let (rate, max_in_flight) = (settings.rate, settings.max_in_flight);
        let cap = max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT).max(1);
        let limiter = rate
            .and_then(NonZeroU32::new)
            .map(|r| DefaultDirectRateLimiter::direct(Quota::per_second(r)));
        Self {
            settings: (rate, max_in_flight),
            url: settings.url.to_owned(),
            revision: settings.revision,
            readmits: AtomicU64::new(0),
            in_flight: Arc::new(Semaphore::new(cap as usize)),
            cap: cap as usize,
            limiter,
            adaptive: Mutex::default(),
            queued: Arc::new(AtomicUsize::new(0)),
            small_bound: (cap as usize * QUEUE_PER_SLOT).min(intake / 4).max(1),
            large_bound: intake,
            trusted: AtomicBool::new(false),
            overflow: AtomicBool::new(false),
            failing_from: AtomicI64::new(0),
            evictions: watch::channel(0).0,
            circuit: Mutex::new(Circuit::default()),
        }
    }

    /// Notes an attempt that counts toward the endpoint's health: after a failure, returns
    /// since when (unix milliseconds) every attempt failed, `now_ms` starting a new run.
    pub fn failing_from(&self, success: bool, now_ms: i64) -> Option<i64> {
        if success {
            self.failing_from.store(0, Ordering::Relaxed);
            return None;
        }
        match self
            .failing_from
            .compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => Some(now_ms),
            Err(from) => Some(from),
        }
    }

    /// A delivery was parked because the queue was full.
    pub fn overflowed(&self) {
        self.overflow.store(true, Ordering::Relaxed);
    }

    /// Whether the queue is empty while deliveries parked for lack of room in it wait: true
    /// once per overflow, so the caller pokes the release loop once.
    pub fn drained(&self) -> bool {
        self.queued.load(Ordering::Relaxed) == 0 && self.overflow.swap(false, Ordering::Relaxed)
    }

    /// Whether this gate was made for `settings` (its rate, in-flight cap and URL).
    fn serves(&self, settings: &Settings<'_>) -> bool {
        self.settings == (settings.rate, settings.max_in_flight) && self.url == settings.url
    }

    /// Decides what happens to a delivery arriving now.
    pub fn admit(&self) -> Admission {
        self.admit_from(false)
    }

    /// [`Gate::admit`] for a delivery of a bulk lane (`bulk`) or not. A bulk delivery may
    /// queue up to the whole intake even at an endpoint not trusted yet: the routers pace the
    /// bulk lanes and the worker caps what they hold, so a backlog meeting a fresh worker
    /// waits in the queue instead of going round JetStream as deferrals (a second of those
    /// at a worker's start cost a quiet tenant a tenth of a second in tests/fairness.rs).
    pub fn admit_from(&self, bulk: bool) -> Admission {
        if let Some(after) = self.paused_for() {
            return Admission::Defer {
                reason: Wait::RetryAfter,
                after,
            };
        }
        if let Some(after) = self.circuit_wait() {
            return Admission::Defer {
                reason: Wait::CircuitOpen,
                after,
            };
        }
        let bound = if bulk || self.trusted.load(Ordering::Relaxed) {
            self.large_bound
        } else {
            self.small_bound
        };
        let queue_or_defer = |reason: Wait, after: Duration| {
            let queued = self.queued.fetch_add(1, Ordering::Relaxed);
            if queued < bound {
                metrics::gauge!(names::DELIVERIES_QUEUED).increment(1.0);
                Admission::Queue(QueueGuard {
                    queued: self.queued.clone(),
                    epoch: *self.evictions.borrow(),
                    readmit: self.readmits.load(Ordering::Relaxed),
                })
            } else {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Admission::Defer { reason, after }
            }
        };
        if self.stalled() {
            return Admission::Defer {
                reason: Wait::Stalled,
                after: STALL_AFTER,
            };
        }
        // Deliveries already waiting go first: a newcomer does not overtake the queue.
        if self.queued.load(Ordering::Relaxed) > 0 {
            return queue_or_defer(Wait::InFlightCap, QUEUE_FULL_DELAY);
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return queue_or_defer(Wait::InFlightCap, QUEUE_FULL_DELAY);
        };
        if let Some(wait) = self.rate_wait() {
            drop(permit);
            return queue_or_defer(Wait::RateLimited, wait.max(QUEUE_FULL_DELAY));
        }
        self.started();
        Admission::Go(permit)
    }

    /// `Some(wait)` when the rate limit (configured, or lowered after 429s) refuses a request
    /// now; `None` takes a token from each.
    fn rate_wait(&self) -> Option<Duration> {
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

    fn slowed_limiter(&self) -> Option<Arc<DefaultDirectRateLimiter>> {
        let a = self.adaptive.lock().expect("adaptive lock");
        a.slowed.as_ref().map(|(_, l)| l.clone())
    }

    /// Whether every in-flight slot is taken and the endpoint has not answered for
    /// [`STALL_AFTER`] since it started owing an answer.
    pub fn stalled(&self) -> bool {
        if self.in_flight.available_permits() > 0 {
            return false;
        }
        let c = self.circuit.lock().expect("circuit lock");
        c.owes_since
            .is_some_and(|since| since.elapsed() >= STALL_AFTER)
    }

    /// Counts a request starting now (the observed rate, and since when an answer is owed).
    fn started(&self) {
        if self.in_flight.available_permits() + 1 >= self.cap {
            // The only request in flight: the endpoint owes an answer from now.
            let mut c = self.circuit.lock().expect("circuit lock");
            c.owes_since = Some(Instant::now());
        }
        let mut a = self.adaptive.lock().expect("adaptive lock");
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
    pub fn slow_down(&self) -> Option<u32> {
        use gancho_core::retry::{lowered_rate, RATE_STEP_EVERY};
        let mut a = self.adaptive.lock().expect("adaptive lock");
        if a.last_change
            .is_some_and(|at| at.elapsed() < RATE_STEP_EVERY)
        {
            return None;
        }
        let current = match &a.slowed {
            Some((rate, _)) => *rate,
            None => {
                let observed = a.this_second.max(a.last_second).max(1);
                let ceiling = self.settings.0.unwrap_or(observed).max(1);
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
    pub fn speed_up(&self) -> Option<Option<u32>> {
        use gancho_core::retry::{raised_rate, RATE_STEP_EVERY};
        let mut a = self.adaptive.lock().expect("adaptive lock");
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
        let (Some(limiter), Some(rate)) = (&self.limiter, self.settings.0) else {
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
    pub fn is_slowed(&self) -> bool {
        self.adaptive
            .lock()
            .expect("adaptive lock")
            .slowed
            .is_some()
    }

    /// Waits until the endpoint can take a queued delivery. [`Turn::Defer`] when it should be
    /// deferred instead: the endpoint lost trust or was paused by its receiver while it
    /// waited (evicted), it stalled, or its circuit opened. [`Turn::Again`] when the
    /// endpoint's config changed meanwhile ([`Gate::readmit`]).
    pub async fn wait_turn(&self, place: &QueueGuard) -> Turn {
        let mut evictions = self.evictions.subscribe();
        let evicted = async {
            let _ = evictions.wait_for(|e| *e != place.epoch).await;
        };
        tokio::select! {
            turn = self.take_turn() => turn,
            () = evicted => {
                if self.readmits.load(Ordering::Relaxed) != place.readmit {
                    Turn::Again
                } else if let Some(after) = self.paused_for() {
                    Turn::Defer { reason: Wait::RetryAfter, after }
                } else if let Some(after) = self.cooling_for() {
                    Turn::Defer { reason: Wait::CircuitOpen, after }
                } else {
                    Turn::Defer { reason: Wait::InFlightCap, after: QUEUE_FULL_DELAY }
                }
            }
        }
    }

    /// The queue's wait itself: an in-flight slot, then the rate's tokens.
    async fn take_turn(&self) -> Turn {
        // A stalled endpoint does not keep its queue on the worker's intake: it is parked.
        let stall = async {
            loop {
                tokio::time::sleep(STALL_AFTER / 4).await;
                if self.stalled() {
                    return;
                }
            }
        };
        let permit = tokio::select! {
            p = self.in_flight.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = stall => return Turn::Defer { reason: Wait::Stalled, after: STALL_AFTER },
        };
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
        if let Some(after) = self.paused_for() {
            return Turn::Defer {
                reason: Wait::RetryAfter,
                after,
            };
        }
        match self.circuit_wait() {
            Some(after) => Turn::Defer {
                reason: Wait::CircuitOpen,
                after,
            },
            None => {
                self.started();
                Turn::Go(permit)
            }
        }
    }

    /// The endpoint's config changed: every delivery waiting in its queue (for a slot or for
    /// the rate) leaves it with [`Turn::Again`], to be looked up and admitted afresh.
    pub fn readmit(&self) {
        self.readmits.fetch_add(1, Ordering::Relaxed);
        self.evictions.send_modify(|e| *e += 1);
    }

    /// Pauses the endpoint for `wait` (a receiver's `Retry-After`): no request starts before
    /// it ends, and the deliveries waiting in its queue are evicted (deferred). Returns
    /// whether this starts or extends a pause.
    pub fn pause(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        let mut c = self.circuit.lock().expect("circuit lock");
        if c.paused_until.is_some_and(|u| u >= until) {
            return false;
        }
        c.paused_until = Some(until);
        drop(c);
        self.evictions.send_modify(|e| *e += 1);
        true
    }

    /// `Some(remaining)` while a receiver's pause lasts.
    pub fn paused_for(&self) -> Option<Duration> {
        let mut c = self.circuit.lock().expect("circuit lock");
        let until = c.paused_until?;
        let now = Instant::now();
        if now < until {
            return Some(until - now);
        }
        c.paused_until = None;
        None
    }

    /// Whether a receiver's pause is in force.
    pub fn is_paused(&self) -> bool {
        self.paused_for().is_some()
    }

    /// `Some(wait)` while the circuit refuses deliveries. When a cool-down has ended, the
    /// first caller becomes the probe and is let through.
    fn circuit_wait(&self) -> Option<Duration> {
        let mut c = self.circuit.lock().expect("circuit lock");
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
    fn cooling_for(&self) -> Option<Duration> {
        let c = self.circuit.lock().expect("circuit lock");
        let until = c.open_until?;
        Some(
            until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        )
    }

    /// Feeds an attempt's outcome to the circuit, the trust and the stall watch. Returns
    /// whether the circuit opened or closed.
    pub fn record(&self, heard: Heard, latency: Duration) -> bool {
        let trusted = heard == Heard::Healthy && latency < SLOW_ANSWER;
        if self.trusted.swap(trusted, Ordering::Relaxed) && !trusted {
            // Lost trust: whoever waits in the queue is evicted and deferred.
            self.evictions.send_modify(|e| *e += 1);
        }
        let mut c = self.circuit.lock().expect("circuit lock");
        if heard != Heard::Silent {
            c.owes_since = Some(Instant::now());
        }
        let was_open = c.open_until.is_some();
        // A 429 says the endpoint is there and wants fewer requests: the adaptive rate answers
        // it, not the circuit (which would stop everything for a cool-down).
        if matches!(heard, Heard::Healthy | Heard::Throttled) {
            *c = Circuit {
                paused_until: c.paused_until,
                owes_since: c.owes_since,
                ..Circuit::default()
            };
            return was_open;
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
        let open = c.open_until.is_some();
        drop(c);
        if open && !was_open {
            // What waits in the queue (for a slot, or for the rate's next token) is parked
            // now, not one by one as each turn comes.
            self.evictions.send_modify(|e| *e += 1);
        }
        was_open != open
    }

    /// What to do with the deliveries parked for this endpoint: kept while it is stalled or
    /// its receiver's pause lasts, one let out as the probe of an open circuit, and as many as
    /// its queue has room for otherwise.
    pub fn parked(&self) -> Parked {
        if self.stalled() || self.paused_for().is_some() {
            return Parked::Keep;
        }
        let mut c = self.circuit.lock().expect("circuit lock");
        let Some(until) = c.open_until else {
            let bound = if self.trusted.load(Ordering::Relaxed) {
                self.large_bound
            } else {
                self.small_bound
            };
            return match bound.saturating_sub(self.queued.load(Ordering::Relaxed)) {
                0 => Parked::Keep,
                room => Parked::Release(room),
            };
        };
        let now = Instant::now();
        if now < until
            || c.probing
            || c.probe_released
                .is_some_and(|at| now.duration_since(at) < PROBE_RELEASE_EVERY)
        {
            return Parked::Keep;
        }
        c.probe_released = Some(now);
        Parked::Probe
    }

    pub fn is_open(&self) -> bool {
        self.circuit
            .lock()
            .expect("circuit lock")
            .open_until
            .is_some()
    }
}

/// A limiter for a rate lowered by 429s: evenly spaced requests, no burst.
fn slowed_limiter(rate: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(rate.max(1)).expect("at least 1");
    DefaultDirectRateLimiter::direct(Quota::per_second(rate).allow_burst(NonZeroU32::MIN))
}

/// The settings a gate is made for, from the endpoint's config at `revision`.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub rate: Option<u32>,
    pub max_in_flight: Option<u32>,
    pub url: &'a str,
    /// The live snapshot's revision these come from.
    pub revision: u64,
}

/// What the config says now of an endpoint this worker has a gate for ([`Gates::follow`]).
pub enum Current<'a> {
    /// Deleted (not in the snapshot).
    Gone,
    /// Disabled or paused: nothing may be sent to it.
    Stopped,
    /// Deliverable, with these settings.
    Live(Settings<'a>),
}

/// Every endpoint's gate in this worker, created on first use and replaced when the
/// endpoint's rate, in-flight cap or URL change.
///
/// Bound: one entry per endpoint this worker delivered to; past [`PRUNE_AT`] (or twice the
/// entries in use after the last pruning) idle gates are dropped, and a deleted endpoint's
/// gate is dropped at the next config change ([`Gates::follow`]).
pub struct Gates {
    map: Mutex<HashMap<(String, String), Arc<Gate>>>,
    /// Size at which idle gates are next dropped; doubles when most gates are in use, so a
    /// worker serving many active endpoints does not scan the map on every new one.
    prune_at: AtomicUsize,
    intake: usize,
}

impl Gates {
    /// `intake`: deliveries this worker holds at once (in flight and queued).
    pub fn new(intake: usize) -> Self {
        Self {
            map: Mutex::default(),
            prune_at: AtomicUsize::new(PRUNE_AT),
            intake: intake.max(1),
        }
    }

    /// The endpoint's gate for `settings`. A gate made from an older config revision with
    /// other settings is replaced ([`Gates::replace`]); a newer one is kept, whatever the
    /// caller read.
    pub fn get(&self, tenant: &str, endpoint: &str, settings: Settings<'_>) -> Arc<Gate> {
        let mut map = self.map.lock().expect("gates lock");
        let key = (tenant.to_owned(), endpoint.to_owned());
        match map.get(&key) {
            Some(g) if g.serves(&settings) || g.revision >= settings.revision => g.clone(),
            Some(old) => {
                let old = old.clone();
                self.replace(&mut map, key, &old, &settings)
            }
            None => {
                if map.len() >= self.prune_at.load(Ordering::Relaxed) {
                    // Deleted or quiet endpoints; keep those in use and open circuits.
                    map.retain(|_, g| {
                        Arc::strong_count(g) > 1 || g.is_open() || g.is_paused() || g.is_slowed()
                    });
                    self.prune_at
                        .store((map.len() * 2).max(PRUNE_AT), Ordering::Relaxed);
                }
                let g = Arc::new(Gate::new(&settings, self.intake));
                map.insert(key, g.clone());
                g
            }
        }
    }

    /// A new gate for new settings. At the same URL it keeps the circuit, the receiver's
    /// pause and the trust (the same receiver); at another it starts afresh. The old gate's
    /// waiters are sent round again, to the new one; its requests in flight finish.
    fn replace(
        &self,
        map: &mut HashMap<(String, String), Arc<Gate>>,
        key: (String, String),
        old: &Gate,
        settings: &Settings<'_>,
    ) -> Arc<Gate> {
        let g = Gate::new(settings, self.intake);
        if old.url == settings.url {
            *g.circuit.lock().expect("circuit lock") =
                old.circuit.lock().expect("circuit lock").clone();
            g.trusted
                .store(old.trusted.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let g = Arc::new(g);
        map.insert(key, g.clone());
        old.readmit();
        g
    }

    /// Brings the gates to the config: a deleted endpoint's gate is dropped, a disabled or
    /// paused one's waiters are sent round again (to be dead-lettered or held at once rather
    /// than at their turn), and one with new settings is replaced. Returns how many gates
    /// changed (parked deliveries may now be released).
    pub fn follow<'s>(&self, current: impl Fn(&str, &str) -> Current<'s>) -> usize {
        let mut map = self.map.lock().expect("gates lock");
        let mut changed = Vec::new();
        let mut gone = Vec::new();
        for (key, g) in map.iter() {
            match current(&key.0, &key.1) {
                Current::Gone => gone.push(key.clone()),
                Current::Stopped => {
                    if g.queued.load(Ordering::Relaxed) > 0 {
                        g.readmit();
                    }
                }
                Current::Live(settings) => {
                    if !g.serves(&settings) && g.revision < settings.revision {
                        changed.push((key.clone(), g.clone(), settings));
                    }
                }
            }
        }
        let n = changed.len() + gone.len();
        for key in gone {
            if let Some(g) = map.remove(&key) {
                g.readmit();
            }
        }
        for (key, old, settings) in changed {
            self.replace(&mut map, key, &old, &settings);
        }
        n
    }

    /// How many gates this worker keeps.
    pub fn entries(&self) -> usize {
        self.map.lock().expect("gates lock").len()
    }

    /// The gate of an endpoint, if this worker has one.
    pub fn peek(&self, tenant: &str, endpoint: &str) -> Option<Arc<Gate>> {
        let map = self.map.lock().expect("gates lock");
        map.get(&(tenant.to_owned(), endpoint.to_owned())).cloned()
    }

    /// How many endpoints are paused by their receiver's `Retry-After` in this worker.
    pub fn paused(&self) -> usize {
        self.map
            .lock()
            .expect("gates lock")
            .values()
            .filter(|g| g.is_paused())
            .count()
    }

    /// How many endpoints 429s hold below their usual rate in this worker.
    pub fn slowed(&self) -> usize {
        self.map
            .lock()
            .expect("gates lock")
            .values()
            .filter(|g| g.is_slowed())
            .count()
    }

    /// How many endpoints have an open circuit in this worker.
    pub fn open_circuits(&self) -> usize {
        self.map
            .lock()
            .expect("gates lock")
            .values()
            .filter(|g| g.is_open())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rate: Option<u32>, max_in_flight: Option<u32>, revision: u64) -> Settings<'static> {
        Settings {
            rate,
            max_in_flight,
            url: "https://receiver.example/hook",
            revision,
        }
    }

    #[test]
    fn a_receivers_pause_defers_everything_until_it_ends() {
        let g = Gate::new(&at(None, Some(1), 1), 2048);
        let busy = g.admit();
        assert!(matches!(busy, Admission::Go(_)));
        let waiting = g.admit();
        let Admission::Queue(place) = waiting else {
            panic!("the second delivery should wait in the queue");
        };
        assert!(g.pause(Duration::from_millis(300)));
        assert!(
            !g.pause(Duration::from_millis(100)),
            "a shorter pause extends nothing"
        );
        // The queued delivery is evicted; a newcomer is deferred for what is left.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let turn = rt.block_on(g.wait_turn(&place));
        assert!(
            matches!(
                turn,
                Turn::Defer {
                    reason: Wait::RetryAfter,
                    ..
                }
            ),
            "a receiver's pause defers what waited, for the pause"
        );
        drop(place);
        drop(busy);
        match g.admit() {
            Admission::Defer { reason, after } => {
                assert_eq!(reason, Wait::RetryAfter);
                assert!(after <= Duration::from_millis(300));
            }
            _ => panic!("paused endpoints defer"),
        }
        // A success does not end the pause early; time does.
        g.record(Heard::Healthy, Duration::from_millis(1));
        assert!(g.is_paused());
        std::thread::sleep(Duration::from_millis(320));
        assert!(!g.is_paused());
        assert!(matches!(g.admit(), Admission::Go(_)));
    }

    #[test]
    fn an_endpoint_full_and_silent_for_a_second_is_stalled_until_it_answers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let g = Gate::new(&at(None, Some(2), 1), 2048);
        // It answered long ago, then was idle: a burst that fills its slots owes an answer
        // from its first request, not from that old answer.
        g.record(Heard::Healthy, Duration::from_millis(1));
        std::thread::sleep(STALL_AFTER + Duration::from_millis(50));
        let a = g.admit();
        let b = g.admit();
        assert!(matches!(a, Admission::Go(_)) && matches!(b, Admission::Go(_)));
        assert!(
            !g.stalled(),
            "an endpoint is not stalled the moment it is busy"
        );
        let Admission::Queue(place) = g.admit() else {
            panic!("the third delivery should wait in the queue");
        };
        // No answer for a second with every slot taken: the queue is handed over for parking,
        // newcomers are parked, and parked deliveries stay.
        let started = Instant::now();
        let turn = rt.block_on(g.wait_turn(&place));
        assert!(
            matches!(
                turn,
                Turn::Defer {
                    reason: Wait::Stalled,
                    ..
                }
            ),
            "the queued one is parked"
        );
        assert!(started.elapsed() < STALL_AFTER + Duration::from_millis(500));
        drop(place);
        assert!(g.stalled());
        assert!(matches!(
            g.admit(),
            Admission::Defer {
                reason: Wait::Stalled,
                ..
            }
        ));
        assert_eq!(g.parked(), Parked::Keep);
        // Any answer, even a 500, says it is there: no longer stalled, parked ones go back.
        g.record(Heard::Failed, Duration::from_millis(1200));
        assert!(!g.stalled());
        assert!(matches!(g.admit(), Admission::Queue(_)));
        assert!(matches!(g.parked(), Parked::Release(n) if n > 0));
        // A timeout is no answer.
        std::thread::sleep(STALL_AFTER + Duration::from_millis(50));
        g.record(Heard::Silent, Duration::from_secs(5));
        assert!(g.stalled());
        drop((a, b));
        assert!(!g.stalled(), "a free slot is not a stall");
    }

    #[test]
    fn a_429_is_no_failure_for_the_circuit() {
        let g = Gate::new(&at(None, None, 1), 2048);
        for _ in 0..3 {
            g.record(Heard::Failed, Duration::ZERO);
        }
        for _ in 0..10 {
            g.record(Heard::Throttled, Duration::ZERO);
        }
        assert!(!g.is_open(), "429s say the endpoint is there");
        for _ in 0..4 {
            g.record(Heard::Failed, Duration::ZERO);
        }
        assert!(!g.is_open(), "a 429 ends a run of failures");
        g.record(Heard::Silent, Duration::ZERO);
        assert!(g.is_open());
        assert!(
            !matches!(g.admit(), Admission::Go(_)),
            "an open circuit sends nothing"
        );
    }

    #[test]
    fn in_flight_cap_then_queue_then_defer() {
        let g = Gate::new(&at(None, Some(2), 1), 2048);
        let a = g.admit();
        let b = g.admit();
        assert!(matches!(a, Admission::Go(_)));
        assert!(matches!(b, Admission::Go(_)));
        // Two slots taken: the next 8 (4 per slot) wait in the queue, then deferrals.
        let queued: Vec<Admission> = (0..8).map(|_| g.admit()).collect();
        assert!(queued.iter().all(|a| matches!(a, Admission::Queue(_))));
        assert!(matches!(
            g.admit(),
            Admission::Defer {
                reason: Wait::InFlightCap,
                ..
            }
        ));
        // The one refused is parked; its queue full, none are let out yet.
        g.overflowed();
        assert_eq!(g.parked(), Parked::Keep);
        assert!(!g.drained(), "the queue is not empty");
        drop(queued);
        // The queue emptied: the release loop is poked once, and lets out as many as the
        // queue has room for (untrusted: 4 per slot).
        assert!(g.drained());
        assert!(!g.drained(), "once per overflow");
        assert_eq!(g.parked(), Parked::Release(8));
        // Trusted after a quick success: room for the worker's whole intake.
        g.record(Heard::Healthy, Duration::from_millis(5));
        assert_eq!(g.parked(), Parked::Release(2048));
        // While the receiver's pause lasts, none.
        g.pause(Duration::from_secs(5));
        assert_eq!(g.parked(), Parked::Keep);
        drop(a);
    }

    #[test]
    fn after_a_pause_the_parked_go_out_and_the_queue_admits() {
        let g = Gate::new(&at(None, Some(2), 1), 2048);
        g.pause(Duration::from_millis(50));
        assert_eq!(g.parked(), Parked::Keep);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(g.parked(), Parked::Release(8));
        assert!(matches!(g.admit(), Admission::Go(_)));
    }

    #[test]
    fn rate_limit_defers_past_the_burst() {
        let g = Gate::new(&at(Some(2), Some(100), 1), 2048);
        let mut go = 0;
        let mut queued = Vec::new();
        for _ in 0..5 {
            match g.admit() {
                Admission::Go(p) => {
                    go += 1;
                    drop(p)
                }
                Admission::Queue(q) => queued.push(q),
                Admission::Defer { .. } => {}
            }
        }
        assert_eq!(go, 2, "a burst of the per-second rate goes at once");
        assert_eq!(queued.len(), 3);
    }

    #[test]
    fn circuit_opens_probes_and_closes() {
        let g = Gate::new(&at(None, None, 1), 2048);
        for _ in 0..FAILURES_TO_OPEN - 1 {
            g.record(Heard::Silent, Duration::ZERO);
        }
        assert!(matches!(g.admit(), Admission::Go(_)));
        g.record(Heard::Silent, Duration::ZERO);
        assert!(g.is_open());
        match g.admit() {
            Admission::Defer { reason, after } => {
                assert_eq!(reason, Wait::CircuitOpen);
                assert!(after <= FIRST_COOLDOWN);
            }
            _ => panic!("an open circuit defers"),
        }
        // The cool-down ends: one probe goes, the others wait for it.
        g.circuit.lock().unwrap().open_until = Some(Instant::now());
        assert!(matches!(g.admit(), Admission::Go(_)));
        assert!(matches!(
            g.admit(),
            Admission::Defer {
                reason: Wait::CircuitOpen,
                ..
            }
        ));
        // A failed probe doubles the cool-down; a good one closes the circuit.
        g.record(Heard::Silent, Duration::ZERO);
        assert_eq!(g.circuit.lock().unwrap().cooldown, FIRST_COOLDOWN * 2);
        g.circuit.lock().unwrap().open_until = Some(Instant::now());
        assert!(matches!(g.admit(), Admission::Go(_)));
        g.record(Heard::Healthy, Duration::ZERO);
        assert!(!g.is_open());
        assert!(matches!(g.admit(), Admission::Go(_)));
    }

    #[tokio::test]
    async fn trust_widens_the_queue_and_losing_it_evicts() {
        let g = Gate::new(&at(None, Some(1), 1), 2048);
        let _busy = match g.admit() {
            Admission::Go(p) => p,
            _ => panic!("the first goes"),
        };
        // Untrusted: 4 may wait, the 5th is deferred.
        let small: Vec<Admission> = (0..4).map(|_| g.admit()).collect();
        assert!(small.iter().all(|a| matches!(a, Admission::Queue(_))));
        assert!(matches!(g.admit(), Admission::Defer { .. }));
        drop(small);
        // A quick success earns trust: the queue takes far more.
        g.record(Heard::Healthy, Duration::from_millis(5));
        let mut big: Vec<QueueGuard> = Vec::new();
        for _ in 0..100 {
            match g.admit() {
                Admission::Queue(q) => big.push(q),
                _ => panic!("a trusted endpoint queues"),
            }
        }
        // A failure evicts everyone waiting.
        let waiter = big.pop().unwrap();
        let g = Arc::new(g);
        let g2 = g.clone();
        let waiting = tokio::spawn(async move {
            match g2.wait_turn(&waiter).await {
                Turn::Defer { reason, .. } => Some(reason),
                _ => None,
            }
        });
        tokio::task::yield_now().await;
        g.record(Heard::Silent, Duration::from_secs(1));
        let evicted = waiting.await.unwrap();
        assert_eq!(evicted, Some(Wait::InFlightCap));
        // And a slow success does not earn trust back.
        g.record(Heard::Healthy, SLOW_ANSWER + Duration::from_millis(1));
        assert!(!g.trusted.load(Ordering::Relaxed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lifting_a_lowered_rate_releases_no_burst() {
        // Limited to 20/s, climbing back from 429s at 19/s, 10 deliveries queued behind it.
        let g = Arc::new(Gate::new(&at(Some(20), None, 1), 2048));
        {
            let mut a = g.adaptive.lock().unwrap();
            a.slowed = Some((19, Arc::new(slowed_limiter(19))));
            a.ceiling = 20;
        }
        assert!(matches!(g.admit(), Admission::Go(_)));
        let done = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for _ in 0..10 {
            let Admission::Queue(place) = g.admit() else {
                panic!("the lowered rate queues the rest");
            };
            let (g, done) = (g.clone(), done.clone());
            waiters.push(tokio::spawn(async move {
                let permit = g.wait_turn(&place).await;
                done.lock().unwrap().push(Instant::now());
                matches!(permit, Turn::Go(_))
            }));
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
        // Answers without 429: the next step reaches the ceiling and lifts the lowered rate.
        g.adaptive.lock().unwrap().last_change = None;
        assert_eq!(g.speed_up(), Some(None));
        for w in waiters {
            assert!(w.await.unwrap(), "every waiter gets its turn");
        }
        // They go at the configured 20/s: no more than a few within any 100 ms.
        let done = done.lock().unwrap();
        let most = done
            .iter()
            .map(|t| {
                done.iter()
                    .filter(|u| **u >= *t && **u < *t + Duration::from_millis(100))
                    .count()
            })
            .max()
            .unwrap();
        assert!(
            most <= 4,
            "{most} of 10 queued deliveries started within 100 ms of each other after the lift"
        );
    }

    #[test]
    fn idle_gates_are_pruned_but_open_circuits_kept() {
        let gates = Gates::new(2048);
        let held = gates.get("t", "held", at(None, None, 1));
        let open = gates.get("t", "open", at(None, None, 1));
        for _ in 0..FAILURES_TO_OPEN {
            open.record(Heard::Silent, Duration::ZERO);
        }
        drop(open);
        for i in 0..PRUNE_AT {
            gates.get("t", &format!("idle{i}"), at(None, None, 1));
        }
        let map = gates.map.lock().unwrap();
        assert!(
            map.len() < PRUNE_AT,
            "idle gates were dropped ({})",
            map.len()
        );
        assert!(map.contains_key(&("t".into(), "held".into())));
        assert!(map.contains_key(&("t".into(), "open".into())));
        drop(map);
        drop(held);
    }

    #[test]
    fn changed_settings_get_a_new_gate_and_an_older_revision_never_replaces_it() {
        let gates = Gates::new(2048);
        let a = gates.get("t", "e", at(None, Some(2), 1));
        assert!(Arc::ptr_eq(&a, &gates.get("t", "e", at(None, Some(2), 3))));
        let b = gates.get("t", "e", at(Some(5), Some(2), 4));
        assert!(!Arc::ptr_eq(&a, &b));
        // A delivery that read the config before the change uses the new gate.
        assert!(Arc::ptr_eq(&b, &gates.get("t", "e", at(None, Some(2), 3))));
    }

    #[tokio::test]
    async fn a_config_change_sends_the_queue_round_again_to_the_new_gate() {
        let gates = Gates::new(2048);
        let old = gates.get("t", "e", at(Some(1), Some(1), 1));
        let Admission::Go(busy) = old.admit() else {
            panic!("the first goes");
        };
        let Admission::Queue(place) = old.admit() else {
            panic!("the second waits");
        };
        let waiting = {
            let old = old.clone();
            tokio::spawn(async move { matches!(old.wait_turn(&place).await, Turn::Again) })
        };
        tokio::task::yield_now().await;
        let faster = Settings {
            rate: Some(50),
            ..at(Some(1), Some(1), 2)
        };
        let changed = gates.follow(|_, _| Current::Live(faster));
        assert_eq!(changed, 1);
        assert!(waiting.await.unwrap(), "the waiter was sent round again");
        let new = gates.peek("t", "e").unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        // A new rate at the same URL keeps the circuit (the same receiver).
        for _ in 0..FAILURES_TO_OPEN {
            new.record(Heard::Silent, Duration::ZERO);
        }
        let slower = Settings {
            rate: Some(20),
            ..at(Some(1), Some(1), 3)
        };
        assert_eq!(gates.follow(|_, _| Current::Live(slower)), 1);
        assert!(gates.peek("t", "e").unwrap().is_open());
        // At another URL the circuit starts closed.
        let moved = Settings {
            url: "https://elsewhere.example/hook",
            ..at(Some(20), Some(1), 4)
        };
        assert_eq!(gates.follow(|_, _| Current::Live(moved)), 1);
        assert!(!gates.peek("t", "e").unwrap().is_open());
        // Nothing changed: nothing to do.
        assert_eq!(gates.follow(|_, _| Current::Live(moved)), 0);
        // Deleted: the gate goes.
        assert_eq!(gates.follow(|_, _| Current::Gone), 1);
        assert!(gates.peek("t", "e").is_none());
        drop(busy);
    }

    #[test]
    fn repeated_429s_halve_the_rate_and_answers_without_them_bring_it_back() {
        // No configured limit: 30 requests in this second are the rate it was sent at.
        let g = Gate::new(&at(None, None, 1), 2048);
        for _ in 0..30 {
            assert!(matches!(g.admit(), Admission::Go(_)));
        }
        assert_eq!(g.slow_down(), Some(15));
        assert_eq!(
            g.slow_down(),
            None,
            "one decrease a second, however many 429s"
        );
        assert!(g.is_slowed());
        // Evenly spaced now: one goes, the next right after it waits.
        assert!(matches!(g.admit(), Admission::Go(_)));
        assert!(!matches!(g.admit(), Admission::Go(_)));
        std::thread::sleep(Duration::from_millis(1050));
        // A tenth of the ceiling (30) more per second without 429.
        assert_eq!(g.speed_up(), Some(Some(18)));
        assert_eq!(g.speed_up(), None, "one step a second");
        std::thread::sleep(Duration::from_millis(1050));
        assert_eq!(g.slow_down(), Some(9));

        // A configured limit is the ceiling, and 429s bring it down from what was sent.
        let g = Gate::new(&at(Some(10), None, 1), 2048);
        for _ in 0..4 {
            assert!(matches!(g.admit(), Admission::Go(_)));
        }
        assert_eq!(g.slow_down(), Some(2), "sent at 4/s under a limit of 10");
        let a = g.adaptive.lock().unwrap();
        assert_eq!(a.ceiling, 10);
    }
}
