//! Recover, replay and redrive, run as jobs. A job is a record in the jobs bucket
//! ([`gancho_store::jobs`]); every api process looks for running jobs every
//! [`LOOK_EVERY`] (among those [`gancho_store::jobs::Running`] keeps from a watch of the
//! bucket), claims one whose lease ran out (compare-and-set), and works through its
//! range of the events stream or the dead letters at the job's pace, saving its position
//! every second. An api killed mid-job leaves its lease to run out; another (or the same,
//! restarted) takes the job from its last saved position. Records read again after a
//! takeover are published again with the same `Nats-Msg-Id` (`job:<job>:<sequence>`), which
//! JetStream drops within its duplicate window, so a takeover doubles nothing.
//!
//! Each job's deliveries get their own delivery id (from the event, the endpoint and the
//! job), so they neither collide with the original delivery's de-duplication nor replace
//! its pending retry; the webhook keeps the original `webhook-id` (the event id).

use crate::error::{parse_time, rfc3339, tenant_id, unavailable, ApiError, Json, Path, Query};
use crate::page::{Page, PageQuery};
use crate::ApiState;
use async_nats::jetstream::message::PublishMessage;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use gancho_core::subject::{delivery_id, partition, PARTITIONS};
use gancho_proto::{timestamp, Attempt, DeadLetter, Delivery, Event, Message as _};
use gancho_store::jobs::{Job, JobKind, JobState, JobStore};
use gancho_store::log::{Log, Record};
use gancho_store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Records a job reads per second unless it says otherwise: enough to replay a busy day
/// in minutes, little next to a worker's capacity, so live deliveries keep their pace.
pub const DEFAULT_PACE: u32 = 200;
/// The fastest pace a job may ask for.
pub const MAX_PACE: u32 = 10_000;
/// How often an api process looks for jobs to run.
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// How long a claim on a job holds without being renewed.
const LEASE: Duration = Duration::from_secs(15);

/// A job as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    /// `recover`, `replay` or `redrive`.
    pub kind: String,
    /// `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Redrive only: the dead letters' kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_kind: Option<String>,
    /// A redrive of listed dead letters: how many were listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Records read per second at most.
    pub pace: u32,
    /// Positions in the job's range (events or dead letters, of every tenant); `done` of
    /// `total` is the progress.
    pub total: u64,
    pub done: u64,
    /// Deliveries sent.
    pub sent: u64,
    /// Records that needed nothing: another endpoint's, not matching, or delivered since.
    pub skipped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        let kind = match j.kind {
            JobKind::Recover => "recover",
            JobKind::Replay => "replay",
            JobKind::Redrive | JobKind::RedriveSelected => "redrive",
        };
        let state = match j.state {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Cancelled => "cancelled",
            JobState::Failed => "failed",
        };
        Self {
            id: j.id.clone(),
            kind: kind.into(),
            state: state.into(),
            endpoint: j.endpoint.clone(),
            dead_letter_kind: j.dead_kind.clone(),
            selected: (j.kind == JobKind::RedriveSelected).then_some(j.sequences.len()),
            since: j.since.map(rfc3339),
            until: j.until.map(rfc3339),
            pace: j.pace,
            total: j.total,
            done: j.done,
            sent: j.sent,
            skipped: j.skipped,
            error: j.error.clone(),
            created_at: rfc3339(j.created_at),
            updated_at: rfc3339(j.updated_at),
        }
    }
}

/// `{"since", "until"?, "pace"?}` of recover and replay.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RangeIn {
    /// RFC 3339: where the range starts.
    pub since: String,
    /// RFC 3339: where it ends (default: now). Replay only.
    pub until: Option<String>,
    /// Records read per second at most (1 to 10000, default 200).
    pub pace: Option<u32>,
}

/// `{"endpoint"?, "kind"?, "since"?, "until"?, "pace"?}` of a redrive: which dead letters;
/// or `{"sequences": [...], "pace"?}`: exactly those.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveIn {
    /// Exactly these dead letters (their `seq` as listed, 1 to 1,000 of them), instead of a
    /// filter. Each must be one of the tenant's; one already sent again (removed) is
    /// skipped, so a second redrive of the same list sends nothing.
    pub sequences: Option<Vec<u64>>,
    /// Only this endpoint's dead letters (or `_events` for the router's).
    pub endpoint: Option<String>,
    /// Only this kind (`exhausted`, `endpoint_gone`, ...).
    pub kind: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub pace: Option<u32>,
}

