//! `POST .../endpoints/{id}/test`: a test event sent to one endpoint now, through the worker
//! like any other delivery (SSRF guard, profile, signature, retries), whatever the endpoint
//! subscribes to. The answer waits for the first attempt's outcome.

use crate::error::{tenant_id, ApiError, Path};
use crate::history::AttemptView;
use crate::ApiState;
use async_nats::jetstream::message::PublishMessage;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use gancho_core::subject::{delivery_id, partition, PARTITIONS};
use gancho_proto::{timestamp, Attempt, Delivery, Message as _};
use gancho_store::log::Log;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The event type of a test event when none is asked for.
pub const TEST_TYPE: &str = "gancho.test";
/// The longest the answer waits for the attempt: most receivers answer well within it, and
/// clients with a 10 s read timeout still get an answer.
const WAIT_MAX: Duration = Duration::from_secs(5);

/// `{"type"?}`: which event type to send an example of.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestIn {
    /// An event type of the catalog with an example (its example is sent); default
    /// `gancho.test` with `{"message": "...", "endpoint_id": "...", "sent_at": "..."}`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
}

/// The test event and, when it ended in time, its first attempt.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TestOut {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The first attempt; null when it had not ended in time (look the event up later).
    pub attempt: Option<AttemptView>,
}

/// Send a test event to the endpoint now. 200 with the first attempt's outcome when it ends
/// within the endpoint's timeout (at most 5 s), else 202 with the event id to look up.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{id}/test", tag = "endpoints", operation_id = "test_endpoint",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The endpoint id.")),
    request_body = TestIn,
    responses(
        (status = 200, description = "Sent; the first attempt's outcome.", body = TestOut),
        (status = 202, description = "Sent; the attempt had not ended in time.", body = TestOut)))]
#[allow(
    clippy::too_many_lines,
    reason = "a test event read top to bottom: build, sign, send, record, answer"
)]
pub async fn send(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, axum::Json<TestOut>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    let id = crate::endpoints::endpoint_id(&id)?;
    // The body is optional: none sends a gancho.test event.
    let body: TestIn = if raw.iter().all(u8::is_ascii_whitespace) {
        TestIn::default()
    } else {
        serde_json::from_slice(&raw).map_err(|e| {
            ApiError::bad_request(format!(
                "body must be {{\"type\": \"charge.paid\"}} or empty: {e}"
            ))
        })?
    };
    let ep = state
        .store
        .get_endpoint(tenant.as_str(), id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("endpoint {:?} not found", id.as_str())))?;
    let now = OffsetDateTime::now_utc();
    let (event_type, data) = match body.event_type {
        None => (
            TEST_TYPE.to_owned(),
            serde_json::json!({
                "message": "A test event from gancho.",
                "endpoint_id": id.as_str(),
                "sent_at": crate::error::rfc3339(now),
            }),
        ),
        Some(t) => {
            gancho_core::id::validate_event_type(&t)
                .map_err(|e| ApiError::invalid_field("type", format!("type: {e}")))?;
            let et = state
                .store
                .get_event_type(tenant.as_str(), &t)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "event type {t:?} is not in the catalog; leave type out for a gancho.test event"
                    ))
                })?;
            let example = et.example.ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    format!("event type {t:?} has no example to send; add one (PUT .../event-types/{t})"),
                )
            })?;
            (t, example)
        }
    };
    let event_id = gancho_store::model::random_id("evt_test_", 20);
    let delivery = Delivery {
        id: delivery_id(&event_id, id.as_str()),
        event_id: event_id.clone(),
        tenant: tenant.as_str().to_owned(),
        endpoint_id: id.as_str().to_owned(),
        r#type: event_type.clone(),
        occurred_at: Some(timestamp(now)),
        payload: Bytes::from(data.to_string()),
        created_at: Some(timestamp(now)),
        ..Default::default()
    };
    let subjects = &state.layout.subjects;
    let subject = subjects.delivery(partition(tenant.as_str(), id.as_str(), PARTITIONS));
    let publish = PublishMessage::build()
        .payload(Bytes::from(delivery.encode_to_vec()))
        .message_id(gancho_core::subject::delivery_message_id(
            tenant.as_str(),
            &event_id,
            id.as_str(),
            None,
        ));
    let js = &state.layout.js;
    async { js.send_publish(subject, publish).await?.await }
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the test event was not sent ({e}); try again"),
            )
        })?;
    // Wait for the first attempt's record.
    let log = Log::new(js.clone(), subjects.attempts_stream());
    let filter = subjects.attempts_of_event(tenant.as_str(), &event_id);
    let wait =
        (Duration::from_millis(u64::from(ep.timeout_ms)) + Duration::from_secs(2)).min(WAIT_MAX);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok(found) = log.range(&filter, 0, u64::MAX, 1).await {
            if let Some(r) = found.first() {
                if let Ok(a) = Attempt::decode(&r.payload[..]) {
                    return Ok((
                        StatusCode::OK,
                        axum::Json(TestOut {
                            event_id,
                            event_type,
                            attempt: Some(AttemptView::from(r.seq, a)),
                        }),
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(TestOut {
            event_id,
            event_type,
            attempt: None,
        }),
    ))
}
