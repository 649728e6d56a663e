//! HTTP ingest: `POST /v1/tenants/{tenant}/events` (one event) and `.../events/batch` (up to
//! 1,000). Each event becomes the same protobuf `Event`, on the same subject, with the same
//! `Nats-Msg-Id` (`<tenant>:<id>`) as a NATS producer would publish, and is answered only after
//! JetStream acknowledged it: 202 means durable. The same id again within the stream's
//! duplicate window is answered `duplicate: true` and delivered once. When JetStream does
//! not answer in time the outcome is unknown (the publish may still land): 503, naming the
//! id, and retrying with that id is safe.
//!
//! Needs the admin token or a key with the `publish` scope of the tenant (see [`crate::auth`]).

use crate::error::{tenant_id, ApiError, Json, Path};
use crate::ApiState;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use axum::extract::State;
use axum::http::StatusCode;
use gancho_core::TenantId;
use gancho_proto::{Event, Message as _};
use gancho_store::full::Pressure;
use gancho_telemetry::traces::{self, KeyValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::time::Duration;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Most events in one batch.
pub const MAX_BATCH: usize = 1000;
/// Largest body of a single-event request.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Largest body of a batch request.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How long a request waits for JetStream to acknowledge its events.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most attributes or channels on one event.
const MAX_LIST: usize = 64;

/// One event, as a producer sends it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Your id for the event, 1 to 128 of `A-Z a-z 0-9 _ . : -`; it becomes the
    /// `webhook-id` receivers dedupe on. Default: a generated `evt_...`. Sending the same id
    /// again within the duplicate window delivers it once.
    #[schema(example = "pay_2026_000123")]
    id: Option<String>,
    /// Dotted event type, e.g. `charge.paid`.
    #[schema(example = "charge.paid")]
    r#type: String,
    /// The payload: a JSON object or array, delivered as `data`.
    #[schema(value_type = Object, example = json!({"amount": 1990, "currency": "BRL"}))]
    data: Box<RawValue>,
    /// Extra routing dimension: endpoints with channels get only events tagged with one.
    #[serde(default)]
    channels: Vec<String>,
    /// Values some profiles use (`paymentId` for `openfinance-br`).
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    /// When it happened (RFC 3339); default: now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    occurred_at: Option<OffsetDateTime>,
}

/// The answer to an accepted event.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    id: String,
    /// The same id was accepted before, within the duplicate window: not stored again.
    duplicate: bool,
}

/// A batch of events.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    /// 1 to 1,000 events; each is checked and stored on its own.
    #[schema(value_type = Vec<EventIn>)]
    events: Vec<Box<RawValue>>,
}

/// What happened to one event of a batch.
#[derive(Serialize, ToSchema)]
pub struct ItemResult {
    /// The event's id (the one given, or the one generated); absent when it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// `accepted`, `duplicate` (accepted before; not stored again), `invalid` (see
    /// `error`; fix and send again), `full` (not stored: the event store is full; send again
    /// later) or `unavailable` (outcome unknown: send again with the same id, which is safe).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    /// One per event, in the order sent.
    results: Vec<ItemResult>,
}

