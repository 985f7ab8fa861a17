//! Heap leaks: once a `Cache` built on a local epoch `Collector` has been dropped, along with the
//! collector and every handle and guard, every heap block allocated while it was used (entries,
//! bucket arrays, FIFO blocks, the single-flight table, the listener and weigher, the keys' and
//! values' own allocations, the collector's participants and garbage bags) has been freed, after
//! churn of inserts, replacements, removals, exchanges, evictions and clears from several threads.
//!
//! A counting `#[global_allocator]` (this file is its own test binary, so it affects nothing
//! else), shared with `tests/queue_leak.rs` in `tests/common/counting_alloc.rs` (documented there),
//! counts the live blocks and bytes allocated inside a measured section by the test thread and
//! the workers it starts, whichever thread frees them; the test harness's own allocations stay
//! out of the numbers.
//!
//! With crossbeam-epoch's global collector (`Cache::new`) exact accounting is impossible: the
//! collector is never dropped and may keep garbage. That case only checks that the live heap
//! stays bounded as rounds of churn go by.

use crossbeam_epoch::Collector;
use latchless::cache::{Cache, RemovalCause};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{on_tracked_threads, Counting, Section};

const N: usize = if cfg!(miri) { 200 } else { 20_000 };
const THREADS: usize = 4;

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// The caches under test.

