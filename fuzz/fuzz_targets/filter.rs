//! Subscription filters and event types: parsing never panics, a parsed filter prints back
//! to itself, and matching any type is total.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let (pattern, event_type) = data.split_once('\n').unwrap_or((data, "charge.paid"));
    if let Ok(f) = gancho_core::Filter::parse(pattern) {
        let again = gancho_core::Filter::parse(f.as_str()).expect("a parsed filter parses again");
        assert_eq!(again.as_str(), f.as_str());
        let _ = f.matches(event_type);
    }
    let _ = gancho_core::id::validate_event_type(event_type);
    let subjects = gancho_core::Subjects::default();
    let _ = subjects.parse_event(data);
    if let Ok(sub) = gancho_core::Subscription::new(&[pattern], &[event_type]) {
        let _ = sub.matches(event_type, &[event_type]);
    }
});
