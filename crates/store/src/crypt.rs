//! Secrets at rest. Endpoint secrets are sealed with XChaCha20-Poly1305 before they reach
//! the config bucket, each bound (as associated data) to the key name of its record and the
//! field it sits in, so a ciphertext copied into another record or field does not open.
//!
//! A sealed value reads `enc:v1:<key id>:<base64url(nonce || ciphertext)>`; the key id (8 hex
//! characters of the key's SHA-256) says which key sealed it, so during a rotation values
//! sealed by the old key still open while new writes use the new one. A value without the
//! `enc:` prefix is clear text from an installation that ran without encryption: it is read
//! as it is, and sealed on its next write or by `gancho secrets re-encrypt`.
//!
//! The key-check record (`meta.key_check`) holds a value sealed by the key in use, so a
//! process started with a wrong key refuses to start instead of failing every delivery.

use crate::model::Endpoint;
use async_nats::jetstream::kv;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc:v1:";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// Config key of the key-check record.
pub const KEY_CHECK: &str = "meta.key_check";
const KEY_CHECK_PLAIN: &str = "gancho key check";

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// The environment variable named has a value that is not a key.
    #[error("{0} must be 32 random bytes in base64 (`gancho keygen` prints one)")]
    BadKey(&'static str),
    #[error("this process has no encryption key; set GANCHO_ENCRYPTION_KEY")]
    NoKey,
    #[error("a secret was sealed by key {0}, which is neither GANCHO_ENCRYPTION_KEY nor GANCHO_ENCRYPTION_OLD_KEY")]
    UnknownKey(String),
    #[error("a sealed secret does not open: it is damaged or was moved from another record")]
    Damaged,
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn parse(b64: &str, var: &'static str) -> Result<Self, CryptError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .or_else(|_| B64.decode(b64.trim()))
            .map_err(|_| CryptError::BadKey(var))?;
        if bytes.len() != 32 {
            return Err(CryptError::BadKey(var));
        }
        let digest = Sha256::digest(&bytes);
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        let cipher =
            XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| CryptError::BadKey(var))?;
        Ok(Self { id, cipher })
    }
}

/// The keys a process holds: the one it seals with, and during a rotation an old one it
/// still opens with. A process without keys (the router) reads no secrets.
#[derive(Default)]
pub struct Keyring {
    current: Option<Key>,
    old: Option<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.as_ref().map(|k| &k.id))
            .field("old", &self.old.as_ref().map(|k| &k.id))
            .finish()
    }
}

impl Keyring {
    /// A keyring from `GANCHO_ENCRYPTION_KEY` and, during a rotation,
    /// `GANCHO_ENCRYPTION_OLD_KEY` (both base64 of 32 bytes).
    pub fn new(current: &str, old: Option<&str>) -> Result<Self, CryptError> {
        Ok(Self {
            current: Some(Key::parse(current, "GANCHO_ENCRYPTION_KEY")?),
            old: old
                .map(|o| Key::parse(o, "GANCHO_ENCRYPTION_OLD_KEY"))
                .transpose()?,
        })
    }

    /// No keys: secrets stay sealed (the router, which never signs).
    pub fn none() -> Self {
        Self::default()
    }

    pub fn has_key(&self) -> bool {
        self.current.is_some()
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    /// A fresh key, base64: what `gancho keygen` prints.
    pub fn generate() -> String {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Seals `plain` for the field `ad` (`<config key>#<field>`) with the current key.
    pub fn seal(&self, ad: &str, plain: &str) -> Result<String, CryptError> {
        use rand::RngCore;
        let key = self.current.as_ref().ok_or(CryptError::NoKey)?;
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: ad.as_bytes(),
                },
            )
            .map_err(|_| CryptError::Damaged)?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(format!("{PREFIX}{}:{}", key.id, B64.encode(out)))
    }

