//! The event catalog under `/v1/tenants/{tenant}/event-types`: what each event type means,
//! the JSON Schema (draft 2020-12) its payloads must meet, and an example. A schema is
//! compiled on PUT (a bad one is a 422) and the example is checked against it; every process
//! compiles it again once per config change, and from then on HTTP ingest answers a failing
//! payload with a 400 and the router dead-letters a failing NATS event as `schema`.

use crate::error::{tenant_id, ApiError, Json, Path, Query};
use crate::page::{page, Page, PageQuery};
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use gancho_store::live::Schema;
use gancho_store::EventType;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Longest description.
const MAX_DESCRIPTION: usize = 1024;

/// An event type as the API takes it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutEventType {
    /// What the event means, for the people who subscribe to it (up to 1,024 characters).
    #[serde(default)]
    description: String,
    /// A JSON Schema (draft 2020-12) payloads of this type must meet; none: any JSON.
    #[schema(value_type = Option<serde_json::Value>)]
    schema: Option<serde_json::Value>,
    /// An example payload; checked against `schema`.
    #[schema(value_type = Option<serde_json::Value>)]
    example: Option<serde_json::Value>,
    /// Archived types stay for the record.
    #[serde(default)]
    archived: bool,
}

/// An event type of the catalog.
#[derive(Serialize, ToSchema)]
pub struct EventTypeView {
    #[schema(example = "charge.paid")]
    name: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    schema: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    example: Option<serde_json::Value>,
    archived: bool,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl From<EventType> for EventTypeView {
    fn from(e: EventType) -> Self {
        Self {
            name: e.name,
            description: e.description,
            schema: e.schema,
            example: e.example,
            archived: e.archived,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    gancho_core::id::validate_event_type(name)
        .map_err(|e| ApiError::not_found(format!("no such event type: {e}")))
}

/// Create or replace an event type.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/event-types/{name}", tag = "event-types", operation_id = "put_event_type",
    params(
        ("tenant" = String, Path, description = "The tenant id."),
        ("name" = String, Path, description = "The dotted event type, e.g. charge.paid."),
    ),
    request_body = PutEventType,
    responses(
        (status = 200, description = "Replaced.", body = EventTypeView),
        (status = 201, description = "Created.", body = EventTypeView),
        (status = 422, description = "A bad name, description, schema, or an example the schema refuses; `error.field` names which.", body = crate::error::ErrorBody),
    ))]
pub async fn put(
    State(state): State<ApiState>,
    Path((tenant, name)): Path<(String, String)>,
    Json(body): Json<PutEventType>,
) -> Result<(StatusCode, axum::Json<EventTypeView>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    gancho_core::id::validate_event_type(&name)
        .map_err(|e| ApiError::invalid_field("name", format!("name: {e}")))?;
    if body.description.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::invalid_field(
            "description",
            format!("description is longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    if let Some(schema) = &body.schema {
        let compiled = Schema::compile(schema).map_err(|e| ApiError::invalid_field("schema", e))?;
        if let Some(example) = &body.example {
            compiled
                .check(&name, example)
                .map_err(|e| ApiError::invalid_field("example", format!("example: {e}")))?;
        }
    }
    crate::require_tenant(&state, &tenant).await?;
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is valid");
    let created_at = state
        .store
        .get_event_type(tenant.as_str(), &name)
        .await?
        .map_or(now, |e| e.created_at);
    let et = EventType {
        tenant,
        name,
        description: body.description,
        schema: body.schema,
        example: body.example,
        archived: body.archived,
        created_at,
        updated_at: now,
    };
    let created = state.store.put_event_type(&et).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(et.into())))
}

/// Read an event type.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/event-types/{name}", tag = "event-types", operation_id = "get_event_type",
    params(
        ("tenant" = String, Path, description = "The tenant id."),
        ("name" = String, Path, description = "The dotted event type."),
    ),
    responses((status = 200, description = "The event type.", body = EventTypeView)))]
pub async fn get(
    State(state): State<ApiState>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<axum::Json<EventTypeView>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    check_name(&name)?;
    state
        .store
        .get_event_type(tenant.as_str(), &name)
        .await?
        .map(|e| axum::Json(e.into()))
        .ok_or_else(|| ApiError::not_found(format!("event type {name:?} not found")))
}

/// Delete an event type (its schema stops applying).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/event-types/{name}", tag = "event-types", operation_id = "delete_event_type",
    params(
        ("tenant" = String, Path, description = "The tenant id."),
        ("name" = String, Path, description = "The dotted event type."),
    ),
    responses((status = 204, description = "Deleted.")))]
pub async fn delete(
    State(state): State<ApiState>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_id(&tenant)?;
    check_name(&name)?;
    state
        .store
        .delete_event_type(tenant.as_str(), &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a tenant's event types, by name.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/event-types", tag = "event-types", operation_id = "list_event_types",
    params(("tenant" = String, Path, description = "The tenant id."), PageQuery),
    responses((status = 200, description = "A page of event types.", body = Page<EventTypeView>)))]
pub async fn list(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<EventTypeView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    crate::require_tenant(&state, &tenant).await?;
    let all = state.store.list_event_types(tenant.as_str()).await?;
    let p = page(all, &query, |e| e.name.as_str())?;
    Ok(axum::Json(Page {
        data: p.data.into_iter().map(EventTypeView::from).collect(),
        next: p.next,
    }))
}
