//! criterion benches of [`latchless::cache::Cache`] against the caches a user would pick
//! instead: `moka::sync::Cache`, `quick_cache::sync::Cache` and `Mutex<lru::LruCache>`.
//!
//! Groups are named after the workload:
//!
//! - `cache/get_insert_90_10/1t`, `cache/get_insert_90_10/2t`: one or two threads, each doing
//!   90% `get` and 10% `insert`;
//! - `cache/get_100/1t`: one thread doing `get` only.
//!
//! Keys follow Zipf(0.99) over 100,000 keys; each cache holds 10,000 entries, built with the
//! library's defaults and prefilled with the 10,000 most frequent keys once per contender, then
//! shared by that contender's samples. Each thread cycles through its own pre-generated op
//! stream (generated once, outside every measurement). One iteration is [`ELEMS`] ops shared by
//! the threads (`Throughput::Elements`); threads are spawned once per sample, released by a
//! barrier, and timed from the first worker's start to the last one's end. These are wall-clock
//! numbers for development; BENCHMARKS.md's ratios come from the interleaving harness in
//! `benches/cache_compare.rs`. The contenders and the worker runner are in `benches/common/`,
//! shared with it.
//!
//! ```text
//! cargo bench --bench cache
//! cargo bench --bench cache -- cache/get_100/1t   # one group
//! ```

#[allow(dead_code)]
mod common;

use common::caches::BenchCache;
use common::workers::{run_workers, share_len};
use criterion::{criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup};
use criterion::{Criterion, Throughput};
use latchless::cache::Cache;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

/// Ops per iteration, shared by the threads.
const ELEMS: u64 = 1000;
/// Keys drawn: `0..KEYS`, key `r - 1` being the `r`-th most frequent.
const KEYS: u64 = 100_000;
/// The Zipf exponent.
const ZIPF_S: f64 = 0.99;
/// Entries each cache holds.
const CAPACITY: u64 = 10_000;
/// Ops in each thread's stream (a power of two: the index wraps with a mask).
const STREAM_LEN: usize = 1 << 20;
/// Marks an op as an insert; the key is in the low bits.
const INSERT_BIT: u64 = 1 << 63;

/// [`STREAM_LEN`] ops for one thread: Zipf keys, `insert_percent`% of them inserts.
fn op_stream(insert_percent: u64, seed: u64) -> Vec<u64> {
    let zipf = Zipf::new(KEYS as f64, ZIPF_S).expect("valid Zipf parameters");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..STREAM_LEN)
        .map(|_| {
            // The sample is an integer-valued float in `1..=KEYS`.
            let key = zipf.sample(&mut rng) as u64 - 1;
            if rng.random_range(0..100) < insert_percent {
                key | INSERT_BIT
            } else {
                key
            }
        })
        .collect()
}

/// Runs `n` ops of `stream` from position `pos` (wrapping) against `cache`.
fn work<C: BenchCache>(cache: &C, stream: &[u64], pos: usize, n: u64) {
    let mut local = cache.local();
    let mask = stream.len() - 1;
    let mut i = pos;
    for _ in 0..n {
        let op = stream[i & mask];
        i = i.wrapping_add(1);
        let key = op & !INSERT_BIT;
        if op & INSERT_BIT == 0 {
            black_box(cache.get(&mut local, key));
        } else {
            cache.insert(&mut local, key, key);
        }
    }
}

/// Adds contender `C` to `group` under `id`: a cache made and prefilled once, then `iters *
/// ELEMS` ops per sample shared by one thread per stream.
fn contender<C: BenchCache>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    streams: &[Vec<u64>],
) {
    let cache = C::make(CAPACITY);
    {
        let mut local = cache.local();
        for key in 0..CAPACITY {
            cache.insert(&mut local, key, key);
        }
    }
    cache.settle();
    let cache = &cache;
    let threads = streams.len() as u64;
    // Where each thread resumes in its stream, so consecutive samples do not replay the same ops.
    let mut pos = 0usize;
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let total = iters * ELEMS;
            let jobs: Vec<_> = streams
                .iter()
                .enumerate()
                .map(|(i, stream)| {
                    let n = share_len(total, threads, i as u64);
                    let start = pos;
                    move || work(cache, stream, start, n)
                })
                .collect();
            pos = pos.wrapping_add(usize::try_from(total / threads).unwrap_or(0));
            run_workers(jobs).0.wall
        });
    });
}

fn caches(c: &mut Criterion) {
    let groups = [
        ("cache/get_insert_90_10/1t", 1, 10),
        ("cache/get_insert_90_10/2t", 2, 10),
        ("cache/get_100/1t", 1, 0),
    ];
    for (name, threads, insert_percent) in groups {
        let streams: Vec<Vec<u64>> = (0..threads)
            .map(|i| op_stream(insert_percent, 0x7E57_0000 + i))
            .collect();
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(ELEMS))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        contender::<Cache<u64, u64>>(&mut g, "latchless_Cache", &streams);
        contender::<moka::sync::Cache<u64, u64>>(&mut g, "moka_sync_Cache", &streams);
        contender::<quick_cache::sync::Cache<u64, u64>>(&mut g, "quick_cache_sync_Cache", &streams);
        contender::<Mutex<lru::LruCache<u64, u64>>>(&mut g, "Mutex_LruCache", &streams);
        g.finish();
    }
}

criterion_group!(benches, caches);
criterion_main!(benches);
