//! Every subject, stream, consumer and bucket name, derived from one prefix (`gancho` by
//! default) so that several installations can share a NATS account.

use crate::id::{check_prefix, IdError};

/// Names of everything gancho creates in JetStream. Built once at start-up and shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    upper: String,
}

/// The endpoint token of a dead letter that no endpoint owns (an event that failed to decode
/// or validate in the router).
pub const DEAD_EVENT_TOKEN: &str = "_events";
/// Header on a held delivery: the `gancho.deliveries.<partition>` subject it goes back to
/// when released.
pub const TARGET_HEADER: &str = "Gancho-Target";
/// Header on a message of the deliveries stream that carries a `DeliveryBatch` (the
/// deliveries of one event to several endpoints of one partition) instead of one `Delivery`;
/// its value is the number of deliveries.
pub const BATCH_HEADER: &str = "Gancho-Batch";
/// Header on an ordered delivery: the events stream's sequence of its event, the order its
/// key's deliveries go in.
pub const EVENT_SEQUENCE_HEADER: &str = "Gancho-Event-Sequence";
/// Header on an ordered delivery waiting for a retry: not before this time (Unix
/// milliseconds).
pub const NOT_BEFORE_HEADER: &str = "Gancho-Not-Before";
/// The event token of a dead letter whose event could not be read.
pub const NO_EVENT_TOKEN: &str = "_";
/// Header on an event that came in over HTTP ingest (`http`); events without it were
/// published on NATS by a platform service.
pub const INGEST_HEADER: &str = "Gancho-Ingest";
/// The tenant token of a dead letter whose tenant could not be read.
pub const UNKNOWN_TENANT_TOKEN: &str = "_unknown";

