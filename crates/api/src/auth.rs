//! Who is calling, and may they. Every `/v1` request carries `Authorization: Bearer <token>`:
//! the admin token (compared in constant time) may do anything on any tenant; a tenant's API
//! key (`gk_...`, looked up by its SHA-256) reaches only its own tenant and only the routes
//! its scopes allow (`manage` includes `read`). The answer to a key on another tenant's
//! resource is 404, as if it did not exist; on an admin route 403; on a route that needs a
//! scope it lacks, 403 naming the scope; no token or an unknown or revoked one, 401. Tokens
//! are never logged.
//!
//! What each route needs is one table, [`need`]. Lookups are cached per process for
//! [`CACHE_TTL`], so a revoked key stops working on every api process within that time.

use crate::error::ApiError;
use crate::ApiState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use gancho_store::audit::{Actor, ActorKind};
use gancho_store::model::api_key_hash;
use gancho_store::Scope;
use http::Method;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How long a key lookup is reused. A revoked key is refused everywhere within this.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Cached lookups per process; past it the cache starts over (bounds memory under a flood of
/// distinct keys).
const CACHE_MAX: usize = 10_000;
/// A key's `last_used_at` is written at most this often per process.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The caller, as the handlers see it (a request extension).
#[derive(Clone, Debug, PartialEq)]
pub enum Principal {
    Admin,
    Key {
        tenant: String,
        id: String,
        scopes: Vec<Scope>,
    },
    /// A portal session (`gps_...`), started from a link: `read` or `manage` on its tenant.
    Session {
        tenant: String,
        id: String,
        scope: Scope,
        /// Who minted its link.
        minted_by: Option<Actor>,
    },
}

impl Principal {
    /// The caller as the audit log names it.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Admin => Actor::admin(),
            Principal::Key { id, .. } => Actor::api_key(id),
            Principal::Session { id, minted_by, .. } => Actor {
                kind: ActorKind::PortalSession,
                id: Some(id.clone()),
                minted_by: minted_by.clone().map(Box::new),
            },
        }
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Need {
    /// The admin token.
    Admin,
    /// The admin token, or a key or portal session of the tenant in the path with this scope
    /// (`None`: any key or session of that tenant).
    Tenant(Option<Scope>),
    /// The admin token, or an API key (not a portal session) of the tenant with this scope:
    /// a session may not make or end sessions.
    TenantKey(Scope),
}

/// The access table: what `method` on the route `path` (as declared, `{tenant}` and all)
/// needs. A route missing here needs the admin token.
pub fn need(method: &Method, path: &str) -> Need {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let read_or_manage = if method == Method::GET {
        Scope::Read
    } else {
        Scope::Manage
    };
    match path {
        "/tenants/{tenant}" if method == Method::GET => Need::Tenant(None),
        p if p.starts_with("/tenants/{tenant}/portal-sessions") => Need::TenantKey(Scope::Manage),
        // Reading needs `read` (which `manage` includes); every other method (writes, test
        // events, recover, replay, redrive, cancelling a job) needs `manage`.
        p if p.starts_with("/tenants/{tenant}/endpoints")
            || p.starts_with("/tenants/{tenant}/event-types")
            || p.starts_with("/tenants/{tenant}/dead-letters")
            || p.starts_with("/tenants/{tenant}/jobs") =>
        {
            Need::Tenant(Some(read_or_manage))
        }
        // The delivery log of one event, the tenant's, and the tenant's audit log.
        "/tenants/{tenant}/events/{id}"
        | "/tenants/{tenant}/attempts"
        | "/tenants/{tenant}/audit-log"
            if method == Method::GET =>
        {
            Need::Tenant(Some(Scope::Read))
        }
        // Sending events: a `manage` key may not forge events to its own receivers.
        "/tenants/{tenant}/events" | "/tenants/{tenant}/events/batch" if method == Method::POST => {
            Need::Tenant(Some(Scope::Publish))
        }
        _ => Need::Admin,
    }
}

/// Recent key lookups: SHA-256 -> (when looked up, the key's principal or `None` if unknown).
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (Instant, Option<Principal>)>>,
    touched: Mutex<HashMap<String, Instant>>,
}

