//! Endpoint CRUD under `/v1/tenants/{tenant}/endpoints`. Every field is validated before it
//! is stored, with a message that says what to change; the secret leaves the API only in the
//! response to create.

use crate::error::{tenant_id, ApiError, Json, Path, Query};
use crate::page::{Page, PageQuery};
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use gancho_core::{EndpointId, Filter, Key, RetrySchedule, Scheme, TenantId};
use gancho_store::model::{new_endpoint_id, new_key, OrderingMode, MAX_TIMEOUT_MS};
use gancho_store::{Endpoint, Profile, TokenAuth};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// How long a list waits for the live snapshot to reach the store's revision.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);
/// Most filters, channels or headers one endpoint may list.
const MAX_LIST: usize = 64;
/// Highest per-endpoint in-flight cap.
const MAX_IN_FLIGHT: u32 = 1000;
/// Longest token of the `token` profile.
const MAX_TOKEN: usize = 512;
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

/// An endpoint as the API returns it; `secret` only in the answers to create and rotate.
#[derive(Serialize, ToSchema)]
pub struct EndpointView {
    #[schema(value_type = String, example = "ep_2f6cq3x7d4m5n6p7r8s9")]
    id: EndpointId,
    #[schema(value_type = String, example = "acme")]
    tenant: TenantId,
    url: String,
    description: String,
    filter_types: Vec<String>,
    channels: Vec<String>,
    disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    /// Since when every attempt has failed; absent once one succeeds.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    failing_since: Option<time::OffsetDateTime>,
    paused: bool,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    paused_at: Option<OffsetDateTime>,
    /// Deliveries waiting for this endpoint to be resumed (on a single endpoint's read).
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<u64>,
    rate_limit_per_sec: Option<u32>,
    max_in_flight: Option<u32>,
    timeout_ms: u32,
    #[schema(value_type = String, example = "standard")]
    profile: Profile,
    /// Where the `token` profile sends its token; the token itself is never returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<TokenView>,
    /// `openfinance-br`: the path appended to `url`, `{attribute}`s filled from the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    path_template: Option<String>,
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_schedule: Option<String>,
    /// A jq program: the endpoint gets an event only when its first output is `true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
    /// A jq program whose first output is the webhook's body.
    #[serde(skip_serializing_if = "Option::is_none")]
    transform: Option<String>,
    /// `none`, `key` (in order per value of `ordering_key`) or `endpoint` (in order for
    /// the whole endpoint).
    #[schema(example = "key")]
    ordering: &'static str,
    /// With `ordering: key`: the JSON Pointer into the payload whose value is the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "/charge_id")]
    ordering_key: Option<String>,
    /// Whether its webhooks carry a W3C `traceparent` header: a trace of its own per
    /// delivery (the same for every attempt), never the platform's trace id.
    trace_context: bool,
    /// The client certificate chain presented to the endpoint (its key is never returned).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert: Option<String>,
    /// CA certificates trusted for this endpoint besides the webpki roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    /// How webhooks are signed: `hmac` (`v1`, with the shared `secret`) or `ed25519` (`v1a`,
    /// verified with `public_keys`).
    signing: Signing,
    /// `ed25519` only: the public keys whose signatures a webhook carries, the current one
    /// first, then rotated-out ones until their `expires_at`. Receivers verify `v1a` with
    /// them; no secret is shared.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    public_keys: Vec<PublicKeyView>,
    /// `hmac` only, and only in the answers to create and rotate: the `whsec_` secret. An
    /// `ed25519` signing key never leaves gancho.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// How an endpoint signs its webhooks (Standard Webhooks).
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Signing {
    /// `webhook-signature: v1,<HMAC-SHA256>` with a shared `whsec_` secret.
    Hmac,
    /// `webhook-signature: v1a,<ed25519>`: receivers verify with a `whpk_` public key.
    Ed25519,
}

impl Signing {
    fn scheme(self) -> Scheme {
        match self {
            Signing::Hmac => Scheme::Hmac,
            Signing::Ed25519 => Scheme::Ed25519,
        }
    }

    fn of(scheme: Scheme) -> Self {
        match scheme {
            Scheme::Hmac => Signing::Hmac,
            Scheme::Ed25519 => Signing::Ed25519,
        }
    }
}

/// A public key a receiver verifies `v1a` signatures with.
#[derive(Serialize, ToSchema)]
pub struct PublicKeyView {
    #[schema(example = "whpk_PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=")]
    key: String,
    /// When a rotated-out key stops signing; absent for the current key.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    expires_at: Option<OffsetDateTime>,
}

impl EndpointView {
    fn from(ep: Endpoint, show_secret: bool) -> Self {
        let current = Key::parse(&ep.secret).ok();
        let scheme = current.as_ref().map_or(Scheme::Hmac, Key::scheme);
        let now = OffsetDateTime::now_utc();
        let public_keys = current
            .and_then(|k| k.public_key())
            .map(|k| PublicKeyView {
                key: k.expose(),
                expires_at: None,
            })
            .into_iter()
            .chain(
                ep.previous_secrets
                    .iter()
                    .filter(|p| p.expires_at > now)
                    .filter_map(|p| {
                        let key = Key::parse(&p.secret).ok()?.public_key()?;
                        Some(PublicKeyView {
                            key: key.expose(),
                            expires_at: Some(p.expires_at),
                        })
                    }),
            )
            .collect();
        Self {
            secret: (show_secret && scheme == Scheme::Hmac).then(|| ep.secret.clone()),
            signing: Signing::of(scheme),
            public_keys,
            id: ep.id,
            tenant: ep.tenant,
            url: ep.url,
            description: ep.description,
            filter_types: ep.filter_types,
            channels: ep.channels,
            disabled: ep.disabled,
            disabled_reason: ep.disabled_reason,
            failing_since: ep.failing_since,
            paused: ep.paused,
            paused_at: ep.paused_at,
            held: None,
            rate_limit_per_sec: ep.rate_limit_per_sec,
            max_in_flight: ep.max_in_flight,
            timeout_ms: ep.timeout_ms,
            profile: ep.profile,
            token: ep.token.map(|t| TokenView {
                header: t.header,
                query: t.query,
            }),
            path_template: ep.path_template,
            headers: ep.headers,
            retry_schedule: ep.retry_schedule,
            filter: ep.filter,
            transform: ep.transform,
            ordering: ep.ordering.as_str(),
            ordering_key: ep.ordering_key,
            trace_context: ep.trace_context,
            client_cert: ep.client_cert,
            ca: ep.ca,
            created_at: ep.created_at,
            updated_at: ep.updated_at,
        }
    }
}

/// Where the `token` profile's token goes (its value is write-only).
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<String>,
}

