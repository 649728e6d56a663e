//! Signature headers and keys as a receiver or the API gets them: parsing and verifying any
//! input never panics, and nothing verifies that was not signed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let mut parts = data.splitn(4, '\n');
    let (header, id, ts, body) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("msg_1"),
        parts.next().unwrap_or("1700000000"),
        parts.next().unwrap_or("{}"),
    );
    let _ = gancho_core::Key::parse(header);
    let _ = gancho_core::PublicKey::parse(header);
    let secret = gancho_core::Secret::from_bytes(vec![7; 32]).unwrap();
    let signer = gancho_core::Signer::new(secret.clone())
        .with_previous(gancho_core::SigningKey::from_seed([9; 32]));
    let public = gancho_core::SigningKey::from_seed([9; 32]).public_key();
    let now = 1_700_000_000;
    // Random headers never verify (a forged signature would need the key).
    if !header.contains("v1") {
        assert!(signer.verify(id, ts, header, body.as_bytes(), now, 300).is_err());
        assert!(public.verify(id, ts, header, body.as_bytes(), now, 300).is_err());
    } else {
        let _ = signer.verify(id, ts, header, body.as_bytes(), now, 300);
        let _ = public.verify(id, ts, header, body.as_bytes(), now, 300);
    }
    // What the signer makes always verifies.
    if let Ok(t) = ts.parse::<i64>() {
        let made = signer.header(id, t, body.as_bytes());
        assert!(signer
            .verify(id, ts, &made, body.as_bytes(), t, 300)
            .is_ok());
        assert!(public.verify(id, ts, &made, body.as_bytes(), t, 300).is_ok());
    }
});
