//! `POST .../endpoints/try`: what an endpoint's jq `filter` and `transform` would do with an
//! event, without storing anything (the same compiler, sandbox and bounds as the roles).

use crate::error::{tenant_id, ApiError, Path};
use crate::ApiState;
use axum::extract::State;
use gancho_store::programs::EventParts;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `{"filter"?, "transform"?, "event"}`: the programs to try (at least one) and the event.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TryIn {
    /// A jq program, as an endpoint's `filter`.
    #[schema(example = ".data.amount >= 100000")]
    filter: Option<String>,
    /// A jq program, as an endpoint's `transform`.
    #[schema(example = "{id: .data.charge_id, status: .type}")]
    transform: Option<String>,
    event: TryEvent,
}

/// The event the programs read.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TryEvent {
    #[serde(rename = "type")]
    #[schema(example = "charge.paid")]
    event_type: String,
    /// The payload (any JSON).
    #[schema(value_type = Object, example = json!({"charge_id": "ch_1", "amount": 150000}))]
    data: serde_json::Value,
    /// Default `evt_try`.
    id: Option<String>,
    /// RFC 3339; default now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    timestamp: Option<OffsetDateTime>,
    #[serde(default)]
    channels: Vec<String>,
}

/// What each program did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TryOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<FilterVerdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transform: Option<TransformVerdict>,
}

/// A filter's verdict: whether the endpoint would get the event, and why not when the
/// program gave no answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FilterVerdict {
    matches: bool,
    /// The program's error, or why it was cut off (the event then does not match).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A transform's result: the body the webhook would carry, or why the delivery would be
/// dead-lettered (kind `transform`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct TransformVerdict {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    body: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn program(
    field: &'static str,
    code: &str,
) -> Result<std::sync::Arc<gancho_jq::Program>, ApiError> {
    gancho_jq::shared()
        .get(code)
        .map_err(|e| ApiError::invalid_field(field, format!("{field}: {e}")))
}

/// Try a filter and a transform on an event: whether the endpoint would get it, and the body
/// it would carry. Nothing is stored or sent.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/try", tag = "endpoints", operation_id = "try_programs",
    params(("tenant" = String, Path, description = "The tenant id.")),
    request_body = TryIn,
    responses(
        (status = 200, description = "What each program did.", body = TryOut),
        (status = 422, description = "A program does not compile, or the event is not valid.", body = crate::error::ErrorBody)))]
pub async fn try_programs(
    State(_state): State<ApiState>,
    Path(tenant): Path<String>,
    crate::error::Json(body): crate::error::Json<TryIn>,
) -> Result<axum::Json<TryOut>, ApiError> {
    tenant_id(&tenant)?;
    if body.filter.is_none() && body.transform.is_none() {
        return Err(ApiError::invalid(
            "give a filter, a transform or both to try on the event",
        ));
    }
    let filter = body
        .filter
        .as_deref()
        .map(|f| program("filter", f))
        .transpose()?;
    let transform = body
        .transform
        .as_deref()
        .map(|t| program("transform", t))
        .transpose()?;
    let event = body.event;
    gancho_core::id::validate_event_type(&event.event_type)
        .map_err(|e| ApiError::invalid_field("event.type", format!("event.type: {e}")))?;
    let payload = serde_json::to_vec(&event.data).expect("a JSON value serializes");
    let id = event.id.unwrap_or_else(|| "evt_try".to_owned());
    let parts = EventParts {
        id: &id,
        event_type: &event.event_type,
        occurred_at: event.timestamp.unwrap_or_else(OffsetDateTime::now_utc),
        payload: &payload,
        channels: &event.channels,
    };
    let input = parts
        .input()
        .map_err(|e| ApiError::invalid_field("event", format!("event: {e}")))?;
    let filter = filter.map(
        |p| match p.matches(&input, &mut gancho_jq::Budget::filters()) {
            Ok(matches) => FilterVerdict {
                matches,
                error: None,
            },
            Err(e) => FilterVerdict {
                matches: false,
                error: Some(e.to_string()),
            },
        },
    );
    let transform =
        transform.map(
            |p| match p.transform(&input, &mut gancho_jq::Budget::transform()) {
                Ok(body) => TransformVerdict {
                    body: serde_json::from_slice(&body).ok(),
                    error: None,
                },
                Err(e) => TransformVerdict {
                    body: None,
                    error: Some(e.to_string()),
                },
            },
        );
    Ok(axum::Json(TryOut { filter, transform }))
}
