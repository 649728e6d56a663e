//! Portal links and sessions, in a KV bucket of their own (`<prefix>_portal`) rather than the
//! config bucket every router and worker watches: a session started or ended wakes nobody.
//! Only the SHA-256 of a link or session token is stored; the tokens themselves leave the api
//! once, in the answer that makes them.
//!
//! A portal session is made in two steps. Minting ([`PortalStore::mint`]) stores its record
//! and a one-time link token that must be used within [`LINK_TTL`]. Using the link
//! ([`PortalStore::redeem`]) turns the record into a running session with a token of its own,
//! by a compare-and-set on the record: of two api processes given the same link at once, one
//! starts the session and the other finds it used.
//!
//! Keys:
//! - `sessions.<tenant>.<id>`: the [`PortalSession`] record;
//! - `links.<sha256 of the link token>` and `session_hashes.<sha256 of the session token>`: a
//!   lookup to `<tenant>` and `<id>`, written before the record refers to it and checked
//!   against it when read.
//!
//! Bound: every entry is removed by the bucket's [`BUCKET_MAX_AGE`], longer than any link or
//! session lives; ending a session or deleting its tenant removes its entries at once.

use crate::model::{api_key_hash, random_id, Scope};
use crate::repo::{backend, StoreError};
use async_nats::jetstream::kv;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use time::OffsetDateTime;

/// How long a minted link may wait to be opened.
pub const LINK_TTL: Duration = Duration::from_secs(600);
/// How long a session lasts unless asked otherwise.
pub const SESSION_TTL_DEFAULT: Duration = Duration::from_secs(3600);
/// The longest a session may last.
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// How long the bucket keeps an entry: past every link and session.
pub const BUCKET_MAX_AGE: Duration = Duration::from_secs(25 * 3600);

/// A portal session as stored: minted, then started once by its link.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PortalSession {
    /// `ps_` and 20 base32 characters.
    pub id: String,
    pub tenant: String,
    /// `read` or `manage`.
    pub scope: Scope,
    /// How long the session lasts once started, in seconds.
    pub ttl_secs: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The link must be used before this.
    #[serde(with = "time::serde::rfc3339")]
    pub link_expires_at: OffsetDateTime,
    pub link_hash: String,
    /// Set when the link is used: the session token's SHA-256 and when the session ends.
    #[serde(default)]
    pub session_hash: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Who minted the link (the admin token or an API key): the audit log names them beside
    /// the session for every change it makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minted_by: Option<crate::audit::Actor>,
}

/// What using a link gave.
#[derive(Debug)]
pub enum Redeemed {
    /// A session started: its record and its token (`gps_` and 40 characters), shown once.
    Started(Box<PortalSession>, String),
    /// The link was used before (by anyone, on any api process).
    Used,
    /// The link was not used within [`LINK_TTL`].
    Expired,
    /// No such link: never minted, ended with its session or tenant, or long gone.
    Unknown,
}

#[derive(Serialize, Deserialize)]
struct Ref {
    tenant: String,
    id: String,
}

/// The portal bucket.
#[derive(Clone)]
pub struct PortalStore {
    kv: kv::Store,
}

impl PortalStore {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Mints a session for `tenant` (which the caller has checked exists) with `scope`,
    /// lasting `ttl` once started. Returns its record and the one-time link token.
    pub async fn mint(
        &self,
        tenant: &str,
        scope: Scope,
        ttl: Duration,
        minted_by: crate::audit::Actor,
    ) -> Result<(PortalSession, String), StoreError> {
        let now = now();
        let token = random_id("gpl_", 40);
        let session = PortalSession {
            id: random_id("ps_", 20),
            tenant: tenant.to_owned(),
            scope,
            ttl_secs: ttl.as_secs(),
            created_at: now,
            link_expires_at: now + LINK_TTL,
            link_hash: api_key_hash(&token),
            session_hash: None,
            expires_at: None,
            minted_by: Some(minted_by),
        };
        self.put(&link_key(&session.link_hash), &session.reference())
            .await?;
        self.put(&record_key(tenant, &session.id), &session).await?;
        Ok((session, token))
    }

