//! Differential tests: seeded random single-threaded operation sequences applied both to a
//! latchless structure and to a reference model from `std`, comparing every result.
//!
//! - `MsQueue` vs `VecDeque`: `push`, `pop`, `len`, `is_empty`, partial and full `drain`, and
//!   partial `into_iter` (whose dropped remainder must drop its values). Values count their live
//!   instances, so after every step the number alive equals the model's length: nothing leaked,
//!   nothing dropped twice. Half the seeds use the global collector, half a local `Collector`.
//!   The push probability changes in phases, so the queue grows to hundreds of values and shrinks
//!   back (blocks are allocated and retired as it does).
//! - `Cache` without eviction (capacity at least the number of keys, sometimes exactly it) vs
//!   `HashMap`: `get`, `peek`, `contains_key`, `insert`, `remove`, `compare_exchange`, `len`,
//!   `is_empty` and a rare `clear`, every result equal to the model's; `weight() == len()`, and
//!   `stats()` hits, misses and inserts equal to the counts of what was observed, no eviction.
//! - `Cache` with eviction (capacity 1 to 16, 64 keys, a hot set of 8):
//!   - without a listener: every hit (`get`, `peek`, `contains_key`, a replaced or removed value,
//!     a failed exchange's current value) is the last value inserted for that key (never a
//!     removed key, never an older value); `len() <= capacity()` and `weight() == len()` after
//!     every step, `len()` equal to the number of keys present (scanned every 64 steps); `stats()`
//!     hits and misses equal the observed hits and misses, inserts the successful writes, and
//!     evictions exactly the entries that left without a remove: one per insert of a new key into
//!     a full cache, none otherwise;
//!   - with an eviction listener: the model is exact, a `HashMap` from which every `Evicted` entry
//!     the listener reports is removed (after checking it held that value), and every result
//!     must equal the model's; `Replaced` and `Removed` reports must match what the call
//!     returned.
//! - `Cache` with expiry (a `ManualClock`, a builder TTL of 1 to 6 ns or none, on half the seeds
//!   a time-to-idle of 1 to 8 ns, no eviction) vs a `HashMap` of values, deadlines and latest
//!   accesses (a time-to-idle under 16 ns is kept to the nanosecond, so the model is exact; a
//!   `get` that hits is an access): the cache operations above plus `AdvanceClock`,
//!   `insert_with_ttl` (0 to 6 ns) and `purge_expired`. Every read must be the live model value
//!   (never an expired one); the model holds expired entries until the listener reports them, so
//!   each lazy removal is checked: an `Expired` report must name the model's entry for that key
//!   and be due, a `Replaced` or `Removed` one must not be; a lookup or write of a key leaves no
//!   expired entry behind, `purge_expired` and `retain` none at all; `len()` and `weight()` equal
//!   the model's size after every step.
//!
//! - Every cache test hashes with SipHash, or on even seeds with a hasher that maps every key to
//!   one of three hashes, so that keys are told apart by `Eq` alone.
//!
//! Every test runs `SEEDS` seeds of `STEPS` steps (2 seeds of fewer steps under Miri, where the
//! checks that a run was not vacuous are skipped). On failure the panic is followed by a line
//! naming the test, seed, step and the last operations; set `LATCHLESS_DIFF_SEED=<seed>`
//! (decimal or 0x-hex) to run only that seed.

