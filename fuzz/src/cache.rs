//! The `cache` target: [`Cache`] against a `HashMap`, in three modes chosen by the input's first
//! byte (odd: eviction; even: no eviction, or expiry when its second bit is set).
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
//! - **Expiry**: 8 keys, a capacity of 9 to 56 (no eviction, even with every key's entry expired
//!   and not yet removed), every entry weighing 1, a `ManualClock`, a builder time-to-live of
//!   none or 0 to 6 ns and a time-to-idle of none or 1 to 8 ns (decoded after the configuration).
//!   Besides the steps below: advancing the clock by 0 to 3 ns, `insert_with_ttl` (0 to 6 ns, with
//!   and without guard) and `purge_expired`. The map holds every entry the cache holds, expired or
//!   not, with its deadline and latest access (its insertion, or a `get`, `get_with_guard` or
//!   `get_or_insert_with` that found it live; not `peek`, `contains_key` or iteration): a
//!   time-to-idle under 16 ns is kept to the nanosecond, so the model is exact. Every read must be
//!   the live value, never an expired one; a write over an expired key must treat it as absent.
//!   An entry leaves the map only when the listener reports it, so each lazy removal is checked:
//!   an `Expired` notice must name the map's entry for its key and be due (`Replaced` and
//!   `Removed` notices are predicted exactly, and only ever name live entries); a step that looked
//!   up or wrote a key leaves no expired entry of it behind, `purge_expired` and `retain` none at
//!   all. Expiries are not evictions: `stats()` counts none. At the end the clock jumps far ahead
//!   and a purge must report every entry that can expire, once.
//!
//! In every mode: `get`, `get_with_guard`, `peek`, `contains_key`, `insert`, `insert_with_guard`,
//! `try_insert`, `remove`, `remove_with_guard`, `compare_exchange` (with and without guard, from
//! the held value or another), `get_or_insert_with` (`init` runs exactly on a miss), `clear`,
//! holding a second participant's guard across steps, flushing epoch garbage. The listener's
//! `Replaced`, `Removed` and `Refused` notices must be exactly those the model predicts (`insert`
//! reports a refusal, `try_insert` and `compare_exchange` hand the value back instead), `stats()`
//! must equal the counts of what was observed, and the hasher is seeded, constant (every key in
//! one bucket, every hash equal) or three-valued. After every step `len()` and `weight()` equal the
//! map's. Values count their live instances: once the cache, guards and collector (built per
//! input) are gone, none is left.

use arbitrary::{Arbitrary, Unstructured};
use crossbeam_epoch::{Collector, Guard, LocalHandle};
use latchless::cache::{Cache, CacheStats, CompareExchangeError, CompareExchangeFailure};
use latchless::cache::{ManualClock, RemovalCause};
use std::cell::Cell;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// At most this many operations per input.
const MAX_OPS: usize = 2_000;
/// Keys of the no-eviction mode; its capacity is always larger.
const KEYS_NO_EVICTION: u8 = 16;
/// Keys of the eviction mode.
const KEYS_EVICTION: u8 = 24;
/// Keys of the expiry mode: fewer than without eviction, so that a key is met again before its
/// entry is long expired, and a `get` often refreshes an entry still within its time-to-idle.
const KEYS_EXPIRY: u8 = 8;
/// Distinct value tags: few, so that exchanges often find what they expect.
const TAGS: u8 = 4;
/// How far the clock jumps at the end of an expiry input: past every deadline and idle limit.
const FINAL_ADVANCE_NS: u64 = 1_000;

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

/// The model's entry: the value, its deadline (`None`: never) and the time of its latest access,
/// in nanoseconds of the input's clock. Outside the expiry mode there is no deadline and no
/// time-to-idle, so every entry is alive.
#[derive(Debug)]
struct Timed {
    val: Val,
    deadline: Option<u64>,
    last: u64,
}

