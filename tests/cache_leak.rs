//! Heap leaks: once a `Cache` built on a local epoch `Collector` has been dropped, along with the
//! collector and every handle and guard, every heap block allocated while it was used (entries,
//! bucket arrays, FIFO nodes, the single-flight table, the listener and weigher, the keys' and
//! values' own allocations, the collector's participants and garbage bags) has been freed, after
//! churn of inserts, replacements, removals, exchanges, evictions and clears from several threads.
//!
//! A counting `#[global_allocator]` (this file is its own test binary, so it affects nothing
//! else) wraps `System`. Only allocations made inside a measured section (by the test thread and
//! the workers it starts) are counted, so the test harness's own allocations stay out of the
//! numbers. Each block carries a header holding the id of the section that allocated it: its free
//! is matched exactly, whichever thread performs it, and a block outliving its section (freed by
//! a later one) is not counted against the later one. Sections are serialised by a `Mutex`.
//!
//! With crossbeam-epoch's global collector (`Cache::new`) exact accounting is impossible: the
//! collector is never dropped and may keep garbage. That case only checks that the live heap
//! stays bounded as rounds of churn go by.

use crossbeam_epoch::Collector;
use latchless::cache::{Cache, RemovalCause};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::thread;

const N: usize = if cfg!(miri) { 200 } else { 20_000 };
const THREADS: usize = 4;

// ---------------------------------------------------------------------------------------------
// The counting allocator.

/// Blocks and bytes allocated in the current section and not yet freed. Signed: a free without
/// its allocation shows as a negative count rather than wrapping.
static BLOCKS: AtomicIsize = AtomicIsize::new(0);
static BYTES: AtomicIsize = AtomicIsize::new(0);

/// The id of the measured section in progress, 0 between sections. Changed only under `SERIAL`,
/// while no worker of a section runs.
static SECTION: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    /// Whether this thread's allocations belong to the current section. `const`-initialised
    /// and without a destructor: reading it never allocates, even during thread teardown.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn set_counted(on: bool) {
    COUNTED.with(|c| c.set(on));
}

fn is_counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

/// The smallest header in front of a block; the header is also at least the block's alignment,
/// so the block after it stays aligned. Its last word holds the allocating section's id.
const MIN_HEADER: usize = 16;
const ID_SIZE: usize = size_of::<usize>();

/// The layout requested from `System` for a caller's `layout`, and the header size (where the
/// caller's block starts in it); `None` on overflow.
fn outer_layout(layout: Layout) -> Option<(Layout, usize)> {
    let header = layout.align().max(MIN_HEADER);
    let outer = Layout::from_size_align(layout.size().checked_add(header)?, header).ok()?;
    Some((outer, header))
}

/// `System`, counting the live blocks of the measured section.
struct CountingAlloc;