/// A cache of `String` keys and values weighed by their lengths, with a listener that sums the
/// bytes of evicted values (the listener and weigher are heap closures too), on `collector`.
/// Only a few buckets, so that bucket arrays are rebuilt on every write.
fn byte_cache(
    capacity: u64,
    collector: &Collector,
    evicted: &Arc<AtomicU64>,
) -> Cache<String, String> {
    let evicted = Arc::clone(evicted);
    Cache::builder(capacity)
        .weigher(|k: &String, v: &String| (k.len() + v.len()) as u64)
        .eviction_listener(move |_: &String, v: &String, cause| {
            if cause == RemovalCause::Evicted {
                // Relaxed: a statistic.
                evicted.fetch_add(v.len() as u64, Ordering::Relaxed);
            }
        })
        .index_buckets(8)
        .collector(collector.clone())
        .build()
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// The accounting itself can fail: a leaked `Box` and a leaked cache both show.
#[test]
fn counting_detects_leaks() {
    let m = Section::start();
    m.assert_counts_a_leaked_box();

    let collector = Collector::new();
    let cache = Cache::builder(100).collector(collector.clone()).build();
    for i in 0..10 {
        cache.insert(i, format!("value {i}"));
    }
    // Not dropping the cache keeps its entries and values live: the check must see them.
    let cache = ManuallyDrop::new(cache);
    drop(collector);
    assert!(
        m.live().blocks >= 20,
        "10 entries and 10 strings should be live, got {:?}",
        m.live()
    );
    drop(ManuallyDrop::into_inner(cache));
    m.assert_all_freed("after dropping the cache after all");
}

#[test]
fn single_thread_churn_frees_everything() {
    let m = Section::start();
    {
        let collector = Collector::new();
        let evicted = Arc::new(AtomicU64::new(0));
        let cache = byte_cache(2_000, &collector, &evicted);
        for i in 0..N {
            let key = format!("session-{}", i % 300);
            let value = "x".repeat(i % 50);
            match i % 10 {
                0..=4 => drop(cache.insert(key, value)),
                5 => drop(cache.remove(&key)),
                6 => {
                    if let Some(cur) = cache.get(&key) {
                        drop(cache.compare_exchange(&key, &cur, value));
                    }
                }
                7 => drop(cache.get_or_insert_with(key, || value)),
                8 => drop(cache.try_insert(key, "too heavy".repeat(300))),
                _ => {
                    if i % 5_000 == 9 {
                        cache.clear();
                    } else {
                        drop(cache.peek(&key));
                    }
                }
            }
        }
        assert!(cache.stats().evictions > 0 && cache.stats().refused > 0);
        assert!(evicted.load(Ordering::Relaxed) > 0);
        assert!(m.live().blocks > 0, "the cache holds live entries");
        drop(cache);
        drop(collector);
        drop(evicted);
    }
    m.assert_all_freed("cache and collector dropped");
}

#[test]
fn threads_with_guards_and_plain_calls_free_everything() {
    let m = Section::start();
    {
        let collector = Collector::new();
        let evicted = Arc::new(AtomicU64::new(0));
        // Under Miri, `N` writes of about 7 bytes would not fill 1,000: a smaller cache evicts.
        let capacity = if cfg!(miri) { 100 } else { 1_000 };
        let cache = byte_cache(capacity, &collector, &evicted);
        on_tracked_threads(THREADS, |t| {
            let handle = collector.register();
            let mut guard = handle.pin();
            for i in 0..N / THREADS {
                // Re-pin now and then, so the epoch advances and frees entries meanwhile.
                if i % 128 == 0 {
                    guard.repin();
                }
                let key = format!("k{}", (i * 31 + t * 7) % 200);
                let value = format!("{t}:{i}");
                match i % 8 {
                    0..=2 => drop(cache.insert_with_guard(key, value, &guard)),
                    3 => drop(cache.insert(key, value)),
                    4 => drop(cache.remove_with_guard(&key, &guard)),
                    5 => {
                        if let Some(cur) = cache.get_with_guard(&key, &guard) {
                            drop(cache.compare_exchange_with_guard(&key, &cur, value, &guard));
                        }
                    }
                    6 => drop(cache.get_or_insert_with(key, || value)),
                    _ => drop(cache.get(&key)),
                }
            }
            drop(guard);
            handle.pin().flush();
        });
        assert!(cache.stats().evictions > 0);
        assert!(cache.weight() <= cache.capacity());
        drop(cache);
        drop(collector);
    }
    m.assert_all_freed("cache, collector, handles and guards dropped");
}

#[test]
fn single_flight_waiters_free_everything() {
    const ROUNDS: usize = if cfg!(miri) { 3 } else { 50 };
    let m = Section::start();
    {
        let collector = Collector::new();
        let cache: Cache<u64, Arc<Vec<u8>>> =
            Cache::builder(8).collector(collector.clone()).build();
        let barrier = Barrier::new(THREADS);
        on_tracked_threads(THREADS, |_| {
            for round in 0..ROUNDS as u64 {
                barrier.wait();
                // Everyone asks for the same new key: one computes, the others wait on its
                // flight (or find the value), and the cache evicts as rounds go by.
                let v = cache.get_or_insert_with(round, || {
                    thread::yield_now();
                    Arc::new(vec![round as u8; 64])
                });
                assert_eq!(v[0], round as u8);
            }
        });
        drop(cache);
        drop(collector);
    }
    m.assert_all_freed("cache and collector dropped after single-flight rounds");
}

#[test]
// Under Miri, crossbeam-epoch seals a garbage bag every 4 deferred functions instead of 64, and
// the global collector's garbage outgrows what pins collect (2,438 blocks live after the first
// round, 4,468 after the second): the bound measured here does not apply. The local-collector
// tests above account for every block under Miri too.
#[cfg_attr(miri, ignore = "the epoch's garbage bags are 16x smaller under Miri")]
fn global_collector_growth_stays_bounded() {
    // The global collector is never dropped and may keep garbage; a live cache keeps its
    // entries (at most `CAPACITY`, 3 blocks each with key and value), bucket arrays, and the
    // FIFOs' blocks (and one kept for reuse by each). Check only that the live heap does not grow with the work done: a
    // cache leaking one block per round of 1,000 operations would pass the bound in a few rounds.
    const ROUNDS: usize = if cfg!(miri) { 3 } else { 20 };
    const PER_ROUND: usize = 1_000;
    const CAPACITY: u64 = 100;
    let m = Section::start();
    let cache: Cache<String, String> = Cache::new(CAPACITY);
    let mut first = None;
    let mut peak = 0;
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            let key = format!("k{}", (round * PER_ROUND + i) % 400);
            match i % 4 {
                0 | 1 => drop(cache.insert(key, format!("v{i}"))),
                2 => drop(cache.remove(&key)),
                _ => drop(cache.get(&key)),
            }
        }
        for _ in 0..4 {
            crossbeam_epoch::pin().flush();
        }
        let live = m.live().blocks;
        peak = peak.max(live);
        let base = *first.get_or_insert(live);
        // Measured with the former node-based queue: about 780 blocks after the first round, then
        // between 940 and 1,190 over 200 rounds, rising and falling as the FIFOs' reusable nodes
        // and the epoch's garbage bags came and went; the block-based queue holds fewer. 1,000
        // above the first round leaves a margin over that.
        assert!(
            live <= base + 1_000,
            "round {round}: {live} blocks live, {base} after the first round"
        );
    }
    drop(cache);
    drop(m);
    // Printed outside the section: the harness keeps captured output beyond it.
    println!("global collector: {first:?} blocks live after round 1, at most {peak} after any");
}
