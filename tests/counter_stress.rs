//! Counter stress: many threads hammering one counter, then an exact check of the outcome.
//!
//! - `AtomicCounter` and `ShardedCounter`: no increment is lost across 4 threads.
//! - `AtomicCounter::try_add_within`: 4 threads admitting and releasing never push the value past
//!   the limit.

use latchless::counter::{AtomicCounter, ShardedCounter};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

const COUNTER_THREADS: usize = 4;
const COUNTER_OPS: u64 = if cfg!(miri) { 500 } else { 200_000 };

#[test]
fn atomic_counter_loses_no_update() {
    let c = AtomicCounter::new(0);
    thread::scope(|s| {
        for t in 0..COUNTER_THREADS as u64 {
            let c = &c;
            s.spawn(move || {
                for i in 0..COUNTER_OPS {
                    if i % 2 == 0 {
                        c.increment();
                    } else {
                        // Threads add different amounts, so a lost add shows in the total.
                        c.add(t + 1);
                    }
                }
            });
        }
    });
    let half = COUNTER_OPS / 2;
    let expected: u64 = (0..COUNTER_THREADS as u64)
        .map(|t| half + half * (t + 1))
        .sum();
    assert_eq!(c.get(), expected);
}

#[test]
fn sharded_counter_loses_no_update() {
    // One cell (all threads share it), fewer cells than threads, and the default.
    for c in [
        ShardedCounter::with_shards(1),
        ShardedCounter::with_shards(2),
        ShardedCounter::new(),
    ] {
        thread::scope(|s| {
            for t in 0..COUNTER_THREADS as u64 {
                let c = &c;
                s.spawn(move || {
                    for i in 0..COUNTER_OPS {
                        if i % 2 == 0 {
                            c.increment();
                        } else {
                            c.add(t + 1);
                        }
                    }
                });
            }
        });
        let half = COUNTER_OPS / 2;
        let expected: u64 = (0..COUNTER_THREADS as u64)
            .map(|t| half + half * (t + 1))
            .sum();
        assert_eq!(c.sum(), expected, "with {} shards", c.shards());
    }
}

#[test]
fn try_add_within_never_passes_the_limit() {
    const LIMIT: u64 = 10;
    let in_flight = AtomicCounter::new(0);
    // Incremented only after an admission and decremented before its release, so it never
    // exceeds the counter: an independent witness that the limit held.
    let witness = AtomicUsize::new(0);
    let admitted = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    thread::scope(|s| {
        for t in 0..COUNTER_THREADS as u64 {
            let (in_flight, witness, admitted, refused) =
                (&in_flight, &witness, &admitted, &refused);
            s.spawn(move || {
                for i in 0..COUNTER_OPS {
                    // Requests of 1 to 4 units, varying by thread and iteration.
                    let n = (t + i) % 4 + 1;
                    match in_flight.try_add_within(n, LIMIT) {
                        Ok(prev) => {
                            assert!(prev + n <= LIMIT, "admitted {n} on top of {prev}");
                            assert!(in_flight.get() <= LIMIT, "value passed the limit");
                            let now = witness.fetch_add(n as usize, Ordering::SeqCst) + n as usize;
                            assert!(now as u64 <= LIMIT, "{now} units held at once");
                            admitted.fetch_add(1, Ordering::Relaxed);
                            witness.fetch_sub(n as usize, Ordering::SeqCst);
                            // We hold `n` units, so taking them back must succeed.
                            let before = in_flight.try_sub(n);
                            assert!(
                                matches!(before, Ok(v) if v >= n),
                                "release of {n} failed: {before:?}"
                            );
                        }
                        Err(current) => {
                            assert!(current + n > LIMIT, "refused {n} with only {current} held");
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(in_flight.get(), 0, "every admission was released");
    assert_eq!(
        admitted.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed),
        COUNTER_THREADS * COUNTER_OPS as usize
    );
    assert!(admitted.load(Ordering::Relaxed) > 0);

    // Without releases, the value fills up to the limit and stays there.
    let filled = AtomicCounter::new(0);
    thread::scope(|s| {
        for _ in 0..COUNTER_THREADS {
            s.spawn(|| {
                for _ in 0..COUNTER_OPS / 100 + 10 {
                    if filled.try_add_within(3, 100).is_ok() {
                        assert!(filled.get() <= 100, "value passed the limit");
                    }
                }
            });
        }
    });
    assert_eq!(filled.get(), 99, "33 admissions of 3 fit below 100");
}
