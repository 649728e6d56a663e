//! `POST/GET /v1/tenants`, `GET/PATCH/DELETE /v1/tenants/{tenant}`.

use crate::error::{ApiError, Json, Path, Query};
use crate::page::{page, Page, PageQuery};
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use gancho_core::TenantId;
use gancho_store::Tenant;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// A tenant: one customer of the platform, owning endpoints and API keys.
#[derive(Serialize, ToSchema)]
pub struct TenantView {
    /// 1 to 64 letters, digits, `_` or `-`.
    id: String,
    name: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// Its share of the routers' and workers' capacity against other tenants with work
    /// waiting (1 to 100); a tenant alone gets all of it whatever its weight.
    weight: u32,
    /// Requests a second each of its API keys and portal sessions may make (bursts of twice
    /// that); null: the api's `GANCHO_API_RATE_LIMIT`.
    api_rate_limit_per_sec: Option<u32>,
    /// Events a second it may send through HTTP ingest (bursts of twice that); null: no limit.
    /// Events published on NATS are not limited by it.
    ingest_rate_limit_per_sec: Option<u32>,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id.as_str().to_owned(),
            name: t.name,
            created_at: t.created_at,
            weight: t.weight,
            api_rate_limit_per_sec: t.api_rate_limit_per_sec,
            ingest_rate_limit_per_sec: t.ingest_rate_limit_per_sec,
        }
    }
}

/// The largest per-tenant rate a request may set.
const MAX_RATE: u32 = 100_000;

/// Checks a rate from a request: 1 to [`MAX_RATE`].
fn check_rate(field: &'static str, rate: Option<u32>) -> Result<Option<u32>, ApiError> {
    match rate {
        Some(r) if !(1..=MAX_RATE).contains(&r) => Err(ApiError::invalid_field(
            field,
            format!(
                "{field} must be from 1 to {MAX_RATE} a second, or null for the default; got {r}"
            ),
        )),
        r => Ok(r),
    }
}

/// Checks a weight from a request.
fn check_weight(weight: u32) -> Result<u32, ApiError> {
    if (1..=gancho_store::model::MAX_WEIGHT).contains(&weight) {
        Ok(weight)
    } else {
        Err(ApiError::invalid_field(
            "weight",
            format!(
                "weight must be from 1 to {}, got {weight}",
                gancho_store::model::MAX_WEIGHT
            ),
        ))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1 to 64 letters, digits, `_` or `-`; used in subjects and URLs.
    #[schema(example = "acme")]
    id: String,
    /// A display name, up to 256 characters (default: the id).
    #[serde(default)]
    #[schema(example = "Acme Pagamentos")]
    name: String,
    /// Its share against other tenants with work waiting, 1 to 100 (default 1): a tenant of
    /// weight 3 gets about three times what one of weight 1 gets while both have a backlog.
    #[serde(default)]
    #[schema(example = 1, minimum = 1, maximum = 100)]
    weight: Option<u32>,
    /// Requests a second per API key or portal session, 1 to 100000 (default: the api's
    /// `GANCHO_API_RATE_LIMIT`).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    api_rate_limit_per_sec: Option<u32>,
    /// Events a second through HTTP ingest, 1 to 100000 (default: no limit).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    ingest_rate_limit_per_sec: Option<u32>,
}

/// What a PATCH changes; what is left out stays.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// A display name, up to 256 characters.
    #[serde(default)]
    name: Option<String>,
    /// 1 to 100.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    weight: Option<u32>,
    /// 1 to 100000; null: back to the api's `GANCHO_API_RATE_LIMIT`.
    #[serde(default, deserialize_with = "crate::endpoints::nullable")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100000)]
    api_rate_limit_per_sec: Option<Option<u32>>,
    /// 1 to 100000; null: no limit.
    #[serde(default, deserialize_with = "crate::endpoints::nullable")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100000)]
    ingest_rate_limit_per_sec: Option<Option<u32>>,
}

/// Create a tenant.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", operation_id = "create_tenant",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "Created.", body = TenantView),
        (status = 409, description = "A tenant with this id exists.", body = crate::error::ErrorBody),
    ))]