// SAFETY: each block comes from `System` with a valid layout (`outer_layout`) and goes back to it
// with the same layout. The caller's pointer lies `header` bytes into the block, and `header` is
// a multiple of the caller's alignment (both powers of two, `header >= align`), so it is aligned
// and has `layout.size()` bytes after it. Nothing here allocates, so nothing recurses.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((outer, header)) = outer_layout(layout) else {
            return ptr::null_mut();
        };
        // SAFETY: `outer` is non-zero in size: it includes the header.
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        // Relaxed: `SECTION` only changes while no counted thread of another section runs
        // (ordered with the workers by spawn and join, and with the test thread by `SERIAL`).
        let section = if is_counted() {
            SECTION.load(Ordering::Relaxed)
        } else {
            0
        };
        let block = base.wrapping_add(header);
        let id = block.wrapping_sub(ID_SIZE).cast::<usize>();
        // SAFETY: `id` lies `header - ID_SIZE` bytes into the `outer.size() > header` bytes just
        // allocated (in bounds, writable) and is aligned for `usize`: `base` is aligned to
        // `header >= 16`, and `header - ID_SIZE` is a multiple of `ID_SIZE`.
        unsafe { id.write(section) };
        if section != 0 {
            // Relaxed: statistics, read after the section's workers are joined.
            BLOCKS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((outer, header)) = outer_layout(layout) else {
            // `alloc` returned null for such a layout: no such block exists.
            std::process::abort();
        };
        // `ptr` came from `alloc` with this `layout` (the caller's obligation): it lies `header`
        // bytes into a block from `System`, right after the section id.
        let base = ptr.wrapping_sub(header);
        let id = ptr.wrapping_sub(ID_SIZE).cast::<usize>();
        // SAFETY: `alloc` wrote the id at this aligned, in-bounds address; nothing else writes
        // the header.
        let section = unsafe { id.read() };
        // Relaxed: see `alloc`. A block of an earlier section no longer counts.
        if section != 0 && section == SECTION.load(Ordering::Relaxed) {
            BLOCKS.fetch_sub(1, Ordering::Relaxed);
            BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: `base` came from `System.alloc(outer)` in `alloc`, and is freed once, here.
        unsafe { System.dealloc(base, outer) };
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------------------------
// Measured sections.

/// Serialises measured sections: the tests of a binary run in parallel.
static SERIAL: Mutex<()> = Mutex::new(());

/// Blocks and bytes allocated in a section and still live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Live {
    blocks: isize,
    bytes: isize,
}

/// A measured section: holds `SERIAL`, counts the current thread's allocations from zero, and
/// stops counting when dropped.
struct Section {
    _serial: MutexGuard<'static, ()>,
}

impl Section {
    fn start() -> Self {
        static LAST: AtomicUsize = AtomicUsize::new(0);
        // A failed test poisons the lock; the counters are reset below, so carry on.
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed (all): see `alloc`; the lock orders sections.
        let id = LAST.fetch_add(1, Ordering::Relaxed) + 1;
        BLOCKS.store(0, Ordering::Relaxed);
        BYTES.store(0, Ordering::Relaxed);
        SECTION.store(id, Ordering::Relaxed);
        set_counted(true);
        Self { _serial: serial }
    }

    fn live(&self) -> Live {
        Live {
            blocks: BLOCKS.load(Ordering::Relaxed),
            bytes: BYTES.load(Ordering::Relaxed),
        }
    }

    #[track_caller]
    fn assert_all_freed(&self, what: &str) {
        assert_eq!(
            self.live(),
            Live {
                blocks: 0,
                bytes: 0
            },
            "{what}: blocks/bytes allocated in the section and still live"
        );
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        set_counted(false);
        // Relaxed: see `alloc`; the lock, still held, orders this with the next section.
        SECTION.store(0, Ordering::Relaxed);
    }
}

/// Runs `f(t)` on `threads` counted workers and joins them natively, so each worker's
/// thread-local destructors have run by the time this returns.
fn on_counted_threads(threads: usize, f: impl Fn(usize) + Sync) {
    thread::scope(|s| {
        let f = &f;
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    set_counted(true);
                    f(t);
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker panicked");
        }
    });
}

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
        .estimated_entries(8)
        .collector(collector.clone())
        .build()
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// The accounting itself can fail: a leaked `Box` and a leaked cache both show.
#[test]
fn counting_detects_leaks() {
    let m = Section::start();
    let leaked = Box::into_raw(Box::new(7u64));
    assert_eq!(
        m.live(),
        Live {
            blocks: 1,
            bytes: 8
        }
    );
    // SAFETY: `leaked` came from `Box::into_raw` just above and is reclaimed once.
    drop(unsafe { Box::from_raw(leaked) });
    m.assert_all_freed("after freeing the box");

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
        assert!(cache.stats().evictions > 0 && cache.stats().rejected > 0);
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
        let cache = byte_cache(1_000, &collector, &evicted);
        on_counted_threads(THREADS, |t| {
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
        on_counted_threads(THREADS, |_| {
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
fn global_collector_growth_stays_bounded() {
    // The global collector is never dropped and may keep garbage; a live cache keeps its
    // entries (at most `CAPACITY`, 3 blocks each with key and value), bucket arrays, and FIFO
    // nodes kept for reuse. Check only that the live heap does not grow with the work done: a
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
        // Measured: about 780 blocks after the first round, then between 940 and 1,190 over 200
        // rounds, rising and falling as the FIFOs' reusable nodes and the epoch's garbage bags
        // come and go. 1,000 above the first round leaves a margin over that.
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
