//! The live config snapshot. One task per process watches the KV bucket and, whenever the
//! config changes, builds a new immutable [`Snapshot`] and swaps it in with `ArcSwap`; readers
//! (the router per event, the worker per delivery) load the current `Arc` without a lock and
//! keep using it for as long as they hold it.
//!
//! Lifecycle: [`Live::start`] returns once the snapshot reflects everything the bucket held
//! at start-up; the watch task runs until the cancellation token fires. If the watch fails
//! (server restart), it is re-created from the full history and the snapshot is replaced
//! once caught up, so deletions made while disconnected are not missed.

use crate::crypt::Keyring;
use crate::model::Endpoint;
use crate::streams::Layout;
use arc_swap::ArcSwap;
use async_nats::jetstream::kv;
use futures::StreamExt;
use gancho_core::{Key, RetrySchedule, Signer, Subscription};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Wait between attempts to re-create a failed watch.
const REWATCH_DELAY: Duration = Duration::from_millis(500);
/// Config changes closer together than this are applied in one snapshot: creating 10,000
/// endpoints rebuilds the snapshot a few hundred times, not 10,000. Only when building costs:
/// the wait after a snapshot is 9 times what building it took (so rebuilding takes at most a
/// tenth of the time), capped here; a small config follows every change at once.
const COALESCE: Duration = Duration::from_millis(20);

/// An endpoint ready for the hot path: filters compiled, secrets parsed, URL parsed.
#[derive(Debug)]
pub struct LiveEndpoint {
    pub config: Endpoint,
    pub subscription: Subscription,
    /// `None` in a process without the encryption key (the router, which never signs).
    pub signer: Option<Signer>,
    pub schedule: RetrySchedule,
    pub uri: http::Uri,
    /// The jq filter and transform, each compiled when a role first runs it: the router
    /// never runs a transform and the worker never a filter, and 10,000 distinct programs
    /// weigh about 55 MB (BENCHMARKS.md).
    programs: [std::sync::OnceLock<Compiled>; 2],
}

/// A jq program as a role compiled it, or why it does not compile (a program stored by
/// another version): a filter then does not match, a transform dead-letters.
pub type Compiled = Result<Arc<gancho_jq::Program>, String>;

impl LiveEndpoint {
    /// The endpoint's jq filter, compiled.
    pub fn filter(&self) -> Option<&Compiled> {
        Self::program(&self.programs[0], self.config.filter.as_deref())
    }

    /// The endpoint's jq transform, compiled.
    pub fn transform(&self) -> Option<&Compiled> {
        Self::program(&self.programs[1], self.config.transform.as_deref())
    }

    fn program<'a>(
        cell: &'a std::sync::OnceLock<Compiled>,
        code: Option<&str>,
    ) -> Option<&'a Compiled> {
        let code = code?;
        Some(cell.get_or_init(|| gancho_jq::shared().get(code).map_err(|e| e.to_string())))
    }
}

impl LiveEndpoint {
    /// Compiles a stored endpoint; `None` (with a warning) when the stored document is
    /// unusable, so one bad key cannot stop delivery to the others.
    fn build(
        mut config: Endpoint,
        key: &str,
        keyring: &Keyring,
        default_schedule: &RetrySchedule,
    ) -> Result<Self, String> {
        let subscription =
            Subscription::new(&config.filter_types, &config.channels).map_err(|e| e.to_string())?;
        let signer = if keyring.has_key() {
            keyring
                .open_endpoint(key, &mut config)
                .map_err(|e| e.to_string())?;
            Some(Self::signer(&config)?)
        } else {
            None
        };
        let schedule = match (&config.retry_schedule, config.profile) {
            (Some(s), _) => RetrySchedule::parse(s).map_err(|e| e.to_string())?,
            (None, crate::Profile::OpenfinanceBr) => {
                RetrySchedule::parse(crate::model::OPENFINANCE_SCHEDULE)
                    .map_err(|e| e.to_string())?
            }
            (None, _) => default_schedule.clone(),
        };
        let uri: http::Uri = config
            .url
            .parse()
            .map_err(|_| "url does not parse".to_string())?;
        Ok(Self {
            programs: Default::default(),
            config,
            subscription,
            signer,
            schedule,
            uri,
        })
    }

