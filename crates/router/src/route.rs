//! Routing one event: check, match, fan out, ack.

use crate::{FAN_OUT_WINDOW, PROGRESS_EVERY};
use async_nats::jetstream::{self, message::PublishMessage as Publish};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use gancho_core::id::validate_tenant;
use gancho_core::Subjects;
use gancho_proto::{Delivery, DeliveryBatch, Event, Message as _};
use gancho_store::consume::{with_progress, Handled};
use gancho_store::Live;
use gancho_telemetry::kept::Kept;
use gancho_telemetry::names;
use gancho_telemetry::traces::{self, KeyValue};
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

// Every event updates these: their handles are kept (by the first 16 tenant labels), not
// looked up each time.
static RECEIVED: Kept<metrics::Counter, { 16 * 2 }> = Kept::new();
static TENANT_WAIT: Kept<metrics::Histogram, 16> = Kept::new();
static ROUTED: Kept<metrics::Counter, 2> = Kept::new();
static CREATED: Kept<metrics::Counter, 16> = Kept::new();
static BULK: Kept<metrics::Counter, 16> = Kept::new();

pub(crate) struct Ctx {
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub live: Arc<Live>,
    pub partitions: u32,
    /// The router's publish slots ([`crate::PUBLISH_SLOTS`]), shared by every event.
    pub publish_slots: Semaphore,
    /// Held (before a publish slot) by the deliveries going to the bulk lanes
    /// ([`crate::BULK_PUBLISH_SLOTS`]).
    pub bulk_slots: Semaphore,
    /// The bytes of the delivery messages being published (a quarter of
    /// [`crate::RouterConfig::memory`]): held from when a message is built until its PubAck.
    pub publishing: gancho_store::budget::Budget,
    /// Room left in the deliveries stream ([`crate::room`]).
    pub room: Arc<crate::room::Room>,
    /// Which tenants have a backlog lately.
    pub backlogs: Arc<crate::backlog::Backlogs>,
    /// What the tenants with a backlog have in the bulk lanes ([`crate::pace`]).
    pub pace: Arc<crate::pace::Pace>,
    /// What each tenant's jq filters may spend of this router ([`crate::spend`]).
    pub spend: crate::spend::Spend,
}

/// Why an event cannot be delivered. `kind()` is the metric label and the dead letter's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    Undecodable(String),
    NotJson,
    SubjectMismatch(String),
    Invalid(String),
    /// The payload fails its event type's JSON Schema (from the catalog).
    Schema(String),
}

impl Invalid {
    pub fn kind(&self) -> &'static str {
        use gancho_core::policy::DeadKind;
        match self {
            Invalid::Undecodable(_) => DeadKind::Undecodable,
            Invalid::NotJson => DeadKind::NotJson,
            Invalid::SubjectMismatch(_) => DeadKind::SubjectMismatch,
            Invalid::Invalid(_) => DeadKind::Invalid,
            Invalid::Schema(_) => DeadKind::Schema,
        }
        .as_str()
    }

    pub fn reason(&self) -> String {
        match self {
            Invalid::Undecodable(e) => format!("event does not decode as gancho.v1.Event: {e}"),
            Invalid::NotJson => "event payload is not a JSON document".into(),
            Invalid::SubjectMismatch(e) => e.clone(),
            Invalid::Invalid(e) | Invalid::Schema(e) => e.clone(),
        }
    }
}

/// Decodes and checks an event read from `subject`.
/// From `Bytes`, the event's payload is a view of the message, not a copy of it.
pub fn check_event(
    subjects: &Subjects,
    subject: &str,
    bytes: impl bytes::Buf,
) -> Result<Event, Invalid> {
    let event = Event::decode(bytes).map_err(|e| Invalid::Undecodable(e.to_string()))?;
    let Some((tenant, ty)) = subjects.parse_event(subject) else {
        return Err(Invalid::SubjectMismatch(format!(
            "subject {subject:?} is not gancho.events.<tenant>.<type>"
        )));
    };
    if event.tenant != tenant || event.r#type != ty {
        return Err(Invalid::SubjectMismatch(format!(
            "event says tenant {:?} type {:?} but was published on {subject:?}",
            event.tenant, event.r#type
        )));
    }
    use gancho_core::event::{check, Field, Source};
    check(
        Source::Nats,
        &event.id,
        &event.tenant,
        &event.r#type,
        &event.payload,
    )
    .map_err(|broken| match broken.field {
        Field::Data => Invalid::NotJson,
        _ => Invalid::Invalid(broken.why),
    })?;
    Ok(event)
}

