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
use async_nats::jetstream::kv;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use gancho_store::audit::{Bucket, Intent, Record, RESOURCES};
use gancho_store::log::Log;
use http::Method;
use serde::Deserialize;
use tracing::{info, warn};

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
/// its 2xx finds the record. Before the request runs, the change is written down as under way
/// ([`Intent`]), or the request is refused with 503 and nothing is changed: a change is never
/// made without a trace. The intent is removed once the record is stored, or when the request
/// is refused; one left behind (the api died between the change and its record, or JetStream
/// did not take the record) is settled by [`catch_up`]. A record that cannot be stored is
/// logged and counted (`gancho_audit_unrecorded_total`) and the change's answer stands:
/// turning it into an error would invite the client to make the change twice.
pub async fn record(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse as _;
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
    let (path_tenant, path_id) = path_params(&route, req.uri().path());
    // The body is in memory already (`body_within`).
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let fields = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes)
        .unwrap_or_default();
    let (record, tenant, known_id) =
        draft(change, &principal, request, path_tenant, path_id, &fields);
    // A request without a tenant, or with ids no key can hold, changes nothing (it is
    // refused); no intent for it.
    let key_safe =
        tenant.as_deref().is_some_and(key_token_ok) && known_id.as_deref().is_none_or(key_token_ok);
    let intent = match &tenant {
        Some(tenant) if key_safe => {
            match intent(&state, record.clone(), tenant, known_id.as_deref()).await {
                Ok(intent) => Some(intent),
                Err(e) => {
                    warn!(error = %e, "Cannot write down a change before making it; refusing it.");
                    return ApiError::new(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the audit log cannot take this change now, so it was not made; try again in a few seconds",
                )
                .into_response();
                }
            }
        }
        _ => None,
    };
    let response = next.run(Request::from_parts(parts, bytes.into())).await;
    if !response.status().is_success() {
        if let Some(intent) = &intent {
            let _ = state.layout.audit_pending.delete(&intent.record.id).await;
        }
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
    if tenant.is_none() {
        warn!(request = %record.request, "A change with no tenant in its path or body; not recorded.");
        metrics::counter!(gancho_telemetry::names::AUDIT_UNRECORDED).increment(1);
        return response;
    }
    finish(&state, record, answer_id, action(change, &fields, created)).await;
    response
}

