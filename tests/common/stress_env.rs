//! Sizing of the stress tests from the environment: `LATCHLESS_STRESS_N`, the total work of a
//! stress test (values, operations or requests). Shared by `tests/queue_stress.rs`,
//! `tests/cache_stress.rs` and `tests/batch.rs`, each of which includes this file as a module.

use std::fmt::Display;
use std::str::FromStr;

/// `LATCHLESS_STRESS_N` (underscores allowed, as in `1_000_000`), or `default` when it is unset.
/// Panics if it is set but not a count.
pub(crate) fn stress_n<T>(default: T) -> T
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var("LATCHLESS_STRESS_N") {
        Ok(s) => s
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|e| panic!("LATCHLESS_STRESS_N={s:?} is not a count: {e}")),
        Err(_) => default,
    }
}

/// [`stress_n`]`(default)` rounded down to a multiple of `parts` (the threads sharing the work),
/// which must leave at least `parts`.
pub(crate) fn stress_n_split(default: usize, parts: usize) -> usize {
    let n = stress_n(default) / parts * parts;
    assert!(n > 0, "LATCHLESS_STRESS_N must be at least {parts}");
    n
}
