//! Per-endpoint admission: an in-flight cap, a rate ([`rate`]), a queue ([`queue`]), a
//! circuit breaker ([`circuit`]) and a receiver's pause ([`pause`]), so that one slow or
//! dead endpoint cannot take the capacity healthy endpoints need.
//!
//! A delivery is either sent at once ([`Admission::Go`]), queued in the endpoint's bounded
//! queue in this worker ([`Admission::Queue`]: it waits for the endpoint's in-flight slot
//! without holding one of the worker's shared request slots), or, past that bound, while
//! the circuit is open or the receiver's pause lasts, refused for now without counting as an
//! attempt ([`Admission::Defer`]; [`gancho_core::policy::refused`] decides whether it is
//! rescheduled or parked).
//!
//! An attempt's answer reaches the gate once, through [`Gate::apply`], which changes the
//! pause, the rate, the trust and the circuit together and says what changed, for the
//! caller to emit. State is per worker process.

mod circuit;
mod pause;
mod queue;
mod rate;

pub use circuit::{Flip, FAILURES_TO_OPEN, MAX_COOLDOWN};
pub use queue::QueueGuard;
pub use rate::RateChange;

use circuit::Circuit;
use gancho_core::policy::Wait;
use pause::Pause;
use queue::{Left, Queue};
use rate::Rate;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// In-flight cap of an endpoint that sets none.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
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

/// An attempt's answer as the gate takes it ([`Gate::apply`]).
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    pub heard: Heard,
    /// How long the request took.
    pub latency: Duration,
    /// The receiver's pause (`Retry-After` on a 429 or 503).
    pub pause: Option<Duration>,
}

impl Answered {
    /// From the judged answer: `status` 0 is no answer.
    pub fn from_verdict(v: &gancho_core::retry::Verdict, status: u16, latency: Duration) -> Self {
        let heard = if v.slow_down {
            Heard::Throttled
        } else if v.healthy {
            Heard::Healthy
        } else if status != 0 {
            Heard::Failed
        } else {
            Heard::Silent
        };
        Self {
            heard,
            latency,
            pause: v.pause,
        }
    }
}

/// What an answer changed at its endpoint, for the caller to emit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// A receiver's pause started or grew, to this long.
    pub paused: Option<Duration>,
    pub rate: Option<RateChange>,
    pub circuit: Option<Flip>,
}

/// One endpoint's admission state in this worker.
pub struct Gate {
    settings: (Option<u32>, Option<u32>),
    /// The URL it was made for: a gate made for another address carries no circuit over.
    url: String,
    /// Config revision its settings come from: an older one never replaces it.
    revision: u64,
    in_flight: Arc<Semaphore>,
    /// In-flight slots in all.
    cap: usize,
    rate: Rate,
    queue: Queue,
    circuit: Circuit,
    pause: Pause,
    /// When (unix milliseconds) the endpoint's current run of failed attempts began; 0 after
    /// a success. What `failing_since` is written from ([`crate::operational::Health`]).
    failing_from: AtomicI64,
}

