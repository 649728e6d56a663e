//! Retry schedules and Retry-After values: a schedule that parses prints back to the same
//! schedule, and a Retry-After never asks for more than the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(s) = gancho_core::RetrySchedule::parse(data) {
        let printed = s.to_string();
        let again = gancho_core::RetrySchedule::parse(&printed).expect("a printed schedule parses");
        assert_eq!(again, s, "{data:?} printed as {printed:?}");
        assert!(s.attempts() as usize <= gancho_core::retry::MAX_ATTEMPTS);
    }
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    if let Some(d) = gancho_core::retry::parse_retry_after(data, now) {
        assert!(d <= gancho_core::retry::MAX_RETRY_AFTER);
    }
});
