//! One ordered delivery: the head of its key ([`crate::ordered`] decides when it may go).
//! It goes through its endpoint's gate and request slots as any delivery does; its outcome is
//! written (the attempt's record, a dead letter), and then its message in the ordered stream
//! is replaced (a retry: the same delivery with its attempts and a not-before time) or
//! removed. Until that removal the delivery stays its key's head: a crash after the receiver
//! took it sends it again, before the next, never after.

use super::attempt::Unsent;
use super::intake::{Refusal, Standing};
use super::outcome::{Next, Notice};
use super::Ctx;
use crate::emit::{self, Emit as _};
use crate::gate::{Admission, Turn};
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use gancho_core::policy::{self, DeadKind, Wait};
use gancho_proto::{Attempt, Delivery, Message as _};
use gancho_store::{writes, LiveEndpoint};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How soon a head that could not go is looked at again when nothing says when.
const AGAIN: Duration = Duration::from_millis(100);
/// How soon after a failed write or read.
const AFTER_ERROR: Duration = Duration::from_secs(1);

/// A key's head, as its lane hands it over.
pub(crate) struct Head<'a> {
    /// The ordered stream.
    pub stream: &'a jetstream::stream::Stream,
    /// Its message's sequence there.
    pub seq: u64,
    /// Its message's subject (its key's).
    pub subject: &'a str,
    /// How long its endpoint's gate has refused it (the circuit, a pause, the rate), when it
    /// has: its patience is counted from there, not from when it became the head.
    pub refused_for: Option<Duration>,
    /// Fires when the lane stops being this worker's (its lease lost, the partition moved).
    pub lost: &'a CancellationToken,
}

/// What became of a head.
#[derive(Debug, PartialEq)]
pub(crate) enum Resolved {
    /// Delivered or dead-lettered, and its message removed: the key's next may go.
    Done,
    /// Attempted and failed: its message is now `seq`, to be sent again at `not_before`.
    Retry { seq: u64, not_before: SystemTime },
    /// Not sent now: again after `after`. `refused` when its endpoint's gate refused it.
    Later { after: Duration, refused: bool },
    /// Its message is no longer in the stream.
    Gone,
}

const fn later(after: Duration) -> Resolved {
    Resolved::Later {
        after,
        refused: false,
    }
}

impl Ctx {
    /// Sends `head` once (or finishes it without a request) and writes what follows.
    pub(crate) async fn send_ordered(&self, head: Head<'_>) -> Resolved {
        let mut delivery = match self.read_head(&head).await {
            Ok(delivery) => delivery,
            Err(resolved) => return resolved,
        };
        loop {
            let (ep, revision) = match self.ordered_standing(&head, &delivery).await {
                Ok(standing) => standing,
                Err(resolved) => return resolved,
            };
            let gate = self.gates.of(&ep, revision);
            let permit = match gate.admit() {
                Admission::Go(permit) => permit,
                Admission::Defer { reason, after } => {
                    return self
                        .refused_ordered(&head, &delivery, &ep, reason, after)
                        .await
                }
                Admission::Queue(place) => {
                    let turn = tokio::select! {
                        turn = gate.wait_turn(&place) => turn,
                        () = head.lost.cancelled() => return later(AFTER_ERROR),
                    };
                    drop(place);
                    match turn {
                        Turn::Go(permit) => permit,
                        Turn::Defer { reason, after } => {
                            return self
                                .refused_ordered(&head, &delivery, &ep, reason, after)
                                .await
                        }
                        Turn::Again => continue,
                    }
                }
            };
            let attempt_no = delivery.attempts + 1;
            let sent = tokio::select! {
                sent = self.send_now(&delivery, ep, false) => sent,
                // A request cut short: the next owner sends it again, before the next one.
                () = head.lost.cancelled() => return later(AFTER_ERROR),
            };
            let sent = match sent {
                Ok(sent) => sent,
                Err(Unsent::Changed) => continue,
                Err(Unsent::Transform(reason)) => {
                    drop(permit);
                    let next = Next::Dead {
                        kind: DeadKind::Transform,
                        reason,
                    };
                    return self
                        .finish_ordered(&head, Some(&delivery), Bytes::new(), None, next)
                        .await;
                }
            };
            let (next, record) = self.judged(&gate, permit, &delivery, attempt_no, sent);
            delivery.attempts = attempt_no;
            return self
                .finish_ordered(&head, Some(&delivery), Bytes::new(), Some(record), next)
                .await;
        }
    }

