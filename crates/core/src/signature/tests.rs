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
