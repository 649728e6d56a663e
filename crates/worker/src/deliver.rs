//! One delivery, from message to ack: render and sign the webhook, send it, record the
//! attempt, then schedule a retry, dead-letter or disable as the outcome says. The message
//! is acked only after every write that outcome needs is acknowledged by JetStream.

use crate::gate::{Admission, Gate, Gates, Heard, Turn};
use crate::http::{self, SendError};
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use gancho_core::policy::{self, AttemptOutcome, DeadKind, Wait, Waiting};
use gancho_core::Subjects;
use gancho_proto::{timestamp, to_datetime, Attempt, Delivery, DeliveryBatch, Message as _};
use gancho_store::consume::{self, Handled};
use gancho_store::refusal;
use gancho_store::writes;
use gancho_store::{ConfigStore, Live, LiveEndpoint, Snapshot};
use gancho_telemetry::names;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

/// Delay before a delivery whose outcome could not be recorded is tried again.
const NAK_DELAY: Duration = Duration::from_secs(1);
/// How long the worker keeps re-sending an outcome's writes before handing the delivery back.
const WRITE_PATIENCE: Duration = Duration::from_secs(30);
/// How long the worker keeps re-sending writes JetStream refuses for lack of room.
const FULL_PATIENCE: Duration = Duration::from_secs(2);
/// Delay before a delivery handed back for lack of room is tried again.
const FULL_NAK_DELAY: Duration = Duration::from_secs(10);

/// How long ago the router made `delivery`, when it says.
fn age(delivery: &Delivery) -> Option<Duration> {
    let created = delivery.created_at.as_ref().and_then(to_datetime)?;
    Some(
        (OffsetDateTime::now_utc() - created)
            .try_into()
            .unwrap_or_default(),
    )
}

/// Keeps `msg` ours while `fut` runs (see [`consume::with_progress`]).
fn with_progress<'a, F: std::future::Future + 'a>(
    msg: &'a jetstream::Message,
    fut: F,
) -> impl std::future::Future<Output = F::Output> + 'a {
    consume::with_progress(msg, crate::PROGRESS_EVERY, fut)
}

/// Keeps a delivery's message ours while `fut` runs. A batch member's message is already
/// kept by its batch for as long as any member is in hand, so a member adds no timer of
/// its own: at fan-out 100 that was two timers and their progress acks per delivery.
fn keep_while<'a, F: std::future::Future + 'a>(
    unit: Unit<'a>,
    fut: F,
) -> impl std::future::Future<Output = F::Output> + 'a {
    if unit.alone {
        futures::future::Either::Left(with_progress(unit.msg, fut))
    } else {
        futures::future::Either::Right(fut)
    }
}

/// Where a delivery came from: a message of its own, or a batch message (the deliveries of
/// one event to several endpoints of a partition), which is acked once every delivery's
/// outcome is stored.
#[derive(Clone, Copy)]
struct Unit<'a> {
    msg: &'a jetstream::Message,
    alone: bool,
}

impl Unit<'_> {
    /// The delivery's own bytes, as a hold or a dead letter keeps them.
    fn bytes(&self, delivery: Option<&Delivery>) -> Bytes {
        match delivery {
            Some(d) if !self.alone => Bytes::from(d.encode_to_vec()),
            _ => self.msg.payload.clone(),
        }
    }
}

pub(crate) struct Ctx {
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub live: Arc<Live>,
    pub store: ConfigStore,
    pub client: http::Client,
    pub jitter: f64,
    /// How much longer than its retry schedule a delivery may keep being deferred or parked.
    pub defer_grace: Duration,
    pub user_agent: String,
    pub gates: Arc<Gates>,
    /// Pokes the release loop: a delivery was parked, or a circuit closed.
    pub wake_release: Arc<tokio::sync::Notify>,
    /// The worker's HTTP request slots (its configured concurrency).
    pub requests: Semaphore,
    /// Held (before a request slot) by the deliveries of the bulk lanes, so that they never
    /// take every request slot from the tenants without a backlog.
    pub bulk_requests: Semaphore,
    /// The bytes of the request bodies being sent (a tenth of the worker's memory budget):
    /// each attempt holds its body's size from before it is rendered until it is answered.
    pub bodies: gancho_store::budget::Budget,
    /// Whether JetStream takes this worker's writes.
    pub pressure: Arc<gancho_store::full::Pressure>,
    /// Endpoints' failing-since marks, and disabling those failing too long.
    pub health: crate::operational::Health,
    /// How often a failed attempt may be logged, per endpoint.
    pub failure_lines: FailureLines,
    /// The deliveries of batch messages handed back whose outcomes are stored already.
    pub batches_done: BatchesDone,
}

/// For each batch message this worker handed back (some delivery's outcome could not be
/// stored), the endpoints whose outcomes were: when the message comes back to this worker,
/// those are not sent again. A partition is served by one worker, so it normally comes back
/// here; after a crash or a move the new worker sends them again (with their `webhook-id`).
#[derive(Default)]
pub(crate) struct BatchesDone(
    std::sync::Mutex<std::collections::HashMap<u64, std::collections::HashSet<String>>>,
);

impl BatchesDone {
    /// Most batch messages remembered; past it the memory is dropped (duplicates, never a
    /// loss).
    const MAX: usize = 10_000;