fn pace(p: Option<u32>) -> Result<u32, ApiError> {
    match p {
        None => Ok(DEFAULT_PACE),
        Some(p) if (1..=MAX_PACE).contains(&p) => Ok(p),
        Some(p) => Err(ApiError::bad_request(format!(
            "pace must be from 1 to {MAX_PACE} records per second, got {p}"
        ))),
    }
}

/// Creates a job over `stream` between `since` and `until`.
#[allow(clippy::too_many_arguments)]
async fn start(
    state: &ApiState,
    tenant: &str,
    kind: JobKind,
    endpoint: Option<String>,
    dead_kind: Option<String>,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    pace: u32,
) -> Result<(StatusCode, axum::Json<JobView>), ApiError> {
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(ApiError::bad_request("since must be before until"));
        }
    }
    let log = source(state, kind);
    let position = match since {
        Some(t) => log.sequence_at(t).await.map_err(unavailable)?,
        None => 1,
    };
    let end = match until {
        Some(t) => log.sequence_at(t).await.map_err(unavailable)?,
        None => log.end().await.map_err(unavailable)?,
    };
    let job = Job {
        endpoint,
        dead_kind,
        since,
        until,
        ..running(tenant, kind, pace, position, end)
    };
    create(state, job).await
}

/// A new job of `kind`, running over `position..end`, with nothing done yet.
fn running(tenant: &str, kind: JobKind, pace: u32, position: u64, end: u64) -> Job {
    let now = OffsetDateTime::now_utc();
    Job {
        id: gancho_store::model::random_id("job_", 20),
        tenant: tenant.to_owned(),
        kind,
        endpoint: None,
        dead_kind: None,
        since: None,
        until: None,
        pace,
        state: JobState::Running,
        error: None,
        total: end.saturating_sub(position),
        done: 0,
        sent: 0,
        skipped: 0,
        position,
        end,
        sequences: Vec::new(),
        created_at: now,
        updated_at: now,
        owner: None,
        lease_until: None,
    }
}

/// Stores a new job: 202 with it.
async fn create(state: &ApiState, job: Job) -> Result<(StatusCode, axum::Json<JobView>), ApiError> {
    JobStore::new(&state.layout).create(&job).await?;
    info!(job = %job.id, tenant = %job.tenant, kind = ?job.kind, "Job created.");
    Ok((StatusCode::ACCEPTED, axum::Json(JobView::from(&job))))
}

fn source(state: &ApiState, kind: JobKind) -> Log {
    let s = &state.layout.subjects;
    let stream = match kind {
        JobKind::Replay => s.events_stream(),
        JobKind::Recover | JobKind::Redrive | JobKind::RedriveSelected => s.dead_stream(),
    };
    Log::new(state.layout.js.clone(), stream)
}

/// Most dead letters one redrive may list.
const MAX_SELECTED: usize = 1_000;

/// Creates a redrive of the dead letters `sequences`, once each is known to be the
/// tenant's (one no longer stored is let through: the job skips it).
async fn start_selected(
    state: &ApiState,
    tenant: &str,
    mut sequences: Vec<u64>,
    pace: u32,
) -> Result<(StatusCode, axum::Json<JobView>), ApiError> {
    sequences.sort_unstable();
    sequences.dedup();
    if sequences.is_empty() || sequences.len() > MAX_SELECTED {
        return Err(ApiError::invalid_field(
            "sequences",
            format!(
                "sequences must list 1 to {MAX_SELECTED} dead letters, not {}",
                sequences.len()
            ),
        ));
    }
    let log = source(state, JobKind::RedriveSelected);
    let mine = tenant_dead_prefix(state, tenant);
    for &seq in &sequences {
        match log.at(seq).await.map_err(unavailable)? {
            Some(r) if !r.subject.starts_with(&mine) => {
                return Err(ApiError::invalid_field(
                    "sequences",
                    format!("sequences: {seq} is not one of tenant {tenant}'s dead letters"),
                ))
            }
            _ => {}
        }
    }
    let listed = sequences.len() as u64;
    let job = Job {
        sequences,
        ..running(tenant, JobKind::RedriveSelected, pace, 0, listed)
    };
    create(state, job).await
}

