//! The typed config repository: tenants and endpoints as JSON documents in the KV bucket,
//! keyed `tenants.<t>` and `endpoints.<t>.<e>`. Writes that change an existing document are
//! compare-and-set on the KV revision, so two API replicas (or an API call and a worker
//! disabling an endpoint after a 410) never overwrite each other's change.

use crate::model::{ApiKey, Endpoint, EventType, Tenant};
use async_nats::jetstream::kv;
use futures::TryStreamExt;
use gancho_core::Subjects;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long a compare-and-set update keeps trying while others write the same document
/// first. Concurrent changes (two fields of one endpoint, say) are independent, so each is
/// applied in turn on top of the others rather than refused: 100 PATCHes of one endpoint at
/// once all apply. Only a document changed faster than this for this long answers busy.
const CAS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The pause between compare-and-set attempts: random, up to 1 ms doubled at each attempt
/// (at most 64 ms), so writers that collided spread out instead of colliding again.
struct Contention {
    attempt: u32,
    until: std::time::Instant,
}

impl Contention {
    fn new() -> Self {
        Self {
            attempt: 0,
            until: std::time::Instant::now() + CAS_PATIENCE,
        }
    }

    /// Waits before the next attempt; false once [`CAS_PATIENCE`] is spent.
    async fn again(&mut self) -> bool {
        use rand::Rng;
        if std::time::Instant::now() >= self.until {
            return false;
        }
        let most_us = 1000u64 << self.attempt.min(6);
        self.attempt += 1;
        let pause = rand::rng().random_range(0..=most_us);
        tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    /// Others kept changing the document for [`CAS_PATIENCE`] while this change was applied.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    /// A stored document that does not parse (written by hand or by another version).
    #[error("config key {key} holds a document that does not parse: {reason}")]
    Corrupt { key: String, reason: String },
    /// The store did not answer or refused: `source` says why (a `refusal::of` it tells a
    /// full store from an unavailable one).
    #[error("config store unavailable: {what}")]
    Backend {
        what: String,
        #[source]
        source: BackendError,
    },
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::Conflict(_) => "conflict",
            StoreError::Busy(_) => "busy",
            StoreError::Invalid(_) => "invalid",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Backend { .. } => "backend",
        }
    }
}

fn busy(what: &str) -> StoreError {
    StoreError::Busy(format!(
        "{what} was changed by others all through the {} s this change waited for its turn; retry",
        CAS_PATIENCE.as_secs()
    ))
}

/// What a backend error keeps of its cause.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A backend error with its cause kept as the source.
/// The JSON document under `key` in `kv` and its revision; `None` when there is none (or it
/// was deleted), `Corrupt` when it does not parse.
pub(crate) async fn read<T: DeserializeOwned>(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, StoreError> {
    match kv.entry(key).await.map_err(backend)? {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let value = serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt {
                key: key.to_owned(),
                reason: e.to_string(),
            })?;
            Ok(Some((value, entry.revision)))
        }
        _ => Ok(None),
    }
}

/// The keys of `kv` under `prefix` (which ends with a `.`), asked of the bucket's stream by
/// subject, 100,000 to a request: only the keys under it are read. Listing every key of the
/// bucket and keeping the ones under it (`kv::Store::keys`) read every tenant's keys to list
/// one tenant's. A key deleted or purged since it was written is among them (its marker is
/// its last message): callers read each key and skip the ones without a value.
pub(crate) async fn keys_under(kv: &kv::Store, prefix: &str) -> Result<Vec<String>, StoreError> {
    debug_assert!(
        prefix.ends_with('.'),
        "a key prefix ends with a dot: {prefix}"
    );
    let bucket_prefix = kv.prefix.as_str();
    kv.stream
        .info_with_subjects(format!("{bucket_prefix}{prefix}>"))
        .await
        .map_err(backend)?
        .map_ok(|(subject, _)| {
            subject
                .strip_prefix(bucket_prefix)
                .unwrap_or(&subject)
                .to_owned()
        })
        .try_collect()
        .await
        .map_err(backend)
}

pub(crate) fn backend(e: impl Into<BackendError>) -> StoreError {
    let source = e.into();
    StoreError::Backend {
        what: source.to_string(),
        source,
    }
}

#[derive(Clone)]
pub struct ConfigStore {
    kv: kv::Store,
    keyring: std::sync::Arc<crate::Keyring>,
}