/// Whether the model's entry `e` is alive at `now` in a cache with time-to-idle `tti` (if any),
/// as the cache must decide it: expired once its deadline is reached, or `tti` after its latest
/// access. Exact because `tti` is under 16 ns, where the cache records accesses to the nanosecond.
fn alive(e: &Timed, now: u64, tti: Option<u64>) -> bool {
    e.deadline.is_none_or(|d| now < d) && tti.is_none_or(|t| now < e.last + t)
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
    /// The value the model holds for the key, even an expired one (which must not match); a
    /// random one if none.
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

/// What an input tests; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoEviction,
    Eviction,
    Expiry,
}

impl Mode {
    /// The mode of [`Config::mode`]: odd bytes evict, as when that byte was decoded as a `bool`
    /// (`arbitrary` reads a `bool` as a byte's lowest bit), so the committed corpus's inputs of
    /// the first two modes keep their meaning; the even ones split between no eviction and
    /// expiry on the second bit.
    fn of(byte: u8) -> Self {
        if byte & 1 == 1 {
            Mode::Eviction
        } else if byte & 2 == 2 {
            Mode::Expiry
        } else {
            Mode::NoEviction
        }
    }

    fn keys(self) -> u8 {
        match self {
            Mode::NoEviction => KEYS_NO_EVICTION,
            Mode::Eviction => KEYS_EVICTION,
            Mode::Expiry => KEYS_EXPIRY,
        }
    }
}

/// The cache's configuration, decoded first.
#[derive(Arbitrary, Debug)]
struct Config {
    /// See [`Mode::of`].
    mode: u8,
    capacity: u8,
    zero_weights: bool,
    hasher: HashKind,
    buckets: Buckets,
}

/// The expiry mode's settings, decoded after [`Config`] in that mode only, so that the other
/// modes' inputs decode as they did before it existed.
#[derive(Arbitrary, Debug)]
struct ExpiryConfig {
    /// The builder's time-to-live: `ttl % 7` ns (0 expires every entry as it is stored).
    ttl: Option<u8>,
    /// The builder's time-to-idle: `1 + tti % 8` ns.
    tti: Option<u8>,
}

/// One step of the other modes, decoded from the fuzzer's bytes; in the expiry mode, one kind of
/// [`Step`].
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
    /// The key the step looks up or writes, if any.
    fn key(&self) -> Option<Key> {
        match *self {
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
            | Op::GetOrInsertWith(k, _) => Some(k),
            Op::Clear(_)
            | Op::HoldGuard
            | Op::ReleaseGuard
            | Op::Flush
            | Op::Iter
            | Op::Retain(_) => None,
        }
    }

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

/// One step: an [`Op`], or (in the expiry mode only) one of the expiry steps.
#[derive(Debug)]
enum Step {
    Op(Op),
    /// Moves the clock forward by `byte % 4` ns.
    AdvanceClock(u8),
    /// `insert_with_ttl` (or its `_with_guard` form) with `ttl % 7` ns to live.
    InsertWithTtl {
        key: Key,
        val: RawVal,
        ttl: u8,
        with_guard: bool,
    },
    PurgeExpired,
}

impl Step {
    /// Decodes a step of `mode`. Outside the expiry mode it is an [`Op`] decoded exactly as
    /// before the expiry steps existed, so the committed corpus keeps its meaning. In the expiry
    /// mode, a selector byte picks (out of 32) an [`Op`] 19 times, `AdvanceClock` and
    /// `InsertWithTtl` 6 times each and `PurgeExpired` once: a purge removes every expired entry,
    /// which would leave few for lookups, writes and the eviction policy's sweeps to meet.
    fn decode(u: &mut Unstructured<'_>, mode: Mode) -> arbitrary::Result<Self> {
        let keys = mode.keys();
        if mode != Mode::Expiry {
            return Ok(Step::Op(Op::arbitrary(u)?.with_keys(keys)));
        }
        Ok(match u.int_in_range(0u8..=31)? {
            0..=5 => Step::AdvanceClock(u.arbitrary()?),
            6..=11 => Step::InsertWithTtl {
                key: u8::arbitrary(u)? % keys,
                val: u.arbitrary()?,
                ttl: u.arbitrary()?,
                with_guard: u.arbitrary()?,
            },
            12 => Step::PurgeExpired,
            _ => Step::Op(Op::arbitrary(u)?.with_keys(keys)),
        })
    }

