//! Which tenants have a backlog lately: their deliveries go to the bulk lanes. Routing marks
//! them ([`Backlogs::bulk`]), and the pacing of the bulk lanes ([`crate::pace`]) reads and keeps
//! the marks while it holds a tenant back.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::info;

/// The tenants whose deliveries go to the bulk lanes: each until [`crate::BULK_FOR`] after
/// its consumer last had more than [`crate::BULK_AFTER`] events waiting.
#[derive(Default)]
pub(crate) struct Backlogs {
    /// Tenant -> (bulk until, when its backlog was last logged).
    state: std::sync::Mutex<HashMap<String, (Instant, Instant)>>,
}

/// A tenant going to the bulk lanes is logged at most this often.
const BACKLOG_LOG_EVERY: Duration = Duration::from_secs(60);

impl Backlogs {
    /// Whether `tenant`'s deliveries go to the bulk lanes, now that its consumer has
    /// `pending` events waiting behind the one in hand.
    pub(crate) fn bulk(&self, tenant: &str, pending: u64) -> bool {
        if pending <= crate::BULK_AFTER {
            return self.is_bulk(tenant);
        }
        let now = Instant::now();
        let mut state = self.lock();
        let until = now + crate::BULK_FOR;
        match state.get_mut(tenant) {
            Some((was, logged)) => {
                if *was <= now && now.duration_since(*logged) >= BACKLOG_LOG_EVERY {
                    *logged = now;
                    log_backlog(tenant, pending);
                }
                *was = until;
            }
            None => {
                if state.len() >= 1024 {
                    state.retain(|_, (until, logged)| {
                        *until > now || now.duration_since(*logged) < BACKLOG_LOG_EVERY
                    });
                }
                state.insert(tenant.to_owned(), (until, now));
                log_backlog(tenant, pending);
            }
        }
        true
    }

    /// Whether `tenant`'s deliveries go to the bulk lanes now.
    pub(crate) fn is_bulk(&self, tenant: &str) -> bool {
        self.lock()
            .get(tenant)
            .is_some_and(|(until, _)| *until > Instant::now())
    }

    /// Keeps `tenant`'s backlog status while it is held back (it routes nothing meanwhile,
    /// so nothing else would).
    pub(crate) fn keep(&self, tenant: &str) {
        if let Some((until, _)) = self.lock().get_mut(tenant) {
            let now = Instant::now();
            if *until > now {
                *until = (*until).max(now + crate::BULK_FOR);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Instant)>> {
        // Nothing panics while holding it; recover the data if something ever did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn log_backlog(tenant: &str, pending: u64) {
    info!(
        tenant,
        pending,
        "A tenant has a backlog: its deliveries go to the bulk lanes, taking what other tenants' leave free, until it has caught up."
    );
}