    /// What was done of the message at stream sequence `seq`, forgotten here.
    fn take(&self, seq: u64) -> std::collections::HashSet<String> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&seq).unwrap_or_default()
    }

    /// Batch messages remembered now.
    pub(crate) fn entries(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn keep(&self, seq: u64, done: std::collections::HashSet<String>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(seq, done);
    }
}

/// At most one failed-attempt line a second per endpoint.
#[derive(Default)]
pub(crate) struct FailureLines(
    std::sync::Mutex<std::collections::HashMap<(String, String), (Instant, u64)>>,
);

impl FailureLines {
    /// Endpoints remembered now (at most 100,000: past it the memory starts over).
    pub(crate) fn entries(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// `Some(lines left out since the last one)` when a line may be written now.
    fn allow(&self, tenant: &str, endpoint: &str) -> Option<u64> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        let now = Instant::now();
        let key = (tenant.to_owned(), endpoint.to_owned());
        let Some(entry) = map.get_mut(&key) else {
            map.insert(key, (now, 0));
            return Some(0);
        };
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            let left_out = entry.1;
            *entry = (now, 0);
            Some(left_out)
        } else {
            entry.1 += 1;
            None
        }
    }
}

/// What follows an attempt.
enum Next {
    Done,
    Retry {
        delay: Duration,
    },
    /// Rescheduled without an attempt (rate limit, in-flight cap, open circuit).
    Defer {
        delay: Duration,
    },
    Dead {
        kind: DeadKind,
        reason: String,
    },
    Disable {
        reason: String,
    },
    /// Set aside on the endpoint's held subject until it is resumed (no attempt).
    Hold,
}

/// The operational event an outcome sends.
enum Notice {
    /// `gancho.delivery.exhausted`, with why.
    Exhausted(String),
    /// `gancho.endpoint.disabled` after a 410 Gone, with why.
    Gone(String),
}

/// Whether a delivery may be sent to its endpoint as the config stands.
enum Standing {
    Ready(Arc<LiveEndpoint>),
    Not(Refusal),
}

/// Why it may not.
enum Refusal {
    /// Finished without an attempt: dead-lettered (disabled, invalid for its profile) or
    /// held (paused).
    Finish(Next),
    /// Not in this worker's snapshot: deleted, or too new for it.
    Unknown,
    /// This worker cannot open the endpoint's secrets.
    NoSecrets,
}

struct Outcome {
    status: u16,
    label: AttemptOutcome,
    error: String,
    body: Bytes,
    headers: Vec<(String, String)>,
    retry_after: Option<Duration>,
}

