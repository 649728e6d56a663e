//! The config service: a REST API under `/v1` (axum) through which tenants and endpoints are
//! created, read, changed and deleted. JSON in and out; every error is
//! `{"error":{"code":"...","message":"..."}}` with a message that says what to fix.
//! Callers authenticate with `Authorization: Bearer <token>`: the admin token, or a tenant's
//! API key limited to its tenant and scopes ([`auth`]).
//!
//! # Layout
//! - [`error`]: the error type and its JSON form, and the JSON body extractor.
//! - [`auth`]: who is calling and what each route needs.
//! - [`page`]: the one pagination shape of every list.
//! - [`openapi`]: the OpenAPI document: security and error answers from the access table.
//! - [`portal`]: portal links and sessions.
//! - `tenants`, `api_keys`, `endpoints`, `event_types`, `ingest`: the handlers.

mod api_keys;
pub mod audit;
pub mod auth;
pub mod brand;
pub mod client;
mod endpoints;
pub mod error;
mod event_types;
mod history;
mod ingest;
pub mod jobs;
pub mod openapi;
pub mod page;
pub mod portal;
mod programs;
mod tenants;
mod test_event;

use axum::routing::get;
use axum::Router;
use gancho_store::ConfigStore;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest request body the API reads; a larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a request body may take to arrive once its head has: a client that trickles its
/// body is answered 408 instead of holding a connection and a task for as long as it likes.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the body of an authorized request within [`BODY_TIMEOUT`] (at most the largest body
/// any route takes; each route's own limit applies after), then hands it on.
async fn body_within(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (parts, body) = req.into_parts();
    let largest = ingest::MAX_BATCH_BYTES;
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, largest)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(_)) => error::ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than {largest} bytes, or was cut off"),
        )
        .into_response(),
        Err(_) => error::ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request body did not arrive within {} s; send it at once",
                BODY_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}

/// 404 unless the tenant exists (for routes whose handler does not read the tenant itself).
pub(crate) async fn require_tenant(
    state: &ApiState,
    tenant: &gancho_core::TenantId,
) -> Result<(), error::ApiError> {
    match state.store.get_tenant(tenant.as_str()).await? {
        Some(_) => Ok(()),
        None => Err(error::ApiError::not_found(format!(
            "tenant {:?} not found",
            tenant.as_str()
        ))),
    }
}

/// What the API needs from the process.
#[derive(Clone)]
pub struct ApiState {
    pub store: ConfigStore,
    /// When every live router and worker was last seen to run jq programs (checked again
    /// after 5 s: a listing of the members costs a consumer).
    pub fleet_runs_programs:
        Arc<std::sync::Mutex<std::collections::HashMap<&'static str, std::time::Instant>>>,
    pub admin_token: Arc<str>,
    /// Accept `http://` endpoint URLs.
    pub allow_http: bool,
    /// Accept endpoint URLs whose host is a loopback or private address.
    pub allow_private: bool,
    /// Recent API key lookups (see [`auth::CACHE_TTL`]).
    pub keys: Arc<auth::KeyCache>,
    /// The in-memory config, kept current by a KV watch: lists are served from it.
    pub live: Arc<gancho_store::Live>,
    /// Streams and subjects (held deliveries, ingest, and later the delivery log).
    pub layout: gancho_store::Layout,
    /// Tenants seen to exist lately, so ingest does not read the store for every event.
    pub known_tenants: Arc<ingest::KnownTenants>,
    /// Portal links and sessions.
    pub portal: gancho_store::portal::PortalStore,
    /// Where people reach the portal (no trailing slash): links are built from it alone.
    /// `None`: this api mints no links.
    pub portal_public_url: Option<Arc<str>>,
    /// Who may frame the portal: the CSP `frame-ancestors` sources (`'none'` by default).
    pub portal_frame_ancestors: Arc<str>,
    /// The portal's title, accent and logo, checked at start-up.
    pub portal_brand: Arc<brand::Brand>,
    /// Proxies whose `X-Forwarded-For` names the client ([`client::ClientAddr`]).
    pub trusted_proxies: Arc<client::TrustedProxies>,
    /// How often one client address may mint and open portal links.
    pub link_limits: Arc<client::LinkLimits>,
    /// How many `/v1` requests a second one API key or portal session may make.
    pub request_limits: Arc<client::CredentialLimits>,
    /// How many `/v1` requests a second the admin token may make (`None`: no limit).
    pub admin_rate_limit: Option<u32>,
    /// This process's key in the api processes' bucket: the owner of its changes under way
    /// ([`gancho_store::audit::Intent`]).
    pub process_id: Arc<str>,
    /// How many events a second each tenant may send through HTTP ingest.
    pub ingest_limits: Arc<client::SharedRates>,
}

/// Every `/v1` route, with its OpenAPI description (from the `#[utoipa::path]` on each
/// handler).
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(tenants::create, tenants::list))
        .routes(routes!(tenants::get, tenants::update, tenants::delete))
        .routes(routes!(api_keys::create, api_keys::list))
        .routes(routes!(api_keys::revoke))
        .routes(routes!(portal::mint))
        .routes(routes!(portal::end))
        .routes(routes!(endpoints::create, endpoints::list))
        .routes(routes!(
            endpoints::get,
            endpoints::update,
            endpoints::delete
        ))
        .routes(routes!(endpoints::rotate))
        .routes(routes!(endpoints::pause))
        .routes(routes!(endpoints::resume))
        .routes(routes!(test_event::send))
        .routes(routes!(programs::try_programs))
        .routes(routes!(history::attempts))
        .routes(routes!(history::tenant_attempts))
        .routes(routes!(history::event))
        .routes(routes!(history::dead_letters))
        .routes(routes!(jobs::recover))
        .routes(routes!(jobs::replay))
        .routes(routes!(jobs::redrive))
        .routes(routes!(jobs::list))
        .routes(routes!(jobs::get, jobs::cancel))
        .routes(routes!(audit::tenant_log))
        .routes(routes!(audit::admin_log))
        .routes(routes!(event_types::list))
        .routes(routes!(
            event_types::put,
            event_types::get,
            event_types::delete
        ))
        // Events are larger than config documents: their own body limits.
        .merge(
            OpenApiRouter::new()
                .routes(routes!(ingest::send_one))
                .layer(axum::extract::DefaultBodyLimit::max(
                    ingest::MAX_EVENT_BYTES,
                )),
        )
        .merge(
            OpenApiRouter::new()
                .routes(routes!(ingest::send_batch))
                .layer(axum::extract::DefaultBodyLimit::max(
                    ingest::MAX_BATCH_BYTES,
                )),
        )
}

/// The OpenAPI 3.1 description of the API, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = routes().split_for_parts();
    openapi::complete(api)
}

/// The `/v1` routes, with authentication, and `/openapi.json` (without). Merge `/metrics`
/// and health routes beside it.
pub fn router(state: ApiState) -> Router {
    let (v1, api) = routes().split_for_parts();
    let spec: Arc<str> = openapi::complete(api)
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
        .into();
    let v1 = v1
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .route_layer(axum::middleware::from_fn(body_within))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone());
    Router::new()
        .merge(v1)
        .merge(portal::routes(state))
        .route(
            "/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "application/json")],
                        spec.to_string(),
                    )
                }
            }),
        )
        .fallback(|| async { error::ApiError::not_found("no such route; the API lives under /v1") })
        // No answer is ever read as another type than it says.
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response.headers_mut().insert(
                    http::header::X_CONTENT_TYPE_OPTIONS,
                    http::HeaderValue::from_static("nosniff"),
                );
                response
            },
        ))
}