impl ConfigStore {
    /// The store of `layout`'s bucket; endpoint secrets are sealed and opened with its
    /// keyring.
    pub fn new(layout: &crate::Layout) -> Self {
        Self {
            kv: layout.config.clone(),
            keyring: layout.keyring.clone(),
        }
    }

    /// An endpoint as stored: its secrets sealed for `key`.
    fn sealed(&self, key: &str, ep: &Endpoint) -> Result<Vec<u8>, StoreError> {
        let mut stored = ep.clone();
        self.keyring
            .seal_endpoint(key, &mut stored)
            .map_err(|e| StoreError::Invalid(format!("cannot seal the endpoint's secret: {e}")))?;
        serde_json::to_vec(&stored).map_err(backend)
    }

    /// Reads an endpoint and opens its secrets.
    async fn read_endpoint(&self, key: &str) -> Result<Option<(Endpoint, u64)>, StoreError> {
        let Some((mut ep, revision)) = self.read::<Endpoint>(key).await? else {
            return Ok(None);
        };
        self.keyring
            .open_endpoint(key, &mut ep)
            .map_err(|e| StoreError::Corrupt {
                key: key.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Some((ep, revision)))
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>, StoreError> {
        read(&self.kv, key).await
    }

    async fn create<T: Serialize>(
        &self,
        key: &str,
        what: String,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(backend)?;
        match self.kv.create(key, bytes.into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(StoreError::Conflict(what))
            }
            Err(e) => Err(backend(e)),
        }
    }

    /// The bucket's latest revision (one request to JetStream): a [`crate::Live`] snapshot at
    /// this revision or later holds every write made before the call.
    pub async fn revision(&self) -> Result<u64, StoreError> {
        let info = self.kv.stream.get_info().await.map_err(backend)?;
        Ok(info.state.last_sequence)
    }

    // Tenants.

    pub async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let key = Subjects::tenant_key(tenant.id.as_str());
        self.create(&key, format!("tenant {:?}", tenant.id.as_str()), tenant)
            .await
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        Ok(self.read(&Subjects::tenant_key(id)).await?.map(|(t, _)| t))
    }

    /// Changes a tenant (compare-and-set, tried again when another writer got there first).
    pub async fn update_tenant<F>(&self, id: &str, mut change: F) -> Result<Tenant, StoreError>
    where
        F: FnMut(&mut Tenant) -> Result<(), StoreError>,
    {
        let key = Subjects::tenant_key(id);
        let mut contention = Contention::new();
        loop {
            let Some((mut tenant, revision)) = self.read::<Tenant>(&key).await? else {
                return Err(StoreError::NotFound(format!("tenant {id:?}")));
            };
            change(&mut tenant)?;
            let bytes = serde_json::to_vec(&tenant).map_err(backend)?;
            match self.kv.update(&key, bytes.into(), revision).await {
                Ok(_) => return Ok(tenant),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    if !contention.again().await {
                        return Err(busy(&format!("tenant {id:?}")));
                    }
                }
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// Deletes a tenant and every endpoint it owns.
    pub async fn delete_tenant(&self, id: &str) -> Result<(), StoreError> {
        if self.get_tenant(id).await?.is_none() {
            return Err(StoreError::NotFound(format!("tenant {id:?}")));
        }
        // By key, so an endpoint document that no longer parses is deleted too (and not
        // one deleted already).
        for key in self.endpoint_keys(id).await? {
            let entry = self.kv.entry(&key).await.map_err(backend)?;
            if entry.is_some_and(|e| e.operation == kv::Operation::Put) {
                self.kv.delete(&key).await.map_err(backend)?;
            }
        }
        for key in self.list_api_keys(id).await? {
            self.revoke_api_key(id, &key.id).await?;
        }
        self.kv
            .delete(Subjects::tenant_key(id))
            .await
            .map_err(backend)
    }

    /// Every tenant, sorted by id.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let keys = self.keys_with_prefix("tenants.").await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match self.read::<Tenant>(&key).await {
                Ok(Some((t, _))) => out.push(t),
                Ok(None) => {}
                Err(StoreError::Corrupt { reason, .. }) => {
                    tracing::warn!(%key, %reason, "Skipping a tenant document that does not parse.");
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(out)
    }

    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        keys_under(&self.kv, prefix).await
    }

    // API keys: the document under `api_keys.<tenant>.<id>`, and a lookup from the key's
    // SHA-256 under `api_key_hashes.<hash>`. The lookup is written first and removed last, so
    // a document never exists without it; a lookup without a document is refused.

    /// Stores a new API key; its tenant must exist.
    pub async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let tenant = key.tenant.as_str();
        if self.get_tenant(tenant).await?.is_none() {
            return Err(StoreError::NotFound(format!("tenant {tenant:?}")));
        }
        let lookup = Subjects::api_key_hash_key(&key.hash);
        let target = KeyRef {
            tenant: tenant.to_owned(),
            id: key.id.clone(),
        };
        self.create(&lookup, "API key".into(), &target).await?;
        let doc = Subjects::api_key_key(tenant, &key.id);
        if let Err(e) = self
            .create(&doc, format!("API key {:?}", key.id), key)
            .await
        {
            let _ = self.kv.delete(&lookup).await;
            return Err(e);
        }
        Ok(())
    }

