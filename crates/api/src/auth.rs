//! Bearer-token authentication for admin calls. The token is compared in constant time and
//! never logged.

use crate::error::ApiError;
use crate::ApiState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

pub async fn require_admin(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized("missing \"Authorization: Bearer <token>\" header")
        })?;
    let ok: bool = presented
        .trim()
        .as_bytes()
        .ct_eq(state.admin_token.as_bytes())
        .into();
    if !ok {
        return Err(ApiError::unauthorized("the bearer token is not valid"));
    }
    Ok(next.run(req).await)
}
