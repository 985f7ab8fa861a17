//! The `cache` target: [`Cache`] against a `HashMap`, in two modes chosen by the input.
//!
//! - **No eviction**: 16 keys, a capacity of 17 to 64 (more than the key space), every entry
//!   weighing 1. The cache must behave exactly like the map: every result equal, nothing ever
//!   evicted, `len() == weight()` the map's size.
//! - **Eviction**: 24 keys, a capacity of 0 to 16 and a weigher reading each value's weight (0 to
//!   capacity + 1, so some entries are too heavy and are refused; zero weights only when the input
//!   allows them). The eviction listener's `Evicted` notices are applied to the map (each must
//!   name an entry the map holds, with that value), which keeps the map exact: every hit returns
//!   the last value stored for its key, and every other result equals the map's. After every step
//!   `weight() <= capacity()` and equals the map's total, `len() <= capacity()` when no entry
//!   weighs 0, and a step that evicted stopped as soon as the cache fitted (the last victim was
//!   needed).
//!
//! In both modes: `get`, `get_with_guard`, `peek`, `contains_key`, `insert`, `insert_with_guard`,
//! `try_insert`, `remove`, `remove_with_guard`, `compare_exchange` (with and without guard, from
//! the held value or another), `get_or_insert_with` (`init` runs exactly on a miss), `clear`,
//! holding a second participant's guard across steps, flushing epoch garbage. The listener's
//! `Replaced`, `Removed` and `Refused` notices must be exactly those the model predicts (`insert`
//! reports a refusal, `try_insert` and `compare_exchange` hand the value back instead), `stats()`
//! must equal the counts of what was observed, and the hasher is seeded, constant (every key in
//! one bucket, every hash equal) or three-valued. Values count their live instances: once the
//! cache, guards and collector (built per input) are gone, none is left.

use arbitrary::{Arbitrary, Unstructured};
use crossbeam_epoch::{Collector, Guard, LocalHandle};
use latchless::cache::RemovalCause;
use latchless::cache::{Cache, CacheStats, CompareExchangeError, CompareExchangeFailure};
use std::cell::Cell;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// At most this many operations per input.
const MAX_OPS: usize = 2_000;
/// Keys of the no-eviction mode; its capacity is always larger.
const KEYS_NO_EVICTION: u8 = 16;
/// Keys of the eviction mode.
const KEYS_EVICTION: u8 = 24;
/// Distinct value tags: few, so that exchanges often find what they expect.
const TAGS: u8 = 4;

type Key = u8;

/// A cache value: a tag and a weight (what the weigher reads), plus a count of live instances
/// shared by every value of the input, to catch an entry dropped twice or never.
#[derive(Debug)]
struct Val {
    tag: u8,
    weight: u8,
    live: Arc<AtomicIsize>,
}

impl Val {
    fn new(tag: u8, weight: u8, live: &Arc<AtomicIsize>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        Self {
            tag,
            weight,
            live: Arc::clone(live),
        }
    }
}

impl Clone for Val {
    fn clone(&self) -> Self {
        Self::new(self.tag, self.weight, &self.live)
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PartialEq for Val {
    fn eq(&self, other: &Self) -> bool {
        (self.tag, self.weight) == (other.tag, other.weight)
    }
}

/// A value as decoded; reduced to the mode's tags and weights by [`Harness::val`].
#[derive(Arbitrary, Debug, Clone, Copy)]
struct RawVal {
    tag: u8,
    weight: u8,
}

/// The expected value of a `compare_exchange`.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Current {
    /// The value the model holds for the key (a random one if none).
    Held(RawVal),
    Other(RawVal),
}

/// The hash function: the keys' own hashes, or collisions on purpose.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum HashKind {
    Seeded,
    /// Every key hashes to the same value: one bucket, every lookup compares keys.
    Constant,
    /// Three distinct hashes, spread over the word.
    Three,
}

/// How many buckets the index gets.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Buckets {
    FromCapacity,
    One,
    Four,
}

/// The cache's configuration, decoded first.
#[derive(Arbitrary, Debug)]
struct Config {
    evicting: bool,
    capacity: u8,
    zero_weights: bool,
    hasher: HashKind,
    buckets: Buckets,
}