/// The `token` profile's token: its value, and exactly one of `header` (a header name) and
/// `query` (a query parameter name).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    #[schema(example = "validationtoken")]
    header: Option<String>,
    query: Option<String>,
    /// 1 to 512 visible ASCII characters. Write-only: never returned.
    value: String,
}

impl TokenInput {
    fn into_auth(self) -> Result<TokenAuth, ApiError> {
        let value_ok = !self.value.is_empty()
            && self.value.len() <= MAX_TOKEN
            && self.value.bytes().all(|b| b.is_ascii_graphic());
        if !value_ok {
            return Err(ApiError::invalid_field(
                "token",
                format!(
                    "token.value must be 1 to {MAX_TOKEN} visible ASCII characters (no spaces)"
                ),
            ));
        }
        match (&self.header, &self.query) {
            (Some(h), None) => {
                check_headers(&BTreeMap::from([(h.clone(), "x".to_owned())]))
                    .map_err(|e| ApiError::invalid_field("token", format!("token.header: {}", e.message)))?;
            }
            (None, Some(q)) => {
                let ok = !q.is_empty()
                    && q.len() <= 64
                    && q.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !ok {
                    return Err(ApiError::invalid_field(
                        "token",
                        "token.query must be 1 to 64 letters, digits, '_', '-' or '.'",
                    ));
                }
            }
            _ => {
                return Err(ApiError::invalid_field(
                    "token",
                    "token needs exactly one of \"header\" (a header name) and \"query\" (a query parameter name)",
                ))
            }
        }
        Ok(TokenAuth {
            header: self.header,
            query: self.query,
            value: self.value,
        })
    }
}

/// Largest PEM accepted for a certificate chain, key or CA bundle.
const MAX_PEM: usize = 16 * 1024;

fn check_pem_certs(field: &'static str, pem: &str) -> Result<(), ApiError> {
    let bad = || {
        ApiError::invalid_field(
            field,
            format!(
            "{field} must be PEM certificates (-----BEGIN CERTIFICATE-----), up to {MAX_PEM} bytes"
        ),
        )
    };
    if pem.len() > MAX_PEM {
        return Err(bad());
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if certs.is_empty() {
        return Err(bad());
    }
    Ok(())
}

/// The endpoint's mTLS settings as they would be stored: a certificate and its key come
/// together, and each parses.
fn check_tls(ep: &Endpoint) -> Result<(), ApiError> {
    match (&ep.client_cert, &ep.client_key) {
        (Some(cert), Some(key)) => {
            check_pem_certs("client_cert", cert)?;
            let first = rustls_pemfile::certs(&mut cert.as_bytes())
                .next()
                .and_then(Result::ok);
            if let Some(problem) = first.and_then(|c| gancho_core::tls::client_cert_problem(&c)) {
                return Err(ApiError::invalid_field("client_cert", problem));
            }
            let parsed = (key.len() <= MAX_PEM)
                .then(|| {
                    rustls_pemfile::private_key(&mut key.as_bytes())
                        .ok()
                        .flatten()
                })
                .flatten();
            if parsed.is_none() {
                // Never echo the key back.
                return Err(ApiError::invalid_field(
                    "client_key",
                    "client_key must be a PEM private key (PKCS#8, PKCS#1 or SEC1)",
                ));
            }
        }
        (None, None) => {}
        (cert, _) => {
            // About the one missing.
            let missing = if cert.is_some() {
                "client_key"
            } else {
                "client_cert"
            };
            return Err(ApiError::invalid_field(
                missing,
                "client_cert and client_key go together: give both, or neither",
            ));
        }
    }
    if let Some(ca) = &ep.ca {
        check_pem_certs("ca", ca)?;
    }
    Ok(())
}

fn parse_profile(p: &str) -> Result<Profile, ApiError> {
    Profile::parse(p).ok_or_else(|| {
        ApiError::invalid_field(
            "profile",
            format!(
                "profile {p:?} is not supported; use one of: {}",
                Profile::ALL.map(|p| p.as_str()).join(", ")
            ),
        )
    })
}

/// The endpoint's jq programs compile, and a transform is not on a profile whose body is
/// fixed.
fn check_programs(ep: &Endpoint) -> Result<(), ApiError> {
    for (field, code) in [("filter", &ep.filter), ("transform", &ep.transform)] {
        if let Some(code) = code {
            gancho_jq::shared()
                .get(code)
                .map_err(|e| ApiError::invalid_field(field, format!("{field}: {e}")))?;
        }
    }
    if ep.transform.is_some() && ep.profile == Profile::OpenfinanceBr {
        return Err(ApiError::invalid_field(
            "transform",
            "transform cannot be used with profile \"openfinance-br\": its body is fixed by the Open Finance Brasil specification",
        ));
    }
    Ok(())
}

/// A jq filter or transform is taken only when every live router and worker runs a version
/// that applies it: an older worker would send the body a transform was meant to reshape
/// (personal data it strips), an older router would route the events a filter leaves out.
/// Routers of versions before programs do not announce themselves and are not seen.
async fn check_fleet_runs(state: &ApiState, need: Need) -> Result<(), ApiError> {
    const FOR: std::time::Duration = std::time::Duration::from_secs(5);
    let seen = state
        .fleet_runs_programs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(need.feature)
        .copied();
    if seen.is_some_and(|at| at.elapsed() < FOR) {
        return Ok(());
    }
    for (bucket, what) in [
        (&state.layout.workers, "workers"),
        (&state.layout.routers, "routers"),
    ] {
        let older = gancho_store::members::lacking(bucket, need.feature)
            .await
            .map_err(crate::error::unavailable)?;
        if older > 0 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "upgrade_in_progress",
                format!(
                    "{} need every router and worker to run a version that applies them; {older} of the {what} alive run an older one: finish the upgrade, then set them",
                    need.fields
                ),
            ));
        }
    }
    state
        .fleet_runs_programs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(need.feature, std::time::Instant::now());
    Ok(())
}