/// Checks one event and builds what is published: (id, subject, protobuf bytes).
fn build(
    state: &ApiState,
    tenant: &str,
    ev: EventIn,
) -> Result<(String, String, Vec<u8>), ApiError> {
    let id = ev
        .id
        .unwrap_or_else(|| gancho_store::model::random_id("evt_", 26));
    let data = ev.data.get().trim_start();
    gancho_core::event::check(
        gancho_core::event::Source::Http,
        &id,
        tenant,
        &ev.r#type,
        data.as_bytes(),
    )
    .map_err(|broken| {
        use gancho_core::event::Field;
        match broken.field {
            Field::Type => ApiError::invalid_field("type", format!("type: {}", broken.why)),
            Field::Id => ApiError::invalid_field("id", broken.why),
            Field::Data => ApiError::invalid_field("data", broken.why),
            // The tenant is the path's, not the body's.
            Field::Tenant => ApiError::invalid(broken.why),
        }
    })?;
    // The catalog's schema for this type, if it has one (compiled once per config change).
    state
        .live
        .load()
        .check_payload(tenant, &ev.r#type, data.as_bytes())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "schema", e))?;
    crate::endpoints::check_channels(&ev.channels)?;
    if ev.attributes.len() > MAX_LIST {
        return Err(ApiError::invalid_field(
            "attributes",
            format!(
                "attributes has {} entries; the limit is {MAX_LIST}",
                ev.attributes.len()
            ),
        ));
    }
    for (k, v) in &ev.attributes {
        if k.is_empty() || k.len() > 64 || v.len() > 512 {
            return Err(ApiError::invalid_field(
                "attributes",
                format!(
                    "attributes: {k:?} must be a name of 1 to 64 characters with a value of up to 512"
                ),
            ));
        }
    }
    let occurred = ev.occurred_at.unwrap_or_else(OffsetDateTime::now_utc);
    let event = Event {
        id: id.clone(),
        tenant: tenant.to_owned(),
        r#type: ev.r#type.clone(),
        occurred_at: Some(gancho_proto::timestamp(occurred)),
        payload: bytes::Bytes::copy_from_slice(data.trim_end().as_bytes()),
        attributes: ev.attributes.into_iter().collect(),
        channels: ev.channels,
    };
    let subject = state.layout.subjects.event(tenant, &ev.r#type);
    Ok((id, subject, event.encode_to_vec()))
}

/// The ingest span of a request (traces on), a child of its `traceparent` header or the
/// first span of a new trace. Only the admin may choose to be sampled: for a tenant's key
/// the parent's sampled flag is what gancho's sampler decides.
fn ingest_span(
    headers: &axum::http::HeaderMap,
    principal: Option<&crate::auth::Principal>,
    tenant: &str,
    events: usize,
) -> Option<traces::Started> {
    if !traces::on() {
        return None;
    }
    let parent = headers
        .get(traces::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(traces::parse)
        .map(|p| match principal {
            Some(crate::auth::Principal::Admin) => p,
            _ => traces::resampled(&p),
        });
    traces::SpanStart {
        name: "gancho ingest",
        kind: traces::Kind::Server,
        parent: parent.as_ref(),
        start: std::time::SystemTime::now(),
        attributes: vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("gancho.tenant", tenant.to_owned()),
            KeyValue::new("gancho.events", events as i64),
        ],
        links: Vec::new(),
    }
    .start()
}

/// Sends one publish; its PubAck is awaited by the caller. `trace` is the ingest span's
/// `traceparent`, which the event's message carries to the router.
async fn send(
    state: &ApiState,
    tenant: &str,
    id: &str,
    subject: String,
    bytes: Vec<u8>,
    trace: Option<&str>,
) -> Result<PublishAckFuture, Unstored> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(gancho_core::subject::INGEST_HEADER, "http");
    if let Some(trace) = trace {
        headers.insert(traces::TRACEPARENT, trace);
    }
    // Headers first: `headers` replaces the whole map, Nats-Msg-Id included.
    let publish = PublishMessage::build()
        .payload(bytes.into())
        .headers(headers)
        .message_id(gancho_core::subject::event_message_id(tenant, id));
    state
        .layout
        .js
        .send_publish(subject, publish)
        .await
        .map_err(Unstored::Publish)
}

/// Waits for a PubAck: Ok(duplicate) or the reason it is unknown.
async fn acked(ack: PublishAckFuture) -> Result<bool, Unstored> {
    match tokio::time::timeout(ACK_TIMEOUT, ack.into_future()).await {
        Ok(Ok(ack)) => {
            PRESSURE.stored();
            Ok(ack.duplicate)
        }
        Ok(Err(e)) => Err(Unstored::Publish(e)),
        Err(_) => Err(Unstored::NoAnswer),
    }
}

/// Why an event has no PubAck.
#[derive(Debug, thiserror::Error)]
enum Unstored {
    #[error("{0}")]
    Publish(async_nats::jetstream::context::PublishError),
    #[error("JetStream did not answer in time")]
    NoAnswer,
}

/// Whether JetStream takes ingest's writes (the `gancho_storage_full` gauge of the api).
static PRESSURE: Pressure = Pressure::new("api");

/// Whether JetStream refused the event for lack of room (the stream's limit, or the
/// server's), noting the refusal: then it is surely not stored.
fn is_full(why: &Unstored) -> bool {
    let full = matches!(why, Unstored::Publish(e) if gancho_store::refusal::is_full(e));
    if full {
        PRESSURE.refused(&why.to_string());
    }
    full
}

fn unknown(id: &str, why: &Unstored) -> ApiError {
    if is_full(why) {
        return ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "full",
            format!(
                "event {id:?} was not stored: the event store is full ({why}); nothing accepted before is lost; send it again later with the same id"
            ),
        );
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!(
            "event {id:?} may or may not be stored ({why}); send it again with the same id, which is safe: it is delivered once"
        ),
    )
}

