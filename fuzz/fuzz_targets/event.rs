//! An event as the router reads it: any subject, any bytes. `check_event` either refuses it
//! with a reason or returns an event whose webhook body is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The subject is what comes before the first 0 byte; the message is the rest.
    let (subject, bytes) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"gancho.events.acme.charge.paid"[..], data),
    };
    let Ok(subject) = std::str::from_utf8(subject) else {
        return;
    };
    let subjects = gancho_core::Subjects::default();
    match gancho_router::check_event(&subjects, subject, bytes) {
        Ok(ev) => {
            assert!(subjects.parse_event(subject).is_some());
            let at = time::OffsetDateTime::UNIX_EPOCH;
            let body = gancho_core::webhook::standard_body(&ev.r#type, at, &ev.payload);
            assert!(
                serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
                "an accepted event renders a body that is not JSON"
            );
        }
        Err(invalid) => {
            assert!(!invalid.reason().is_empty());
        }
    }
});
