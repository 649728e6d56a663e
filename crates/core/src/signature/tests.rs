use super::*;

// The published Standard Webhooks test vectors.
const V1_KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const V1_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const V1_TS: i64 = 1614265330;
const V1_BODY: &str = r#"{"test": 2432232314}"#;
const V1_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

const V2_KEY: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const V2_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
const V2_TS: i64 = 1649367553;
const V2_BODY: &str = r#"{"email":"test@example.com","username":"test_user"}"#;
const V2_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

fn signer(key: &str) -> Signer {
    Signer::new(Secret::parse(key).unwrap())
}

#[test]
fn reproduces_published_vectors() {
    assert_eq!(
        Secret::parse(V1_KEY)
            .unwrap()
            .sign(V1_ID, V1_TS, V1_BODY.as_bytes()),
        V1_SIG
    );
    assert_eq!(
        Secret::parse(V2_KEY)
            .unwrap()
            .sign(V2_ID, V2_TS, V2_BODY.as_bytes()),
        V2_SIG
    );
    assert_eq!(
        signer(V1_KEY).header(V1_ID, V1_TS, V1_BODY.as_bytes()),
        V1_SIG
    );
}

#[test]
fn verifies_published_vectors_at_their_time() {
    let ts = V1_TS.to_string();
    signer(V1_KEY)
        .verify(V1_ID, &ts, V1_SIG, V1_BODY.as_bytes(), V1_TS + 10, 300)
        .unwrap();
    let ts = V2_TS.to_string();
    signer(V2_KEY)
        .verify(V2_ID, &ts, V2_SIG, V2_BODY.as_bytes(), V2_TS, 300)
        .unwrap();
}

