//! What happens to deliveries and endpoints in this worker, as internal events: each is a
//! struct whose [`Emit::emit`] writes its log line and its metrics, so each metric of the
//! delivery path is set in one place and a log line and its counter cannot drift apart.
//! The delivery path decides and applies; it says what happened only through these.

use crate::gate::{Flip, RateChange};
use gancho_core::policy::{AttemptOutcome, DeadKind, Wait};
use gancho_proto::Delivery;
use gancho_telemetry::kept::Kept;
use gancho_telemetry::traces::{self, KeyValue};
use gancho_telemetry::{names, tenant_label};
use metrics::{Counter, Gauge, Histogram};

/// How many values `outcome` and `class` take, for handles kept by them.
const OUTCOMES: usize = gancho_core::policy::AttemptOutcome::ALL.len();
const CLASSES: usize = gancho_core::subject::STATUS_CLASSES.len();

/// The handle of `gancho_delivery_in_flight_requests`, kept: every request moves it twice.
pub(crate) fn in_flight(change: f64) {
    static IN_FLIGHT: Kept<Gauge, 1> = Kept::new();
    IN_FLIGHT.with(
        0,
        || metrics::gauge!(names::DELIVERY_IN_FLIGHT),
        |g| g.increment(change),
    );
}
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use tracing::{debug, info, warn};

/// An internal event: its log line and metrics.
pub(crate) trait Emit {
    fn emit(self);
}

/// What became of a delivery after an attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) enum After {
    Delivered {
        /// From the event's `occurred_at` to now.
        end_to_end: Option<Duration>,
    },
    /// Tried again after this long.
    Retry(Duration),
    /// Given up on, or its endpoint disabled (a 410).
    Final,
}

/// An attempt finished (any outcome).
pub(crate) struct AttemptFinished<'a> {
    pub tenant: &'a str,
    pub endpoint: &'a str,
    pub event: &'a str,
    pub attempt: u32,
    pub status: u16,
    pub latency: Duration,
    pub outcome: AttemptOutcome,
    pub error: &'a str,
    pub after: After,
    /// For a failed attempt, whether its line is written: `Some(lines left out since the
    /// last one)` (at most one a second per endpoint, so a dead endpoint cannot flood the
    /// log), `None` to leave it out.
    pub line: Option<u64>,
    /// When the request started.
    pub started: OffsetDateTime,
    /// The delivery's trace context (its route span), empty when it has none.
    pub trace_parent: &'a str,
    /// Where it went, without query or credentials.
    pub url: &'a str,
    /// The `traceparent` the webhook carried (its endpoint asked for trace context), which
    /// the attempt's span links to.
    pub sent_trace: Option<String>,
}

impl AttemptFinished<'_> {
    /// The attempt as an HTTP client span of the delivery's trace: method, URL (without query
    /// or credentials), status, outcome, attempt number, endpoint; never a header value, the
    /// body, the secret or the signature. Returns its context, for the log line.
    fn span(&self) -> Option<traces::SpanContext> {
        let parent = traced(self.trace_parent)?;
        let start = SystemTime::from(self.started);
        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.full", self.url.to_owned()),
            KeyValue::new("http.request.resend_count", i64::from(self.attempt) - 1),
            KeyValue::new("gancho.attempt", i64::from(self.attempt)),
            KeyValue::new("gancho.outcome", self.outcome.as_str()),
            KeyValue::new("gancho.tenant", self.tenant.to_owned()),
            KeyValue::new("gancho.endpoint.id", self.endpoint.to_owned()),
            KeyValue::new("gancho.event.id", self.event.to_owned()),
        ];
        if self.status > 0 {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(self.status),
            ));
        }
        let links = self
            .sent_trace
            .as_deref()
            .and_then(traces::parse)
            .map(traces::Link::with_context)
            .into_iter()
            .collect();
        let mut span = (traces::SpanStart {
            name: "POST",
            kind: traces::Kind::Client,
            parent: Some(&parent),
            start,
            attributes,
            links,
        })
        .start()?;
        if self.outcome != AttemptOutcome::Success {
            let error_type = match self.status {
                0 => self.outcome.as_str().to_owned(),
                status => status.to_string(),
            };
            span.set(vec![KeyValue::new("error.type", error_type)]);
            span.error(self.outcome.as_str().to_owned());
        }
        let cx = span.context();
        span.end(Some(start + self.latency));
        Some(cx)
    }
}

/// The remote parent of a traced delivery's spans, when traces are on.
fn traced(trace_parent: &str) -> Option<traces::SpanContext> {
    if trace_parent.is_empty() || !traces::on() {
        return None;
    }
    traces::parse(trace_parent)
}