/// The routing span of an event (traces on), a child of the `traceparent` its message
/// carries, or the first span of a new trace. A span left unended (the event handed back or
/// refused) is dropped unexported.
fn route_span(
    msg: &jetstream::Message,
    event: &gancho_proto::Event,
    began: std::time::SystemTime,
) -> Option<traces::Started> {
    if !traces::on() {
        return None;
    }
    let parent = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(traces::TRACEPARENT))
        .and_then(|v| traces::parse(v.as_str()));
    traces::SpanStart {
        name: "gancho route",
        kind: traces::Kind::Consumer,
        parent: parent.as_ref(),
        start: began,
        attributes: vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", msg.subject.to_string()),
            KeyValue::new("gancho.tenant", event.tenant.clone()),
            KeyValue::new("gancho.event.id", event.id.clone()),
            KeyValue::new("gancho.event.type", event.r#type.clone()),
        ],
        links: Vec::new(),
    }
    .start()
}

/// The attribute of an operational event naming the endpoint it is about.
pub const OPERATIONAL_ENDPOINT: &str = "endpoint_id";

/// Where a message of deliveries goes.
enum Lane {
    /// The partition (or its bulk lane), for a worker to pull.
    Partition,
    /// A paused endpoint's held subject (one delivery).
    Held,
    /// An ordered endpoint's key subject (one delivery), with the key's hash.
    Ordered(String),
}