impl Gate {
    fn new(settings: &Settings<'_>, intake: usize) -> Self {
        let cap = settings
            .max_in_flight
            .unwrap_or(DEFAULT_MAX_IN_FLIGHT)
            .max(1) as usize;
        Self {
            settings: (settings.rate, settings.max_in_flight),
            url: settings.url.to_owned(),
            revision: settings.revision,
            in_flight: Arc::new(Semaphore::new(cap)),
            cap,
            rate: Rate::new(settings.rate),
            queue: Queue::new(cap, intake),
            circuit: Circuit::default(),
            pause: Pause::default(),
            failing_from: AtomicI64::new(0),
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
        self.queue.overflowed();
    }

    /// Whether the queue is empty while deliveries parked for lack of room in it wait: true
    /// once per overflow, so the caller pokes the release loop once.
    pub fn drained(&self) -> bool {
        self.queue.drained()
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
        if let Some(after) = self.circuit.wait() {
            return Admission::Defer {
                reason: Wait::CircuitOpen,
                after,
            };
        }
        let bound = self.queue.bound(bulk);
        let queue_or_defer = |reason: Wait, after: Duration| match self.queue.join(bound) {
            Some(place) => Admission::Queue(place),
            None => Admission::Defer { reason, after },
        };
        if self.stalled() {
            return Admission::Defer {
                reason: Wait::Stalled,
                after: STALL_AFTER,
            };
        }
        // Deliveries already waiting go first: a newcomer does not overtake the queue.
        if self.queue.len() > 0 {
            return queue_or_defer(Wait::InFlightCap, QUEUE_FULL_DELAY);
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return queue_or_defer(Wait::InFlightCap, QUEUE_FULL_DELAY);
        };
        if let Some(wait) = self.rate.wait() {
            drop(permit);
            return queue_or_defer(Wait::RateLimited, wait.max(QUEUE_FULL_DELAY));
        }
        self.started();
        Admission::Go(permit)
    }

    /// Whether every in-flight slot is taken and the endpoint has not answered for
    /// [`STALL_AFTER`] since it started owing an answer.
    pub fn stalled(&self) -> bool {
        self.in_flight.available_permits() == 0 && self.circuit.owes_for(STALL_AFTER)
    }

    /// Counts a request starting now (the observed rate, and since when an answer is owed).
    fn started(&self) {
        if self.in_flight.available_permits() + 1 >= self.cap {
            // The only request in flight: the endpoint owes an answer from now.
            self.circuit.owe_from_now();
        }
        self.rate.started();
    }

    /// An attempt's answer, in force before the endpoint's in-flight slot is given back: the
    /// receiver's pause (nothing starts before it ends, and the queue is evicted), the rate
    /// (lowered by a 429, a step back up by any other answer), the trust (a quick success;
    /// losing it evicts the queue) and the circuit (opened by failures, closed by an answer
    /// that shows the endpoint up; opening evicts the queue).
    pub fn apply(&self, answer: Answered) -> Applied {
        let mut applied = Applied::default();
        if let Some(pause) = answer.pause {
            if self.pause(pause) {
                applied.paused = Some(pause);
            }
        }
        applied.rate = match answer.heard {
            Heard::Throttled => self.rate.slow_down().map(RateChange::Lowered),
            Heard::Silent => None,
            Heard::Healthy | Heard::Failed => match self.rate.speed_up() {
                Some(Some(rate)) => Some(RateChange::Raised(rate)),
                Some(None) => Some(RateChange::Restored),
                None => None,
            },
        };
        applied.circuit = self.record(answer.heard, answer.latency);
        applied
    }

    /// Whether 429s hold the endpoint below its usual rate.
    pub fn is_slowed(&self) -> bool {
        self.rate.is_slowed()
    }

    /// Waits until the endpoint can take a queued delivery. [`Turn::Defer`] when it should be
    /// deferred instead: the endpoint lost trust or was paused by its receiver while it
    /// waited (evicted), it stalled, or its circuit opened. [`Turn::Again`] when the
    /// endpoint's config changed meanwhile ([`Gate::readmit`]).
    pub async fn wait_turn(&self, place: &QueueGuard) -> Turn {
        tokio::select! {
            turn = self.take_turn() => turn,
            left = self.queue.left(place) => match left {
                Left::Readmitted => Turn::Again,
                Left::Evicted => {
                    if let Some(after) = self.paused_for() {
                        Turn::Defer { reason: Wait::RetryAfter, after }
                    } else if let Some(after) = self.circuit.cooling_for() {
                        Turn::Defer { reason: Wait::CircuitOpen, after }
                    } else {
                        Turn::Defer { reason: Wait::InFlightCap, after: QUEUE_FULL_DELAY }
                    }
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
        self.rate.take().await;
        if let Some(after) = self.paused_for() {
            return Turn::Defer {
                reason: Wait::RetryAfter,
                after,
            };
        }
        match self.circuit.wait() {
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
        self.queue.readmit();
    }

    /// Pauses the endpoint for `wait` (a receiver's `Retry-After`): no request starts before
    /// it ends, and the deliveries waiting in its queue are evicted (deferred). Returns
    /// whether this starts or extends a pause.
    fn pause(&self, wait: Duration) -> bool {
        let extended = self.pause.extend(wait);
        if extended {
            self.queue.evict();
        }
        extended
    }

    /// `Some(remaining)` while a receiver's pause lasts.
    pub fn paused_for(&self) -> Option<Duration> {
        self.pause.remaining()
    }

    /// Whether a receiver's pause is in force.
    pub fn is_paused(&self) -> bool {
        self.paused_for().is_some()
    }

    /// Feeds an attempt's outcome to the circuit, the trust and the stall watch.
    fn record(&self, heard: Heard, latency: Duration) -> Option<Flip> {
        // Lost trust: whoever waits in the queue is evicted and deferred.
        self.queue
            .trust(heard == Heard::Healthy && latency < SLOW_ANSWER);
        let flip = self.circuit.record(heard);
        if flip == Some(Flip::Opened) {
            // What waits in the queue (for a slot, or for the rate's next token) is parked
            // now, not one by one as each turn comes.
            self.queue.evict();
        }
        flip
    }

    /// What to do with the deliveries parked for this endpoint: kept while it is stalled or
    /// its receiver's pause lasts, one let out as the probe of an open circuit, and as many as
    /// its queue has room for otherwise.
    pub fn parked(&self) -> Parked {
        if self.stalled() || self.paused_for().is_some() {
            return Parked::Keep;
        }
        match self.circuit.probe_due() {
            Some(true) => Parked::Probe,
            Some(false) => Parked::Keep,
            None => match self.queue.room() {
                0 => Parked::Keep,
                room => Parked::Release(room),
            },
        }
    }

    pub fn is_open(&self) -> bool {
        self.circuit.is_open()
    }
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

    /// The gate of `ep` as a snapshot of `revision` has it.
    pub fn of(&self, ep: &gancho_store::LiveEndpoint, revision: u64) -> Arc<Gate> {
        self.get(
            ep.config.tenant.as_str(),
            ep.config.id.as_str(),
            Settings {
                rate: ep.config.rate_limit_per_sec,
                max_in_flight: ep.config.max_in_flight,
                url: &ep.config.url,
                revision,
            },
        )
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
        let mut g = Gate::new(settings, self.intake);
        if old.url == settings.url {
            g.circuit = old.circuit.copy();
            g.pause = old.pause.copy();
            g.queue
                .trusted
                .store(old.queue.trusted.load(Ordering::Relaxed), Ordering::Relaxed);
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
                    if g.queue.len() > 0 {
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
mod tests;