impl Subjects {
    /// `prefix` must be a single token of letters, digits, `_` or `-`.
    pub fn new(prefix: &str) -> Result<Self, IdError> {
        check_prefix(prefix)?;
        Ok(Self {
            prefix: prefix.to_owned(),
            upper: prefix.to_ascii_uppercase().replace('-', "_"),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // Streams and buckets.

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper)
    }
    pub fn deliveries_stream(&self) -> String {
        format!("{}_DELIVERIES", self.upper)
    }
    pub fn attempts_stream(&self) -> String {
        format!("{}_ATTEMPTS", self.upper)
    }
    pub fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.upper)
    }
    /// Deliveries that wait without a consumer: a paused endpoint's, and those parked by an
    /// endpoint's gate. A stream of their own, so that a dead endpoint's pile does not lie
    /// between the deliveries that are sent and removed at once (which left the deliveries
    /// stream's blocks mostly holes, loaded and compacted over and over by nats-server).
    pub fn held_stream(&self) -> String {
        format!("{}_HELD", self.upper)
    }
    /// The deliveries of endpoints with ordered delivery, each waiting on its key's subject
    /// ([`Subjects::ordered`]) until its turn; read by the owner of its partition.
    pub fn ordered_stream(&self) -> String {
        format!("{}_ORDERED", self.upper)
    }
    pub fn config_bucket(&self) -> String {
        format!("{}_config", self.prefix.replace('-', "_"))
    }
    /// Recover, replay and redrive jobs (`<tenant>.<job id>`), apart from the config so their
    /// progress does not wake every router and worker.
    /// The audit log: every change made through the API, kept for `GANCHO_AUDIT_MAX_AGE`
    /// and never deleted or purged.
    pub fn audit_stream(&self) -> String {
        format!("{}_AUDIT", self.upper)
    }
    /// Changes under way through the API, each written before its request runs and removed
    /// once its audit record is stored: what the api's catch-up finds after a crash.
    pub fn audit_pending_bucket(&self) -> String {
        format!("{}_audit_pending", self.prefix.replace('-', "_"))
    }
    pub fn jobs_bucket(&self) -> String {
        format!("{}_jobs", self.prefix.replace('-', "_"))
    }

    /// Durable consumer the routers share on the events stream.
    pub fn router_consumer(&self) -> String {
        format!("{}_router", self.prefix)
    }
    /// The durable consumer of one tenant's events (`gancho_router_t_<tenant>`, filter
    /// [`Subjects::tenant_events`]), shared by every router.
    pub fn router_tenant_consumer(&self, tenant: &str) -> String {
        format!("{}{tenant}", self.router_tenant_prefix())
    }
    /// What every tenant's router consumer's name starts with.
    pub fn router_tenant_prefix(&self) -> String {
        format!("{}_router_t_", self.prefix)
    }
    /// The durable consumer of one partition's bulk lane (`gancho_worker_p<partition>_bulk`,
    /// filter [`Subjects::bulk_wildcard`]), pinned with the partition's own.
    pub fn worker_bulk_consumer(&self, partition: u32) -> String {
        format!("{}_worker_p{partition}_bulk", self.prefix)
    }
    /// The durable consumer the workers shared on the whole deliveries stream before the
    /// deliveries were consumed by partition; removed at start-up when found.
    pub fn legacy_worker_consumer(&self) -> String {
        format!("{}_worker", self.prefix)
    }
    /// The durable consumer of one partition of the deliveries stream
    /// (`gancho_worker_p<partition>`, filter `gancho.deliveries.<partition>`), pinned to one
    /// worker at a time.
    pub fn worker_consumer(&self, partition: u32) -> String {
        format!("{}_worker_p{partition}", self.prefix)
    }
    /// Portal links and sessions (`crate`-level docs of `gancho_store::portal`), apart from
    /// the config so a session started or ended wakes no router or worker.
    pub fn portal_bucket(&self) -> String {
        format!("{}_portal", self.prefix.replace('-', "_"))
    }
    /// Live workers (`<worker id>` keys, refreshed every few seconds, expiring with their
    /// worker): who owns which partition is computed from it.
    pub fn workers_bucket(&self) -> String {
        format!("{}_workers", self.prefix.replace('-', "_"))
    }
    /// Leases: one process at a time holds each key (`crates/store/src/lease.rs`).
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.prefix.replace('-', "_"))
    }
    /// Live routers, with what each supports ([`Subjects::workers_bucket`] has the workers').
    pub fn routers_bucket(&self) -> String {
        format!("{}_routers", self.prefix.replace('-', "_"))
    }
    /// Live api processes, for the per-credential request rate each enforces.
    pub fn apis_bucket(&self) -> String {
        format!("{}_apis", self.prefix.replace('-', "_"))
    }

    // Subjects.

    /// `gancho.events.<tenant>.<type>`: where producers publish.
    pub fn event(&self, tenant: &str, event_type: &str) -> String {
        format!("{}.events.{tenant}.{event_type}", self.prefix)
    }
    pub fn events_wildcard(&self) -> String {
        format!("{}.events.>", self.prefix)
    }
    /// `gancho.events.<tenant>.>`: every event of one tenant.
    pub fn tenant_events(&self, tenant: &str) -> String {
        format!("{}.events.{tenant}.>", self.prefix)
    }
    /// Splits an event subject into (tenant, type); `None` when it is not one.
    pub fn parse_event<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".events.")?;
        let (tenant, ty) = rest.split_once('.')?;
        Some((tenant, ty))
    }

    /// `gancho.deliveries.<partition>`
    pub fn delivery(&self, partition: u32) -> String {
        format!("{}.deliveries.{partition}", self.prefix)
    }
    pub fn deliveries_wildcard(&self) -> String {
        format!("{}.deliveries.>", self.prefix)
    }
    /// `gancho.deliveries.<partition>.<tenant>`: the partition's bulk lane, for the
    /// deliveries of a tenant with a backlog. Its partition's owner serves it with what the
    /// partition's own deliveries leave free.
    pub fn delivery_bulk(&self, partition: u32, tenant: &str) -> String {
        format!("{}.deliveries.{partition}.{tenant}", self.prefix)
    }
    /// Every bulk delivery of one partition.
    pub fn bulk_wildcard(&self, partition: u32) -> String {
        format!("{}.deliveries.{partition}.>", self.prefix)
    }
    /// Whether a delivery message's subject is a bulk lane's.
    pub fn is_bulk(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(".deliveries."))
            .is_some_and(|rest| rest.contains('.'))
    }
    /// `gancho.ordered.<partition>.<tenant>.<endpoint>.<key hash>`: an ordered endpoint's
    /// deliveries of one key (the hash of [`crate::ordering::Ordering::key_of`], never the
    /// key), in the ordered stream.
    pub fn ordered(&self, partition: u32, tenant: &str, endpoint: &str, key: &str) -> String {
        format!(
            "{}.ordered.{partition}.{tenant}.{endpoint}.{key}",
            self.prefix
        )
    }
    /// Every ordered delivery of one partition.
    pub fn ordered_partition(&self, partition: u32) -> String {
        format!("{}.ordered.{partition}.>", self.prefix)
    }
    pub fn ordered_wildcard(&self) -> String {
        format!("{}.ordered.>", self.prefix)
    }
    /// Splits an ordered subject into (tenant, endpoint, key hash).
    pub fn parse_ordered<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".ordered.")?;
        let mut parts = rest.split('.');
        let (_partition, tenant, endpoint, key) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        parts.next().is_none().then_some((tenant, endpoint, key))
    }
    /// `gancho.retry.<delivery id>`: holds a scheduled retry until it fires.
    pub fn retry(&self, delivery_id: &str) -> String {
        format!("{}.retry.{delivery_id}", self.prefix)
    }
    pub fn retry_wildcard(&self) -> String {
        format!("{}.retry.>", self.prefix)
    }

    /// `gancho.hold.<tenant>.<endpoint>` (in the held stream): a paused endpoint's deliveries,
    /// and those parked by its gate. No consumer reads it until they are released.
    pub fn held(&self, tenant: &str, endpoint: &str) -> String {
        format!("{}.hold.{tenant}.{endpoint}", self.prefix)
    }
    pub fn held_wildcard(&self) -> String {
        format!("{}.hold.>", self.prefix)
    }
    /// `gancho.held.<tenant>.<endpoint>`: where held deliveries waited before they had a
    /// stream of their own, in the deliveries stream. Still released (and still written by
    /// roles of an older version during a rolling upgrade); nothing of this version writes
    /// there.
    pub fn legacy_held(&self, tenant: &str, endpoint: &str) -> String {
        format!("{}.held.{tenant}.{endpoint}", self.prefix)
    }
    pub fn legacy_held_wildcard(&self) -> String {
        format!("{}.held.>", self.prefix)
    }
    /// Splits a held subject, of either kind, into (tenant, endpoint); `None` when it is not
    /// one.
    pub fn parse_held<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        let rest = rest
            .strip_prefix(".hold.")
            .or_else(|| rest.strip_prefix(".held."))?;
        let (tenant, endpoint) = rest.split_once('.')?;
        (!endpoint.contains('.')).then_some((tenant, endpoint))
    }
    /// Durable consumer that releases one held subject; named by a hash of the subject, so
    /// every worker releasing the same endpoint shares it.
    pub fn release_consumer(&self, held_subject: &str) -> String {
        // FNV-1a, 64 bits: stable across processes and versions.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in held_subject.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{}_release_{h:016x}", self.prefix)
    }

    /// `gancho.attempts.<tenant>.<endpoint>.<class>.<outcome>.<event token>`: one attempt
    /// record, with the answer's status class ([`status_class`]), the outcome (`success`,
    /// `http_error`, `timeout`, ...) and the event's token ([`event_token`]) in the subject,
    /// so the delivery log is read by subject filters.
    pub fn attempt(
        &self,
        tenant: &str,
        endpoint: &str,
        class: &str,
        outcome: &str,
        event_id: &str,
    ) -> String {
        format!(
            "{}.attempts.{tenant}.{endpoint}.{class}.{outcome}.{}",
            self.prefix,
            event_token(event_id)
        )
    }
    /// The attempts of one endpoint, optionally of one status class and one outcome.
    pub fn attempts_filter(
        &self,
        tenant: &str,
        endpoint: &str,
        class: Option<&str>,
        outcome: Option<&str>,
    ) -> String {
        format!(
            "{}.attempts.{tenant}.{endpoint}.{}.{}.*",
            self.prefix,
            class.unwrap_or("*"),
            outcome.unwrap_or("*")
        )
    }
    /// Every attempt for one event, on any endpoint of the tenant.
    pub fn attempts_of_event(&self, tenant: &str, event_id: &str) -> String {
        format!(
            "{}.attempts.{tenant}.*.*.*.{}",
            self.prefix,
            event_token(event_id)
        )
    }
    pub fn attempts_wildcard(&self) -> String {
        format!("{}.attempts.>", self.prefix)
    }
    /// Whether `subject` is an attempt record's.
    pub fn is_attempt(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with(".attempts."))
    }

    /// `gancho.dead.<tenant>.<endpoint>.<kind>.<event token>` (`_` when the event could not
    /// be read): one dead letter.
    /// `gancho.audit.<tenant>.<resource>`: one change to a tenant's `resource` (`tenant`,
    /// `endpoint`, `api_key`, `event_type`, `portal_session`, `job`).
    pub fn audit(&self, tenant: &str, resource: &str) -> String {
        format!("{}.audit.{tenant}.{resource}", self.prefix)
    }
    /// The changes of one tenant (or every tenant), optionally to one kind of resource.
    pub fn audit_filter(&self, tenant: Option<&str>, resource: Option<&str>) -> String {
        format!(
            "{}.audit.{}.{}",
            self.prefix,
            tenant.unwrap_or("*"),
            resource.unwrap_or("*")
        )
    }
    pub fn audit_wildcard(&self) -> String {
        format!("{}.audit.>", self.prefix)
    }
    pub fn dead(&self, tenant: &str, endpoint: &str, kind: &str, event_id: Option<&str>) -> String {
        format!(
            "{}.dead.{tenant}.{endpoint}.{kind}.{}",
            self.prefix,
            event_id.map_or_else(|| NO_EVENT_TOKEN.to_owned(), event_token)
        )
    }
    /// The dead letters of a tenant, optionally of one endpoint (or [`DEAD_EVENT_TOKEN`]) and
    /// one kind.
    pub fn dead_filter(&self, tenant: &str, endpoint: Option<&str>, kind: Option<&str>) -> String {
        format!(
            "{}.dead.{tenant}.{}.{}.*",
            self.prefix,
            endpoint.unwrap_or("*"),
            kind.unwrap_or("*")
        )
    }
    /// Every dead letter of one event.
    pub fn dead_of_event(&self, tenant: &str, event_id: &str) -> String {
        format!(
            "{}.dead.{tenant}.*.*.{}",
            self.prefix,
            event_token(event_id)
        )
    }
    pub fn dead_wildcard(&self) -> String {
        format!("{}.dead.>", self.prefix)
    }
    /// The tenant, endpoint and kind tokens of a dead letter's subject.
    pub fn parse_dead<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".dead.")?;
        let mut t = rest.split('.');
        let parsed = (t.next()?, t.next()?, t.next()?);
        t.next()?;
        t.next().is_none().then_some(parsed)
    }

    // Config keys (KV keys, not subjects, but they follow the same token rules).

    pub fn tenant_key(tenant: &str) -> String {
        format!("tenants.{tenant}")
    }
    pub fn endpoint_key(tenant: &str, endpoint: &str) -> String {
        format!("endpoints.{tenant}.{endpoint}")
    }
    /// An event type of the catalog: `event_types.<tenant>.<dotted name>`.
    pub fn event_type_key(tenant: &str, name: &str) -> String {
        format!("event_types.{tenant}.{name}")
    }
    /// An API key's document: `api_keys.<tenant>.<key id>`.
    pub fn api_key_key(tenant: &str, id: &str) -> String {
        format!("api_keys.{tenant}.{id}")
    }
    /// The lookup from a presented key to its document: `api_key_hashes.<sha256 hex>`.
    pub fn api_key_hash_key(hash: &str) -> String {
        format!("api_key_hashes.{hash}")
    }
}

