//! Standard Webhooks signatures: `whsec_` secrets, `v1,<base64 HMAC-SHA256>` over
//! `<id>.<timestamp>.<body>`, several space-separated signatures in one header (one per live
//! secret during a rotation), constant-time comparison and a timestamp tolerance on verify.
//!
//! A [`Secret`] never prints its key: `Debug` and `Display` are redacted, so a secret that
//! ends up in a log line or an error shows as `whsec_***`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of every secret string.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest key a secret may carry, in bytes.
pub const MIN_SECRET_BYTES: usize = 24;
/// Longest key a secret may carry, in bytes.
pub const MAX_SECRET_BYTES: usize = 64;
/// How far a `webhook-timestamp` may be from the verifier's clock (either way), in seconds.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// Why a secret string was rejected. Never contains the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret must start with \"whsec_\"")]
    MissingPrefix,
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
    #[error("no v1 signature in webhook-signature matches")]
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

/// The keys an endpoint signs with: the current secret, plus the previous ones while a
/// rotation is in progress. The header carries one signature per key.
#[derive(Clone, Debug)]
pub struct Signer {
    /// Each key with the unix second from which it no longer signs (`None`: never expires).
    keys: Vec<(Secret, Option<i64>)>,
}

impl Signer {
    pub fn new(current: Secret) -> Self {
        Self {
            keys: vec![(current, None)],
        }
    }

    /// Adds a key that still signs (a rotated-out secret that has not expired).
    pub fn with_previous(mut self, old: Secret) -> Self {
        self.keys.push((old, None));
        self
    }

    /// Adds a rotated-out key that signs webhooks timestamped before `expires_at` (unix
    /// seconds) and none after: it stops at that moment, whenever the signer was built.
    pub fn with_previous_until(mut self, old: Secret, expires_at: i64) -> Self {
        self.keys.push((old, Some(expires_at)));
        self
    }

    /// The `webhook-signature` header value: `v1,<sig>[ v1,<sig>...]`, one signature per key
    /// that has not expired at `timestamp`.
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
    /// `tolerance_secs` of `now`, and any `v1` signature in the header matching any key.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signature_header: &str,
        body: &[u8],
        now: i64,
        tolerance_secs: i64,
    ) -> Result<(), VerifyError> {
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
                ok |= key.verify_raw(id, ts, body, &raw);
            }
            if ok {
                return Ok(());
            }
        }
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests;
