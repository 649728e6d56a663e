//! Metric handles made once and kept, for the metrics every delivery updates.
//!
//! `metrics::counter!(name, labels...)` builds the metric's key on every call (its labels in
//! a fresh allocation), hashes it and looks it up in the recorder's registry: about 4 % of a
//! worker's CPU at fan-out 100 went there (perf, BENCHMARKS.md). A kept handle is that
//! lookup's answer, made the first time and used from then on.
//!
//! A handle is kept only once the process's recorder is installed ([`crate::install`]): one
//! made before would update nothing, for good. Until then each use makes a handle afresh, as
//! the macros do. The recorder keeps every series for the life of the process (no idle
//! timeout), so a kept handle never outlives its series.

use std::sync::OnceLock;

/// `N` handles of one metric, each for one combination of its labels, by index.
pub struct Kept<T, const N: usize>([OnceLock<T>; N]);

impl<T, const N: usize> Kept<T, N> {
    pub const fn new() -> Self {
        Self([const { OnceLock::new() }; N])
    }

    /// Calls `f` with handle `i`, made by `make` the first time. `make` is called every time
    /// before the recorder is installed, or when `i` is not below `N`.
    pub fn with<R>(&self, i: usize, make: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
        match self.0.get(i) {
            Some(slot) if crate::installed() => f(slot.get_or_init(make)),
            _ => f(&make()),
        }
    }
}

impl<T, const N: usize> Default for Kept<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Up to `N` handles of one metric, by one label's `'static` value (a role's name): the
/// first `N` values seen are kept, any later one is made afresh each time.
pub struct KeptBy<T, const N: usize>([OnceLock<(&'static str, T)>; N]);

impl<T, const N: usize> KeptBy<T, N> {
    pub const fn new() -> Self {
        Self([const { OnceLock::new() }; N])
    }

    /// Calls `f` with the handle for `value`, made by `make` the first time.
    pub fn with<R>(&self, value: &'static str, make: impl Fn() -> T, f: impl FnOnce(&T) -> R) -> R {
        if crate::installed() {
            for slot in &self.0 {
                let (kept, handle) = slot.get_or_init(|| (value, make()));
                if *kept == value {
                    return f(handle);
                }
            }
        }
        f(&make())
    }
}

impl<T, const N: usize> Default for KeptBy<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn handles_are_made_afresh_until_the_recorder_is_installed_then_kept() {
        static KEPT: Kept<usize, 4> = Kept::new();
        static BY: KeptBy<usize, 2> = KeptBy::new();
        let made = AtomicUsize::new(0);
        let make = || made.fetch_add(1, Ordering::Relaxed);
        // Before: every use makes one, and none is kept.
        if !crate::installed() {
            KEPT.with(1, make, |_| ());
            KEPT.with(1, make, |_| ());
            assert_eq!(made.load(Ordering::Relaxed), 2);
            crate::install();
        }
        let before = made.load(Ordering::Relaxed);
        let first = KEPT.with(1, make, |h| *h);
        assert_eq!(KEPT.with(1, make, |h| *h), first, "slot 1 is kept");
        assert_ne!(KEPT.with(2, make, |h| *h), first, "slot 2 is its own");
        assert_eq!(made.load(Ordering::Relaxed), before + 2);
        // Past the last slot: made each time.
        KEPT.with(4, make, |_| ());
        KEPT.with(4, make, |_| ());
        assert_eq!(made.load(Ordering::Relaxed), before + 4);
        // By value: the first two values are kept, a third is made each time.
        let worker = BY.with("worker", make, |h| *h);
        let router = BY.with("router", make, |h| *h);
        assert_ne!(worker, router);
        assert_eq!(BY.with("worker", make, |h| *h), worker);
        assert_eq!(BY.with("router", make, |h| *h), router);
        let api = BY.with("api", make, |h| *h);
        assert_ne!(BY.with("api", make, |h| *h), api);
    }
}