    /// The key the step looks up or writes, if any.
    fn key(&self) -> Option<Key> {
        match self {
            Step::Op(op) => op.key(),
            Step::InsertWithTtl { key, .. } => Some(*key),
            Step::AdvanceClock(_) | Step::PurgeExpired => None,
        }
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
    /// Exactly what the cache holds, expired entries included: evictions and expiries are
    /// applied as the listener reports them.
    model: HashMap<Key, Timed>,
    /// What `stats()` must say.
    stats: CacheStats,
    capacity: u64,
    mode: Mode,
    zero_weights: bool,
    /// The expiry mode's clock (`None` in the other modes, whose caches read none).
    clock: Option<ManualClock>,
    /// The clock's time, in nanoseconds.
    now: u64,
    /// The builder's time-to-live and time-to-idle, in nanoseconds.
    ttl: Option<u64>,
    tti: Option<u64>,
    /// An entry this step stored over an expired one: it enters the model once the listener has
    /// reported the expired one (which must be reported within the step).
    pending: Option<(Key, Timed)>,
    /// The key this step stored an entry for: that entry may be expired already (a zero
    /// time-to-live), so it is exempt from the check that a step leaves no expired entry of its
    /// key behind.
    stored: Option<Key>,
    live: Arc<AtomicIsize>,
    step: usize,
}

impl Harness {
    fn new(config: &Config, expiry: Option<&ExpiryConfig>, live: &Arc<AtomicIsize>) -> Self {
        let mode = Mode::of(config.mode);
        let capacity = match mode {
            Mode::Eviction => u64::from(config.capacity % 17),
            Mode::NoEviction | Mode::Expiry => u64::from(mode.keys() + 1 + config.capacity % 48),
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
        if mode == Mode::Eviction {
            builder = builder.weigher(|_: &Key, v: &Val| u64::from(v.weight));
        }
        builder = match config.buckets {
            Buckets::FromCapacity => builder,
            Buckets::One => builder.index_buckets(1),
            Buckets::Four => builder.index_buckets(4),
        };
        let ttl = expiry.and_then(|e| e.ttl).map(|t| u64::from(t % 7));
        let tti = expiry.and_then(|e| e.tti).map(|t| 1 + u64::from(t % 8));
        let clock = expiry.map(|_| ManualClock::new());
        if let Some(clock) = &clock {
            builder = builder.clock(clock.clone());
        }
        if let Some(ttl) = ttl {
            builder = builder.time_to_live(Duration::from_nanos(ttl));
        }
        if let Some(tti) = tti {
            builder = builder.time_to_idle(Duration::from_nanos(tti));
        }
        Self {
            held: None,
            cache: builder.build(),
            main: collector.register(),
            other: collector.register(),
            events,
            model: HashMap::new(),
            stats: CacheStats::default(),
            capacity,
            mode,
            zero_weights: mode == Mode::Eviction && config.zero_weights,
            clock,
            now: 0,
            ttl,
            tti,
            pending: None,
            stored: None,
            live: Arc::clone(live),
            step: 0,
        }
    }

    fn evicting(&self) -> bool {
        self.mode == Mode::Eviction
    }

    /// The value `raw` stands for in this mode: weight 1 without eviction; 0 to capacity + 1
    /// (at least 1 unless zero weights are on) with it.
    fn val(&self, raw: RawVal) -> Val {
        let weight = if self.evicting() {
            let w = u64::from(raw.weight) % (self.capacity + 2);
            let w = if self.zero_weights { w } else { w.max(1) };
            u8::try_from(w).expect("capacity + 1 fits a u8")
        } else {
            1
        };
        Val::new(raw.tag % TAGS, weight, &self.live)
    }

    fn weight(&self, v: &Val) -> u64 {
        if self.evicting() {
            u64::from(v.weight)
        } else {
            1
        }
    }

    fn fits(&self, v: &Val) -> bool {
        self.weight(v) <= self.capacity
    }

    fn alive(&self, e: &Timed) -> bool {
        alive(e, self.now, self.tti)
    }

    /// The value a reader must see for `k`: the model's, unless it has expired.
    fn live(&self, k: Key) -> Option<&Val> {
        self.model.get(&k).filter(|e| self.alive(e)).map(|e| &e.val)
    }

    /// Runs `f` under the held guard, or a fresh pin of the main handle.
    fn with_guard<R>(held: &Option<Guard>, main: &LocalHandle, f: impl FnOnce(&Guard) -> R) -> R {
        match held {
            Some(g) => f(g),
            None => f(&main.pin()),
        }
    }

    /// Records a lookup that counts in the statistics; a hit is an access, which restarts the
    /// entry's idle time.
    fn lookup(&mut self, k: Key, hit: bool) {
        if hit {
            self.stats.hits += 1;
            let now = self.now;
            self.model.get_mut(&k).expect("a hit is in the model").last = now;
        } else {
            self.stats.misses += 1;
        }
    }

    /// The model's side of a write that the cache accepts, storing `v` for `ttl` ns (`None`:
    /// forever): returns the live value it replaces and adds that value's `Replaced` notice to
    /// `reports`. Over an expired entry the key counts as absent (nothing returned, nothing
    /// `Replaced`): the new entry waits in `pending` until the listener reports the old one.
    fn model_insert(
        &mut self,
        k: Key,
        v: Val,
        ttl: Option<u64>,
        reports: &mut Vec<(Key, Val, RemovalCause)>,
    ) -> Option<Val> {
        self.stats.inserts += 1;
        self.stored = Some(k);
        let entry = Timed {
            val: v,
            deadline: ttl.map(|t| self.now + t),
            last: self.now,
        };
        let expired = self.model.get(&k).is_some_and(|e| !self.alive(e));
        if expired {
            self.pending = Some((k, entry));
            return None;
        }
        let old = self.model.insert(k, entry).map(|e| e.val);
        if let Some(old) = &old {
            reports.push((k, old.clone(), RemovalCause::Replaced));
        }
        old
    }

    /// An insert of `v` for `k` with `ttl` ns to live, which returned `got`: checks it against
    /// the model and updates that.
    fn insert(
        &mut self,
        step: &Step,
        k: Key,
        v: Val,
        ttl: Option<u64>,
        got: Option<Val>,
        reports: &mut Vec<(Key, Val, RemovalCause)>,
    ) {
        let want = if self.fits(&v) {
            self.model_insert(k, v, ttl, reports)
        } else {
            // Refused: reported, dropped, `None` returned; the old value stays.
            self.stats.refused += 1;
            reports.push((k, v, RemovalCause::Refused));
            None
        };
        assert_eq!(
            got, want,
            "step {}: {step:?}: the replaced value (only a live one)",
            self.step
        );
    }

    /// Applies `step` to the cache and the model, checks the results, and returns the listener
    /// notices other than evictions and expiries that the step must have produced.
    fn apply(&mut self, step: &Step) -> Vec<(Key, Val, RemovalCause)> {
        let mut reports = Vec::new();
        match *step {
            Step::Op(ref op) => self.apply_op(step, op, &mut reports),
            Step::AdvanceClock(b) => {
                let d = u64::from(b % 4);
                self.clock
                    .as_ref()
                    .expect("expiry steps only in the expiry mode")
                    .advance(Duration::from_nanos(d));
                self.now += d;
            }
            Step::InsertWithTtl {
                key: k,
                val,
                ttl,
                with_guard,
            } => {
                let v = self.val(val);
                let ttl = u64::from(ttl % 7);
                let got = if with_guard {
                    let v = v.clone();
                    Self::with_guard(&self.held, &self.main, |g| {
                        self.cache
                            .insert_with_ttl_with_guard(k, v, Duration::from_nanos(ttl), g)
                    })
                } else {
                    self.cache
                        .insert_with_ttl(k, v.clone(), Duration::from_nanos(ttl))
                };
                self.insert(step, k, v, Some(ttl), got, &mut reports);
            }
            Step::PurgeExpired => self.cache.purge_expired(),
        }
        reports
    }

    /// [`apply`](Self::apply) for an [`Op`].
    fn apply_op(&mut self, step: &Step, op: &Op, reports: &mut Vec<(Key, Val, RemovalCause)>) {
        let n = self.step;
        match *op {
            Op::Get(k) | Op::GetWithGuard(k) => {
                let got = if matches!(op, Op::Get(_)) {
                    self.cache.get(&k)
                } else {
                    Self::with_guard(&self.held, &self.main, |g| self.cache.get_with_guard(&k, g))
                };
                assert_eq!(
                    got.as_ref(),
                    self.live(k),
                    "step {n}: {step:?}: not the last value stored for the key, or expired"
                );
                self.lookup(k, got.is_some());
            }
            Op::Peek(k) => assert_eq!(
                self.cache.peek(&k).as_ref(),
                self.live(k),
                "step {n}: {step:?}"
            ),
            Op::ContainsKey(k) => assert_eq!(
                self.cache.contains_key(&k),
                self.live(k).is_some(),
                "step {n}: {step:?}"
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
                self.insert(step, k, v, self.ttl, got, reports);
            }
            Op::TryInsert(k, raw) => {
                let v = self.val(raw);
                let got = self.cache.try_insert(k, v.clone());
                if self.fits(&v) {
                    let want = self.model_insert(k, v, self.ttl, reports);
                    assert_eq!(got, Ok(want), "step {n}: {step:?}");
                } else {
                    // Refused: handed back, not reported.
                    self.stats.refused += 1;
                    assert_eq!(got, Err((k, v)), "step {n}: {step:?}");
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
                // Only a live entry is removed as such; an expired one must be reported
                // `Expired`, and stays in the model until it is.
                let want = self.live(k).is_some().then(|| {
                    let old = self.model.remove(&k).expect("live").val;
                    reports.push((k, old.clone(), RemovalCause::Removed));
                    old
                });
                assert_eq!(got, want, "step {n}: {step:?}");
            }
            Op::CompareExchange {
                key: k,
                current,
                new,
                with_guard,
            } => {
                let current = match current {
                    Current::Held(raw) => match self.model.get(&k) {
                        Some(e) => e.val.clone(),
                        None => self.val(raw),
                    },
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
                let held = self.live(k).cloned();
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
                        self.model_insert(k, new, self.ttl, reports);
                        assert_eq!(
                            got,
                            Ok(()),
                            "step {n}: {step:?}: the exchange should succeed"
                        );
                    }
                    Some(failure) => assert_eq!(
                        got,
                        Err(CompareExchangeError {
                            current: held,
                            new,
                            failure
                        }),
                        "step {n}: {step:?}"
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
                let hit = self.live(k).cloned();
                self.lookup(k, hit.is_some());
                assert_eq!(
                    called.get(),
                    hit.is_none(),
                    "step {n}: {step:?}: init must run exactly on a miss"
                );
                let want = match hit {
                    Some(held) => held,
                    None if self.fits(&v) => {
                        self.model_insert(k, v.clone(), self.ttl, reports);
                        v
                    }
                    None => {
                        // Computed and returned, but refused like an `insert`.
                        self.stats.refused += 1;
                        reports.push((k, v.clone(), RemovalCause::Refused));
                        v
                    }
                };
                assert_eq!(got, want, "step {n}: {step:?}");
            }
            Op::Clear(b) => {
                if b < 16 {
                    self.cache.clear();
                    // The live entries are reported `Removed`; the expired ones `Expired`, and
                    // stay in the model until they are.
                    let (live, expired): (Vec<_>, Vec<_>) = self
                        .model
                        .drain()
                        .partition(|(_, e)| alive(e, self.now, self.tti));
                    self.model = expired.into_iter().collect();
                    reports.extend(
                        live.into_iter()
                            .map(|(k, e)| (k, e.val, RemovalCause::Removed)),
                    );
                    reports.sort_by_key(|(k, v, _)| (*k, v.tag, v.weight));
                }
            }
            Op::Iter => {
                let mut got: Vec<(Key, Val)> = self.cache.iter().collect();
                got.sort_by_key(|(k, _)| *k);
                let mut want: Vec<(Key, Val)> = self
                    .model
                    .iter()
                    .filter(|(_, e)| self.alive(e))
                    .map(|(&k, e)| (k, e.val.clone()))
                    .collect();
                want.sort_by_key(|(k, _)| *k);
                assert_eq!(got, want, "step {n}: iter vs the live model");
            }
            Op::Retain(b) => {
                let m = 2 + b % 3;
                let kept = |v: &Val| !v.tag.is_multiple_of(m);
                self.cache.retain(|_, v| kept(v));
                // `keep` judges the live entries only; the expired ones leave as `Expired`.
                let (now, tti) = (self.now, self.tti);
                let rejected = |e: &Timed| alive(e, now, tti) && !kept(&e.val);
                reports.extend(
                    self.model
                        .iter()
                        .filter(|(_, e)| rejected(e))
                        .map(|(&k, e)| (k, e.val.clone(), RemovalCause::Removed)),
                );
                reports.sort_by_key(|(k, v, _)| (*k, v.tag, v.weight));
                self.model.retain(|_, e| !rejected(e));
            }
            Op::HoldGuard => self.held = Some(self.other.pin()),
            Op::ReleaseGuard => self.held = None,
            Op::Flush => {
                for _ in 0..3 {
                    self.main.pin().flush();
                }
            }
        }
    }

    /// Reconciles the listener's notices with the model, then checks the invariants.
    fn check(&mut self, step: &Step, expected: Vec<(Key, Val, RemovalCause)>) {
        let n = self.step;
        let heard =
            std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner));
        let mut others = Vec::new();
        let mut last_victim = None;
        for (k, v, cause) in heard {
            match cause {
                RemovalCause::Evicted => {
                    assert!(
                        self.evicting(),
                        "step {n}: {step:?}: evicted ({k}, {v:?}) from a cache larger than its \
                         key space"
                    );
                    assert_eq!(
                        self.model.remove(&k).map(|e| e.val).as_ref(),
                        Some(&v),
                        "step {n}: {step:?}: the listener reported evicting ({k}, {v:?}), which \
                         the cache did not hold"
                    );
                    self.stats.evictions += 1;
                    last_victim = Some(self.weight(&v));
                }
                RemovalCause::Expired => {
                    // The step's own new entry may be reported too (already expired, met by a
                    // sweep after the write): it is in the model once the entry it replaced has
                    // been reported (which comes first).
                    if !self.model.contains_key(&k)
                        && self.pending.as_ref().is_some_and(|(pk, _)| *pk == k)
                    {
                        let (pk, e) = self.pending.take().expect("checked");
                        self.model.insert(pk, e);
                    }
                    let e = self.model.remove(&k).unwrap_or_else(|| {
                        panic!(
                            "step {n}: {step:?}: the listener reported ({k}, {v:?}) expired, \
                             which the cache did not hold"
                        )
                    });
                    assert_eq!(
                        e.val, v,
                        "step {n}: {step:?}: the listener reported key {k} expired with a value \
                         the cache did not hold"
                    );
                    assert!(
                        !self.alive(&e),
                        "step {n}: {step:?}: the listener reported a live entry ({k}, {e:?}) \
                         expired at {} ns",
                        self.now
                    );
                }
                _ => others.push((k, v, cause)),
            }
        }
        if matches!(step, Step::Op(Op::Clear(_) | Op::Retain(_))) {
            others.sort_by_key(|(k, v, _)| (*k, v.tag, v.weight));
        }
        assert_eq!(
            others, expected,
            "step {n}: {step:?}: listener notices besides evictions and expiries"
        );
        if let Some((k, e)) = self.pending.take() {
            assert!(
                !self.model.contains_key(&k),
                "step {n}: {step:?}: the expired entry of key {k} was written over but not \
                 reported"
            );
            self.model.insert(k, e);
        }
        // What the step must have removed, it has.
        if let Some(k) = step.key().filter(|&k| self.stored != Some(k)) {
            if let Some(e) = self.model.get(&k) {
                assert!(
                    self.alive(e),
                    "step {n}: {step:?}: left key {k}'s expired entry {e:?} behind at {} ns",
                    self.now
                );
            }
        }
        self.stored = None;
        match step {
            Step::PurgeExpired | Step::Op(Op::Retain(_)) => {
                if let Some((k, e)) = self.model.iter().find(|(_, e)| !self.alive(e)) {
                    panic!(
                        "step {n}: {step:?}: the expired entry ({k}, {e:?}) survived at {} ns",
                        self.now
                    );
                }
            }
            Step::Op(Op::Clear(b)) if *b < 16 => assert!(
                self.model.is_empty(),
                "step {n}: {step:?}: entries left after the clear: {:?}",
                self.model
            ),
            _ => {}
        }

        let len = self.cache.len();
        let weight = self.cache.weight();
        let model_weight: u64 = self.model.values().map(|e| self.weight(&e.val)).sum();
        assert_eq!(len, self.model.len(), "step {n}: {step:?}: len");
        assert_eq!(
            self.cache.is_empty(),
            self.model.is_empty(),
            "step {n}: {step:?}: is_empty"
        );
        assert_eq!(weight, model_weight, "step {n}: {step:?}: weight");
        assert!(
            weight <= self.capacity,
            "step {n}: {step:?}: weight {weight} over capacity"
        );
        if !self.zero_weights {
            assert!(
                len as u64 <= self.capacity,
                "step {n}: {step:?}: len {len} over capacity"
            );
        }
        if let Some(w) = last_victim {
            assert!(
                weight + w > self.capacity,
                "step {n}: {step:?}: evicted an entry of weight {w} the cache had room for \
                 (weight {weight}, capacity {})",
                self.capacity
            );
        }
        assert_eq!(self.cache.stats(), self.stats, "step {n}: {step:?}: stats");
    }

    /// In the expiry mode, moves the clock past every deadline and idle limit and purges: each
    /// entry that can expire must be reported once, and only those that never expire (no
    /// deadline, no time-to-idle) stay. Then compares every key, drops everything and checks that
    /// no value is left alive.
    fn finish(mut self, keys: u8) {
        if let Some(clock) = &self.clock {
            clock.advance(Duration::from_nanos(FINAL_ADVANCE_NS));
            self.now += FINAL_ADVANCE_NS;
            self.cache.purge_expired();
            self.check(&Step::PurgeExpired, Vec::new());
            let tti = self.tti;
            assert!(
                self.model
                    .values()
                    .all(|e| e.deadline.is_none() && tti.is_none()),
                "an entry that can expire is still in the model after the final purge"
            );
        }
        for k in 0..keys {
            assert_eq!(
                self.cache.peek(&k).as_ref(),
                self.live(k),
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
    let mode = Mode::of(config.mode);
    let expiry = if mode == Mode::Expiry {
        let Ok(expiry) = ExpiryConfig::arbitrary(&mut u) else {
            return 0;
        };
        Some(expiry)
    } else {
        None
    };
    let live = Arc::new(AtomicIsize::new(0));
    let mut h = Harness::new(&config, expiry.as_ref(), &live);
    while h.step < MAX_OPS && !u.is_empty() {
        let Ok(step) = Step::decode(&mut u, mode) else {
            break;
        };
        let expected = h.apply(&step);
        h.check(&step, expected);
        h.step += 1;
    }
    let steps = h.step;
    h.finish(mode.keys());
    steps
}