    fn signer(config: &Endpoint) -> Result<Signer, String> {
        let key = Key::parse(&config.secret).map_err(|e| e.to_string())?;
        let mut signer = Signer::new(key);
        let now = OffsetDateTime::now_utc();
        for old in &config.previous_secrets {
            // Expiry is checked again at each signature, so an old secret stops at its
            // moment, not at the next snapshot.
            if old.expires_at > now {
                signer = signer.with_previous_until(
                    Key::parse(&old.secret).map_err(|e| e.to_string())?,
                    old.expires_at.unix_timestamp(),
                );
            }
        }
        Ok(signer)
    }
}

#[derive(Debug, Default)]
pub struct TenantEndpoints {
    /// Sorted by id: the router's fan-out order, and how an endpoint is found by id.
    pub list: Vec<Arc<LiveEndpoint>>,
    /// The subscriptions of `list`, indexed: a match is a position in `list`.
    pub index: gancho_core::matching::Index,
}

impl TenantEndpoints {
    /// Built from every endpoint of the tenant.
    fn new(by_id: &HashMap<String, Arc<LiveEndpoint>>) -> Self {
        let mut list: Vec<Arc<LiveEndpoint>> = by_id.values().cloned().collect();
        list.sort_unstable_by(|a, b| a.config.id.cmp(&b.config.id));
        Self::indexed(list)
    }

    fn indexed(list: Vec<Arc<LiveEndpoint>>) -> Self {
        let index = gancho_core::matching::Index::new(list.iter().map(|ep| &ep.subscription));
        Self { list, index }
    }

    /// This tenant with the endpoints `changed` as they are now in `by_id` (put, or gone when
    /// absent). A few changes are applied in place of a copy of the sorted list (a change to
    /// a tenant of 10,000 endpoints copies 10,000 pointers, not 10,000 ids); many are rebuilt.
    fn updated(
        &self,
        changed: &HashSet<String>,
        by_id: &HashMap<String, Arc<LiveEndpoint>>,
    ) -> Self {
        if changed.len() > (self.list.len() / 16).max(16) {
            return Self::new(by_id);
        }
        let mut list = self.list.clone();
        for id in changed {
            let at = list.binary_search_by(|ep| ep.config.id.as_str().cmp(id));
            match (at, by_id.get(id)) {
                (Ok(i), Some(ep)) => list[i] = ep.clone(),
                (Err(i), Some(ep)) => list.insert(i, ep.clone()),
                (Ok(i), None) => {
                    list.remove(i);
                }
                (Err(_), None) => {}
            }
        }
        Self::indexed(list)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<LiveEndpoint>> {
        let at = self
            .list
            .binary_search_by(|ep| ep.config.id.as_str().cmp(id));
        at.ok().map(|i| &self.list[i])
    }
}

/// An event type's JSON Schema, compiled once per config change.
#[derive(Clone)]
pub struct Schema(Arc<jsonschema::Validator>);

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// Compiles a JSON Schema (draft 2020-12, no remote references).
    pub fn compile(schema: &serde_json::Value) -> Result<Self, String> {
        jsonschema::draft202012::new(schema)
            .map(|v| Self(Arc::new(v)))
            .map_err(|e| format!("schema is not a valid JSON Schema (draft 2020-12): {e}"))
    }

    /// Checks a payload; the error names the failing path (`data/amount`) and rule.
    pub fn check(&self, ty: &str, payload: &serde_json::Value) -> Result<(), String> {
        self.0.validate(payload).map_err(|e| {
            format!(
                "data{} does not match the schema of {ty:?}: {e} (rule {})",
                e.instance_path(),
                e.schema_path()
            )
        })
    }
}

/// An immutable view of the whole config at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Shared between snapshots: a change rebuilds only its tenant's.
    pub tenants: HashMap<String, Arc<TenantEndpoints>>,
    /// Tenant -> event type -> its compiled schema (event types with a schema only).
    pub schemas: HashMap<String, HashMap<String, Schema>>,
    /// Every tenant in the config (with or without endpoints), by id: what the router
    /// consumes and each tenant's weight.
    pub accounts: Arc<BTreeMap<String, TenantSettings>>,
    /// KV revision this snapshot reflects.
    pub revision: u64,
}

