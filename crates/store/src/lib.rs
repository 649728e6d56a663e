//! gancho's state in JetStream: the streams every role needs ([`streams`]), the config
//! (tenants and endpoints) as JSON documents in the KV bucket `gancho_config` behind a typed
//! repository ([`repo`]), and a live in-memory snapshot of that config, fed by a KV watch,
//! that routers and workers read on the hot path without taking a lock ([`live`]).
//!
//! # Layout
//! - [`model`]: `Tenant`, `Endpoint` and `ApiKey` as stored.
//! - [`streams`]: creates or checks the streams and the bucket at start-up.
//! - [`repo`]: create, read, update, delete, with optimistic concurrency on KV revisions.
//! - [`live`]: [`Live`], the snapshot and the watch task that keeps it current.
//! - [`consume`]: the concurrent, draining consume loop the router and the worker share.
//! - [`budget`]: a role's memory budget in bytes, for pulls, publishes and request bodies.
//! - [`full`]: telling "no room" answers apart and waiting them out.
//! - [`jobs`]: recover, replay and redrive jobs, kept in their own bucket.
//! - [`log`]: reading the attempt log and the dead letters newest first.

pub mod audit;
pub mod batch;
pub mod budget;
pub mod by_tenant;
pub mod consume;
pub mod crypt;
pub mod full;
pub mod jobs;
pub mod lease;
pub mod live;
pub mod log;
pub mod members;
pub mod model;
pub mod partitioned;
pub mod portal;
pub mod programs;
pub mod refusal;
pub mod repo;
pub mod streams;
pub mod writes;

pub use crypt::Keyring;
pub use live::{Live, LiveEndpoint, Snapshot};
pub use model::{ApiKey, Endpoint, EventType, Profile, Scope, Tenant, TokenAuth};
pub use repo::{ConfigStore, StoreError};
pub use streams::{ensure, Layout};
