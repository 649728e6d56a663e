//! The JetStream writes the router and the worker both make, written once: a dead letter,
//! and handing a message back to come again later (a nak with a delay). Nothing here buffers:
//! the caller awaits each write's PubAck before it acks the message the write is about, as
//! everywhere else, and keeps its own log line and metrics.

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use gancho_core::Subjects;
use gancho_proto::{DeadLetter, Delivery, Message as _};
use std::time::Duration;

/// The header a dead letter carries its kind in, so a reader can filter without decoding.
pub const DEAD_REASON_HEADER: &str = "Gancho-Dead-Reason";

/// What a dead letter is about, as its writer knows it.
pub struct Dead<'a> {
    pub tenant: &'a str,
    /// The endpoint, or [`gancho_core::subject::DEAD_EVENT_TOKEN`] for an event that was
    /// never routed.
    pub endpoint: &'a str,
    /// A [`gancho_core::policy::DeadKind`]'s name.
    pub kind: &'a str,
    /// The event's id, when known: the dead letter's subject names it, so it is found by it.
    pub event_id: Option<&'a str>,
    /// Why, for a person.
    pub reason: String,
    /// The subject the message was read from.
    pub subject: String,
    /// The message as it was read (an event that could not be routed, or bytes that did not
    /// decode as a delivery). Not stored when `delivery` is set: it would be the same
    /// delivery's bytes a second time (a dead endpoint's swept deliveries wrote every
    /// payload twice).
    pub original: Bytes,
    /// The delivery, when the message decoded as one.
    pub delivery: Option<Delivery>,
    /// `Nats-Msg-Id`, so a dead letter written again (a retry, a redelivery) is stored once.
    pub message_id: Option<String>,
}

/// The subject and message of a dead letter in `GANCHO_DEAD`.
pub fn dead_letter(subjects: &Subjects, dead: Dead<'_>) -> (String, PublishMessage) {
    let record = DeadLetter {
        reason: dead.reason,
        kind: dead.kind.into(),
        subject: dead.subject,
        original: if dead.delivery.is_some() {
            Bytes::new()
        } else {
            dead.original
        },
        at: Some(gancho_proto::timestamp(time::OffsetDateTime::now_utc())),
        delivery: dead.delivery,
    };
    let mut headers = HeaderMap::new();
    headers.insert(DEAD_REASON_HEADER, dead.kind);
    let mut publish = PublishMessage::build()
        .payload(Bytes::from(record.encode_to_vec()))
        .headers(headers);
    if let Some(id) = dead.message_id {
        publish = publish.message_id(id);
    }
    (
        subjects.dead(dead.tenant, dead.endpoint, dead.kind, dead.event_id),
        publish,
    )
}

/// Hands `msg` back to JetStream, to be delivered again after `delay` (none: at once).
/// An error means the server may not have heard it: the message then comes back after its
/// ack wait instead.
pub async fn hand_back(
    msg: &jetstream::Message,
    delay: Option<Duration>,
) -> Result<(), async_nats::Error> {
    msg.ack_with(jetstream::AckKind::Nak(delay)).await
}

/// Publishes one write and waits for its PubAck, timing it on
/// `gancho_jetstream_publish_seconds{role}`.
pub async fn store(
    js: &jetstream::Context,
    role: &'static str,
    subject: String,
    publish: PublishMessage,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    let sent = std::time::Instant::now();
    let stored = match js.send_publish(subject, publish).await {
        Ok(ack) => std::future::IntoFuture::into_future(ack).await,
        Err(e) => Err(e),
    };
    stored_after(role, sent);
    stored
}

/// Times a write from `sent` to JetStream's word that it is stored (a PubAck, or a fast
/// batch's ack), on `gancho_jetstream_publish_seconds{role}`.
pub fn stored_after(role: &'static str, sent: std::time::Instant) {
    // Every write updates it: the handle is kept by role.
    static PUBLISH: gancho_telemetry::kept::KeptBy<metrics::Histogram, 4> =
        gancho_telemetry::kept::KeptBy::new();
    PUBLISH.with(
        role,
        || metrics::histogram!(gancho_telemetry::names::JETSTREAM_PUBLISH, "role" => role),
        |h| h.record(sent.elapsed().as_secs_f64()),
    );
}

/// Removes message `seq` from `stream` without erasing it: its bytes are left for the
/// server's compaction instead of overwritten in place and flushed, which is what the API's
/// default removal (and `Stream::delete_message`) does. Ordered delivery removes every
/// message it sends, and the erasing removal wrote about 850 MB/s to disk at 100 removals a
/// second. A message that is gone already counts as removed.
pub async fn remove(
    js: &jetstream::Context,
    stream: &str,
    seq: u64,
) -> Result<(), jetstream::context::RequestError> {
    #[derive(serde::Deserialize)]
    struct Removed {}
    let asked = serde_json::json!({"seq": seq, "no_erase": true});
    let answer: jetstream::response::Response<Removed> = js
        .request(format!("STREAM.MSG.DELETE.{stream}"), &asked)
        .await?;
    match answer {
        jetstream::response::Response::Ok(_) => Ok(()),
        // Gone already: the server says so with the removal's own code (10057) and "no
        // message found", or with a not-found code.
        jetstream::response::Response::Err { error }
            if crate::refusal::Refusal::of_code(&error) == crate::refusal::Refusal::NotFound
                || error.to_string().starts_with("no message found") =>
        {
            Ok(())
        }
        jetstream::response::Response::Err { error } => {
            Err(jetstream::context::RequestError::with_source(
                jetstream::context::RequestErrorKind::Other,
                error,
            ))
        }
    }
}