/// How long a tenant seen to exist is trusted without reading the store again (a deleted
/// tenant's events within it are stored, and routed to no endpoint).
const KNOWN_FOR: Duration = Duration::from_secs(10);
/// Tenants remembered at once; past it the memory starts over.
const KNOWN_MAX: usize = 10_000;

/// Tenants seen to exist lately.
#[derive(Default)]
pub struct KnownTenants(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl KnownTenants {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::time::Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tenants remembered now (at most [`KNOWN_MAX`]).
    pub fn entries(&self) -> usize {
        self.lock().len()
    }

    fn knows(&self, t: &str) -> bool {
        self.lock()
            .get(t)
            .is_some_and(|at| at.elapsed() < KNOWN_FOR)
    }

    fn remember(&self, t: &str) {
        let mut known = self.lock();
        if known.len() >= KNOWN_MAX {
            known.clear();
        }
        known.insert(t.to_owned(), std::time::Instant::now());
    }
}

/// 404 for an unknown tenant; when the store cannot say, a 503 that names what to resend.
async fn tenant_exists(state: &ApiState, t: &TenantId, id: &str) -> Result<(), ApiError> {
    if state.known_tenants.knows(t.as_str()) {
        return Ok(());
    }
    match state.store.get_tenant(t.as_str()).await {
        Ok(Some(_)) => {
            state.known_tenants.remember(t.as_str());
            Ok(())
        }
        Ok(None) => Err(ApiError::not_found(format!(
            "tenant {:?} not found",
            t.as_str()
        ))),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "event {id:?} was not stored (the config store did not answer: {}); send it again with the same id, which is safe",
                e.kind()
            ),
        )),
    }
}

/// Takes `n` events of `tenant`'s HTTP ingest rate (its `ingest_rate_limit_per_sec`, shared by
/// the live api processes), or 429.
fn ingest_rate(state: &ApiState, tenant: &TenantId, n: u32) -> Result<(), ApiError> {
    let rate = state
        .live
        .load()
        .accounts
        .get(tenant.as_str())
        .and_then(|t| t.ingest_rate_limit_per_sec);
    state
        .ingest_limits
        .take_n(tenant.as_str(), rate, n)
        .inspect_err(|_| {
            metrics::counter!(gancho_telemetry::names::API_RATE_LIMITED, "group" => "events")
                .increment(1);
        })
}

/// Accepts one event: 202 once it is durable.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/events", tag = "events", operation_id = "send_event",
    params(("tenant" = String, Path, description = "The tenant id.")),
    request_body = EventIn,
    responses(
        (status = 202, description = "Stored (or stored before, `duplicate`); it will be delivered.", body = Accepted),
        (status = 503, description = "JetStream did not answer (an election, a cluster without its quorum): the event may or may not be stored; send it again with the same id, which is safe.", body = crate::error::ErrorBody),
        (status = 507, description = "Not stored: the event store is full; send it again later with the same id.", body = crate::error::ErrorBody),
        (status = 429, description = "Not stored: the tenant is past its HTTP ingest rate (`ingest_rate_limit_per_sec`), or the key past its request rate; `Retry-After` says when to send it again.", body = crate::error::ErrorBody),
    ))]
