//! gancho's domain, without I/O: identifiers, subject names, subscription matching, retry
//! schedules, Standard Webhooks signatures and the webhook body. Every other crate builds on
//! these types; most unit tests live here.
//!
//! # Layout
//! - [`id`]: tenant, endpoint and event-type validation.
//! - [`event`]: the rules an event keeps to be accepted, over HTTP and over NATS.
//! - [`subject`]: subject, stream and bucket names derived from one prefix.
//! - [`matching`]: endpoint filters (NATS wildcard semantics on dotted event types) and channels.
//! - [`net`]: which addresses the SSRF guard lets a webhook reach.
//! - [`ordering`]: ordered delivery's settings, and the key of a delivery.
//! - [`signature`]: `whsec_` secrets and `whsk_`/`whpk_` ed25519 keys, signing and
//!   verification (Standard Webhooks `v1` and `v1a`).
//! - [`webhook`]: the JSON body a receiver gets.
//! - [`retry`]: retry schedules such as `0s,5s,5m,30m,2h,5h,10h,10h`, and what an attempt's
//!   answer means ([`retry::judge`]).
//! - [`policy`]: what becomes of a delivery its endpoint cannot take now (parked, deferred
//!   until when, or given up on).
//! - [`tls`]: what is wrong with an endpoint's client certificate.

pub mod event;
pub mod id;
pub mod matching;
pub mod net;
pub mod ordering;
pub mod policy;
pub mod retry;
pub mod signature;
pub mod subject;
pub mod tls;
pub mod webhook;

pub use id::{EndpointId, EventType, IdError, TenantId};
pub use matching::{Filter, FilterError, Subscription};
pub use retry::{RetrySchedule, RetryScheduleError};
pub use signature::{Key, PublicKey, Scheme, Secret, SecretError, Signer, SigningKey, VerifyError};
pub use subject::Subjects;
