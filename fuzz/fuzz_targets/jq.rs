//! jq programs: any text compiles or is refused with a message, and a compiled program run
//! on any envelope ends (a result, an error or a cutoff) without a crash, within its budget.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let (code, payload) = data.split_once('\n').unwrap_or((data, r#"{"amount": 1}"#));
    let Ok(program) = gancho_jq::Program::compile(code) else {
        return;
    };
    let Ok(input) = gancho_jq::Input::new("evt_1", "charge.paid", "2026-12-04T10:00:00Z", payload.as_bytes(), &[]) else {
        return;
    };
    let mut budget = gancho_jq::Budget::filters();
    let _ = program.matches(&input, &mut budget);
    let _ = program.transform(&input, &mut gancho_jq::Budget::transform());
});
