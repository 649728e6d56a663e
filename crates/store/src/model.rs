//! Config documents as they are stored in KV (JSON). The API has its own views: the secret
//! is stored here because the worker must sign with it, and leaves the API only on create
//! and rotate.

use gancho_core::{EndpointId, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Default per-request timeout, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u32 = 15_000;
/// Longest per-request timeout. The deliveries consumer's ack wait is sized above it.
pub const MAX_TIMEOUT_MS: u32 = 30_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The tenant's share of the router's and the workers' capacity against other tenants
    /// with work waiting, 1 to [`MAX_WEIGHT`] (documents without it: 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Requests a second each of its API keys and portal sessions may make, instead of the
    /// api's `api_rate_limit` (documents without it: the api's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_rate_limit_per_sec: Option<u32>,
    /// Events a second it may send through HTTP ingest (documents without it: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_rate_limit_per_sec: Option<u32>,
}

/// The largest tenant weight: a tenant of weight 100 beside one of weight 1 still leaves
/// the other about 1% of the capacity, not nothing.
pub const MAX_WEIGHT: u32 = 100;

fn default_weight() -> u32 {
    1
}

/// A secret that still signs after a rotation, until `expires_at`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct PreviousSecret {
    pub secret: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Printed with `{:?}`, secrets show as `<redacted>`.
impl std::fmt::Debug for PreviousSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviousSecret")
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub id: EndpointId,
    pub tenant: TenantId,
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// Event-type filters (`invoice.*`); empty means every type.
    #[serde(default)]
    pub filter_types: Vec<String>,
    /// When non-empty, only events tagged with one of these channels.
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    /// Why the endpoint was disabled, when gancho did it (for example a 410 Gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed (set by a worker at the first failure after a
    /// success, cleared at the next success). Past `GANCHO_DISABLE_AFTER` the endpoint is
    /// disabled.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub failing_since: Option<OffsetDateTime>,
    /// While paused, deliveries are held (on `gancho.hold.<tenant>.<endpoint>`, in the held
    /// stream) and sent on resume, without attempts.
    #[serde(default)]
    pub paused: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub paused_at: Option<OffsetDateTime>,
    /// Requests per second; `None` means no limit.
    #[serde(default)]
    pub rate_limit_per_sec: Option<u32>,
    /// Requests in flight at once; `None` means the worker default.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Per-request timeout in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u32,
    #[serde(default)]
    pub profile: Profile,
    /// Client certificate chain (PEM) presented to the endpoint (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// The client certificate's private key (PEM; sealed at rest, never returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// CA certificates (PEM) trusted for this endpoint besides the webpki roots (Open
    /// Finance servers chain to ICP-Brasil).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// `openfinance-br`: the path appended to `url`, `{attribute}` filled from the event
    /// (default [`OPENFINANCE_PATH`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_template: Option<String>,
    /// The token the `token` profile sends (sealed at rest; never returned by the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenAuth>,
    /// Extra headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Overrides the default retry schedule (`0s,5s,5m,...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_schedule: Option<String>,
    /// A jq program run by the router on each event that matches the endpoint's types and
    /// channels: the endpoint gets the event only when its first output is `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// A jq program run by the worker before signing: its first output is the body sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
    /// `none` (default), `key` (in order per value of `ordering_key`) or `endpoint`.
    #[serde(default, skip_serializing_if = "OrderingMode::is_none")]
    pub ordering: OrderingMode,
    /// With `ordering: key`: a JSON Pointer (RFC 6901) into the event's payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// Whether its webhooks carry a W3C `traceparent` (a trace of their own per delivery,
    /// never the platform's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace_context: bool,
    /// `whsec_...`
    pub secret: String,
    #[serde(default)]
    pub previous_secrets: Vec<PreviousSecret>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("url", &self.url)
            .field("filter_types", &self.filter_types)
            .field("channels", &self.channels)
            .field("disabled", &self.disabled)
            .field("paused", &self.paused)
            .field("profile", &self.profile)
            .field("token", &self.token)
            .field("client_cert", &self.client_cert.is_some())
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "<redacted>"),
            )
            .field("header_names", &self.headers.keys().collect::<Vec<_>>())
            .field("secret", &"<redacted>")
            .field("previous_secrets", &self.previous_secrets)
            .finish_non_exhaustive()
    }
}