/// A traced delivery begins to wait (`reason`: retry, paused, or the gate's wait): when,
/// and why, travel with it, to be told as a span when the wait ends. A wait already begun
/// goes on (a retry deferred by the rate limit is one wait); `restart` begins a new one (a
/// retry after an attempt).
pub(crate) fn wait_begins(delivery: &mut Delivery, reason: &str, restart: bool) {
    let Some(trace) = delivery.trace.as_deref_mut() else {
        return;
    };
    if trace.wait_started.is_some() && !restart {
        return;
    }
    trace.wait_started = Some(gancho_proto::timestamp(OffsetDateTime::now_utc()));
    trace.wait_reason = reason.to_owned();
}

/// `delivery` as it goes to wait (`reason`, as [`wait_begins`]): itself when untraced, else a
/// copy that carries its wait.
pub(crate) fn going_to_wait<'d>(
    delivery: &'d Delivery,
    reason: &str,
    restart: bool,
) -> std::borrow::Cow<'d, Delivery> {
    if delivery.trace.is_none() {
        return std::borrow::Cow::Borrowed(delivery);
    }
    let mut waiting = delivery.clone();
    wait_begins(&mut waiting, reason, restart);
    std::borrow::Cow::Owned(waiting)
}

/// The delivery's trace context (its route span's `traceparent`), empty when untraced.
pub(crate) fn trace_parent(delivery: &Delivery) -> &str {
    delivery.trace.as_deref().map_or("", |t| t.parent.as_str())
}

/// A traced delivery's wait ended: its attempt starts now, or it was dead-lettered without
/// one (it outlived its patience waiting). Its span runs from when the wait began.
pub(crate) struct WaitEnded<'a> {
    pub delivery: &'a Delivery,
    pub by: WaitEnd,
}

/// A traced delivery dead-lettered without a request (`kind`, when it was): its wait ends
/// now, as a span that says so.
pub(crate) fn given_up_waiting(delivery: Option<&Delivery>, kind: Option<DeadKind>) {
    if let (Some(delivery), Some(kind)) = (delivery, kind) {
        WaitEnded {
            delivery,
            by: WaitEnd::DeadLettered(kind),
        }
        .emit();
    }
}

/// What ended a wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WaitEnd {
    /// Its next attempt started.
    Attempt,
    /// It was dead-lettered instead: the span says so, as an error with the kind.
    DeadLettered(DeadKind),
}

impl Emit for WaitEnded<'_> {
    fn emit(self) {
        let d = self.delivery;
        let Some(trace) = d.trace.as_deref() else {
            return;
        };
        let Some(began) = trace
            .wait_started
            .as_ref()
            .and_then(gancho_proto::to_datetime)
        else {
            return;
        };
        let Some(parent) = traced(&trace.parent) else {
            return;
        };
        let dead = match self.by {
            WaitEnd::Attempt => None,
            WaitEnd::DeadLettered(kind) => Some(kind.as_str()),
        };
        let mut attributes = vec![
            KeyValue::new("gancho.wait.reason", trace.wait_reason.clone()),
            KeyValue::new("gancho.endpoint.id", d.endpoint_id.clone()),
            KeyValue::new("gancho.attempt", i64::from(d.attempts) + 1),
        ];
        if let Some(kind) = dead {
            attributes.push(KeyValue::new("gancho.dead_letter.kind", kind));
        }
        let Some(mut span) = (traces::SpanStart {
            name: "gancho wait",
            kind: traces::Kind::Internal,
            parent: Some(&parent),
            start: SystemTime::from(began),
            attributes,
            links: Vec::new(),
        })
        .start() else {
            return;
        };
        if let Some(kind) = dead {
            span.error(format!("dead-lettered while waiting ({kind})"));
        }
        span.end(None);
    }
}

