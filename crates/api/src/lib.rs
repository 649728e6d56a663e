//! The config service: a REST API under `/v1` (axum) through which tenants and endpoints are
//! created, read, changed and deleted. JSON in and out; every error is
//! `{"error":{"code":"...","message":"..."}}` with a message that says what to fix.
//! Admin calls authenticate with `Authorization: Bearer <admin token>`, compared in constant
//! time.
//!
//! # Layout
//! - [`error`]: the error type and its JSON form, and the JSON body extractor.
//! - `auth`: the bearer-token check.
//! - `tenants`, `endpoints`: the handlers.

mod auth;
mod endpoints;
pub mod error;
mod tenants;

use axum::routing::{get, post};
use axum::Router;
use gancho_store::ConfigStore;
use std::sync::Arc;

/// What the API needs from the process.
#[derive(Clone)]
pub struct ApiState {
    pub store: ConfigStore,
    pub admin_token: Arc<str>,
    /// Accept `http://` endpoint URLs.
    pub allow_http: bool,
    /// Accept endpoint URLs whose host is a loopback or private address.
    pub allow_private: bool,
}

/// The `/v1` routes, with authentication. Merge `/metrics` and health routes beside it.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/tenants", post(tenants::create))
        .route(
            "/tenants/{tenant}",
            get(tenants::get).delete(tenants::delete),
        )
        .route(
            "/tenants/{tenant}/endpoints",
            post(endpoints::create).get(endpoints::list),
        )
        .route(
            "/tenants/{tenant}/endpoints/{id}",
            get(endpoints::get)
                .patch(endpoints::update)
                .delete(endpoints::delete),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ))
        .with_state(state);
    Router::new()
        .nest("/v1", v1)
        .fallback(|| async { error::ApiError::not_found("no such route; the API lives under /v1") })
}