/// How an endpoint's deliveries are ordered ([`gancho_core::ordering::Ordering`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderingMode {
    #[default]
    None,
    Key,
    Endpoint,
}

impl OrderingMode {
    pub fn is_none(&self) -> bool {
        *self == OrderingMode::None
    }
    pub fn as_str(self) -> &'static str {
        match self {
            OrderingMode::None => "none",
            OrderingMode::Key => "key",
            OrderingMode::Endpoint => "endpoint",
        }
    }
}

impl Endpoint {
    /// The endpoint's ordering as the worker and router apply it.
    pub fn ordering(&self) -> gancho_core::ordering::Ordering {
        use gancho_core::ordering::Ordering;
        match (self.ordering, &self.ordering_key) {
            (OrderingMode::None, _) => Ordering::None,
            (OrderingMode::Endpoint, _) => Ordering::Endpoint,
            (OrderingMode::Key, Some(pointer)) => Ordering::Key(pointer.clone()),
            // Never stored so (the API refuses it); ordered as one key rather than not at all.
            (OrderingMode::Key, None) => Ordering::Endpoint,
        }
    }

    /// An enabled endpoint with every setting at its default: all event types, no channels,
    /// no rate limit, the worker's in-flight cap, a 15 s timeout, the `standard` profile, the
    /// default retry schedule and a fresh secret.
    pub fn new(tenant: TenantId, id: EndpointId, url: impl Into<String>) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            id,
            tenant,
            url: url.into(),
            description: String::new(),
            filter_types: Vec::new(),
            channels: Vec::new(),
            disabled: false,
            disabled_reason: None,
            failing_since: None,
            paused: false,
            paused_at: None,
            rate_limit_per_sec: None,
            max_in_flight: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            profile: Profile::Standard,
            token: None,
            path_template: None,
            client_cert: None,
            client_key: None,
            ca: None,
            headers: BTreeMap::new(),
            retry_schedule: None,
            ordering: OrderingMode::None,
            ordering_key: None,
            trace_context: false,
            secret: new_secret(),
            filter: None,
            transform: None,
            previous_secrets: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }
}

fn default_timeout() -> u32 {
    DEFAULT_TIMEOUT_MS
}

/// How a delivery is turned into a request: URL, headers, body, signature, and what counts
/// as success. One module in the worker builds each (`crates/worker/src/profile.rs`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Standard Webhooks: signed JSON, any 2xx is success.
    #[default]
    #[serde(rename = "standard")]
    Standard,
    /// Standard Webhooks plus a static token in a header or a query parameter, for receivers
    /// that check one (Superlogica's `validationtoken`).
    #[serde(rename = "token")]
    Token,
    /// Open Finance Brasil's payment webhook: a URL templated from event attributes, body
    /// `{"data":{"timestamp"}}`, a fresh `x-webhook-interaction-id` per attempt, mTLS, only
    /// 202 is success, 3 attempts (0 s, 10 s, 60 s), no signature.
    #[serde(rename = "openfinance-br")]
    OpenfinanceBr,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Standard, Profile::Token, Profile::OpenfinanceBr];

    pub fn as_str(&self) -> &'static str {
        match self {
            Profile::Standard => "standard",
            Profile::Token => "token",
            Profile::OpenfinanceBr => "openfinance-br",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The path `openfinance-br` appends to an endpoint's URL unless it sets its own.
pub const OPENFINANCE_PATH: &str = "/open-banking/webhook/v1/payments/v3/pix/payments/{paymentId}";
/// The retry schedule of `openfinance-br` unless the endpoint sets its own: 3 attempts in
/// about a minute.
pub const OPENFINANCE_SCHEDULE: &str = "0s,10s,60s";

/// Where the `token` profile puts its token: exactly one of `header` and `query`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub value: String,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("header", &self.header)
            .field("query", &self.query)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// A fresh `whsec_` secret of 32 random bytes.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut key = vec![0u8; 32];
    rand::rng().fill_bytes(&mut key);
    gancho_core::Secret::from_bytes(key)
        .expect("32 bytes is a valid key length")
        .expose()
}

