//! "Why didn't my webhook arrive?": the delivery log of an endpoint, every delivery and
//! attempt of one event, and the dead letters, read from `GANCHO_ATTEMPTS` and `GANCHO_DEAD`
//! by subject ([`gancho_store::log`]). Newest first; the cursor is a position in the log, so
//! pages never overlap while new records arrive.

use crate::error::{parse_time, rfc3339, tenant_id, unavailable, ApiError, Path, Query};
use crate::page::{cursor, Page};
use crate::ApiState;
use axum::extract::State;
use gancho_core::subject::{status_class, DEAD_EVENT_TOKEN};
use gancho_proto::{to_datetime, Attempt, DeadLetter, Event, Message as _};
use gancho_store::log::{Log, Record};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Outcomes an attempt can have (the `outcome` filter).
pub const OUTCOMES: &[&str] = &gancho_core::policy::AttemptOutcome::NAMES;
/// Kinds a dead letter can have (the `kind` filter).
pub const DEAD_KINDS: &[&str] = &gancho_core::policy::DeadKind::NAMES;
/// Records one event may have in each log; more are not shown.
const PER_EVENT_MAX: usize = 1_000;

/// `?limit=&cursor=&since=&until=`, shared by the logs.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Records per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The `next` value of the previous page; leave out for the first page.
    pub cursor: Option<String>,
    /// Only records at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only records before this time (RFC 3339).
    pub until: Option<String>,
    /// Attempts only: a status class (`2xx`, `3xx`, `4xx`, `5xx`), an exact status (`503`),
    /// or `none` (no answer: timeouts, connection and TLS errors).
    pub status: Option<String>,
    /// Attempts only: `success`, `http_error`, `timeout`, `connect_error`, `tls_error`,
    /// `request_error` or `blocked`.
    pub outcome: Option<String>,
    /// Dead letters: the endpoint id, or `_events` for events the router could not deliver
    /// anywhere. The tenant's delivery log: the endpoint id.
    pub endpoint: Option<String>,
    /// Dead letters only: `exhausted`, `endpoint_gone`, `endpoint_disabled`,
    /// `undecodable`, `not_json`, `subject_mismatch`, `invalid` or `schema`.
    pub kind: Option<String>,
}

/// The sequences `after..before` a query covers, and its page size.
pub(crate) async fn bounds(log: &Log, q: &LogQuery) -> Result<(u64, u64, usize), ApiError> {
    let page = crate::page::PageQuery {
        limit: q.limit.clone(),
        cursor: q.cursor.clone(),
    };
    let (limit, after) = page.parse()?;
    let cursor_before = after
        .map(|c| {
            c.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "cursor is not one this API returned; pass the \"next\" value of the previous page as it was",
                )
            })
        })
        .transpose()?;
    let (since, until) = (
        parse_time("since", q.since.as_deref())?,
        parse_time("until", q.until.as_deref())?,
    );
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(ApiError::bad_request("since must be before until"));
        }
    }
    let lo = match since {
        Some(t) => log.sequence_at(t).await.map_err(unavailable)?,
        None => 0,
    };
    let mut hi = match until {
        Some(t) => log.sequence_at(t).await.map_err(unavailable)?,
        None => log.end().await.map_err(unavailable)?,
    };
    if let Some(c) = cursor_before {
        hi = hi.min(c);
    }
    Ok((lo, hi, limit))
}

/// One attempt, as the delivery log shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// Position in the attempt log.
    pub seq: u64,
    pub event_id: String,
    pub delivery_id: String,
    pub endpoint_id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// 1 for the first attempt of a delivery.
    pub attempt: u32,
    pub at: String,
    /// The HTTP status of the answer; null when there was none (timeout, connection or TLS
    /// error).
    pub status: Option<u16>,
    pub latency_ms: f64,
    /// `success`, `http_error`, `timeout`, `connect_error`, `tls_error`, `request_error`,
    /// `blocked`.
    pub outcome: String,
    /// What went wrong, when there was no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The URL requested, without its query string.
    pub url: String,
    /// The first 4 KiB of the answer's body (invalid UTF-8 replaced).
    pub response_body: String,
    /// The answer's headers that matter (content type, retry-after, ...).
    pub response_headers: BTreeMap<String, String>,
    /// When the next attempt is due, if one was scheduled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