/// What the router and the workers need of a tenant's own document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSettings {
    /// Its share against other tenants with work waiting ([`crate::Tenant::weight`]).
    pub weight: u32,
    /// When it was created, as the API's clock said.
    pub created_at: OffsetDateTime,
    /// Its own request rate per credential ([`crate::Tenant::api_rate_limit_per_sec`]).
    pub api_rate_limit_per_sec: Option<u32>,
    /// Its HTTP ingest event rate ([`crate::Tenant::ingest_rate_limit_per_sec`]).
    pub ingest_rate_limit_per_sec: Option<u32>,
}

impl Snapshot {
    pub fn endpoint(&self, tenant: &str, id: &str) -> Option<&Arc<LiveEndpoint>> {
        self.tenants.get(tenant)?.get(id)
    }

    pub fn endpoints(&self, tenant: &str) -> &[Arc<LiveEndpoint>] {
        self.tenants
            .get(tenant)
            .map(|t| t.list.as_slice())
            .unwrap_or(&[])
    }

    /// The endpoints of `tenant` whose subscription wants an event of `event_type` tagged with
    /// `channels`, as positions in [`Snapshot::endpoints`] (in `out`, cleared first), found
    /// through the tenant's index.
    pub fn matching<S: AsRef<str>>(
        &self,
        tenant: &str,
        event_type: &str,
        channels: &[S],
        out: &mut Vec<u32>,
    ) {
        match self.tenants.get(tenant) {
            Some(t) => t.index.matching(event_type, channels, out),
            None => out.clear(),
        }
    }

    /// Checks an event's payload against its type's schema, when the catalog has one.
    pub fn check_payload(&self, tenant: &str, ty: &str, payload: &[u8]) -> Result<(), String> {
        let Some(schema) = self.schemas.get(tenant).and_then(|m| m.get(ty)) else {
            return Ok(());
        };
        let value: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| format!("data is not JSON: {e}"))?;
        schema.check(ty, &value)
    }

    /// A snapshot from the last one's tenants, with the `dirty` endpoints (tenant -> ids)
    /// updated from `entries` (tenant -> endpoint id -> endpoint); the other tenants are
    /// shared, not rebuilt.
    fn build(
        previous: &HashMap<String, Arc<TenantEndpoints>>,
        entries: &HashMap<String, HashMap<String, Arc<LiveEndpoint>>>,
        dirty: &HashMap<String, HashSet<String>>,
        schemas: &HashMap<String, (String, String, Schema)>,
        accounts: Arc<BTreeMap<String, TenantSettings>>,
        revision: u64,
    ) -> Self {
        let mut tenants = previous.clone();
        for (tenant, changed) in dirty {
            match entries.get(tenant) {
                Some(eps) if !eps.is_empty() => {
                    let updated = match previous.get(tenant) {
                        Some(was) => was.updated(changed, eps),
                        None => TenantEndpoints::new(eps),
                    };
                    tenants.insert(tenant.clone(), Arc::new(updated));
                }
                _ => {
                    tenants.remove(tenant);
                }
            }
        }
        let mut by_tenant: HashMap<String, HashMap<String, Schema>> = HashMap::new();
        for (tenant, ty, schema) in schemas.values() {
            by_tenant
                .entry(tenant.clone())
                .or_default()
                .insert(ty.clone(), schema.clone());
        }
        Self {
            tenants,
            schemas: by_tenant,
            accounts,
            revision,
        }
    }
}

