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
//! - `tenants`, `api_keys`, `endpoints`: the handlers.

mod api_keys;
pub mod auth;
mod endpoints;
pub mod error;
pub mod page;
mod tenants;

use axum::routing::{get, post};
use axum::Router;
use gancho_store::ConfigStore;
use std::sync::Arc;

/// Largest request body the API reads; a larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the API needs from the process.
#[derive(Clone)]
pub struct ApiState {
    pub store: ConfigStore,
    pub admin_token: Arc<str>,
    /// Accept `http://` endpoint URLs.
    pub allow_http: bool,
    /// Accept endpoint URLs whose host is a loopback or private address.
    pub allow_private: bool,
    /// Recent API key lookups (see [`auth::CACHE_TTL`]).
    pub keys: Arc<auth::KeyCache>,
    /// The in-memory config, kept current by a KV watch: lists are served from it.
    pub live: Arc<gancho_store::Live>,
}

/// The `/v1` routes, with authentication. Merge `/metrics` and health routes beside it.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/tenants", post(tenants::create).get(tenants::list))
        .route(
            "/tenants/{tenant}/api-keys",
            post(api_keys::create).get(api_keys::list),
        )
        .route(
            "/tenants/{tenant}/api-keys/{id}",
            axum::routing::delete(api_keys::revoke),
        )
        .route(
            "/tenants/{tenant}",
            get(tenants::get).delete(tenants::delete),
        )
        .route(
            "/tenants/{tenant}/endpoints",
            post(endpoints::create).get(endpoints::list),
        )
        .route(
            "/tenants/{tenant}/endpoints/{id}/secret/rotate",
            post(endpoints::rotate),
        )
        .route(
            "/tenants/{tenant}/endpoints/{id}",
            get(endpoints::get)
                .patch(endpoints::update)
                .delete(endpoints::delete),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    Router::new()
        .nest("/v1", v1)
        .fallback(|| async { error::ApiError::not_found("no such route; the API lives under /v1") })
}