impl AttemptView {
    pub(crate) fn from(seq: u64, a: Attempt) -> Self {
        Self {
            seq,
            event_id: a.event_id,
            delivery_id: a.delivery_id,
            endpoint_id: a.endpoint_id,
            event_type: a.r#type,
            attempt: a.attempt,
            at: a
                .at
                .as_ref()
                .and_then(to_datetime)
                .map(rfc3339)
                .unwrap_or_default(),
            status: (a.status != 0).then_some(a.status as u16),
            latency_ms: a.latency_us as f64 / 1000.0,
            outcome: a.outcome,
            error: (!a.error.is_empty()).then_some(a.error),
            url: a.url,
            response_body: String::from_utf8_lossy(&a.response_body).into_owned(),
            response_headers: a.response_headers.into_iter().collect(),
            next_attempt_at: a
                .next_attempt_at
                .as_ref()
                .and_then(to_datetime)
                .map(rfc3339),
        }
    }
}

/// The `status` filter: the class for the subject, and an exact code to check.
fn status_filter(v: &Option<String>) -> Result<(Option<&'static str>, Option<u16>), ApiError> {
    let Some(v) = v.as_deref().filter(|s| !s.is_empty()) else {
        return Ok((None, None));
    };
    let bad = || {
        ApiError::bad_request(format!(
            "status must be a class (2xx, 3xx, 4xx, 5xx), a status code from 100 to 599, or none; got {v:?}"
        ))
    };
    match v {
        "1xx" | "2xx" | "3xx" | "4xx" | "5xx" => {
            let class = ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .into_iter()
                .find(|c| *c == v)
                .ok_or_else(bad)?;
            Ok((Some(class), None))
        }
        "none" => Ok((Some("none"), None)),
        code => match code.parse::<u16>() {
            Ok(c) if (100..=599).contains(&c) => Ok((Some(status_class(c)), Some(c))),
            _ => Err(bad()),
        },
    }
}

fn one_of(
    name: &str,
    v: &Option<String>,
    set: &[&'static str],
) -> Result<Option<&'static str>, ApiError> {
    match v.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => set
            .iter()
            .find(|s| **s == v)
            .copied()
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be one of {}; got {v:?}",
                    set.join(", ")
                ))
            }),
    }
}

/// The endpoint (an id, or `_events` for the router's) and kind that narrow a set of dead
/// letters, each checked.
pub(crate) fn dead_letter_filter(
    endpoint: Option<&str>,
    kind: &Option<String>,
) -> Result<(Option<String>, Option<&'static str>), ApiError> {
    let endpoint = match endpoint.filter(|s| !s.is_empty()) {
        None => None,
        Some(DEAD_EVENT_TOKEN) => Some(DEAD_EVENT_TOKEN.to_owned()),
        Some(e) => Some(crate::endpoints::endpoint_id(e)?.as_str().to_owned()),
    };
    Ok((endpoint, one_of("kind", kind, DEAD_KINDS)?))
}

fn attempts_log(state: &ApiState) -> Log {
    Log::new(
        state.layout.js.clone(),
        state.layout.subjects.attempts_stream(),
    )
}

fn dead_log(state: &ApiState) -> Log {
    Log::new(state.layout.js.clone(), state.layout.subjects.dead_stream())
}

/// The delivery log of an endpoint: every attempt, newest first, with its status, latency,
/// outcome and the start of the answer.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{id}/attempts", tag = "delivery log", operation_id = "list_attempts",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The endpoint id."), LogQuery),
    responses((status = 200, description = "A page of attempts, newest first.", body = Page<AttemptView>)))]
pub async fn attempts(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<axum::Json<Page<AttemptView>>, ApiError> {
    let (tenant, id) = (tenant_id(&tenant)?, crate::endpoints::endpoint_id(&id)?);
    attempts_page(&state, &tenant, Some(id.as_str()), &q).await
}

/// The delivery log of the whole tenant: every endpoint's attempts (deleted endpoints'
/// too), newest first, with the same filters and paging as an endpoint's; `endpoint` narrows
/// it to one.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/attempts", tag = "delivery log", operation_id = "list_tenant_attempts",
    params(("tenant" = String, Path, description = "The tenant id."), LogQuery),
    responses((status = 200, description = "A page of attempts, newest first.", body = Page<AttemptView>)))]
pub async fn tenant_attempts(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<axum::Json<Page<AttemptView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let endpoint = match q.endpoint.as_deref().filter(|s| !s.is_empty()) {
        Some(e) => Some(gancho_core::EndpointId::new(e).map_err(|err| {
            ApiError::bad_request(format!("endpoint is not an endpoint id: {err}"))
        })?),
        None => None,
    };
    attempts_page(&state, &tenant, endpoint.as_ref().map(|e| e.as_str()), &q).await
}

