//! criterion benches of [`latchless::counter`]'s `AtomicCounter::increment` and
//! `ShardedCounter::increment` against `AtomicU64::fetch_add(1, Relaxed)` and `Mutex<u64>`.
//!
//! Groups `counter/increment/{1,2,4}t`: that many threads increment one counter (4 threads
//! oversubscribe a 2-core machine on purpose). One iteration is [`ELEMS`] increments split
//! between the threads (`Throughput::Elements`). Threads are spawned once per sample, released by
//! a barrier, and timed from the first worker's start to the last one's end. These are
//! wall-clock numbers for development; BENCHMARKS.md's ratios come from the interleaving harness in
//! `benches/compare.rs`. The contenders and the run are in `benches/common/`, shared with it.
//!
//! ```text
//! cargo bench --bench counter
//! cargo bench --bench counter -- counter/increment/2t   # one group
//! ```

#[allow(dead_code)]
mod common;

use common::counters::BenchCounter;
use criterion::{criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup};
use criterion::{Criterion, Throughput};
use latchless::counter::{AtomicCounter, ShardedCounter};
use std::sync::{atomic::AtomicU64, Mutex};
use std::time::Duration;

/// Increments per iteration, over all threads.
const ELEMS: u64 = 10_000;

/// Adds contender `C` to `group` under `id`.
fn contender<C: BenchCounter>(group: &mut BenchmarkGroup<'_, WallTime>, id: &str, threads: u64) {
    // `iters` iterations on a fresh `C`: `threads` workers share `iters * ELEMS` increments.
    group.bench_function(id, |b| {
        b.iter_custom(|iters| common::counters::run::<C>(threads, iters * ELEMS).wall)
    });
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