/// One step, decoded from the fuzzer's bytes.
#[derive(Arbitrary, Debug)]
enum Op {
    Get(Key),
    GetWithGuard(Key),
    Peek(Key),
    ContainsKey(Key),
    Insert(Key, RawVal),
    InsertWithGuard(Key, RawVal),
    TryInsert(Key, RawVal),
    Remove(Key),
    RemoveWithGuard(Key),
    CompareExchange {
        key: Key,
        current: Current,
        new: RawVal,
        with_guard: bool,
    },
    GetOrInsertWith(Key, RawVal),
    /// Clears when the byte is below 16 (rare in random inputs, where it would keep the cache
    /// nearly empty).
    Clear(u8),
    /// Pins the second handle and keeps the guard across steps; the `*_with_guard` steps use it.
    HoldGuard,
    ReleaseGuard,
    /// Flushes the main handle's garbage a few times, letting the epoch advance.
    Flush,
    /// Collects `iter()` and compares it with the model.
    Iter,
    /// `retain`s the values whose tag `2 + byte % 3` does not divide.
    Retain(u8),
}

impl Op {
    /// Reduces every key to the mode's key space.
    fn with_keys(mut self, keys: u8) -> Self {
        match &mut self {
            Op::Get(k)
            | Op::GetWithGuard(k)
            | Op::Peek(k)
            | Op::ContainsKey(k)
            | Op::Insert(k, _)
            | Op::InsertWithGuard(k, _)
            | Op::TryInsert(k, _)
            | Op::Remove(k)
            | Op::RemoveWithGuard(k)
            | Op::CompareExchange { key: k, .. }
            | Op::GetOrInsertWith(k, _) => *k %= keys,
            Op::Clear(_)
            | Op::HoldGuard
            | Op::ReleaseGuard
            | Op::Flush
            | Op::Iter
            | Op::Retain(_) => {}
        }
        self
    }
}

/// A `BuildHasher` for [`HashKind`]: `DefaultHasher` with fixed keys (reproducible eviction),
/// then collapsed as the kind says.
#[derive(Clone, Copy, Debug)]
struct FuzzState(HashKind);

impl BuildHasher for FuzzState {
    type Hasher = FuzzHasher;

    fn build_hasher(&self) -> FuzzHasher {
        FuzzHasher(DefaultHasher::new(), self.0)
    }
}

/// The hasher of [`FuzzState`].
struct FuzzHasher(DefaultHasher, HashKind);

impl Hasher for FuzzHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    fn finish(&self) -> u64 {
        let h = self.0.finish();
        match self.1 {
            HashKind::Seeded => h,
            HashKind::Constant => 0x9E37_79B9_7F4A_7C15,
            HashKind::Three => (h % 3).wrapping_mul(u64::MAX / 3),
        }
    }
}

/// Everything the eviction listener heard, in order.
type Events = Arc<Mutex<Vec<(Key, Val, RemovalCause)>>>;

/// The cache under test and its model. Fields drop in order: the held guard and the cache
/// before the handles; the collector goes with the last of them.
struct Harness {
    held: Option<Guard>,
    cache: Cache<Key, Val, FuzzState>,
    main: LocalHandle,
    other: LocalHandle,
    events: Events,
    /// Exactly what the cache holds: evictions are applied as the listener reports them.
    model: HashMap<Key, Val>,
    /// What `stats()` must say.
    stats: CacheStats,
    capacity: u64,
    evicting: bool,
    zero_weights: bool,
    live: Arc<AtomicIsize>,
    step: usize,
}

impl Harness {
    fn new(config: &Config, live: &Arc<AtomicIsize>) -> Self {
        let capacity = if config.evicting {
            u64::from(config.capacity % 17)
        } else {
            u64::from(KEYS_NO_EVICTION + 1 + config.capacity % 48)
        };
        let collector = Collector::new();
        let events: Events = Arc::default();
        let sink = Arc::clone(&events);
        let mut builder = Cache::builder(capacity)
            .hasher(FuzzState(config.hasher))
            .count_lookups(true)
            .collector(collector.clone())
            .eviction_listener(move |k: &Key, v: &Val, cause| {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((*k, v.clone(), cause));
            });
        if config.evicting {
            builder = builder.weigher(|_: &Key, v: &Val| u64::from(v.weight));
        }
        builder = match config.buckets {
            Buckets::FromCapacity => builder,
            Buckets::One => builder.index_buckets(1),
            Buckets::Four => builder.index_buckets(4),
        };
        Self {
            held: None,
            cache: builder.build(),
            main: collector.register(),
            other: collector.register(),
            events,
            model: HashMap::new(),
            stats: CacheStats::default(),
            capacity,
            evicting: config.evicting,
            zero_weights: config.evicting && config.zero_weights,
            live: Arc::clone(live),
            step: 0,
        }
    }

