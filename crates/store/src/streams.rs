//! The JetStream layout of DESIGN.md, created or checked at start-up by whichever role starts
//! first. Creation is idempotent: an existing stream is left as it is.

use async_nats::jetstream::{self, kv, stream};
use gancho_core::Subjects;
use std::time::Duration;
use tracing::info;

/// Replay window of the events stream.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long attempts and dead letters are kept.
pub const LOG_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// JetStream de-duplication window for `Nats-Msg-Id`.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Config history kept per key.
pub const CONFIG_HISTORY: i64 = 5;
/// How long a job's record is kept after its last change.
pub const JOBS_MAX_AGE: Duration = Duration::from_secs(30 * 86_400);
/// How long a worker's entry in the workers bucket lives without being refreshed: a worker
/// that died is no longer counted after this, and its partitions move to the others.
pub const MEMBER_TTL: Duration = Duration::from_secs(6);

/// Handles to everything [`ensure`] created, and the keys that open the secrets in it.
#[derive(Clone)]
pub struct Layout {
    pub subjects: Subjects,
    pub js: jetstream::Context,
    pub config: kv::Store,
    /// Jobs (recover, replay, redrive): state that survives an api restart.
    pub jobs: kv::Store,
    /// Live workers ([`crate::members`]).
    pub workers: kv::Store,
    /// Live api processes ([`crate::members::count`]).
    pub apis: kv::Store,
    /// Live routers ([`crate::members::present`]).
    pub routers: kv::Store,
    /// Leases, each held by one process at a time ([`crate::lease`]).
    pub leases: kv::Store,
    /// Portal links and sessions ([`crate::portal`]).
    pub portal: kv::Store,
    /// Changes under way through the API ([`crate::audit::Intent`]).
    pub audit_pending: kv::Store,
    /// None by default ([`Layout::with_keyring`]): enough for the router.
    pub keyring: std::sync::Arc<crate::Keyring>,
}

impl Layout {
    /// The layout with the keys that seal and open endpoint secrets (api, worker).
    pub fn with_keyring(mut self, keyring: crate::Keyring) -> Self {
        self.keyring = std::sync::Arc::new(keyring);
        self
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create or open {what}: {source}")]
pub struct LayoutError {
    what: String,
    #[source]
    source: async_nats::Error,
}

fn err(what: String) -> impl FnOnce(async_nats::Error) -> LayoutError {
    move |source| LayoutError { what, source }
}

/// Opens the KV bucket `name`, or creates it with one value per key kept for `max_age`.
async fn small_bucket(
    js: &jetstream::Context,
    name: String,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, LayoutError> {
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.clone(),
        history: 1,
        max_age,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| err(format!("KV bucket {name}"))(e.into()))
}

/// What an operator may set about the streams; everything else is fixed by the design.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// 1 on a laptop, 3 on a cluster (only used when a stream is created).
    pub replicas: usize,
    /// How long an event id is remembered on the events stream.
    pub duplicate_window: Duration,
    /// Room for events (`None`: no limit of its own; the server's limits apply).
    pub events_max_bytes: Option<u64>,
    /// Room for deliveries, scheduled retries and held deliveries: the router stops at 90% of
    /// it. Not a limit of the stream itself (see [`ensure_with`]).
    pub deliveries_max_bytes: Option<u64>,
    /// Size limit of the attempt log; past it the oldest records go (a log, `discard: old`).
    pub attempts_max_bytes: Option<u64>,
    /// Size limit of the dead letters; past it the oldest go.
    pub dead_max_bytes: Option<u64>,
    /// Records kept in the attempt log; past it the oldest go. nats-server keeps an index
    /// entry in memory for each distinct subject of a stream, and an attempt's subject names
    /// its event, so this is what bounds nats-server's memory for the log (see
    /// [`DEFAULT_ATTEMPTS_MAX_RECORDS`]).
    pub attempts_max_records: Option<u64>,
    /// Dead letters kept; past it the oldest go (their subjects name their event too).
    pub dead_max_records: Option<u64>,
    /// How long the audit log keeps a record ([`crate::audit`]).
    pub audit_max_age: Duration,
}

/// Ordered deliveries that may wait at once (the ordered stream's record limit): what bounds
/// the index a worker keeps of them (about 100 bytes each).
pub const ORDERED_MAX_MESSAGES: i64 = 1_000_000;

/// Records the attempt log keeps by default: about 0.5 GiB of nats-server's heap for their
/// subjects' index (about 105 bytes a distinct subject, measured in RELIABILITY.md, "Memory
/// over time"), and 1.2 GiB of disk at 250 bytes a record.
pub const DEFAULT_ATTEMPTS_MAX_RECORDS: u64 = 5_000_000;
/// Dead letters kept by default: about 0.1 GiB of nats-server's heap for their index.
pub const DEFAULT_DEAD_MAX_RECORDS: u64 = 1_000_000;

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            duplicate_window: DUPLICATE_WINDOW,
            events_max_bytes: None,
            deliveries_max_bytes: None,
            attempts_max_bytes: None,
            dead_max_bytes: None,
            attempts_max_records: Some(DEFAULT_ATTEMPTS_MAX_RECORDS),
            dead_max_records: Some(DEFAULT_DEAD_MAX_RECORDS),
            audit_max_age: crate::audit::DEFAULT_MAX_AGE,
        }
    }
}

