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
//! numbers for development; the README's ratios come from the interleaving harness in
//! `benches/cache_compare.rs`.
//!
//! ```text
//! cargo bench --bench cache
//! cargo bench --bench cache -- cache/get_100/1t   # one group
//! ```

use criterion::{criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup};
use criterion::{Criterion, Throughput};
use latchless::cache::Cache;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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

/// A cache under test.
trait BenchCache: Sync {
    /// A cache of `capacity` entries with the library's default settings.
    fn make(capacity: u64) -> Self;
    fn get(&self, key: u64) -> Option<u64>;
    fn insert(&self, key: u64, value: u64);
    /// Brings the cache to a steady state after the prefill (moka: apply pending evictions).
    fn settle(&self) {}
}

impl BenchCache for Cache<u64, u64> {
    fn make(capacity: u64) -> Self {
        Cache::new(capacity)
    }
    fn get(&self, key: u64) -> Option<u64> {
        Cache::get(self, &key)
    }
    fn insert(&self, key: u64, value: u64) {
        Cache::insert(self, key, value);
    }
}

impl BenchCache for moka::sync::Cache<u64, u64> {
    fn make(capacity: u64) -> Self {
        moka::sync::Cache::new(capacity)
    }
    fn get(&self, key: u64) -> Option<u64> {
        moka::sync::Cache::get(self, &key)
    }
    fn insert(&self, key: u64, value: u64) {
        moka::sync::Cache::insert(self, key, value);
    }
    fn settle(&self) {
        self.run_pending_tasks();
    }
}

impl BenchCache for quick_cache::sync::Cache<u64, u64> {
    fn make(capacity: u64) -> Self {
        quick_cache::sync::Cache::new(usize::try_from(capacity).expect("capacity fits usize"))
    }
    fn get(&self, key: u64) -> Option<u64> {
        quick_cache::sync::Cache::get(self, &key)
    }
    fn insert(&self, key: u64, value: u64) {
        quick_cache::sync::Cache::insert(self, key, value);
    }
}

impl BenchCache for Mutex<lru::LruCache<u64, u64>> {
    fn make(capacity: u64) -> Self {
        let cap = NonZeroUsize::new(usize::try_from(capacity).expect("capacity fits usize"))
            .expect("a positive capacity");
        Mutex::new(lru::LruCache::new(cap))
    }
    fn get(&self, key: u64) -> Option<u64> {
        self.lock().unwrap().get(&key).copied()
    }
    fn insert(&self, key: u64, value: u64) {
        self.lock().unwrap().put(key, value);
    }
}

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
    let mask = stream.len() - 1;
    let mut i = pos;
    for _ in 0..n {
        let op = stream[i & mask];
        i = i.wrapping_add(1);
        let key = op & !INSERT_BIT;
        if op & INSERT_BIT == 0 {
            black_box(cache.get(key));
        } else {
            cache.insert(key, key);
        }
    }
}

/// A worker's body.
type Job<'env> = Box<dyn FnOnce() + Send + 'env>;

/// Runs `jobs` on one thread each, released together by a barrier, and returns the time from
/// the first worker's start to the last one's end (read by the workers themselves).
fn run_workers(jobs: Vec<Job<'_>>) -> Duration {
    let barrier = Barrier::new(jobs.len());
    thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    job();
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
    })
}

/// Adds contender `C` to `group` under `id`: a cache made and prefilled once, then `iters *
/// ELEMS` ops per sample shared by one thread per stream.
fn contender<C: BenchCache>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    streams: &[Vec<u64>],
) {
    let cache = C::make(CAPACITY);
    for key in 0..CAPACITY {
        cache.insert(key, key);
    }
    cache.settle();
    let cache = &cache;
    let threads = streams.len() as u64;
    // Where each thread resumes in its stream, so consecutive samples do not replay the same ops.
    let mut pos = 0usize;
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let total = iters * ELEMS;
            let jobs: Vec<Job<'_>> = streams
                .iter()
                .enumerate()
                .map(|(i, stream)| {
                    let i = i as u64;
                    let n = total * (i + 1) / threads - total * i / threads;
                    let start = pos;
                    Box::new(move || work(cache, stream, start, n)) as Job<'_>
                })
                .collect();
            pos = pos.wrapping_add(usize::try_from(total / threads).unwrap_or(0));
            run_workers(jobs)
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
