//! Endpoint CRUD under `/v1/tenants/{tenant}/endpoints`. Every field is validated before it
//! is stored, with a message that says what to change; the secret leaves the API only in the
//! response to create.

use crate::error::{ApiError, Json};
use crate::page::{Page, PageQuery};
use crate::ApiState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gancho_core::{EndpointId, Filter, RetrySchedule, Secret, TenantId};
use gancho_store::model::{new_endpoint_id, new_secret, MAX_TIMEOUT_MS};
use gancho_store::Endpoint;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// How long a list waits for the live snapshot to reach the store's revision.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);
/// Most filters, channels or headers one endpoint may list.
const MAX_LIST: usize = 64;
/// Highest per-endpoint in-flight cap.
const MAX_IN_FLIGHT: u32 = 1000;
/// Profiles this build delivers.
const PROFILES: &[&str] = &["standard"];
/// Headers gancho sets itself; an endpoint may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "transfer-encoding",
    "connection",
    // Hop-by-hop: meaningful only between two hops, never set end to end.
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// An endpoint as the API returns it.
#[derive(Serialize)]
pub struct EndpointView {
    id: EndpointId,
    tenant: TenantId,
    url: String,
    description: String,
    filter_types: Vec<String>,
    channels: Vec<String>,
    disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    rate_limit_per_sec: Option<u32>,
    max_in_flight: Option<u32>,
    timeout_ms: u32,
    profile: String,
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_schedule: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl EndpointView {
    fn from(ep: Endpoint, show_secret: bool) -> Self {
        Self {
            secret: show_secret.then(|| ep.secret.clone()),
            id: ep.id,
            tenant: ep.tenant,
            url: ep.url,
            description: ep.description,
            filter_types: ep.filter_types,
            channels: ep.channels,
            disabled: ep.disabled,
            disabled_reason: ep.disabled_reason,
            rate_limit_per_sec: ep.rate_limit_per_sec,
            max_in_flight: ep.max_in_flight,
            timeout_ms: ep.timeout_ms,
            profile: ep.profile,
            headers: ep.headers,
            retry_schedule: ep.retry_schedule,
            created_at: ep.created_at,
            updated_at: ep.updated_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    id: Option<String>,
    url: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    filter_types: Vec<String>,
    #[serde(default)]
    channels: Vec<String>,
    rate_limit_per_sec: Option<u32>,
    max_in_flight: Option<u32>,
    timeout_ms: Option<u32>,
    profile: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    retry_schedule: Option<String>,
    /// A `whsec_` secret to use instead of a generated one (for migrations).
    secret: Option<String>,
    #[serde(default)]
    disabled: bool,
}

/// Distinguishes "absent" (`None`) from "null" (`Some(None)`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchEndpoint {
    url: Option<String>,
    description: Option<String>,
    filter_types: Option<Vec<String>>,
    channels: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    rate_limit_per_sec: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    max_in_flight: Option<Option<u32>>,
    timeout_ms: Option<u32>,
    profile: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "nullable")]
    retry_schedule: Option<Option<String>>,
    disabled: Option<bool>,
}

fn tenant_id(s: &str) -> Result<TenantId, ApiError> {
    TenantId::new(s).map_err(|e| ApiError::not_found(format!("no such tenant: {e}")))
}

fn endpoint_id(s: &str) -> Result<EndpointId, ApiError> {
    EndpointId::new(s).map_err(|e| ApiError::not_found(format!("no such endpoint: {e}")))
}

fn check_url(state: &ApiState, url: &str) -> Result<(), ApiError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| ApiError::invalid(format!("url {url:?} is not a valid URL")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if state.allow_http => {}
        Some("http") => {
            return Err(ApiError::invalid(format!(
                "endpoint url {url:?} is not https; use https, or set GANCHO_ALLOW_HTTP_ENDPOINTS=true for development"
            )))
        }
        _ => return Err(ApiError::invalid(format!("url {url:?} must start with https://"))),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // Never echo the URL back: its user info is a credential.
        return Err(ApiError::invalid(
            "url carries a user name or password (user:password@host); remove it and send credentials in \"headers\" instead, e.g. {\"authorization\": \"Basic ...\"}",
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| ApiError::invalid(format!("url {url:?} has no host")))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if !state.allow_private {
        let private = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => !gancho_core::net::is_public(ip),
            Err(_) => bare.eq_ignore_ascii_case("localhost") || bare.ends_with(".localhost"),
        };
        if private {
            return Err(ApiError::invalid(format!(
                "endpoint url {url:?} points at a private address; set GANCHO_ALLOW_PRIVATE_ENDPOINTS=true for development"
            )));
        }
    }
    if url.len() > 2048 {
        return Err(ApiError::invalid("url is longer than 2048 characters"));
    }
    Ok(())
}

fn check_filters(filters: &[String]) -> Result<(), ApiError> {
    if filters.len() > MAX_LIST {
        return Err(ApiError::invalid(format!(
            "filter_types lists {} filters; the limit is {MAX_LIST}",
            filters.len()
        )));
    }
    for f in filters {
        Filter::parse(f).map_err(|e| ApiError::invalid(format!("filter_types: {e}")))?;
    }
    Ok(())
}

