//! Stress tests for `Cache`: 4 threads run a mix of `get`, `insert`, `remove`,
//! `compare_exchange` and `get_or_insert_with` over a few hundred keys that collide in a handful
//! of buckets (a hasher that maps every key to one of 8 hashes, and an index of 4 buckets), with
//! a capacity well below the key set so that eviction runs all the time.
//!
//! Every value encodes the key it was written for, its writer, a sequence number, its size and a
//! checksum of all four, so a value returned for the wrong key, torn, or never written shows up
//! at the read. The eviction listener checks the same of every entry that leaves.
//!
//! Once the threads are joined:
//! - `len() <= capacity` and `weight() <= capacity()`;
//! - a scan of every key finds exactly `len()` entries, weighing `weight()` in all;
//! - the statistics match what the threads did: `inserts` is the inserts, successful exchanges
//!   and computed values; every stored entry was replaced, removed, evicted or is still there
//!   (as told by the listener); refusals match the too-heavy values offered.
//!
//! Four variants: unweighted and weighted (weigher = the value's size, with a few values
//! heavier than the capacity), each with crossbeam-epoch's global collector and plain methods,
//! and with a local collector and the `*_with_guard` methods (re-pinned every 64 operations).
//!
//! The total is `LATCHLESS_STRESS_N` operations (default 1,000,000; 400 under Miri, whose time
//! grows faster than the count: at 2,000, one variant alone ran for over 4 minutes), split over
//! the threads.

use crossbeam_epoch::Collector;
use latchless::cache::{Cache, CompareExchangeFailure, RemovalCause};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

#[path = "common/stress_env.rs"]
mod stress_env;

use stress_env::stress_n_split;

/// The seeded generator (SplitMix64), shared by the integration tests.
#[path = "common/rng.rs"]
mod rng;

use rng::Rng;

const THREADS: usize = 4;
/// Distinct keys.
const KEYS: u64 = 300;
/// Distinct hashes: every key hashes to `key % HASHES`.
const HASHES: u64 = 8;
/// The index's buckets: 4, each holding keys of 2 hashes.
const INDEX_BUCKETS: usize = 4;
/// Capacity of the unweighted caches, in entries.
const CAPACITY: u64 = 64;
/// Capacity of the weighted caches, in size units (values weigh 1 to 16, a few 100).
const WEIGHTED_CAPACITY: u64 = 400;

/// Total number of operations, rounded down to a multiple of `THREADS`.
fn total_ops() -> usize {
    stress_n_split(if cfg!(miri) { 400 } else { 1_000_000 }, THREADS)
}

// ---------------------------------------------------------------------------------------------
// Colliding keys.

/// Hashes a `u64` key to `key % HASHES`: many keys share each hash, and so each bucket.
#[derive(Clone, Copy, Debug, Default)]
struct FewHashes;

/// The hasher of [`FewHashes`].
struct FewHasher(u64);

