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
    pub fn config_bucket(&self) -> String {
        format!("{}_config", self.prefix.replace('-', "_"))
    }

    /// Durable consumer the routers share on the events stream.
    pub fn router_consumer(&self) -> String {
        format!("{}_router", self.prefix)
    }
    /// Durable consumer the workers share on the deliveries stream.
    pub fn worker_consumer(&self) -> String {
        format!("{}_worker", self.prefix)
    }

    // Subjects.

    /// `gancho.events.<tenant>.<type>`: where producers publish.
    pub fn event(&self, tenant: &str, event_type: &str) -> String {
        format!("{}.events.{tenant}.{event_type}", self.prefix)
    }
    pub fn events_wildcard(&self) -> String {
        format!("{}.events.>", self.prefix)
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
    /// `gancho.retry.<delivery id>`: holds a scheduled retry until it fires.
    pub fn retry(&self, delivery_id: &str) -> String {
        format!("{}.retry.{delivery_id}", self.prefix)
    }
    pub fn retry_wildcard(&self) -> String {
        format!("{}.retry.>", self.prefix)
    }

    /// `gancho.held.<tenant>.<endpoint>`: a paused endpoint's deliveries, waiting for resume.
    /// No consumer reads it until the endpoint is resumed, disabled or deleted.
    pub fn held(&self, tenant: &str, endpoint: &str) -> String {
        format!("{}.held.{tenant}.{endpoint}", self.prefix)
    }
    pub fn held_wildcard(&self) -> String {
        format!("{}.held.>", self.prefix)
    }
    /// Splits a held subject into (tenant, endpoint); `None` when it is not one.
    pub fn parse_held<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".held.")?;
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

    /// `gancho.attempts.<tenant>.<endpoint>`
    pub fn attempts(&self, tenant: &str, endpoint: &str) -> String {
        format!("{}.attempts.{tenant}.{endpoint}", self.prefix)
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

    /// `gancho.dead.<tenant>.<endpoint>`
    pub fn dead(&self, tenant: &str, endpoint: &str) -> String {
        format!("{}.dead.{tenant}.{endpoint}", self.prefix)
    }
    pub fn dead_wildcard(&self) -> String {
        format!("{}.dead.>", self.prefix)
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

impl Default for Subjects {
    fn default() -> Self {
        Self::new("gancho").expect("the default prefix is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.held("acme", "ep1"), "gancho.held.acme.ep1");
        assert_eq!(s.parse_held("gancho.held.acme.ep1"), Some(("acme", "ep1")));
        assert_eq!(s.parse_held("gancho.held.acme"), None);
        assert_eq!(s.parse_held("gancho.retry.acme.ep1"), None);
        assert_ne!(
            s.release_consumer("gancho.held.a_b.c"),
            s.release_consumer("gancho.held.a.b_c")
        );
        assert_eq!(s.attempts("acme", "ep1"), "gancho.attempts.acme.ep1");
        assert_eq!(s.dead("acme", "ep1"), "gancho.dead.acme.ep1");
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