fn check_channels(channels: &[String]) -> Result<(), ApiError> {
    if channels.len() > MAX_LIST {
        return Err(ApiError::invalid(format!(
            "channels lists {} channels; the limit is {MAX_LIST}",
            channels.len()
        )));
    }
    for c in channels {
        gancho_core::id::validate_endpoint(c).map_err(|_| {
            ApiError::invalid(format!(
                "channel {c:?} must be 1 to 64 letters, digits, '_' or '-'"
            ))
        })?;
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if headers.len() > MAX_LIST {
        return Err(ApiError::invalid(format!(
            "headers lists {} headers; the limit is {MAX_LIST}",
            headers.len()
        )));
    }
    for (k, v) in headers {
        http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            ApiError::invalid(format!("header name {k:?} is not a valid HTTP header name"))
        })?;
        http::HeaderValue::from_str(v).map_err(|_| {
            ApiError::invalid(format!(
                "header {k:?} has a value that is not valid in HTTP"
            ))
        })?;
        let lower = k.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") {
            return Err(ApiError::invalid(format!(
                "header {k:?} is set by gancho and cannot be overridden"
            )));
        }
    }
    Ok(())
}

fn check_settings(
    rate: Option<u32>,
    in_flight: Option<u32>,
    timeout_ms: u32,
    profile: &str,
    schedule: Option<&str>,
) -> Result<(), ApiError> {
    if rate == Some(0) {
        return Err(ApiError::invalid(
            "rate_limit_per_sec must be at least 1; omit it (or send null) for no limit",
        ));
    }
    if let Some(n) = in_flight {
        if n == 0 || n > MAX_IN_FLIGHT {
            return Err(ApiError::invalid(format!(
                "max_in_flight must be 1 to {MAX_IN_FLIGHT}"
            )));
        }
    }
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(ApiError::invalid(format!(
            "timeout_ms must be 1 to {MAX_TIMEOUT_MS}"
        )));
    }
    if !PROFILES.contains(&profile) {
        return Err(ApiError::invalid(format!(
            "profile {profile:?} is not supported; use one of: {}",
            PROFILES.join(", ")
        )));
    }
    if let Some(s) = schedule {
        RetrySchedule::parse(s).map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    Ok(())
}

pub async fn create(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Json(body): Json<CreateEndpoint>,
) -> Result<(StatusCode, axum::Json<EndpointView>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    let id = match body.id {
        Some(id) => EndpointId::new(id).map_err(|e| ApiError::invalid(e.to_string()))?,
        None => new_endpoint_id(),
    };
    check_url(&state, &body.url)?;
    check_filters(&body.filter_types)?;
    check_channels(&body.channels)?;
    check_headers(&body.headers)?;
    let profile = body.profile.unwrap_or_else(|| "standard".into());
    let timeout_ms = body
        .timeout_ms
        .unwrap_or(gancho_store::model::DEFAULT_TIMEOUT_MS);
    check_settings(
        body.rate_limit_per_sec,
        body.max_in_flight,
        timeout_ms,
        &profile,
        body.retry_schedule.as_deref(),
    )?;
    let secret = match body.secret {
        Some(s) => {
            Secret::parse(&s).map_err(|e| ApiError::invalid(e.to_string()))?;
            s
        }
        None => new_secret(),
    };
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is valid");
    let ep = Endpoint {
        id,
        tenant,
        url: body.url,
        description: body.description,
        filter_types: body.filter_types,
        channels: body.channels,
        disabled: body.disabled,
        disabled_reason: None,
        rate_limit_per_sec: body.rate_limit_per_sec,
        max_in_flight: body.max_in_flight,
        timeout_ms,
        profile,
        headers: body.headers,
        retry_schedule: body.retry_schedule,
        secret,
        previous_secrets: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    state.store.create_endpoint(&ep).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(EndpointView::from(ep, true)),
    ))
}

pub async fn list(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<EndpointView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if state.store.get_tenant(tenant.as_str()).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "tenant {:?} not found",
            tenant.as_str()
        )));
    }
    // From the live snapshot, caught up to every write made before this request: reading
    // each endpoint document from the bucket took 1.9 s for 10,000 endpoints.
    let (limit, after) = query.parse()?;
    let revision = state.store.revision().await?;
    if tokio::time::timeout(CATCH_UP, state.live.wait_for_revision(revision))
        .await
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the config snapshot is behind the store; retry shortly",
        ));
    }
    let snapshot = state.live.load_full();
    let list = snapshot.endpoints(tenant.as_str());
    // Sorted by id: the page starts after the cursor's id.
    let start = after
        .as_deref()
        .map_or(0, |a| list.partition_point(|ep| ep.config.id.as_str() <= a));
    let rest = &list[start..];
    let data: Vec<EndpointView> = rest
        .iter()
        .take(limit)
        .map(|ep| EndpointView::from(ep.config.clone(), false))
        .collect();
    let next = (rest.len() > limit)
        .then(|| data.last().map(|e| crate::page::cursor(e.id.as_str())))
        .flatten();
    Ok(axum::Json(Page { data, next }))
}