/// A setting only a fleet of new enough routers and workers applies: the feature their
/// members announce ([`gancho_store::members::FEATURES`]) and the fields that need it.
#[derive(Clone, Copy)]
struct Need {
    feature: &'static str,
    fields: &'static str,
}

const PROGRAMS: Need = Need {
    feature: "jq",
    fields: "filter and transform",
};
const ORDERING: Need = Need {
    feature: "ordering",
    fields: "ordering and ordering_key",
};

/// `ordering` as the API takes it.
fn ordering_mode(mode: &str) -> Result<OrderingMode, ApiError> {
    match mode {
        "none" => Ok(OrderingMode::None),
        "key" => Ok(OrderingMode::Key),
        "endpoint" => Ok(OrderingMode::Endpoint),
        other => Err(ApiError::invalid_field(
            "ordering",
            format!("ordering {other:?} is not one of \"none\", \"key\" or \"endpoint\""),
        )),
    }
}

/// The ordering as it would be stored: `key` with a JSON Pointer, the others without one.
fn check_ordering(ep: &Endpoint) -> Result<(), ApiError> {
    gancho_core::ordering::Ordering::parse(ep.ordering.as_str(), ep.ordering_key.as_deref())
        .map(|_| ())
        // The mode was checked when it was read: what is wrong is its key.
        .map_err(|e| ApiError::invalid_field("ordering_key", e))
}

/// The checks of a new endpoint that look at it whole: its profile, its programs (and
/// whether the fleet runs them), its certificates.
async fn check_whole(state: &ApiState, ep: &Endpoint) -> Result<(), ApiError> {
    check_profile(ep)?;
    check_programs(ep)?;
    check_ordering(ep)?;
    check_tls(ep)?;
    if ep.filter.is_some() || ep.transform.is_some() {
        check_fleet_runs(state, PROGRAMS).await?;
    }
    if !ep.ordering.is_none() {
        check_fleet_runs(state, ORDERING).await?;
    }
    Ok(())
}