/// A page of the attempts of `tenant`, of one endpoint or of all.
async fn attempts_page(
    state: &ApiState,
    tenant: &gancho_core::TenantId,
    endpoint: Option<&str>,
    q: &LogQuery,
) -> Result<axum::Json<Page<AttemptView>>, ApiError> {
    let (class, code) = status_filter(&q.status)?;
    let outcome = one_of("outcome", &q.outcome, OUTCOMES)?;
    // Deleted endpoints keep their log; an id that never had one reads as empty.
    crate::require_tenant(state, tenant).await?;
    let log = attempts_log(state);
    let (lo, hi, limit) = bounds(&log, q).await?;
    let filter = state.layout.subjects.attempts_filter(
        tenant.as_str(),
        endpoint.unwrap_or("*"),
        class,
        outcome,
    );
    let matches = |a: &Attempt| code.is_none_or(|c| a.status == u32::from(c));
    let page = log
        .newest_first(&filter, lo, hi, limit, |r: &Record| {
            Attempt::decode(&r.payload[..]).is_ok_and(|a| matches(&a))
        })
        .await
        .map_err(unavailable)?;
    let data = page
        .records
        .into_iter()
        .filter_map(|r| {
            Some(AttemptView::from(
                r.seq,
                Attempt::decode(&r.payload[..]).ok()?,
            ))
        })
        .collect();
    Ok(axum::Json(Page {
        data,
        next: page.next.map(|n| cursor(&n.to_string())),
    }))
}

/// A dead letter: what gancho gave up on, and why.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    /// Position in the dead letters.
    pub seq: u64,
    /// `exhausted`, `endpoint_gone`, `endpoint_disabled` (a delivery), or `undecodable`,
    /// `not_json`, `subject_mismatch`, `invalid`, `schema` (an event the router refused).
    pub kind: String,
    /// One line: why it was not delivered.
    pub reason: String,
    pub at: String,
    /// The endpoint, or `_events` for an event the router could not deliver anywhere.
    pub endpoint_id: String,
    /// The event, as far as it could be read.
    pub event: Option<EventView>,
    /// The delivery's attempts so far (for a delivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// An event as far as it could be read.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload, when it is JSON.
    #[schema(value_type = Option<serde_json::Value>)]
    pub data: Option<serde_json::Value>,
}

impl DeadLetterView {
    fn from(seq: u64, subject_endpoint: &str, d: DeadLetter) -> Self {
        let (event, attempts) = match &d.delivery {
            Some(del) => (
                Some(EventView {
                    id: del.event_id.clone(),
                    event_type: del.r#type.clone(),
                    data: serde_json::from_slice(&del.payload).ok(),
                }),
                Some(del.attempts),
            ),
            None => (
                Event::decode(&d.original[..]).ok().map(|e| EventView {
                    id: e.id,
                    event_type: e.r#type,
                    data: serde_json::from_slice(&e.payload).ok(),
                }),
                None,
            ),
        };
        Self {
            seq,
            kind: d.kind,
            reason: d.reason,
            at: d
                .at
                .as_ref()
                .and_then(to_datetime)
                .map(rfc3339)
                .unwrap_or_default(),
            endpoint_id: subject_endpoint.to_owned(),
            event,
            attempts,
        }
    }
}

/// The dead letters of a tenant (optionally of one endpoint and one kind), newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/dead-letters", tag = "delivery log", operation_id = "list_dead_letters",
    params(("tenant" = String, Path, description = "The tenant id."), LogQuery),
    responses((status = 200, description = "A page of dead letters, newest first.", body = Page<DeadLetterView>)))]
pub async fn dead_letters(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<axum::Json<Page<DeadLetterView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let (endpoint, kind) = dead_letter_filter(q.endpoint.as_deref(), &q.kind)?;
    crate::require_tenant(&state, &tenant).await?;
    let log = dead_log(&state);
    let (lo, hi, limit) = bounds(&log, &q).await?;
    let subjects = &state.layout.subjects;
    let filter = subjects.dead_filter(tenant.as_str(), endpoint.as_deref(), kind);
    let page = log
        .newest_first(&filter, lo, hi, limit, |_| true)
        .await
        .map_err(unavailable)?;
    let data = page
        .records
        .into_iter()
        .filter_map(|r| {
            let (_, ep, _) = subjects.parse_dead(&r.subject)?;
            let d = DeadLetter::decode(&r.payload[..]).ok()?;
            Some(DeadLetterView::from(r.seq, ep, d))
        })
        .collect();
    Ok(axum::Json(Page {
        data,
        next: page.next.map(|n| cursor(&n.to_string())),
    }))
}

/// One delivery of an event, with every attempt.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub endpoint_id: String,
    pub delivery_id: String,
    /// `delivered`, `retrying` (a retry is scheduled), `dead` (given up: see `dead_letter`),
    /// or `in_progress` (being attempted, or waiting its turn).
    pub state: String,
    /// When the scheduled retry is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Oldest first.
    pub attempts: Vec<AttemptView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterView>,
}