impl Emit for AttemptFinished<'_> {
    fn emit(self) {
        let span = self.span();
        // Every attempt updates these: their handles are kept (by outcome, status class and
        // the first 16 tenant labels), not looked up each time.
        static ATTEMPTS: Kept<Counter, { 16 * CLASSES * OUTCOMES }> = Kept::new();
        static DURATION: Kept<Histogram, OUTCOMES> = Kept::new();
        static E2E: Kept<Histogram, 1> = Kept::new();
        let outcome = self.outcome as usize;
        let class = gancho_core::subject::status_class_index(self.status);
        let (tenant, tenant_label) = gancho_telemetry::tenant_slot(self.tenant);
        ATTEMPTS.with(
            (tenant * CLASSES + class) * OUTCOMES + outcome,
            || {
                metrics::counter!(names::DELIVERY_ATTEMPTS, "outcome" => self.outcome.as_str(),
                    "class" => gancho_core::subject::STATUS_CLASSES[class],
                    "tenant" => tenant_label)
            },
            |c| c.increment(1),
        );
        DURATION.with(
            outcome,
            || metrics::histogram!(names::DELIVERY_ATTEMPT_DURATION, "outcome" => self.outcome.as_str()),
            |h| h.record(self.latency.as_secs_f64()),
        );
        let retry_in_ms = match self.after {
            After::Delivered { end_to_end } => {
                if let Some(e2e) = end_to_end {
                    E2E.with(
                        0,
                        || metrics::histogram!(names::DELIVERY_E2E),
                        |h| h.record(e2e.as_secs_f64()),
                    );
                }
                debug!(endpoint = %self.endpoint, attempt = self.attempt, "Delivered.");
                return;
            }
            After::Retry(delay) => Some(delay.as_millis() as u64),
            After::Final => None,
        };
        let Some(suppressed) = self.line else {
            return;
        };
        let message = if retry_in_ms.is_some() {
            "Delivery failed; retry scheduled."
        } else {
            "Delivery failed for good."
        };
        // With the trace and span of its attempt, when it is traced.
        match span {
            Some(cx) => warn!(
                tenant = %self.tenant, endpoint = %self.endpoint, event = %self.event,
                attempt = self.attempt, status = self.status, latency_ms = self.latency.as_millis() as u64,
                outcome = self.outcome.as_str(), error = %self.error, retry_in_ms, suppressed,
                trace_id = %cx.trace_id(), span_id = %cx.span_id(),
                "{message}"
            ),
            None => warn!(
                tenant = %self.tenant, endpoint = %self.endpoint, event = %self.event,
                attempt = self.attempt, status = self.status, latency_ms = self.latency.as_millis() as u64,
                outcome = self.outcome.as_str(), error = %self.error, retry_in_ms, suppressed,
                "{message}"
            ),
        }
    }
}

/// This worker's endpoints paused by their receiver, slowed by 429s, and with an open
/// circuit: after a change, and every few seconds (pauses and cool-downs end by time).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GatesCounted {
    pub paused: usize,
    pub slowed: usize,
    pub open: usize,
}

impl GatesCounted {
    pub(crate) fn of(gates: &crate::gate::Gates) -> Self {
        Self {
            paused: gates.paused(),
            slowed: gates.slowed(),
            open: gates.open_circuits(),
        }
    }
}

impl Emit for GatesCounted {
    fn emit(self) {
        metrics::gauge!(names::ENDPOINTS_PAUSED).set(self.paused as f64);
        metrics::gauge!(names::ENDPOINTS_SLOWED).set(self.slowed as f64);
        metrics::gauge!(names::CIRCUITS_OPEN).set(self.open as f64);
    }
}

/// An answer changed its endpoint's gate ([`crate::gate::Gate::apply`]), leaving this
/// worker's gates as `counted`.
pub(crate) struct GateChanged<'a> {
    pub endpoint: &'a str,
    pub status: u16,
    pub applied: crate::gate::Applied,
    pub counted: GatesCounted,
}

impl Emit for GateChanged<'_> {
    fn emit(self) {
        let endpoint = self.endpoint;
        self.counted.emit();
        if let Some(pause) = self.applied.paused {
            info!(%endpoint, pause_ms = pause.as_millis() as u64, status = self.status,
                "The endpoint asked for a pause (Retry-After); its deliveries wait.");
        }
        match self.applied.rate {
            Some(RateChange::Lowered(rate)) => {
                info!(%endpoint, rate_per_sec = rate, "The endpoint answered 429; its rate is lowered.");
            }
            Some(RateChange::Raised(rate)) => {
                debug!(%endpoint, rate_per_sec = rate, "The endpoint's rate goes up a step.");
            }
            Some(RateChange::Restored) => {
                info!(%endpoint, "The endpoint takes its usual rate again.");
            }
            None => {}
        }
        if let Some(flip) = self.applied.circuit {
            match flip {
                Flip::Opened => {
                    warn!(%endpoint, "Endpoint keeps failing; circuit opened, deliveries parked.");
                }
                Flip::Closed => info!(%endpoint, "Endpoint answers again; circuit closed."),
            }
        }
    }
}