/// A profile's own requirements, on the endpoint as it would be stored.
fn check_profile(ep: &Endpoint) -> Result<(), ApiError> {
    if let Some(t) = &ep.path_template {
        if ep.profile != Profile::OpenfinanceBr {
            return Err(ApiError::invalid_field(
                "path_template",
                "path_template is only used by profile \"openfinance-br\"",
            ));
        }
        let names_ok = t.split('{').skip(1).all(|part| {
            part.split_once('}').is_some_and(|(name, _)| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
        });
        if !t.starts_with('/') || t.len() > 512 || !names_ok || t.contains(['?', '#']) {
            return Err(ApiError::invalid_field(
                "path_template",
                "path_template must be a path starting with '/' whose {attribute} names are letters, digits or '_', e.g. \"/open-banking/webhook/v1/payments/v3/pix/payments/{paymentId}\"",
            ));
        }
    }
    if ep.profile == Profile::OpenfinanceBr && ep.client_cert.is_none() {
        return Err(ApiError::invalid_field(
            "client_cert",
            "profile \"openfinance-br\" needs a client certificate: give client_cert and client_key (and ca for ICP-Brasil)",
        ));
    }
    match (ep.profile, &ep.token) {
        (Profile::Token, None) => Err(ApiError::invalid_field(
            "token",
            "profile \"token\" needs a token: {\"header\": \"validationtoken\", \"value\": \"...\"} or {\"query\": \"token\", \"value\": \"...\"}",
        )),
        (Profile::Standard | Profile::OpenfinanceBr, Some(_)) => Err(ApiError::invalid_field(
            "token",
            "token is only used by profile \"token\"; set \"profile\": \"token\" or leave token out",
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// 1 to 64 letters, digits, `_` or `-` (default: a generated `ep_...`).
    id: Option<String>,
    /// `https://` (plain `http://` only when the operator allows it); no user info.
    #[schema(example = "https://hooks.example.com/gancho")]
    url: String,
    /// Up to 1024 characters.
    #[serde(default)]
    description: String,
    /// Event-type filters, NATS wildcards (`invoice.*`, `invoice.>`); none means every type.
    #[serde(default)]
    #[schema(example = json!(["invoice.*", "charge.paid"]))]
    filter_types: Vec<String>,
    /// When not empty, only events tagged with one of these channels.
    #[serde(default)]
    channels: Vec<String>,
    /// Requests per second, at least 1; null or absent: no limit.
    #[schema(minimum = 1)]
    rate_limit_per_sec: Option<u32>,
    /// Requests in flight at once, 1 to 1000; null or absent: the worker default (64).
    #[schema(minimum = 1, maximum = 1000)]
    max_in_flight: Option<u32>,
    /// Per-request timeout, 1 to 30000 ms (default 15000).
    #[schema(minimum = 1, maximum = 30000)]
    timeout_ms: Option<u32>,
    /// Delivery profile: `standard` (default), `token` or `openfinance-br`.
    #[schema(example = "standard")]
    profile: Option<String>,
    /// Required by profile `token`: where to send which token.
    token: Option<TokenInput>,
    /// `openfinance-br` only: the path appended to `url` (default
    /// `/open-banking/webhook/v1/payments/v3/pix/payments/{paymentId}`).
    path_template: Option<String>,
    /// mTLS: the client certificate chain (PEM) to present; needs `client_key`.
    client_cert: Option<String>,
    /// mTLS: the private key (PEM) of `client_cert`. Write-only, sealed at rest.
    client_key: Option<String>,
    /// CA certificates (PEM) trusted for this endpoint besides the webpki roots.
    ca: Option<String>,
    /// Extra headers on every request; not `webhook-*`, `content-type`, `host`, `user-agent`
    /// or hop-by-hop headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Retry delays, e.g. `["0s", "5s", "5m", "30m"]` (or the same as one string,
    /// `"0s,5s,5m,30m"`; default: 0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h).
    #[schema(value_type = Option<Vec<String>>, example = json!(["0s", "5s", "5m", "30m"]))]
    retry_schedule: Option<ScheduleIn>,
    /// A jq program (at most 4 KiB) run on each event that matches `filter_types` and
    /// `channels`: the endpoint gets the event only when the program's first output is
    /// `true`. It reads `{"type", "timestamp", "data", "channels", "id"}`.
    #[schema(example = ".data.amount >= 100000")]
    filter: Option<String>,
    /// A jq program (at most 4 KiB) whose first output is the webhook's body, signed as
    /// sent. It reads `{"type", "timestamp", "data", "channels", "id"}`. Not for profile
    /// `openfinance-br`, whose body is fixed.
    #[schema(example = "{id: .data.charge_id, status: .type}")]
    transform: Option<String>,
    /// `none` (default: deliveries go in parallel, each on its own retry schedule), `key`
    /// (deliveries with the same `ordering_key` value go one at a time, in the order of the
    /// events, through retries) or `endpoint` (the whole endpoint in order).
    #[schema(example = "key")]
    ordering: Option<String>,
    /// With `ordering: key`: a JSON Pointer (RFC 6901) into the event's payload, e.g.
    /// `/charge_id`; events without it share one key.
    #[schema(example = "/charge_id")]
    ordering_key: Option<String>,
    /// Webhooks carry a W3C `traceparent` header (default false): a trace of its own per
    /// delivery, the same for every attempt, never the platform's trace id.
    #[serde(default)]
    trace_context: bool,
    /// `hmac` (default) or `ed25519`.
    signing: Option<Signing>,
    /// A `whsec_` secret (or, with `ed25519`, a `whsk_` signing key) to use instead of a
    /// generated one (for migrations).
    secret: Option<String>,
    /// Created disabled: no deliveries until enabled.
    #[serde(default)]
    disabled: bool,
    /// Created paused: deliveries are held until resumed.
    #[serde(default)]
    paused: bool,
}

/// Distinguishes "absent" (`None`) from "null" (`Some(None)`).
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// A retry schedule as the API takes it: a JSON array of delays (`["0s", "5s", "5m"]`) or the
/// same as one comma-separated string (`"0s,5s,5m"`), kept as that string.
#[derive(Debug, Clone)]
pub struct ScheduleIn(String);

impl std::ops::Deref for ScheduleIn {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ScheduleIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            List(Vec<String>),
        }
        match Either::deserialize(d) {
            Ok(Either::Text(s)) => Ok(Self(s)),
            Ok(Either::List(delays)) => {
                if let Some(bad) = delays.iter().find(|d| d.contains(',')) {
                    return Err(serde::de::Error::custom(format!(
                        "retry_schedule: {bad:?} is one delay per item, e.g. [\"0s\", \"5s\", \"5m\"]"
                    )));
                }
                Ok(Self(delays.join(",")))
            }
            Err(_) => Err(serde::de::Error::custom(
                "retry_schedule must be a list of delays, e.g. [\"0s\", \"5s\", \"5m\"], or the same as one string, \"0s,5s,5m\"",
            )),
        }
    }
}

/// A field that may be left out but not set to null: `null` is an error naming the field,
/// not a silent no-op.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Every field optional; a field left out keeps its value. `null` resets the fields that have
/// a default (`rate_limit_per_sec`, `max_in_flight`, `retry_schedule`) and is refused for the
/// others. `id` and `secret` cannot be patched.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchEndpoint {
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    filter_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    channels: Option<Vec<String>>,
    /// null: no limit.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(minimum = 1)]
    rate_limit_per_sec: Option<Option<u32>>,
    /// null: the worker default.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(minimum = 1, maximum = 1000)]
    max_in_flight: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, minimum = 1, maximum = 30000)]
    timeout_ms: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    profile: Option<String>,
    /// Replaces the `token` profile's token (a rotation: the next request carries the new
    /// one).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    token: Option<TokenInput>,
    /// `openfinance-br` only; null: the default path.
    #[serde(default, deserialize_with = "nullable")]
    path_template: Option<Option<String>>,
    /// null removes the client certificate (and its key).
    #[serde(default, deserialize_with = "nullable")]
    client_cert: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    client_key: Option<Option<String>>,
    /// null removes the endpoint's own CA.
    #[serde(default, deserialize_with = "nullable")]
    ca: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    headers: Option<BTreeMap<String, String>>,
    /// A list of delays (or one comma-separated string); null: the default schedule.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<String>>)]
    retry_schedule: Option<Option<ScheduleIn>>,
    /// A jq program; null removes it (every event of the endpoint's types and channels).
    #[serde(default, deserialize_with = "nullable")]
    filter: Option<Option<String>>,
    /// A jq program; null removes it (the standard body).
    #[serde(default, deserialize_with = "nullable")]
    transform: Option<Option<String>>,
    /// `none`, `key` or `endpoint`: applies to the deliveries routed after the change.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    ordering: Option<String>,
    /// A JSON Pointer for `ordering: key`; null removes it.
    #[serde(default, deserialize_with = "nullable")]
    ordering_key: Option<Option<String>>,
    /// Whether webhooks carry a W3C `traceparent` header.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    trace_context: Option<bool>,
    /// false re-enables an endpoint, also one disabled after a 410.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    disabled: Option<bool>,
    /// true holds deliveries; false sends what was held.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    paused: Option<bool>,
    /// Refused with a pointer to the rotate route.
    #[serde(default)]
    #[schema(ignore)]
    secret: Option<serde::de::IgnoredAny>,
    /// Refused with a pointer to the rotate route.
    #[serde(default)]
    #[schema(ignore)]
    signing: Option<serde::de::IgnoredAny>,
    /// Refused: an endpoint's id is fixed.
    #[serde(default)]
    #[schema(ignore)]
    id: Option<serde::de::IgnoredAny>,
}

