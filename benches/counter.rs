//! criterion benches of [`latchless::counter`]'s `AtomicCounter::increment` and
//! `ShardedCounter::increment` against `AtomicU64::fetch_add(1, Relaxed)` and `Mutex<u64>`.
//!
//! Groups `counter/increment/{1,2,4}t`: that many threads increment one counter (4 threads
//! oversubscribe a 2-core machine on purpose). One iteration is [`ELEMS`] increments split
//! between the threads (`Throughput::Elements`). Threads are spawned once per sample, released by
//! a barrier, and timed from the first worker's start to the last one's end. These are
//! wall-clock numbers for development; the README's ratios come from the interleaving harness in
//! `benches/compare.rs`.
//!
//! ```text
//! cargo bench --bench counter
//! cargo bench --bench counter -- counter/increment/2t   # one group
//! ```

use criterion::{criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup};
use criterion::{Criterion, Throughput};
use latchless::counter::{AtomicCounter, ShardedCounter};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Barrier, Mutex,
};
use std::thread;
use std::time::{Duration, Instant};

/// Increments per iteration, over all threads.
const ELEMS: u64 = 10_000;

/// A counter under test.
trait BenchCounter: Sync {
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

/// `iters` iterations on a fresh `C`: `threads` workers share `iters * ELEMS` increments.
/// Returns the time from the first worker's start to the last one's end.
fn run<C: BenchCounter>(threads: u64, iters: u64) -> Duration {
    let c = C::make();
    let total = iters * ELEMS;
    let barrier = Barrier::new(usize::try_from(threads).expect("a few threads"));
    let elapsed = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (c, barrier) = (&c, &barrier);
                let n = total * (i + 1) / threads - total * i / threads;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..n {
                        c.increment();
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        let times: Vec<(Instant, Instant)> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        let first = times.iter().map(|t| t.0).min();
        let last = times.iter().map(|t| t.1).max();
        last.zip(first)
            .map_or(Duration::ZERO, |(last, first)| last - first)
    });
    assert_eq!(c.total(), total, "increments lost");
    elapsed
}

/// Adds contender `C` to `group` under `id`.
fn contender<C: BenchCounter>(group: &mut BenchmarkGroup<'_, WallTime>, id: &str, threads: u64) {
    group.bench_function(id, |b| b.iter_custom(|iters| run::<C>(threads, iters)));
}

fn counters(c: &mut Criterion) {
    for threads in [1u64, 2, 4] {
        let mut g = c.benchmark_group(format!("counter/increment/{threads}t"));
        g.throughput(Throughput::Elements(ELEMS))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        contender::<AtomicCounter>(&mut g, "latchless_AtomicCounter", threads);
        contender::<ShardedCounter>(&mut g, "latchless_ShardedCounter", threads);
        contender::<AtomicU64>(&mut g, "AtomicU64_fetch_add", threads);
        contender::<Mutex<u64>>(&mut g, "Mutex_u64", threads);
        g.finish();
    }
}

criterion_group!(benches, counters);
criterion_main!(benches);