    /// The value `raw` stands for in this mode: weight 1 without eviction; 0 to capacity + 1
    /// (at least 1 unless zero weights are on) with it.
    fn val(&self, raw: RawVal) -> Val {
        let weight = if self.evicting {
            let w = u64::from(raw.weight) % (self.capacity + 2);
            let w = if self.zero_weights { w } else { w.max(1) };
            u8::try_from(w).expect("capacity + 1 fits a u8")
        } else {
            1
        };
        Val::new(raw.tag % TAGS, weight, &self.live)
    }

    fn weight(&self, v: &Val) -> u64 {
        if self.evicting {
            u64::from(v.weight)
        } else {
            1
        }
    }

    fn fits(&self, v: &Val) -> bool {
        self.weight(v) <= self.capacity
    }

    /// Runs `f` under the held guard, or a fresh pin of the main handle.
    fn with_guard<R>(held: &Option<Guard>, main: &LocalHandle, f: impl FnOnce(&Guard) -> R) -> R {
        match held {
            Some(g) => f(g),
            None => f(&main.pin()),
        }
    }

    /// Records a lookup that counts in the statistics.
    fn lookup(&mut self, hit: bool) {
        if hit {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
    }

    /// The model's side of an insert that the cache accepts: returns the replaced value and adds
    /// its `Replaced` notice to `reports`.
    fn model_insert(
        &mut self,
        k: Key,
        v: Val,
        reports: &mut Vec<(Key, Val, RemovalCause)>,
    ) -> Option<Val> {
        self.stats.inserts += 1;
        let old = self.model.insert(k, v);
        if let Some(old) = &old {
            reports.push((k, old.clone(), RemovalCause::Replaced));
        }
        old
    }

    /// Applies `op` to the cache and the model, checks the results, and returns the listener
    /// notices other than evictions that the step must have produced.
    fn apply(&mut self, op: &Op) -> Vec<(Key, Val, RemovalCause)> {
        let step = self.step;
        let mut reports = Vec::new();
        match *op {
            Op::Get(k) | Op::GetWithGuard(k) => {
                let got = if matches!(op, Op::Get(_)) {
                    self.cache.get(&k)
                } else {
                    Self::with_guard(&self.held, &self.main, |g| self.cache.get_with_guard(&k, g))
                };
                assert_eq!(
                    got.as_ref(),
                    self.model.get(&k),
                    "step {step}: {op:?}: not the last value stored for the key"
                );
                self.lookup(got.is_some());
            }
            Op::Peek(k) => assert_eq!(
                self.cache.peek(&k).as_ref(),
                self.model.get(&k),
                "step {step}: {op:?}"
            ),
            Op::ContainsKey(k) => assert_eq!(
                self.cache.contains_key(&k),
                self.model.contains_key(&k),
                "step {step}: {op:?}"
            ),
            Op::Insert(k, raw) | Op::InsertWithGuard(k, raw) => {
                let v = self.val(raw);
                let got = if matches!(op, Op::Insert(..)) {
                    self.cache.insert(k, v.clone())
                } else {
                    let v = v.clone();
                    Self::with_guard(&self.held, &self.main, |g| {
                        self.cache.insert_with_guard(k, v, g)
                    })
                };
                let want = if self.fits(&v) {
                    self.model_insert(k, v, &mut reports)
                } else {
                    // Refused: reported, dropped, `None` returned; the old value stays.
                    self.stats.refused += 1;
                    reports.push((k, v, RemovalCause::Refused));
                    None
                };
                assert_eq!(got, want, "step {step}: {op:?}: the replaced value");
            }
            Op::TryInsert(k, raw) => {
                let v = self.val(raw);
                let got = self.cache.try_insert(k, v.clone());
                if self.fits(&v) {
                    let want = self.model_insert(k, v, &mut reports);
                    assert_eq!(got, Ok(want), "step {step}: {op:?}");
                } else {
                    // Refused: handed back, not reported.
                    self.stats.refused += 1;
                    assert_eq!(got, Err((k, v)), "step {step}: {op:?}");
                }
            }
            Op::Remove(k) | Op::RemoveWithGuard(k) => {
                let got = if matches!(op, Op::Remove(_)) {
                    self.cache.remove(&k)
                } else {
                    Self::with_guard(&self.held, &self.main, |g| {
                        self.cache.remove_with_guard(&k, g)
                    })
                };
                let want = self.model.remove(&k);
                if let Some(old) = &want {
                    reports.push((k, old.clone(), RemovalCause::Removed));
                }
                assert_eq!(got, want, "step {step}: {op:?}");
            }
            Op::CompareExchange {
                key: k,
                current,
                new,
                with_guard,
            } => {
                let current = match current {
                    Current::Held(raw) => {
                        self.model.get(&k).cloned().unwrap_or_else(|| self.val(raw))
                    }
                    Current::Other(raw) => self.val(raw),
                };
                let new = self.val(new);
                let got = if with_guard {
                    let new = new.clone();
                    Self::with_guard(&self.held, &self.main, |g| {
                        self.cache.compare_exchange_with_guard(&k, &current, new, g)
                    })
                } else {
                    self.cache.compare_exchange(&k, &current, new.clone())
                };
                let held = self.model.get(&k).cloned();
                let failure = if !self.fits(&new) {
                    // Refused before the comparison: handed back, not reported.
                    self.stats.refused += 1;
                    Some(CompareExchangeFailure::Refused)
                } else if held.as_ref() == Some(&current) {
                    None
                } else {
                    Some(CompareExchangeFailure::Mismatch)
                };
                match failure {
                    None => {
                        self.model_insert(k, new, &mut reports);
                        assert_eq!(
                            got,
                            Ok(()),
                            "step {step}: {op:?}: the exchange should succeed"
                        );
                    }
                    Some(failure) => assert_eq!(
                        got,
                        Err(CompareExchangeError {
                            current: held,
                            new,
                            failure
                        }),
                        "step {step}: {op:?}"
                    ),
                }
            }
            Op::GetOrInsertWith(k, raw) => {
                let v = self.val(raw);
                let called = Cell::new(false);
                let got = self.cache.get_or_insert_with(k, || {
                    called.set(true);
                    v.clone()
                });
                let hit = self.model.get(&k).cloned();
                self.lookup(hit.is_some());
                assert_eq!(
                    called.get(),
                    hit.is_none(),
                    "step {step}: {op:?}: init must run exactly on a miss"
                );
                let want = match hit {
                    Some(held) => held,
                    None if self.fits(&v) => {
                        self.model_insert(k, v.clone(), &mut reports);
                        v
                    }
                    None => {
                        // Computed and returned, but refused like an `insert`.
                        self.stats.refused += 1;
                        reports.push((k, v.clone(), RemovalCause::Refused));
                        v
                    }
                };
                assert_eq!(got, want, "step {step}: {op:?}");
            }
            Op::Clear(b) => {
                if b < 16 {
                    self.cache.clear();
                    reports = self
                        .model
                        .drain()
                        .map(|(k, v)| (k, v, RemovalCause::Removed))
                        .collect();
                    reports.sort_by_key(|(k, v, _)| (*k, v.tag, v.weight));
                }
            }
            Op::Iter => {
                let mut got: Vec<(Key, Val)> = self.cache.iter().collect();
                got.sort_by_key(|(k, _)| *k);
                let mut want: Vec<(Key, Val)> =
                    self.model.iter().map(|(&k, v)| (k, v.clone())).collect();
                want.sort_by_key(|(k, _)| *k);
                assert_eq!(got, want, "step {}: iter vs the model", self.step);
            }
            Op::Retain(b) => {
                let m = 2 + b % 3;
                let kept = |v: &Val| !v.tag.is_multiple_of(m);
                self.cache.retain(|_, v| kept(v));
                reports = self
                    .model
                    .iter()
                    .filter(|(_, v)| !kept(v))
                    .map(|(&k, v)| (k, v.clone(), RemovalCause::Removed))
                    .collect();
                reports.sort_by_key(|(k, v, _)| (*k, v.tag, v.weight));
                self.model.retain(|_, v| kept(v));
            }
            Op::HoldGuard => self.held = Some(self.other.pin()),
            Op::ReleaseGuard => self.held = None,
            Op::Flush => {
                for _ in 0..3 {
                    self.main.pin().flush();
                }
            }
        }
        reports
    }

    /// Reconciles the listener's notices with the model, then checks the invariants.
    fn check(&mut self, op: &Op, expected: Vec<(Key, Val, RemovalCause)>) {
        let step = self.step;
        let heard =
            std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner));
        let mut others = Vec::new();
        let mut last_victim = None;
        for (k, v, cause) in heard {
            if cause == RemovalCause::Evicted {
                assert!(
                    self.evicting,
                    "step {step}: {op:?}: evicted ({k}, {v:?}) from a cache larger than its key space"
                );
                assert_eq!(
                    self.model.remove(&k).as_ref(),
                    Some(&v),
                    "step {step}: {op:?}: the listener reported evicting ({k}, {v:?}), which the \
                     cache did not hold"
                );
                self.stats.evictions += 1;
                last_victim = Some(self.weight(&v));
            } else {
                others.push((k, v, cause));
            }
        }
        if matches!(op, Op::Clear(_) | Op::Retain(_)) {
            others.sort_by_key(|(k, v, _)| (*k, v.tag, v.weight));
        }
        assert_eq!(
            others, expected,
            "step {step}: {op:?}: listener notices besides evictions"
        );