/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 1024;

fn check_description(d: &str) -> Result<(), ApiError> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::invalid_field(
            "description",
            format!("description is longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    Ok(())
}

pub(crate) fn endpoint_id(s: &str) -> Result<EndpointId, ApiError> {
    EndpointId::new(s).map_err(|e| ApiError::not_found(format!("no such endpoint: {e}")))
}

fn check_url(state: &ApiState, url: &str) -> Result<(), ApiError> {
    gancho_core::net::AddressPolicy {
        allow_http: state.allow_http,
        allow_private: state.allow_private,
    }
    .check_url(url)
    .map_err(|e| ApiError::invalid_field("url", e))
}

fn check_filters(filters: &[String]) -> Result<(), ApiError> {
    if filters.len() > MAX_LIST {
        return Err(ApiError::invalid_field(
            "filter_types",
            format!(
                "filter_types lists {} filters; the limit is {MAX_LIST}",
                filters.len()
            ),
        ));
    }
    for f in filters {
        Filter::parse(f)
            .map_err(|e| ApiError::invalid_field("filter_types", format!("filter_types: {e}")))?;
    }
    Ok(())
}

pub(crate) fn check_channels(channels: &[String]) -> Result<(), ApiError> {
    if channels.len() > MAX_LIST {
        return Err(ApiError::invalid_field(
            "channels",
            format!(
                "channels lists {} channels; the limit is {MAX_LIST}",
                channels.len()
            ),
        ));
    }
    for c in channels {
        gancho_core::id::validate_endpoint(c).map_err(|_| {
            ApiError::invalid_field(
                "channels",
                format!("channels: {c:?} must be 1 to 64 letters, digits, '_' or '-'"),
            )
        })?;
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if headers.len() > MAX_LIST {
        return Err(ApiError::invalid_field(
            "headers",
            format!(
                "headers lists {} headers; the limit is {MAX_LIST}",
                headers.len()
            ),
        ));
    }
    for (k, v) in headers {
        http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            ApiError::invalid_field(
                "headers",
                format!("header name {k:?} is not a valid HTTP header name"),
            )
        })?;
        http::HeaderValue::from_str(v).map_err(|_| {
            ApiError::invalid_field(
                "headers",
                format!("header {k:?} has a value that is not valid in HTTP"),
            )
        })?;
        let lower = k.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") {
            return Err(ApiError::invalid_field(
                "headers",
                format!("header {k:?} is set by gancho and cannot be overridden"),
            ));
        }
    }
    Ok(())
}

