//! A lease: one process at a time holds a key of the leases bucket, renewed every
//! [`RENEW_EVERY`] and gone [`crate::streams::MEMBER_TTL`] after the last renewal (the
//! bucket's max age), so the holder's death frees it within seconds. Taken with a create
//! (refused while another holds it), renewed with an update at the revision last written (so
//! a holder whose lease expired and was taken learns it at its next renewal), given up with
//! a delete at that revision (the next taker need not wait for the expiry).
//!
//! What it guarantees is what a holder checks before acting: [`Lease::held`] is true only
//! within [`TRUST_FOR`] of the last renewal the server took, which is shorter than the time
//! after which another process can take the lease. A holder cut off from the server stops
//! acting before anyone else may start, whatever its renewals do meanwhile.
//!
//! Used where a partition's work must have one owner at a time and nothing like a consumer's
//! pin gives it one: ordered delivery's keys (issue 31).

use crate::streams::MEMBER_TTL;
use async_nats::jetstream::kv;
use std::time::Duration;
use tokio::time::Instant;

/// How often a holder renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long after the last renewal the server took a holder may act: well within
/// [`MEMBER_TTL`], after which the lease can be taken by another.
pub const TRUST_FOR: Duration = Duration::from_secs(4);

const _: () = assert!(TRUST_FOR.as_millis() < MEMBER_TTL.as_millis());
const _: () = assert!(RENEW_EVERY.as_millis() < TRUST_FOR.as_millis());

/// A lease this process holds (or held: see [`Lease::held`]).
#[derive(Debug)]
pub struct Lease {
    bucket: kv::Store,
    key: String,
    holder: String,
    revision: u64,
    /// When the last write of the lease was sent (the server's clock started its age no
    /// earlier than this).
    renewed: Instant,
    lost: bool,
}

/// Why a lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another process holds it.
    #[error("the lease {key} is held by {holder}")]
    Held { key: String, holder: String },
    /// The leases bucket did not answer.
    #[error("the leases bucket did not answer: {0}")]
    Unavailable(String),
}

impl Lease {
    /// Takes `key` for `holder`, unless another holds it.
    pub async fn take(bucket: &kv::Store, key: &str, holder: &str) -> Result<Lease, LeaseError> {
        let sent = Instant::now();
        match bucket.create(key, holder.to_owned().into()).await {
            Ok(revision) => Ok(Lease {
                bucket: bucket.clone(),
                key: key.to_owned(),
                holder: holder.to_owned(),
                revision,
                renewed: sent,
                lost: false,
            }),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let holder = match bucket.get(key).await {
                    Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                    _ => "another process".to_owned(),
                };
                Err(LeaseError::Held {
                    key: key.to_owned(),
                    holder,
                })
            }
            Err(e) => Err(LeaseError::Unavailable(e.to_string())),
        }
    }

    /// Renews the lease. `Err` when it was lost (expired and taken, or deleted): the lease
    /// stays lost; a bucket that does not answer leaves it held until [`TRUST_FOR`] runs out.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        if self.lost {
            return Err(self.held_by_another().await);
        }
        let sent = Instant::now();
        match self
            .bucket
            .update(&self.key, self.holder.clone().into(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.renewed = sent;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.lost = true;
                Err(self.held_by_another().await)
            }
            Err(e) => Err(LeaseError::Unavailable(e.to_string())),
        }
    }

    /// Whether this process may act as the holder now.
    pub fn held(&self) -> bool {
        !self.lost && self.renewed.elapsed() < TRUST_FOR
    }

    /// Gives the lease up at once (when it is still this process's).
    pub async fn give_up(self) {
        if !self.lost {
            let _ = self
                .bucket
                .delete_expect_revision(&self.key, Some(self.revision))
                .await;
        }
    }

    async fn held_by_another(&self) -> LeaseError {
        let holder = match self.bucket.get(&self.key).await {
            Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
            _ => "nobody now".to_owned(),
        };
        LeaseError::Held {
            key: self.key.clone(),
            holder,
        }
    }
}