impl KeyCache {
    /// The principal of an API key (`gk_...`) or a portal session (`gps_...`), `None` for an
    /// unknown, revoked, ended or expired one; from the cache when looked up lately.
    async fn lookup(
        &self,
        state: &ApiState,
        presented: &str,
    ) -> Result<Option<Principal>, ApiError> {
        let hash = api_key_hash(presented);
        if let Some((at, p)) = self.lock_entries().get(&hash) {
            if at.elapsed() < CACHE_TTL {
                return Ok(p.clone());
            }
        }
        let found = if presented.starts_with("gk_") {
            state
                .store
                .find_api_key(&hash)
                .await?
                .map(|k| Principal::Key {
                    tenant: k.tenant.as_str().to_owned(),
                    id: k.id,
                    scopes: k.scopes,
                })
        } else if presented.starts_with("gps_") {
            state.portal.find(&hash).await?.map(|s| Principal::Session {
                tenant: s.tenant,
                id: s.id,
                scope: s.scope,
                minted_by: s.minted_by,
            })
        } else {
            None
        };
        let mut entries = self.lock_entries();
        if entries.len() >= CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (Instant::now(), found.clone()));
        Ok(found)
    }

    /// Lookups held now (at most [`CACHE_MAX`]).
    pub fn entries(&self) -> usize {
        self.lock_entries().len()
    }

    fn lock_entries(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<Principal>)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this process should write `last_used_at` for key `id` now.
    fn should_touch(&self, id: &str) -> bool {
        let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        if touched.len() >= CACHE_MAX {
            touched.clear();
        }
        match touched.get(id) {
            Some(at) if at.elapsed() < TOUCH_EVERY => false,
            _ => {
                touched.insert(id.to_owned(), Instant::now());
                true
            }
        }
    }
}

/// The middleware on every `/v1` route: authenticates, applies [`need`], and hands the
/// [`Principal`] to the handler.
pub async fn authorize(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing \"Authorization: Bearer <token>\" header: send the admin token or an API key",
            )
        })?;
    let is_admin: bool = presented
        .as_bytes()
        .ct_eq(state.admin_token.as_bytes())
        .into();
    let principal = if is_admin {
        Principal::Admin
    } else {
        let found = state.keys.lookup(&state, presented).await?;
        found.ok_or_else(|| {
            if presented.starts_with("gps_") {
                ApiError::unauthorized(
                    "the portal session has ended or expired; open a new portal link",
                )
            } else {
                ApiError::unauthorized("the bearer token is not valid: unknown or revoked API key")
            }
        })?
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    check(
        &principal,
        need(req.method(), &route),
        path_tenant(req.uri().path()),
    )?;
    // One credential's rate: API keys and portal sessions, and the admin token when its
    // operator limits it.
    let limited = match &principal {
        Principal::Admin => state.admin_rate_limit.map(|rate| ("admin", Some(rate))),
        Principal::Key { id, tenant, .. } | Principal::Session { id, tenant, .. } => {
            // The tenant's own rate, when it has one; else the api's.
            let rate = state
                .live
                .load()
                .accounts
                .get(tenant.as_str())
                .and_then(|t| t.api_rate_limit_per_sec);
            Some((id.as_str(), rate))
        }
    };
    if let Some((id, rate)) = limited {
        if let Err(refused) = state.request_limits.take(id, rate) {
            metrics::counter!(
                gancho_telemetry::names::API_RATE_LIMITED,
                "group" => route_group(&route)
            )
            .increment(1);
            return Err(refused);
        }
    }
    if let Principal::Key { tenant, id, .. } = &principal {
        if state.keys.should_touch(id) {
            let (store, tenant, id) = (state.store.clone(), tenant.clone(), id.clone());
            tokio::spawn(async move {
                let _ = store
                    .touch_api_key(&tenant, &id, time::OffsetDateTime::now_utc())
                    .await;
            });
        }
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

/// The resource group of a route template, for metrics: the segment after the tenant
/// (`endpoints`, `attempts`, ...), or `tenant` for the tenant itself and anything else.
fn route_group(route: &str) -> &'static str {
    let path = route.strip_prefix("/v1").unwrap_or(route);
    let group = path.split('/').nth(3).unwrap_or("tenant");
    gancho_telemetry::names::API_ROUTE_GROUPS
        .into_iter()
        .find(|g| *g == group)
        .unwrap_or("tenant")
}

/// The tenant id in `[/v1]/tenants/<tenant>/...`, as sent (inside the nested `/v1` router
/// the URI has lost its prefix).
fn path_tenant(path: &str) -> Option<&str> {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let mut parts = path.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("tenants"), Some(t)) if !t.is_empty() => Some(t),
        _ => None,
    }
}

