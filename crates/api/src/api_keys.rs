//! `POST/GET /v1/tenants/{tenant}/api-keys`, `DELETE .../api-keys/{id}` (admin only): a
//! tenant's API keys. The key is returned once, on create; only its SHA-256 is stored.

use crate::error::{tenant_id, ApiError, Json, Path, Query};
use crate::page::{page, Page, PageQuery};
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use gancho_store::model::{new_api_key, random_id, API_KEY_PREFIX_LEN};
use gancho_store::{ApiKey, Scope};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// 1 to 128 characters, to tell keys apart.
    #[schema(example = "billing-service", min_length = 1, max_length = 128)]
    name: String,
    /// `manage` (endpoints, event types, delivery log, recovery), `read` (reading what
    /// `manage` reaches, changing and sending nothing) and/or `publish` (sending events for
    /// the tenant).
    #[schema(value_type = Vec<ScopeName>, min_items = 1, example = json!(["manage"]))]
    scopes: Vec<String>,
}

/// A scope, as the OpenAPI document names them (the API parses them itself, to say which
/// one it does not know).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Scope)]
#[allow(dead_code)] // a schema only
enum ScopeName {
    Manage,
    Publish,
    Read,
}

/// An API key as the API shows it: never its hash; `key` only in the answer to create.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// `key_` and 20 characters.
    id: String,
    tenant: String,
    name: String,
    /// The key's first characters (`gk_` and 8), to tell keys apart.
    prefix: String,
    #[schema(value_type = Vec<ScopeName>, example = json!(["manage"]))]
    scopes: Vec<Scope>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    last_used_at: Option<OffsetDateTime>,
    /// The key itself (`gk_` and 40 characters): only in the answer to create, stored only
    /// as a hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl KeyView {
    fn from(k: ApiKey, key: Option<String>) -> Self {
        Self {
            id: k.id,
            tenant: k.tenant.as_str().to_owned(),
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            key,
        }
    }
}

/// Create an API key for a tenant; the key is in the answer, once.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/api-keys", tag = "api-keys", operation_id = "create_api_key",
    params(("tenant" = String, Path, description = "The tenant id.")),
    request_body = CreateKey,
    responses((status = 201, description = "Created; `key` is shown only here.", body = KeyView)))]
pub async fn create(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Json(body): Json<CreateKey>,
) -> Result<(StatusCode, axum::Json<KeyView>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::invalid_field(
            "name",
            "name must be 1 to 128 characters, e.g. \"billing-service\"",
        ));
    }
    if body.scopes.is_empty() {
        return Err(ApiError::invalid_field(
            "scopes",
            "scopes must name at least one of \"manage\", \"read\" and \"publish\"",
        ));
    }
    let mut scopes = Vec::new();
    for s in &body.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            ApiError::invalid_field(
                "scopes",
                format!(
                    "unknown scope {s:?} in scopes; the scopes are \"manage\", \"read\" and \"publish\""
                ),
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    scopes.sort();
    let (key, hash) = new_api_key();
    let stored = ApiKey {
        id: random_id("key_", 20),
        tenant,
        name,
        prefix: key[..API_KEY_PREFIX_LEN].to_owned(),
        scopes,
        hash,
        created_at: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 is valid"),
        last_used_at: None,
    };
    state.store.create_api_key(&stored).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(KeyView::from(stored, Some(key))),
    ))
}

/// List a tenant's API keys (never the keys themselves).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/api-keys", tag = "api-keys", operation_id = "list_api_keys",
    params(("tenant" = String, Path, description = "The tenant id."), PageQuery),
    responses((status = 200, description = "A page of keys.", body = Page<KeyView>)))]
pub async fn list(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<KeyView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    crate::require_tenant(&state, &tenant).await?;
    let keys = state.store.list_api_keys(tenant.as_str()).await?;
    let p = page(keys, &query, |k| k.id.as_str())?;
    Ok(axum::Json(Page {
        data: p.data.into_iter().map(|k| KeyView::from(k, None)).collect(),
        next: p.next,
    }))
}

/// Revoke an API key; every api process refuses it within 2 s.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/api-keys/{id}", tag = "api-keys", operation_id = "revoke_api_key",
    params(
        ("tenant" = String, Path, description = "The tenant id."),
        ("id" = String, Path, description = "The key id (`key_...`)."),
    ),
    responses((status = 204, description = "Revoked.")))]
pub async fn revoke(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_id(&tenant)?;
    state.store.revoke_api_key(tenant.as_str(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
