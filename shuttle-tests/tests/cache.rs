//! shuttle tests of `Cache`: four threads run random sequences of ten operations each (`get`,
//! `peek`, `insert`, `remove`, `compare_exchange`, `get_or_insert_with`) over three keys, with a
//! weigher, an eviction listener and a local epoch collector: once with room for everything (no
//! eviction), once with a capacity of three weight units (eviction on most inserts, and entries
//! too heavy to store, refused), and both again with expiry (a 2 ns time-to-live on a
//! `ManualClock` that threads advance, and `insert_with_ttl`), and again with a 2 ns
//! time-to-idle. After the threads join:
//! - `weight() <= capacity()`, and `weight()`/`len()` equal the weights/number of the entries
//!   present;
//! - every value read (by any method, or by the listener) is one inserted for that key;
//! - the listener's accounting is exact (expired entries included): evictions and refusals match
//!   the statistics, removals match the `remove` calls that returned a value, and every entry
//!   stored either left through the listener exactly once or is still present;
//! - hits and misses match what `get` returned, plus one lookup per `get_or_insert_with`;
//! - every value (and every clone the cache made) is dropped exactly once once the cache and its
//!   collector are gone: a registry of live instances fails a second drop at once and reports any
//!   leak.
//!
//! The operations are drawn with `shuttle::rand`, so a failing schedule replays with the same
//! operations; keys hash with a fixed hasher for the same reason.
//!
//! Why shuttle: loom's cache models are two or three threads of one or two operations; here four
//! threads run forty operations with eviction. The cache's length, weight and statistics counters,
//! its entries' state flags and access counters, the FIFOs' position stamps and the single-flight
//! `Mutex`/`Condvar` are the shim's, so each is a schedule point.
//!
//! What it cannot see: the buckets' copy-on-write pointers and the FIFOs' links are
//! crossbeam-epoch `Atomic`s, invisible to shuttle (never schedule points: a bucket's load and its
//! compare-and-swap are preempted only if a shim operation lies between them); weak memory
//! orderings (shuttle runs every atomic as `SeqCst`). Those are loom's to check
//! (loom-tests/tests/cache.rs).
#![cfg(shuttle)]

use crossbeam_epoch::Collector;
use latchless::cache::{Cache, CompareExchangeFailure, ManualClock, RemovalCause};
use shuttle::rand::{thread_rng, Rng};
use shuttle::thread;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const THREADS: usize = 4;
const OPS: usize = 10;
const KEYS: u8 = 3;

/// The test's bookkeeping, shared by all threads. std's `Mutex` and atomics: they are not
/// schedule points (every shuttle thread runs on one OS thread, and no lock is held across a
/// cache call), so the bookkeeping adds no interleavings.
#[derive(Default)]
struct Book {
    /// Value ids handed out; instance ids handed out.
    next_id: AtomicU64,
    /// `(key, id)` of every value created for a key, registered before it reaches the cache.
    inserted: Mutex<BTreeSet<(u8, u64)>>,
    /// Instances (values and their clones) alive.
    alive: Mutex<BTreeSet<u64>>,
    /// The listener's log: `(key, id, cause)`.
    heard: Mutex<Vec<(u8, u64, RemovalCause)>>,
}

impl Book {
    fn fresh(self: &Arc<Self>, key: u8, weight: u64) -> Val {
        let id = self.next_id.fetch_add(1, SeqCst);
        self.inserted.lock().unwrap().insert((key, id));
        Val::with(self, key, id, weight)
    }

    /// Fails unless `v` was created for `key`.
    fn check(&self, key: u8, v: &Val) {
        assert_eq!(v.key, key, "read a value of key {} under key {key}", v.key);
        assert!(
            self.inserted.lock().unwrap().contains(&(key, v.id)),
            "read value {} of key {key}, never inserted",
            v.id
        );
    }
}

/// A cached value: its key, its id, its weight, and an instance number registered while alive.
struct Val {
    key: u8,
    id: u64,
    weight: u64,
    instance: u64,
    book: Arc<Book>,
}

impl Val {
    fn with(book: &Arc<Book>, key: u8, id: u64, weight: u64) -> Self {
        let instance = book.next_id.fetch_add(1, SeqCst);
        book.alive.lock().unwrap().insert(instance);
        Self {
            key,
            id,
            weight,
            instance,
            book: Arc::clone(book),
        }
    }
}

impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Val(key {}, id {}, weight {})",
            self.key, self.id, self.weight
        )
    }
}