/// Applies a route's need to a caller.
pub fn check(principal: &Principal, need: Need, tenant: Option<&str>) -> Result<(), ApiError> {
    let (own, scopes, who) = match principal {
        Principal::Admin => return Ok(()),
        Principal::Key { tenant, scopes, .. } => (tenant, scopes.as_slice(), "API key"),
        Principal::Session { tenant, scope, .. } => {
            (tenant, std::slice::from_ref(scope), "portal session")
        }
    };
    let scope = match need {
        Need::Admin => {
            return Err(ApiError::forbidden(format!(
                "this route needs the admin token; an {who} cannot use it"
            )))
        }
        Need::TenantKey(_) if matches!(principal, Principal::Session { .. }) => {
            return Err(ApiError::forbidden(
                "a portal session cannot start or end portal sessions; an API key with the \"manage\" scope or the admin token can",
            ))
        }
        Need::TenantKey(scope) => Some(scope),
        Need::Tenant(scope) => scope,
    };
    if tenant != Some(own.as_str()) {
        // As if it did not exist: a key must not learn what other tenants hold.
        return Err(ApiError::not_found(format!(
            "tenant {:?} not found",
            tenant.unwrap_or_default()
        )));
    }
    match scope {
        Some(Scope::Read) if !Scope::Read.granted_by(scopes) => Err(ApiError::forbidden(format!(
            "this {who} has neither the \"read\" nor the \"manage\" scope this route needs; ask the admin for a key with one",
        ))),
        Some(s) if !s.granted_by(scopes) => Err(ApiError::forbidden(format!(
            "this {who} lacks the \"{}\" scope this route needs; ask the admin for a key with it",
            s.as_str()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_comes_from_the_path_with_or_without_the_prefix() {
        assert_eq!(path_tenant("/v1/tenants/acme/endpoints"), Some("acme"));
        assert_eq!(path_tenant("/tenants/acme"), Some("acme"));
        assert_eq!(path_tenant("/tenants"), None);
        assert_eq!(path_tenant("/tenants/"), None);
    }

    #[test]
    fn route_groups_are_a_fixed_set() {
        assert_eq!(
            route_group("/v1/tenants/{tenant}/endpoints/{id}/attempts"),
            "endpoints"
        );
        assert_eq!(route_group("/tenants/{tenant}/attempts"), "attempts");
        assert_eq!(route_group("/v1/tenants/{tenant}/events/batch"), "events");
        assert_eq!(route_group("/v1/tenants/{tenant}"), "tenant");
        assert_eq!(route_group("/v1/tenants"), "tenant");
        assert_eq!(route_group("/v1/tenants/{tenant}/something-new"), "tenant");
    }

    #[test]
    fn the_table() {
        assert_eq!(need(&Method::GET, "/v1/tenants"), Need::Admin);
        assert_eq!(need(&Method::GET, "/tenants/{tenant}"), Need::Tenant(None));
        assert_eq!(need(&Method::DELETE, "/tenants/{tenant}"), Need::Admin);
        assert_eq!(
            need(&Method::PATCH, "/v1/tenants/{tenant}/endpoints/{id}"),
            Need::Tenant(Some(Scope::Manage))
        );
        assert_eq!(
            need(&Method::POST, "/tenants/{tenant}/api-keys"),
            Need::Admin
        );
        assert_eq!(
            need(&Method::GET, "/v1/tenants/{tenant}/endpoints/{id}/attempts"),
            Need::Tenant(Some(Scope::Read))
        );
        assert_eq!(
            need(&Method::POST, "/v1/tenants/{tenant}/endpoints/{id}/test"),
            Need::Tenant(Some(Scope::Manage))
        );
        assert_eq!(
            need(&Method::DELETE, "/v1/tenants/{tenant}/jobs/{id}"),
            Need::Tenant(Some(Scope::Manage))
        );
        assert_eq!(
            need(&Method::GET, "/v1/tenants/{tenant}/events/{id}"),
            Need::Tenant(Some(Scope::Read))
        );
        assert_eq!(
            need(&Method::GET, "/v1/tenants/{tenant}/attempts"),
            Need::Tenant(Some(Scope::Read))
        );
    }

    #[test]
    fn manage_includes_read_and_nothing_else_includes_anything() {
        let key = |scopes: &[Scope]| Principal::Key {
            tenant: "acme".into(),
            id: "key_1".into(),
            scopes: scopes.to_vec(),
        };
        let read = Need::Tenant(Some(Scope::Read));
        let manage = Need::Tenant(Some(Scope::Manage));
        let publish = Need::Tenant(Some(Scope::Publish));
        let acme = Some("acme");
        assert!(check(&key(&[Scope::Read]), read, acme).is_ok());
        assert!(check(&key(&[Scope::Manage]), read, acme).is_ok());
        assert!(check(&key(&[Scope::Publish]), read, acme).is_err());
        assert!(check(&key(&[Scope::Read]), manage, acme).is_err());
        assert!(check(&key(&[Scope::Read]), publish, acme).is_err());
        assert!(check(&key(&[Scope::Manage]), publish, acme).is_err());
        assert!(check(&key(&[Scope::Read]), read, Some("globex")).is_err());
    }
}