fn check_settings(
    rate: Option<u32>,
    in_flight: Option<u32>,
    timeout_ms: u32,
    schedule: Option<&str>,
) -> Result<(), ApiError> {
    if rate == Some(0) {
        return Err(ApiError::invalid_field(
            "rate_limit_per_sec",
            "rate_limit_per_sec must be at least 1; omit it (or send null) for no limit",
        ));
    }
    if let Some(n) = in_flight {
        if n == 0 || n > MAX_IN_FLIGHT {
            return Err(ApiError::invalid_field(
                "max_in_flight",
                format!("max_in_flight must be 1 to {MAX_IN_FLIGHT}"),
            ));
        }
    }
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(ApiError::invalid_field(
            "timeout_ms",
            format!("timeout_ms must be 1 to {MAX_TIMEOUT_MS}"),
        ));
    }
    if let Some(s) = schedule {
        RetrySchedule::parse(s).map_err(|e| {
            ApiError::invalid_field("retry_schedule", format!("retry_schedule: {e}"))
        })?;
    }
    Ok(())
}

/// Create an endpoint; its signing secret is in the answer, once.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints", tag = "endpoints", operation_id = "create_endpoint",
    params(("tenant" = String, Path, description = "The tenant id.")),
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "Created; `secret` is shown only here.", body = EndpointView),
        (status = 409, description = "An endpoint with this id exists.", body = crate::error::ErrorBody),
    ))]
pub async fn create(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Json(body): Json<CreateEndpoint>,
) -> Result<(StatusCode, axum::Json<EndpointView>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    let id = chosen_id(body.id)?;
    check_url(&state, &body.url)?;
    check_description(&body.description)?;
    check_filters(&body.filter_types)?;
    check_channels(&body.channels)?;
    check_headers(&body.headers)?;
    let profile = match body.profile.as_deref() {
        Some(p) => parse_profile(p)?,
        None => Profile::Standard,
    };
    let token = body.token.map(TokenInput::into_auth).transpose()?;
    let ordering = ordering_mode(body.ordering.as_deref().unwrap_or("none"))?;
    let timeout_ms = body
        .timeout_ms
        .unwrap_or(gancho_store::model::DEFAULT_TIMEOUT_MS);
    check_settings(
        body.rate_limit_per_sec,
        body.max_in_flight,
        timeout_ms,
        body.retry_schedule.as_deref(),
    )?;
    let secret = chosen_secret(body.secret, body.signing)?;
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
        failing_since: None,
        paused: body.paused,
        paused_at: body.paused.then_some(now),
        rate_limit_per_sec: body.rate_limit_per_sec,
        max_in_flight: body.max_in_flight,
        timeout_ms,
        profile,
        token,
        path_template: body.path_template,
        client_cert: body.client_cert,
        client_key: body.client_key,
        ca: body.ca,
        headers: body.headers,
        retry_schedule: body.retry_schedule.map(|s| s.0),
        filter: body.filter,
        transform: body.transform,
        ordering,
        ordering_key: body.ordering_key,
        trace_context: body.trace_context,
        secret,
        previous_secrets: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    check_whole(&state, &ep).await?;
    state.store.create_endpoint(&ep).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(EndpointView::from(ep, true)),
    ))
}

/// A new endpoint's key: the one given (of the kind `signing` asks for, if it asks), or a
/// new one of that kind.
fn chosen_secret(given: Option<String>, signing: Option<Signing>) -> Result<String, ApiError> {
    let Some(s) = given else {
        return Ok(new_key(signing.unwrap_or(Signing::Hmac).scheme()));
    };
    let key = Key::parse(&s).map_err(|e| ApiError::invalid_field("secret", e.to_string()))?;
    if let Some(signing) = signing.filter(|s| s.scheme() != key.scheme()) {
        return Err(ApiError::invalid_field(
            "secret",
            format!(
                "secret is a {} key but signing is {}: give a {} key, or leave one of them out",
                key.scheme().as_str(),
                signing.scheme().as_str(),
                if signing == Signing::Hmac {
                    "whsec_"
                } else {
                    "whsk_"
                }
            ),
        ));
    }
    Ok(s)
}

/// The id a new endpoint gets: the one asked for, or a generated `ep_...`.
fn chosen_id(asked: Option<String>) -> Result<EndpointId, ApiError> {
    match asked {
        Some(id) if id == "try" => Err(ApiError::invalid_field(
            "id",
            "the endpoint id \"try\" is reserved (POST .../endpoints/try tries a filter and a transform); choose another",
        )),
        Some(id) => EndpointId::new(id).map_err(|e| ApiError::invalid_field("id", e.to_string())),
        None => Ok(new_endpoint_id()),
    }
}

/// `?q=`: a search of the endpoint list.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Search {
    /// Only endpoints whose URL or description contains this, in any case (at most 200
    /// characters).
    q: Option<String>,
}

/// Longest `?q=` taken.
const SEARCH_MAX_CHARS: usize = 200;

/// List a tenant's endpoints, by id; `q` keeps those whose URL or description contains it.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints", tag = "endpoints", operation_id = "list_endpoints",
    params(("tenant" = String, Path, description = "The tenant id."), PageQuery, Search),
    responses((status = 200, description = "A page of endpoints (no secrets).", body = Page<EndpointView>)))]
