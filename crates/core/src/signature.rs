//! Standard Webhooks signatures over `<id>.<timestamp>.<body>`: symmetric `v1,<base64
//! HMAC-SHA256>` with a `whsec_` secret, and asymmetric `v1a,<base64 ed25519>` with a `whsk_`
//! signing key whose `whpk_` public key is all a receiver needs. Several space-separated
//! signatures go in one header (one per live key during a rotation, of either kind),
//! constant-time comparison and a timestamp tolerance on verify.
//!
//! A [`Secret`] or [`SigningKey`] never prints its key: `Debug` and `Display` are redacted,
//! so a key that ends up in a log line or an error shows as `whsec_***` or `whsk_***`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of every secret string.
pub const SECRET_PREFIX: &str = "whsec_";
/// Prefix of an ed25519 signing key: base64 of the 32-byte seed and the 32-byte public key.
pub const SIGNING_KEY_PREFIX: &str = "whsk_";
/// Prefix of an ed25519 public key: base64 of its 32 bytes.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";
/// Shortest key a secret may carry, in bytes.
pub const MIN_SECRET_BYTES: usize = 24;
/// Longest key a secret may carry, in bytes.
pub const MAX_SECRET_BYTES: usize = 64;
/// How far a `webhook-timestamp` may be from the verifier's clock (either way), in seconds.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// Why a secret string was rejected. Never contains the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret must start with \"whsec_\" (HMAC) or \"whsk_\" (ed25519)")]
    MissingPrefix,
    #[error("signing key is {0} bytes; a whsk_ key is the 32-byte seed, optionally followed by the 32-byte public key")]
    BadSigningKeyLength(usize),
    #[error("the public half of the whsk_ key does not belong to its seed")]
    KeyMismatch,
    #[error("public key must be \"whpk_\" followed by the base64 of 32 bytes")]
    BadPublicKey,
    #[error("secret is not valid base64 after \"whsec_\"")]
    NotBase64,
    #[error("secret key is {0} bytes; it must be 24 to 64 bytes")]
    BadLength(usize),
}

/// Why a webhook failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is too old")]
    TooOld,
    #[error("webhook-timestamp is in the future")]
    TooNew,
    #[error("no signature in webhook-signature matches")]
    NoMatch,
}

impl VerifyError {
    /// Stable label for metrics and sink output.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::BadTimestamp => "bad_timestamp",
            VerifyError::TooOld => "too_old",
            VerifyError::TooNew => "too_new",
            VerifyError::NoMatch => "no_match",
        }
    }
}

/// One signing key.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
    mac: HmacSha256,
}

impl Secret {
    /// Parses `whsec_<base64 of 24..64 bytes>`.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let b64 = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = B64.decode(b64).map_err(|_| SecretError::NotBase64)?;
        Self::from_bytes(key)
    }

    /// Builds a secret from raw key bytes (for example fresh random bytes).
    pub fn from_bytes(key: Vec<u8>) -> Result<Self, SecretError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        let mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
        Ok(Self { key, mac })
    }

    /// The `whsec_...` form, for the one API response that shows it and for storage.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(&self.key))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `v1,<base64>` for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        let mut out = String::with_capacity(48);
        out.push_str("v1,");
        B64.encode_string(tag, &mut out);
        out
    }

    /// Constant-time check of one raw signature against this key.
    fn verify_raw(&self, id: &str, timestamp: i64, body: &[u8], sig: &[u8]) -> bool {
        self.mac(id, timestamp, body).verify_slice(sig).is_ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("whsec_***")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.key.ct_eq(&other.key).into()
    }
}

/// The keys an endpoint signs with: the current key, plus the previous ones while a
/// rotation is in progress. The header carries one signature per key.
#[derive(Clone, Debug)]
pub struct Signer {
    /// Each key with the unix second from which it no longer signs (`None`: never expires).
    keys: Vec<(Key, Option<i64>)>,
}