    /// Opens a value sealed for `ad`; clear text (no `enc:` prefix) comes back as it is.
    pub fn open(&self, ad: &str, stored: &str) -> Result<String, CryptError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let (id, data) = rest.split_once(':').ok_or(CryptError::Damaged)?;
        if !self.has_key() {
            return Err(CryptError::NoKey);
        }
        let key = [&self.current, &self.old]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
            .ok_or_else(|| CryptError::UnknownKey(id.to_owned()))?;
        let bytes = B64.decode(data).map_err(|_| CryptError::Damaged)?;
        if bytes.len() < 24 {
            return Err(CryptError::Damaged);
        }
        let (nonce, sealed) = bytes.split_at(24);
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: ad.as_bytes(),
                },
            )
            .map_err(|_| CryptError::Damaged)?;
        String::from_utf8(plain).map_err(|_| CryptError::Damaged)
    }

    /// Seals an endpoint's secrets (current and rotated-out) for its record `key`.
    pub fn seal_endpoint(&self, key: &str, ep: &mut Endpoint) -> Result<(), CryptError> {
        ep.secret = self.seal(&format!("{key}#secret"), &ep.secret)?;
        let ad = format!("{key}#previous_secrets");
        for old in &mut ep.previous_secrets {
            old.secret = self.seal(&ad, &old.secret)?;
        }
        if let Some(token) = &mut ep.token {
            token.value = self.seal(&format!("{key}#token"), &token.value)?;
        }
        if let Some(k) = &mut ep.client_key {
            *k = self.seal(&format!("{key}#client_key"), k)?;
        }
        Ok(())
    }

    /// Opens what [`Keyring::seal_endpoint`] sealed (clear text passes as it is).
    pub fn open_endpoint(&self, key: &str, ep: &mut Endpoint) -> Result<(), CryptError> {
        ep.secret = self.open(&format!("{key}#secret"), &ep.secret)?;
        let ad = format!("{key}#previous_secrets");
        for old in &mut ep.previous_secrets {
            old.secret = self.open(&ad, &old.secret)?;
        }
        if let Some(token) = &mut ep.token {
            token.value = self.open(&format!("{key}#token"), &token.value)?;
        }
        if let Some(k) = &mut ep.client_key {
            *k = self.open(&format!("{key}#client_key"), k)?;
        }
        Ok(())
    }

    /// Whether every secret of a stored endpoint is sealed with the current key.
    pub fn endpoint_is_current(&self, ep: &Endpoint) -> bool {
        self.is_current(&ep.secret)
            && ep
                .previous_secrets
                .iter()
                .all(|p| self.is_current(&p.secret))
            && ep.token.as_ref().is_none_or(|t| self.is_current(&t.value))
            && ep.client_key.as_ref().is_none_or(|k| self.is_current(k))
    }

    /// Whether `stored` is sealed with the current key (nothing left to re-encrypt).
    pub fn is_current(&self, stored: &str) -> bool {
        match (stored.strip_prefix(PREFIX), self.current_id()) {
            (Some(rest), Some(id)) => rest.split_once(':').is_some_and(|(k, _)| k == id),
            _ => false,
        }
    }

    /// Checks this keyring against the bucket's key-check record, writing it on first use.
    /// The error is one line for a person: which key is wrong and what to set.
    pub async fn check(&self, bucket: &kv::Store) -> Result<(), String> {
        let Some(current) = self.current_id() else {
            return Err(CryptError::NoKey.to_string());
        };
        let mut waiting = false;
        let entry = loop {
            let entry = bucket
                .entry(KEY_CHECK)
                .await
                .map_err(|e| format!("cannot read the key-check record: {e}"))?;
            if let Some(e) = entry.filter(|e| e.operation == kv::Operation::Put) {
                break e;
            }
            match self.write_check(bucket).await {
                Ok(()) => return Ok(()),
                // A full store refuses the first write of an installation: wait for room (or
                // for another process to write it) as the running roles do, rather than stop
                // a role whose work is what frees room.
                Err(e) if crate::refusal::is_full(e.as_ref()) => {
                    if !waiting {
                        tracing::warn!("JetStream has no room to write the key-check record; waiting for room.");
                        waiting = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => return Err(format!("cannot write the key-check record: {e}")),
            }
        };
        let stored = String::from_utf8_lossy(&entry.value).into_owned();
        match self.open(KEY_CHECK, &stored) {
            Ok(p) if p == KEY_CHECK_PLAIN => Ok(()),
            _ => {
                let sealed_by = stored
                    .strip_prefix(PREFIX)
                    .and_then(|r| r.split_once(':'))
                    .map(|(id, _)| id.to_owned())
                    .unwrap_or_else(|| "unknown".into());
                Err(format!(
                    "GANCHO_ENCRYPTION_KEY (key id {current}) is not the key this installation's secrets are sealed with (key id {sealed_by}); set that key, or during a rotation put it in GANCHO_ENCRYPTION_OLD_KEY"
                ))
            }
        }
    }

    /// (Re)writes the key-check record with the current key.
    pub async fn write_check(&self, bucket: &kv::Store) -> Result<(), async_nats::Error> {
        let sealed = self.seal(KEY_CHECK, KEY_CHECK_PLAIN)?;
        bucket.put(KEY_CHECK, sealed.into_bytes().into()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_field_and_key() {
        let k = Keyring::new(&Keyring::generate(), None).unwrap();
        let sealed = k.seal("endpoints.acme.ep1#secret", "whsec_abc").unwrap();
        assert!(sealed.starts_with("enc:v1:"));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(
            k.open("endpoints.acme.ep1#secret", &sealed).unwrap(),
            "whsec_abc"
        );
        assert!(matches!(
            k.open("endpoints.acme.ep2#secret", &sealed),
            Err(CryptError::Damaged)
        ));
        let other = Keyring::new(&Keyring::generate(), None).unwrap();
        assert!(matches!(
            other.open("endpoints.acme.ep1#secret", &sealed),
            Err(CryptError::UnknownKey(_))
        ));
        assert!(k.is_current(&sealed) && !other.is_current(&sealed));
        assert_eq!(k.open("x", "whsec_clear").unwrap(), "whsec_clear");
        assert!(matches!(
            Keyring::none().open("endpoints.acme.ep1#secret", &sealed),
            Err(CryptError::NoKey)
        ));
    }

    #[test]
    fn an_old_key_still_opens_during_a_rotation() {
        let (old, new) = (Keyring::generate(), Keyring::generate());
        let sealed = Keyring::new(&old, None).unwrap().seal("a#b", "s").unwrap();
        let rotating = Keyring::new(&new, Some(&old)).unwrap();
        assert_eq!(rotating.open("a#b", &sealed).unwrap(), "s");
        assert!(!rotating.is_current(&sealed));
        assert!(rotating.is_current(&rotating.seal("a#b", "s").unwrap()));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(matches!(
            Keyring::new("short", None),
            Err(CryptError::BadKey("GANCHO_ENCRYPTION_KEY"))
        ));
        let msg = Keyring::new(&Keyring::generate(), Some("nope"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("GANCHO_ENCRYPTION_OLD_KEY") && msg.contains("gancho keygen"));
    }
}