/// Stream metadata the router sets on the events stream while the server's store is full
/// (`crates/router/src/trim.rs`): its record limit is then the count it held, and the value
/// is the record limit to put back. Start-up leaves such a record limit alone; a router
/// lifts it once its writes are taken again.
pub const FULL_STORE_CAP: &str = "gancho_full_store_cap";

/// A stream limit (bytes or records); `None` is none (-1).
fn limit(n: Option<u64>) -> i64 {
    n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// Creates the streams and the config bucket if missing, with default settings.
pub async fn ensure(
    js: jetstream::Context,
    subjects: Subjects,
    replicas: usize,
) -> Result<Layout, LayoutError> {
    ensure_with(
        js,
        subjects,
        &StreamSettings {
            replicas,
            ..Default::default()
        },
    )
    .await
}

/// Creates the streams and the config bucket if missing, and brings existing streams to
/// `settings` and to this version's design: subjects, discard policy, limits, ages and the
/// duplicate window are updated (replicas too, and the config bucket's history and replicas),
/// one log line per change. A stream whose retention differs
/// (JetStream cannot change it) stops start-up with a line that says what to do.
///
/// The events stream refuses new messages when full (`discard: new`) instead of dropping old
/// ones, which may be events not yet routed. The deliveries stream has no byte limit of its
/// own: JetStream refuses `discard: new` on a stream with message schedules, and with
/// `discard: old` a limit would silently delete deliveries never sent. Its room is kept by
/// the router, which stops routing at 90% of `deliveries_max_bytes`, and beyond that by the
/// server's own limits, which refuse writes rather than drop messages. A limit found on it
/// (set by hand) is removed, with a log line.
#[allow(
    clippy::too_many_lines,
    reason = "every stream's configuration in one place, as DESIGN.md lists them"
)]
pub async fn ensure_with(
    js: jetstream::Context,
    subjects: Subjects,
    settings: &StreamSettings,
) -> Result<Layout, LayoutError> {
    let replicas = settings.replicas;
    // Asked of a server that has them only: an older one ignores the setting, and every
    // start-up would "allow" them again.
    let fast_batches = takes_fast_batches(&js.client().server_info().version);
    let streams = [
        stream::Config {
            name: subjects.events_stream(),
            subjects: vec![subjects.events_wildcard()],
            max_age: EVENTS_MAX_AGE,
            max_bytes: limit(settings.events_max_bytes),
            discard: stream::DiscardPolicy::New,
            duplicate_window: settings.duplicate_window,
            // Replay jobs read it with direct gets (crate::log).
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.deliveries_stream(),
            subjects: vec![
                subjects.deliveries_wildcard(),
                subjects.retry_wildcard(),
                // Where held deliveries waited before the held stream: kept so that an older
                // role in a rolling upgrade can still write there (they are still released).
                subjects.legacy_held_wildcard(),
            ],
            retention: stream::RetentionPolicy::WorkQueue,
            max_bytes: -1,
            duplicate_window: DUPLICATE_WINDOW,
            allow_message_schedules: true,
            num_replicas: replicas,
            ..Default::default()
        },
        // Held and parked deliveries: no consumer reads them until they are released, each
        // subject (one endpoint) through a consumer of its own. No byte limit of its own:
        // they count against the deliveries' room (`GANCHO_DELIVERIES_MAX_BYTES`).
        stream::Config {
            name: subjects.held_stream(),
            subjects: vec![subjects.held_wildcard()],
            retention: stream::RetentionPolicy::WorkQueue,
            max_bytes: -1,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
        // Ordered deliveries wait here until their key's turn: read by their partition's
        // owner (headers only, then each head by a direct get), removed one by one when
        // done. At most ORDERED_MAX_MESSAGES wait: past it the router waits for room, as it
        // does for a full store, and the owner's index of them stays bounded.
        stream::Config {
            name: subjects.ordered_stream(),
            subjects: vec![subjects.ordered_wildcard()],
            max_messages: ORDERED_MAX_MESSAGES,
            max_bytes: -1,
            discard: stream::DiscardPolicy::New,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.attempts_stream(),
            subjects: vec![subjects.attempts_wildcard()],
            max_age: LOG_MAX_AGE,
            max_bytes: limit(settings.attempts_max_bytes),
            max_messages: limit(settings.attempts_max_records),
            // The server's own default: left out, every start-up "changed" it to 0.
            duplicate_window: DUPLICATE_WINDOW,
            discard: stream::DiscardPolicy::Old,
            // The delivery log is read with direct gets (crate::log).
            allow_direct: true,
            // Workers write attempt records in fast batches (crate::batch), where the server
            // has them (2.14+; with an older one they are written one by one).
            allow_batch_publish: fast_batches,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.dead_stream(),
            subjects: vec![subjects.dead_wildcard()],
            max_age: LOG_MAX_AGE,
            max_bytes: limit(settings.dead_max_bytes),
            max_messages: limit(settings.dead_max_records),
            // The server's own default: left out, every start-up "changed" it to 0.
            duplicate_window: DUPLICATE_WINDOW,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        },
        // Nobody may remove a record before its age (not even by purging the stream):
        // `deny_delete` and `deny_purge`.
        stream::Config {
            name: subjects.audit_stream(),
            subjects: vec![subjects.audit_wildcard()],
            max_age: settings.audit_max_age,
            max_bytes: -1,
            deny_delete: true,
            deny_purge: true,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for want in streams {
        let name = want.name.clone();
        let stream = js
            .get_or_create_stream(want.clone())
            .await
            .map_err(|e| err(format!("stream {name}"))(e.into()))?;
        let have = stream.cached_info().config.clone();
        if let Some(updated) = reconcile(&have, &want)? {
            js.update_stream(updated).await.map_err(|e| {
                err(format!(
                    "stream {name} (bringing it to the configured settings)"
                ))(e.into())
            })?;
        }
    }
    let bucket = subjects.config_bucket();
    let config = match js.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                history: CONFIG_HISTORY,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| err(format!("KV bucket {bucket}"))(e.into()))?,
    };
    // The bucket's own stream: history and replicas are gancho's to keep.
    let kv_stream = format!("KV_{bucket}");
    let mut s = js
        .get_stream(&kv_stream)
        .await
        .map_err(|e| err(format!("KV bucket {bucket}"))(e.into()))?;
    let have = s
        .info()
        .await
        .map_err(|e| err(format!("KV bucket {bucket}"))(e.into()))?
        .config
        .clone();
    if have.max_messages_per_subject != CONFIG_HISTORY || have.num_replicas != replicas {
        info!(
            bucket = %bucket,
            history = have.max_messages_per_subject,
            replicas = have.num_replicas,
            to_history = CONFIG_HISTORY,
            to_replicas = replicas,
            "Changing the config bucket's history and replicas."
        );
        let mut updated = have;
        updated.max_messages_per_subject = CONFIG_HISTORY;
        updated.num_replicas = replicas;
        js.update_stream(updated).await.map_err(|e| {
            err(format!(
                "KV bucket {bucket} (bringing it to the configured settings)"
            ))(e.into())
        })?;
    }
    let jobs = small_bucket(&js, subjects.jobs_bucket(), JOBS_MAX_AGE, replicas).await?;
    let workers = small_bucket(&js, subjects.workers_bucket(), MEMBER_TTL, replicas).await?;
    let apis = small_bucket(&js, subjects.apis_bucket(), MEMBER_TTL, replicas).await?;
    let routers = small_bucket(&js, subjects.routers_bucket(), MEMBER_TTL, replicas).await?;
    let leases = small_bucket(&js, subjects.leases_bucket(), MEMBER_TTL, replicas).await?;
    let audit_pending = small_bucket(
        &js,
        subjects.audit_pending_bucket(),
        crate::audit::PENDING_MAX_AGE,
        replicas,
    )
    .await?;
    let portal = small_bucket(
        &js,
        subjects.portal_bucket(),
        crate::portal::BUCKET_MAX_AGE,
        replicas,
    )
    .await?;
    Ok(Layout {
        subjects,
        js,
        config,
        jobs,
        workers,
        apis,
        routers,
        leases,
        portal,
        audit_pending,
        keyring: Default::default(),
    })
}

/// The existing stream `have`, changed where it differs from `want` in what gancho manages
/// (`None` when nothing differs), with one log line per change.
fn reconcile(
    have: &stream::Config,
    want: &stream::Config,
) -> Result<Option<stream::Config>, LayoutError> {
    let name = &want.name;
    if have.retention != want.retention {
        return Err(LayoutError {
            what: format!("stream {name}"),
            source: format!(
                "its retention is {:?} but this version needs {:?}, which JetStream cannot change in place; drain it, then delete it (nats stream rm {name}) and start again",
                have.retention, want.retention
            )
            .into(),
        });
    }
    let mut updated = have.clone();
    let mut changed = false;
    let missing: Vec<String> = want
        .subjects
        .iter()
        .filter(|s| !have.subjects.contains(s))
        .cloned()
        .collect();
    if !missing.is_empty() {
        info!(stream = %name, subjects = ?missing, "Adding subjects to an existing stream.");
        updated.subjects.extend(missing);
        changed = true;
    }
    if have.discard != want.discard {
        info!(stream = %name, from = ?have.discard, to = ?want.discard, "Changing the stream's discard policy.");
        updated.discard = want.discard;
        changed = true;
    }
    if have.max_bytes != want.max_bytes {
        info!(stream = %name, from = have.max_bytes, to = want.max_bytes, "Changing the stream's byte limit.");
        updated.max_bytes = want.max_bytes;
        changed = true;
    }
    // A stream created without a record limit reads -1 (0 is what the client sends).
    let records = |n: i64| if n > 0 { n } else { -1 };
    // A record limit set by a router while the server's store is full stays until it lifts it.
    let capped = have.metadata.contains_key(FULL_STORE_CAP);
    if !capped && records(have.max_messages) != records(want.max_messages) {
        info!(stream = %name, from = have.max_messages, to = want.max_messages, "Changing the stream's record limit.");
        updated.max_messages = records(want.max_messages);
        changed = true;
    }
    if have.max_age != want.max_age {
        info!(stream = %name, from = ?have.max_age, to = ?want.max_age, "Changing the stream's age limit.");
        updated.max_age = want.max_age;
        changed = true;
    }
    if want.allow_direct && !have.allow_direct {
        info!(stream = %name, "Allowing direct gets (the delivery log reads them).");
        updated.allow_direct = true;
        changed = true;
    }
    if want.allow_batch_publish && !have.allow_batch_publish {
        info!(stream = %name, "Allowing fast batches (workers write attempt records in them).");
        updated.allow_batch_publish = true;
        changed = true;
    }
    if (want.deny_delete && !have.deny_delete) || (want.deny_purge && !have.deny_purge) {
        info!(stream = %name, "Refusing deletes and purges of the stream's records.");
        updated.deny_delete |= want.deny_delete;
        updated.deny_purge |= want.deny_purge;
        changed = true;
    }
    if have.num_replicas != want.num_replicas {
        info!(stream = %name, from = have.num_replicas, to = want.num_replicas, "Changing the stream's replicas.");
        updated.num_replicas = want.num_replicas;
        changed = true;
    }
    if have.duplicate_window != want.duplicate_window {
        info!(stream = %name, from = ?have.duplicate_window, to = ?want.duplicate_window, "Changing the stream's duplicate window.");
        updated.duplicate_window = want.duplicate_window;
        changed = true;
    }
    Ok(changed.then_some(updated))
}

/// Whether a nats-server of `version` (`2.14.0`, `2.15.1-beta.2`) has JetStream fast batches:
/// 2.14 and newer.
fn takes_fast_batches(version: &str) -> bool {
    let mut parts = version.split(['.', '-']).map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (2, 14),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_batches_are_asked_of_2_14_and_newer_only() {
        for (version, has) in [
            ("2.14.0", true),
            ("2.15.1", true),
            ("2.14.0-RC.1", true),
            ("3.0.0", true),
            ("2.13.9", false),
            ("2.12.1", false),
            ("2.9.25", false),
            ("", false),
            ("dev", false),
        ] {
            assert_eq!(takes_fast_batches(version), has, "{version}");
        }
    }

    fn events(max_messages: i64) -> stream::Config {
        stream::Config {
            name: "GANCHO_EVENTS".into(),
            subjects: vec!["gancho.events.>".into()],
            max_messages,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        }
    }

    #[test]
    fn a_record_limit_set_by_hand_is_put_back_but_a_full_stores_cap_stays() {
        let want = events(-1);
        let by_hand = events(500);
        let fixed = reconcile(&by_hand, &want).unwrap().expect("a change");
        assert_eq!(fixed.max_messages, -1);
        let mut capped = events(500);
        capped
            .metadata
            .insert(FULL_STORE_CAP.to_owned(), "-1".to_owned());
        assert!(
            reconcile(&capped, &want).unwrap().is_none(),
            "the router lifts its cap, not start-up"
        );
    }
}