impl Ctx {
    /// Handles one delivery. `leaving` fires when its partition moves to another worker (or
    /// this one stops): if it is still waiting for its endpoint's turn, it is handed back for
    /// the partition's next owner instead of sent.
    pub(crate) async fn handle(
        &self,
        msg: jetstream::Message,
        leaving: tokio_util::sync::CancellationToken,
    ) -> Handled {
        let whole = Unit {
            msg: &msg,
            alone: true,
        };
        let batch = msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get(gancho_core::subject::BATCH_HEADER).is_some());
        if batch {
            return self.handle_batch(&msg, leaving).await;
        }
        // From `Bytes`: the payload is a view of the message, not a second copy of it.
        match Delivery::decode(msg.payload.clone()) {
            Ok(delivery) => self.handle_delivery(whole, delivery, leaving).await,
            Err(e) => {
                let reason = format!("delivery does not decode: {e}");
                let next = Next::Dead {
                    kind: DeadKind::Undecodable,
                    reason,
                };
                self.finish(whole, None, None, next).await
            }
        }
    }

    /// Sends each delivery of a batch message as if it were alone, at once, and acks the
    /// message when every outcome is stored. When one cannot be stored, the message is handed
    /// back whole, and this worker remembers which outcomes are stored so that it sends only
    /// the others when the message comes back ([`BatchesDone`]).
    async fn handle_batch(
        &self,
        msg: &jetstream::Message,
        leaving: tokio_util::sync::CancellationToken,
    ) -> Handled {
        let whole = Unit { msg, alone: true };
        let batch = match DeliveryBatch::decode(msg.payload.clone()) {
            Ok(DeliveryBatch {
                template: Some(template),
                endpoint_ids,
            }) if !endpoint_ids.is_empty() => Ok((template, endpoint_ids)),
            Ok(_) => Err("a delivery batch without deliveries".to_string()),
            Err(e) => Err(format!("delivery batch does not decode: {e}")),
        };
        let (template, endpoint_ids) = match batch {
            Ok(b) => b,
            Err(reason) => {
                let next = Next::Dead {
                    kind: DeadKind::Undecodable,
                    reason,
                };
                return self.finish(whole, None, None, next).await;
            }
        };
        let unit = Unit { msg, alone: false };
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let mut done = if msg.info().is_ok_and(|i| i.delivered > 1) {
            self.batches_done.take(seq)
        } else {
            Default::default()
        };
        let each = endpoint_ids
            .into_iter()
            .filter(|endpoint_id| !done.contains(endpoint_id))
            .map(|endpoint_id| async {
                let delivery = Delivery {
                    id: gancho_core::subject::delivery_id(&template.event_id, &endpoint_id),
                    endpoint_id: endpoint_id.clone(),
                    ..template.clone()
                };
                let handled = Box::pin(self.handle_delivery(unit, delivery, leaving.clone())).await;
                (endpoint_id, handled)
            });
        // The message stays ours while any of its deliveries is in hand, whatever each
        // one is waiting for.
        let handled = with_progress(msg, futures::future::join_all(each)).await;
        let mut all_done = true;
        for (endpoint_id, handled) in handled {
            match handled {
                Handled::Done => {
                    done.insert(endpoint_id);
                }
                Handled::HandedBack => all_done = false,
            }
        }
        if all_done {
            if let Err(e) = msg.ack().await {
                warn!(error = %e, "Cannot ack deliveries whose outcomes are stored; they may be attempted again.");
            }
            return Handled::Done;
        }
        self.batches_done.keep(seq, done);
        let delay = if self.pressure.refusing() {
            FULL_NAK_DELAY
        } else {
            NAK_DELAY
        };
        metrics::counter!(names::DELIVERY_REQUEUED).increment(1);
        let _ = writes::hand_back(msg, Some(delay)).await;
        Handled::HandedBack
    }

    /// One delivery, from its endpoint's config to its stored outcome. The endpoint is
    /// looked up when the delivery arrives, again whenever its config changes while the
    /// delivery waits in the endpoint's queue ([`Turn::Again`]), and once more when its
    /// request starts ([`Ctx::attempt_and_finish`]): a change the worker's snapshot has is
    /// in force for every request that starts after it, and a deleted, disabled or paused
    /// endpoint gets nothing more.
    async fn handle_delivery(
        &self,
        unit: Unit<'_>,
        mut delivery: Delivery,
        leaving: tokio_util::sync::CancellationToken,
    ) -> Handled {
        loop {
            let snapshot = self.live.load_full();
            let ep = match self.standing(&snapshot, &delivery) {
                Standing::Ready(ep) => ep,
                Standing::Not(why) => return self.refuse(unit, &delivery, why).await,
            };
            let revision = snapshot.revision;
            drop(snapshot);
            let gate = self.gates.get(
                &delivery.tenant,
                &delivery.endpoint_id,
                crate::gate::Settings {
                    rate: ep.config.rate_limit_per_sec,
                    max_in_flight: ep.config.max_in_flight,
                    url: &ep.config.url,
                    revision,
                },
            );
            let permit = match gate.admit_from(self.subjects.is_bulk(&unit.msg.subject)) {
                Admission::Go(permit) => permit,
                Admission::Defer { reason, after } => {
                    return self.defer(unit, delivery, &ep, &gate, reason, after).await
                }
                Admission::Queue(place) => {
                    // Waits holding only its intake slot; the worker's request slots and this
                    // endpoint's in-flight slots go to deliveries that can be sent now.
                    let turn = tokio::select! {
                        turn = keep_while(unit, gate.wait_turn(&place)) => turn,
                        _ = leaving.cancelled() => {
                            drop(place);
                            let delay = gancho_store::partitioned::HAND_BACK_DELAY;
                            return self.hand_back(unit, &delivery, "", delay).await;
                        }
                    };
                    drop(place);
                    match turn {
                        Turn::Go(permit) => permit,
                        Turn::Defer { reason, after } => {
                            return self.defer(unit, delivery, &ep, &gate, reason, after).await
                        }
                        Turn::Again => continue,
                    }
                }
            };
            match self
                .attempt_and_finish(unit, delivery, ep, &gate, permit)
                .await
            {
                Ok(handled) => return handled,
                // The endpoint changed between its turn and its request: look again.
                Err(again) => delivery = again,
            }
        }
    }

    /// Whether `delivery` may be sent to its endpoint as `snapshot` has it.
    fn standing(&self, snapshot: &Snapshot, delivery: &Delivery) -> Standing {
        let Some(ep) = snapshot.endpoint(&delivery.tenant, &delivery.endpoint_id) else {
            return Standing::Not(Refusal::Unknown);
        };
        if ep.signer.is_none() {
            return Standing::Not(Refusal::NoSecrets);
        }
        if ep.config.disabled {
            let reason = format!(
                "the endpoint is disabled{}",
                ep.config
                    .disabled_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
            return Standing::Not(Refusal::Finish(Next::Dead {
                kind: DeadKind::EndpointDisabled,
                reason,
            }));
        }
        if ep.config.paused {
            return Standing::Not(Refusal::Finish(Next::Hold));
        }
        if let Err(reason) = crate::profile::check(ep, delivery) {
            return Standing::Not(Refusal::Finish(Next::Dead {
                kind: DeadKind::Invalid,
                reason,
            }));
        }
        Standing::Ready(ep.clone())
    }

    /// Finishes a delivery its endpoint cannot take as it stands ([`Ctx::standing`]).
    async fn refuse(&self, unit: Unit<'_>, delivery: &Delivery, why: Refusal) -> Handled {
        match why {
            Refusal::Finish(next) => self.finish(unit, Some(delivery), None, next).await,
            Refusal::NoSecrets => {
                let why = "this worker cannot open endpoint secrets: set GANCHO_ENCRYPTION_KEY";
                self.hand_back(unit, delivery, why, NAK_DELAY).await
            }
            // Not in this worker's snapshot. Either it was deleted, or it was created a
            // moment ago and the router's snapshot saw it first: the store decides.
            Refusal::Unknown => match self
                .store
                .get_endpoint(&delivery.tenant, &delivery.endpoint_id)
                .await
            {
                Ok(None) => {
                    let reason = "the endpoint was deleted before delivery".to_string();
                    let next = Next::Dead {
                        kind: DeadKind::EndpointGone,
                        reason,
                    };
                    self.finish(unit, Some(delivery), None, next).await
                }
                Ok(Some(_)) => {
                    let why = "the endpoint is not in this worker's config snapshot yet";
                    self.hand_back(unit, delivery, why, NAK_DELAY).await
                }
                Err(e) => {
                    self.hand_back(unit, delivery, &e.to_string(), NAK_DELAY)
                        .await
                }
            },
        }
    }

    /// Sends one attempt while holding the endpoint's in-flight slot, then records it.
    #[allow(
        clippy::too_many_lines,
        reason = "an attempt's steps share the endpoint's slot and the gate's turn; to be split by stage (issue 28's apply)"
    )]
    async fn attempt_and_finish(
        &self,
        unit: Unit<'_>,
        mut delivery: Delivery,
        ep: Arc<LiveEndpoint>,
        gate: &Gate,
        permit: OwnedSemaphorePermit,
    ) -> Result<Handled, Delivery> {
        let attempt_no = delivery.attempts + 1;
        // Keep the delivery ours while a slow endpoint takes its time.
        // Waiting for one of the worker's request slots counts as work in hand too: a busy
        // worker may keep a delivery waiting for longer than the ack wait.
        let bulk = self.subjects.is_bulk(&unit.msg.subject);
        let sent = keep_while(unit, async {
            let _bulk = match bulk {
                true => Some(
                    self.bulk_requests
                        .acquire()
                        .await
                        .expect("the semaphore is never closed"),
                ),
                false => None,
            };
            let _request = self
                .requests
                .acquire()
                .await
                .expect("the semaphore is never closed");
            // The endpoint as it is now, when the request starts: it may have changed while
            // the delivery waited for its turn or for a request slot.
            let ep = {
                let now = self.live.load();
                match now.endpoint(&delivery.tenant, &delivery.endpoint_id) {
                    Some(current) if Arc::ptr_eq(current, &ep) => ep,
                    _ => match self.standing(&now, &delivery) {
                        Standing::Ready(current) => current,
                        Standing::Not(_) => return None,
                    },
                }
            };
            let _body = self.bodies.hold(delivery.payload.len() + 512).await;
            let started_at = OffsetDateTime::now_utc();
            metrics::gauge!(names::DELIVERY_IN_FLIGHT).increment(1.0);
            let (outcome, latency) = self.attempt(&delivery, &ep, started_at).await;
            metrics::gauge!(names::DELIVERY_IN_FLIGHT).decrement(1.0);
            Some((ep, started_at, outcome, latency))
        })
        .await;
        let Some((ep, started_at, outcome, latency)) = sent else {
            // Deleted, disabled, paused or made invalid for it meanwhile: no request; the
            // caller looks again and finishes it as the endpoint now stands.
            drop(permit);
            return Err(delivery);
        };
        let ep = &*ep;
        // The endpoint's slot is given back only once what the answer means (a pause, a lower
        // rate, the circuit) is in force: a delivery waiting for the slot must not start in
        // between (a request 0.5 ms after a 429 with Retry-After was seen in a test).
        let verdict = gancho_core::retry::judge(
            gancho_core::retry::Answer {
                delivered: outcome.label == AttemptOutcome::Success,
                status: outcome.status,
                retry_after: outcome.retry_after,
            },
            attempt_no,
            &ep.schedule,
            self.jitter,
            rand::random::<f64>(),
        );
        let healthy = verdict.healthy;
        if let Some(pause) = verdict.pause {
            // The receiver asked for a pause: nothing starts to it before the pause ends, and
            // what waits for it is rescheduled without spending attempts.
            if gate.pause(pause) {
                metrics::gauge!(names::ENDPOINTS_PAUSED).set(self.gates.paused() as f64);
                info!(endpoint = %ep.config.id, pause_ms = pause.as_millis() as u64, status = outcome.status,
                    "The endpoint asked for a pause (Retry-After); its deliveries wait.");
            }
        }
        if verdict.slow_down {
            if let Some(rate) = gate.slow_down() {
                metrics::gauge!(names::ENDPOINTS_SLOWED).set(self.gates.slowed() as f64);
                info!(endpoint = %ep.config.id, rate_per_sec = rate,
                    "The endpoint answered 429; its rate is lowered.");
            }
        } else if outcome.status != 0 {
            match gate.speed_up() {
                Some(None) => {
                    metrics::gauge!(names::ENDPOINTS_SLOWED).set(self.gates.slowed() as f64);
                    info!(endpoint = %ep.config.id, "The endpoint takes its usual rate again.");
                }
                Some(Some(rate)) => {
                    debug!(endpoint = %ep.config.id, rate_per_sec = rate, "The endpoint's rate goes up a step.");
                }
                None => {}
            }
        }
        let heard = if verdict.slow_down {
            Heard::Throttled
        } else if healthy {
            Heard::Healthy
        } else if outcome.status != 0 {
            Heard::Failed
        } else {
            Heard::Silent
        };
        if gate.record(heard, latency) {
            metrics::gauge!(names::CIRCUITS_OPEN).set(self.gates.open_circuits() as f64);
            if healthy {
                // Closed: what was parked goes out now.
                self.wake_release.notify_one();
            } else {
                warn!(endpoint = %ep.config.id, "Endpoint keeps failing; circuit opened, deliveries parked.");
            }
        }
        drop(permit);
        if gate.drained() {
            // Its queue emptied while deliveries parked for lack of room in it wait.
            self.wake_release.notify_one();
        }
        // A failing egress proxy is not the endpoint's failure: it opens circuits (so
        // deliveries wait without spending attempts) but never counts toward disabling.
        if outcome.label != AttemptOutcome::ProxyError {
            self.health
                .note(ep, gate, outcome.label == AttemptOutcome::Success);
        }
        metrics::counter!(names::DELIVERY_ATTEMPTS, "outcome" => outcome.label.as_str(),
            "class" => gancho_core::subject::status_class(outcome.status),
            "tenant" => gancho_telemetry::tenant_label(&delivery.tenant))
        .increment(1);
        metrics::histogram!(names::DELIVERY_ATTEMPT_DURATION, "outcome" => outcome.label.as_str())
            .record(latency.as_secs_f64());

        let next = match verdict.next {
            gancho_core::retry::Next::Delivered => {
                if let Some(at) = delivery.occurred_at.as_ref().and_then(to_datetime) {
                    let e2e = (OffsetDateTime::now_utc() - at).as_seconds_f64().max(0.0);
                    metrics::histogram!(names::DELIVERY_E2E).record(e2e);
                }
                Next::Done
            }
            gancho_core::retry::Next::Disable => Next::Disable {
                reason: format!("the endpoint answered 410 Gone at {started_at}"),
            },
            gancho_core::retry::Next::Retry(delay) => Next::Retry { delay },
            gancho_core::retry::Next::GiveUp => Next::Dead {
                kind: DeadKind::Exhausted,
                reason: format!(
                    "gave up after {attempt_no} attempts; last: {}",
                    describe(&outcome)
                ),
            },
        };
        if matches!(next, Next::Done) {
            debug!(endpoint = %ep.config.id, attempt = attempt_no, "Delivered.");
        } else if let Some(suppressed) = self
            .failure_lines
            .allow(&delivery.tenant, &delivery.endpoint_id)
        {
            // One line per failed attempt, at most one a second per endpoint, so a dead
            // endpoint cannot flood the log; the count says how many were left out.
            let retry_in_ms = match &next {
                Next::Retry { delay } => Some(delay.as_millis() as u64),
                _ => None,
            };
            warn!(
                tenant = %delivery.tenant, endpoint = %ep.config.id, event = %delivery.event_id,
                attempt = attempt_no, status = outcome.status, latency_ms = latency.as_millis() as u64,
                outcome = outcome.label.as_str(), error = %outcome.error, retry_in_ms, suppressed,
                "{}",
                if retry_in_ms.is_some() { "Delivery failed; retry scheduled." } else { "Delivery failed for good." }
            );
        }
        let next_at = match &next {
            Next::Retry { delay } => Some(timestamp(OffsetDateTime::now_utc() + *delay)),
            _ => None,
        };
        let record = Attempt {
            delivery_id: delivery.id.clone(),
            event_id: delivery.event_id.clone(),
            tenant: delivery.tenant.clone(),
            endpoint_id: delivery.endpoint_id.clone(),
            r#type: delivery.r#type.clone(),
            attempt: attempt_no,
            at: Some(timestamp(started_at)),
            status: outcome.status as u32,
            latency_us: latency.as_micros() as u64,
            outcome: outcome.label.as_str().into(),
            error: outcome.error.clone(),
            response_body: outcome.body.clone(),
            response_headers: outcome.headers.iter().cloned().collect(),
            // The URL requested (a templated profile's path filled in), query left out.
            url: loggable_url(&crate::profile::request_url(ep, &delivery)),
            next_attempt_at: next_at,
        };
        delivery.attempts = attempt_no;
        Ok(self.finish(unit, Some(&delivery), Some(record), next).await)
    }

    /// Reschedules or parks a delivery the endpoint cannot take now, without counting an
    /// attempt, or dead-letters it when it outlived its patience; [`policy::refused`] decides.
    async fn defer(
        &self,
        unit: Unit<'_>,
        mut delivery: Delivery,
        ep: &LiveEndpoint,
        gate: &Gate,
        reason: Wait,
        after: Duration,
    ) -> Handled {
        metrics::counter!(names::DELIVERY_DEFERRED, "reason" => reason.as_str(),
            "tenant" => gancho_telemetry::tenant_label(&delivery.tenant))
        .increment(1);
        let refused = policy::Refused {
            wait: reason,
            after,
            age: age(&delivery),
            patience: ep.schedule.delays().iter().sum(),
            grace: self.defer_grace,
            paused_for: gate.paused_for(),
        };
        match policy::refused(&refused, rand::random::<f64>()) {
            Waiting::GiveUp => {
                let next = self.outlived_dead_letter(reason.as_str());
                self.finish(unit, Some(&delivery), None, next).await
            }
            Waiting::Park => {
                // Parked once, unread, until the endpoint answers again or its circuit closes
                // (or one is let out as its probe): a dead endpoint's deliveries do not go
                // round JetStream while its requests time out or its circuit cools down.
                debug!(endpoint = %ep.config.id, %reason, "Delivery parked.");
                if reason == Wait::InFlightCap {
                    gate.overflowed();
                }
                self.wake_release.notify_one();
                self.finish(unit, Some(&delivery), None, Next::Hold).await
            }
            Waiting::Defer(delay) => {
                delivery.deferrals += 1;
                debug!(endpoint = %ep.config.id, %reason, delay_ms = delay.as_millis() as u64, "Delivery deferred.");
                self.finish(unit, Some(&delivery), None, Next::Defer { delay })
                    .await
            }
        }
    }

    /// Whether `delivery` is older than its endpoint's whole retry schedule plus the grace:
    /// past that, one the endpoint cannot take is dead-lettered instead of waiting on.
    fn outlived(&self, delivery: &Delivery, ep: &LiveEndpoint) -> bool {
        let patience = ep.schedule.delays().iter().sum();
        policy::outlived(age(delivery), patience, self.defer_grace)
    }

    fn outlived_dead_letter(&self, reason: &str) -> Next {
        Next::Dead {
            kind: DeadKind::Exhausted,
            reason: format!(
                "the endpoint could not take it ({reason}) for longer than its retry schedule plus {}",
                humantime::format_duration(self.defer_grace)
            ),
        }
    }

    /// The release loop's sweep of a parked delivery (`msg`, on its held subject): one that
    /// outlived its patience is dead-lettered from where it is, as [`Ctx::defer`] does with
    /// one that comes back, so a dead endpoint's parked deliveries do not wait for its
    /// circuit to close. Returns `None` when it is young enough to stay parked (or its
    /// endpoint is gone, which the release of its subject deals with).
    pub(crate) fn sweepable(&self, msg: &jetstream::Message) -> Option<Delivery> {
        let delivery = Delivery::decode(msg.payload.clone()).ok()?;
        let snapshot = self.live.load();
        let ep = snapshot.endpoint(&delivery.tenant, &delivery.endpoint_id)?;
        self.outlived(&delivery, ep).then_some(delivery)
    }

    /// Dead-letters a parked delivery [`Ctx::sweepable`] found outlived, and acks it.
    pub(crate) async fn expire_parked(
        &self,
        msg: jetstream::Message,
        delivery: Delivery,
    ) -> Handled {
        let unit = Unit {
            msg: &msg,
            alone: true,
        };
        let next = self.outlived_dead_letter("parked");
        self.finish(unit, Some(&delivery), None, next).await
    }

    /// Sends the webhook once, built by its profile.
    async fn attempt(
        &self,
        delivery: &Delivery,
        ep: &LiveEndpoint,
        now: OffsetDateTime,
    ) -> (Outcome, Duration) {
        let req = crate::profile::request(ep, delivery, now, &self.user_agent);
        let start = Instant::now();
        let outcome = match req {
            Err(crate::profile::Refused::Build(e)) => Err(SendError::Request(e)),
            Ok(req) => {
                let timeout = Duration::from_millis(u64::from(ep.config.timeout_ms.max(1)));
                let identity = http::Identity {
                    cert: ep.config.client_cert.as_deref(),
                    key: ep.config.client_key.as_deref(),
                    ca: ep.config.ca.as_deref(),
                };
                self.client.send(req, timeout, identity).await
            }
        };
        let latency = start.elapsed();
        let outcome = match outcome {
            Ok(resp) => Outcome {
                status: resp.status,
                label: if crate::profile::is_success(ep.config.profile, resp.status) {
                    AttemptOutcome::Success
                } else {
                    AttemptOutcome::HttpError
                },
                error: String::new(),
                body: resp.body,
                headers: resp.headers,
                retry_after: resp.retry_after,
            },
            Err(e) => Outcome {
                status: 0,
                label: e.kind(),
                error: e.message(),
                body: Bytes::new(),
                headers: Vec::new(),
                retry_after: None,
            },
        };
        (outcome, latency)
    }

    /// Stores the attempt and whatever `next` needs, then acks; on any failure, naks so the
    /// delivery is tried again.
    async fn finish(
        &self,
        unit: Unit<'_>,
        delivery: Option<&Delivery>,
        record: Option<Attempt>,
        next: Next,
    ) -> Handled {
        let mut writes = Vec::with_capacity(2);
        let tenant = delivery
            .map(|d| d.tenant.as_str())
            .unwrap_or(gancho_core::subject::UNKNOWN_TENANT_TOKEN);
        let endpoint = delivery
            .map(|d| d.endpoint_id.as_str())
            .unwrap_or("_unknown");
        if let Some(record) = record {
            // No Nats-Msg-Id: de-duplication costs the server on every delivery, and a
            // re-sent record (its PubAck was lost in a failover) is recognisable as such: the
            // same delivery id, attempt number and start time.
            let publish = PublishMessage::build().payload(Bytes::from(record.encode_to_vec()));
            let subject = self.subjects.attempt(
                tenant,
                endpoint,
                gancho_core::subject::status_class(record.status as u16),
                &record.outcome,
                &record.event_id,
            );
            writes.push((subject, publish));
        }
        let notice = match &next {
            Next::Dead {
                kind: DeadKind::Exhausted,
                reason,
            } => Some(Notice::Exhausted(reason.clone())),
            Next::Disable { reason } => Some(Notice::Gone(reason.clone())),
            _ => None,
        };
        let side = match next {
            Next::Done => None,
            Next::Retry { delay } => {
                let delivery = delivery.expect("a retry has a decoded delivery");
                metrics::counter!(names::DELIVERY_RETRIES_SCHEDULED).increment(1);
                Some(self.retry_publish(unit.msg, delivery, delay))
            }
            Next::Defer { delay } => {
                let delivery = delivery.expect("a deferral has a decoded delivery");
                Some(self.retry_publish(unit.msg, delivery, delay))
            }
            Next::Dead { kind, reason } => Some(self.dead_publish(unit, delivery, kind, reason)),
            Next::Hold => {
                let delivery = delivery.expect("a held delivery is decoded");
                Some(self.hold_publish(unit, delivery))
            }
            Next::Disable { reason } => {
                let delivery = delivery.expect("a 410 has a decoded delivery");
                if let Err(e) = self
                    .store
                    .update_endpoint(&delivery.tenant, &delivery.endpoint_id, |ep| {
                        ep.disabled = true;
                        ep.disabled_reason = Some(reason.clone());
                        Ok(())
                    })
                    .await
                {
                    return self.nak(unit, &e).await;
                }
                metrics::counter!(names::ENDPOINTS_DISABLED, "reason" => "gone").increment(1);
                warn!(endpoint = %delivery.endpoint_id, "Endpoint answered 410 Gone; disabled it.");
                Some(self.dead_publish(unit, Some(delivery), DeadKind::EndpointGone, reason))
            }
        };
        writes.extend(side);
        if let Some(op) = self.operational(delivery, notice) {
            writes.push(op);
        }
        if let Err(e) = keep_while(unit, self.store_all(writes)).await {
            return self.nak(unit, &e).await;
        }
        if !unit.alone {
            // Acked with the rest of its batch.
            return Handled::Done;
        }
        if let Err(e) = unit.msg.ack().await {
            warn!(error = %e, "Cannot ack a delivery whose outcome is stored; it may be attempted again.");
        }
        Handled::Done
    }

    /// Publishes every write and waits for its PubAck, re-sending the ones that fail (a
    /// JetStream leader election takes seconds) until [`WRITE_PATIENCE`] runs out. Handing
    /// the delivery back instead would send the webhook again, so it is the last resort.
    /// Re-sends are safe: dead letters and immediate retries carry a `Nats-Msg-Id`, a
    /// scheduled retry replaces the schedule on its subject, and an attempt record sent twice
    /// is the same record twice.
    ///
    /// When JetStream has no room ([`refusal::Refusal::Full`]) an attempt record is left out
    /// (counted, and the delivery goes on: a full log must not stop delivery), and the other
    /// writes get [`FULL_PATIENCE`] before the delivery is handed back for [`FULL_NAK_DELAY`]:
    /// the deliveries that succeed meanwhile are what frees room.
    async fn store_all(
        &self,
        mut pending: Vec<(String, PublishMessage)>,
    ) -> Result<(), jetstream::context::PublishError> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let sends = pending.into_iter().map(|(subject, publish)| async move {
                let sent = Instant::now();
                let result = match self.js.send_publish(subject.clone(), publish.clone()).await {
                    Ok(ack) => ack.into_future().await.map(|_| ()),
                    Err(e) => Err(e),
                };
                metrics::histogram!(names::JETSTREAM_PUBLISH, "role" => "worker")
                    .record(sent.elapsed().as_secs_f64());
                result.map_err(|e| (subject, publish, e))
            });
            let mut last_error = None;
            let mut full = false;
            pending = Vec::new();
            for result in futures::future::join_all(sends).await {
                match result {
                    Ok(()) => self.pressure.stored(),
                    Err((subject, publish, e)) => {
                        if refusal::is_full(&e) {
                            self.pressure.refused(&e.to_string());
                            full = true;
                            if self.subjects.is_attempt(&subject) {
                                metrics::counter!(names::ATTEMPTS_UNRECORDED).increment(1);
                                debug!("No room for an attempt record; left out.");
                                continue;
                            }
                        }
                        last_error = Some(e);
                        pending.push((subject, publish));
                    }
                }
            }
            // A write is pending again exactly when it failed (attempt records refused for
            // lack of room are left out instead).
            let Some(last_error) = last_error else {
                return Ok(());
            };
            let patience = if full { FULL_PATIENCE } else { WRITE_PATIENCE };
            if start.elapsed() + backoff > patience {
                return Err(last_error);
            }
            debug!(error = %last_error, writes = pending.len(), "JetStream did not take a write; trying again.");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// The operational event an outcome calls for: a delivery given up on, or an endpoint
    /// disabled by a 410 (not for gancho's own events, which would only beget more). Only
    /// when another endpoint of the tenant subscribes to it: a dead endpoint's deliveries
    /// given up on at its traffic's rate (thousands a second) would otherwise each become an
    /// event stored and routed for nobody.
    fn operational(
        &self,
        delivery: Option<&Delivery>,
        notice: Option<Notice>,
    ) -> Option<(String, PublishMessage)> {
        use crate::operational::{event, listened, DISABLED, EXHAUSTED};
        let d = delivery?;
        if d.r#type.starts_with(gancho_core::matching::RESERVED_PREFIX) {
            return None;
        }
        let notice = notice?;
        let ty = match notice {
            Notice::Exhausted(_) => EXHAUSTED,
            Notice::Gone(_) => DISABLED,
        };
        if !listened(&self.live.load(), &d.tenant, ty, &d.endpoint_id) {
            return None;
        }
        let at = OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        match notice {
            Notice::Exhausted(reason) => Some(event(
                &self.subjects,
                &d.tenant,
                EXHAUSTED,
                format!("exhausted:{}", d.id),
                &d.endpoint_id,
                serde_json::json!({
                    "endpoint_id": d.endpoint_id, "event_id": d.event_id, "event_type": d.r#type,
                    "attempts": d.attempts, "reason": reason, "at": at,
                }),
            )),
            Notice::Gone(reason) => Some(event(
                &self.subjects,
                &d.tenant,
                DISABLED,
                format!("disabled:{}:gone:{}", d.endpoint_id, d.id),
                &d.endpoint_id,
                serde_json::json!({
                    "endpoint_id": d.endpoint_id, "reason": reason, "disabled_at": at,
                }),
            )),
        }
    }

    fn retry_publish(
        &self,
        msg: &jetstream::Message,
        delivery: &Delivery,
        delay: Duration,
    ) -> (String, PublishMessage) {
        let payload = Bytes::from(delivery.encode_to_vec());
        let target = msg.subject.to_string();
        if delay.is_zero() {
            let publish = PublishMessage::build().payload(payload).message_id(format!(
                "retry:{}:{}:{}",
                delivery.id, delivery.attempts, delivery.deferrals
            ));
            return (target, publish);
        }
        let at = OffsetDateTime::now_utc() + delay;
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Schedule",
            gancho_core::retry::schedule_at(at).as_str(),
        );
        headers.insert("Nats-Schedule-Target", target.as_str());
        let publish = PublishMessage::build().payload(payload).headers(headers);
        (self.subjects.retry(&delivery.id), publish)
    }

    /// The delivery as it is, on its endpoint's held subject, with the subject it goes back
    /// to. The message id makes a re-sent hold (the ack was lost) a no-op.
    fn hold_publish(&self, unit: Unit<'_>, delivery: &Delivery) -> (String, PublishMessage) {
        metrics::counter!(names::DELIVERY_HELD).increment(1);
        let msg = unit.msg;
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let mut headers = HeaderMap::new();
        headers.insert(gancho_core::subject::TARGET_HEADER, msg.subject.as_str());
        let publish = PublishMessage::build()
            .payload(unit.bytes(Some(delivery)))
            .headers(headers)
            .message_id(format!("hold:{}:{seq}", delivery.id));
        (
            self.subjects.held(&delivery.tenant, &delivery.endpoint_id),
            publish,
        )
    }

    fn dead_publish(
        &self,
        unit: Unit<'_>,
        delivery: Option<&Delivery>,
        kind: DeadKind,
        reason: String,
    ) -> (String, PublishMessage) {
        let (tenant, endpoint, id, event) = match delivery {
            Some(d) => (
                d.tenant.as_str(),
                d.endpoint_id.as_str(),
                d.id.as_str(),
                Some(d.event_id.as_str()),
            ),
            None => (
                gancho_core::subject::UNKNOWN_TENANT_TOKEN,
                "_unknown",
                "",
                None,
            ),
        };
        metrics::counter!(names::DELIVERY_DEAD_LETTERED, "reason" => kind.as_str(),
            "tenant" => gancho_telemetry::tenant_label(tenant))
        .increment(1);
        gancho_store::writes::dead_letter(
            &self.subjects,
            gancho_store::writes::Dead {
                tenant,
                endpoint,
                kind: kind.as_str(),
                event_id: event,
                reason,
                subject: unit.msg.subject.to_string(),
                original: unit.bytes(delivery),
                delivery: delivery.cloned(),
                // Delivery ids hash the event and endpoint ids, which are only unique within
                // a tenant.
                message_id: (!id.is_empty()).then(|| format!("dead:{tenant}:{id}")),
            },
        )
    }

    /// Hands the delivery back because its outcome could not be stored. A delivery of a
    /// batch leaves that to the batch, which hands back the whole message.
    async fn nak(
        &self,
        unit: Unit<'_>,
        why: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> Handled {
        let delay = if refusal::is_full(why) {
            // Logged once by the pressure gauge, not once per delivery.
            FULL_NAK_DELAY
        } else {
            warn!(
                reason = %why,
                "Handing a delivery back; it will be attempted again."
            );
            NAK_DELAY
        };
        if unit.alone {
            metrics::counter!(names::DELIVERY_REQUEUED).increment(1);
            let _ = writes::hand_back(unit.msg, Some(delay)).await;
        }
        Handled::HandedBack
    }

    /// Hands back a delivery this worker cannot work on now (`why`, logged when not empty),
    /// to come back after `delay`. Alone, its message is nak'd; in a batch, it is scheduled
    /// again on its own (no attempt, no deferral counted), so the others' outcomes stand.
    async fn hand_back(
        &self,
        unit: Unit<'_>,
        delivery: &Delivery,
        why: &str,
        delay: Duration,
    ) -> Handled {
        if !why.is_empty() {
            warn!(
                reason = why,
                "Handing a delivery back; it will be attempted again."
            );
        }
        metrics::counter!(names::DELIVERY_REQUEUED).increment(1);
        if unit.alone {
            let _ = writes::hand_back(unit.msg, Some(delay)).await;
            return Handled::HandedBack;
        }
        Box::pin(self.finish(unit, Some(delivery), None, Next::Defer { delay })).await
    }
}

fn describe(o: &Outcome) -> String {
    if o.status != 0 {
        format!("HTTP {}", o.status)
    } else {
        format!("{} ({})", o.label.as_str(), o.error)
    }
}

/// The URL as logged in an attempt: no query string, no user info (either may hold a token).
fn loggable_url(uri: &::http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("https"),
        uri.host().unwrap_or_default(),
        uri.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + uri.path()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_drop_query_and_credentials() {
        let u: ::http::Uri = "https://user:pw@hooks.example.com:8443/in?token=abc"
            .parse()
            .unwrap();
        assert_eq!(loggable_url(&u), "https://hooks.example.com:8443/in");
    }
}
