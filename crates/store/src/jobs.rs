//! Jobs: recover, replay and redrive, each a record in the `gancho_jobs` bucket under
//! `<tenant>.<job id>` that says what to do, how far it got and who runs it. Every write is a
//! compare-and-set on the record's revision, so a cancel, a second api process taking over an
//! abandoned job, and progress never overwrite each other.

use crate::repo::backend;
use crate::StoreError;
use async_nats::jetstream::kv;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Jobs [`JobStore::list`] reads at once.
const LIST_READS: usize = 32;

/// What a job does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Redeliver an endpoint's dead-lettered deliveries since a time (not those that later
    /// succeeded).
    Recover,
    /// Redeliver every event matching an endpoint in a time range, delivered ones included.
    Replay,
    /// Redeliver dead letters (a filtered set or all), removing each once it is sent again.
    Redrive,
    /// Redeliver the dead letters listed in [`Job::sequences`], removing each once it is sent
    /// again. A kind of its own: a version that does not know it cannot read the job and so
    /// leaves it alone, rather than taking it for a redrive of everything.
    RedriveSelected,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done,
    Cancelled,
    Failed,
}

/// A job as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub tenant: String,
    pub kind: JobKind,
    /// The endpoint (recover, replay; optional for redrive).
    pub endpoint: Option<String>,
    /// Redrive only: the dead letters' kind.
    pub dead_kind: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub since: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub until: Option<OffsetDateTime>,
    /// Records read per second at most.
    pub pace: u32,
    pub state: JobState,
    /// Why a job failed.
    pub error: Option<String>,
    /// Records in the job's range (events or dead letters, before filtering).
    pub total: u64,
    /// Records read so far.
    pub done: u64,
    /// Deliveries sent.
    pub sent: u64,
    /// Records that needed nothing (no match, already delivered).
    pub skipped: u64,
    /// The next sequence to read in the job's stream, and the one to stop before (for
    /// `redrive_selected`, the next index into `sequences`, and their count).
    pub position: u64,
    pub end: u64,
    /// `redrive_selected`: the dead letters' sequences, ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The api process running it, and until when its claim holds.
    pub owner: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub lease_until: Option<OffsetDateTime>,
}

/// A job's key in the jobs bucket.
pub fn key(tenant: &str, id: &str) -> String {
    format!("{tenant}.{id}")
}

/// The jobs bucket.
#[derive(Clone)]
pub struct JobStore {
    kv: kv::Store,
}

impl JobStore {
    pub fn new(layout: &crate::Layout) -> Self {
        Self {
            kv: layout.jobs.clone(),
        }
    }

    pub async fn create(&self, job: &Job) -> Result<u64, StoreError> {
        let bytes = serde_json::to_vec(job).map_err(backend)?;
        self.kv
            .create(key(&job.tenant, &job.id), bytes.into())
            .await
            .map_err(backend)
    }

    /// A job and its revision.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<(Job, u64)>, StoreError> {
        self.read(&key(tenant, id)).await
    }

    async fn read(&self, key: &str) -> Result<Option<(Job, u64)>, StoreError> {
        match self.kv.entry(key).await.map_err(backend)? {
            Some(e) if e.operation == kv::Operation::Put => {
                let job = serde_json::from_slice(&e.value).map_err(|err| StoreError::Corrupt {
                    key: key.to_owned(),
                    reason: err.to_string(),
                })?;
                Ok(Some((job, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// A tenant's jobs with their revisions, in no particular order (the API orders them
    /// newest first; a job runner follows the running ones with [`Running`]).
    pub async fn list(&self, tenant: &str) -> Result<Vec<(Job, u64)>, StoreError> {
        let keys = crate::repo::keys_under(&self.kv, &format!("{tenant}.")).await?;
        // Read a few dozen at once: one after the other, a tenant's month of jobs took a
        // round trip each, and the portal's jobs view asks every 2 s.
        let read: Vec<Result<Option<(Job, u64)>, StoreError>> = futures::stream::iter(keys)
            .map(|k| async move { self.read(&k).await })
            .buffered(LIST_READS)
            .collect()
            .await;
        let mut out = Vec::with_capacity(read.len());
        for r in read {
            match r {
                Ok(Some(j)) => out.push(j),
                Ok(None) => {}
                // A job this version cannot read (a later version's kind): left to the
                // versions that can, without stopping the others.
                Err(StoreError::Corrupt { key, reason }) => {
                    tracing::debug!(key, reason, "A job this version cannot read is left alone.");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Writes `job` if the record is still at `revision`; the new revision, or `Conflict`
    /// when someone else wrote it first.
    pub async fn update(&self, job: &Job, revision: u64) -> Result<u64, StoreError> {
        let bytes = serde_json::to_vec(job).map_err(backend)?;
        match self
            .kv
            .update(key(&job.tenant, &job.id), bytes.into(), revision)
            .await
        {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(
                StoreError::Conflict(format!("job {} was changed meanwhile", job.id)),
            ),
            Err(e) => Err(backend(e)),
        }
    }
}

/// The running jobs, each with its revision, kept from a watch of the jobs bucket: what a job
/// runner looks at every few seconds. Reading every job of every tenant instead (they are
/// kept [`crate::streams::JOBS_MAX_AGE`] after their last change) was a read per job per
/// look, per api process: 5,000 reads a second for a bucket of 10,000 jobs.
#[derive(Clone, Default)]
pub struct Running {
    jobs: Arc<Mutex<HashMap<String, (Job, u64)>>>,
}

/// How often the watch is made again from the bucket's start: a job past its age leaves the
/// bucket without a marker the watch would see.
const REWATCH: Duration = Duration::from_secs(600);

impl Running {
    /// The running jobs as last seen, by id.
    pub fn list(&self) -> Vec<(Job, u64)> {
        let mut out: Vec<(Job, u64)> = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        out
    }

    /// Follows `store`'s bucket until `cancel`, keeping the running jobs.
    pub fn follow(store: &JobStore, cancel: CancellationToken) -> Self {
        let running = Self::default();
        let (kv, jobs) = (store.kv.clone(), running.jobs.clone());
        tokio::spawn(async move {
            loop {
                let watched = async {
                    let mut watch = kv.watch_with_history(">").await.map_err(backend)?;
                    jobs.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    let until = tokio::time::Instant::now() + REWATCH;
                    loop {
                        let entry = tokio::select! {
                            () = tokio::time::sleep_until(until) => return Ok::<(), StoreError>(()),
                            entry = watch.next() => entry,
                        };
                        let Some(entry) = entry else { return Ok(()) };
                        let entry = entry.map_err(backend)?;
                        let running = match entry.operation {
                            kv::Operation::Put => serde_json::from_slice::<Job>(&entry.value)
                                .ok()
                                .filter(|j| j.state == JobState::Running),
                            _ => None,
                        };
                        let mut jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
                        match running {
                            Some(job) => jobs.insert(entry.key, (job, entry.revision)),
                            None => jobs.remove(&entry.key),
                        };
                    }
                };
                let pause = tokio::select! {
                    () = cancel.cancelled() => return,
                    watched = watched => match watched {
                        Ok(()) => Duration::ZERO,
                        Err(e) => {
                            tracing::warn!(error = %e, "Lost the watch of the jobs; watching again in a second.");
                            Duration::from_secs(1)
                        }
                    },
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        });
        running
    }
}