pub async fn list(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Query(query): Query<PageQuery>,
    Query(search): Query<Search>,
) -> Result<axum::Json<Page<EndpointView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let needle = search
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_lowercase);
    if needle
        .as_ref()
        .is_some_and(|q| q.chars().count() > SEARCH_MAX_CHARS)
    {
        return Err(ApiError::bad_request(format!(
            "q must be at most {SEARCH_MAX_CHARS} characters: a part of an endpoint's URL or description"
        )));
    }
    crate::require_tenant(&state, &tenant).await?;
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
    let found = |ep: &gancho_store::LiveEndpoint| {
        needle.as_deref().is_none_or(|q| {
            ep.config.url.to_lowercase().contains(q)
                || ep.config.description.to_lowercase().contains(q)
        })
    };
    // One more than the page, to know whether another follows.
    let mut rest: Vec<_> = list[start..]
        .iter()
        .filter(|ep| found(ep.as_ref()))
        .take(limit + 1)
        .collect();
    let more = rest.len() > limit;
    rest.truncate(limit);
    let data: Vec<EndpointView> = rest
        .into_iter()
        .map(|ep| EndpointView::from(ep.config.clone(), false))
        .collect();
    let next = more
        .then(|| data.last().map(|e| crate::page::cursor(e.id.as_str())))
        .flatten();
    Ok(axum::Json(Page { data, next }))
}

/// Read an endpoint, with `held`: deliveries waiting for it to be resumed.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{id}", tag = "endpoints", operation_id = "get_endpoint",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The endpoint id.")),
    responses((status = 200, description = "The endpoint (no secret).", body = EndpointView)))]
pub async fn get(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<axum::Json<EndpointView>, ApiError> {
    let (tenant, id) = (tenant_id(&tenant)?, endpoint_id(&id)?);
    let ep = state
        .store
        .get_endpoint(tenant.as_str(), id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("endpoint {:?} not found", id.as_str())))?;
    let mut view = EndpointView::from(ep, false);
    view.held = Some(held(&state, tenant.as_str(), id.as_str()).await?);
    Ok(axum::Json(view))
}

/// How many deliveries wait on the endpoint's held subject.
async fn held(state: &ApiState, tenant: &str, id: &str) -> Result<u64, ApiError> {
    use futures::TryStreamExt;
    let subjects = &state.layout.subjects;
    let unavailable = |e: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("cannot count held deliveries: {e}; retry shortly"),
        )
    };
    // The held stream, and where an older version held them.
    let places = [
        (subjects.held_stream(), subjects.held(tenant, id)),
        (
            subjects.deliveries_stream(),
            subjects.legacy_held(tenant, id),
        ),
    ];
    let mut total = 0u64;
    for (stream, subject) in places {
        let stream = state
            .layout
            .js
            .get_stream(stream)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut counts = stream
            .info_with_subjects(subject)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        while let Some((_, n)) = counts
            .try_next()
            .await
            .map_err(|e| unavailable(e.to_string()))?
        {
            total += n as u64;
        }
    }
    Ok(total)
}

fn set_paused(ep: &mut Endpoint, paused: bool) {
    if paused && !ep.paused {
        ep.paused_at = Some(
            OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .expect("0 is valid"),
        );
    } else if !paused {
        ep.paused_at = None;
    }
    ep.paused = paused;
}

/// `POST .../endpoints/{id}/pause`: deliveries are held until resume; no attempts meanwhile.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{id}/pause", tag = "endpoints", operation_id = "pause_endpoint",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The endpoint id.")),
    responses((status = 200, description = "Paused; `held` counts what waits.", body = EndpointView)))]
pub async fn pause(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<axum::Json<EndpointView>, ApiError> {
    set_paused_route(state, tenant, id, true).await
}

/// `POST .../endpoints/{id}/resume`: the held deliveries go out, oldest first.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{id}/resume", tag = "endpoints", operation_id = "resume_endpoint",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The endpoint id.")),
    responses((status = 200, description = "Resumed; the held deliveries are on their way.", body = EndpointView)))]
pub async fn resume(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<axum::Json<EndpointView>, ApiError> {
    set_paused_route(state, tenant, id, false).await
}

async fn set_paused_route(
    state: ApiState,
    tenant: String,
    id: String,
    paused: bool,
) -> Result<axum::Json<EndpointView>, ApiError> {
    let (tenant, id) = (tenant_id(&tenant)?, endpoint_id(&id)?);
    let ep = state
        .store
        .update_endpoint(tenant.as_str(), id.as_str(), |ep| {
            set_paused(ep, paused);
            Ok(())
        })
        .await?;
    let mut view = EndpointView::from(ep, false);
    view.held = Some(held(&state, tenant.as_str(), id.as_str()).await?);
    Ok(axum::Json(view))
}

/// Change an endpoint: the fields given change, the others keep their values.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/endpoints/{id}", tag = "endpoints", operation_id = "update_endpoint",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The endpoint id.")),
    request_body = PatchEndpoint,
    responses((status = 200, description = "The endpoint as changed.", body = EndpointView)))]