        let len = self.cache.len();
        let weight = self.cache.weight();
        let model_weight: u64 = self.model.values().map(|v| self.weight(v)).sum();
        assert_eq!(len, self.model.len(), "step {step}: {op:?}: len");
        assert_eq!(
            self.cache.is_empty(),
            self.model.is_empty(),
            "step {step}: {op:?}: is_empty"
        );
        assert_eq!(weight, model_weight, "step {step}: {op:?}: weight");
        assert!(
            weight <= self.capacity,
            "step {step}: {op:?}: weight {weight} over capacity"
        );
        if !self.zero_weights {
            assert!(
                len as u64 <= self.capacity,
                "step {step}: {op:?}: len {len} over capacity"
            );
        }
        if let Some(w) = last_victim {
            assert!(
                weight + w > self.capacity,
                "step {step}: {op:?}: evicted an entry of weight {w} the cache had room for \
                 (weight {weight}, capacity {})",
                self.capacity
            );
        }
        assert_eq!(self.cache.stats(), self.stats, "step {step}: {op:?}: stats");
    }

    /// Compares every key, then drops everything and checks that no value is left alive.
    fn finish(self, keys: u8) {
        for k in 0..keys {
            assert_eq!(
                self.cache.peek(&k).as_ref(),
                self.model.get(&k),
                "final state of key {k}"
            );
        }
        let live = Arc::clone(&self.live);
        let step = self.step;
        drop(self);
        assert_eq!(
            live.load(Ordering::Relaxed),
            0,
            "after {step} steps and dropping the cache and its collector: values still alive \
             (leaked entries) or negative (dropped twice)"
        );
    }
}

/// Runs one input: a configuration, then operations until the bytes run out (or `MAX_OPS`).
/// Returns the number of steps run; panics at the first disagreement with the model.
pub fn run(data: &[u8]) -> usize {
    let mut u = Unstructured::new(data);
    let Ok(config) = Config::arbitrary(&mut u) else {
        return 0;
    };
    let keys = if config.evicting {
        KEYS_EVICTION
    } else {
        KEYS_NO_EVICTION
    };
    let live = Arc::new(AtomicIsize::new(0));
    let mut h = Harness::new(&config, &live);
    while h.step < MAX_OPS && !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        let op = op.with_keys(keys);
        let expected = h.apply(&op);
        h.check(&op, expected);
        h.step += 1;
    }
    let steps = h.step;
    h.finish(keys);
    steps
}
