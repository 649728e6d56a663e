//! The audit log: one record for every change made through the API (to a tenant, an
//! endpoint, an API key, an event type or a portal session) and every recover, replay and
//! redrive job started or cancelled, saying who made it, what and when, and which fields
//! it set. Never a value: secrets, tokens, keys, header values and URLs stay out, only the
//! names of the fields that changed.
//!
//! Records live in a stream of their own (`GANCHO_AUDIT`, subjects
//! `gancho.audit.<tenant>.<resource>`) that refuses deletes and purges (`deny_delete`,
//! `deny_purge`) and keeps them for `GANCHO_AUDIT_MAX_AGE` (400 days by default), whatever
//! happens to the tenant.

use async_nats::jetstream::{self, message::PublishMessage};
use gancho_core::Subjects;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How long records are kept by default.
pub const DEFAULT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(400 * 86_400);

/// What a record is about.
pub const RESOURCES: [&str; 6] = [
    "tenant",
    "endpoint",
    "api_key",
    "event_type",
    "portal_session",
    "job",
];

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Actor {
    /// `admin` (the admin token), `api_key` or `portal_session`.
    pub kind: ActorKind,
    /// The API key's or portal session's id; none for the admin token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// For a portal session: who minted its link (the admin token or an API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub minted_by: Option<Box<Actor>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Admin,
    ApiKey,
    PortalSession,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Admin => "admin",
            ActorKind::ApiKey => "api_key",
            ActorKind::PortalSession => "portal_session",
        }
    }
}

impl Actor {
    pub fn admin() -> Self {
        Self {
            kind: ActorKind::Admin,
            id: None,
            minted_by: None,
        }
    }

    pub fn api_key(id: &str) -> Self {
        Self {
            kind: ActorKind::ApiKey,
            id: Some(id.to_owned()),
            minted_by: None,
        }
    }

    /// Whether `who` names this actor: `admin`, or the key's or session's id.
    pub fn is(&self, who: &str) -> bool {
        match self.kind {
            ActorKind::Admin => who == "admin",
            _ => self.id.as_deref() == Some(who),
        }
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    /// `aud_` and 20 characters.
    pub id: String,
    /// When the change was stored (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub at: OffsetDateTime,
    pub tenant: String,
    pub actor: Actor,
    /// `tenant`, `endpoint`, `api_key`, `event_type`, `portal_session` or `job`.
    pub resource: String,
    /// The endpoint's, key's, session's or job's id, or the event type's name (the tenant's
    /// own id for a tenant).
    pub resource_id: String,
    /// `created`, `updated`, `deleted`, `paused`, `resumed`, `secret_rotated`, `revoked`,
    /// `minted`, `ended`, `started` (a job) or `cancelled` (a job).
    pub action: String,
    /// The fields the change set, by name (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// The request that made it: its method and path, without the query string.
    pub request: String,
}

/// How long a change under way is kept when nothing settles it (the api's catch-up does,
/// within a minute of its owner's death).
pub const PENDING_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Which bucket a resource's record lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Config,
    Jobs,
    Portal,
}

/// A change under way: written (under its record's id, in the `audit_pending` bucket) before
/// its request runs, removed once its record is stored or the request is refused. One left
/// behind (its api died between the change and its record, or could not store the record)
/// is settled by the api's catch-up: if the resource's record in `bucket` moved past
/// `before`, the change was made and its record is written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intent {
    /// The record to write; `resource_id` is empty for a resource made by the request when
    /// its id is not in the request.
    pub record: Record,
    /// The api process that runs the request (its key in the api processes' bucket).
    pub owner: String,
    pub bucket: Bucket,
    /// The resource's key in `bucket`, when known before the request runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Where the key of a resource the request makes appears (`endpoints.acme.`).
    pub prefix: String,
    /// The key's revision before the request (0: none); for a resource made under a new
    /// id, the bucket's last sequence.
    pub before: u64,
}

/// Why a record could not be stored.
pub type WriteError = async_nats::jetstream::context::PublishError;

/// Stores `record`; `Nats-Msg-Id: audit:<record id>`, so a record sent again is kept once.
pub async fn write(
    js: &jetstream::Context,
    subjects: &Subjects,
    record: &Record,
) -> Result<(), WriteError> {
    let subject = subjects.audit(&record.tenant, &record.resource);
    let payload = serde_json::to_vec(record).expect("an audit record serializes");
    let publish = PublishMessage::build()
        .payload(payload.into())
        .message_id(format!("audit:{}", record.id));
    js.send_publish(subject, publish).await?.await?;
    Ok(())
}