pub async fn send_one(
    State(state): State<ApiState>,
    Path(t): Path<String>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    headers: axum::http::HeaderMap,
    Json(ev): Json<EventIn>,
) -> Result<(StatusCode, axum::Json<Accepted>), ApiError> {
    let t = tenant_id(&t)?;
    let (id, subject, bytes) = build(&state, t.as_str(), ev)?;
    tenant_exists(&state, &t, &id).await?;
    ingest_rate(&state, &t, 1)?;
    let span = ingest_span(&headers, principal.as_deref(), t.as_str(), 1);
    let trace = span.as_ref().map(|s| traces::traceparent(&s.context()));
    let ack = send(&state, t.as_str(), &id, subject, bytes, trace.as_deref())
        .await
        .map_err(|e| unknown(&id, &e));
    let duplicate = match ack {
        Ok(ack) => acked(ack).await.map_err(|e| unknown(&id, &e)),
        Err(e) => Err(e),
    };
    if let Some(mut span) = span {
        span.set(vec![
            KeyValue::new("gancho.event.id", id.clone()),
            KeyValue::new(
                "http.response.status_code",
                if duplicate.is_ok() { 202 } else { 503 },
            ),
        ]);
        span.end(None);
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Accepted {
            id,
            duplicate: duplicate?,
        }),
    ))
}

/// Accepts up to 1,000 events, each on its own (not all-or-nothing): the answer has a status
/// per event, in order.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/events/batch", tag = "events", operation_id = "send_events",
    params(("tenant" = String, Path, description = "The tenant id.")),
    request_body = BatchIn,
    responses(
        (status = 200, description = "A result per event.", body = BatchResult),
        (status = 429, description = "Nothing of the batch stored: the tenant is past its HTTP ingest rate (`ingest_rate_limit_per_sec`; a batch counts as its number of events, and one larger than the burst, twice the rate, is never taken), or the key past its request rate; `Retry-After` says when to send it again.", body = crate::error::ErrorBody),
    ))]
pub async fn send_batch(
    State(state): State<ApiState>,
    Path(t): Path<String>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    headers: axum::http::HeaderMap,
    Json(batch): Json<BatchIn>,
) -> Result<axum::Json<BatchResult>, ApiError> {
    let t = tenant_id(&t)?;
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        return Err(ApiError::invalid_field(
            "events",
            format!(
                "events must hold 1 to {MAX_BATCH} events, not {}",
                batch.events.len()
            ),
        ));
    }
    tenant_exists(&state, &t, "of this batch").await?;
    // Past the tenant's rate, the batch is refused whole: nothing of it is stored.
    ingest_rate(&state, &t, batch.events.len() as u32)?;
    let span = ingest_span(
        &headers,
        principal.as_deref(),
        t.as_str(),
        batch.events.len(),
    );
    let trace = span.as_ref().map(|s| traces::traceparent(&s.context()));
    // Check every event, send every valid one, then await every PubAck.
    let mut results = Vec::with_capacity(batch.events.len());
    let mut pending = Vec::new();
    for (i, raw) in batch.events.iter().enumerate() {
        let parsed: Result<EventIn, _> = serde_json::from_str(raw.get());
        let built = parsed
            .map_err(|e| ApiError::bad_request(format!("events[{i}]: {e}")))
            .and_then(|ev| build(&state, t.as_str(), ev));
        match built {
            Err(e) => {
                // The id, when one can be read, so the producer can tell which item it was.
                let id = serde_json::from_str::<serde_json::Value>(raw.get())
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned));
                results.push(ItemResult {
                    id,
                    status: "invalid",
                    error: Some(e.message),
                });
            }
            Ok((id, subject, bytes)) => {
                let ack = send(&state, t.as_str(), &id, subject, bytes, trace.as_deref()).await;
                pending.push((results.len(), ack));
                results.push(ItemResult {
                    id: Some(id),
                    status: "accepted",
                    error: None,
                });
            }
        }
    }
    for (i, ack) in pending {
        let outcome = match ack {
            Ok(ack) => acked(ack).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(true) => results[i].status = "duplicate",
            Ok(false) => {}
            Err(e) if is_full(&e) => {
                results[i].status = "full";
                results[i].error = Some(format!(
                    "not stored: the event store is full ({e}); send it again later with the same id"
                ));
            }
            Err(e) => {
                results[i].status = "unavailable";
                results[i].error = Some(format!(
                    "may or may not be stored ({e}); send it again with the same id, which is safe"
                ));
            }
        }
    }
    if let Some(span) = span {
        span.end(None);
    }
    Ok(axum::Json(BatchResult { results }))
}