/// The subject token of an event id (ids may hold `.`, which subjects cannot): the first 8
/// bytes of its SHA-256, in hex. Records found by it are checked against the full id.
pub fn event_token(event_id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(event_id.as_bytes())[..8])
}

/// Lower-case hex of `bytes`, in one allocation (every attempt record's subject has one).
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from_digit(u32::from(b >> 4), 16).expect("a nibble"));
        out.push(char::from_digit(u32::from(b & 15), 16).expect("a nibble"));
    }
    out
}

/// The `Nats-Msg-Id` of an event: `<tenant>:<event id>`. JetStream de-duplicates by message
/// id over the whole events stream, and event ids are only unique within a tenant: two
/// tenants' producers may both send `evt-1`. Tenant ids never hold a `:`, so the two parts
/// cannot run together.
pub fn event_message_id(tenant: &str, event_id: &str) -> String {
    format!("{tenant}:{event_id}")
}

/// The `Nats-Msg-Id` of one event's delivery to one endpoint (`<tenant>:<event>:<endpoint>`),
/// or, with `batch` = the batch's size, of a batch starting at that endpoint
/// (`<tenant>:<event>:<endpoint>+<n>`). Endpoint ids may be chosen by the tenant, so the
/// tenant is part of the id here too.
pub fn delivery_message_id(
    tenant: &str,
    event_id: &str,
    endpoint_id: &str,
    batch: Option<usize>,
) -> String {
    match batch {
        None => format!("{tenant}:{event_id}:{endpoint_id}"),
        Some(n) => format!("{tenant}:{event_id}:{endpoint_id}+{n}"),
    }
}