/// A fresh `whsk_` ed25519 signing key from 32 random bytes.
pub fn new_signing_key() -> String {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    gancho_core::SigningKey::from_seed(seed).expose()
}

/// A fresh key of `scheme`.
pub fn new_key(scheme: gancho_core::Scheme) -> String {
    match scheme {
        gancho_core::Scheme::Hmac => new_secret(),
        gancho_core::Scheme::Ed25519 => new_signing_key(),
    }
}

/// `prefix` and `len` random characters of lowercase base32: ids that are safe in subjects,
/// URLs and headers.
pub fn random_id(prefix: &str, len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    for _ in 0..len {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// A fresh endpoint id: `ep_` and 20 random base32 characters.
pub fn new_endpoint_id() -> EndpointId {
    EndpointId::new(random_id("ep_", 20)).expect("generated ids use the id alphabet")
}

/// An event type of a tenant's catalog: what it means, the JSON Schema (draft 2020-12) its
/// payloads must meet, and an example.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventType {
    pub tenant: TenantId,
    /// Dotted, like `charge.paid`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// When set, payloads of this type must validate against it: over HTTP a 400 naming the
    /// failing path, over NATS a dead letter of kind `schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<serde_json::Value>,
    /// Kept for the record; no longer offered to new subscriptions.
    #[serde(default)]
    pub archived: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What an API key may do within its tenant.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The tenant's endpoints, event types, delivery log and recovery: reading them, changing
    /// them, and everything that sends (test events, recover, replay, redrive).
    Manage,
    /// Sending events for the tenant (HTTP ingest).
    Publish,
    /// Reading what `manage` reaches, and nothing else: for support people who answer "why
    /// didn't my webhook arrive?" and must not change or send anything.
    Read,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Manage, Scope::Publish, Scope::Read];

    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Manage => "manage",
            Scope::Publish => "publish",
            Scope::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    /// Whether a credential with `scopes` may do what needs `self`: `manage` includes `read`.
    pub fn granted_by(self, scopes: &[Scope]) -> bool {
        scopes.contains(&self) || (self == Scope::Read && scopes.contains(&Scope::Manage))
    }
}

/// A tenant's API key as stored: never the key itself, only its SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKey {
    /// `key_` and 20 base32 characters.
    pub id: String,
    pub tenant: TenantId,
    pub name: String,
    /// The key's first characters, so a person can tell keys apart (`gk_abcdefgh`).
    pub prefix: String,
    pub scopes: Vec<Scope>,
    /// SHA-256 of the key, lowercase hex.
    pub hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

/// Length of the shown prefix of a key: `gk_` and 8 characters.
pub const API_KEY_PREFIX_LEN: usize = 11;

/// A fresh API key (`gk_` and 40 base32 characters: 200 random bits) and its SHA-256 hex.
pub fn new_api_key() -> (String, String) {
    let key = random_id("gk_", 40);
    let hash = api_key_hash(&key);
    (key, hash)
}

/// SHA-256 of a presented key, lowercase hex: how keys are looked up and stored.
pub fn api_key_hash(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from_digit((b >> 4) as u32, 16).expect("a nibble"));
        out.push(char::from_digit((b & 15) as u32, 16).expect("a nibble"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_secret() {
        let mut ep = Endpoint::new("acme".parse().unwrap(), "ep1".parse().unwrap(), "https://x");
        ep.headers
            .insert("authorization".into(), "Bearer hunter2".into());
        ep.token = Some(TokenAuth {
            header: Some("validationtoken".into()),
            query: None,
            value: "tok-s3cr3t".into(),
        });
        ep.previous_secrets.push(PreviousSecret {
            secret: new_secret(),
            expires_at: OffsetDateTime::now_utc(),
        });
        let printed = format!("{ep:?}");
        assert!(!printed.contains(&ep.secret), "{printed}");
        assert!(
            !printed.contains(&ep.previous_secrets[0].secret),
            "{printed}"
        );
        assert!(
            !printed.contains("hunter2") && !printed.contains("whsec_"),
            "{printed}"
        );
        assert!(!printed.contains("tok-s3cr3t"), "{printed}");
    }
}
