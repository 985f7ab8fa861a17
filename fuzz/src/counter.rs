//! The `counter` target: [`AtomicCounter`] against a `u64`, and [`ShardedCounter`] against a
//! wrapping sum, with the semantics documented in `latchless::counter`:
//!
//! - `add`/`increment` return the previous value and wrap past `u64::MAX`;
//! - `sub`/`decrement` return the previous value and saturate at zero;
//! - `try_sub(n)` is `Ok(previous)` and subtracts when the value is at least `n`, else
//!   `Err(current)` with the value unchanged;
//! - `try_add_within(n, limit)` is `Ok(previous)` and adds when `value + n <= limit` without
//!   overflow, else `Err(current)` with the value unchanged;
//! - `ShardedCounter::with_shards(s)` has `s` clamped to `1..=256` and rounded up to a power of
//!   two cells; `sum` is the wrapping sum of every `add`, including adds from other threads once
//!   they are joined.
//!
//! Amounts are decoded so that the boundaries are easy to reach: small numbers, any `u64`, just
//! below `u64::MAX`, and the model's current value plus or minus a little.

use arbitrary::{Arbitrary, Unstructured};
use latchless::counter::{AtomicCounter, ShardedCounter};

/// At most this many operations per input.
const MAX_OPS: usize = 2_000;
/// At most this many adds on a freshly spawned thread per input (each spawns one).
const MAX_THREADS: usize = 4;

/// An amount, relative to the model's current value where that helps reach a boundary.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Amount {
    Small(u8),
    Any(u64),
    /// `u64::MAX - n`.
    BelowMax(u8),
    /// The model's current value plus this (wrapping).
    CurrentPlus(i8),
}

impl Amount {
    fn resolve(self, current: u64) -> u64 {
        match self {
            Amount::Small(n) => u64::from(n),
            Amount::Any(n) => n,
            Amount::BelowMax(n) => u64::MAX - u64::from(n),
            Amount::CurrentPlus(d) => current.wrapping_add_signed(i64::from(d)),
        }
    }
}

/// One step, decoded from the fuzzer's bytes.
#[derive(Arbitrary, Debug)]
enum Op {
    Get,
    Add(Amount),
    Increment,
    Sub(Amount),
    Decrement,
    TrySub(Amount),
    TryAddBelow(Amount, Amount),
    Debug,
    ShardedAdd(Amount),
    ShardedIncrement,
    ShardedSum,
    /// Adds from a new thread (a new stripe), joined before the step ends.
    ShardedAddOnThread(Amount),
    /// Replaces the sharded counter with `with_shards(n)` and a zero model.
    ShardedReset(u16),
}

/// Runs one input: an initial value and shard count, then operations until the bytes run out (or
/// `MAX_OPS`). Returns the number of steps run; panics at the first disagreement with the model.
pub fn run(data: &[u8]) -> usize {
    let mut u = Unstructured::new(data);
    let Ok((initial, shards)) = <(Amount, u16)>::arbitrary(&mut u) else {
        return 0;
    };
    let mut model = initial.resolve(0);
    let counter = AtomicCounter::new(model);
    let mut sharded = new_sharded(shards);
    let mut sharded_model = 0u64;
    let mut threads = 0;
    let mut step = 0;
    while step < MAX_OPS && !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        let m = model;
        match op {
            Op::Get => {}
            Op::Add(a) => {
                let n = a.resolve(m);
                assert_eq!(
                    counter.add(n),
                    m,
                    "step {step}: {op:?}: add returns the previous value"
                );
                model = m.wrapping_add(n);
            }
            Op::Increment => {
                assert_eq!(counter.increment(), m, "step {step}: increment");
                model = m.wrapping_add(1);
            }
            Op::Sub(a) => {
                let n = a.resolve(m);
                assert_eq!(
                    counter.sub(n),
                    m,
                    "step {step}: {op:?}: sub returns the previous value"
                );
                model = m.saturating_sub(n);
            }
            Op::Decrement => {
                assert_eq!(counter.decrement(), m, "step {step}: decrement");
                model = m.saturating_sub(1);
            }
            Op::TrySub(a) => {
                let n = a.resolve(m);
                let want = if m >= n { Ok(m) } else { Err(m) };
                assert_eq!(
                    counter.try_sub(n),
                    want,
                    "step {step}: {op:?} (n = {n}, value {m})"
                );
                if want.is_ok() {
                    model = m - n;
                }
            }
            Op::TryAddBelow(a, l) => {
                let (n, limit) = (a.resolve(m), l.resolve(m));
                let next = m.checked_add(n).filter(|&next| next <= limit);
                let want = if next.is_some() { Ok(m) } else { Err(m) };
                assert_eq!(
                    counter.try_add_within(n, limit),
                    want,
                    "step {step}: {op:?} (n = {n}, limit {limit}, value {m})"
                );
                model = next.unwrap_or(m);
            }
            Op::Debug => assert_eq!(
                format!("{counter:?}"),
                format!("AtomicCounter {{ value: {m} }}"),
                "step {step}: Debug"
            ),
            Op::ShardedAdd(a) => {
                let n = a.resolve(sharded_model);
                sharded.add(n);
                sharded_model = sharded_model.wrapping_add(n);
            }
            Op::ShardedIncrement => {
                sharded.increment();
                sharded_model = sharded_model.wrapping_add(1);
            }
            Op::ShardedSum => {}
            Op::ShardedAddOnThread(a) => {
                if threads < MAX_THREADS {
                    threads += 1;
                    let n = a.resolve(sharded_model);
                    // Joined explicitly: a scope's implicit wait returns before the thread has
                    // run its thread-local destructors, and LeakSanitizer, checking right after
                    // the input, would then report glibc's record of them as leaked.
                    std::thread::scope(|s| s.spawn(|| sharded.add(n)).join())
                        .expect("the adding thread panicked");
                    sharded_model = sharded_model.wrapping_add(n);
                }
            }
            Op::ShardedReset(s) => {
                sharded = new_sharded(s);
                sharded_model = 0;
            }
        }
        assert_eq!(
            counter.get(),
            model,
            "step {step}: {op:?}: value after the step"
        );
        assert_eq!(
            sharded.sum(),
            sharded_model,
            "step {step}: {op:?}: sharded sum"
        );
        step += 1;
    }
    step
}

/// A sharded counter with `s % 300` requested cells (beyond the 256 clamp), checking the count.
fn new_sharded(s: u16) -> ShardedCounter {
    let requested = usize::from(s % 300);
    let c = ShardedCounter::with_shards(requested);
    let want = requested.clamp(1, 256).next_power_of_two();
    assert_eq!(c.shards(), want, "with_shards({requested})");
    assert_eq!(c.sum(), 0, "a new sharded counter sums to 0");
    c
}
