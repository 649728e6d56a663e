//! What a tenant's jq filters may spend of a router. Each event's filters share one budget
//! ([`gancho_jq::FILTER_BUDGET`] operations), but a budget spent on every event still costs
//! the router about 10 ms of CPU each (`def f: f; f`, measured): at 100 events a second, a
//! core. So each tenant also has a bucket of operations, refilled at [`RATE`] a second up to
//! [`BURST`]; an event whose endpoints have filters is routed only when its tenant's bucket
//! holds a whole event's budget, and is otherwise handed back to wait for the refill. A
//! tenant whose filters spend their budget on every event then routes about ten events a
//! second per router, while its other events wait in its own consumer (nothing is dropped)
//! and the other tenants' events go on; filters that cost tens of operations never wait.

use gancho_jq::FILTER_BUDGET;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Operations a tenant's filters may spend a second, in each router: about a tenth of a core.
pub const RATE: f64 = 2_000_000.0;
/// Most a tenant's bucket holds: five events' whole budgets.
pub const BURST: f64 = 5.0 * FILTER_BUDGET as f64;
/// Tenants tracked at most; past it, the full buckets are forgotten (a full bucket is what a
/// tenant not tracked gets).
const MAX_TENANTS: usize = 10_000;

struct Bucket {
    ops: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.ops = (self.ops + elapsed * RATE).min(BURST);
        self.at = now;
    }
}

#[derive(Default)]
pub(crate) struct Spend(Mutex<HashMap<String, Bucket>>);

impl Spend {
    /// `Ok` when `tenant` may run an event's filters now, else how long to wait.
    pub fn may_start(&self, tenant: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = map.get_mut(tenant) else {
            return Ok(());
        };
        bucket.refill(now);
        let need = FILTER_BUDGET as f64;
        if bucket.ops >= need {
            return Ok(());
        }
        Err(Duration::from_secs_f64((need - bucket.ops) / RATE).max(Duration::from_millis(50)))
    }

    /// Takes what an event's filters spent from `tenant`'s bucket.
    pub fn spent(&self, tenant: &str, ops: u64) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TENANTS && !map.contains_key(tenant) {
            map.retain(|_, b| {
                b.refill(now);
                b.ops < BURST
            });
        }
        let bucket = map.entry(tenant.to_owned()).or_insert(Bucket {
            ops: BURST,
            at: now,
        });
        bucket.refill(now);
        bucket.ops -= ops as f64;
    }

    /// Tenants tracked now.
    pub fn entries(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_that_spends_whole_budgets_waits_and_cheap_filters_never_do() {
        let spend = Spend::default();
        for _ in 0..10_000 {
            assert_eq!(spend.may_start("cheap"), Ok(()));
            spend.spent("cheap", 14);
        }
        for _ in 0..5 {
            assert_eq!(spend.may_start("rogue"), Ok(()));
            spend.spent("rogue", FILTER_BUDGET);
        }
        let wait = spend.may_start("rogue").unwrap_err();
        // A whole budget's refill: 0.1 s at 2,000,000 a second.
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert_eq!(spend.may_start("cheap"), Ok(()));
        assert_eq!(spend.may_start("other"), Ok(()));
        assert_eq!(spend.entries(), 2);
    }
}