impl Hasher for FewHasher {
    fn finish(&self) -> u64 {
        self.0 % HASHES
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.wrapping_mul(31).wrapping_add(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl BuildHasher for FewHashes {
    type Hasher = FewHasher;

    fn build_hasher(&self) -> FewHasher {
        FewHasher(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Self-checking values.

/// A value written for `key` by `writer` as its `seq`-th value, weighing `size`, with a checksum
/// of the four.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Val {
    key: u64,
    writer: u32,
    seq: u32,
    size: u32,
    check: u64,
}

fn checksum(key: u64, writer: u32, seq: u32, size: u32) -> u64 {
    // splitmix64's finaliser over the packed fields.
    let mut z = key
        ^ (u64::from(writer) << 56)
        ^ (u64::from(seq) << 24)
        ^ (u64::from(size) << 40).rotate_left(7);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Val {
    fn new(key: u64, writer: usize, seq: u32, size: u32) -> Self {
        let writer = writer as u32;
        Self {
            key,
            writer,
            seq,
            size,
            check: checksum(key, writer, seq, size),
        }
    }

    /// Whether this is a value some thread wrote for `key`.
    fn is_valid_for(&self, key: u64, ops_per_thread: usize) -> bool {
        self.key == key
            && (self.writer as usize) < THREADS
            && (self.seq as usize) < ops_per_thread
            && self.check == checksum(self.key, self.writer, self.seq, self.size)
    }
}

// ---------------------------------------------------------------------------------------------
// The listener's tally.

/// What the eviction listener heard, by cause, and whether it ever heard a wrong value.
#[derive(Default)]
struct Heard {
    evicted: AtomicU64,
    replaced: AtomicU64,
    removed: AtomicU64,
    refused: AtomicU64,
    bad: AtomicBool,
}

impl Heard {
    fn hear(&self, key: u64, v: &Val, cause: RemovalCause, ops_per_thread: usize) {
        // Relaxed (all): counts read after the threads are joined.
        let counter = match cause {
            RemovalCause::Evicted => &self.evicted,
            RemovalCause::Replaced => &self.replaced,
            RemovalCause::Removed => &self.removed,
            RemovalCause::Refused => &self.refused,
            other => panic!("a cause this test does not know: {other:?}"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // No panic inside the cache's bookkeeping: flag it, the test checks after the join.
        if !v.is_valid_for(key, ops_per_thread) {
            eprintln!("listener: {cause:?} of key {key} with value {v:?}");
            self.bad.store(true, Ordering::Relaxed);
        }
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// The workload.

/// How the threads reach the cache.
#[derive(Clone, Copy, Debug)]
enum Access {
    /// Plain methods, crossbeam-epoch's global collector.
    Plain,
    /// `*_with_guard` methods on a local collector, re-pinning every this many operations.
    Guarded { repin_every: usize },
}

/// Value sizes: always 1 when unweighted; else 1 to 16, with 1 in 100 weighing 100 and 1 in
/// 1,000 weighing more than the whole capacity.
#[derive(Clone, Copy, Debug)]
enum Sizes {
    Unit,
    Weighted,
}

impl Sizes {
    fn pick(self, rng: &mut Rng) -> u32 {
        match self {
            Sizes::Unit => 1,
            Sizes::Weighted => match rng.below(1_000) {
                0 => WEIGHTED_CAPACITY as u32 + 1,
                1..=10 => 100,
                _ => 1 + rng.below(16) as u32,
            },
        }
    }

    fn capacity(self) -> u64 {
        match self {
            Sizes::Unit => CAPACITY,
            Sizes::Weighted => WEIGHTED_CAPACITY,
        }
    }
}

/// What one thread did, for the final accounting.
#[derive(Default, Debug)]
struct Tally {
    gets: u64,
    /// `insert` calls that stored their value, and those of them that replaced one.
    inserts: u64,
    insert_replaced: u64,
    /// `insert` calls refused (too heavy).
    insert_refused: u64,
    removed: u64,
    exchanges: u64,
    exchange_refused: u64,
    /// `get_or_insert_with` calls whose `init` ran, split by whether the value fit.
    computed: u64,
    computed_refused: u64,
    /// The most the weight was seen above the capacity right after this thread's writes.
    max_overshoot: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.gets += o.gets;
        self.inserts += o.inserts;
        self.insert_replaced += o.insert_replaced;
        self.insert_refused += o.insert_refused;
        self.removed += o.removed;
        self.exchanges += o.exchanges;
        self.exchange_refused += o.exchange_refused;
        self.computed += o.computed;
        self.computed_refused += o.computed_refused;
        self.max_overshoot = self.max_overshoot.max(o.max_overshoot);
    }
}

/// Builds the cache for `sizes` and `access`, with a listener reporting to `heard`.
fn build(
    sizes: Sizes,
    collector: Option<&Collector>,
    heard: &Arc<Heard>,
    ops_per_thread: usize,
) -> Cache<u64, Val, FewHashes> {
    let sink = Arc::clone(heard);
    let mut builder = Cache::builder(sizes.capacity())
        .hasher(FewHashes)
        .count_lookups(true)
        .index_buckets(INDEX_BUCKETS)
        .eviction_listener(move |k: &u64, v: &Val, cause| sink.hear(*k, v, cause, ops_per_thread));
    if let Sizes::Weighted = sizes {
        builder = builder.weigher(|_, v: &Val| u64::from(v.size));
    }
    if let Some(c) = collector {
        builder = builder.collector(c.clone());
    }
    builder.build()
}

/// One thread's share of the operations.
fn worker(
    cache: &Cache<u64, Val, FewHashes>,
    t: usize,
    ops: usize,
    sizes: Sizes,
    access: Access,
    collector: Option<&Collector>,
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) << 17));
    let mut seq = 0u32;
    let handle = collector.map(Collector::register);
    let mut guard = handle.as_ref().map(|h| h.pin());
    let capacity = sizes.capacity();
    let check = |k: u64, v: &Val, what: &str| {
        assert!(
            v.is_valid_for(k, ops),
            "thread {t}: {what}({k}) gave {v:?}, not a value written for {k}"
        );
    };
    for i in 0..ops {
        if let (Access::Guarded { repin_every }, Some(g)) = (access, guard.as_mut()) {
            if i % repin_every == 0 {
                g.repin();
            }
        }
        let g = guard.as_ref();
        let k = rng.below(KEYS);
        let size = sizes.pick(&mut rng);
        let mut fresh = || {
            let v = Val::new(k, t, seq, size);
            seq += 1;
            v
        };
        match rng.below(100) {
            0..=39 => {
                tally.gets += 1;
                let got = match g {
                    Some(g) => cache.get_with_guard(&k, g),
                    None => cache.get(&k),
                };
                if let Some(v) = got {
                    check(k, &v, "get");
                }
            }
            40..=64 => {
                let v = fresh();
                let old = match g {
                    Some(g) => cache.insert_with_guard(k, v, g),
                    None => cache.insert(k, v),
                };
                if u64::from(v.size) > capacity {
                    assert_eq!(old, None, "a refused insert replaced nothing");
                    tally.insert_refused += 1;
                } else {
                    tally.inserts += 1;
                    if let Some(old) = old {
                        check(k, &old, "insert (the replaced value)");
                        tally.insert_replaced += 1;
                    }
                }
            }
            65..=74 => {
                let old = match g {
                    Some(g) => cache.remove_with_guard(&k, g),
                    None => cache.remove(&k),
                };
                if let Some(old) = old {
                    check(k, &old, "remove");
                    tally.removed += 1;
                }
            }
            75..=89 => {
                // Read, then exchange from what was read (or from a value never stored).
                let cur = match g {
                    Some(g) => cache.get_with_guard(&k, g),
                    None => cache.get(&k),
                };
                tally.gets += 1;
                if let Some(cur) = &cur {
                    check(k, cur, "get");
                }
                let expected = cur.unwrap_or_else(|| Val::new(k, THREADS, 0, 0));
                let new = fresh();
                let result = match g {
                    Some(g) => cache.compare_exchange_with_guard(&k, &expected, new, g),
                    None => cache.compare_exchange(&k, &expected, new),
                };
                match result {
                    Ok(()) => {
                        assert!(cur.is_some(), "exchanged from a value never stored");
                        assert!(u64::from(new.size) <= capacity, "a too-heavy value stored");
                        tally.exchanges += 1;
                    }
                    Err(e) => {
                        assert_eq!(e.new, new, "thread {t}: the new value is handed back");
                        if let Some(c) = &e.current {
                            check(k, c, "compare_exchange (the current value)");
                        }
                        match e.failure {
                            CompareExchangeFailure::Refused => {
                                assert!(u64::from(new.size) > capacity, "{e:?}");
                                tally.exchange_refused += 1;
                            }
                            CompareExchangeFailure::Mismatch => {
                                assert!(u64::from(new.size) <= capacity, "{e:?}");
                                assert_ne!(e.current, Some(expected), "a mismatch that matched");
                            }
                            other => panic!("a failure this test does not know: {other:?}"),
                        }
                    }
                }
            }
            _ => {
                let mut ran = false;
                let v = cache.get_or_insert_with(k, || {
                    ran = true;
                    fresh()
                });
                check(k, &v, "get_or_insert_with");
                if ran {
                    if u64::from(v.size) > capacity {
                        tally.computed_refused += 1;
                    } else {
                        tally.computed += 1;
                    }
                }
            }
        }
        tally.max_overshoot = tally
            .max_overshoot
            .max(cache.weight().saturating_sub(capacity));
    }
    tally
}

/// Runs the workload on 4 threads, then checks the bound, the contents and the accounting.
fn run(sizes: Sizes, access: Access) {
    let total = total_ops();
    let ops = total / THREADS;
    let heard = Arc::new(Heard::default());
    let collector = match access {
        Access::Plain => None,
        Access::Guarded { .. } => Some(Collector::new()),
    };
    let cache = build(sizes, collector.as_ref(), &heard, ops);
    let capacity = sizes.capacity();
    assert_eq!(cache.capacity(), capacity);

    let mut tally = Tally::default();
    thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (cache, collector) = (&cache, collector.as_ref());
                s.spawn(move || worker(cache, t, ops, sizes, access, collector))
            })
            .collect();
        for w in workers {
            tally.add(&w.join().expect("a worker panicked"));
        }
    });

    let stats = cache.stats();
    println!("{sizes:?} {access:?}: {total} operations; {tally:?}; {stats:?}");

    // The bound, once every writer has returned.
    assert!(
        cache.weight() <= cache.capacity(),
        "weight {} > capacity {}",
        cache.weight(),
        cache.capacity()
    );
    assert!(
        cache.len() as u64 <= capacity,
        "len {} > {capacity}",
        cache.len()
    );

    // The contents match the counters.
    let present: Vec<Val> = (0..KEYS)
        .filter_map(|k| {
            let v = cache.peek(&k)?;
            assert!(v.is_valid_for(k, ops), "peek({k}) gave {v:?}");
            assert!(u64::from(v.size) <= capacity, "a too-heavy value is stored");
            Some(v)
        })
        .collect();
    assert_eq!(cache.len(), present.len(), "len() vs the entries found");
    assert_eq!(
        cache.weight(),
        present.iter().map(|v| u64::from(v.size)).sum::<u64>(),
        "weight() vs the entries found"
    );

    // The statistics match what the threads did.
    assert!(
        !heard.bad.load(Ordering::Relaxed),
        "the listener was given a value not written for its key (see stderr)"
    );
    assert_eq!(
        stats.inserts,
        tally.inserts + tally.exchanges + tally.computed,
        "stats.inserts vs inserts + exchanges + computed values"
    );
    assert_eq!(
        stats.refused,
        tally.insert_refused + tally.exchange_refused + tally.computed_refused
    );
    assert_eq!(
        Heard::get(&heard.refused),
        tally.insert_refused + tally.computed_refused
    );
    assert_eq!(Heard::get(&heard.removed), tally.removed);
    assert_eq!(Heard::get(&heard.evicted), stats.evictions);
    assert!(Heard::get(&heard.replaced) >= tally.insert_replaced + tally.exchanges);
    // Every stored entry was replaced, removed, evicted, or is still there.
    assert_eq!(
        stats.inserts,
        Heard::get(&heard.replaced)
            + Heard::get(&heard.removed)
            + Heard::get(&heard.evicted)
            + cache.len() as u64,
        "stored entries vs entries that left plus entries left"
    );
    assert!(stats.hits + stats.misses >= tally.gets);
    if !cfg!(miri) {
        assert!(stats.evictions > 0, "the workload is meant to evict");
        assert!(tally.exchanges > 0 && tally.computed > 0 && tally.removed > 0);
    }
    if tally.max_overshoot > 0 {
        println!(
            "  transient: weight seen up to {} above the capacity while writers ran",
            tally.max_overshoot
        );
    }
}

#[test]
fn unweighted_plain_global_collector() {
    run(Sizes::Unit, Access::Plain);
}

#[test]
fn unweighted_with_guards_local_collector() {
    run(Sizes::Unit, Access::Guarded { repin_every: 64 });
}

#[test]
fn weighted_plain_global_collector() {
    run(Sizes::Weighted, Access::Plain);
}

#[test]
fn weighted_with_guards_local_collector() {
    run(Sizes::Weighted, Access::Guarded { repin_every: 64 });
}
