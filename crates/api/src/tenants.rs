//! `POST/GET /v1/tenants`, `GET /v1/tenants/{tenant}`, `DELETE /v1/tenants/{tenant}`.

use crate::error::{ApiError, Json};
use crate::page::{page, Page, PageQuery};
use crate::ApiState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gancho_core::TenantId;
use gancho_store::Tenant;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    id: String,
    #[serde(default)]
    name: String,
}

pub async fn create(
    State(state): State<ApiState>,
    Json(body): Json<CreateTenant>,
) -> Result<(StatusCode, axum::Json<Tenant>), ApiError> {
    let id = TenantId::new(body.id).map_err(|e| ApiError::invalid(e.to_string()))?;
    if body.name.len() > 256 {
        return Err(ApiError::invalid("name is longer than 256 characters"));
    }
    let tenant = Tenant {
        name: if body.name.is_empty() {
            id.to_string()
        } else {
            body.name
        },
        id,
        created_at: time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 is valid"),
    };
    state.store.create_tenant(&tenant).await?;
    Ok((StatusCode::CREATED, axum::Json(tenant)))
}

pub async fn list(
    State(state): State<ApiState>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<Tenant>>, ApiError> {
    let tenants = state.store.list_tenants().await?;
    Ok(axum::Json(page(tenants, &query, |t| t.id.as_str())?))
}

pub async fn get(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
) -> Result<axum::Json<Tenant>, ApiError> {
    check_path(&tenant)?;
    state
        .store
        .get_tenant(&tenant)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant:?} not found")))
}

pub async fn delete(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_path(&tenant)?;
    state.store.delete_tenant(&tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn check_path(tenant: &str) -> Result<(), ApiError> {
    TenantId::new(tenant)
        .map(|_| ())
        .map_err(|e| ApiError::not_found(format!("no such tenant: {e}")))
}
