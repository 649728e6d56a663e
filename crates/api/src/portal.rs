//! Portal sessions. `POST /v1/tenants/{tenant}/portal-sessions` (the admin token or a
//! `manage` key) mints a one-time link, `<portal_public_url>/portal/#t=<token>`: the token
//! is in the fragment, which browsers send to no server, log or Referer. The portal page
//! trades it once at `POST /portal/session` for a session token (`gps_...`) it sends as
//! `Authorization: Bearer` to `/v1` like an API key, with the `read` or `manage` scope on its
//! tenant. `DELETE /v1/tenants/{tenant}/portal-sessions/{id}` ends one. No cookie is set or
//! read anywhere. The store side is [`gancho_store::portal`].

use crate::client::ClientAddr;
use crate::error::{tenant_id, ApiError, Json, Path};
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use gancho_store::portal::{Redeemed, LINK_TTL, SESSION_TTL_DEFAULT, SESSION_TTL_MAX};
use gancho_store::Scope;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use time::OffsetDateTime;

/// A link to mint.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintSession {
    /// `manage` (the default: everything a `manage` key may do) or `read` (look, change and
    /// send nothing).
    #[schema(example = "read")]
    #[serde(default)]
    scope: Option<String>,
    /// How long the session lasts once the link is opened: 1m to 24h. Default 1h.
    #[schema(example = "15m")]
    #[serde(default)]
    ttl: Option<String>,
}

/// A minted link.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MintedLink {
    /// The session's id (`ps_` and 20 characters), to end it with DELETE.
    id: String,
    tenant: String,
    /// `manage` or `read`.
    scope: String,
    /// Open it within 10 minutes, once. Shown only here.
    url: String,
    /// When the link stops working if nobody has opened it.
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    /// How long the session lasts once the link is opened.
    ttl_secs: u64,
}

/// Mint a one-time portal link for a tenant.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/portal-sessions", tag = "portal", operation_id = "create_portal_session",
    params(("tenant" = String, Path, description = "The tenant id.")),
    request_body = MintSession,
    responses(
        (status = 201, description = "Minted; `url` is shown only here and must be opened within 10 minutes, once.", body = MintedLink),
        (status = 409, description = "This api has no `portal_public_url` (GANCHO_PORTAL_PUBLIC_URL) to build links from.", body = crate::error::ErrorBody),
        (status = 422, description = "A bad scope or ttl.", body = crate::error::ErrorBody),
        (status = 429, description = "More than 10 links a second (bursts of 50) from this client address; `Retry-After` says when to try again.", body = crate::error::ErrorBody),
    ))]
pub async fn mint(
    State(state): State<ApiState>,
    ClientAddr(client): ClientAddr,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    Path(tenant): Path<String>,
    Json(body): Json<MintSession>,
) -> Result<(StatusCode, axum::Json<MintedLink>), ApiError> {
    state.link_limits.mint(client)?;
    let tenant = tenant_id(&tenant)?;
    let scope = match body.scope.as_deref().map(str::trim) {
        None | Some("manage") => Scope::Manage,
        Some("read") => Scope::Read,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "scope",
                format!("scope {other:?} is not a portal scope; use \"manage\" or \"read\""),
            ))
        }
    };
    let ttl = match body.ttl.as_deref() {
        None => SESSION_TTL_DEFAULT,
        Some(s) => parse_ttl(s).map_err(ApiError::invalid)?,
    };
    let Some(base) = state.portal_public_url.as_deref() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_configured",
            "this api cannot mint portal links: its operator has not set portal_public_url (GANCHO_PORTAL_PUBLIC_URL), where people reach the portal",
        ));
    };
    crate::require_tenant(&state, &tenant).await?;
    let (session, token) = state
        .portal
        .mint(tenant.as_str(), scope, ttl, principal.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(MintedLink {
            id: session.id,
            tenant: session.tenant,
            scope: scope.as_str().to_owned(),
            url: format!("{base}/portal/#t={token}"),
            expires_at: session.link_expires_at,
            ttl_secs: session.ttl_secs,
        }),
    ))
}

/// End a portal session, or a link not opened yet: it stops working on every api within 5 s.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/portal-sessions/{id}", tag = "portal", operation_id = "delete_portal_session",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The session's id (`ps_...`).")),
    responses((status = 204, description = "Ended.")))]
pub async fn end(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if state.portal.end(tenant.as_str(), &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "portal session {id:?} not found (ended, expired, or never minted)"
        )))
    }
}

/// What the portal page sends: the token from its link's fragment.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    token: String,
}

/// A started session, as the portal page keeps it (in sessionStorage).
#[derive(Serialize)]
pub struct Started {
    /// `gps_...`: sent as `Authorization: Bearer` on `/v1`.
    session: String,
    id: String,
    tenant: String,
    scope: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    /// `platform` when the admin token minted the link (the platform's operators opened the
    /// tenant's portal), `tenant` when one of the tenant's API keys did: the page says which.
    opened_by: &'static str,
}