    /// Uses a link token up: starts its session unless it was used, expired or unknown.
    pub async fn redeem(&self, token: &str) -> Result<Redeemed, StoreError> {
        let hash = api_key_hash(token);
        let Some((r, _)) = self.read::<Ref>(&link_key(&hash)).await? else {
            return Ok(Redeemed::Unknown);
        };
        let key = record_key(&r.tenant, &r.id);
        let Some((mut session, revision)) = self.read::<PortalSession>(&key).await? else {
            return Ok(Redeemed::Unknown);
        };
        if session.link_hash != hash {
            return Ok(Redeemed::Unknown);
        }
        if session.session_hash.is_some() {
            return Ok(Redeemed::Used);
        }
        let now = now();
        if now >= session.link_expires_at {
            return Ok(Redeemed::Expired);
        }
        let token = random_id("gps_", 40);
        let session_hash = api_key_hash(&token);
        // The lookup first, so the record never names a token that cannot be found.
        self.put(&session_hash_key(&session_hash), &session.reference())
            .await?;
        session.session_hash = Some(session_hash.clone());
        session.expires_at = Some(now + Duration::from_secs(session.ttl_secs));
        let bytes = serde_json::to_vec(&session).map_err(backend)?;
        match self.kv.update(&key, bytes.into(), revision).await {
            Ok(_) => Ok(Redeemed::Started(Box::new(session), token)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Another api process used it first (or the session was ended meanwhile).
                let _ = self.kv.delete(session_hash_key(&session_hash)).await;
                Ok(Redeemed::Used)
            }
            Err(e) => Err(backend(e)),
        }
    }

    /// The running session whose token's SHA-256 is `hash`: started, not ended, not expired.
    pub async fn find(&self, hash: &str) -> Result<Option<PortalSession>, StoreError> {
        let Some((r, _)) = self.read::<Ref>(&session_hash_key(hash)).await? else {
            return Ok(None);
        };
        let Some((session, _)) = self
            .read::<PortalSession>(&record_key(&r.tenant, &r.id))
            .await?
        else {
            return Ok(None);
        };
        let running = session.session_hash.as_deref() == Some(hash)
            && session.expires_at.is_some_and(|at| now() < at);
        Ok(running.then_some(session))
    }

    /// Ends a session (started or not): its link and token stop working. False when there
    /// was no such session.
    pub async fn end(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let key = record_key(tenant, id);
        let Some((session, _)) = self.read::<PortalSession>(&key).await? else {
            return Ok(false);
        };
        // The record first: without it, neither lookup leads anywhere.
        self.kv.purge(&key).await.map_err(backend)?;
        self.kv
            .purge(link_key(&session.link_hash))
            .await
            .map_err(backend)?;
        if let Some(hash) = &session.session_hash {
            self.kv
                .purge(session_hash_key(hash))
                .await
                .map_err(backend)?;
        }
        Ok(true)
    }

    /// Ends every session of `tenant` (when the tenant is deleted).
    pub async fn end_all(&self, tenant: &str) -> Result<(), StoreError> {
        let prefix = format!("sessions.{tenant}.");
        let ids: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(backend)?
            .try_filter_map(|k| {
                futures::future::ready(Ok(k.strip_prefix(&prefix).map(str::to_owned)))
            })
            .try_collect()
            .await
            .map_err(backend)?;
        for id in ids {
            self.end(tenant, &id).await?;
        }
        Ok(())
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, u64)>, StoreError> {
        crate::repo::read(&self.kv, key).await
    }

    async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(backend)?;
        self.kv
            .put(key, bytes.into())
            .await
            .map(|_| ())
            .map_err(backend)
    }
}

impl PortalSession {
    fn reference(&self) -> Ref {
        Ref {
            tenant: self.tenant.clone(),
            id: self.id.clone(),
        }
    }
}

/// A session's record key in the portal bucket.
pub fn record_key(tenant: &str, id: &str) -> String {
    format!("sessions.{tenant}.{id}")
}

fn link_key(hash: &str) -> String {
    format!("links.{hash}")
}

fn session_hash_key(hash: &str) -> String {
    format!("session_hashes.{hash}")
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is valid")
}
