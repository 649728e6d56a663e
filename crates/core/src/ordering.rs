//! Ordered delivery's settings and keys (issue 31): an endpoint's deliveries with the same
//! key go in the order of the events stream. `key` orders per value of a JSON Pointer (RFC
//! 6901) into the event's payload (`/charge_id`); `endpoint` puts every delivery of the
//! endpoint under one key. A key travels as a hash of the value's JSON text, never the value
//! itself (it may be personal data, and it names a subject).

use sha2::{Digest, Sha256};

/// Longest pointer taken.
pub const MAX_POINTER: usize = 256;

/// How an endpoint orders its deliveries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ordering {
    /// Deliveries go in parallel, each on its own retry schedule (the default).
    None,
    /// In order per value of this pointer into the payload; a payload without it shares
    /// the empty key.
    Key(String),
    /// In order for the whole endpoint.
    Endpoint,
}

impl Ordering {
    /// The setting from the API's `ordering` and `ordering_key`, or what to fix.
    pub fn parse(mode: &str, key: Option<&str>) -> Result<Ordering, String> {
        match (mode, key) {
            ("none", None) => Ok(Ordering::None),
            ("endpoint", None) => Ok(Ordering::Endpoint),
            ("key", Some(pointer)) => {
                check_pointer(pointer)?;
                Ok(Ordering::Key(pointer.to_owned()))
            }
            ("key", None) => Err(
                "ordering \"key\" needs ordering_key, a JSON Pointer into the event's payload such as \"/charge_id\"".into(),
            ),
            ("none" | "endpoint", Some(_)) => Err(format!(
                "ordering_key is only used with ordering \"key\"; with ordering \"{mode}\" leave it out"
            )),
            (other, _) => Err(format!(
                "ordering {other:?} is not one of \"none\", \"key\" or \"endpoint\""
            )),
        }
    }

    /// The key hash of a delivery of `payload` (a JSON document), `None` when unordered.
    pub fn key_of(&self, payload: &[u8]) -> Option<String> {
        match self {
            Ordering::None => None,
            Ordering::Endpoint => Some(hash(b"")),
            Ordering::Key(pointer) => {
                let value = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.pointer(pointer).map(|x| x.to_string()));
                Some(hash(value.unwrap_or_default().as_bytes()))
            }
        }
    }
}

/// The key under which a recover, replay or redrive job's copies of one key go: its own,
/// apart from the live deliveries of that key (the copies are re-sends, outside the live
/// order) and from every other job's, so a job's copies go in order among themselves.
pub fn job_key(job: &str, key: &str) -> String {
    hash(format!("job:{job}:{key}").as_bytes())
}

/// 16 hex characters of SHA-256 of the key's JSON text (empty: no key).
fn hash(text: &[u8]) -> String {
    Sha256::digest(text)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `pointer` is a JSON Pointer (RFC 6901): empty (the whole payload), or `/`-separated
/// tokens in which `~` is only ever `~0` or `~1`.
pub fn check_pointer(pointer: &str) -> Result<(), String> {
    if pointer.len() > MAX_POINTER {
        return Err(format!(
            "ordering_key is {} bytes long; at most {MAX_POINTER} are allowed",
            pointer.len()
        ));
    }
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "ordering_key {pointer:?} is not a JSON Pointer: it starts with '/', e.g. \"/charge_id\" or \"/payment/id\""
        ));
    }
    let bad_escape = pointer
        .split('~')
        .skip(1)
        .any(|after| !after.starts_with(['0', '1']));
    if bad_escape {
        return Err(format!(
            "ordering_key {pointer:?} is not a JSON Pointer: '~' is written ~0 and '/' inside a name ~1"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_or_say_what_to_fix() {
        assert_eq!(Ordering::parse("none", None), Ok(Ordering::None));
        assert_eq!(Ordering::parse("endpoint", None), Ok(Ordering::Endpoint));
        assert_eq!(
            Ordering::parse("key", Some("/charge_id")),
            Ok(Ordering::Key("/charge_id".into()))
        );
        assert!(Ordering::parse("key", None)
            .unwrap_err()
            .contains("needs ordering_key"));
        assert!(Ordering::parse("endpoint", Some("/a"))
            .unwrap_err()
            .contains("only used with"));
        assert!(Ordering::parse("fifo", None)
            .unwrap_err()
            .contains("\"fifo\""));
        for bad in ["charge_id", "/a~2b", "/a~", &"/x".repeat(200)] {
            assert!(Ordering::parse("key", Some(bad)).is_err(), "{bad}");
        }
        for good in ["", "/", "/a/0/b", "/a~1b/c~0d"] {
            assert!(check_pointer(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn keys_hash_the_pointed_value() {
        let by_charge = Ordering::Key("/charge/id".into());
        let a1 = by_charge.key_of(br#"{"charge": {"id": "ch_1"}, "n": 1}"#);
        let a2 = by_charge.key_of(br#"{"n": 2, "charge": {"id": "ch_1"}}"#);
        let b = by_charge.key_of(br#"{"charge": {"id": "ch_2"}}"#);
        assert_eq!(a1, a2);
        assert_ne!(a1, b);
        assert_eq!(a1.as_ref().unwrap().len(), 16);
        // The value's JSON text: the number 1 and the string "1" are two keys.
        assert_ne!(
            by_charge.key_of(br#"{"charge": {"id": 1}}"#),
            by_charge.key_of(br#"{"charge": {"id": "1"}}"#)
        );
        // Without the key (or not JSON): the empty key, shared.
        assert_eq!(by_charge.key_of(b"{}"), by_charge.key_of(b"not json"));
        assert_eq!(Ordering::None.key_of(b"{}"), None);
        assert_eq!(
            Ordering::Endpoint.key_of(b"{\"a\":1}"),
            Ordering::Endpoint.key_of(b"{}")
        );
    }
}
