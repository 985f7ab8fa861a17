//! The counter contenders of `benches/counter.rs` and `benches/compare.rs`: latchless's
//! `AtomicCounter` and `ShardedCounter`, `AtomicU64::fetch_add(1, Relaxed)` and `Mutex<u64>`,
//! behind [`BenchCounter`], and one measured run of them.

use super::workers::{run_workers, share_len, Sample};
use latchless::counter::{AtomicCounter, ShardedCounter};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

/// A counter under test.
pub(crate) trait BenchCounter: Sync {
    fn make() -> Self;
    fn increment(&self);
    fn total(&self) -> u64;
}

impl BenchCounter for AtomicCounter {
    fn make() -> Self {
        AtomicCounter::new(0)
    }
    fn increment(&self) {
        AtomicCounter::increment(self);
    }
    fn total(&self) -> u64 {
        self.get()
    }
}

impl BenchCounter for ShardedCounter {
    fn make() -> Self {
        ShardedCounter::new()
    }
    fn increment(&self) {
        ShardedCounter::increment(self);
    }
    fn total(&self) -> u64 {
        self.sum()
    }
}

impl BenchCounter for AtomicU64 {
    fn make() -> Self {
        AtomicU64::new(0)
    }
    fn increment(&self) {
        // Relaxed: what a user counting events would write; nothing is published through it.
        self.fetch_add(1, Ordering::Relaxed);
    }
    fn total(&self) -> u64 {
        // Relaxed: read after the workers were joined, which already synchronised with them.
        self.load(Ordering::Relaxed)
    }
}

impl BenchCounter for Mutex<u64> {
    fn make() -> Self {
        Mutex::new(0)
    }
    fn increment(&self) {
        *self.lock().unwrap() += 1;
    }
    fn total(&self) -> u64 {
        *self.lock().unwrap()
    }
}

/// One run on a fresh `C`: `threads` workers share `ops` increments. Checks that none was lost.
pub(crate) fn run<C: BenchCounter>(threads: u64, ops: u64) -> Sample {
    let c = C::make();
    let c = &c;
    let jobs: Vec<_> = (0..threads)
        .map(|i| {
            let n = share_len(ops, threads, i);
            move || {
                for _ in 0..n {
                    c.increment();
                }
            }
        })
        .collect();
    let (sample, _) = run_workers(jobs);
    assert_eq!(c.total(), ops, "increments lost");
    sample
}
