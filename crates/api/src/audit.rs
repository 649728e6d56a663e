//! The audit log ([`gancho_store::audit`]): every change made through `/v1` is recorded
//! once it succeeded, with who made it ([`crate::auth::Principal`]), what and when, and the
//! names of the fields its body set (never their values); and read back, newest first, per
//! tenant (`GET /v1/tenants/{tenant}/audit-log`) or across tenants for the admin
//! (`GET /v1/audit-log`).
//!
//! Which requests are changes, and what each is, is one table: [`change_of`]. A request
//! refused (any answer but 2xx) changed nothing and is not recorded.

use crate::auth::Principal;
use crate::error::{tenant_id, unavailable, ApiError, Path, Query};
use crate::history::LogQuery;
use crate::page::{cursor, Page};
use crate::ApiState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use gancho_store::audit::{Record, RESOURCES};
use gancho_store::log::Log;
use http::Method;
use serde::Deserialize;
use tracing::warn;

/// Where a change's resource id comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Id {
    /// The path's `{id}` or `{name}` (the tenant's own id for a tenant).
    Path,
    /// The answer's `id`: the resource is made by the request.
    Answer,
}

/// What a successful request changed.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Change {
    resource: &'static str,
    action: &'static str,
    id: Id,
}

const fn change(resource: &'static str, action: &'static str, id: Id) -> Option<Change> {
    Some(Change {
        resource,
        action,
        id,
    })
}

/// The table: what `method` on the route `route` (as declared) changes, when it succeeds.
/// Reads, test events and event ingest change nothing kept and are not recorded.
fn change_of(method: &Method, route: &str) -> Option<Change> {
    let route = route.strip_prefix("/v1").unwrap_or(route);
    match (method.as_str(), route) {
        ("POST", "/tenants") => change("tenant", "created", Id::Answer),
        ("PATCH", "/tenants/{tenant}") => change("tenant", "updated", Id::Path),
        ("DELETE", "/tenants/{tenant}") => change("tenant", "deleted", Id::Path),
        ("POST", "/tenants/{tenant}/api-keys") => change("api_key", "created", Id::Answer),
        ("DELETE", "/tenants/{tenant}/api-keys/{id}") => change("api_key", "revoked", Id::Path),
        ("POST", "/tenants/{tenant}/portal-sessions") => {
            change("portal_session", "minted", Id::Answer)
        }
        ("DELETE", "/tenants/{tenant}/portal-sessions/{id}") => {
            change("portal_session", "ended", Id::Path)
        }
        ("POST", "/tenants/{tenant}/endpoints") => change("endpoint", "created", Id::Answer),
        // `enabled` or `disabled` instead when the body sets `disabled` ([`action`]).
        ("PATCH", "/tenants/{tenant}/endpoints/{id}") => change("endpoint", "updated", Id::Path),
        ("DELETE", "/tenants/{tenant}/endpoints/{id}") => change("endpoint", "deleted", Id::Path),
        ("POST", "/tenants/{tenant}/endpoints/{id}/secret/rotate") => {
            change("endpoint", "secret_rotated", Id::Path)
        }
        ("POST", "/tenants/{tenant}/endpoints/{id}/pause") => {
            change("endpoint", "paused", Id::Path)
        }
        ("POST", "/tenants/{tenant}/endpoints/{id}/resume") => {
            change("endpoint", "resumed", Id::Path)
        }
        ("POST", "/tenants/{tenant}/endpoints/{id}/recover") => {
            change("job", "recover", Id::Answer)
        }
        ("POST", "/tenants/{tenant}/endpoints/{id}/replay") => change("job", "replay", Id::Answer),
        ("POST", "/tenants/{tenant}/dead-letters/redrive") => change("job", "redrive", Id::Answer),
        ("DELETE", "/tenants/{tenant}/jobs/{id}") => change("job", "cancelled", Id::Path),
        // `created` instead when the answer is 201 ([`action`]).
        ("PUT", "/tenants/{tenant}/event-types/{name}") => {
            change("event_type", "updated", Id::Path)
        }
        ("DELETE", "/tenants/{tenant}/event-types/{name}") => {
            change("event_type", "deleted", Id::Path)
        }
        _ => None,
    }
}

