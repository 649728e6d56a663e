//! Operational events: gancho tells a tenant, before their customer does, when a delivery is
//! given up on (`gancho.delivery.exhausted`), when an endpoint is disabled
//! (`gancho.endpoint.disabled`: a 410, or no success for `GANCHO_DISABLE_AFTER`), and when a
//! failing endpoint recovers (`gancho.endpoint.recovered`). Each is an ordinary event of the
//! tenant, routed like any other to the endpoints whose filters name it (`gancho.>`), never to
//! the endpoint it is about (its `endpoint_id` attribute). Ids are derived from what happened,
//! so a repeat within the duplicate window is stored once.

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use gancho_core::Subjects;
use gancho_proto::{timestamp, Event, Message as _};
use gancho_store::{ConfigStore, LiveEndpoint, StoreError};
use gancho_telemetry::names;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{info, warn};

pub const EXHAUSTED: &str = "gancho.delivery.exhausted";
pub const DISABLED: &str = "gancho.endpoint.disabled";
pub const RECOVERED: &str = "gancho.endpoint.recovered";

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The publish of one operational event about `endpoint`.
pub(crate) fn event(
    subjects: &Subjects,
    tenant: &str,
    event_type: &'static str,
    id: String,
    endpoint: &str,
    data: serde_json::Value,
) -> (String, PublishMessage) {
    metrics::counter!(names::OPERATIONAL_EVENTS, "type" => event_type).increment(1);
    let ev = Event {
        id: id.clone(),
        tenant: tenant.to_owned(),
        r#type: event_type.to_owned(),
        occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
        payload: Bytes::from(data.to_string()),
        attributes: [("endpoint_id".to_owned(), endpoint.to_owned())].into(),
        channels: Vec::new(),
    };
    let publish = PublishMessage::build()
        .payload(Bytes::from(ev.encode_to_vec()))
        .message_id(id);
    (subjects.event(tenant, event_type), publish)
}

/// Whether an endpoint of `tenant` other than `about` subscribes to operational events of
/// `event_type` (the one they are about never gets them).
pub(crate) fn listened(
    snapshot: &gancho_store::Snapshot,
    tenant: &str,
    event_type: &str,
    about: &str,
) -> bool {
    let mut found = Vec::new();
    snapshot.matching::<&str>(tenant, event_type, &[], &mut found);
    let endpoints = snapshot.endpoints(tenant);
    found.iter().any(|&i| {
        endpoints
            .get(i as usize)
            .is_some_and(|ep| ep.config.id.as_str() != about)
    })
}

/// How long every attempt to an endpoint must have failed before it is marked failing (or a
/// quarter of `GANCHO_DISABLE_AFTER` if that is shorter). Marked at the first failure, an
/// endpoint that fails one request in ten flipped between failing and recovered on every
/// failure: in the fan-out 100 soak (RELIABILITY.md), about 470 config writes a second, each
/// rebuilding every role's snapshot, and 78 `gancho.endpoint.recovered` events a second.
pub const FAILING_AFTER: Duration = Duration::from_secs(60);

/// Keeps each endpoint's `failing_since` (one write per change, not per attempt) and
/// disables an endpoint that failed for `disable_after`. An endpoint is marked failing once
/// its attempts have all failed for [`FAILING_AFTER`], with the time that run of failures
/// began (kept by its gate).
pub(crate) struct Health {
    pub store: ConfigStore,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    pub disable_after: Duration,
    /// Endpoints with a change on its way, so a burst of attempts makes one write.
    busy: Arc<Mutex<HashSet<(String, String)>>>,
}

/// What an attempt says about its endpoint's health.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Every attempt failed since then.
    Failing(OffsetDateTime),
    Disable,
    Recovered,
}

impl Health {
    pub fn new(
        store: ConfigStore,
        js: async_nats::jetstream::Context,
        subjects: Subjects,
        disable_after: Duration,
    ) -> Self {
        Self {
            store,
            js,
            subjects,
            disable_after,
            busy: Default::default(),
        }
    }