#[allow(
    clippy::too_many_lines,
    reason = "one check per field a PATCH may change, in the order of the endpoint's fields"
)]
pub async fn update(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
    Json(body): Json<PatchEndpoint>,
) -> Result<axum::Json<EndpointView>, ApiError> {
    let (tenant, id) = (tenant_id(&tenant)?, endpoint_id(&id)?);
    if body.secret.is_some() {
        return Err(ApiError::invalid_field("secret", format!(
            "secret cannot be patched; rotate it with POST /v1/tenants/{}/endpoints/{}/secret/rotate",
            tenant.as_str(),
            id.as_str()
        )));
    }
    if body.signing.is_some() {
        return Err(ApiError::invalid_field("signing", format!(
            "signing cannot be patched; rotate to a key of the other kind with POST /v1/tenants/{}/endpoints/{}/secret/rotate {{\"signing\": \"ed25519\"}}",
            tenant.as_str(),
            id.as_str()
        )));
    }
    if body.id.is_some() {
        return Err(ApiError::invalid_field(
            "id",
            "id cannot be changed; create a new endpoint and delete this one",
        ));
    }
    if let Some(url) = &body.url {
        check_url(&state, url)?;
    }
    if let Some(d) = &body.description {
        check_description(d)?;
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
    let profile = body.profile.as_deref().map(parse_profile).transpose()?;
    let token = body.token.map(TokenInput::into_auth).transpose()?;
    if matches!(body.filter, Some(Some(_))) || matches!(body.transform, Some(Some(_))) {
        check_fleet_runs(&state, PROGRAMS).await?;
    }
    let ordering = body.ordering.as_deref().map(ordering_mode).transpose()?;
    if ordering.is_some_and(|o| o != OrderingMode::None)
        || matches!(body.ordering_key, Some(Some(_)))
    {
        check_fleet_runs(&state, ORDERING).await?;
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
            if let Some(v) = profile {
                ep.profile = v;
                if v != Profile::Token {
                    // Leaving a profile drops what only it uses.
                    ep.token = None;
                }
                if v != Profile::OpenfinanceBr {
                    ep.path_template = None;
                }
            }
            if let Some(t) = &token {
                ep.token = Some(t.clone());
            }
            if let Some(v) = &body.path_template {
                ep.path_template = v.clone();
            }
            if let Some(v) = &body.client_cert {
                ep.client_cert = v.clone();
                if v.is_none() && body.client_key.is_none() {
                    ep.client_key = None;
                }
            }
            if let Some(v) = &body.client_key {
                ep.client_key = v.clone();
            }
            if let Some(v) = &body.ca {
                ep.ca = v.clone();
            }
            if let Some(v) = &body.headers {
                ep.headers = v.clone();
            }
            if let Some(v) = &body.retry_schedule {
                ep.retry_schedule = v.as_ref().map(|s| s.0.clone());
            }
            if let Some(v) = &body.filter {
                ep.filter = v.clone();
            }
            if let Some(v) = &body.transform {
                ep.transform = v.clone();
            }
            if let Some(v) = ordering {
                ep.ordering = v;
                if v != OrderingMode::Key {
                    ep.ordering_key = None;
                }
            }
            if let Some(v) = &body.ordering_key {
                ep.ordering_key = v.clone();
            }
            if let Some(v) = body.trace_context {
                ep.trace_context = v;
            }
            if let Some(v) = body.disabled {
                ep.disabled = v;
                if !v {
                    ep.disabled_reason = None;
                    ep.failing_since = None;
                }
            }
            if let Some(v) = body.paused {
                set_paused(ep, v);
            }
            let checked = check_settings(
                ep.rate_limit_per_sec,
                ep.max_in_flight,
                ep.timeout_ms,
                ep.retry_schedule.as_deref(),
            )
            .and_then(|()| check_profile(ep))
            .and_then(|()| check_programs(ep))
            .and_then(|()| check_ordering(ep))
            .and_then(|()| check_tls(ep));
            if let Err(e) = checked {
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

/// Delete an endpoint; deliveries on their way are dead-lettered as `endpoint_gone`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/endpoints/{id}", tag = "endpoints", operation_id = "delete_endpoint",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The endpoint id.")),
    responses((status = 204, description = "Deleted.")))]
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

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the old key keeps signing, e.g. "24h" (default), "30m", "0s".
    grace: Option<String>,
    /// The kind of the new key (default: the current one's): rotating an `hmac` endpoint
    /// to `ed25519` sends both signatures during the grace.
    signing: Option<Signing>,
}

/// `POST .../endpoints/{id}/secret/rotate`: a new key (an `hmac` secret is returned once, an
/// `ed25519` key shows as its public key); the old one keeps signing beside it until now +
/// grace, and stops at that moment.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{id}/secret/rotate", tag = "endpoints", operation_id = "rotate_endpoint_secret",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The endpoint id.")),
    request_body(content = Option<Rotate>, description = "Optional; no body means a grace of 24 h."),
    responses((status = 200, description = "The endpoint with its new `secret` (hmac, shown only here) or its new first public key (ed25519).", body = EndpointView)))]
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
            ApiError::bad_request(format!(
                "body must be {{\"grace\": \"24h\", \"signing\": \"hmac\" or \"ed25519\"}} (both optional) or empty: {e}"
            ))
        })?
    };
    let grace = match body.grace.as_deref() {
        None => DEFAULT_GRACE,
        Some(g) => match humantime::parse_duration(g.trim()) {
            Ok(d) if d <= MAX_GRACE => d,
            _ => {
                return Err(ApiError::invalid_field(
                    "grace",
                    format!(
                    "grace {g:?} must be a duration up to 7 days, like \"24h\", \"30m\" or \"0s\""
                ),
                ))
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
            let previous = ep.secret.clone();
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
            let scheme = match body.signing {
                Some(signing) => signing.scheme(),
                None => Key::parse(&previous).map_or(Scheme::Hmac, |k| k.scheme()),
            };
            ep.secret = new_key(scheme);
            Ok(())
        })
        .await?;
    Ok(axum::Json(EndpointView::from(ep, true)))
}
