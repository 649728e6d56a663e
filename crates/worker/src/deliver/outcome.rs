//! The outcome stage: what follows a delivery (delivered, a retry, a deferral, a hold, a
//! dead letter, its endpoint disabled) becomes the writes it needs, each awaited, and then
//! the ack; a write that cannot be stored hands the delivery back instead.

use super::recall::{Decided, Left};
use super::{
    keep_while, waited, Ctx, Unit, FULL_NAK_DELAY, FULL_PATIENCE, NAK_DELAY, WRITE_PATIENCE,
};
use crate::emit::{self, Emit as _};
use crate::gate::Gate;
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use gancho_core::policy::{self, DeadKind, Wait, Waiting};
use gancho_proto::{Attempt, Delivery, Message as _};
use gancho_store::consume::Handled;
use gancho_store::{refusal, writes, LiveEndpoint};
use gancho_telemetry::names;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tracing::{debug, warn};

/// What follows an attempt.
pub(super) enum Next {
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

impl Next {
    /// The dead letter's kind, when it is one.
    pub(super) fn dead_kind(&self) -> Option<DeadKind> {
        match self {
            Next::Dead { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Keeps the outcome of an attempt whose writes could not be stored, so that when its
/// message comes back the outcome is stored instead of the webhook sent again. An outcome
/// without an attempt (a deferral, a hold) is decided anew then.
fn keep(unit: Unit<'_>, delivery: &Delivery, attempted: bool, record: Option<Attempt>, next: Next) {
    if attempted {
        let decided = Decided {
            attempts: delivery.attempts,
            record,
            next,
        };
        Left::unstored(unit.left, &delivery.endpoint_id, decided);
    }
}

/// The operational event an outcome sends.
pub(super) enum Notice {
    /// `gancho.delivery.exhausted`, with why.
    Exhausted(String),
    /// `gancho.endpoint.disabled` after a 410 Gone, with why.
    Gone(String),
}

impl Notice {
    /// The notice `next` calls for, if any.
    pub(super) fn of(next: &Next) -> Option<Notice> {
        match next {
            Next::Dead {
                kind: DeadKind::Exhausted,
                reason,
            } => Some(Notice::Exhausted(reason.clone())),
            Next::Disable { reason } => Some(Notice::Gone(reason.clone())),
            _ => None,
        }
    }
}

impl Ctx {
    /// Reschedules or parks a delivery the endpoint cannot take now, without counting an
    /// attempt, or dead-letters it when it outlived its patience; [`policy::refused`] decides.
    pub(super) async fn defer(
        &self,
        unit: Unit<'_>,
        mut delivery: Delivery,
        ep: &LiveEndpoint,
        gate: &Gate,
        reason: Wait,
        after: Duration,
    ) -> Handled {
        // The first refusal marks when its wait began; the mark goes with it, deferred or
        // parked.
        delivery
            .waiting_since
            .get_or_insert_with(|| gancho_proto::timestamp(OffsetDateTime::now_utc()));
        emit::wait_begins(&mut delivery, reason.as_str(), false);
        let refused = policy::Refused {
            wait: reason,
            after,
            age: waited(&delivery),
            patience: ep.schedule.delays().iter().sum(),
            grace: self.defer_grace,
            paused_for: gate.paused_for(),
        };
        let waiting = policy::refused(&refused, rand::random::<f64>());
        emit::Deferred {
            tenant: &delivery.tenant,
            endpoint: ep.config.id.as_str(),
            reason,
            delay: match waiting {
                Waiting::Defer(delay) => Some(delay),
                _ => None,
            },
        }
        .emit();
        match waiting {
            Waiting::GiveUp => {
                let next = self.outlived_dead_letter(reason.as_str());
                self.finish(unit, Some(&delivery), None, next).await
            }
            Waiting::Park => {
                // Parked once, unread, until the endpoint answers again or its circuit closes
                // (or one is let out as its probe): a dead endpoint's deliveries do not go
                // round JetStream while its requests time out or its circuit cools down.
                if reason == Wait::InFlightCap {
                    gate.overflowed();
                }
                self.wake_release.notify_one();
                self.finish(unit, Some(&delivery), None, Next::Hold).await
            }
            Waiting::Defer(delay) => {
                delivery.deferrals += 1;
                self.finish(unit, Some(&delivery), None, Next::Defer { delay })
                    .await
            }
        }
    }

    /// Whether `delivery` is older than its endpoint's whole retry schedule plus the grace:
    /// past that, one the endpoint cannot take is dead-lettered instead of waiting on.
    fn outlived(&self, delivery: &Delivery, ep: &LiveEndpoint) -> bool {
        let patience = ep.schedule.delays().iter().sum();
        policy::outlived(waited(delivery), patience, self.defer_grace)
    }

    pub(super) fn outlived_dead_letter(&self, reason: &str) -> Next {
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
        let left = Default::default();
        let unit = Unit {
            msg: &msg,
            alone: true,
            left: &left,
        };
        let next = self.outlived_dead_letter("parked");
        self.finish(unit, Some(&delivery), None, next).await
    }

    /// Stores the attempt and whatever `next` needs, then acks; on any failure, naks so the
    /// delivery is tried again.
    pub(super) async fn finish(
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
        let attempted = record.is_some();
        // No Nats-Msg-Id: de-duplication costs the server on every delivery, and a re-sent
        // record (its PubAck was lost in a failover) is recognisable as such: the same
        // delivery id, attempt number and start time.
        let record_write = record.as_ref().map(|record| {
            let subject = self.subjects.attempt(
                tenant,
                endpoint,
                gancho_core::subject::status_class(record.status as u16),
                &record.outcome,
                &record.event_id,
            );
            (subject, Bytes::from(record.encode_to_vec()))
        });
        let notice = Notice::of(&next);
        let side = match self.side_write(unit, delivery, &next).await {
            Ok(side) => side,
            Err(e) => {
                if let Some(delivery) = delivery {
                    keep(unit, delivery, attempted, record, next);
                }
                return Box::pin(self.nak(unit, &e)).await;
            }
        };
        writes.extend(side);
        if let Some(op) = self.operational(delivery, notice) {
            writes.push(op);
        }
        if let Err((e, record_left)) =
            keep_while(unit, self.store_with_record(record_write, writes)).await
        {
            if let Some(delivery) = delivery {
                // A record stored already is not kept: stored twice, it would read as two
                // attempts.
                let record = record.filter(|_| record_left);
                keep(unit, delivery, attempted, record, next);
            }
            return Box::pin(self.nak(unit, &e)).await;
        }
        emit::given_up_waiting(delivery, next.dead_kind().filter(|_| !attempted));
        if !unit.alone {
            // Acked with the rest of its batch.
            return Handled::Done;
        }
        if let Err(e) = unit.msg.ack().await {
            warn!(error = %e, "Cannot ack a delivery whose outcome is stored; it may be attempted again.");
        }
        Handled::Done
    }

    /// The write `next` needs beside the attempt's record (a retry, a deferral, a dead
    /// letter, a hold); for a 410, the endpoint is disabled first. `Err` when that cannot be
    /// stored.
    async fn side_write(
        &self,
        unit: Unit<'_>,
        delivery: Option<&Delivery>,
        next: &Next,
    ) -> Result<Option<(String, PublishMessage)>, gancho_store::StoreError> {
        Ok(match next {
            Next::Done => None,
            Next::Retry { delay } => {
                let delivery = delivery.expect("a retry has a decoded delivery");
                emit::RetryScheduled.emit();
                // Its wait for the retry begins now.
                let waiting = emit::going_to_wait(delivery, "retry", true);
                Some(self.retry_publish(unit.msg, &waiting, *delay))
            }
            Next::Defer { delay } => {
                let delivery = delivery.expect("a deferral has a decoded delivery");
                Some(self.retry_publish(unit.msg, delivery, *delay))
            }
            Next::Dead { kind, reason } => {
                Some(self.dead_publish(unit, delivery, *kind, reason.clone()))
            }
            Next::Hold => {
                let delivery = delivery.expect("a held delivery is decoded");
                Some(self.hold_publish(unit, delivery))
            }
            Next::Disable { reason } => {
                let delivery = delivery.expect("a 410 has a decoded delivery");
                // Boxed: rare, and the store's update would make every delivery's future
                // larger.
                Box::pin(self.store.update_endpoint(
                    &delivery.tenant,
                    &delivery.endpoint_id,
                    |ep| {
                        ep.disabled = true;
                        ep.disabled_reason = Some(reason.clone());
                        Ok(())
                    },
                ))
                .await?;
                emit::EndpointDisabled {
                    endpoint: &delivery.endpoint_id,
                    why: emit::Disabled::Gone,
                }
                .emit();
                Some(self.dead_publish(
                    unit,
                    Some(delivery),
                    DeadKind::EndpointGone,
                    reason.clone(),
                ))
            }
        })
    }

    /// [`Ctx::store_all`] with the attempt's record, which goes in the records' fast batch
    /// when there is one (beside the other writes), and is written alone when its batch does
    /// not confirm it.
    async fn store_with_record(
        &self,
        record: Option<(String, Bytes)>,
        mut writes: Vec<(String, PublishMessage)>,
    ) -> Result<(), (jetstream::context::PublishError, bool)> {
        let Some((subject, payload)) = record else {
            return self.store_all(writes).await;
        };
        let Some(batch) = &self.records else {
            writes.insert(0, (subject, PublishMessage::build().payload(payload)));
            return self.store_all(writes).await;
        };
        let in_batch = async {
            let sent = std::time::Instant::now();
            let stored = batch.write(subject.clone().into(), payload.clone()).await;
            if stored.is_ok() {
                self.pressure.stored();
                writes::stored_after("worker", sent);
            }
            stored
        };
        // With no other writes, `store_all` answers at once.
        let (in_batch, others) = futures::join!(in_batch, self.store_all(writes));
        if let Err(why) = in_batch {
            debug!(
                why = why.as_str(),
                "An attempt record was not confirmed in its batch; writing it alone."
            );
            metrics::counter!(names::RECORDS_ALONE, "why" => why.as_str()).increment(1);
            if let Err((e, _)) = self
                .store_all(vec![(subject, PublishMessage::build().payload(payload))])
                .await
            {
                return Err((e, true));
            }
        }
        others
    }

    /// Publishes every write and waits for its PubAck, re-sending the ones that fail (a
    /// JetStream leader election takes seconds) until [`WRITE_PATIENCE`] runs out, then
    /// fails with whether the attempt record is among the writes not stored. The delivery is
    /// then handed back with its outcome kept ([`super::recall`]), so the last resort sends
    /// the webhook again only when its message goes to another worker. Re-sends are safe:
    /// dead letters and immediate retries carry a `Nats-Msg-Id`, a scheduled retry replaces
    /// the schedule on its subject, and an attempt record sent twice is the same record
    /// twice.
    ///
    /// When JetStream has no room ([`refusal::Refusal::Full`]) an attempt record is left out
    /// (counted, and the delivery goes on: a full log must not stop delivery), and the other
    /// writes get [`FULL_PATIENCE`] before the delivery is handed back for [`FULL_NAK_DELAY`]:
    /// the deliveries that succeed meanwhile are what frees room.
    pub(super) async fn store_all(
        &self,
        mut pending: Vec<(String, PublishMessage)>,
    ) -> Result<(), (jetstream::context::PublishError, bool)> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let sends = pending.into_iter().map(|(subject, publish)| async move {
                writes::store(&self.js, "worker", subject.clone(), publish.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| (subject, publish, e))
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
                let record_left = pending.iter().any(|(s, _)| self.subjects.is_attempt(s));
                return Err((last_error, record_left));
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
    pub(super) fn operational(
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
        emit::Held.emit();
        let msg = unit.msg;
        // The message's stream and sequence: a held message delivered in place (no room for
        // a copy) may be held again, and the held stream counts its own sequences.
        let (stream, seq) = msg
            .info()
            .map(|i| (i.stream, i.stream_sequence))
            .unwrap_or(("", 0));
        // A held message (delivered in place) goes back where it was going, not to its
        // held subject.
        let target = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(gancho_core::subject::TARGET_HEADER))
            .map_or(msg.subject.as_str(), |t| t.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(gancho_core::subject::TARGET_HEADER, target);
        // A parked delivery carries when its wait began, which its message may not have yet
        // (and a traced one since when it waits, for its span).
        let bytes = match (delivery.waiting_since, delivery.trace.is_none()) {
            (Some(_), true) => Bytes::from(delivery.encode_to_vec()),
            (None, true) => unit.bytes(delivery),
            (_, false) => {
                Bytes::from(emit::going_to_wait(delivery, "paused", false).encode_to_vec())
            }
        };
        let publish = PublishMessage::build()
            .payload(bytes)
            .headers(headers)
            .message_id(format!("hold:{}:{stream}:{seq}", delivery.id));
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
        emit::DeadLettered { tenant, kind }.emit();
        gancho_store::writes::dead_letter(
            &self.subjects,
            gancho_store::writes::Dead {
                tenant,
                endpoint,
                kind: kind.as_str(),
                event_id: event,
                reason,
                subject: unit.msg.subject.to_string(),
                // Kept only when the message did not decode: the delivery says the rest.
                original: match delivery {
                    Some(_) => Bytes::new(),
                    None => unit.msg.payload.clone(),
                },
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
        // A full store is logged once by the pressure gauge, not once per delivery.
        let full = refusal::is_full(why);
        emit::HandedBack {
            why: (!full).then_some(why as &dyn std::fmt::Display),
            counted: unit.alone,
        }
        .emit();
        if unit.alone {
            let delay = if full { FULL_NAK_DELAY } else { NAK_DELAY };
            let _ = writes::hand_back(unit.msg, Some(delay)).await;
        }
        Handled::HandedBack
    }

    /// Hands back a delivery this worker cannot work on now (`why`, logged when not empty),
    /// to come back after `delay`. Alone, its message is nak'd; in a batch, it is scheduled
    /// again on its own (no attempt, no deferral counted), so the others' outcomes stand.
    pub(super) async fn hand_back(
        &self,
        unit: Unit<'_>,
        delivery: &Delivery,
        why: &str,
        delay: Duration,
    ) -> Handled {
        emit::HandedBack {
            why: (!why.is_empty()).then_some(&why as &dyn std::fmt::Display),
            counted: true,
        }
        .emit();
        if unit.alone {
            let _ = writes::hand_back(unit.msg, Some(delay)).await;
            return Handled::HandedBack;
        }
        Box::pin(self.finish(unit, Some(delivery), None, Next::Defer { delay })).await
    }
}