/// The gate refused a delivery for now: rescheduled after `delay`, or parked (`None`).
pub(crate) struct Deferred<'a> {
    pub tenant: &'a str,
    pub endpoint: &'a str,
    pub reason: Wait,
    pub delay: Option<Duration>,
}

impl Emit for Deferred<'_> {
    fn emit(self) {
        metrics::counter!(names::DELIVERY_DEFERRED, "reason" => self.reason.as_str(),
            "tenant" => tenant_label(self.tenant))
        .increment(1);
        match self.delay {
            Some(delay) => {
                debug!(endpoint = %self.endpoint, reason = %self.reason,
                    delay_ms = delay.as_millis() as u64, "Delivery deferred.");
            }
            None => debug!(endpoint = %self.endpoint, reason = %self.reason, "Delivery parked."),
        }
    }
}

/// A delivery was set aside on its endpoint's held subject (paused, or parked).
pub(crate) struct Held;

impl Emit for Held {
    fn emit(self) {
        metrics::counter!(names::DELIVERY_HELD).increment(1);
    }
}

/// A failed attempt's retry was scheduled.
pub(crate) struct RetryScheduled;

impl Emit for RetryScheduled {
    fn emit(self) {
        metrics::counter!(names::DELIVERY_RETRIES_SCHEDULED).increment(1);
    }
}

/// A delivery (or a message that did not decode as one) was dead-lettered.
pub(crate) struct DeadLettered<'a> {
    pub tenant: &'a str,
    pub kind: DeadKind,
}

impl Emit for DeadLettered<'_> {
    fn emit(self) {
        metrics::counter!(names::DELIVERY_DEAD_LETTERED, "reason" => self.kind.as_str(),
            "tenant" => tenant_label(self.tenant))
        .increment(1);
    }
}

/// A delivery was handed back to JetStream to come again: this worker could not work on it
/// now (`why`), or could not store its outcome. `why` is `None` when the reason is said
/// elsewhere (a full store, logged once by its pressure gauge) or is routine (a partition
/// moving away).
pub(crate) struct HandedBack<'a> {
    pub why: Option<&'a dyn std::fmt::Display>,
    /// Counted: false for a batch member, whose batch is counted when it is handed back.
    pub counted: bool,
}

impl Emit for HandedBack<'_> {
    fn emit(self) {
        if self.counted {
            metrics::counter!(names::DELIVERY_REQUEUED).increment(1);
        }
        if let Some(why) = self.why {
            // A store that stops taking writes hands back everything in hand: one line a
            // second says so, with how many were left out.
            if let Some(suppressed) = HANDED_BACK_LINES.allow() {
                warn!(reason = %why, suppressed, "Handing a delivery back; it will be attempted again.");
            }
        }
    }
}

/// Why a message that came back was answered without sending again ([`crate::deliver`]'s
/// recall).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Copy {
    /// Finished here lately: its ack was lost.
    Finished,
    /// A copy of one this worker is working on.
    InHand,
    /// A delivery sent before whose outcome could not be stored: stored now.
    OutcomesKept,
}

/// A message came back to this worker and was answered without sending its webhook again.
pub(crate) struct CameBack(pub Copy);

impl Emit for CameBack {
    fn emit(self) {
        let [finished, in_hand, kept] = names::DELIVERY_COPY_WHYS;
        let why = match self.0 {
            Copy::Finished => finished,
            Copy::InHand => in_hand,
            Copy::OutcomesKept => kept,
        };
        metrics::counter!(names::DELIVERY_COPIES, "why" => why).increment(1);
    }
}

/// A store that stops taking writes hands back everything in hand: one line a second says so.
static HANDED_BACK_LINES: gancho_telemetry::EverySecond = gancho_telemetry::EverySecond::new();

/// Why the worker disabled an endpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Disabled {
    /// It answered 410 Gone.
    Gone,
    /// Every attempt failed for longer than `GANCHO_DISABLE_AFTER`.
    Failing,
}

/// The worker disabled an endpoint.
pub(crate) struct EndpointDisabled<'a> {
    pub endpoint: &'a str,
    pub why: Disabled,
}

impl Emit for EndpointDisabled<'_> {
    fn emit(self) {
        let (reason, line) = match self.why {
            Disabled::Gone => ("gone", "Endpoint answered 410 Gone; disabled it."),
            Disabled::Failing => ("failing", "Endpoint failing for too long; disabled it."),
        };
        metrics::counter!(names::ENDPOINTS_DISABLED, "reason" => reason).increment(1);
        warn!(endpoint = %self.endpoint, "{line}");
    }
}