pub async fn create(
    State(state): State<ApiState>,
    Json(body): Json<CreateTenant>,
) -> Result<(StatusCode, axum::Json<TenantView>), ApiError> {
    let id = TenantId::new(body.id).map_err(|e| ApiError::invalid_field("id", e.to_string()))?;
    if body.name.len() > 256 {
        return Err(ApiError::invalid_field(
            "name",
            "name is longer than 256 characters",
        ));
    }
    let weight = check_weight(body.weight.unwrap_or(1))?;
    let tenant = Tenant {
        weight,
        api_rate_limit_per_sec: check_rate("api_rate_limit_per_sec", body.api_rate_limit_per_sec)?,
        ingest_rate_limit_per_sec: check_rate(
            "ingest_rate_limit_per_sec",
            body.ingest_rate_limit_per_sec,
        )?,
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
    Ok((StatusCode::CREATED, axum::Json(tenant.into())))
}

/// List tenants, by id.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", operation_id = "list_tenants",
    params(PageQuery),
    responses((status = 200, description = "A page of tenants.", body = Page<TenantView>)))]
pub async fn list(
    State(state): State<ApiState>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<TenantView>>, ApiError> {
    let tenants = state.store.list_tenants().await?;
    let p = page(tenants, &query, |t| t.id.as_str())?;
    Ok(axum::Json(Page {
        data: p.data.into_iter().map(TenantView::from).collect(),
        next: p.next,
    }))
}

/// Read a tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants", operation_id = "get_tenant",
    params(("tenant" = String, Path, description = "The tenant id.")),
    responses((status = 200, description = "The tenant.", body = TenantView)))]
pub async fn get(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
) -> Result<axum::Json<TenantView>, ApiError> {
    check_path(&tenant)?;
    state
        .store
        .get_tenant(&tenant)
        .await?
        .map(|t| axum::Json(t.into()))
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant:?} not found")))
}

/// Change a tenant's name, weight or rate limits.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants", operation_id = "update_tenant",
    params(("tenant" = String, Path, description = "The tenant id.")),
    request_body = UpdateTenant,
    responses((status = 200, description = "The tenant as it is now.", body = TenantView)))]
pub async fn update(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Json(body): Json<UpdateTenant>,
) -> Result<axum::Json<TenantView>, ApiError> {
    check_path(&tenant)?;
    if body
        .name
        .as_ref()
        .is_some_and(|n| n.is_empty() || n.len() > 256)
    {
        return Err(ApiError::invalid_field(
            "name",
            "name must be 1 to 256 characters",
        ));
    }
    let weight = body.weight.map(check_weight).transpose()?;
    let api_rate = body
        .api_rate_limit_per_sec
        .map(|r| check_rate("api_rate_limit_per_sec", r))
        .transpose()?;
    let ingest_rate = body
        .ingest_rate_limit_per_sec
        .map(|r| check_rate("ingest_rate_limit_per_sec", r))
        .transpose()?;
    let updated = state
        .store
        .update_tenant(&tenant, |t| {
            if let Some(name) = &body.name {
                t.name = name.clone();
            }
            if let Some(w) = weight {
                t.weight = w;
            }
            if let Some(r) = api_rate {
                t.api_rate_limit_per_sec = r;
            }
            if let Some(r) = ingest_rate {
                t.ingest_rate_limit_per_sec = r;
            }
            Ok(())
        })
        .await?;
    Ok(axum::Json(updated.into()))
}

/// Delete a tenant.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants", operation_id = "delete_tenant",
    params(("tenant" = String, Path, description = "The tenant id.")),
    responses((status = 204, description = "Deleted.")))]
pub async fn delete(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_path(&tenant)?;
    state.store.delete_tenant(&tenant).await?;
    state.portal.end_all(&tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn check_path(tenant: &str) -> Result<(), ApiError> {
    TenantId::new(tenant)
        .map(|_| ())
        .map_err(|e| ApiError::not_found(format!("no such tenant: {e}")))
}