use crossbeam_epoch::Collector;
use latchless::cache::{Cache, CompareExchangeFailure, ManualClock, RemovalCause};
use latchless::queue::MsQueue;
use std::cell::{Cell, RefCell};
use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::{BuildHasher, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The seeded generator (SplitMix64), shared by the integration tests.
#[path = "common/rng.rs"]
mod rng;

use rng::Rng;

/// The queue's payload, which counts its live instances (`tests/common/drop_log.rs`).
#[path = "common/drop_log.rs"]
mod drop_log;

use drop_log::{DropLog, Tracked};

/// Steps per seed.
const STEPS: usize = if cfg!(miri) { 200 } else { 10_000 };

/// The seeds every test runs.
const SEEDS: [u64; 8] = [
    1,
    2,
    3,
    0xDEAD_BEEF,
    0x5EED_0001,
    0x0123_4567_89AB_CDEF,
    0xFFFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
];

/// The caches' hasher: SipHash with fixed keys, or, when `collide` is set, that hash reduced to
/// one of three values, so that distinct keys share their whole 64-bit hash and the cache must
/// tell them apart by `Eq` alone (a cache matching on the hash would return another key's value).
/// Every cache test collides on its even seeds (2 and 0x8000_0000_0000_0000, so one of the two
/// Miri runs too).
#[derive(Clone, Copy, Debug, Default)]
struct TestHasher {
    collide: bool,
}

impl TestHasher {
    fn for_seed(seed: u64) -> Self {
        Self {
            collide: seed.is_multiple_of(2),
        }
    }
}

struct TestHash {
    inner: DefaultHasher,
    collide: bool,
}

impl Hasher for TestHash {
    fn write(&mut self, bytes: &[u8]) {
        self.inner.write(bytes);
    }

    fn finish(&self) -> u64 {
        let h = self.inner.finish();
        if self.collide {
            h % 3
        } else {
            h
        }
    }
}

impl BuildHasher for TestHasher {
    type Hasher = TestHash;

    fn build_hasher(&self) -> TestHash {
        TestHash {
            inner: DefaultHasher::new(),
            collide: self.collide,
        }
    }
}

/// Where a run is: the step number and the last few operations, for the failure report.
#[derive(Debug, Default)]
struct Trace {
    step: Cell<usize>,
    recent: RefCell<VecDeque<String>>,
}

impl Trace {
    /// Notes that step `step` runs `op`.
    fn step(&self, step: usize, op: &dyn Debug) {
        self.step.set(step);
        let mut recent = self.recent.borrow_mut();
        if recent.len() == 8 {
            recent.pop_front();
        }
        recent.push_back(format!("{step}: {op:?}"));
    }
}

/// The seeds to run: `SEEDS` (only the first two under Miri, where a cache test takes about 15 s
/// per seed), or the one in `LATCHLESS_DIFF_SEED`.
fn seeds() -> Vec<u64> {
    match std::env::var("LATCHLESS_DIFF_SEED") {
        Ok(s) => {
            let s = s.trim();
            let seed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            vec![seed.unwrap_or_else(|e| panic!("LATCHLESS_DIFF_SEED={s:?}: {e}"))]
        }
        Err(_) => SEEDS[..if cfg!(miri) { 2 } else { SEEDS.len() }].to_vec(),
    }
}

/// Runs `body(seed, trace)` for every seed; if it panics, prints the test name, the seed, the
/// step and the last operations, then lets the panic go on.
fn for_each_seed(name: &str, body: impl Fn(u64, &Trace)) {
    for seed in seeds() {
        let trace = Trace::default();
        let result = panic::catch_unwind(AssertUnwindSafe(|| body(seed, &trace)));
        if let Err(panic) = result {
            eprintln!(
                "{name}: failed with seed {seed:#x} (LATCHLESS_DIFF_SEED={seed:#x}) at step {}; \
                 last operations:\n  {}",
                trace.step.get(),
                Vec::from(trace.recent.take()).join("\n  ")
            );
            panic::resume_unwind(panic);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MsQueue vs VecDeque.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum QueueStep {
    Push(u64),
    Pop,
    Len,
    IsEmpty,
    /// Drain at most this many values, leaving the rest.
    DrainSome(usize),
    DrainAll,
    /// Pop this many values through `into_iter`, then drop the iterator with the rest.
    IntoIterSome(usize),
}

/// The queue under test: on the global collector, or on a local one.
struct QueueUnderTest {
    queue: MsQueue<Tracked>,
    /// The local collector, if any, for fresh queues on the same kind of collector.
    collector: Option<Collector>,
}

impl QueueUnderTest {
    fn new(local: bool) -> Self {
        let collector = local.then(Collector::new);
        Self {
            queue: match &collector {
                Some(c) => MsQueue::with_collector(c.clone()),
                None => MsQueue::new(),
            },
            collector,
        }
    }

    /// A fresh empty queue on the same kind of collector.
    fn fresh(&self) -> MsQueue<Tracked> {
        match &self.collector {
            Some(collector) => MsQueue::with_collector(collector.clone()),
            None => MsQueue::new(),
        }
    }

    fn push(&self, v: Tracked) {
        self.queue.push(v);
    }

    fn pop(&self) -> Option<Tracked> {
        self.queue.pop()
    }
}

fn values(v: impl IntoIterator<Item = Tracked>) -> Vec<u64> {
    v.into_iter().map(|t| t.id as u64).collect()
}

#[test]
fn ms_queue_matches_vecdeque() {
    for_each_seed("ms_queue_matches_vecdeque", |seed, trace| {
        let mut rng = Rng::new(seed);
        // Values run from 1 to at most `STEPS`.
        let live = DropLog::new(STEPS + 1);
        let local = rng.chance(50);
        let mut q = QueueUnderTest::new(local);
        let mut model: VecDeque<u64> = VecDeque::new();
        let mut next_value = 0u64;
        let mut push_percent = 50;
        let mut max_len = 0;
        for step in 0..STEPS {
            if step % 512 == 0 {
                push_percent = [20, 50, 80][rng.below(3) as usize];
            }
            let r = rng.below(1_000);
            let op = if r < 10 * push_percent {
                next_value += 1;
                QueueStep::Push(next_value)
            } else if r < 920 {
                QueueStep::Pop
            } else if r < 950 {
                QueueStep::Len
            } else if r < 975 {
                QueueStep::IsEmpty
            } else if r < 996 {
                QueueStep::DrainSome(rng.below(16) as usize)
            } else if r < 998 {
                QueueStep::DrainAll
            } else {
                QueueStep::IntoIterSome(rng.below(model.len() as u64 / 2 + 2) as usize)
            };
            trace.step(step, &op);
            match op {
                QueueStep::Push(v) => {
                    q.push(Tracked::new(v as usize, live));
                    model.push_back(v);
                }
                QueueStep::Pop => {
                    assert_eq!(q.pop().map(|t| t.id as u64), model.pop_front());
                }
                QueueStep::Len => assert_eq!(q.queue.len(), model.len()),
                QueueStep::IsEmpty => assert_eq!(q.queue.is_empty(), model.is_empty()),
                QueueStep::DrainSome(k) => {
                    let got = values(q.queue.drain().take(k));
                    let want: Vec<u64> = model.drain(..k.min(model.len())).collect();
                    assert_eq!(got, want);
                }
                QueueStep::DrainAll => {
                    let got = values(q.queue.drain());
                    let want: Vec<u64> = model.drain(..).collect();
                    assert_eq!(got, want);
                    assert!(q.queue.is_empty());
                }
                QueueStep::IntoIterSome(k) => {
                    let fresh = q.fresh();
                    let queue = std::mem::replace(&mut q.queue, fresh);
                    let mut it = queue.into_iter();
                    let got = values(it.by_ref().take(k));
                    let want: Vec<u64> = model.drain(..k.min(model.len())).collect();
                    assert_eq!(got, want);
                    // The rest drops with the iterator.
                    drop(it);
                    model.clear();
                }
            }
            // Nothing leaked, nothing dropped twice: exactly the modelled values are alive.
            assert_eq!(
                live.alive_total(),
                model.len() as i64,
                "live values vs model length"
            );
            max_len = max_len.max(model.len());
        }
        assert_eq!(q.queue.len(), model.len());
        drop(q);
        assert_eq!(
            live.alive_total(),
            0,
            "values alive after the queue dropped"
        );
        live.assert_no_double_drop();
        // Under Miri, `STEPS` is too short for this check (and those like it below).
        if !cfg!(miri) {
            assert!(max_len > 100, "the queue never grew: max length {max_len}");
        }
        println!("seed {seed:#x}, local collector {local}: max length {max_len}");
    });
}

// ---------------------------------------------------------------------------------------------
// Cache vs HashMap.
// ---------------------------------------------------------------------------------------------

type Key = u16;
type Value = u32;

/// Values are drawn from a small domain, so that exchanges often find what they expect.
const VALUES: u64 = 6;

/// Checks `insert_if_absent(k, v)`'s result `got` against `model` (a refusal exactly when the
/// model holds `k`, handing the entry back), applies it to the model, and says whether the entry
/// went in.
fn insert_if_absent_as_model(
    model: &mut HashMap<Key, Value>,
    k: Key,
    v: Value,
    got: Result<(), (Key, Value)>,
) -> bool {
    match model.entry(k) {
        Entry::Occupied(_) => {
            assert_eq!(got, Err((k, v)), "insert_if_absent over a present key");
            false
        }
        Entry::Vacant(slot) => {
            assert_eq!(got, Ok(()));
            slot.insert(v);
            true
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum CacheStep {
    Get(Key),
    Peek(Key),
    ContainsKey(Key),
    Insert(Key, Value),
    InsertIfAbsent(Key, Value),
    Remove(Key),
    CompareExchange(Key, Value, Value),
    Len,
    /// Collect `iter()`.
    Iter,
    /// `retain` the entries whose value is not a multiple of the modulus.
    Retain(Value),
    Clear,
}

/// The predicate of [`CacheStep::Retain`]: keep a value unless `modulus` divides it.
fn kept(v: Value, modulus: Value) -> bool {
    !v.is_multiple_of(modulus)
}

/// A cache's contents through `iter`, sorted by key; fails on a key yielded twice.
fn contents(cache: &Cache<Key, Value, TestHasher>) -> Vec<(Key, Value)> {
    let mut pairs: Vec<(Key, Value)> = cache.iter().collect();
    pairs.sort_unstable();
    for w in pairs.windows(2) {
        assert_ne!(w[0].0, w[1].0, "iter yielded key {} twice", w[0].0);
    }
    pairs
}

/// Draws a cache operation over keys `0..keys`, a fraction of them (`hot_percent`%) from the
/// first `hot` keys. `expected` gives an exchange a plausible expected value, half the time.
fn cache_step(
    rng: &mut Rng,
    keys: u64,
    hot: u64,
    hot_percent: u64,
    clear_permille: u64,
    expected: impl Fn(Key) -> Option<Value>,
) -> CacheStep {
    let key = if rng.chance(hot_percent) {
        rng.below(hot)
    } else {
        rng.below(keys)
    } as Key;
    let value = rng.below(VALUES) as Value;
    let r = rng.below(1_000);
    if r < clear_permille {
        return CacheStep::Clear;
    }
    match r % 100 {
        0..=29 => CacheStep::Get(key),
        30..=39 => CacheStep::Peek(key),
        40..=44 => CacheStep::ContainsKey(key),
        45..=64 => CacheStep::Insert(key, value),
        65..=69 => CacheStep::InsertIfAbsent(key, value),
        70..=79 => CacheStep::Remove(key),
        80..=94 => {
            let current = match expected(key) {
                Some(v) if rng.chance(50) => v,
                _ => rng.below(VALUES) as Value,
            };
            CacheStep::CompareExchange(key, current, value)
        }
        95..=96 => CacheStep::Len,
        97 => CacheStep::Iter,
        98 => CacheStep::Retain(2 + rng.below(3) as Value),
        _ => CacheStep::Len,
    }
}

/// Counts of what the test observed, to compare with `Cache::stats`.
#[derive(Debug, Default)]
struct Observed {
    hits: u64,
    misses: u64,
    inserts: u64,
    evictions: u64,
}

impl Observed {
    fn assert_matches(&self, cache: &Cache<Key, Value, TestHasher>) {
        let s = cache.stats();
        assert_eq!(
            (s.hits, s.misses, s.inserts, s.evictions, s.refused),
            (self.hits, self.misses, self.inserts, self.evictions, 0),
            "stats (hits, misses, inserts, evictions, refused) vs observed"
        );
    }
}

#[test]
fn cache_without_eviction_matches_hashmap() {
    const KEYS: u64 = 16;
    for_each_seed("cache_without_eviction_matches_hashmap", |seed, trace| {
        let mut rng = Rng::new(seed);
        // Capacity exactly the key count half the time (full, yet never over), else 4x; an
        // index of one bucket a third of the time (every key in one bucket array).
        let capacity = if rng.chance(50) { KEYS } else { 4 * KEYS };
        let one_bucket = rng.below(3) == 0;
        let hasher = TestHasher::for_seed(seed);
        let builder = Cache::builder(capacity).hasher(hasher).count_lookups(true);
        let cache = if one_bucket {
            builder.index_buckets(1).build()
        } else {
            builder.build()
        };
        let mut model: HashMap<Key, Value> = HashMap::new();
        let mut seen = Observed::default();
        for step in 0..STEPS {
            let op = cache_step(&mut rng, KEYS, KEYS, 0, 2, |k| model.get(&k).copied());
            trace.step(step, &op);
            match op {
                CacheStep::Get(k) => {
                    let got = cache.get(&k);
                    assert_eq!(got, model.get(&k).copied());
                    if got.is_some() {
                        seen.hits += 1;
                    } else {
                        seen.misses += 1;
                    }
                }
                CacheStep::Peek(k) => assert_eq!(cache.peek(&k), model.get(&k).copied()),
                CacheStep::ContainsKey(k) => {
                    assert_eq!(cache.contains_key(&k), model.contains_key(&k));
                }
                CacheStep::Insert(k, v) => {
                    assert_eq!(cache.insert(k, v), model.insert(k, v));
                    seen.inserts += 1;
                }
                CacheStep::InsertIfAbsent(k, v) => {
                    if insert_if_absent_as_model(&mut model, k, v, cache.insert_if_absent(k, v)) {
                        seen.inserts += 1;
                    }
                }
                CacheStep::Remove(k) => assert_eq!(cache.remove(&k), model.remove(&k)),
                CacheStep::CompareExchange(k, current, new) => {
                    let got = cache.compare_exchange(&k, &current, new);
                    match model.get(&k).copied() {
                        Some(v) if v == current => {
                            assert_eq!(got, Ok(()));
                            model.insert(k, new);
                            seen.inserts += 1;
                        }
                        held => {
                            let e = got.expect_err("exchange succeeded against the model");
                            assert_eq!(e.current, held);
                            assert_eq!(e.new, new);
                            assert_eq!(e.failure, CompareExchangeFailure::Mismatch);
                        }
                    }
                }
                CacheStep::Len => {
                    assert_eq!(cache.len(), model.len());
                    assert_eq!(cache.is_empty(), model.is_empty());
                }
                CacheStep::Iter => {
                    let mut want: Vec<(Key, Value)> = model.iter().map(|(&k, &v)| (k, v)).collect();
                    want.sort_unstable();
                    assert_eq!(contents(&cache), want, "iter vs the model");
                }
                CacheStep::Retain(m) => {
                    cache.retain(|_, &v| kept(v, m));
                    model.retain(|_, &mut v| kept(v, m));
                }
                CacheStep::Clear => {
                    cache.clear();
                    model.clear();
                }
            }
            assert_eq!(cache.len(), model.len(), "len after the step");
            assert_eq!(cache.weight(), model.len() as u64, "weight after the step");
            seen.assert_matches(&cache);
        }
        for k in 0..KEYS as Key {
            assert_eq!(
                cache.peek(&k),
                model.get(&k).copied(),
                "final state of key {k}"
            );
        }
        println!(
            "seed {seed:#x}, capacity {capacity}, one bucket {one_bucket}, {hasher:?}: {} hits, \
             {} misses, \
             {} inserts",
            seen.hits, seen.misses, seen.inserts
        );
    });
}

/// Keys and hot set of the eviction tests.
const EVICTION_KEYS: u64 = 64;
const HOT_KEYS: u64 = 8;

/// The capacity of an eviction test: 1, 4, 8 or 16.
fn small_capacity(rng: &mut Rng) -> u64 {
    [1, 4, 8, 16][rng.below(4) as usize]
}

/// Checks that a value the cache returned for `k` (if any) is the last one inserted for it;
/// returns 1 if there was a value to check.
fn latest(last: &HashMap<Key, Value>, k: Key, got: Option<Value>, what: &str) -> u64 {
    if let Some(v) = got {
        assert_eq!(
            Some(v),
            last.get(&k).copied(),
            "{what} for key {k} returned a value that is not the last inserted"
        );
    }
    u64::from(got.is_some())
}

#[test]
fn cache_with_eviction_hits_return_the_last_value_inserted() {
    for_each_seed(
        "cache_with_eviction_hits_return_the_last_value_inserted",
        |seed, trace| {
            let mut rng = Rng::new(seed);
            let capacity = small_capacity(&mut rng);
            let cache = Cache::builder(capacity)
                .hasher(TestHasher::for_seed(seed))
                .count_lookups(true)
                .build();
            // The last value written for each key; `None` once removed. A key may also be absent
            // from the cache because it was evicted: the cache may miss, but never return
            // anything other than this.
            let mut last: HashMap<Key, Value> = HashMap::new();
            let mut seen = Observed::default();
            let (mut hit_checks, mut full_scans) = (0u64, 0u64);
            for step in 0..STEPS {
                let op = cache_step(&mut rng, EVICTION_KEYS, HOT_KEYS, 60, 0, |k| {
                    last.get(&k).copied()
                });
                trace.step(step, &op);
                let len_before = cache.len() as u64;
                // How the step changed the entry count, but for evictions.
                let (mut added, mut removed) = (0u64, 0u64);
                match op {
                    CacheStep::Get(k) => {
                        let got = cache.get(&k);
                        hit_checks += latest(&last, k, got, "get");
                        if got.is_some() {
                            seen.hits += 1;
                        } else {
                            seen.misses += 1;
                        }
                    }
                    CacheStep::Peek(k) => hit_checks += latest(&last, k, cache.peek(&k), "peek"),
                    CacheStep::ContainsKey(k) => {
                        if cache.contains_key(&k) {
                            assert!(last.contains_key(&k), "contains_key of a removed key {k}");
                        }
                    }
                    CacheStep::Insert(k, v) => {
                        let replaced = cache.insert(k, v);
                        hit_checks += latest(&last, k, replaced, "insert (replaced value)");
                        added = u64::from(replaced.is_none());
                        last.insert(k, v);
                        seen.inserts += 1;
                    }
                    CacheStep::InsertIfAbsent(k, v) => match cache.insert_if_absent(k, v) {
                        Ok(()) => {
                            added = 1;
                            last.insert(k, v);
                            seen.inserts += 1;
                        }
                        Err(back) => {
                            assert_eq!(back, (k, v), "the refused entry is handed back");
                            let held = cache.peek(&k);
                            assert!(held.is_some(), "insert_if_absent refused an absent key {k}");
                            hit_checks += latest(&last, k, held, "insert_if_absent (present)");
                        }
                    },
                    CacheStep::Remove(k) => {
                        let got = cache.remove(&k);
                        hit_checks += latest(&last, k, got, "remove");
                        removed = u64::from(got.is_some());
                        last.remove(&k);
                    }
                    CacheStep::CompareExchange(k, current, new) => {
                        match cache.compare_exchange(&k, &current, new) {
                            Ok(()) => {
                                assert_eq!(
                                    last.get(&k),
                                    Some(&current),
                                    "exchange succeeded from a value that is not the last \
                                     inserted"
                                );
                                last.insert(k, new);
                                seen.inserts += 1;
                            }
                            Err(e) => {
                                hit_checks +=
                                    latest(&last, k, e.current, "failed exchange (current)");
                                assert_ne!(e.current, Some(current), "exchange failed on a match");
                                assert_eq!(e.new, new);
                                assert_eq!(e.failure, CompareExchangeFailure::Mismatch);
                            }
                        }
                    }
                    CacheStep::Len => {
                        let len = cache.len();
                        assert_eq!(cache.is_empty(), len == 0, "is_empty vs len {len}");
                    }
                    CacheStep::Iter => {
                        let pairs = contents(&cache);
                        assert_eq!(pairs.len(), cache.len(), "iter vs len");
                        for (k, v) in pairs {
                            hit_checks += latest(&last, k, Some(v), "iter");
                        }
                    }
                    CacheStep::Retain(m) => {
                        cache.retain(|_, &v| kept(v, m));
                        removed = len_before - cache.len() as u64;
                        last.retain(|_, &mut v| kept(v, m));
                        for (k, v) in contents(&cache) {
                            assert!(kept(v, m), "retain kept ({k}, {v})");
                        }
                    }
                    CacheStep::Clear => unreachable!("no clear in this test"),
                }
                let len = cache.len() as u64;
                assert!(len <= capacity, "len {len} over capacity {capacity}");
                assert_eq!(cache.weight(), len, "weight vs len");
                // Entries that left without a remove were evicted: exactly as many as needed.
                let evicted = (len_before + added - removed)
                    .checked_sub(len)
                    .expect("more entries than were added");
                let over = (len_before + added - removed).saturating_sub(capacity);
                assert_eq!(
                    evicted, over,
                    "evictions in this step vs entries over capacity"
                );
                seen.evictions += evicted;
                seen.assert_matches(&cache);
                if step % 64 == 63 {
                    full_scans += 1;
                    let present = (0..EVICTION_KEYS as Key)
                        .filter(|k| cache.contains_key(k))
                        .count();
                    assert_eq!(present, cache.len(), "keys present vs len");
                }
            }
            println!(
                "seed {seed:#x}, capacity {capacity}: {hit_checks} returned values checked, \
                 {} evictions, {full_scans} full scans",
                seen.evictions
            );
            if !cfg!(miri) {
                assert!(seen.evictions > 0, "nothing was evicted");
                assert!(hit_checks > 100, "too few hits to check: {hit_checks}");
            }
            assert!(full_scans > 0);
        },
    );
}

/// What the eviction listener heard.
type Events = Arc<Mutex<Vec<(Key, Value, RemovalCause)>>>;

#[test]
fn cache_with_eviction_matches_hashmap_through_the_listener() {
    for_each_seed(
        "cache_with_eviction_matches_hashmap_through_the_listener",
        |seed, trace| {
            let mut rng = Rng::new(seed);
            let capacity = small_capacity(&mut rng);
            let events: Events = Arc::default();
            let sink = Arc::clone(&events);
            let cache = Cache::builder(capacity)
                .hasher(TestHasher::for_seed(seed))
                .count_lookups(true)
                .eviction_listener(move |k: &Key, v: &Value, cause| {
                    sink.lock().unwrap().push((*k, *v, cause));
                })
                .build();
            // Exact: evictions reported by the listener are applied to it.
            let mut model: HashMap<Key, Value> = HashMap::new();
            let mut seen = Observed::default();
            for step in 0..STEPS {
                let op = cache_step(&mut rng, EVICTION_KEYS, HOT_KEYS, 60, 2, |k| {
                    model.get(&k).copied()
                });
                trace.step(step, &op);
                // What the step should report besides evictions: `Replaced` or `Removed` entries.
                let mut expected_reports: Vec<(Key, Value, RemovalCause)> = Vec::new();
                match op {
                    CacheStep::Get(k) => {
                        let got = cache.get(&k);
                        assert_eq!(got, model.get(&k).copied());
                        if got.is_some() {
                            seen.hits += 1;
                        } else {
                            seen.misses += 1;
                        }
                    }
                    CacheStep::Peek(k) => assert_eq!(cache.peek(&k), model.get(&k).copied()),
                    CacheStep::ContainsKey(k) => {
                        assert_eq!(cache.contains_key(&k), model.contains_key(&k));
                    }
                    CacheStep::Insert(k, v) => {
                        let old = model.insert(k, v);
                        assert_eq!(cache.insert(k, v), old);
                        expected_reports.extend(old.map(|o| (k, o, RemovalCause::Replaced)));
                        seen.inserts += 1;
                    }
                    CacheStep::InsertIfAbsent(k, v) => {
                        let got = cache.insert_if_absent(k, v);
                        if insert_if_absent_as_model(&mut model, k, v, got) {
                            seen.inserts += 1;
                        }
                    }
                    CacheStep::Remove(k) => {
                        let old = model.remove(&k);
                        assert_eq!(cache.remove(&k), old);
                        expected_reports.extend(old.map(|o| (k, o, RemovalCause::Removed)));
                    }
                    CacheStep::CompareExchange(k, current, new) => {
                        let got = cache.compare_exchange(&k, &current, new);
                        match model.get(&k).copied() {
                            Some(v) if v == current => {
                                assert_eq!(got, Ok(()));
                                model.insert(k, new);
                                expected_reports.push((k, current, RemovalCause::Replaced));
                                seen.inserts += 1;
                            }
                            held => {
                                let e = got.expect_err("exchange succeeded against the model");
                                assert_eq!(e.current, held);
                                assert_eq!(e.new, new);
                                assert_eq!(e.failure, CompareExchangeFailure::Mismatch);
                            }
                        }
                    }
                    CacheStep::Len => assert_eq!(cache.len(), model.len()),
                    CacheStep::Iter => {
                        let mut want: Vec<(Key, Value)> =
                            model.iter().map(|(&k, &v)| (k, v)).collect();
                        want.sort_unstable();
                        assert_eq!(contents(&cache), want, "iter vs the model");
                    }
                    CacheStep::Retain(m) => {
                        cache.retain(|_, &v| kept(v, m));
                        let mut gone: Vec<_> = model
                            .iter()
                            .filter(|&(_, &v)| !kept(v, m))
                            .map(|(&k, &v)| (k, v, RemovalCause::Removed))
                            .collect();
                        gone.sort_unstable_by_key(|&(k, v, _)| (k, v));
                        model.retain(|_, &mut v| kept(v, m));
                        expected_reports = gone;
                    }
                    CacheStep::Clear => {
                        cache.clear();
                        let mut all: Vec<_> = model
                            .drain()
                            .map(|(k, v)| (k, v, RemovalCause::Removed))
                            .collect();
                        all.sort_unstable_by_key(|&(k, v, _)| (k, v));
                        expected_reports = all;
                    }
                }
                let mut reports = Vec::new();
                for (k, v, cause) in events.lock().unwrap().drain(..) {
                    if cause == RemovalCause::Evicted {
                        assert_eq!(
                            model.remove(&k),
                            Some(v),
                            "the listener reported evicting ({k}, {v}), which the model lacks"
                        );
                        seen.evictions += 1;
                    } else {
                        reports.push((k, v, cause));
                    }
                }
                if matches!(op, CacheStep::Clear | CacheStep::Retain(_)) {
                    reports.sort_unstable_by_key(|&(k, v, _)| (k, v));
                }
                assert_eq!(
                    reports, expected_reports,
                    "listener reports besides evictions"
                );
                assert_eq!(cache.len(), model.len(), "len after the step");
                assert!(cache.len() as u64 <= capacity, "len over capacity");
                seen.assert_matches(&cache);
            }
            println!(
                "seed {seed:#x}, capacity {capacity}: {} hits, {} misses, {} evictions",
                seen.hits, seen.misses, seen.evictions
            );
            if !cfg!(miri) {
                assert!(seen.evictions > 0, "nothing was evicted");
            }
            for k in 0..EVICTION_KEYS as Key {
                assert_eq!(
                    cache.peek(&k),
                    model.get(&k).copied(),
                    "final state of key {k}"
                );
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Cache with expiry vs a HashMap of deadlines.
// ---------------------------------------------------------------------------------------------

/// A step of the expiry test: a cache operation, or one of the expiry operations.
#[derive(Clone, Copy, Debug)]
enum ExpiryStep {
    Cache(CacheStep),
    /// Moves the clock forward by this many nanoseconds.
    AdvanceClock(u64),
    /// `insert_with_ttl` with this many nanoseconds to live.
    InsertWithTtl(Key, Value, u64),
    PurgeExpired,
}

/// The model's entry: the value, its deadline (`None`: never), and the time of its latest
/// access (its insertion, or a `get` that found it).
type Timed = (Value, Option<u64>, u64);

/// Whether a model entry is alive at `now`, as the cache decides it, in a cache with time-to-idle
/// `tti` (if any). The time-to-idle is under 16 ns, so the cache's access ticks are single
/// nanoseconds and its idle expiry is exact.
fn alive(&(_, deadline, last): &Timed, now: u64, tti: Option<u64>) -> bool {
    deadline.is_none_or(|d| now < d) && tti.is_none_or(|t| now < last + t)
}

#[test]
fn cache_with_expiry_matches_a_map_of_deadlines_through_the_listener() {
    const KEYS: u64 = 16;
    for_each_seed(
        "cache_with_expiry_matches_a_map_of_deadlines_through_the_listener",
        |seed, trace| {
            let mut rng = Rng::new(seed);
            // A builder TTL of 1 to 6 ns on most seeds; none on one in four (only
            // `insert_with_ttl` entries then expire).
            let ttl = (rng.below(4) != 0).then(|| 1 + rng.below(6));
            // A builder time-to-idle of 1 to 8 ns on half the seeds.
            let tti = (rng.below(2) == 0).then(|| 1 + rng.below(8));
            let clock = ManualClock::new();
            let events: Events = Arc::default();
            let sink = Arc::clone(&events);
            // A capacity of the key count: no eviction, even with every key's entry expired and
            // not yet removed.
            let mut builder = Cache::builder(KEYS)
                .hasher(TestHasher::for_seed(seed))
                .clock(clock.clone())
                .eviction_listener(move |k: &Key, v: &Value, cause| {
                    sink.lock().unwrap().push((*k, *v, cause));
                });
            if let Some(ttl) = ttl {
                builder = builder.time_to_live(Duration::from_nanos(ttl));
            }
            if let Some(tti) = tti {
                builder = builder.time_to_idle(Duration::from_nanos(tti));
            }
            let cache = builder.build();
            // Every entry the cache holds, expired or not: an entry leaves the model only when
            // the listener reports it, so the cache's lazy removals are checked one by one.
            let mut model: HashMap<Key, Timed> = HashMap::new();
            let mut now = 0u64;
            let default_deadline = |now: u64| ttl.map(|t| now + t);
            let (mut expired_reports, mut live_refusals) = (0u64, 0u64);
            for step in 0..STEPS {
                let op = match rng.below(100) {
                    0..=7 => ExpiryStep::AdvanceClock(rng.below(3)),
                    8..=15 => ExpiryStep::InsertWithTtl(
                        rng.below(KEYS) as Key,
                        rng.below(VALUES) as Value,
                        rng.below(7),
                    ),
                    16 => ExpiryStep::PurgeExpired,
                    _ => ExpiryStep::Cache(cache_step(&mut rng, KEYS, KEYS, 0, 2, |k| {
                        model.get(&k).map(|&(v, ..)| v)
                    })),
                };
                trace.step(step, &op);
                // The value a reader should see for `k`: only a live one.
                let live = |model: &HashMap<Key, Timed>, k: Key| {
                    model
                        .get(&k)
                        .filter(|e| alive(e, now, tti))
                        .map(|&(v, ..)| v)
                };
                // What this step stores, applied after the listener's reports: (key, entry).
                let mut stored: Option<(Key, Timed)> = None;
                match op {
                    ExpiryStep::AdvanceClock(d) => {
                        clock.advance(Duration::from_nanos(d));
                        now += d;
                    }
                    ExpiryStep::InsertWithTtl(k, v, t) => {
                        let want = live(&model, k);
                        let got = cache.insert_with_ttl(k, v, Duration::from_nanos(t));
                        assert_eq!(got, want, "insert_with_ttl's replaced value");
                        stored = Some((k, (v, Some(now + t), now)));
                    }
                    ExpiryStep::PurgeExpired => cache.purge_expired(),
                    ExpiryStep::Cache(op) => match op {
                        CacheStep::Get(k) => {
                            let want = live(&model, k);
                            assert_eq!(cache.get(&k), want);
                            // A hit is an access: the idle time starts again.
                            if want.is_some() {
                                model.get_mut(&k).expect("live").2 = now;
                            }
                        }
                        CacheStep::Peek(k) => assert_eq!(cache.peek(&k), live(&model, k)),
                        CacheStep::ContainsKey(k) => {
                            assert_eq!(cache.contains_key(&k), live(&model, k).is_some());
                        }
                        CacheStep::Insert(k, v) => {
                            assert_eq!(cache.insert(k, v), live(&model, k));
                            stored = Some((k, (v, default_deadline(now), now)));
                        }
                        CacheStep::InsertIfAbsent(k, v) => {
                            let want = live(&model, k);
                            let got = cache.insert_if_absent(k, v);
                            if want.is_some() {
                                assert_eq!(got, Err((k, v)), "insert_if_absent over a live key");
                                live_refusals += 1;
                            } else {
                                assert_eq!(got, Ok(()));
                                stored = Some((k, (v, default_deadline(now), now)));
                            }
                        }
                        CacheStep::Remove(k) => assert_eq!(cache.remove(&k), live(&model, k)),
                        CacheStep::CompareExchange(k, current, new) => {
                            let want = live(&model, k);
                            let got = cache.compare_exchange(&k, &current, new);
                            if want == Some(current) {
                                assert_eq!(got, Ok(()));
                                stored = Some((k, (new, default_deadline(now), now)));
                            } else {
                                let e = got.expect_err("exchange succeeded against the model");
                                assert_eq!((e.current, e.new), (want, new));
                            }
                        }
                        CacheStep::Len => {
                            // Expired entries not yet removed still count: the model holds them.
                            assert_eq!(cache.len(), model.len());
                        }
                        CacheStep::Iter => {
                            let mut want: Vec<(Key, Value)> = model
                                .iter()
                                .filter(|(_, e)| alive(e, now, tti))
                                .map(|(&k, &(v, ..))| (k, v))
                                .collect();
                            want.sort_unstable();
                            assert_eq!(contents(&cache), want, "iter vs the live model");
                        }
                        CacheStep::Retain(m) => cache.retain(|_, &v| kept(v, m)),
                        CacheStep::Clear => cache.clear(),
                    },
                }
                // The listener's reports leave the model: each must be the model's entry for its
                // key, expired exactly when reported `Expired`. The step's own new entry may be
                // reported too (an already expired one, met by the sweep that follows a
                // replacement): it is in the model from the first report of its key that finds
                // the key absent (the replaced entry's report comes first).
                for (k, v, cause) in events.lock().unwrap().drain(..) {
                    if !model.contains_key(&k) && stored.is_some_and(|(sk, _)| sk == k) {
                        let (sk, e) = stored.take().expect("checked");
                        model.insert(sk, e);
                    }
                    let e = model
                        .remove(&k)
                        .unwrap_or_else(|| panic!("{cause:?} reported for absent key {k}"));
                    assert_eq!(e.0, v, "{cause:?} reported a value the cache did not hold");
                    match cause {
                        RemovalCause::Expired => {
                            assert!(!alive(&e, now, tti), "a live entry reported expired");
                            expired_reports += 1;
                        }
                        RemovalCause::Replaced | RemovalCause::Removed => {
                            assert!(
                                alive(&e, now, tti),
                                "an expired entry reported as {cause:?}"
                            );
                        }
                        other => panic!("unexpected {other:?} without eviction"),
                    }
                }
                // What the step must have removed, it has.
                let k_of = |op: &ExpiryStep| match *op {
                    ExpiryStep::InsertWithTtl(k, ..) => Some(k),
                    ExpiryStep::Cache(
                        CacheStep::Get(k)
                        | CacheStep::Peek(k)
                        | CacheStep::ContainsKey(k)
                        | CacheStep::Insert(k, _)
                        | CacheStep::InsertIfAbsent(k, _)
                        | CacheStep::Remove(k)
                        | CacheStep::CompareExchange(k, ..),
                    ) => Some(k),
                    _ => None,
                };
                if let Some(k) = k_of(&op) {
                    if let Some(e) = model.get(&k) {
                        assert!(
                            alive(e, now, tti),
                            "a lookup of key {k} left its expired entry"
                        );
                    }
                }
                match op {
                    ExpiryStep::PurgeExpired | ExpiryStep::Cache(CacheStep::Retain(_)) => {
                        assert!(
                            model.values().all(|e| alive(e, now, tti)),
                            "an expired entry survived {op:?}"
                        );
                    }
                    ExpiryStep::Cache(CacheStep::Clear) => assert!(model.is_empty()),
                    _ => {}
                }
                if let ExpiryStep::Cache(CacheStep::Retain(m)) = op {
                    assert!(
                        model.values().all(|&(v, ..)| kept(v, m)),
                        "retain kept a reject"
                    );
                }
                if let Some((k, e)) = stored {
                    assert!(
                        model.insert(k, e).is_none(),
                        "the entry replaced for key {k} was not reported"
                    );
                }
                assert_eq!(cache.len(), model.len(), "len after the step");
                assert_eq!(cache.weight(), model.len() as u64, "weight after the step");
            }
            // Everything expires; a purge reports each remaining expiring entry once.
            clock.advance(Duration::from_nanos(1_000));
            now += 1_000;
            cache.purge_expired();
            for (k, v, cause) in events.lock().unwrap().drain(..) {
                assert_eq!(cause, RemovalCause::Expired);
                assert_eq!(model.remove(&k).map(|e| e.0), Some(v));
                expired_reports += 1;
            }
            assert!(
                model.values().all(|e| alive(e, now, tti)),
                "left: {model:?}"
            );
            assert_eq!(cache.len(), model.len());
            println!(
                "seed {seed:#x}, ttl {ttl:?}, tti {tti:?}: {expired_reports} expiries reported, \
                 {live_refusals} insert_if_absent refusals"
            );
            if !cfg!(miri) {
                assert!(expired_reports > 100, "too few expiries: {expired_reports}");
            }
        },
    );
}
