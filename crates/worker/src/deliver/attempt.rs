//! The attempt stage: with the endpoint's in-flight slot, one of the worker's request slots
//! and its body's bytes in hand, the webhook is sent; the answer is judged
//! ([`gancho_core::retry::judge`]) and applied to the endpoint's gate before the slot is
//! given back; the attempt's record and what follows go to the outcome stage.

use super::outcome::Next;
use super::{keep_while, Ctx, Unit};
use crate::emit::{self, Emit as _};
use crate::gate::{Answered, Gate};
use crate::http::{self, SendError};
use bytes::Bytes;
use gancho_core::policy::{AttemptOutcome, DeadKind};
use gancho_proto::{timestamp, to_datetime, Attempt, Delivery};
use gancho_store::consume::Handled;
use gancho_store::LiveEndpoint;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::OwnedSemaphorePermit;

pub(super) struct Outcome {
    status: u16,
    label: AttemptOutcome,
    error: String,
    body: Bytes,
    headers: Vec<(String, String)>,
    retry_after: Option<Duration>,
}

/// Why no request was sent.
pub(super) enum Unsent {
    /// The endpoint changed (deleted, disabled, paused, made invalid for it) before it.
    Changed,
    /// The endpoint's transform failed on the delivery (why).
    Transform(String),
}

/// A request sent: the endpoint as it stood when the request started, and its answer.
pub(super) struct Sent {
    ep: Arc<LiveEndpoint>,
    started_at: OffsetDateTime,
    outcome: Outcome,
    latency: Duration,
}

impl Ctx {
    /// Sends one attempt while holding the endpoint's in-flight slot (`permit`), applies
    /// what the answer means to the endpoint's gate, then hands the outcome on. `Err` gives
    /// the delivery back unsent when the endpoint changed before its request started.
    pub(super) async fn attempt_and_finish(
        &self,
        unit: Unit<'_>,
        mut delivery: Delivery,
        ep: Arc<LiveEndpoint>,
        gate: &Gate,
        permit: OwnedSemaphorePermit,
    ) -> Result<Handled, Delivery> {
        let attempt_no = delivery.attempts + 1;
        let sent = match self.send(unit, &delivery, ep).await {
            Ok(sent) => sent,
            Err(Unsent::Changed) => {
                // Deleted, disabled, paused or made invalid for it meanwhile: no request;
                // the caller looks again and finishes it as the endpoint now stands.
                drop(permit);
                return Err(delivery);
            }
            Err(Unsent::Transform(reason)) => {
                // The program's verdict on this delivery, the same at every attempt: no
                // request, and nothing else of the endpoint waits for it.
                drop(permit);
                let next = Next::Dead {
                    kind: DeadKind::Transform,
                    reason,
                };
                return Ok(Box::pin(self.finish(unit, Some(&delivery), None, next)).await);
            }
        };
        let (next, record) = self.judged(gate, permit, &delivery, attempt_no, sent);
        delivery.attempts = attempt_no;
        Ok(Box::pin(self.finish(unit, Some(&delivery), Some(record), next)).await)
    }

    /// What an attempt's answer means: put in force at the endpoint's gate before its slot
    /// (`permit`) is given back, told as an internal event, and returned as what follows
    /// with the attempt's record.
    pub(super) fn judged(
        &self,
        gate: &Gate,
        permit: OwnedSemaphorePermit,
        delivery: &Delivery,
        attempt_no: u32,
        sent: Sent,
    ) -> (Next, Attempt) {
        let Sent {
            ep,
            started_at,
            outcome,
            latency,
        } = sent;
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
        // The endpoint's slot is given back only once what the answer means (a pause, a lower
        // rate, the circuit) is in force: a delivery waiting for the slot must not start in
        // between (a request 0.5 ms after a 429 with Retry-After was seen in a test).
        self.apply(
            gate,
            &ep,
            outcome.status,
            Answered::from_verdict(&verdict, outcome.status, latency),
        );
        drop(permit);
        if gate.drained() {
            // Its queue emptied while deliveries parked for lack of room in it wait.
            self.wake_release.notify_one();
        }
        // A failing egress proxy is not the endpoint's failure: it opens circuits (so
        // deliveries wait without spending attempts) but never counts toward disabling.
        if outcome.label != AttemptOutcome::ProxyError {
            self.health
                .note(&ep, gate, outcome.label == AttemptOutcome::Success);
        }
        let next = next_after(verdict.next, attempt_no, started_at, &outcome);
        let after = after_of(&next, delivery);
        let line = match after {
            emit::After::Delivered { .. } => None,
            _ => self
                .failure_lines
                .allow(&delivery.tenant, &delivery.endpoint_id),
        };
        let record = attempt_record(
            &ep, delivery, attempt_no, started_at, &outcome, latency, &next,
        );
        emit::AttemptFinished {
            tenant: &delivery.tenant,
            endpoint: ep.config.id.as_str(),
            event: &delivery.event_id,
            attempt: attempt_no,
            status: outcome.status,
            latency,
            outcome: outcome.label,
            error: &outcome.error,
            after,
            line,
            started: started_at,
            trace_parent: emit::trace_parent(delivery),
            url: &record.url,
            sent_trace: (ep.config.trace_context && delivery.trace.is_some())
                .then(|| gancho_core::webhook::traceparent_out(&delivery.id, attempt_no)),
        }
        .emit();
        (next, record)
    }