pub async fn get(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<axum::Json<EndpointView>, ApiError> {
    let (tenant, id) = (tenant_id(&tenant)?, endpoint_id(&id)?);
    state
        .store
        .get_endpoint(tenant.as_str(), id.as_str())
        .await?
        .map(|e| axum::Json(EndpointView::from(e, false)))
        .ok_or_else(|| ApiError::not_found(format!("endpoint {:?} not found", id.as_str())))
}

pub async fn update(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
    Json(body): Json<PatchEndpoint>,
) -> Result<axum::Json<EndpointView>, ApiError> {
    let (tenant, id) = (tenant_id(&tenant)?, endpoint_id(&id)?);
    if let Some(url) = &body.url {
        check_url(&state, url)?;
    }
    if let Some(f) = &body.filter_types {
        check_filters(f)?;
    }
    if let Some(c) = &body.channels {
        check_channels(c)?;
    }
    if let Some(h) = &body.headers {
        check_headers(h)?;
    }
    let mut invalid = None;
    let ep = state
        .store
        .update_endpoint(tenant.as_str(), id.as_str(), |ep| {
            if let Some(v) = &body.url {
                ep.url = v.clone();
            }
            if let Some(v) = &body.description {
                ep.description = v.clone();
            }
            if let Some(v) = &body.filter_types {
                ep.filter_types = v.clone();
            }
            if let Some(v) = &body.channels {
                ep.channels = v.clone();
            }
            if let Some(v) = body.rate_limit_per_sec {
                ep.rate_limit_per_sec = v;
            }
            if let Some(v) = body.max_in_flight {
                ep.max_in_flight = v;
            }
            if let Some(v) = body.timeout_ms {
                ep.timeout_ms = v;
            }
            if let Some(v) = &body.profile {
                ep.profile = v.clone();
            }
            if let Some(v) = &body.headers {
                ep.headers = v.clone();
            }
            if let Some(v) = &body.retry_schedule {
                ep.retry_schedule = v.clone();
            }
            if let Some(v) = body.disabled {
                ep.disabled = v;
                if !v {
                    ep.disabled_reason = None;
                }
            }
            if let Err(e) = check_settings(
                ep.rate_limit_per_sec,
                ep.max_in_flight,
                ep.timeout_ms,
                &ep.profile,
                ep.retry_schedule.as_deref(),
            ) {
                let msg = e.message.clone();
                invalid = Some(e);
                return Err(gancho_store::StoreError::Invalid(msg));
            }
            Ok(())
        })
        .await;
    match ep {
        Ok(ep) => Ok(axum::Json(EndpointView::from(ep, false))),
        Err(e) => Err(invalid.unwrap_or_else(|| e.into())),
    }
}

pub async fn delete(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (tenant, id) = (tenant_id(&tenant)?, endpoint_id(&id)?);
    state
        .store
        .delete_endpoint(tenant.as_str(), id.as_str())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Default time a rotated-out secret keeps signing beside the new one.
const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Longest grace a rotation may ask for.
const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Rotated-out secrets kept at once; the oldest goes first.
const MAX_PREVIOUS: usize = 5;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the old secret keeps signing, e.g. "24h" (default), "30m", "0s".
    grace: Option<String>,
}

/// `POST .../endpoints/{id}/secret/rotate`: a new secret, returned once; the old one keeps
/// signing beside it until now + grace, and stops at that moment.
pub async fn rotate(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Result<axum::Json<EndpointView>, ApiError> {
    let (tenant, id) = (tenant_id(&tenant)?, endpoint_id(&id)?);
    // The body is optional: none means the default grace.
    let body: Rotate = if raw.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        serde_json::from_slice(&raw).map_err(|e| {
            ApiError::bad_request(format!("body must be {{\"grace\": \"24h\"}} or empty: {e}"))
        })?
    };
    let grace = match body.grace.as_deref() {
        None => DEFAULT_GRACE,
        Some(g) => match humantime::parse_duration(g.trim()) {
            Ok(d) if d <= MAX_GRACE => d,
            _ => {
                return Err(ApiError::invalid(format!(
                    "grace {g:?} must be a duration up to 7 days, like \"24h\", \"30m\" or \"0s\""
                )))
            }
        },
    };
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is valid");
    let expires_at = now + grace;
    let ep = state
        .store
        .update_endpoint(tenant.as_str(), id.as_str(), |ep| {
            ep.previous_secrets.retain(|p| p.expires_at > now);
            if expires_at > now {
                ep.previous_secrets
                    .push(gancho_store::model::PreviousSecret {
                        secret: std::mem::take(&mut ep.secret),
                        expires_at,
                    });
            }
            while ep.previous_secrets.len() > MAX_PREVIOUS {
                ep.previous_secrets.remove(0);
            }
            ep.secret = new_secret();
            Ok(())
        })
        .await?;
    Ok(axum::Json(EndpointView::from(ep, true)))
}