/// The action, where the body or the answer tells it apart from the table's.
fn action(
    change: Change,
    fields: &serde_json::Map<String, serde_json::Value>,
    created: bool,
) -> &'static str {
    match (change.resource, change.action) {
        ("endpoint", "updated") => match fields.get("disabled") {
            Some(serde_json::Value::Bool(false)) => "enabled",
            Some(serde_json::Value::Bool(true)) => "disabled",
            _ => "updated",
        },
        ("event_type", "updated") if created => "created",
        (_, action) => action,
    }
}

/// The names of the fields a body sets: its top-level keys, when they look like the API's
/// field names (anything else is left out rather than recorded).
fn field_names(body: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let mut names: Vec<String> = body
        .keys()
        .filter(|k| {
            (1..=64).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .take(64)
        .cloned()
        .collect();
    names.sort();
    names
}

/// The tenant and the resource id in `path`, by the route's `{tenant}` and `{id}`/`{name}`.
fn path_params(route: &str, path: &str) -> (Option<String>, Option<String>) {
    let (mut tenant, mut id) = (None, None);
    for (template, segment) in route.split('/').zip(path.split('/')) {
        match template {
            "{tenant}" => tenant = Some(segment.to_owned()),
            "{id}" | "{name}" => id = Some(segment.to_owned()),
            _ => {}
        }
    }
    (tenant, id)
}

/// The middleware on every `/v1` route (inside [`crate::auth::authorize`]): records each
/// successful change in the audit log before the answer goes out, so that a client that got
/// its 2xx finds the record. A record that cannot be stored is logged and counted
/// (`gancho_audit_unrecorded_total`); the change stands and its answer is not turned into an
/// error, which would invite the client to make it twice.
pub async fn record(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let (Some(change), Some(principal)) = (
        change_of(req.method(), &route),
        req.extensions().get::<Principal>().cloned(),
    ) else {
        return next.run(req).await;
    };
    let request = format!("{} {}", req.method(), req.uri().path());
    let (tenant, path_id) = path_params(&route, req.uri().path());
    // The body is in memory already (`body_within`).
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let fields = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes)
        .unwrap_or_default();
    let response = next.run(Request::from_parts(parts, bytes.into())).await;
    if !response.status().is_success() {
        return response;
    }
    let created = response.status() == http::StatusCode::CREATED;
    let (response, answer_id) = match change.id {
        Id::Path => (response, None),
        Id::Answer => {
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned));
            (Response::from_parts(parts, bytes.into()), id)
        }
    };
    // A tenant made by the request is named by the answer.
    let tenant = tenant.or_else(|| {
        (change.resource == "tenant")
            .then(|| answer_id.clone())
            .flatten()
    });
    let resource_id = match change.resource {
        "tenant" => tenant.clone(),
        _ => answer_id.or(path_id),
    };
    let (Some(tenant), Some(resource_id)) = (tenant, resource_id) else {
        warn!(%request, "A change with no tenant or resource id in its path or answer; not recorded.");
        metrics::counter!(gancho_telemetry::names::AUDIT_UNRECORDED).increment(1);
        return response;
    };
    let record = Record {
        id: gancho_store::model::random_id("aud_", 20),
        at: time::OffsetDateTime::now_utc(),
        tenant,
        actor: principal.actor(),
        resource: change.resource.to_owned(),
        resource_id,
        action: action(change, &fields, created).to_owned(),
        fields: field_names(&fields),
        request,
    };
    if let Err(e) =
        gancho_store::audit::write(&state.layout.js, &state.layout.subjects, &record).await
    {
        warn!(error = %e, tenant = %record.tenant, resource = %record.resource, action = %record.action, "Cannot record a change in the audit log.");
        metrics::counter!(gancho_telemetry::names::AUDIT_UNRECORDED).increment(1);
    }
    response
}

/// `?resource=&actor=&limit=&cursor=&since=&until=`.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only changes to `tenant`, `endpoint`, `api_key`, `event_type`, `portal_session` or
    /// `job`.
    pub resource: Option<String>,
    /// Only changes by `admin`, or by this API key's or portal session's id.
    pub actor: Option<String>,
    /// Records per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The `next` value of the previous page; leave out for the first page.
    pub cursor: Option<String>,
    /// Only changes at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only changes before this time (RFC 3339).
    pub until: Option<String>,
}

