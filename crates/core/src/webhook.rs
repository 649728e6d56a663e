//! The body a receiver gets: `{"type":"invoice.paid","timestamp":"<RFC 3339>","data":<payload>}`.
//! `data` is the producer's JSON payload, copied byte for byte (the router has already checked
//! that it parses), so the receiver sees exactly what the producer sent.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Renders the `standard` profile body. `payload` must be a JSON document.
pub fn standard_body(event_type: &str, occurred_at: OffsetDateTime, payload: &[u8]) -> Vec<u8> {
    let ts = timestamp(occurred_at);
    let mut out = Vec::with_capacity(payload.len() + event_type.len() + ts.len() + 40);
    out.extend_from_slice(b"{\"type\":");
    serde_json::to_writer(&mut out, event_type).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"timestamp\":\"");
    out.extend_from_slice(ts.as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(payload);
    out.push(b'}');
    out
}

/// The W3C `traceparent` a webhook carries to a receiver that asked for trace context: a
/// trace of its own per delivery (every attempt of `delivery_id` shares it, so a receiver
/// can tell its retries apart from other deliveries), a span per attempt. Never the
/// platform's trace id, which stays inside (gancho's attempt span links to this one).
pub fn traceparent_out(delivery_id: &str, attempt: u32) -> String {
    use sha2::{Digest, Sha256};
    let trace = Sha256::digest(format!("gancho-trace:{delivery_id}").as_bytes());
    let span = Sha256::digest(format!("gancho-span:{delivery_id}:{attempt}").as_bytes());
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("00-{}-{}-01", hex(&trace[..16]), hex(&span[..8]))
}

/// The body's `timestamp`: when the event occurred, RFC 3339.
pub fn timestamp(occurred_at: OffsetDateTime) -> String {
    occurred_at
        .format(&Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

/// Whether `payload` is one JSON document (what the router requires of every event).
pub fn is_json(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn body_has_type_timestamp_and_data() {
        let body = standard_body(
            "invoice.paid",
            datetime!(2026-11-23 10:00:00.5 UTC),
            br#"{"amount":1990,"currency":"BRL"}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "invoice.paid");
        assert_eq!(v["timestamp"], "2026-11-23T10:00:00.5Z");
        assert_eq!(v["data"]["amount"], 1990);
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn json_check() {
        assert!(is_json(b"{\"a\":1}"));
        assert!(is_json(b"[1,2]"));
        assert!(is_json(b"\"s\""));
        assert!(!is_json(b"not json"));
        assert!(!is_json(b"{\"a\":1} trailing"));
        assert!(!is_json(b""));
    }
}
