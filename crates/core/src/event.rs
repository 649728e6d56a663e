//! The rules an event must keep to be accepted, written once for both ways in. They differ
//! only where the way in does:
//! - an id: over HTTP 1 to 128 letters, digits, `_`, `.`, `:` or `-` (a producer's id in a
//!   URL-safe alphabet); over NATS 1 to 255 visible ASCII characters (what a `webhook-id`
//!   header can carry: platform services keep their own ids);
//! - a type: valid everywhere ([`crate::id::validate_event_type`]); gancho's own `gancho.`
//!   types are refused over HTTP, since only the worker publishes them, over NATS;
//! - the data: over HTTP a JSON object or array; over NATS any JSON document.

use crate::id::{validate_event_type, validate_tenant};
use crate::matching::RESERVED_PREFIX;
use crate::webhook::is_json;

/// How an event came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /v1/tenants/{t}/events` (or its batch).
    Http,
    /// Protobuf on `gancho.events.<tenant>.<type>`.
    Nats,
}

/// The part of an event that breaks a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Id,
    Tenant,
    Type,
    Data,
}

/// Why an event is refused: which part, and what to fix, for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub field: Field,
    pub why: String,
}

fn broken(field: Field, why: impl Into<String>) -> Broken {
    Broken {
        field,
        why: why.into(),
    }
}

/// Checks an event's id, tenant, type and data as `source` takes them, in that order.
pub fn check(
    source: Source,
    id: &str,
    tenant: &str,
    event_type: &str,
    data: &[u8],
) -> Result<(), Broken> {
    match source {
        Source::Http => {
            let ok = !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
            if !ok {
                return Err(broken(
                    Field::Id,
                    "id must be 1 to 128 letters, digits, '_', '.', ':' or '-'",
                ));
            }
        }
        Source::Nats => {
            if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(broken(
                    Field::Id,
                    "event id must be 1 to 255 visible ASCII characters (it becomes the webhook-id header)",
                ));
            }
        }
    }
    validate_tenant(tenant).map_err(|e| broken(Field::Tenant, e.to_string()))?;
    validate_event_type(event_type).map_err(|e| broken(Field::Type, e.to_string()))?;
    if source == Source::Http && event_type.starts_with(RESERVED_PREFIX) {
        return Err(broken(
            Field::Type,
            format!(
                "{event_type:?} is reserved for gancho's own events (types starting with {RESERVED_PREFIX:?})"
            ),
        ));
    }
    let data_ok = match source {
        Source::Http => matches!(data.trim_ascii_start().first(), Some(b'{' | b'[')),
        Source::Nats => is_json(data),
    };
    if !data_ok {
        let why = match source {
            Source::Http => "data must be a JSON object or array",
            Source::Nats => "event payload is not a JSON document",
        };
        return Err(broken(Field::Data, why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_ways_in_differ_only_where_they_should() {
        let ok = |s, id, ty, data: &str| check(s, id, "acme", ty, data.as_bytes());
        for s in [Source::Http, Source::Nats] {
            assert_eq!(ok(s, "evt_1", "charge.paid", r#"{"a":1}"#), Ok(()));
            assert_eq!(ok(s, "", "charge.paid", "{}").unwrap_err().field, Field::Id);
            assert_eq!(
                ok(s, "evt_1", "charge..paid", "{}").unwrap_err().field,
                Field::Type
            );
            assert_eq!(
                check(s, "evt_1", "Not A Tenant", "charge.paid", b"{}")
                    .unwrap_err()
                    .field,
                Field::Tenant
            );
        }
        // A producer's own id with characters a URL would need escaped: NATS only.
        assert_eq!(ok(Source::Nats, "order/42#1", "charge.paid", "{}"), Ok(()));
        assert_eq!(
            ok(Source::Http, "order/42#1", "charge.paid", "{}")
                .unwrap_err()
                .field,
            Field::Id
        );
        let long = "x".repeat(200);
        assert_eq!(ok(Source::Nats, &long, "charge.paid", "{}"), Ok(()));
        assert!(ok(Source::Http, &long, "charge.paid", "{}").is_err());
        // gancho's own types come only from the worker, over NATS.
        assert_eq!(
            ok(Source::Nats, "e", "gancho.delivery.exhausted", "{}"),
            Ok(())
        );
        let reserved = ok(Source::Http, "e", "gancho.delivery.exhausted", "{}").unwrap_err();
        assert_eq!(reserved.field, Field::Type);
        assert!(reserved.why.contains("reserved"), "{}", reserved.why);
        // Data: any JSON document over NATS, an object or array over HTTP.
        assert_eq!(ok(Source::Nats, "e", "charge.paid", "42"), Ok(()));
        assert_eq!(
            ok(Source::Http, "e", "charge.paid", "42")
                .unwrap_err()
                .field,
            Field::Data
        );
        assert_eq!(ok(Source::Http, "e", "charge.paid", "  [1]"), Ok(()));
        assert_eq!(
            ok(Source::Nats, "e", "charge.paid", "{not json")
                .unwrap_err()
                .field,
            Field::Data
        );
    }
}