/// One tenant's changes (or every tenant's), newest first.
async fn read(
    state: &ApiState,
    tenant: Option<&str>,
    q: AuditQuery,
) -> Result<axum::Json<Page<Record>>, ApiError> {
    let resource = match q.resource.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) if RESOURCES.contains(&r) => Some(r.to_owned()),
        Some(r) => {
            return Err(ApiError::bad_request(format!(
                "resource {r:?} is not one the audit log records; use one of {}",
                RESOURCES.join(", ")
            )))
        }
    };
    let actor = q.actor.as_deref().map(str::trim).filter(|a| !a.is_empty());
    let log = Log::new(
        state.layout.js.clone(),
        state.layout.subjects.audit_stream(),
    );
    let window = LogQuery {
        limit: q.limit,
        cursor: q.cursor,
        since: q.since,
        until: q.until,
        ..Default::default()
    };
    let (lo, hi, limit) = crate::history::bounds(&log, &window).await?;
    let filter = state
        .layout
        .subjects
        .audit_filter(tenant, resource.as_deref());
    let page = log
        .newest_first(&filter, lo, hi, limit, |r| match actor {
            None => true,
            Some(who) => {
                serde_json::from_slice::<Record>(&r.payload).is_ok_and(|rec| rec.actor.is(who))
            }
        })
        .await
        .map_err(unavailable)?;
    let data = page
        .records
        .iter()
        .filter_map(|r| serde_json::from_slice::<Record>(&r.payload).ok())
        .collect();
    Ok(axum::Json(Page {
        data,
        next: page.next.map(|n| cursor(&n.to_string())),
    }))
}

/// A tenant's audit log: every change to it and its endpoints, API keys, event types, portal
/// sessions and jobs, with who made it, newest first. Kept after the tenant is deleted.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit-log", tag = "audit", operation_id = "list_tenant_audit_log",
    params(("tenant" = String, Path, description = "The tenant id."), AuditQuery),
    responses(
        (status = 200, description = "A page of changes, newest first.", body = Page<Record>),
        (status = 400, description = "A bad filter, time or cursor.", body = crate::error::ErrorBody),
    ))]
pub async fn tenant_log(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<Page<Record>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    read(&state, Some(tenant.as_str()), q).await
}

/// Every tenant's changes, newest first (the admin token only).
#[utoipa::path(get, path = "/v1/audit-log", tag = "audit", operation_id = "list_audit_log",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of changes, newest first.", body = Page<Record>),
        (status = 400, description = "A bad filter, time or cursor.", body = crate::error::ErrorBody),
    ))]
pub async fn admin_log(
    State(state): State<ApiState>,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<Page<Record>>, ApiError> {
    read(&state, None, q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_route_is_in_the_table_and_reads_are_not() {
        let changes = [
            ("POST", "/v1/tenants", "tenant", "created"),
            (
                "PATCH",
                "/v1/tenants/{tenant}/endpoints/{id}",
                "endpoint",
                "updated",
            ),
            (
                "POST",
                "/v1/tenants/{tenant}/endpoints/{id}/secret/rotate",
                "endpoint",
                "secret_rotated",
            ),
            (
                "DELETE",
                "/v1/tenants/{tenant}/jobs/{id}",
                "job",
                "cancelled",
            ),
        ];
        for (method, route, resource, act) in changes {
            let c = change_of(&method.parse().unwrap(), route).unwrap();
            assert_eq!((c.resource, c.action), (resource, act));
        }
        for (method, route) in [
            ("GET", "/v1/tenants/{tenant}/endpoints"),
            ("POST", "/v1/tenants/{tenant}/events"),
            ("POST", "/v1/tenants/{tenant}/endpoints/{id}/test"),
        ] {
            assert_eq!(change_of(&method.parse().unwrap(), route), None);
        }
    }

    #[test]
    fn only_field_names_are_kept_and_enabling_is_named() {
        let body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"url":"https://x.example/?token=s3cret","disabled":false,"Weird Key!":1}"#,
        )
        .unwrap();
        assert_eq!(field_names(&body), ["disabled", "url"]);
        let c = change_of(&Method::PATCH, "/v1/tenants/{tenant}/endpoints/{id}").unwrap();
        assert_eq!(action(c, &body, false), "enabled");
        let (tenant, id) = path_params(
            "/v1/tenants/{tenant}/endpoints/{id}/pause",
            "/v1/tenants/acme/endpoints/ep1/pause",
        );
        assert_eq!(
            (tenant.as_deref(), id.as_deref()),
            (Some("acme"), Some("ep1"))
        );
    }
}