    /// The head's delivery, read from the stream; `Err` with what became of the head when
    /// it is gone, cannot be read now, or does not decode (dead-lettered).
    async fn read_head(&self, head: &Head<'_>) -> Result<Delivery, Resolved> {
        let msg = match head.stream.direct_get(head.seq).await {
            Ok(msg) => msg,
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                return Err(Resolved::Gone)
            }
            Err(e) => {
                debug!(error = %e, "Cannot read an ordered delivery; trying again.");
                return Err(later(AFTER_ERROR));
            }
        };
        match Delivery::decode(msg.payload.clone()) {
            Ok(d) => Ok(d),
            Err(e) => {
                let next = Next::Dead {
                    kind: DeadKind::Undecodable,
                    reason: format!("delivery does not decode: {e}"),
                };
                Err(self
                    .finish_ordered(head, None, msg.payload, None, next)
                    .await)
            }
        }
    }

    /// The head's endpoint as the config stands, with the snapshot's revision; `Err` with
    /// what became of the head when it may not be sent (paused: it waits; disabled, deleted,
    /// invalid for its profile: finished).
    async fn ordered_standing(
        &self,
        head: &Head<'_>,
        delivery: &Delivery,
    ) -> Result<(std::sync::Arc<LiveEndpoint>, u64), Resolved> {
        let snapshot = self.live.load_full();
        let next = match self.standing(&snapshot, delivery) {
            Standing::Ready(ep) => return Ok((ep, snapshot.revision)),
            // Paused: it waits at the head of its key (no attempt, no patience spent).
            Standing::Not(Refusal::Finish(Next::Hold) | Refusal::NoSecrets) => {
                return Err(later(AFTER_ERROR))
            }
            Standing::Not(Refusal::Finish(next)) => next,
            Standing::Not(Refusal::Unknown) => {
                drop(snapshot);
                let found = self
                    .store
                    .get_endpoint(&delivery.tenant, &delivery.endpoint_id)
                    .await;
                if !matches!(found, Ok(None)) {
                    return Err(later(AFTER_ERROR));
                }
                Next::Dead {
                    kind: DeadKind::EndpointGone,
                    reason: "the endpoint was deleted before delivery".into(),
                }
            }
        };
        Err(self
            .finish_ordered(head, Some(delivery), Bytes::new(), None, next)
            .await)
    }

    /// A head its endpoint's gate cannot take now: it waits at the head of its key (its
    /// message stays where it is), or is dead-lettered once refused for longer than its
    /// patience.
    async fn refused_ordered(
        &self,
        head: &Head<'_>,
        delivery: &Delivery,
        ep: &LiveEndpoint,
        reason: Wait,
        after: Duration,
    ) -> Resolved {
        let patience = ep.schedule.delays().iter().sum();
        if policy::outlived(head.refused_for, patience, self.defer_grace) {
            let next = self.outlived_dead_letter(reason.as_str());
            return self
                .finish_ordered(head, Some(delivery), Bytes::new(), None, next)
                .await;
        }
        emit::Deferred {
            tenant: &delivery.tenant,
            endpoint: ep.config.id.as_str(),
            reason,
            delay: Some(after),
        }
        .emit();
        Resolved::Later {
            after: after.clamp(AGAIN, Duration::from_secs(5)),
            refused: true,
        }
    }

    /// Writes what follows a head (its attempt's record, a dead letter, a retry's new
    /// message), then removes its message. A write that fails leaves the head as it was:
    /// sent again later, before the next.
    async fn finish_ordered(
        &self,
        head: &Head<'_>,
        delivery: Option<&Delivery>,
        original: Bytes,
        record: Option<Attempt>,
        next: Next,
    ) -> Resolved {
        let mut writes = Vec::with_capacity(3);
        if let Some(record) = &record {
            let publish = PublishMessage::build().payload(Bytes::from(record.encode_to_vec()));
            let subject = self.subjects.attempt(
                &record.tenant,
                &record.endpoint_id,
                gancho_core::subject::status_class(record.status as u16),
                &record.outcome,
                &record.event_id,
            );
            writes.push((subject, publish));
        }
        let notice = Notice::of(&next);
        // A traced head dead-lettered while it waited (no attempt): its wait ends with it.
        let gave_up = next.dead_kind().filter(|_| record.is_none());
        let mut retry = None;
        match next {
            Next::Done => {}
            Next::Retry { delay } | Next::Defer { delay } => {
                emit::RetryScheduled.emit();
                retry = Some(delay);
            }
            Next::Hold => return later(AFTER_ERROR),
            Next::Dead { kind, reason } => {
                writes.push(self.ordered_dead_letter(head, delivery, original, kind, reason));
            }
            Next::Disable { reason } => {
                let delivery = delivery.expect("a 410 has a decoded delivery");
                let disabled = self
                    .store
                    .update_endpoint(&delivery.tenant, &delivery.endpoint_id, |ep| {
                        ep.disabled = true;
                        ep.disabled_reason = Some(reason.clone());
                        Ok(())
                    })
                    .await;
                if disabled.is_err() {
                    return later(AFTER_ERROR);
                }
                emit::EndpointDisabled {
                    endpoint: &delivery.endpoint_id,
                    why: emit::Disabled::Gone,
                }
                .emit();
                writes.push(self.ordered_dead_letter(
                    head,
                    Some(delivery),
                    Bytes::new(),
                    DeadKind::EndpointGone,
                    reason,
                ));
            }
        }
        if let Some(op) = self.operational(delivery, notice) {
            writes.push(op);
        }
        if self.store_all(writes).await.is_err() {
            return later(AFTER_ERROR);
        }
        emit::given_up_waiting(delivery, gave_up);
        let resolved = match (retry, delivery) {
            (Some(delay), Some(delivery)) => {
                let not_before = SystemTime::now() + delay;
                match self.republish(head, delivery, not_before).await {
                    Some(seq) => Resolved::Retry { seq, not_before },
                    None => return later(AFTER_ERROR),
                }
            }
            _ => Resolved::Done,
        };
        if !remove(&self.js, &self.subjects.ordered_stream(), head).await {
            return later(AFTER_ERROR);
        }
        resolved
    }

    /// The delivery again on its key's subject, with its attempts and when it may go: the
    /// same place in its key (its event's sequence), a new message.
    async fn republish(
        &self,
        head: &Head<'_>,
        delivery: &Delivery,
        not_before: SystemTime,
    ) -> Option<u64> {
        let mut headers = HeaderMap::new();
        headers.insert(
            gancho_core::subject::EVENT_SEQUENCE_HEADER,
            delivery.event_sequence.to_string().as_str(),
        );
        let at = not_before
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        headers.insert(
            gancho_core::subject::NOT_BEFORE_HEADER,
            at.to_string().as_str(),
        );
        // A traced delivery's wait for its retry begins now.
        let payload = crate::emit::going_to_wait(delivery, "retry", true).encode_to_vec();
        let publish = PublishMessage::build()
            .payload(Bytes::from(payload))
            .headers(headers)
            .message_id(format!(
                "ordered:{}:{}:{}",
                delivery.tenant, delivery.id, delivery.attempts
            ));
        match writes::store(&self.js, "worker", head.subject.to_owned(), publish).await {
            Ok(ack) => Some(ack.sequence),
            Err(e) => {
                debug!(error = %e, "Cannot store an ordered delivery's retry; trying again.");
                None
            }
        }
    }

    fn ordered_dead_letter(
        &self,
        head: &Head<'_>,
        delivery: Option<&Delivery>,
        original: Bytes,
        kind: DeadKind,
        reason: String,
    ) -> (String, PublishMessage) {
        let (tenant, endpoint) = self
            .subjects
            .parse_ordered(head.subject)
            .map_or(("_unknown", "_unknown"), |(t, e, _)| (t, e));
        emit::DeadLettered { tenant, kind }.emit();
        writes::dead_letter(
            &self.subjects,
            writes::Dead {
                tenant,
                endpoint,
                kind: kind.as_str(),
                event_id: delivery.map(|d| d.event_id.as_str()),
                reason: format!(
                    "{reason}; the endpoint orders its deliveries, and the later ones of this key went on without it"
                ),
                subject: head.subject.to_owned(),
                original,
                delivery: delivery.cloned(),
                message_id: delivery.map(|d| format!("dead:{tenant}:{}", d.id)),
            },
        )
    }
}

/// Removes a head's message, trying again while the lane is this worker's. `false` when it
/// could not: the head stays, and is sent again.
async fn remove(js: &jetstream::Context, stream: &str, head: &Head<'_>) -> bool {
    let mut backoff = Duration::from_millis(50);
    loop {
        match writes::remove(js, stream, head.seq).await {
            Ok(()) => return true,
            Err(e) => {
                debug!(error = %e, "Cannot remove a finished ordered delivery; trying again.")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = head.lost.cancelled() => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