/// Whether `s` can stand in a KV key: dot-separated tokens of letters, digits, `-`, `_`
/// and `=`.
fn key_token_ok(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.split('.').all(|t| !t.is_empty())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// The record a request would make if it succeeds, its tenant and the resource's id when
/// known before it runs (a resource made under an id the request gives, a tenant or an
/// endpoint, is known now).
fn draft(
    change: Change,
    principal: &Principal,
    request: String,
    path_tenant: Option<String>,
    path_id: Option<String>,
    fields: &serde_json::Map<String, serde_json::Value>,
) -> (Record, Option<String>, Option<String>) {
    let body_id = fields.get("id").and_then(|v| v.as_str()).map(str::to_owned);
    let tenant = match change.resource {
        "tenant" => path_tenant.or_else(|| body_id.clone()),
        _ => path_tenant,
    };
    let known_id = match (change.resource, change.id) {
        ("tenant", _) => tenant.clone(),
        (_, Id::Path) => path_id,
        (_, Id::Answer) => body_id,
    };
    let record = Record {
        id: gancho_store::model::random_id("aud_", 20),
        at: time::OffsetDateTime::now_utc(),
        tenant: tenant.clone().unwrap_or_default(),
        actor: principal.actor(),
        resource: change.resource.to_owned(),
        resource_id: known_id.clone().unwrap_or_default(),
        action: action(change, fields, false).to_owned(),
        fields: field_names(fields),
        request,
    };
    (record, tenant, known_id)
}

/// Stores the record of a change made (its id from the answer when the request made it),
/// then removes its intent; when JetStream does not take it, the intent stays for the
/// catch-up.
async fn finish(state: &ApiState, mut record: Record, answer_id: Option<String>, action: &str) {
    if let Some(id) = answer_id {
        record.resource_id = id;
    }
    action.clone_into(&mut record.action);
    match gancho_store::audit::write(&state.layout.js, &state.layout.subjects, &record).await {
        Ok(()) => {
            let _ = state.layout.audit_pending.delete(&record.id).await;
        }
        Err(e) => {
            warn!(error = %e, tenant = %record.tenant, resource = %record.resource, action = %record.action, "Cannot record a change in the audit log now; it is recorded later.");
            metrics::counter!(gancho_telemetry::names::AUDIT_UNRECORDED).increment(1);
        }
    }
}

/// Where `resource` of `tenant` (with `id`, when known) lives: its bucket, its key, and the
/// prefix a new one's key appears under.
fn place(resource: &str, tenant: &str, id: Option<&str>) -> (Bucket, Option<String>, String) {
    use gancho_core::Subjects;
    match resource {
        "tenant" => (
            Bucket::Config,
            Some(Subjects::tenant_key(tenant)),
            "tenants.".into(),
        ),
        "endpoint" => (
            Bucket::Config,
            id.map(|id| Subjects::endpoint_key(tenant, id)),
            format!("endpoints.{tenant}."),
        ),
        "api_key" => (
            Bucket::Config,
            id.map(|id| Subjects::api_key_key(tenant, id)),
            format!("api_keys.{tenant}."),
        ),
        "event_type" => (
            Bucket::Config,
            id.map(|id| Subjects::event_type_key(tenant, id)),
            format!("event_types.{tenant}."),
        ),
        "portal_session" => (
            Bucket::Portal,
            id.map(|id| gancho_store::portal::record_key(tenant, id)),
            format!("sessions.{tenant}."),
        ),
        _ => (
            Bucket::Jobs,
            id.map(|id| gancho_store::jobs::key(tenant, id)),
            format!("{tenant}."),
        ),
    }
}

fn bucket(state: &ApiState, b: Bucket) -> &kv::Store {
    match b {
        Bucket::Config => &state.layout.config,
        Bucket::Jobs => &state.layout.jobs,
        Bucket::Portal => &state.layout.portal,
    }
}

/// The revision of `key` (a deletion's included; 0 when it never was).
async fn revision(kv: &kv::Store, key: &str) -> Result<u64, String> {
    Ok(kv
        .entry(key)
        .await
        .map_err(|e| e.to_string())?
        .map_or(0, |e| e.revision))
}

/// Writes down `record` as under way, with where to look for its change afterwards.
async fn intent(
    state: &ApiState,
    record: Record,
    tenant: &str,
    id: Option<&str>,
) -> Result<Intent, String> {
    let (b, key, prefix) = place(&record.resource, tenant, id);
    let kv = bucket(state, b);
    let before = match &key {
        Some(key) => revision(kv, key).await?,
        None => {
            kv.stream
                .get_info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .last_sequence
        }
    };
    let intent = Intent {
        record,
        owner: state.process_id.to_string(),
        bucket: b,
        key,
        prefix,
        before,
    };
    let value = serde_json::to_vec(&intent).map_err(|e| e.to_string())?;
    state
        .layout
        .audit_pending
        .put(&intent.record.id, value.into())
        .await
        .map_err(|e| e.to_string())?;
    Ok(intent)
}

/// How often the catch-up looks for changes left behind.
const CATCH_UP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// A change under way whose api is alive is left to it for this long.
const OWNER_PATIENCE: time::Duration = time::Duration::seconds(60);

/// At start-up and every minute: settles each change left under way by an api that died (or
/// one that has been under way for a minute): made (its resource's record moved past where it
/// was), it is recorded unless its record is there already; not made, it is dropped.
pub async fn catch_up(state: ApiState, cancel: tokio_util::sync::CancellationToken) {
    loop {
        match settle_all(&state).await {
            Ok(0) => {}
            Ok(n) => info!(
                records = n,
                "Recorded changes whose audit records were missing."
            ),
            Err(e) => {
                warn!(error = %e, "Cannot look for changes missing from the audit log; trying again in a minute.")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CATCH_UP_EVERY) => {}
        }
    }
}

/// One pass of [`catch_up`]: how many records it wrote.
pub async fn settle_all(state: &ApiState) -> Result<usize, String> {
    use futures::TryStreamExt as _;
    let pending = &state.layout.audit_pending;
    let ids: Vec<String> = pending
        .keys()
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut written = 0;
    for id in ids {
        let Some(entry) = pending.entry(&id).await.map_err(|e| e.to_string())? else {
            continue;
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let Ok(intent) = serde_json::from_slice::<Intent>(&entry.value) else {
            let _ = pending.delete(&id).await;
            continue;
        };
        let owner_alive = state
            .layout
            .apis
            .entry(&intent.owner)
            .await
            .ok()
            .flatten()
            .is_some_and(|e| e.operation == kv::Operation::Put);
        if owner_alive && time::OffsetDateTime::now_utc() - intent.record.at < OWNER_PATIENCE {
            continue;
        }
        if let Some(record) = made(state, intent).await? {
            if !recorded(state, &record).await? {
                gancho_store::audit::write(&state.layout.js, &state.layout.subjects, &record)
                    .await
                    .map_err(|e| e.to_string())?;
                metrics::counter!(gancho_telemetry::names::AUDIT_CAUGHT_UP).increment(1);
                written += 1;
            }
        }
        pending.delete(&id).await.map_err(|e| e.to_string())?;
    }
    Ok(written)
}

/// The record of `intent` when its change was made: its resource's record moved past
/// `before` (for a job's cancelling, the job is cancelled; for a resource made under a new
/// id, one key appeared under the prefix, whose id the record takes).
async fn made(state: &ApiState, intent: Intent) -> Result<Option<Record>, String> {
    let kv = bucket(state, intent.bucket);
    let mut record = intent.record;
    if let Some(key) = &intent.key {
        if revision(kv, key).await? == intent.before {
            return Ok(None);
        }
        if record.resource == "job" && record.action == "cancelled" {
            let cancelled = kv
                .get(key)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
                .is_some_and(|job| job["state"] == "cancelled");
            if !cancelled {
                return Ok(None);
            }
        }
        return Ok(Some(record));
    }
    // Made under a new id: the keys that appeared under the prefix since.
    let log = Log::new(state.layout.js.clone(), kv.stream_name.clone());
    let filter = format!("{}{}>", kv.prefix, intent.prefix);
    let end = log.end().await.map_err(|e| e.to_string())?;
    let appeared: std::collections::BTreeSet<String> = log
        .range(&filter, intent.before + 1, end, 1_000)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|r| {
            r.subject
                .strip_prefix(&format!("{}{}", kv.prefix, intent.prefix))
                .map(str::to_owned)
        })
        .collect();
    match appeared.len() {
        0 => Ok(None),
        // Several made at once: which one is this change's is not known.
        1 => {
            record.resource_id = appeared.into_iter().next().unwrap_or_default();
            Ok(Some(record))
        }
        _ => Ok(Some(record)),
    }
}

/// Whether the audit log holds `record` already (its api stored it, then died before
/// removing the intent).
async fn recorded(state: &ApiState, record: &Record) -> Result<bool, String> {
    let log = Log::new(
        state.layout.js.clone(),
        state.layout.subjects.audit_stream(),
    );
    let from = log
        .sequence_at(record.at - time::Duration::seconds(1))
        .await
        .map_err(|e| e.to_string())?;
    let end = log.end().await.map_err(|e| e.to_string())?;
    let filter = state
        .layout
        .subjects
        .audit(&record.tenant, &record.resource);
    Ok(log
        .range(&filter, from, end, 100_000)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .any(|r| {
            serde_json::from_slice::<Record>(&r.payload).is_ok_and(|stored| stored.id == record.id)
        }))
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