/// A subject-token-safe id for (event, endpoint): 32 hex characters of SHA-256.
pub fn delivery_id(event_id: &str, endpoint_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(event_id.as_bytes());
    h.update(b":");
    h.update(endpoint_id.as_bytes());
    hex(&h.finalize()[..16])
}

/// Partitions of `gancho.deliveries.<n>` (each endpoint's deliveries share one).
pub const PARTITIONS: u32 = 16;

/// Partition of an endpoint's deliveries: stable, so one endpoint's deliveries share a subject.
pub fn partition(tenant: &str, endpoint_id: &str, partitions: u32) -> u32 {
    // FNV-1a: tiny, stable across builds and platforms.
    let mut h: u32 = 0x811c9dc5;
    for b in tenant.bytes().chain([b'/']).chain(endpoint_id.bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h % partitions.max(1)
}

/// The status class token of an answer: `2xx` ... `5xx`, `1xx`, or `none` without one.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// Every value of [`status_class`].
pub const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// [`status_class`]'s place in [`STATUS_CLASSES`].
pub fn status_class_index(status: u16) -> usize {
    match status {
        0 => 0,
        100..=199 => 1,
        200..=299 => 2,
        300..=399 => 3,
        400..=499 => 4,
        _ => 5,
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("gancho").expect("the default prefix is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_per_tenant() {
        assert_ne!(
            event_message_id("a", "evt-1"),
            event_message_id("b", "evt-1")
        );
        assert_eq!(event_message_id("acme", "evt-1"), "acme:evt-1");
        assert_ne!(
            delivery_message_id("a", "evt-1", "primary", None),
            delivery_message_id("b", "evt-1", "primary", None)
        );
        assert_eq!(
            delivery_message_id("acme", "e", "ep_1", Some(3)),
            "acme:e:ep_1+3"
        );
    }

    #[test]
    fn delivery_ids_are_stable_and_subject_safe() {
        let a = delivery_id("evt.1 with spaces", "ep_1");
        assert_eq!(a, delivery_id("evt.1 with spaces", "ep_1"));
        assert_ne!(a, delivery_id("evt.1 with spaces", "ep_2"));
        assert_eq!(a, "ad90bb83843155c458018c0f383cbc01");
    }

    #[test]
    fn names_follow_the_design() {
        let s = Subjects::default();
        assert_eq!(s.events_stream(), "GANCHO_EVENTS");
        assert_eq!(s.deliveries_stream(), "GANCHO_DELIVERIES");
        assert_eq!(s.attempts_stream(), "GANCHO_ATTEMPTS");
        assert_eq!(s.dead_stream(), "GANCHO_DEAD");
        assert_eq!(s.config_bucket(), "gancho_config");
        assert_eq!(
            s.event("acme", "invoice.paid"),
            "gancho.events.acme.invoice.paid"
        );
        assert_eq!(s.delivery(3), "gancho.deliveries.3");
        assert_eq!(s.retry("abc"), "gancho.retry.abc");
        assert_eq!(s.held("acme", "ep1"), "gancho.hold.acme.ep1");
        assert_eq!(s.legacy_held("acme", "ep1"), "gancho.held.acme.ep1");
        assert_eq!(s.parse_held("gancho.hold.acme.ep1"), Some(("acme", "ep1")));
        assert_eq!(s.parse_held("gancho.held.acme.ep1"), Some(("acme", "ep1")));
        assert_eq!(s.parse_held("gancho.held.acme"), None);
        assert_eq!(s.parse_held("gancho.hold.acme.ep1.x"), None);
        assert_eq!(s.held_stream(), "GANCHO_HELD");
        assert_eq!(s.parse_held("gancho.retry.acme.ep1"), None);
        assert_ne!(
            s.release_consumer("gancho.held.a_b.c"),
            s.release_consumer("gancho.held.a.b_c")
        );
        let t = event_token("evt.1");
        // Stored in subjects already written: the token never changes for an id.
        assert_eq!(t, "0cc0fe60adc362e9");
        assert_ne!(t, event_token("evt.2"));
        assert_eq!(
            s.attempt("acme", "ep1", "5xx", "http_error", "evt.1"),
            format!("gancho.attempts.acme.ep1.5xx.http_error.{t}")
        );
        assert_eq!(
            s.attempts_filter("acme", "ep1", Some("5xx"), None),
            "gancho.attempts.acme.ep1.5xx.*.*"
        );
        assert_eq!(
            s.attempts_of_event("acme", "evt.1"),
            format!("gancho.attempts.acme.*.*.*.{t}")
        );
        assert_eq!(
            s.dead("acme", "ep1", "exhausted", Some("evt.1")),
            format!("gancho.dead.acme.ep1.exhausted.{t}")
        );
        assert_eq!(
            s.dead("acme", DEAD_EVENT_TOKEN, "undecodable", None),
            "gancho.dead.acme._events.undecodable._"
        );
        assert_eq!(
            s.parse_dead("gancho.dead.acme.ep1.exhausted.abc"),
            Some(("acme", "ep1", "exhausted"))
        );
        assert_eq!(s.parse_dead("gancho.dead.acme.ep1"), None);
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(0), "none");
        assert_eq!(Subjects::endpoint_key("acme", "ep1"), "endpoints.acme.ep1");
    }

    #[test]
    fn custom_prefix() {
        let s = Subjects::new("stg-hooks").unwrap();
        assert_eq!(s.events_stream(), "STG_HOOKS_EVENTS");
        assert_eq!(s.config_bucket(), "stg_hooks_config");
        assert_eq!(s.events_wildcard(), "stg-hooks.events.>");
        assert!(Subjects::new("a.b").is_err());
        assert!(Subjects::new("").is_err());
    }

    #[test]
    fn parse_event_subjects() {
        let s = Subjects::default();
        assert_eq!(
            s.parse_event("gancho.events.acme.invoice.paid"),
            Some(("acme", "invoice.paid"))
        );
        assert_eq!(s.parse_event("gancho.events.acme"), None);
        assert_eq!(s.parse_event("other.events.acme.x"), None);
    }
}