/// The start of every subject of `tenant`'s dead letters.
fn tenant_dead_prefix(state: &ApiState, tenant: &str) -> String {
    format!("{}.dead.{tenant}.", state.layout.subjects.prefix())
}

async fn existing_endpoint(
    state: &ApiState,
    tenant: &gancho_core::TenantId,
    id: &str,
) -> Result<String, ApiError> {
    let id = crate::endpoints::endpoint_id(id)?;
    state
        .store
        .get_endpoint(tenant.as_str(), id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("endpoint {:?} not found", id.as_str())))?;
    Ok(id.as_str().to_owned())
}

/// Redeliver what failed: every delivery to this endpoint dead-lettered since a time
/// (retries exhausted, or dropped while the endpoint was disabled), except those delivered
/// since. Each is removed from the dead letters once it is sent again.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{id}/recover", tag = "jobs", operation_id = "recover",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The endpoint id.")),
    request_body = RangeIn,
    responses((status = 202, description = "The job, running.", body = JobView)))]
pub async fn recover(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
    Json(body): Json<RangeIn>,
) -> Result<(StatusCode, axum::Json<JobView>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    let since = parse_time("since", Some(&body.since))?;
    if body.until.is_some() {
        return Err(ApiError::bad_request(
            "recover takes since only: it redelivers every failure from then on",
        ));
    }
    let pace = pace(body.pace)?;
    let id = existing_endpoint(&state, &tenant, &id).await?;
    start(
        &state,
        tenant.as_str(),
        JobKind::Recover,
        Some(id),
        None,
        since,
        None,
        pace,
    )
    .await
}

/// Replay: every event matching this endpoint in a time range, delivered ones included,
/// read from the events stream (its replay window, 7 days by default).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{id}/replay", tag = "jobs", operation_id = "replay",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The endpoint id.")),
    request_body = RangeIn,
    responses((status = 202, description = "The job, running.", body = JobView)))]
pub async fn replay(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
    Json(body): Json<RangeIn>,
) -> Result<(StatusCode, axum::Json<JobView>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    let since = parse_time("since", Some(&body.since))?;
    let until = parse_time("until", body.until.as_deref())?;
    let pace = pace(body.pace)?;
    let id = existing_endpoint(&state, &tenant, &id).await?;
    start(
        &state,
        tenant.as_str(),
        JobKind::Replay,
        Some(id),
        None,
        since,
        until,
        pace,
    )
    .await
}

/// Redrive dead letters: all of the tenant's, or those of one endpoint, kind or time range.
/// A delivery is sent again to its endpoint; an event the router refused is routed again.
/// Each is removed from the dead letters once sent, so a second redrive sends nothing.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/dead-letters/redrive", tag = "jobs", operation_id = "redrive",
    params(("tenant" = String, Path, description = "The tenant id.")),
    request_body = RedriveIn,
    responses((status = 202, description = "The job, running.", body = JobView)))]
pub async fn redrive(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Json(body): Json<RedriveIn>,
) -> Result<(StatusCode, axum::Json<JobView>), ApiError> {
    let tenant = tenant_id(&tenant)?;
    if let Some(sequences) = body.sequences {
        if body.endpoint.is_some()
            || body.kind.is_some()
            || body.since.is_some()
            || body.until.is_some()
        {
            return Err(ApiError::invalid(
                "sequences redrives exactly the dead letters listed: leave out endpoint, kind, since and until",
            ));
        }
        let pace = pace(body.pace)?;
        crate::require_tenant(&state, &tenant).await?;
        return start_selected(&state, tenant.as_str(), sequences, pace).await;
    }
    let since = parse_time("since", body.since.as_deref())?;
    let until = parse_time("until", body.until.as_deref())?;
    let pace = pace(body.pace)?;
    let (endpoint, kind) =
        crate::history::dead_letter_filter(body.endpoint.as_deref(), &body.kind)?;
    crate::require_tenant(&state, &tenant).await?;
    start(
        &state,
        tenant.as_str(),
        JobKind::Redrive,
        endpoint,
        kind.map(str::to_owned),
        since,
        until,
        pace,
    )
    .await
}

/// A job's progress.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The job id.")),
    responses((status = 200, description = "The job.", body = JobView)))]