impl Signer {
    pub fn new(current: impl Into<Key>) -> Self {
        Self {
            keys: vec![(current.into(), None)],
        }
    }

    /// Adds a key that still signs (a rotated-out key that has not expired).
    pub fn with_previous(mut self, old: impl Into<Key>) -> Self {
        self.keys.push((old.into(), None));
        self
    }

    /// Adds a rotated-out key that signs webhooks timestamped before `expires_at` (unix
    /// seconds) and none after: it stops at that moment, whenever the signer was built.
    pub fn with_previous_until(mut self, old: impl Into<Key>, expires_at: i64) -> Self {
        self.keys.push((old.into(), Some(expires_at)));
        self
    }

    /// The `webhook-signature` header value: `v1,<sig>` or `v1a,<sig>`, space-separated, one
    /// signature per key that has not expired at `timestamp`.
    pub fn header(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(48 * self.keys.len());
        let live = self
            .keys
            .iter()
            .filter(|(_, until)| until.is_none_or(|u| timestamp < u));
        for (i, (key, _)) in live.enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&key.sign(id, timestamp, body));
        }
        out
    }

    /// Verifies a received webhook the way a receiver should: the timestamp within
    /// `tolerance_secs` of `now`, and any signature in the header made by any of the keys
    /// (`v1` for HMAC secrets, `v1a` for ed25519 keys, checked with their public keys).
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signature_header: &str,
        body: &[u8],
        now: i64,
        tolerance_secs: i64,
    ) -> Result<(), VerifyError> {
        let ts = check_timestamp(timestamp, now, tolerance_secs)?;
        for candidate in signature_header.split_whitespace() {
            let Some(b64) = candidate.strip_prefix("v1,") else {
                continue;
            };
            let Ok(raw) = B64.decode(b64) else {
                continue;
            };
            // Every key is tried so the time taken does not depend on which one matched.
            let mut ok = false;
            for (key, _) in &self.keys {
                if let Key::Hmac(key) = key {
                    ok |= key.verify_raw(id, ts, body, &raw);
                }
            }
            if ok {
                return Ok(());
            }
        }
        for (key, _) in &self.keys {
            if let Some(public) = key.public_key() {
                if public
                    .verify(id, timestamp, signature_header, body, now, tolerance_secs)
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
        Err(VerifyError::NoMatch)
    }
}

/// The timestamp as unix seconds, when within `tolerance_secs` of `now`.
fn check_timestamp(timestamp: &str, now: i64, tolerance_secs: i64) -> Result<i64, VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if now - ts > tolerance_secs {
        return Err(VerifyError::TooOld);
    }
    if ts - now > tolerance_secs {
        return Err(VerifyError::TooNew);
    }
    Ok(ts)
}

/// `<id>.<timestamp>.<body>`, what both schemes sign.
fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut msg = Vec::with_capacity(id.len() + ts.len() + body.len() + 2);
    msg.extend_from_slice(id.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(ts.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    msg
}

/// The signing scheme of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `v1`: HMAC-SHA256 with a shared `whsec_` secret.
    Hmac,
    /// `v1a`: ed25519 with a `whsk_` signing key; receivers hold the `whpk_` public key.
    Ed25519,
}

impl Scheme {
    /// The name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Hmac => "hmac",
            Scheme::Ed25519 => "ed25519",
        }
    }
}

/// An ed25519 signing key (Standard Webhooks `v1a`).
#[derive(Clone)]
pub struct SigningKey {
    seed: [u8; 32],
    pair: std::sync::Arc<ring::signature::Ed25519KeyPair>,
}

impl SigningKey {
    /// Parses `whsk_<base64>` of the 32-byte seed, or of the seed and the public key (64
    /// bytes, as libsodium stores a secret key; the public half must match).
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let b64 = s
            .strip_prefix(SIGNING_KEY_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let raw = B64.decode(b64).map_err(|_| SecretError::NotBase64)?;
        let seed: [u8; 32] = raw
            .get(..32)
            .and_then(|s| s.try_into().ok())
            .filter(|_| raw.len() == 32 || raw.len() == 64)
            .ok_or(SecretError::BadSigningKeyLength(raw.len()))?;
        let key = Self::from_seed(seed);
        if raw.len() == 64 && raw[32..] != key.public_key().0 {
            return Err(SecretError::KeyMismatch);
        }
        Ok(key)
    }