/// Every delivery of an event and every attempt.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventDeliveries {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub deliveries: Vec<DeliveryView>,
    /// Dead letters of the event itself (the router could not deliver it anywhere).
    pub dead_letters: Vec<DeadLetterView>,
}

/// An event's deliveries: for each endpoint, its state and every attempt, with status codes.
/// Found from the attempt log and the dead letters (30 days by default); an event that
/// matched no endpoint, or is still on its way, has none yet.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events/{id}", tag = "delivery log", operation_id = "get_event",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The event id.")),
    responses((status = 200, description = "The event's deliveries and attempts.", body = EventDeliveries)))]
#[allow(
    clippy::too_many_lines,
    reason = "an event's deliveries from the attempt log and the dead letters in one pass, per endpoint"
)]
pub async fn event(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<axum::Json<EventDeliveries>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    crate::require_tenant(&state, &tenant).await?;
    let subjects = &state.layout.subjects;
    let (attempts_log, dead_log) = (attempts_log(&state), dead_log(&state));
    let (attempts_filter, dead_filter) = (
        subjects.attempts_of_event(tenant.as_str(), &id),
        subjects.dead_of_event(tenant.as_str(), &id),
    );
    let (attempts, dead) = tokio::try_join!(
        attempts_log.range(&attempts_filter, 0, u64::MAX, PER_EVENT_MAX),
        dead_log.range(&dead_filter, 0, u64::MAX, PER_EVENT_MAX),
    )
    .map_err(unavailable)?;
    let mut event_type = None;
    let mut by_endpoint: BTreeMap<String, DeliveryView> = BTreeMap::new();
    for r in attempts {
        let Ok(a) = Attempt::decode(&r.payload[..]) else {
            continue;
        };
        // The token is a hash: the full id decides.
        if a.event_id != id {
            continue;
        }
        event_type.get_or_insert_with(|| a.r#type.clone());
        let view = AttemptView::from(r.seq, a);
        by_endpoint
            .entry(view.endpoint_id.clone())
            .or_insert_with(|| DeliveryView {
                endpoint_id: view.endpoint_id.clone(),
                delivery_id: view.delivery_id.clone(),
                state: String::new(),
                next_attempt_at: None,
                attempts: Vec::new(),
                dead_letter: None,
            })
            .attempts
            .push(view);
    }
    let mut event_dead = Vec::new();
    for r in dead {
        let Some((_, ep, _)) = subjects.parse_dead(&r.subject) else {
            continue;
        };
        let Ok(d) = DeadLetter::decode(&r.payload[..]) else {
            continue;
        };
        let view = DeadLetterView::from(r.seq, ep, d);
        if view.event.as_ref().is_some_and(|e| e.id != id) {
            continue;
        }
        if ep == DEAD_EVENT_TOKEN {
            event_dead.push(view);
            continue;
        }
        let delivery_id = gancho_core::subject::delivery_id(&id, ep);
        by_endpoint
            .entry(ep.to_owned())
            .or_insert_with(|| DeliveryView {
                endpoint_id: ep.to_owned(),
                delivery_id,
                state: String::new(),
                next_attempt_at: None,
                attempts: Vec::new(),
                dead_letter: None,
            })
            .dead_letter = Some(view);
    }
    if by_endpoint.is_empty() && event_dead.is_empty() {
        return Err(ApiError::not_found(format!(
            "no attempt and no dead letter for event {id:?}: it matched no endpoint, is still on its way, or is older than the log (30 days)"
        )));
    }
    let deliveries_stream = state
        .layout
        .js
        .get_stream(subjects.deliveries_stream())
        .await
        .map_err(unavailable)?;
    let mut deliveries = Vec::with_capacity(by_endpoint.len());
    for (_, mut d) in by_endpoint {
        d.state = if d.dead_letter.is_some() {
            "dead"
        } else if d.attempts.iter().any(|a| a.outcome == "success") {
            "delivered"
        } else {
            match deliveries_stream
                .get_last_raw_message_by_subject(&subjects.retry(&d.delivery_id))
                .await
            {
                Ok(m) => {
                    d.next_attempt_at = m
                        .headers
                        .get("Nats-Schedule")
                        .and_then(|v| gancho_core::retry::parse_schedule_at(v.as_str()))
                        .map(rfc3339);
                    "retrying"
                }
                Err(_) => "in_progress",
            }
        }
        .to_owned();
        deliveries.push(d);
    }
    Ok(axum::Json(EventDeliveries {
        id,
        event_type,
        deliveries,
        dead_letters: event_dead,
    }))
}