    /// Notes an attempt's outcome for its endpoint (as the worker's snapshot has it, and its
    /// gate, which keeps since when its attempts failed); writes only when the endpoint has
    /// failed for [`FAILING_AFTER`], has failed long enough to be disabled, or recovers.
    pub fn note(&self, ep: &LiveEndpoint, gate: &crate::gate::Gate, success: bool) {
        let now = OffsetDateTime::now_utc();
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        let from = gate.failing_from(success, now_ms);
        let change = match (success, ep.config.failing_since) {
            (true, Some(_)) => Change::Recovered,
            (true, None) => return,
            (false, None) => {
                let from = from.unwrap_or(now_ms);
                let marks = FAILING_AFTER.min(self.disable_after / 4);
                if now_ms - from < marks.as_millis() as i64 {
                    return;
                }
                let from = OffsetDateTime::from_unix_timestamp_nanos(i128::from(from) * 1_000_000)
                    .unwrap_or(now);
                Change::Failing(from)
            }
            (false, Some(since)) if !ep.config.disabled && now - since >= self.disable_after => {
                Change::Disable
            }
            (false, Some(_)) => return,
        };
        let key = (
            ep.config.tenant.as_str().to_owned(),
            ep.config.id.as_str().to_owned(),
        );
        if !self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
        {
            return;
        }
        let (store, js, subjects, busy, after) = (
            self.store.clone(),
            self.js.clone(),
            self.subjects.clone(),
            self.busy.clone(),
            self.disable_after,
        );
        tokio::spawn(async move {
            if let Err(e) = apply(&store, &js, &subjects, &key.0, &key.1, change, after).await {
                warn!(endpoint = %key.1, error = %e, "Cannot record an endpoint's health; the next attempt tries again.");
            }
            busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        });
    }
}

/// Writes one health change, and sends the operational event it calls for.
async fn apply(
    store: &ConfigStore,
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    tenant: &str,
    id: &str,
    change: Change,
    after: Duration,
) -> Result<(), String> {
    let now = OffsetDateTime::now_utc();
    // What the record said before this change, when the change applied.
    let mut before = None;
    let result = store
        .update_endpoint(tenant, id, |ep| {
            let applies = match change {
                Change::Failing(_) => ep.failing_since.is_none(),
                Change::Recovered => ep.failing_since.is_some(),
                Change::Disable => {
                    !ep.disabled && ep.failing_since.is_some_and(|s| now - s >= after)
                }
            };
            if !applies {
                return Err(StoreError::Invalid("no change".into()));
            }
            before = ep.failing_since;
            match change {
                Change::Failing(from) => ep.failing_since = Some(from),
                Change::Recovered => ep.failing_since = None,
                Change::Disable => {
                    ep.disabled = true;
                    ep.disabled_reason = Some(format!(
                        "no successful delivery since {} (disabled after {})",
                        ep.failing_since.map(rfc3339).unwrap_or_default(),
                        humantime::format_duration(after)
                    ));
                }
            }
            Ok(())
        })
        .await;
    let ep = match result {
        Ok(ep) => ep,
        Err(StoreError::Invalid(_)) | Err(StoreError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let since = before.map(rfc3339);
    let (ty, id_, data) = match change {
        Change::Failing(_) => return Ok(()),
        Change::Recovered => {
            info!(endpoint = %id, "Endpoint recovered.");
            (
                RECOVERED,
                format!(
                    "recovered:{id}:{}",
                    before.map(|t| t.unix_timestamp()).unwrap_or_default()
                ),
                serde_json::json!({
                    "endpoint_id": id, "url": ep.url, "failing_since": since,
                    "recovered_at": rfc3339(now),
                }),
            )
        }
        Change::Disable => {
            crate::emit::Emit::emit(crate::emit::EndpointDisabled {
                endpoint: id,
                why: crate::emit::Disabled::Failing,
            });
            (
                DISABLED,
                format!("disabled:{id}:{}", now.unix_timestamp()),
                serde_json::json!({
                    "endpoint_id": id, "url": ep.url, "reason": ep.disabled_reason,
                    "failing_since": since, "disabled_at": rfc3339(now),
                }),
            )
        }
    };
    let (subject, publish) = event(subjects, tenant, ty, id_, id, data);
    async { js.send_publish(subject, publish).await?.await }
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