    /// The key of a 32-byte seed (for example fresh random bytes).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .expect("every 32-byte seed is an ed25519 key");
        Self {
            seed,
            pair: std::sync::Arc::new(pair),
        }
    }

    /// The `whsk_...` form (seed and public key), for storage only: it never leaves gancho.
    pub fn expose(&self) -> String {
        let mut raw = self.seed.to_vec();
        raw.extend_from_slice(&self.public_key().0);
        format!("{SIGNING_KEY_PREFIX}{}", B64.encode(raw))
    }

    pub fn public_key(&self) -> PublicKey {
        use ring::signature::KeyPair as _;
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(raw)
    }

    /// `v1a,<base64>` for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let sig = self.pair.sign(&signed_content(id, timestamp, body));
        let mut out = String::with_capacity(92);
        out.push_str("v1a,");
        B64.encode_string(sig.as_ref(), &mut out);
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(whsk_***)")
    }
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("whsk_***")
    }
}

/// An ed25519 public key, `whpk_<base64 of 32 bytes>`: what a receiver verifies `v1a` with.
/// Not a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let raw = s
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .and_then(|b64| B64.decode(b64).ok())
            .ok_or(SecretError::BadPublicKey)?;
        Ok(Self(raw.try_into().map_err(|_| SecretError::BadPublicKey)?))
    }

    pub fn expose(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX}{}", B64.encode(self.0))
    }

    /// Verifies a received webhook: the timestamp within `tolerance_secs` of `now`, and any
    /// `v1a` signature in the header made by this key's signing key.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signature_header: &str,
        body: &[u8],
        now: i64,
        tolerance_secs: i64,
    ) -> Result<(), VerifyError> {
        let ts = check_timestamp(timestamp, now, tolerance_secs)?;
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0);
        let msg = signed_content(id, ts, body);
        let matched = signature_header
            .split_whitespace()
            .filter_map(|c| c.strip_prefix("v1a,"))
            .filter_map(|b64| B64.decode(b64).ok())
            .any(|sig| key.verify(&msg, &sig).is_ok());
        if matched {
            Ok(())
        } else {
            Err(VerifyError::NoMatch)
        }
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expose())
    }
}

/// A key an endpoint signs with, of either scheme.
#[derive(Clone, Debug)]
pub enum Key {
    Hmac(Secret),
    Ed25519(SigningKey),
}

impl Key {
    /// Parses a `whsec_` secret or a `whsk_` signing key.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        if s.starts_with(SIGNING_KEY_PREFIX) {
            SigningKey::parse(s).map(Key::Ed25519)
        } else {
            Secret::parse(s).map(Key::Hmac)
        }
    }

    pub fn scheme(&self) -> Scheme {
        match self {
            Key::Hmac(_) => Scheme::Hmac,
            Key::Ed25519(_) => Scheme::Ed25519,
        }
    }

    /// The public key a receiver verifies with (`None` for an HMAC secret).
    pub fn public_key(&self) -> Option<PublicKey> {
        match self {
            Key::Hmac(_) => None,
            Key::Ed25519(k) => Some(k.public_key()),
        }
    }

    /// `v1,<sig>` or `v1a,<sig>` for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        match self {
            Key::Hmac(k) => k.sign(id, timestamp, body),
            Key::Ed25519(k) => k.sign(id, timestamp, body),
        }
    }
}

impl From<Secret> for Key {
    fn from(k: Secret) -> Self {
        Key::Hmac(k)
    }
}

impl From<SigningKey> for Key {
    fn from(k: SigningKey) -> Self {
        Key::Ed25519(k)
    }
}

#[cfg(test)]
mod tests;