pub async fn get(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<axum::Json<JobView>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let (job, _) = JobStore::new(&state.layout)
        .get(tenant.as_str(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id:?} not found")))?;
    Ok(axum::Json(JobView::from(&job)))
}

/// The tenant's jobs, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/jobs", tag = "jobs", operation_id = "list_jobs",
    params(("tenant" = String, Path, description = "The tenant id."), PageQuery),
    responses((status = 200, description = "A page of jobs, newest first.", body = Page<JobView>)))]
pub async fn list(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<Page<JobView>>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    if let (_, Some(after)) = q.parse()? {
        if !is_place(&after) {
            // A cursor of the list as it was ordered before (by id) would start past every
            // job of this order: an empty page, as if there were no more.
            return Err(ApiError::bad_request(
                "cursor is from the jobs list as it was ordered before (by id); the list is newest first now: start again from the first page (no cursor)",
            ));
        }
    }
    crate::require_tenant(&state, &tenant).await?;
    let mut jobs: Vec<(String, JobView)> = JobStore::new(&state.layout)
        .list(tenant.as_str())
        .await?
        .into_iter()
        .map(|(j, _)| (newest_first(&j), JobView::from(&j)))
        .collect();
    jobs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let page = crate::page::page(jobs, &q, |(place, _)| place)?;
    Ok(axum::Json(Page {
        data: page.data.into_iter().map(|(_, j)| j).collect(),
        next: page.next,
    }))
}

/// A job's place in the list, which the page cursor carries: the newest first (ids are
/// random, so their order says nothing: the jobs view showed any 50 of them), then by id.
fn newest_first(job: &Job) -> String {
    let nanos = u64::try_from(job.created_at.unix_timestamp_nanos()).unwrap_or(0);
    format!("{:020}{}", u64::MAX - nanos, job.id)
}

/// Whether a cursor's key is a place [`newest_first`] gives: 20 digits, then the id.
fn is_place(key: &str) -> bool {
    key.len() > 20 && key.as_bytes()[..20].iter().all(u8::is_ascii_digit)
}

/// Cancel a running job: it stops within a second; what it sent stays sent.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/jobs/{id}", tag = "jobs", operation_id = "cancel_job",
    params(("tenant" = String, Path, description = "The tenant id."), ("id" = String, Path, description = "The job id.")),
    responses((status = 200, description = "The job, cancelled.", body = JobView)))]
pub async fn cancel(
    State(state): State<ApiState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<axum::Json<JobView>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let store = JobStore::new(&state.layout);
    for _ in 0..10 {
        let (mut job, rev) = store
            .get(tenant.as_str(), &id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("job {id:?} not found")))?;
        if job.state != JobState::Running {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("job {id:?} is no longer running"),
            ));
        }
        job.state = JobState::Cancelled;
        job.updated_at = OffsetDateTime::now_utc();
        match store.update(&job, rev).await {
            Ok(_) => return Ok(axum::Json(JobView::from(&job))),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(unavailable("the job keeps changing"))
}

/// Runs jobs in this api process until `cancel`.
pub fn spawn(state: ApiState, cancel: CancellationToken) {
    tokio::spawn(async move {
        let me = gancho_store::model::random_id("api_", 12);
        let mine: Arc<Mutex<HashSet<String>>> = Default::default();
        let store = JobStore::new(&state.layout);
        let running = gancho_store::jobs::Running::follow(&store, cancel.clone());
        loop {
            let now = OffsetDateTime::now_utc();
            for (mut job, rev) in running.list() {
                let free = job.lease_until.is_none_or(|t| t < now);
                let key = format!("{}.{}", job.tenant, job.id);
                if !free
                    || mine
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&key)
                {
                    continue;
                }
                job.owner = Some(me.clone());
                job.lease_until = Some(now + LEASE);
                let Ok(rev) = store.update(&job, rev).await else {
                    continue;
                };
                mine.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone());
                let (state, mine, cancel, me) =
                    (state.clone(), mine.clone(), cancel.clone(), me.clone());
                tokio::spawn(async move {
                    info!(job = %job.id, position = job.position, "Running a job.");
                    Runner::new(state, job, rev, me).run(cancel).await;
                    mine.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                });
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    });
}