impl Ctx {
    #[allow(
        clippy::too_many_lines,
        reason = "an event's routing read top to bottom: decode, check, match, fan out, ack; to be split with the apply stage"
    )]
    pub(crate) async fn handle(&self, msg: jetstream::Message) -> Handled {
        let began = std::time::SystemTime::now();
        // Counted once per event, not again when it comes back after a nak.
        if msg.info().is_ok_and(|i| i.delivered == 1) {
            let http = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(gancho_core::subject::INGEST_HEADER))
                .is_some();
            let tenant = self
                .subjects
                .parse_event(&msg.subject)
                .map_or("", |(t, _)| t);
            let (slot, label) = gancho_telemetry::tenant_slot(tenant);
            RECEIVED.with(
                slot * 2 + usize::from(http),
                || {
                    metrics::counter!(names::EVENTS_RECEIVED,
                        "path" => if http { "http" } else { "nats" }, "tenant" => label)
                },
                |c| c.increment(1),
            );
        }
        let subject = msg.subject.as_str();
        let event = match check_event(&self.subjects, subject, msg.payload.clone()) {
            Ok(ev) => ev,
            Err(invalid) => return self.dead_letter(&msg, invalid).await,
        };
        if let Err(reason) =
            self.live
                .load()
                .check_payload(&event.tenant, &event.r#type, &event.payload)
        {
            return self.dead_letter(&msg, Invalid::Schema(reason)).await;
        }
        let (published, pending, event_sequence) = msg
            .info()
            .map(|i| (i.published, i.pending, i.stream_sequence))
            .unwrap_or_else(|_| (OffsetDateTime::now_utc(), 0, 0));
        let (slot, label) = gancho_telemetry::tenant_slot(&event.tenant);
        let waited = (OffsetDateTime::now_utc() - published)
            .as_seconds_f64()
            .max(0.0);
        TENANT_WAIT.with(
            slot,
            || metrics::histogram!(names::TENANT_WAIT, "tenant" => label),
            |h| h.record(waited),
        );
        let bulk = self.backlogs.bulk(&event.tenant, pending);
        let occurred_at = event
            .occurred_at
            .or_else(|| Some(gancho_proto::timestamp(published)));
        let mut span = route_span(&msg, &event, began);
        let template = Delivery {
            trace: span.as_ref().map(|s| {
                Box::new(gancho_proto::Trace {
                    parent: traces::traceparent(&s.context()),
                    ..Default::default()
                })
            }),
            id: String::new(),
            event_id: event.id.clone(),
            tenant: event.tenant.clone(),
            endpoint_id: String::new(),
            r#type: event.r#type.clone(),
            occurred_at,
            payload: event.payload.clone(),
            attributes: event.attributes.clone(),
            attempts: 0,
            created_at: Some(gancho_proto::timestamp(OffsetDateTime::now_utc())),
            deferrals: 0,
            channels: event.channels.clone(),
            event_sequence,
            waiting_since: None,
        };

        // Fan out through a window: at most FAN_OUT_WINDOW deliveries of this event exist at
        // once (built, sent, awaiting their PubAck), and each holds one of the router's
        // publish slots from before it is built until its PubAck is in. Every slot is held by
        // a future that is being polled toward its PubAck (or its timeout), never by one
        // parked behind another wait, so slots always come back: no fan-out and no
        // concurrency setting can deadlock, and memory is bounded by the slots, not by the
        // fan-out. A large fan-out keeps the event ours with progress acks.
        let snapshot = self.live.load_full();
        let list = snapshot.endpoints(&event.tenant);
        // By index: closures over references trip the compiler's lifetime inference for
        // `Send` futures (rust-lang/rust#102211).
        // gancho's own events about an endpoint never go to that endpoint.
        let about = event
            .r#type
            .starts_with(gancho_core::matching::RESERVED_PREFIX)
            .then(|| event.attributes.get(OPERATIONAL_ENDPOINT))
            .flatten();
        let mut hits = Vec::new();
        snapshot.matching(&event.tenant, &event.r#type, &event.channels, &mut hits);
        // In the tenant's list order (sorted by id), not the index's, which may differ from
        // one process to the next: a fan-out redone by another router must cut the same
        // batches to get the same message ids.
        hits.sort_unstable();
        // The endpoints' jq filters, after the type and channel match.
        if hits
            .iter()
            .any(|&i| list[i as usize].config.filter.is_some())
        {
            if let Err(wait) = self.spend.may_start(&event.tenant) {
                // Its filters have spent the tenant's share of this router: the event waits
                // in its consumer, the other tenants' go on.
                metrics::counter!(names::FILTER_WAITS, "tenant" => label).increment(1);
                if let Err(e) = gancho_store::writes::hand_back(&msg, Some(wait)).await {
                    warn!(error = %e, "Cannot hand an event back; it will come again after the ack wait.");
                }
                return Handled::HandedBack;
            }
            let mut filtering = gancho_store::programs::Filtering::new(
                "router",
                gancho_store::programs::EventParts {
                    id: &event.id,
                    event_type: &event.r#type,
                    occurred_at: occurred_at
                        .as_ref()
                        .and_then(gancho_proto::to_datetime)
                        .unwrap_or(published),
                    payload: &event.payload,
                    channels: &event.channels,
                },
            );
            hits.retain(|&i| filtering.passes(&list[i as usize]));
            self.spend.spent(&event.tenant, filtering.spent());
        }
        // One message per partition (at most BATCH_MAX deliveries each) rather than one per
        // endpoint: the JetStream write, the worker's pull and its ack are shared. A paused
        // endpoint's delivery goes to its held subject on its own.
        // An ordered endpoint's delivery waits on its key's subject of the ordered stream
        // (paused or not: its partition's owner keeps it until its turn).
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.partitions as usize];
        let mut sends: Vec<(u32, Vec<usize>, Lane)> = Vec::new();
        for i in hits.into_iter().map(|i| i as usize) {
            let ep = &list[i].config;
            if ep.disabled || about.is_some_and(|a| a.as_str() == ep.id.as_str()) {
                continue;
            }
            let p = gancho_core::subject::partition(&event.tenant, ep.id.as_str(), self.partitions);
            if let Some(key) = ep.ordering().key_of(&event.payload) {
                sends.push((p, vec![i], Lane::Ordered(key)));
            } else if ep.paused {
                sends.push((p, vec![i], Lane::Held));
            } else {
                groups[p as usize].push(i);
            }
        }
        for (p, group) in (0..).zip(groups) {
            sends.extend(
                group
                    .chunks(crate::BATCH_MAX)
                    .map(|c| (p, c.to_vec(), Lane::Partition)),
            );
        }
        let fan_out = futures::stream::iter(sends)
            .map(|(partition, members, lane)| {
                let ids: Vec<&str> = members
                    .iter()
                    .map(|&i| list[i].config.id.as_str())
                    .collect();
                self.publish_deliveries(&template, partition, ids, lane, bulk)
            })
            .buffer_unordered(FAN_OUT_WINDOW)
            .try_fold(0u64, |n, k| std::future::ready(Ok(n + k)));
        let created = match with_progress(&msg, PROGRESS_EVERY, fan_out).await {
            Ok(created) => created,
            Err(e) => {
                if gancho_store::refusal::is_full(&e) {
                    // Logged once by the room's pressure, not once per event.
                    let pause = self.room.refused(&e.to_string());
                    return crate::nak_after(&msg, pause).await;
                }
                // Every event in hand fails at once when the store stops taking writes.
                static LINES: gancho_telemetry::EverySecond = gancho_telemetry::EverySecond::new();
                if let Some(suppressed) = LINES.allow() {
                    warn!(event = %event.id, error = %e, suppressed, "A delivery was not stored; the event will be routed again.");
                }
                return crate::nak(&msg).await;
            }
        };
        drop(snapshot);
        if let Err(e) = msg.ack().await {
            // The deliveries are durable; a redelivered event only re-publishes duplicates
            // that JetStream drops within its de-duplication window.
            warn!(event = %event.id, error = %e, "Cannot ack an event after routing it.");
        }
        if let Some(mut span) = span.take() {
            span.set(vec![KeyValue::new("gancho.deliveries", created as i64)]);
            span.end(None);
        }
        let outcome = if created == 0 { "unmatched" } else { "routed" };
        ROUTED.with(
            usize::from(created == 0),
            || metrics::counter!(names::ROUTER_EVENTS, "outcome" => outcome),
            |c| c.increment(1),
        );
        CREATED.with(
            slot,
            || metrics::counter!(names::ROUTER_DELIVERIES_CREATED, "tenant" => label),
            |c| c.increment(created),
        );
        if bulk {
            BULK.with(
                slot,
                || metrics::counter!(names::ROUTER_BULK, "tenant" => label),
                |c| c.increment(created),
            );
        }
        debug!(event = %event.id, deliveries = created, "Event routed.");
        Handled::Done
    }

    /// Builds, publishes and awaits the PubAck of the deliveries of `template`'s event to
    /// `endpoints` (all of `partition`), holding a publish slot from before the message exists
    /// until its PubAck is in; returns how many deliveries it stored. One endpoint gets a
    /// `Delivery`, several a `DeliveryBatch`. A paused endpoint's delivery goes straight to
    /// its held subject, remembering the partition (or bulk lane) it belongs to.
    #[allow(
        clippy::too_many_lines,
        reason = "building, publishing and awaiting a partition's deliveries share the publish slot held across them"
    )]
    async fn publish_deliveries(
        &self,
        template: &Delivery,
        partition: u32,
        endpoints: Vec<&str>,
        lane: Lane,
        bulk: bool,
    ) -> Result<u64, async_nats::jetstream::context::PublishError> {
        // A tenant with a backlog has few publishes in flight: the stream stores writes in
        // the order they come, and its queue would stand in front of everyone's.
        let _bulk = match bulk {
            true => Some(
                self.bulk_slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed"),
            ),
            false => None,
        };
        let _slot = self
            .publish_slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        // Memory too, before the message is built: what is being published stays within its
        // share of the budget (a large payload is copied into each partition's message). A
        // slot waiting here holds no bytes, and the bytes held are each awaiting a PubAck, so
        // they always come back.
        let size = template.encoded_len() + endpoints.iter().map(|e| e.len() + 8).sum::<usize>();
        let _bytes = self.publishing.hold(size).await;
        let count = endpoints.len() as u64;
        let target = match bulk {
            true => self.subjects.delivery_bulk(partition, &template.tenant),
            false => self.subjects.delivery(partition),
        };
        let mut headers = HeaderMap::new();
        // The message id makes a fan-out redone after a crash a no-op: the same event and
        // snapshot give the same messages. A batch's id names its first endpoint and its size,
        // so a redo whose snapshot changed meanwhile can only repeat deliveries, never skip one.
        let (bytes, message_id) = if let [endpoint_id] = endpoints[..] {
            let delivery = Delivery {
                id: gancho_core::subject::delivery_id(&template.event_id, endpoint_id),
                endpoint_id: endpoint_id.to_owned(),
                ..template.clone()
            };
            let id = gancho_core::subject::delivery_message_id(
                &template.tenant,
                &template.event_id,
                endpoint_id,
                None,
            );
            (Bytes::from(delivery.encode_to_vec()), id)
        } else {
            let id = gancho_core::subject::delivery_message_id(
                &template.tenant,
                &template.event_id,
                endpoints[0],
                Some(endpoints.len()),
            );
            headers.insert(
                gancho_core::subject::BATCH_HEADER,
                endpoints.len().to_string().as_str(),
            );
            let batch = DeliveryBatch {
                template: Some(template.clone()),
                endpoint_ids: endpoints.iter().map(|&e| e.to_owned()).collect(),
            };
            (Bytes::from(batch.encode_to_vec()), id)
        };
        // Room first: no delivery is published past the high-water mark.
        let size = bytes.len() as u64 + 128;
        self.room.wait_for(size).await;
        let subject = match lane {
            Lane::Partition => target,
            Lane::Held => {
                metrics::counter!(names::DELIVERY_HELD).increment(1);
                headers.insert(gancho_core::subject::TARGET_HEADER, target.as_str());
                self.subjects.held(&template.tenant, endpoints[0])
            }
            Lane::Ordered(key) => {
                headers.insert(
                    gancho_core::subject::EVENT_SEQUENCE_HEADER,
                    template.event_sequence.to_string().as_str(),
                );
                self.subjects
                    .ordered(partition, &template.tenant, endpoints[0], &key)
            }
        };
        // Headers first: `headers()` replaces the whole map, message id included (the held
        // deliveries of paused endpoints went without one that way).
        let publish = Publish::build()
            .payload(bytes)
            .headers(headers)
            .message_id(message_id);
        let stored = gancho_store::writes::store(&self.js, "router", subject, publish).await;
        self.room.release(size);
        match stored {
            Ok(_) => {
                self.room.stored();
                if bulk {
                    self.pace.published(&template.tenant);
                }
                Ok(count)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the event to `GANCHO_DEAD` with its reason, then acks it.
    async fn dead_letter(&self, msg: &jetstream::Message, invalid: Invalid) -> Handled {
        let tenant = self
            .subjects
            .parse_event(&msg.subject)
            .map(|(t, _)| t)
            .filter(|t| validate_tenant(t).is_ok())
            .unwrap_or(gancho_core::subject::UNKNOWN_TENANT_TOKEN);
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        // The event's id when it decodes at all, so the event can be looked up by it.
        let event_id = Event::decode(&msg.payload[..])
            .ok()
            .map(|e| e.id)
            .filter(|id| !id.is_empty());
        let (subject, publish) = gancho_store::writes::dead_letter(
            &self.subjects,
            gancho_store::writes::Dead {
                tenant,
                endpoint: gancho_core::subject::DEAD_EVENT_TOKEN,
                kind: invalid.kind(),
                event_id: event_id.as_deref(),
                reason: invalid.reason(),
                subject: msg.subject.to_string(),
                original: msg.payload.clone(),
                delivery: None,
                message_id: Some(format!("event-seq:{seq}")),
            },
        );
        let stored = gancho_store::writes::store(&self.js, "router", subject, publish).await;
        if stored.is_err() {
            warn!(
                seq,
                "Cannot dead-letter an invalid event; it will be retried."
            );
            return crate::nak(msg).await;
        }
        warn!(seq, kind = invalid.kind(), reason = %invalid.reason(), "Event dead-lettered.");
        metrics::counter!(names::ROUTER_EVENTS, "outcome" => "invalid").increment(1);
        metrics::counter!(names::ROUTER_EVENTS_INVALID, "reason" => invalid.kind(),
            "tenant" => gancho_telemetry::tenant_label(tenant))
        .increment(1);
        let _ = msg.ack().await;
        Handled::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gancho_proto::Timestamp;

    fn event(tenant: &str, ty: &str, payload: &[u8]) -> Vec<u8> {
        Event {
            id: "evt_1".into(),
            tenant: tenant.into(),
            r#type: ty.into(),
            occurred_at: Some(Timestamp::default()),
            payload: payload.to_vec().into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn accepts_a_good_event() {
        let s = Subjects::default();
        let ev = check_event(
            &s,
            "gancho.events.acme.invoice.paid",
            &event("acme", "invoice.paid", b"{}")[..],
        )
        .unwrap();
        assert_eq!(ev.r#type, "invoice.paid");
    }

    #[test]
    fn rejects_with_a_reason() {
        let s = Subjects::default();
        let subj = "gancho.events.acme.invoice.paid";
        assert!(matches!(
            check_event(&s, subj, &b"\xff\xfe garbage"[..]).unwrap_err(),
            Invalid::Undecodable(_)
        ));
        assert_eq!(
            check_event(&s, subj, &event("acme", "invoice.paid", b"nope")[..]).unwrap_err(),
            Invalid::NotJson
        );
        let err = check_event(&s, subj, &event("other", "invoice.paid", b"{}")[..]).unwrap_err();
        assert_eq!(err.kind(), "subject_mismatch");
        assert!(err.reason().contains("\"other\""));
        let err = check_event(&s, subj, &event("acme", "invoice.created", b"{}")[..]).unwrap_err();
        assert_eq!(err.kind(), "subject_mismatch");
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for i in 0..100 {
            let p = gancho_core::subject::partition("acme", &format!("ep_{i}"), 16);
            assert!(p < 16);
            assert_eq!(
                p,
                gancho_core::subject::partition("acme", &format!("ep_{i}"), 16)
            );
        }
    }
}
