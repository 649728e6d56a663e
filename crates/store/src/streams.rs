//! The JetStream layout of DESIGN.md, created or checked at start-up by whichever role starts
//! first. Creation is idempotent: an existing stream is left as it is.

use async_nats::jetstream::{self, kv, stream};
use gancho_core::Subjects;
use std::time::Duration;

/// Replay window of the events stream.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long attempts and dead letters are kept.
pub const LOG_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// JetStream de-duplication window for `Nats-Msg-Id`.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Config history kept per key.
pub const CONFIG_HISTORY: i64 = 5;

/// Handles to everything [`ensure`] created, and the keys that open the secrets in it.
#[derive(Clone)]
pub struct Layout {
    pub subjects: Subjects,
    pub js: jetstream::Context,
    pub config: kv::Store,
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

/// Sets the events stream's de-duplication window (how long an event id is remembered) when
/// it differs, so a changed setting applies to an existing stream at start-up.
pub async fn set_duplicate_window(layout: &Layout, window: Duration) -> Result<(), LayoutError> {
    let name = layout.subjects.events_stream();
    let mut stream = layout
        .js
        .get_stream(&name)
        .await
        .map_err(|e| err(format!("stream {name}"))(e.into()))?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| err(format!("stream {name}"))(e.into()))?
        .config
        .clone();
    if config.duplicate_window != window {
        config.duplicate_window = window;
        layout
            .js
            .update_stream(config)
            .await
            .map_err(|e| err(format!("stream {name} (duplicate window)"))(e.into()))?;
    }
    Ok(())
}

/// Creates the four streams and the config bucket if missing; `replicas` is 1 on a laptop,
/// 3 on a cluster.
pub async fn ensure(
    js: jetstream::Context,
    subjects: Subjects,
    replicas: usize,
) -> Result<Layout, LayoutError> {
    let streams = [
        stream::Config {
            name: subjects.events_stream(),
            subjects: vec![subjects.events_wildcard()],
            max_age: EVENTS_MAX_AGE,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.deliveries_stream(),
            subjects: vec![
                subjects.deliveries_wildcard(),
                subjects.retry_wildcard(),
                subjects.held_wildcard(),
            ],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: DUPLICATE_WINDOW,
            allow_message_schedules: true,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.attempts_stream(),
            subjects: vec![subjects.attempts_wildcard()],
            max_age: LOG_MAX_AGE,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.dead_stream(),
            subjects: vec![subjects.dead_wildcard()],
            max_age: LOG_MAX_AGE,
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for config in streams {
        let name = config.name.clone();
        let stream = js
            .get_or_create_stream(config.clone())
            .await
            .map_err(|e| err(format!("stream {name}"))(e.into()))?;
        // A stream made by an older version may lack a subject this one writes to (held
        // deliveries): add the missing ones, change nothing else.
        let existing = stream.cached_info().config.clone();
        let missing: Vec<String> = config
            .subjects
            .iter()
            .filter(|s| !existing.subjects.contains(s))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let mut updated = existing;
            updated.subjects.extend(missing);
            js.update_stream(updated)
                .await
                .map_err(|e| err(format!("stream {name} (adding subjects)"))(e.into()))?;
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
    Ok(Layout {
        subjects,
        js,
        config,
        keyring: Default::default(),
    })
}