#[test]
fn rejects_a_changed_body() {
    let ts = V1_TS.to_string();
    let err = signer(V1_KEY)
        .verify(V1_ID, &ts, V1_SIG, br#"{"test": 2432232315}"#, V1_TS, 300)
        .unwrap_err();
    assert_eq!(err, VerifyError::NoMatch);
}

#[test]
fn rejects_a_changed_id() {
    let ts = V1_TS.to_string();
    let err = signer(V1_KEY)
        .verify("msg_other", &ts, V1_SIG, V1_BODY.as_bytes(), V1_TS, 300)
        .unwrap_err();
    assert_eq!(err, VerifyError::NoMatch);
}

#[test]
fn rejects_an_old_or_future_timestamp() {
    let ts = V1_TS.to_string();
    let s = signer(V1_KEY);
    let body = V1_BODY.as_bytes();
    assert_eq!(
        s.verify(
            V1_ID,
            &ts,
            V1_SIG,
            body,
            V1_TS + 301,
            DEFAULT_TOLERANCE_SECS
        ),
        Err(VerifyError::TooOld)
    );
    assert_eq!(
        s.verify(
            V1_ID,
            &ts,
            V1_SIG,
            body,
            V1_TS - 301,
            DEFAULT_TOLERANCE_SECS
        ),
        Err(VerifyError::TooNew)
    );
    assert_eq!(
        s.verify(V1_ID, "yesterday", V1_SIG, body, V1_TS, 300),
        Err(VerifyError::BadTimestamp)
    );
}

#[test]
fn rejects_a_wrong_secret() {
    let ts = V1_TS.to_string();
    let err = signer(V2_KEY)
        .verify(V1_ID, &ts, V1_SIG, V1_BODY.as_bytes(), V1_TS, 300)
        .unwrap_err();
    assert_eq!(err, VerifyError::NoMatch);
}

#[test]
fn accepts_a_header_with_an_old_and_a_new_signature() {
    // A sender mid-rotation signs with both keys; a receiver that knows either accepts it.
    let rotating =
        Signer::new(Secret::parse(V2_KEY).unwrap()).with_previous(Secret::parse(V1_KEY).unwrap());
    let body = b"{\"type\":\"invoice.paid\"}";
    let header = rotating.header("msg_1", V1_TS, body);
    assert_eq!(header.split(' ').count(), 2);
    let ts = V1_TS.to_string();
    signer(V1_KEY)
        .verify("msg_1", &ts, &header, body, V1_TS, 300)
        .unwrap();
    signer(V2_KEY)
        .verify("msg_1", &ts, &header, body, V1_TS, 300)
        .unwrap();
    // And a header listing a stale signature first, then the right one, verifies too.
    let stale_first = format!("v1,AAAA v1,bm90LWJhc2U2NA== {V1_SIG}");
    signer(V1_KEY)
        .verify(
            V1_ID,
            &V1_TS.to_string(),
            &stale_first,
            V1_BODY.as_bytes(),
            V1_TS,
            300,
        )
        .unwrap();
}

#[test]
fn ignores_other_signature_versions() {
    let ts = V1_TS.to_string();
    let v1a = V1_SIG.replacen("v1,", "v1a,", 1);
    assert_eq!(
        signer(V1_KEY).verify(V1_ID, &ts, &v1a, V1_BODY.as_bytes(), V1_TS, 300),
        Err(VerifyError::NoMatch)
    );
}

#[test]
fn secret_parsing() {
    assert_eq!(
        Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
        SecretError::MissingPrefix
    );
    assert_eq!(
        Secret::parse("whsec_!!!").unwrap_err(),
        SecretError::NotBase64
    );
    // 16 bytes: too short.
    assert_eq!(
        Secret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAA==").unwrap_err(),
        SecretError::BadLength(16)
    );
    assert!(Secret::from_bytes(vec![7; 24]).is_ok());
    assert!(Secret::from_bytes(vec![7; 64]).is_ok());
    assert_eq!(
        Secret::from_bytes(vec![7; 65]).unwrap_err(),
        SecretError::BadLength(65)
    );
    let s = Secret::parse(V1_KEY).unwrap();
    assert_eq!(s.expose(), V1_KEY);
}

#[test]
fn secrets_never_print() {
    let s = Secret::parse(V1_KEY).unwrap();
    assert!(!format!("{s:?}").contains("MfKQ"));
    assert!(!format!("{s}").contains("MfKQ"));
    assert!(!format!("{:?}", signer(V1_KEY)).contains("MfKQ"));
}

#[test]
fn a_rotated_out_key_stops_signing_at_its_expiry() {
    let old = Secret::from_bytes(vec![1u8; 32]).unwrap();
    let new = Secret::from_bytes(vec![2u8; 32]).unwrap();
    let signer = Signer::new(new.clone()).with_previous_until(old.clone(), 1_000);
    let before = signer.header("evt", 999, b"{}");
    assert_eq!(before.split(' ').count(), 2);
    assert!(before.contains(&old.sign("evt", 999, b"{}")));
    let at = signer.header("evt", 1_000, b"{}");
    assert_eq!(at, new.sign("evt", 1_000, b"{}"));
}

// RFC 8032, section 7.1, TEST 2: a seed and its public key.
const RFC_SEED: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
const RFC_PUBLIC: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn rfc_key() -> SigningKey {
    SigningKey::from_seed(unhex(RFC_SEED).try_into().unwrap())
}

#[test]
fn ed25519_keys_derive_the_published_public_key() {
    let key = rfc_key();
    assert_eq!(
        key.public_key().expose(),
        format!("whpk_{}", B64.encode(unhex(RFC_PUBLIC)))
    );
    // whsk_ holds the seed and the public key; both forms parse back to the same key.
    let stored = key.expose();
    assert!(stored.starts_with("whsk_"));
    assert_eq!(B64.decode(&stored[5..]).unwrap().len(), 64);
    let seed_only = format!("whsk_{}", B64.encode(unhex(RFC_SEED)));
    for form in [stored.as_str(), seed_only.as_str()] {
        assert_eq!(
            SigningKey::parse(form).unwrap().public_key(),
            key.public_key()
        );
    }
}

#[test]
fn v1a_signs_and_verifies_with_the_public_key_only() {
    let key = rfc_key();
    let sig = key.sign(V1_ID, V1_TS, V1_BODY.as_bytes());
    assert!(sig.starts_with("v1a,"), "{sig}");
    assert_eq!(B64.decode(&sig[4..]).unwrap().len(), 64);
    let public = PublicKey::parse(&key.public_key().expose()).unwrap();
    let ts = V1_TS.to_string();
    assert_eq!(
        public.verify(V1_ID, &ts, &sig, V1_BODY.as_bytes(), V1_TS, 300),
        Ok(())
    );
    // Another body, id or key does not verify; nor does the HMAC verifier.
    assert_eq!(
        public.verify(V1_ID, &ts, &sig, b"{}", V1_TS, 300),
        Err(VerifyError::NoMatch)
    );
    assert_eq!(
        public.verify("msg_other", &ts, &sig, V1_BODY.as_bytes(), V1_TS, 300),
        Err(VerifyError::NoMatch)
    );
    let other = SigningKey::from_seed([9; 32]).public_key();
    assert_eq!(
        other.verify(V1_ID, &ts, &sig, V1_BODY.as_bytes(), V1_TS, 300),
        Err(VerifyError::NoMatch)
    );
    assert_eq!(
        public.verify(V1_ID, &ts, &sig, V1_BODY.as_bytes(), V1_TS + 301, 300),
        Err(VerifyError::TooOld)
    );
}

#[test]
fn a_rotation_from_hmac_to_ed25519_signs_with_both() {
    let old = Secret::parse(V1_KEY).unwrap();
    let new = rfc_key();
    let signer = Signer::new(new.clone()).with_previous_until(old, V1_TS + 60);
    let header = signer.header(V1_ID, V1_TS, V1_BODY.as_bytes());
    let parts: Vec<&str> = header.split(' ').collect();
    assert_eq!(parts.len(), 2, "{header}");
    assert!(
        parts[0].starts_with("v1a,") && parts[1] == V1_SIG,
        "{header}"
    );
    let ts = V1_TS.to_string();
    assert!(new
        .public_key()
        .verify(V1_ID, &ts, &header, V1_BODY.as_bytes(), V1_TS, 300)
        .is_ok());
    assert!(signer
        .verify(V1_ID, &ts, &header, V1_BODY.as_bytes(), V1_TS, 300)
        .is_ok());
    // After the grace, only the ed25519 signature.
    let later = signer.header(V1_ID, V1_TS + 60, V1_BODY.as_bytes());
    assert!(later.starts_with("v1a,") && !later.contains(' '), "{later}");
}

#[test]
fn signing_key_parsing() {
    assert!(matches!(
        Key::parse("whsk_AAAA"),
        Err(SecretError::BadSigningKeyLength(3))
    ));
    let mut raw = unhex(RFC_SEED);
    raw.extend_from_slice(&[0; 32]);
    assert_eq!(
        SigningKey::parse(&format!("whsk_{}", B64.encode(&raw))).unwrap_err(),
        SecretError::KeyMismatch
    );
    assert_eq!(
        PublicKey::parse("whpk_AAAA").unwrap_err(),
        SecretError::BadPublicKey
    );
    assert_eq!(
        Key::parse(&rfc_key().expose()).unwrap().scheme(),
        Scheme::Ed25519
    );
    assert_eq!(Key::parse(V1_KEY).unwrap().scheme(), Scheme::Hmac);
    // The key itself never prints.
    let printed = format!("{:?} {}", rfc_key(), rfc_key());
    assert!(!printed.contains(&rfc_key().expose()[5..20]), "{printed}");
}