pub struct Live {
    current: ArcSwap<Snapshot>,
    /// Unix seconds of the last snapshot swap, for the snapshot-age metric.
    swapped_at: AtomicI64,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Live {
    /// Loads the config and keeps it current until `cancel` fires.
    pub async fn start(
        layout: &Layout,
        default_schedule: RetrySchedule,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, async_nats::Error> {
        let (changed, _) = tokio::sync::watch::channel(0);
        let live = Arc::new(Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            swapped_at: AtomicI64::new(OffsetDateTime::now_utc().unix_timestamp()),
            changed,
        });
        let stream_name = format!("KV_{}", layout.subjects.config_bucket());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = WatchTask {
            live: live.clone(),
            kv: layout.config.clone(),
            js: layout.js.clone(),
            stream_name,
            default_schedule,
            keyring: layout.keyring.clone(),
        };
        tokio::spawn(task.run(cancel, ready_tx));
        ready_rx
            .await
            .map_err(|_| "the config watch stopped before loading")?;
        Ok(live)
    }

    /// The current snapshot; cheap, lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Seconds since the snapshot last changed.
    pub fn age_seconds(&self) -> i64 {
        OffsetDateTime::now_utc().unix_timestamp() - self.swapped_at.load(Ordering::Relaxed)
    }

    /// Tells of every snapshot swap (the value is the new revision).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves after the next swap whose revision is at least `revision`.
    pub async fn wait_for_revision(&self, revision: u64) {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    fn swap(&self, snapshot: Snapshot) {
        let rev = snapshot.revision;
        self.current.store(Arc::new(snapshot));
        self.swapped_at.store(
            OffsetDateTime::now_utc().unix_timestamp(),
            Ordering::Relaxed,
        );
        self.changed.send_replace(rev);
    }
}

/// What the next snapshot needs: the last one's tenants (shared), the tenants changed since,
/// and when it may be built (changes are gathered for [`COALESCE`] at most).
struct NextSnapshot {
    tenants: HashMap<String, Arc<TenantEndpoints>>,
    /// Tenant -> ids of its endpoints changed since the last snapshot.
    dirty: HashMap<String, HashSet<String>>,
    built_at: tokio::time::Instant,
    /// How long to gather changes after a snapshot: 9 times what building it took.
    hold: Duration,
    /// Changes wait for the next snapshot.
    pending: bool,
    /// When each change waiting for the next snapshot was written to the config bucket.
    written_at: Vec<OffsetDateTime>,
    /// The tenants' own documents, shared with the snapshots until one changes.
    accounts: Arc<BTreeMap<String, TenantSettings>>,
}

impl Default for NextSnapshot {
    fn default() -> Self {
        Self {
            tenants: HashMap::new(),
            dirty: HashMap::new(),
            built_at: tokio::time::Instant::now(),
            hold: Duration::ZERO,
            pending: false,
            written_at: Vec::new(),
            accounts: Arc::default(),
        }
    }
}

impl NextSnapshot {
    fn due(&self) -> tokio::time::Instant {
        self.built_at + self.hold
    }

    /// Builds the snapshot and puts it in force; returns how many endpoints it holds.
    fn swap(
        &mut self,
        live: &Live,
        entries: &HashMap<String, HashMap<String, Arc<LiveEndpoint>>>,
        schemas: &HashMap<String, (String, String, Schema)>,
        revision: u64,
    ) -> usize {
        let started = tokio::time::Instant::now();
        let snapshot = Snapshot::build(
            &self.tenants,
            entries,
            &self.dirty,
            schemas,
            self.accounts.clone(),
            revision,
        );
        let endpoints = snapshot.tenants.values().map(|t| t.list.len()).sum();
        self.tenants = snapshot.tenants.clone();
        self.dirty.clear();
        live.swap(snapshot);
        self.built_at = tokio::time::Instant::now();
        self.hold = ((self.built_at - started) * 9).min(COALESCE);
        self.pending = false;
        // How long each change took to get here (the server's clock against this one's:
        // on one machine exact, across machines as good as their clocks agree).
        let now = OffsetDateTime::now_utc();
        for at in self.written_at.drain(..) {
            let lag = (now - at).as_seconds_f64().max(0.0);
            metrics::histogram!(gancho_telemetry::names::CONFIG_CHANGE_LAG).record(lag);
        }
        endpoints
    }
}

/// The config watch's failures in a row, and when the last was logged.
#[derive(Default)]
struct Failing {
    failures: u64,
    logged: Option<tokio::time::Instant>,
}

impl Failing {
    /// A watch that ran this long before it failed had worked: the count starts over.
    const WORKED_FOR: Duration = Duration::from_secs(10);
    /// How often a failure that goes on is logged again.
    const LOG_EVERY: Duration = Duration::from_secs(30);

    /// Counts a failure; `Some(failures so far)` when it is to be logged.
    fn note(&mut self) -> Option<u64> {
        self.failures += 1;
        let due = self.logged.is_none_or(|at| at.elapsed() >= Self::LOG_EVERY);
        due.then(|| {
            self.logged = Some(tokio::time::Instant::now());
            self.failures
        })
    }
}

struct WatchTask {
    live: Arc<Live>,
    kv: kv::Store,
    js: async_nats::jetstream::Context,
    stream_name: String,
    default_schedule: RetrySchedule,
    keyring: Arc<Keyring>,
}

impl WatchTask {
    async fn run(self, cancel: CancellationToken, ready: tokio::sync::oneshot::Sender<()>) {
        let mut ready = Some(ready);
        // While the watch keeps failing (a node cut off, a leader election), one line when it
        // starts and one every half minute after, not one per attempt (twice a second).
        let mut failing = Failing::default();
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.watch_once(&mut ready) => r,
            };
            if let Err(e) = result {
                if started.elapsed() >= Failing::WORKED_FOR {
                    failing = Failing::default();
                }
                if let Some(failures) = failing.note() {
                    match failures {
                        1 => warn!(error = %e, "Config watch failed; re-creating it."),
                        n => {
                            warn!(error = %e, failures = n, "Config watch still failing; re-creating it.")
                        }
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(REWATCH_DELAY) => {}
            }
        }
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one arm per kind of config key the watch applies to the snapshot"
    )]
    async fn watch_once(
        &self,
        ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), async_nats::Error> {
        // Tenant -> endpoint id -> endpoint.
        let mut entries: HashMap<String, HashMap<String, Arc<LiveEndpoint>>> = HashMap::new();
        // Config key -> (tenant, type, compiled schema).
        let mut schemas: HashMap<String, (String, String, Schema)> = HashMap::new();
        let mut watch = self.kv.watch_with_history(">").await?;
        let state = self
            .js
            .get_stream(&self.stream_name)
            .await?
            .info()
            .await?
            .state
            .clone();
        let mut caught_up = state.messages == 0;
        // An empty bucket may still have had revisions (all of them removed): the snapshot
        // reflects the latest, so it never looks behind the bucket.
        let mut revision = if caught_up { state.last_sequence } else { 0 };
        let mut next_snapshot = NextSnapshot::default();
        if caught_up {
            next_snapshot.swap(&self.live, &entries, &schemas, revision);
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
        }
        loop {
            let next = tokio::select! {
                next = watch.next() => next,
                // Changes that came within `hold` of the last snapshot are in one snapshot.
                _ = tokio::time::sleep_until(next_snapshot.due()), if next_snapshot.pending => None,
            };
            let Some(entry) = next else {
                if !next_snapshot.pending {
                    break;
                }
                next_snapshot.swap(&self.live, &entries, &schemas, revision);
                continue;
            };
            let entry = entry?;
            revision = revision.max(entry.revision);
            if let Some(rest) = entry.key.strip_prefix("endpoints.") {
                let Some((tenant, id)) = rest.split_once('.') else {
                    warn!(key = %entry.key, "Ignoring a config key that names no endpoint.");
                    continue;
                };
                next_snapshot
                    .dirty
                    .entry(tenant.to_owned())
                    .or_default()
                    .insert(id.to_owned());
                let eps = entries.entry(tenant.to_owned()).or_default();
                match entry.operation {
                    kv::Operation::Put => match serde_json::from_slice::<Endpoint>(&entry.value)
                        .map_err(|e| e.to_string())
                        .and_then(|ep| {
                            LiveEndpoint::build(
                                ep,
                                &entry.key,
                                &self.keyring,
                                &self.default_schedule,
                            )
                        }) {
                        Ok(ep) => {
                            eps.insert(id.to_owned(), Arc::new(ep));
                        }
                        Err(reason) => {
                            warn!(key = %entry.key, %reason, "Ignoring an unusable endpoint in the config bucket.");
                            eps.remove(id);
                        }
                    },
                    kv::Operation::Delete | kv::Operation::Purge => {
                        eps.remove(id);
                    }
                }
                if eps.is_empty() {
                    entries.remove(tenant);
                }
            }
            if let Some(tenant) = entry.key.strip_prefix("tenants.") {
                let settings = match entry.operation {
                    kv::Operation::Put => {
                        match serde_json::from_slice::<crate::Tenant>(&entry.value) {
                            Ok(t) => Some(TenantSettings {
                                weight: t.weight.clamp(1, crate::model::MAX_WEIGHT),
                                created_at: t.created_at,
                                api_rate_limit_per_sec: t.api_rate_limit_per_sec,
                                ingest_rate_limit_per_sec: t.ingest_rate_limit_per_sec,
                            }),
                            Err(e) => {
                                warn!(key = %entry.key, error = %e, "Ignoring a tenant that does not parse.");
                                None
                            }
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => None,
                };
                let accounts = Arc::make_mut(&mut next_snapshot.accounts);
                match settings {
                    Some(s) => accounts.insert(tenant.to_owned(), s),
                    None => accounts.remove(tenant),
                };
            }
            if entry.key.starts_with("event_types.") {
                schemas.remove(&entry.key);
                if entry.operation == kv::Operation::Put {
                    match serde_json::from_slice::<crate::EventType>(&entry.value) {
                        Ok(et) => {
                            if let Some(schema) = &et.schema {
                                match Schema::compile(schema) {
                                    Ok(s) => {
                                        schemas.insert(
                                            entry.key.clone(),
                                            (et.tenant.as_str().to_owned(), et.name.clone(), s),
                                        );
                                    }
                                    Err(reason) => {
                                        warn!(key = %entry.key, %reason, "Ignoring an event type's unusable schema.");
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            warn!(key = %entry.key, error = %e, "Ignoring an event type that does not parse.");
                        }
                    }
                }
            }
            if entry.delta == 0 && !caught_up {
                caught_up = true;
                let endpoints = next_snapshot.swap(&self.live, &entries, &schemas, revision);
                info!(endpoints, revision, "Config snapshot loaded.");
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            if !caught_up {
                continue;
            }
            // A change alone is in the next snapshot at once; a burst (more changes already
            // waiting, or the last snapshot less than `hold` ago) is gathered into one.
            next_snapshot.pending = true;
            next_snapshot.written_at.push(entry.created);
            if entry.delta == 0 && tokio::time::Instant::now() >= next_snapshot.due() {
                next_snapshot.swap(&self.live, &entries, &schemas, revision);
            }
        }
        Err("config watch ended".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[tokio::test]
    async fn a_failing_watch_is_logged_when_it_starts_then_every_half_minute() {
        let mut failing = Failing::default();
        assert_eq!(failing.note(), Some(1));
        assert_eq!(failing.note(), None);
        assert_eq!(failing.note(), None);
        failing.logged = Some(tokio::time::Instant::now() - Failing::LOG_EVERY);
        assert_eq!(failing.note(), Some(4));
        assert_eq!(failing.note(), None);
    }

    fn live(id: &str, filter: &str) -> Arc<LiveEndpoint> {
        let mut ep = Endpoint::new(
            "acme".parse().unwrap(),
            id.parse().unwrap(),
            format!("https://hooks.example.com/{id}"),
        );
        ep.filter_types = vec![filter.to_owned()];
        let key = format!("endpoints.acme.{id}");
        let built = LiveEndpoint::build(ep, &key, &Keyring::none(), &RetrySchedule::default());
        Arc::new(built.unwrap())
    }

    #[test]
    fn a_tenant_updated_change_by_change_is_the_tenant_built_afresh() {
        let mut rng = rand::rng();
        let filters = ["a.*", "a.b", ">", "b.>", "c.d"];
        let mut by_id: HashMap<String, Arc<LiveEndpoint>> = HashMap::new();
        let mut tenant = TenantEndpoints::new(&by_id);
        for round in 0..200 {
            // Mostly a few changes (applied in place), now and then a burst (rebuilt).
            let n = if round % 50 == 49 {
                300
            } else {
                rng.random_range(1..6)
            };
            let mut changed = HashSet::new();
            for _ in 0..n {
                let id = format!("ep{}", rng.random_range(0..400));
                if rng.random_bool(0.3) {
                    by_id.remove(&id);
                } else {
                    let filter = filters[rng.random_range(0..filters.len())];
                    by_id.insert(id.clone(), live(&id, filter));
                }
                changed.insert(id);
            }
            tenant = tenant.updated(&changed, &by_id);
            let fresh = TenantEndpoints::new(&by_id);
            let ids = |t: &TenantEndpoints| -> Vec<String> {
                t.list
                    .iter()
                    .map(|ep| ep.config.id.as_str().to_owned())
                    .collect()
            };
            assert_eq!(ids(&tenant), ids(&fresh), "round {round}");
            for (id, ep) in &by_id {
                assert!(
                    Arc::ptr_eq(tenant.get(id).unwrap(), ep),
                    "round {round}: {id}"
                );
            }
            assert!(tenant.get("ep-none").is_none());
            for ty in ["a.b", "a.c", "b.x.y", "c.d", "z"] {
                let (mut got, mut want) = (Vec::new(), Vec::new());
                tenant.index.matching(ty, &[] as &[&str], &mut got);
                fresh.index.matching(ty, &[] as &[&str], &mut want);
                assert_eq!(got, want, "round {round}: {ty}");
            }
        }
    }
}