/// `POST /portal/session`: uses a link up and starts its session. Used, expired and unknown
/// links get 401 with a code of their own (`link_used`, `link_expired`, `link_unknown`), so
/// the page can say which and what to do. One client address may open 30 a minute (bursts
/// of 20); past that, 429 with `Retry-After`.
pub async fn start(
    State(state): State<ApiState>,
    ClientAddr(client): ClientAddr,
    Json(body): Json<StartSession>,
) -> Result<(StatusCode, axum::Json<Started>), ApiError> {
    state.link_limits.open(client)?;
    let ask = "ask whoever gave you the link for a new one";
    let refused = |code: &'static str, why: String| {
        ApiError::new(StatusCode::UNAUTHORIZED, code, format!("{why}; {ask}"))
    };
    match state.portal.redeem(body.token.trim()).await? {
        Redeemed::Started(session, token) => Ok((
            StatusCode::CREATED,
            axum::Json(Started {
                opened_by: match session.minted_by.as_ref().map(|a| a.kind) {
                    Some(gancho_store::audit::ActorKind::Admin) => "platform",
                    _ => "tenant",
                },
                session: token,
                id: session.id,
                tenant: session.tenant,
                scope: session.scope.as_str(),
                expires_at: session.expires_at.expect("a started session ends"),
            }),
        )),
        Redeemed::Used => Err(refused(
            "link_used",
            "this portal link was opened already, and a link works once".into(),
        )),
        Redeemed::Expired => Err(refused(
            "link_expired",
            format!(
                "this portal link has expired: a link must be opened within {} minutes",
                LINK_TTL.as_secs() / 60
            ),
        )),
        Redeemed::Unknown => Err(refused(
            "link_unknown",
            "this portal link is not valid: it was ended, or is incomplete".into(),
        )),
    }
}

#[derive(Deserialize)]
pub struct LanguageQuery {
    lang: Option<String>,
}

/// `GET /portal/strings.json[?lang=pt-BR]`: the catalog of the language asked for, else of
/// the first in Accept-Language the portal has, else English.
async fn strings(
    axum::extract::Query(q): axum::extract::Query<LanguageQuery>,
    headers: http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let accept = headers
        .get(http::header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    let code = crate::brand::pick_language(q.lang.as_deref(), accept);
    let body = crate::brand::catalogs()
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, body)| body.clone())
        .unwrap_or_default();
    (
        [
            (http::header::CONTENT_TYPE, "application/json"),
            (http::header::CACHE_CONTROL, "no-cache"),
            (http::header::VARY, "Accept-Language"),
        ],
        body,
    )
        .into_response()
}

/// A session's length as the API and the CLI take it (`15m`, `1h`, `24h`): 1 minute to
/// [`SESSION_TTL_MAX`].
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(s.trim())
        .map_err(|e| format!("ttl {s:?} is not a duration like \"15m\" or \"1h\": {e}"))?;
    if ttl < Duration::from_secs(60) || ttl > SESSION_TTL_MAX {
        return Err(format!(
            "ttl {s:?} is out of range: a portal session lasts from 1m to 24h"
        ));
    }
    Ok(ttl)
}

/// The portal page's files, built into the binary: the page loads nothing from elsewhere.
/// (`index.html` is filled with the [`Brand`] once, at start-up.)
const FILES: [(&str, &str, &str); 3] = [
    (
        "/portal/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../portal/app.js"),
    ),
    (
        "/portal/app.css",
        "text/css; charset=utf-8",
        include_str!("../portal/app.css"),
    ),
    (
        "/portal/icon.svg",
        "image/svg+xml",
        include_str!("../portal/icon.svg"),
    ),
];

/// The portal's Content-Security-Policy: only this origin's own files, no inline script or
/// style, no eval, Trusted Types required (the page writes no HTML), framed only by
/// `frame_ancestors`.
pub fn content_security_policy(frame_ancestors: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors {frame_ancestors}; require-trusted-types-for 'script'; trusted-types 'none'"
    )
}

/// `/portal/...`: the page, its files and the session route, every answer with the portal's
/// security headers.
pub fn routes(state: ApiState) -> axum::Router {
    use axum::response::IntoResponse as _;
    use axum::routing::get;
    let csp: std::sync::Arc<str> = content_security_policy(&state.portal_frame_ancestors).into();
    let brand = &state.portal_brand;
    let mut router = axum::Router::new()
        // Relative, so a proxy that serves the api under a path keeps it.
        .route(
            "/portal",
            get(|| async { axum::response::Redirect::permanent("portal/") }),
        )
        .route("/portal/session", axum::routing::post(start))
        .route("/portal/strings.json", get(strings));
    // The built-in files, then what the brand made of them at start-up.
    let mut files: Vec<(&str, &str, bytes::Bytes)> = FILES
        .into_iter()
        .map(|(path, content_type, body)| (path, content_type, body.as_bytes().into()))
        .collect();
    files.push(("/portal/", "text/html; charset=utf-8", brand.page().into()));
    files.push((
        "/portal/brand.css",
        "text/css; charset=utf-8",
        brand.stylesheet().into(),
    ));
    if let Some(logo) = &brand.logo {
        files.push(("/portal/logo", logo.content_type, logo.bytes.clone()));
    }
    for (path, content_type, body) in files {
        router = router.route(
            path,
            get(move || async move {
                (
                    [
                        (http::header::CONTENT_TYPE, content_type),
                        (http::header::CACHE_CONTROL, "no-cache"),
                    ],
                    body,
                )
                    .into_response()
            }),
        );
    }
    router
        .layer(axum::extract::DefaultBodyLimit::max(1024))
        .layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| {
                let csp = csp.clone();
                async move {
                    let headers = response.headers_mut();
                    if let Ok(v) = http::HeaderValue::from_str(&csp) {
                        headers.insert(http::header::CONTENT_SECURITY_POLICY, v);
                    }
                    headers.insert(
                        http::header::REFERRER_POLICY,
                        http::HeaderValue::from_static("no-referrer"),
                    );
                    response
                }
            },
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_is_a_duration_from_a_minute_to_a_day() {
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl(" 24h "), Ok(Duration::from_secs(86_400)));
        assert!(parse_ttl("30s").unwrap_err().contains("from 1m to 24h"));
        assert!(parse_ttl("25h").unwrap_err().contains("from 1m to 24h"));
        assert!(parse_ttl("soon").unwrap_err().contains("not a duration"));
    }
}