    /// Takes a request slot (and a bulk one for a bulk lane's delivery) and the body's
    /// bytes, looks the endpoint up once more, makes the body (its transform's, if it has
    /// one) and sends the request.
    async fn send(
        &self,
        unit: Unit<'_>,
        delivery: &Delivery,
        ep: Arc<LiveEndpoint>,
    ) -> Result<Sent, Unsent> {
        // Keep the delivery ours while a slow endpoint takes its time.
        // Waiting for one of the worker's request slots counts as work in hand too: a busy
        // worker may keep a delivery waiting for longer than the ack wait.
        let bulk = self.subjects.is_bulk(&unit.msg.subject);
        keep_while(unit, self.send_now(delivery, ep, bulk)).await
    }

    /// [`Ctx::send`] without the message to keep: a request slot (and a bulk one for a bulk
    /// lane's delivery), the body's bytes, the endpoint looked up once more, the body made
    /// and the request sent.
    pub(super) async fn send_now(
        &self,
        delivery: &Delivery,
        ep: Arc<LiveEndpoint>,
        bulk: bool,
    ) -> Result<Sent, Unsent> {
        {
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
                    _ => match self.standing(&now, delivery) {
                        super::intake::Standing::Ready(current) => current,
                        super::intake::Standing::Not(_) => return Err(Unsent::Changed),
                    },
                }
            };
            let body = crate::profile::transformed(&ep, delivery).map_err(Unsent::Transform)?;
            let size = body.as_ref().map_or(delivery.payload.len(), Bytes::len);
            let _body = self.bodies.hold(size + 512).await;
            let started_at = OffsetDateTime::now_utc();
            emit::WaitEnded {
                delivery,
                by: emit::WaitEnd::Attempt,
            }
            .emit();
            emit::in_flight(1.0);
            // Boxed: a request's state is kilobytes, and only the deliveries with a request
            // slot need it, not the thousands waiting for their turn or a slot.
            let (outcome, latency) = Box::pin(self.attempt(delivery, &ep, started_at, body)).await;
            emit::in_flight(-1.0);
            Ok(Sent {
                ep,
                started_at,
                outcome,
                latency,
            })
        }
    }

    /// Puts an answer in force at the endpoint's gate and says what it changed; a circuit
    /// that closed lets what was parked out now.
    fn apply(&self, gate: &Gate, ep: &LiveEndpoint, status: u16, answer: Answered) {
        let applied = gate.apply(answer);
        if applied == crate::gate::Applied::default() {
            return;
        }
        emit::GateChanged {
            endpoint: ep.config.id.as_str(),
            status,
            applied,
            counted: emit::GatesCounted::of(&self.gates),
        }
        .emit();
        if applied.circuit == Some(crate::gate::Flip::Closed) {
            self.wake_release.notify_one();
        }
    }
}

/// What an attempt's outcome says follows it, for its internal event.
fn after_of(next: &Next, delivery: &Delivery) -> emit::After {
    match next {
        Next::Done => emit::After::Delivered {
            end_to_end: delivery
                .occurred_at
                .as_ref()
                .and_then(to_datetime)
                .map(|at| {
                    (OffsetDateTime::now_utc() - at)
                        .try_into()
                        .unwrap_or_default()
                }),
        },
        Next::Retry { delay } => emit::After::Retry(*delay),
        _ => emit::After::Final,
    }
}

/// What follows an attempt, from its judged answer.
fn next_after(
    judged: gancho_core::retry::Next,
    attempt_no: u32,
    started_at: OffsetDateTime,
    outcome: &Outcome,
) -> Next {
    match judged {
        gancho_core::retry::Next::Delivered => Next::Done,
        gancho_core::retry::Next::Disable => Next::Disable {
            reason: format!("the endpoint answered 410 Gone at {started_at}"),
        },
        gancho_core::retry::Next::Retry(delay) => Next::Retry { delay },
        gancho_core::retry::Next::GiveUp => Next::Dead {
            kind: DeadKind::Exhausted,
            reason: format!(
                "gave up after {attempt_no} attempt{}; last: {}",
                if attempt_no == 1 { "" } else { "s" },
                describe(outcome)
            ),
        },
    }
}

/// The attempt's record in the delivery log.
fn attempt_record(
    ep: &LiveEndpoint,
    delivery: &Delivery,
    attempt_no: u32,
    started_at: OffsetDateTime,
    outcome: &Outcome,
    latency: Duration,
    next: &Next,
) -> Attempt {
    let next_attempt_at = match next {
        Next::Retry { delay } => Some(timestamp(OffsetDateTime::now_utc() + *delay)),
        _ => None,
    };
    Attempt {
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
        url: loggable_url(&crate::profile::request_url(ep, delivery)),
        next_attempt_at,
    }
}

impl Ctx {
    /// Sends the webhook once, built by its profile.
    pub(super) async fn attempt(
        &self,
        delivery: &Delivery,
        ep: &LiveEndpoint,
        now: OffsetDateTime,
        body: Option<Bytes>,
    ) -> (Outcome, Duration) {
        let req = crate::profile::request(ep, delivery, now, &self.user_agent, body);
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
