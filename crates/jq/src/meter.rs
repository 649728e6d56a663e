//! The bounds of one run, kept from inside: every value operation, every copy of a value and
//! every call of a definition ticks a per-thread counter, and every tick checks what is
//! left of the thread's stack. Past the budget or the stack's floor the run is cut off by
//! a panic carrying a [`Cutoff`], which [`metered`] catches: jaq's evaluation cannot be
//! stopped otherwise (`def f: f; f` loops without yielding, `def f: [f]; f` recurses on the
//! Rust stack), and a `try` in the program cannot catch a panic.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Once;

/// Why a run was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cutoff {
    /// It ran past its operation budget.
    Ops,
    /// It recursed deeper than its stack allows.
    Depth,
    /// It built a value larger (or more deeply nested) than a value may be.
    Size,
}

impl Cutoff {
    /// The `reason` label of `gancho_filter_failures_total` and of the errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ops => "budget",
            Self::Depth => "depth",
            Self::Size => "size",
        }
    }
}

impl std::fmt::Display for Cutoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ops => "cut off: the program ran past its operation budget",
            Self::Depth => "cut off: the program recursed too deep",
            Self::Size => "cut off: the program built a value larger than 1 MiB or nested deeper than 512 levels",
        })
    }
}

/// Stack a run may use below where it starts, and the least it leaves free: between two
/// ticks the evaluation descends at most as deep as the program's own nesting, which
/// [`crate::program`] bounds.
const RUN_STACK: usize = 1 << 20;
const STACK_FLOOR: usize = 192 << 10;
/// A run starts on a fresh stack of this size when less than [`RUN_STACK`] is left.
const FRESH_STACK: usize = 4 << 20;

#[derive(Clone, Copy)]
struct Meter {
    on: bool,
    left: u64,
}

thread_local! {
    static METER: Cell<Meter> = const { Cell::new(Meter { on: false, left: 0 }) };
}

/// Counts `n` operations of the run on this thread (none outside a run), and checks the
/// stack.
#[inline]
pub(crate) fn tick(n: u64) {
    let mut meter = METER.with(Cell::get);
    if !meter.on {
        return;
    }
    if meter.left < n {
        cut(Cutoff::Ops);
    }
    meter.left -= n;
    METER.with(|m| m.set(meter));
    if stacker::remaining_stack().is_some_and(|left| left < STACK_FLOOR) {
        cut(Cutoff::Depth);
    }
}

/// Ends the run on this thread.
pub(crate) fn cut(why: Cutoff) -> ! {
    std::panic::panic_any(why)
}

/// Runs `f` with `budget` operations (what it does not use is left in `budget`). A panic
/// other than a cutoff (a fault of the engine) is not ours to end the role with: it is
/// reported as an error too.
pub(crate) fn metered<T>(budget: &mut u64, f: impl FnOnce() -> T) -> Result<T, Failure> {
    quiet_cutoffs();
    if METER.with(Cell::get).on {
        // Already inside a run: its meter counts this too.
        return Ok(f());
    }
    let start = *budget;
    let result = stacker::maybe_grow(RUN_STACK, FRESH_STACK, || {
        METER.with(|m| {
            m.set(Meter {
                on: true,
                left: start,
            })
        });
        let result = catch_unwind(AssertUnwindSafe(f));
        let left = METER.with(|m| m.replace(Meter { on: false, left: 0 })).left;
        (result, left)
    });
    let (result, left) = result;
    *budget = left;
    result.map_err(|panic| match panic.downcast::<Cutoff>() {
        Ok(cutoff) => Failure::Cutoff(*cutoff),
        Err(other) => match other.downcast::<String>() {
            Ok(message) => Failure::Engine(*message),
            Err(other) => match other.downcast::<&'static str>() {
                Ok(message) => Failure::Engine((*message).to_owned()),
                Err(other) => resume_unwind(other),
            },
        },
    })
}

/// How a run ended without a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    Cutoff(Cutoff),
    Engine(String),
}

/// Cutoffs are how a run ends, not faults: the panic hook says nothing of them.
fn quiet_cutoffs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Cutoff>().is_none() {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_cut_at_its_budget_and_what_is_left_is_given_back() {
        let mut budget = 10;
        assert_eq!(metered(&mut budget, || tick(4)), Ok(()));
        assert_eq!(budget, 6);
        assert_eq!(
            metered(&mut budget, || loop {
                tick(1)
            }),
            Err(Failure::Cutoff(Cutoff::Ops))
        );
        assert_eq!(budget, 0);
        // Outside a run nothing is counted.
        tick(1_000);
    }

    #[test]
    fn deep_recursion_is_cut_before_the_stack_ends() {
        fn down(n: u64) -> u64 {
            tick(1);
            if n == u64::MAX {
                return n;
            }
            let pad = [n; 64];
            down(n + 1) + std::hint::black_box(pad)[3]
        }
        let mut budget = u64::MAX;
        assert_eq!(
            metered(&mut budget, || down(0)),
            Err(Failure::Cutoff(Cutoff::Depth))
        );
    }
}