impl Clone for Val {
    fn clone(&self) -> Self {
        assert!(
            self.book.alive.lock().unwrap().contains(&self.instance),
            "cloned a dropped value"
        );
        Self::with(&self.book, self.key, self.id, self.weight)
    }
}

impl PartialEq for Val {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.id) == (other.key, other.id)
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        let was_alive = self.book.alive.lock().unwrap().remove(&self.instance);
        assert!(
            was_alive,
            "value {} (instance {}) dropped twice",
            self.id, self.instance
        );
    }
}

/// What one thread saw.
#[derive(Default)]
struct Seen {
    hits: u64,
    misses: u64,
    /// `get_or_insert_with` calls: each makes one lookup, counted as a hit or a miss.
    lookups: u64,
    removed: u64,
    cas_refused: u64,
}

/// The expiry a run's cache has.
#[derive(Clone, Copy, PartialEq)]
enum Expiry {
    Never,
    /// Entries live 2 ns.
    Live,
    /// Entries expire after 2 ns without a `get` (a 1 ns tick: exact), or after 4 ns.
    Idle,
}

/// With expiry, the time runs on a manual clock that one more operation advances (by 1 ns),
/// and another overrides the time-to-live per entry (`insert_with_ttl`, 0 to 2 ns).
fn run(capacity: u64, weights: &'static [u64], expiry: Expiry) {
    let book = Arc::new(Book::default());
    let collector = Collector::new();
    let clock = ManualClock::new();
    let cache = {
        let book = Arc::clone(&book);
        let mut builder = Cache::builder(capacity)
            .hasher(BuildHasherDefault::<DefaultHasher>::default())
            .count_lookups(true)
            .collector(collector.clone())
            .clock(clock.clone())
            .weigher(|_: &u8, v: &Val| v.weight)
            .eviction_listener(move |k: &u8, v: &Val, cause| {
                book.check(*k, v);
                book.heard.lock().unwrap().push((*k, v.id, cause));
            });
        match expiry {
            Expiry::Never => {}
            Expiry::Live => builder = builder.time_to_live(Duration::from_nanos(2)),
            Expiry::Idle => {
                builder = builder
                    .time_to_idle(Duration::from_nanos(2))
                    .time_to_live(Duration::from_nanos(4));
            }
        }
        Arc::new(builder.build())
    };
    let ops = if expiry == Expiry::Never { 6 } else { 8 };
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (cache, book, clock) = (Arc::clone(&cache), Arc::clone(&book), clock.clone());
            thread::spawn(move || {
                let mut rng = thread_rng();
                let mut seen = Seen::default();
                for _ in 0..OPS {
                    let k = rng.gen_range(0..KEYS);
                    let w = weights[rng.gen_range(0..weights.len())];
                    match rng.gen_range(0..ops) {
                        0 => match cache.get(&k) {
                            Some(v) => {
                                book.check(k, &v);
                                seen.hits += 1;
                            }
                            None => seen.misses += 1,
                        },
                        1 => {
                            if let Some(v) = cache.peek(&k) {
                                book.check(k, &v);
                            }
                        }
                        2 => {
                            if let Some(old) = cache.insert(k, book.fresh(k, w)) {
                                book.check(k, &old);
                            }
                        }
                        3 => {
                            if let Some(old) = cache.remove(&k) {
                                book.check(k, &old);
                                seen.removed += 1;
                            }
                        }
                        4 => {
                            // An optimistic update: exchange what we read for a new value.
                            if let Some(cur) = cache.peek(&k) {
                                match cache.compare_exchange(&k, &cur, book.fresh(k, w)) {
                                    Ok(()) => {}
                                    Err(e) => {
                                        if let Some(now) = &e.current {
                                            book.check(k, now);
                                        }
                                        if e.failure == CompareExchangeFailure::Refused {
                                            seen.cas_refused += 1;
                                        }
                                    }
                                }
                            }
                        }
                        5 => {
                            seen.lookups += 1;
                            let v = cache.get_or_insert_with(k, || book.fresh(k, w));
                            book.check(k, &v);
                        }
                        6 => clock.advance(Duration::from_nanos(1)),
                        _ => {
                            let ttl = Duration::from_nanos(rng.gen_range(0..3));
                            if let Some(old) = cache.insert_with_ttl(k, book.fresh(k, w), ttl) {
                                book.check(k, &old);
                            }
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut total = Seen::default();
    for t in threads {
        let s = t.join().unwrap();
        total.hits += s.hits;
        total.misses += s.misses;
        total.lookups += s.lookups;
        total.removed += s.removed;
        total.cas_refused += s.cas_refused;
    }

    // What is present, read without recording accesses (an expired entry is removed here, and
    // heard as `Expired` below).
    let present: BTreeMap<u8, Val> = (0..KEYS)
        .filter_map(|k| cache.peek(&k).map(|v| (k, v)))
        .collect();
    for (k, v) in &present {
        book.check(*k, v);
    }
    let present_weight: u64 = present.values().map(|v| v.weight).sum();
    assert!(
        cache.weight() <= cache.capacity(),
        "weight {} over capacity",
        cache.weight()
    );
    assert_eq!(cache.weight(), present_weight, "weight accounting");
    assert_eq!(cache.len(), present.len(), "length accounting");
    // Every key left is still evictable: its handle is queued in the eviction policy, once.
    cache.__model_check_handles();

    let s = cache.stats();
    let heard = book.heard.lock().unwrap().clone();
    let count = |cause| heard.iter().filter(|h| h.2 == cause).count() as u64;
    // `get_or_insert_with`'s lookup counts as a hit or a miss too (its `init` never panics here,
    // so it looks up once).
    assert!(s.hits >= total.hits && s.misses >= total.misses, "{s:?}");
    let gets = total.hits + total.misses;
    assert_eq!(s.hits + s.misses, gets + total.lookups, "{s:?}");
    assert_eq!(count(RemovalCause::Evicted), s.evictions, "{s:?} {heard:?}");
    assert_eq!(
        count(RemovalCause::Refused),
        s.refused - total.cas_refused,
        "{s:?}"
    );
    assert_eq!(
        count(RemovalCause::Removed),
        total.removed,
        "{s:?} {heard:?}"
    );
    // Every entry stored left through the listener once, or is still here.
    let left = count(RemovalCause::Evicted)
        + count(RemovalCause::Replaced)
        + count(RemovalCause::Expired)
        + total.removed;
    assert_eq!(s.inserts, left + present.len() as u64, "{s:?} {heard:?}");
    let mut departed = BTreeSet::new();
    for &(k, id, cause) in &heard {
        if cause != RemovalCause::Refused {
            assert!(departed.insert((k, id)), "value {id} of key {k} left twice");
        }
    }
    for (k, v) in &present {
        assert!(
            !departed.contains(&(*k, v.id)),
            "value {} both left and present",
            v.id
        );
    }

    drop(present);
    drop(cache);
    drop(collector);
    let alive = book.alive.lock().unwrap();
    assert!(alive.is_empty(), "values leaked: {alive:?}");
}

/// Room for every entry: no eviction.
// Measured: 10,000 random + 10,000 PCT schedules, 5.3 s (release, 2-core machine).
#[test]
fn ops_without_eviction() {
    latchless_shuttle_tests::explore(10_000, 10_000, || run(100, &[1, 2], Expiry::Never));
}

/// A capacity of three units, entries of one or two, and some of four (refused).
// Measured: 10,000 random + 10,000 PCT schedules, 5.3 s (release, 2-core machine).
#[test]
fn ops_with_eviction() {
    latchless_shuttle_tests::explore(10_000, 10_000, || run(3, &[1, 1, 2, 4], Expiry::Never));
}

/// Expiry, with and without eviction: lookups, inserts over expired keys and eviction all remove
/// expired entries while the clock moves, and each leaves once, as `Expired`.
// Measured: 2 x (5,000 random + 5,000 PCT schedules), 5.2 s (release, shared 2-core machine).
#[test]
fn ops_with_expiry() {
    latchless_shuttle_tests::explore(5_000, 5_000, || run(100, &[1, 2], Expiry::Live));
    latchless_shuttle_tests::explore(5_000, 5_000, || run(3, &[1, 1, 2, 4], Expiry::Live));
}

/// The same with a time-to-idle: gets refresh entries' latest access while the clock moves and
/// eviction passes over read entries (storing their access counters in the same word).
// Measured: 2 x (5,000 random + 5,000 PCT schedules), 5.6 s (release, shared 2-core machine).
#[test]
fn ops_with_idle_expiry() {
    latchless_shuttle_tests::explore(5_000, 5_000, || run(100, &[1, 2], Expiry::Idle));
    latchless_shuttle_tests::explore(5_000, 5_000, || run(3, &[1, 1, 2, 4], Expiry::Idle));
}