    pub async fn get_api_key(&self, tenant: &str, id: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(self
            .read(&Subjects::api_key_key(tenant, id))
            .await?
            .map(|(k, _)| k))
    }

    /// The key whose SHA-256 is `hash`, if it exists and has not been revoked.
    pub async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let Some((target, _)) = self
            .read::<KeyRef>(&Subjects::api_key_hash_key(hash))
            .await?
        else {
            return Ok(None);
        };
        let key = self.get_api_key(&target.tenant, &target.id).await?;
        Ok(key.filter(|k| k.hash == hash))
    }

    /// A tenant's API keys, sorted by id.
    pub async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>, StoreError> {
        let keys = self
            .keys_with_prefix(&format!("api_keys.{tenant}."))
            .await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some((k, _)) = self.read::<ApiKey>(&key).await? {
                out.push(k);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Revokes a key: its lookup goes first, so it stops working at once.
    pub async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<(), StoreError> {
        let Some(key) = self.get_api_key(tenant, id).await? else {
            return Err(StoreError::NotFound(format!("API key {id:?}")));
        };
        self.kv
            .delete(Subjects::api_key_hash_key(&key.hash))
            .await
            .map_err(backend)?;
        self.kv
            .delete(Subjects::api_key_key(tenant, id))
            .await
            .map_err(backend)
    }

    /// Records that a key was used at `at` (best effort: a concurrent write wins).
    pub async fn touch_api_key(
        &self,
        tenant: &str,
        id: &str,
        at: time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        let key = Subjects::api_key_key(tenant, id);
        let Some((mut doc, revision)) = self.read::<ApiKey>(&key).await? else {
            return Ok(());
        };
        doc.last_used_at = Some(at.replace_nanosecond(0).unwrap_or(at));
        let bytes = serde_json::to_vec(&doc).map_err(backend)?;
        match self.kv.update(&key, bytes.into(), revision).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    // The event catalog: `event_types.<tenant>.<name>`.

    /// Stores an event type, replacing the one of that name; returns whether it is new.
    pub async fn put_event_type(&self, et: &EventType) -> Result<bool, StoreError> {
        let key = Subjects::event_type_key(et.tenant.as_str(), &et.name);
        let existed = self.read::<EventType>(&key).await?.is_some();
        let bytes = serde_json::to_vec(et).map_err(backend)?;
        self.kv.put(&key, bytes.into()).await.map_err(backend)?;
        Ok(!existed)
    }

    pub async fn get_event_type(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<EventType>, StoreError> {
        Ok(self
            .read(&Subjects::event_type_key(tenant, name))
            .await?
            .map(|(e, _)| e))
    }

    /// A tenant's event types, sorted by name.
    pub async fn list_event_types(&self, tenant: &str) -> Result<Vec<EventType>, StoreError> {
        let mut out = Vec::new();
        for key in self
            .keys_with_prefix(&format!("event_types.{tenant}."))
            .await?
        {
            if let Some((et, _)) = self.read::<EventType>(&key).await? {
                out.push(et);
            }
        }
        out.sort_by(|a: &EventType, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn delete_event_type(&self, tenant: &str, name: &str) -> Result<(), StoreError> {
        if self.get_event_type(tenant, name).await?.is_none() {
            return Err(StoreError::NotFound(format!("event type {name:?}")));
        }
        self.kv
            .delete(Subjects::event_type_key(tenant, name))
            .await
            .map_err(backend)
    }

    // Endpoints.

    /// Stores a new endpoint; its tenant must exist.
    pub async fn create_endpoint(&self, ep: &Endpoint) -> Result<(), StoreError> {
        if self.get_tenant(ep.tenant.as_str()).await?.is_none() {
            return Err(StoreError::NotFound(format!(
                "tenant {:?}",
                ep.tenant.as_str()
            )));
        }
        let key = Subjects::endpoint_key(ep.tenant.as_str(), ep.id.as_str());
        let bytes = self.sealed(&key, ep)?;
        match self.kv.create(&key, bytes.into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(StoreError::Conflict(
                format!("endpoint {:?}", ep.id.as_str()),
            )),
            Err(e) => Err(backend(e)),
        }
    }

    pub async fn get_endpoint(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Endpoint>, StoreError> {
        Ok(self
            .read_endpoint(&Subjects::endpoint_key(tenant, id))
            .await?
            .map(|(e, _)| e))
    }

    async fn endpoint_keys(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        self.keys_with_prefix(&format!("endpoints.{tenant}.")).await
    }

    /// Applies `change` to the stored endpoint with compare-and-set, retrying when another
    /// writer got there first. Returns the endpoint as stored.
    pub async fn update_endpoint<F>(
        &self,
        tenant: &str,
        id: &str,
        change: F,
    ) -> Result<Endpoint, StoreError>
    where
        F: FnMut(&mut Endpoint) -> Result<(), StoreError>,
    {
        let key = Subjects::endpoint_key(tenant, id);
        let what = format!("endpoint {id:?}");
        self.cas_endpoint(&key, &what, true, change)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("endpoint {id:?}")))
    }

    /// Reads the endpoint at `key` (secrets opened), applies `change`, stamps `updated_at`
    /// when `touch`, and writes it back sealed, compare-and-set, retrying when another writer
    /// got there first. `None` when the record does not exist; `what` names it in a conflict.
    async fn cas_endpoint<F>(
        &self,
        key: &str,
        what: &str,
        touch: bool,
        mut change: F,
    ) -> Result<Option<Endpoint>, StoreError>
    where
        F: FnMut(&mut Endpoint) -> Result<(), StoreError>,
    {
        let mut contention = Contention::new();
        loop {
            let Some((mut ep, revision)) = self.read_endpoint(key).await? else {
                return Ok(None);
            };
            change(&mut ep)?;
            if touch {
                ep.updated_at = time::OffsetDateTime::now_utc();
            }
            let bytes = self.sealed(key, &ep)?;
            match self.kv.update(key, bytes.into(), revision).await {
                Ok(_) => return Ok(Some(ep)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    if !contention.again().await {
                        return Err(busy(what));
                    }
                }
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// Finishes a key rotation, or a move from a clear-text store: every endpoint whose
    /// secrets are not sealed with the current key is rewritten with it, then every older
    /// revision of every endpoint record (and of the key-check record) is purged from the
    /// bucket's stream, so no clear text and nothing sealed by the old key remains. Returns
    /// (endpoints rewritten, records whose history was purged).
    pub async fn reencrypt(&self) -> Result<(usize, usize), StoreError> {
        use futures::TryStreamExt;
        let mut rewritten = 0;
        for key in self.keys_with_prefix("endpoints.").await? {
            let Some((raw, _)) = self.read::<Endpoint>(&key).await? else {
                continue;
            };
            if self.keyring.endpoint_is_current(&raw) {
                continue;
            }
            // Opened, then sealed anew; nothing else changes (not even updated_at).
            let what = format!("endpoint record {key}");
            if self
                .cas_endpoint(&key, &what, false, |_| Ok(()))
                .await?
                .is_some()
            {
                rewritten += 1;
            }
        }
        self.keyring
            .write_check(&self.kv)
            .await
            .map_err(|e| StoreError::Backend {
                what: format!("cannot write the key-check record: {e}"),
                source: e,
            })?;
        let mut subjects = Vec::new();
        for prefix in ["endpoints.>", crate::crypt::KEY_CHECK] {
            let mut info = self
                .kv
                .stream
                .info_with_subjects(format!("{}{prefix}", self.kv.prefix))
                .await
                .map_err(backend)?;
            while let Some((subject, _)) = info.try_next().await.map_err(backend)? {
                subjects.push(subject);
            }
        }
        for subject in &subjects {
            self.kv
                .stream
                .purge()
                .filter(subject.clone())
                .keep(1)
                .await
                .map_err(backend)?;
        }
        Ok((rewritten, subjects.len()))
    }

    pub async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<(), StoreError> {
        if self.get_endpoint(tenant, id).await?.is_none() {
            return Err(StoreError::NotFound(format!("endpoint {id:?}")));
        }
        self.kv
            .delete(Subjects::endpoint_key(tenant, id))
            .await
            .map_err(backend)
    }
}

/// What an `api_key_hashes.<hash>` entry points at.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyRef {
    tenant: String,
    id: String,
}
