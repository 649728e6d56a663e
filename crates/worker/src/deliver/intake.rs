//! The intake stage: a delivery message (alone or a batch) is decoded, its endpoint looked
//! up as the config stands, and the endpoint's gate admits it, queues it or refuses it for
//! now; admitted, it goes to the attempt stage.

use super::outcome::Next;
use super::recall::{Arrival, Ending, Left};
use super::{keep_while, with_progress, Ctx, Unit, FULL_NAK_DELAY, NAK_DELAY};
use crate::emit::{self, Emit as _};
use crate::gate::{Admission, Turn};
use async_nats::jetstream;
use futures::StreamExt as _;
use gancho_core::policy::DeadKind;
use gancho_proto::{Delivery, DeliveryBatch, Message as _};
use gancho_store::consume::Handled;
use gancho_store::{writes, LiveEndpoint, Snapshot};
use std::sync::Arc;
use tracing::warn;

/// Whether a delivery may be sent to its endpoint as the config stands.
pub(super) enum Standing {
    Ready(Arc<LiveEndpoint>),
    Not(Refusal),
}

/// Why it may not.
pub(super) enum Refusal {
    /// Finished without an attempt: dead-lettered (disabled, invalid for its profile) or
    /// held (paused).
    Finish(Next),
    /// Not in this worker's snapshot: deleted, or too new for it.
    Unknown,
    /// This worker cannot open the endpoint's secrets.
    NoSecrets,
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
        // Only the deliveries stream's messages are remembered (a held one delivered in place
        // counts the held stream's sequences).
        let seq = msg
            .info()
            .ok()
            .filter(|i| i.stream == self.deliveries_stream)
            .map(|i| i.stream_sequence);
        let left = match seq.map(|seq| self.recall.arrive(seq, &msg)) {
            None => Left::default(),
            Some(Arrival::New(left)) => left,
            Some(Arrival::Copy) => {
                emit::CameBack(emit::Copy::InHand).emit();
                return Handled::Done;
            }
            Some(Arrival::Finished) => {
                emit::CameBack(emit::Copy::Finished).emit();
                if let Err(e) = msg.ack().await {
                    warn!(error = %e, "Cannot ack a copy of a finished delivery; it may come back again.");
                }
                return Handled::Done;
            }
        };
        let left = std::sync::Mutex::new(left);
        let handled = self.handle_message(&msg, &left, leaving).await;
        let Some(seq) = seq else {
            return handled;
        };
        let ending = match handled {
            Handled::Done => Ending::Finished,
            Handled::HandedBack => {
                Ending::HandedBack(left.into_inner().unwrap_or_else(|e| e.into_inner()))
            }
        };
        // Copies that came meanwhile share the first one's answer: the consumer knows one
        // message, whichever delivery of it is answered.
        for copy in self.recall.leave(seq, ending) {
            let _ = match handled {
                Handled::Done => copy.ack().await.map_err(|e| e.to_string()),
                Handled::HandedBack => writes::hand_back(&copy, Some(NAK_DELAY))
                    .await
                    .map_err(|e| e.to_string()),
            };
        }
        handled
    }

    /// [`Ctx::handle`] for a message that is not a copy of one in hand.
    async fn handle_message(
        &self,
        msg: &jetstream::Message,
        left: &std::sync::Mutex<Left>,
        leaving: tokio_util::sync::CancellationToken,
    ) -> Handled {
        let whole = Unit {
            msg,
            alone: true,
            left,
        };
        let batch = msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get(gancho_core::subject::BATCH_HEADER).is_some());
        if batch {
            return Box::pin(self.handle_batch(whole, leaving)).await;
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
                Box::pin(self.finish(whole, None, None, next)).await
            }
        }
    }

    /// Sends each delivery of a batch message as if it were alone, at once, and acks the
    /// message when every outcome is stored. When one cannot be stored, the message is handed
    /// back whole, and this worker remembers which outcomes are stored (and keeps the ones it
    /// could not store) so that it sends only the others when the message comes back
    /// ([`super::recall`]).
    async fn handle_batch(
        &self,
        whole: Unit<'_>,
        leaving: tokio_util::sync::CancellationToken,
    ) -> Handled {
        let msg = whole.msg;
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
        let unit = Unit {
            alone: false,
            ..whole
        };
        let stored =
            std::mem::take(&mut whole.left.lock().unwrap_or_else(|e| e.into_inner()).stored);
        let each = endpoint_ids
            .into_iter()
            .filter(|endpoint_id| !stored.contains(endpoint_id))
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
        // one is waiting for. Polled as they wake: `join_all` polls every member whenever
        // any one of them wakes (it does so below 31 futures), and each member wakes several
        // times (its turn, its request slot, its answer, its PubAck).
        let handled: Vec<(String, Handled)> = with_progress(
            msg,
            each.collect::<futures::stream::FuturesUnordered<_>>()
                .collect::<Vec<_>>(),
        )
        .await;
        let mut all_done = true;
        whole.left.lock().unwrap_or_else(|e| e.into_inner()).stored = stored;
        for (endpoint_id, handled) in handled {
            match handled {
                Handled::Done => Left::stored(whole.left, &endpoint_id),
                Handled::HandedBack => all_done = false,
            }
        }
        if all_done {
            if let Err(e) = msg.ack().await {
                warn!(error = %e, "Cannot ack deliveries whose outcomes are stored; they may be attempted again.");
            }
            return Handled::Done;
        }
        let delay = if self.pressure.refusing() {
            FULL_NAK_DELAY
        } else {
            NAK_DELAY
        };
        emit::HandedBack {
            why: None,
            counted: true,
        }
        .emit();
        let _ = writes::hand_back(msg, Some(delay)).await;
        Handled::HandedBack
    }

    /// One delivery, from its endpoint's config to its stored outcome. The endpoint is
    /// looked up when the delivery arrives, again whenever its config changes while the
    /// delivery waits in the endpoint's queue ([`Turn::Again`]), and once more when its
    /// request starts ([`Ctx::attempt_and_finish`]): a change the worker's snapshot has is
    /// in force for every request that starts after it, and a deleted, disabled or paused
    /// endpoint gets nothing more.
    ///
    /// What follows the wait (the request and its writes, a deferral, a refusal) is boxed:
    /// most deliveries in hand wait for their endpoint's turn, and an async fn holds room
    /// for its largest step all along. Unboxed, each delivery in hand held about 9 KB (its
    /// task) for a request of 5 KB it had not started; boxed, about 5 KB, and the request's
    /// room exists only while it runs (RELIABILITY.md, "What a backlog leaves").
    async fn handle_delivery(
        &self,
        unit: Unit<'_>,
        mut delivery: Delivery,
        leaving: tokio_util::sync::CancellationToken,
    ) -> Handled {
        if let Some(decided) = Left::decided(unit.left, &delivery.endpoint_id) {
            // Sent before, its outcome not stored: stored now, not sent again.
            emit::CameBack(emit::Copy::OutcomesKept).emit();
            delivery.attempts = decided.attempts;
            return Box::pin(self.finish(unit, Some(&delivery), decided.record, decided.next))
                .await;
        }
        loop {
            let snapshot = self.live.load_full();
            let ep = match self.standing(&snapshot, &delivery) {
                Standing::Ready(ep) => ep,
                Standing::Not(why) => return Box::pin(self.refuse(unit, &delivery, why)).await,
            };
            let revision = snapshot.revision;
            drop(snapshot);
            let gate = self.gates.of(&ep, revision);
            let permit = match gate.admit_from(self.subjects.is_bulk(&unit.msg.subject)) {
                Admission::Go(permit) => permit,
                Admission::Defer { reason, after } => {
                    return Box::pin(self.defer(unit, delivery, &ep, &gate, reason, after)).await
                }
                Admission::Queue(place) => {
                    // Waits holding only its intake slot; the worker's request slots and this
                    // endpoint's in-flight slots go to deliveries that can be sent now.
                    crate::emit::wait_begins(&mut delivery, "queued", false);
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
                            return Box::pin(self.defer(unit, delivery, &ep, &gate, reason, after))
                                .await
                        }
                        Turn::Again => continue,
                    }
                }
            };
            match Box::pin(self.attempt_and_finish(unit, delivery, ep, &gate, permit)).await {
                Ok(handled) => return handled,
                // The endpoint changed between its turn and its request: look again.
                Err(again) => delivery = again,
            }
        }
    }

    /// Whether `delivery` may be sent to its endpoint as `snapshot` has it.
    pub(super) fn standing(&self, snapshot: &Snapshot, delivery: &Delivery) -> Standing {
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
}