struct Runner {
    state: ApiState,
    store: JobStore,
    /// The dead letters' stream, fetched once (recover and redrive delete from it).
    dead: tokio::sync::OnceCell<async_nats::jetstream::stream::Stream>,
    job: Job,
    rev: u64,
    me: String,
}

/// What one record came to.
enum Step {
    Sent,
    Skipped,
}

impl Runner {
    fn new(state: ApiState, job: Job, rev: u64, me: String) -> Self {
        Self {
            store: JobStore::new(&state.layout),
            dead: tokio::sync::OnceCell::new(),
            state,
            job,
            rev,
            me,
        }
    }

    fn filter(&self) -> String {
        let s = &self.state.layout.subjects;
        let t = &self.job.tenant;
        match self.job.kind {
            JobKind::Replay => format!("{}.events.{t}.>", s.prefix()),
            JobKind::Recover => s.dead_filter(t, self.job.endpoint.as_deref(), None),
            JobKind::RedriveSelected => s.dead_filter(t, None, None),
            JobKind::Redrive => s.dead_filter(
                t,
                self.job.endpoint.as_deref(),
                self.job.dead_kind.as_deref(),
            ),
        }
    }

    async fn run(mut self, cancel: CancellationToken) {
        let log = source(&self.state, self.job.kind);
        let filter = self.filter();
        let start = self.job.position.saturating_sub(self.job.done);
        loop {
            let tick = Instant::now();
            if cancel.is_cancelled() {
                // Hand it back: another api takes it at once.
                self.job.owner = None;
                self.job.lease_until = None;
                let _ = self.save().await;
                return;
            }
            let batch = self.job.pace as usize;
            let (records, complete) = match self.read(&log, &filter, batch).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(job = %self.job.id, error = %e, "A job cannot read; trying again.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut failed = None;
            for (next, r) in &records {
                let stepped = match r {
                    Some(r) => self.step(r).await,
                    // A listed dead letter no longer stored: sent again already.
                    None => Ok(Step::Skipped),
                };
                match stepped {
                    Ok(Step::Sent) => self.job.sent += 1,
                    Ok(Step::Skipped) => self.job.skipped += 1,
                    Err(Failure::Retry(e)) => {
                        warn!(job = %self.job.id, error = %e, "A job's delivery was not stored; trying again.");
                        failed = Some(());
                        break;
                    }
                    Err(Failure::Fatal(e)) => {
                        self.job.state = JobState::Failed;
                        self.job.error = Some(e);
                        break;
                    }
                }
                self.job.position = *next;
            }
            if failed.is_none() && complete && self.job.state == JobState::Running {
                self.job.position = self.job.end;
                self.job.state = JobState::Done;
            }
            self.job.done = self.job.position.saturating_sub(start);
            match self.save().await {
                Save::Saved => {}
                Save::Stop => return,
            }
            if self.job.state != JobState::Running {
                info!(job = %self.job.id, state = ?self.job.state, sent = self.job.sent, "Job finished.");
                return;
            }
            if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }

    /// Writes progress and renews the lease; stops when the job was cancelled or taken.
    async fn save(&mut self) -> Save {
        loop {
            let now = OffsetDateTime::now_utc();
            self.job.updated_at = now;
            if self.job.owner.is_some() {
                self.job.lease_until = Some(now + LEASE);
            }
            match self.store.update(&self.job, self.rev).await {
                Ok(rev) => {
                    self.rev = rev;
                    return Save::Saved;
                }
                Err(StoreError::Conflict(_)) => {
                    let Ok(Some((theirs, rev))) =
                        self.store.get(&self.job.tenant, &self.job.id).await
                    else {
                        return Save::Stop;
                    };
                    if theirs.state != JobState::Running
                        || theirs.owner.as_deref() != Some(&self.me)
                    {
                        info!(job = %self.job.id, state = ?theirs.state, "Job stopped (cancelled, or taken over).");
                        return Save::Stop;
                    }
                    self.rev = rev;
                }
                Err(e) => {
                    warn!(job = %self.job.id, error = %e, "Cannot save a job's progress; trying again.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The job's next records (at most `batch`), each with the position after it (`None`
    /// for a listed dead letter no longer stored), and whether they are the last.
    async fn read(
        &self,
        log: &Log,
        filter: &str,
        batch: usize,
    ) -> Result<(Vec<(u64, Option<Record>)>, bool), gancho_store::log::LogError> {
        if self.job.kind != JobKind::RedriveSelected {
            let records = log
                .range(filter, self.job.position, self.job.end, batch)
                .await?;
            let complete = records.len() < batch;
            return Ok((
                records.into_iter().map(|r| (r.seq + 1, Some(r))).collect(),
                complete,
            ));
        }
        let from = self.job.position as usize;
        let to = (from + batch).min(self.job.sequences.len());
        let mine = tenant_dead_prefix(&self.state, &self.job.tenant);
        let mut out = Vec::with_capacity(to.saturating_sub(from));
        for (i, &seq) in self.job.sequences.iter().enumerate().take(to).skip(from) {
            // Checked when the job was made; checked again, as a dead letter's sequence is
            // never reused but the check costs nothing.
            let r = log.at(seq).await?.filter(|r| r.subject.starts_with(&mine));
            out.push((i as u64 + 1, r));
        }
        Ok((out, to >= self.job.sequences.len()))
    }

    async fn step(&self, r: &Record) -> Result<Step, Failure> {
        match self.job.kind {
            JobKind::Replay => self.replay(r).await,
            JobKind::Recover | JobKind::Redrive | JobKind::RedriveSelected => self.redrive(r).await,
        }
    }

    async fn replay(&self, r: &Record) -> Result<Step, Failure> {
        let Ok(ev) = Event::decode(&r.payload[..]) else {
            return Ok(Step::Skipped);
        };
        let endpoint = self.job.endpoint.as_deref().unwrap_or_default();
        let snapshot = self.state.live.load_full();
        let Some(ep) = snapshot
            .endpoints(&self.job.tenant)
            .iter()
            .find(|e| e.config.id.as_str() == endpoint)
        else {
            return Err(Failure::Fatal(format!(
                "endpoint {endpoint:?} no longer exists"
            )));
        };
        if !ep.subscription.matches(&ev.r#type, &ev.channels)
            || serde_json::from_slice::<serde::de::IgnoredAny>(&ev.payload).is_err()
        {
            return Ok(Step::Skipped);
        }
        // The endpoint's filter, as the router applies it.
        let occurred_at = ev
            .occurred_at
            .as_ref()
            .and_then(gancho_proto::to_datetime)
            .unwrap_or(r.time);
        let parts = gancho_store::programs::EventParts {
            id: &ev.id,
            event_type: &ev.r#type,
            occurred_at,
            payload: &ev.payload,
            channels: &ev.channels,
        };
        if !gancho_store::programs::Filtering::new("api", parts).passes(ep) {
            return Ok(Step::Skipped);
        }
        let delivery = Delivery {
            id: String::new(),
            event_sequence: r.seq,
            event_id: ev.id,
            tenant: self.job.tenant.clone(),
            endpoint_id: endpoint.to_owned(),
            r#type: ev.r#type,
            occurred_at: ev.occurred_at,
            payload: ev.payload,
            attributes: ev.attributes,
            channels: ev.channels,
            ..Default::default()
        };
        self.send(delivery, r.seq).await?;
        Ok(Step::Sent)
    }

    async fn redrive(&self, r: &Record) -> Result<Step, Failure> {
        let Ok(dead) = DeadLetter::decode(&r.payload[..]) else {
            return Ok(Step::Skipped);
        };
        match dead.delivery {
            Some(d) => {
                if self.job.kind == JobKind::Recover {
                    let kind = gancho_core::policy::DeadKind::parse(&dead.kind);
                    if !kind.is_some_and(gancho_core::policy::DeadKind::recoverable) {
                        return Ok(Step::Skipped);
                    }
                    if self.delivered_since(&d, r.time).await? {
                        self.remove(r.seq).await?;
                        return Ok(Step::Skipped);
                    }
                }
                self.send(d, r.seq).await?;
            }
            None => {
                if self.job.kind == JobKind::Recover {
                    return Ok(Step::Skipped);
                }
                // An event the router refused: route it again, under a new message id.
                let publish = PublishMessage::build()
                    .payload(dead.original)
                    .message_id(format!("job:{}:{}", self.job.id, r.seq));
                self.publish(dead.subject, publish).await?;
            }
        }
        self.remove(r.seq).await?;
        Ok(Step::Sent)
    }

    /// Whether the delivery's event reached its endpoint after `after` (a later recover or a
    /// replay did it).
    async fn delivered_since(&self, d: &Delivery, after: OffsetDateTime) -> Result<bool, Failure> {
        let s = &self.state.layout.subjects;
        let filter = format!(
            "{}.attempts.{}.{}.*.success.{}",
            s.prefix(),
            d.tenant,
            d.endpoint_id,
            gancho_core::subject::event_token(&d.event_id)
        );
        let log = Log::new(self.state.layout.js.clone(), s.attempts_stream());
        let found = log
            .range(&filter, 0, u64::MAX, 1_000)
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
        Ok(found.iter().any(|r| {
            r.time > after
                && Attempt::decode(&r.payload[..]).is_ok_and(|a| a.event_id == d.event_id)
        }))
    }

    /// Publishes a fresh delivery of `d` (no attempts yet) under this job's ids.
    async fn send(&self, d: Delivery, seq: u64) -> Result<(), Failure> {
        let s = &self.state.layout.subjects;
        let delivery = Delivery {
            id: delivery_id(&d.event_id, &format!("{}#{}", d.endpoint_id, self.job.id)),
            attempts: 0,
            deferrals: 0,
            created_at: Some(timestamp(OffsetDateTime::now_utc())),
            waiting_since: None,
            // Its trace context goes on; the wait it was in is over.
            trace: d.trace.map(|t| {
                Box::new(gancho_proto::Trace {
                    parent: t.parent,
                    ..Default::default()
                })
            }),
            ..d
        };
        let p = partition(&delivery.tenant, &delivery.endpoint_id, PARTITIONS);
        let mut publish = PublishMessage::build();
        let subject = match self.key_of(&delivery) {
            // The bulk lane: a job's copies take what the tenants' live deliveries leave
            // free, and count toward their tenant's share there.
            None => s.delivery_bulk(p, &delivery.tenant),
            // An ordered endpoint's: its ordered lane, under a key of this job's, in the
            // order of the events stream among themselves.
            Some(key) => {
                if delivery.event_sequence > 0 {
                    publish = publish.header(
                        gancho_core::subject::EVENT_SEQUENCE_HEADER,
                        delivery.event_sequence.to_string().as_str(),
                    );
                }
                s.ordered(p, &delivery.tenant, &delivery.endpoint_id, &key)
            }
        };
        let publish = publish
            .payload(Bytes::from(delivery.encode_to_vec()))
            .message_id(format!("job:{}:{seq}", self.job.id));
        self.publish(subject, publish).await
    }

    /// The job's key for a copy to an endpoint that orders its deliveries (as it is set
    /// now), `None` for one that does not.
    fn key_of(&self, d: &Delivery) -> Option<String> {
        let snapshot = self.state.live.load_full();
        let ep = snapshot
            .endpoints(&d.tenant)
            .iter()
            .find(|e| e.config.id.as_str() == d.endpoint_id)?;
        let key = ep.config.ordering().key_of(&d.payload)?;
        Some(gancho_core::ordering::job_key(&self.job.id, &key))
    }

    async fn publish(&self, subject: String, publish: PublishMessage) -> Result<(), Failure> {
        let js = &self.state.layout.js;
        async { js.send_publish(subject, publish).await?.await }
            .await
            .map(|_| ())
            .map_err(|e| Failure::Retry(e.to_string()))
    }

    /// Removes a dead letter that was sent again.
    async fn remove(&self, seq: u64) -> Result<(), Failure> {
        let layout = &self.state.layout;
        let stream = self
            .dead
            .get_or_try_init(|| layout.js.get_stream(layout.subjects.dead_stream()))
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
        match stream.delete_message(seq).await {
            Ok(_) => Ok(()),
            // Gone already (a takeover did it, or it aged out).
            Err(e) if gancho_store::refusal::of(&e) == gancho_store::refusal::Refusal::NotFound => {
                Ok(())
            }
            Err(e) => Err(Failure::Retry(e.to_string())),
        }
    }
}

enum Save {
    Saved,
    Stop,
}

enum Failure {
    /// JetStream did not take a write: the record is read again.
    Retry(String),
    /// The job cannot go on.
    Fatal(String),
}
