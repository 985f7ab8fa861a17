//! [`Cache`]: a bounded concurrent key-value cache with lock-free reads and writes and
//! scan-resistant S3-FIFO eviction.
//!
//! - **Index** (`index`): a fixed array of buckets, each an atomic word holding one entry's
//!   pointer, or a pointer to an immutable array of them when keys collide, replaced
//!   copy-on-write by compare-and-swap; old arrays and entries are reclaimed by crossbeam-epoch. `get` takes no lock, allocates nothing and never waits for a writer.
//! - **Eviction** (`policy`): S3-FIFO (Yang et al., SOSP 2023) over two of the crate's own
//!   [`MsQueue`](crate::queue::MsQueue)s of per-key handles (a replacing entry inherits its
//!   key's handle, so a replacement touches no FIFO) and a ghost list of recently evicted key
//!   hashes, with TinyLFU's frequency sketch (`sketch`) admitting keys asked for often straight
//!   to the main FIFO. Reads bump a 2-bit counter with a relaxed store; an entry's first read
//!   since it was queued (or passed over by the eviction) also counts its key in the sketch;
//!   eviction runs on the inserting thread.
//! - **Bookkeeping**: total weight and length are [`AtomicCounter`]s, statistics are
//!   [`ShardedCounter`]s. Hits and misses are counted only when the builder asks
//!   ([`CacheBuilder::count_lookups`]), so that by default a hit on an entry read before writes
//!   nothing shared.
//! - **Hashing**: [`DefaultHashBuilder`] (foldhash, randomly seeded) unless the builder is given
//!   another hasher.
//! - **Expiry**: a time-to-live from the builder ([`CacheBuilder::time_to_live`]) or per entry
//!   ([`Cache::insert_with_ttl`]) sets a deadline in the entry, read against a [`Clock`]
//!   ([`SystemClock`] unless the builder is given another). Expired entries are never returned
//!   and are removed lazily: by the lookup or insert that meets them, by the eviction policy
//!   (which evicts one it reaches as if unread), by the sweep of the FIFOs, or by
//!   [`Cache::purge_expired`]. A cache that never set a deadline never reads its clock; with a
//!   deadline on the [`SystemClock`], a hit on it also reads the clock, `CLOCK_MONOTONIC` on
//!   Linux (one thread, 10,000 entries, on this project's shared 2-core machine: a hit about
//!   20-25 ns without expiry, 50-65 ns with a time-to-live); the [`CoarseClock`] reads it for
//!   about a quarter of the cost, to a kernel tick (a hit about 40 ns). A time-to-idle
//!   ([`CacheBuilder::time_to_idle`]) expires entries not read for that long: each entry keeps
//!   the tick (a sixteenth of the time-to-idle) of its latest access in the word that holds its
//!   access counter, and a hit stores a new tick only when the tick has moved on, so it still
//!   writes nothing shared in steady state; an idle entry expires never early and at most one
//!   tick late.
//!
//! # Progress
//!
//! | method | progress |
//! |---|---|
//! | [`get`](Cache::get), [`peek`](Cache::peek), [`contains_key`](Cache::contains_key) | lock-free (wait-free but for the epoch pin, unless it removes an expired entry or, with a time-to-idle, a `get` races another thread's refresh of the same entry) |
//! | [`insert`](Cache::insert), [`insert_with_ttl`](Cache::insert_with_ttl), [`insert_if_absent`](Cache::insert_if_absent), [`remove`](Cache::remove), [`compare_exchange`](Cache::compare_exchange), [`clear`](Cache::clear) | lock-free |
//! | [`get_or_insert_with`](Cache::get_or_insert_with) | a hit is lock-free; a miss waits for the caller computing the same key |
//! | [`iter`](Cache::iter) (each `next`), [`retain`](Cache::retain), [`purge_expired`](Cache::purge_expired) | lock-free; weakly consistent, one bucket at a time |
//!
//! # Capacity and weight
//!
//! Capacity is in weight units: 1 per entry unless the [builder](CacheBuilder::weigher) sets a
//! weigher. The bound is global, not per shard: any entry no heavier than the whole capacity is
//! accepted, evicting others as needed. Once every writer has returned, `weight() <=
//! capacity()`; while writers run, the total may pass the capacity by at most one entry per
//! concurrent writer, which evicts before it returns. An entry heavier than the capacity is
//! refused: counted in [`CacheStats::refused`], reported to the eviction listener by
//! [`insert`](Cache::insert) and [`get_or_insert_with`](Cache::get_or_insert_with), and handed
//! back by [`try_insert`](Cache::try_insert) and [`compare_exchange`](Cache::compare_exchange)
//! instead. A capacity of 0 makes a cache that stores only entries that weigh 0 (with the
//! default weight of 1, nothing): no panic.
//!
//! # Memory
//!
//! Each entry is one allocation holding the key, the value, its hash, weight and handle, plus,
//! per key, a 24-byte FIFO slot (the queue allocates a block per 127). The index is an array of 8-byte buckets, four per
//! expected entry ([`CacheBuilder::estimated_entries`], [`CacheBuilder::index_buckets`]), so most
//! buckets hold one entry or none; a write to a bucket shared by several keys allocates the
//! bucket's next array. Removed, replaced
//! and evicted entries are dropped exactly once, through the epoch, after every reader that could
//! hold them has unpinned; dropping the cache drops the rest. Values are returned by clone: put
//! large values behind an `Arc`.

mod builder;
mod clock;
mod flight;
mod hash;
mod index;
mod policy;
pub(crate) mod sketch;

pub use builder::CacheBuilder;
pub use clock::{Clock, CoarseClock, ManualClock, SystemClock};
pub use hash::{DefaultHashBuilder, DefaultHasher};

use crate::counter::{AtomicCounter, ShardedCounter};
use crate::reclaim::Reclaim;
use crate::sync::{epoch, AtomicBool, CachePadded, Ordering};
use core::borrow::Borrow;
use core::convert::Infallible;
use core::fmt;
use core::hash::{BuildHasher, Hash};
use epoch::Guard;
use flight::{Flights, Joined};
use index::{Entry, EntryPtr, Idle, Index, Moment, Published};
use policy::{Evicted, Policy};

/// How many buckets [`Cache::iter`] and [`Cache::retain`] visit under one pin: most buckets are
/// empty, and a pin per bucket would cost more than the visit (with a caller's collector, a
/// registration too), while a pin held over a few dozen short visits delays no reclamation
/// noticeably.
const PIN_BUCKETS: usize = 64;

/// Computes an entry's weight.
type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u64 + Send + Sync>;
/// Hears of every entry that leaves the cache or is refused (by `insert` or
/// `get_or_insert_with`).
type Listener<K, V> = Box<dyn Fn(&K, &V, RemovalCause) + Send + Sync>;

/// Why an entry left the cache (or never entered it), as told to the
/// [eviction listener](CacheBuilder::eviction_listener).
///
/// # Examples
///
/// ```
/// use latchless::cache::RemovalCause;
///
/// assert_ne!(RemovalCause::Evicted, RemovalCause::Removed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Evicted by the policy to make room.
    Evicted,
    /// Replaced by a newer value for the same key (`insert`, `compare_exchange`).
    Replaced,
    /// Removed by [`Cache::remove`], [`Cache::retain`] or [`Cache::clear`].
    Removed,
    /// Refused at insertion: heavier than the whole capacity.
    Refused,
    /// Its time-to-live ran out ([`CacheBuilder::time_to_live`], [`Cache::insert_with_ttl`]):
    /// found expired by a lookup, an insert over its key, the eviction sweep or
    /// [`Cache::purge_expired`].
    Expired,
}

/// Counts of what a cache did, from [`Cache::stats`]. Each count is exact once the threads that
/// used the cache are synchronised with the reader; while they run it is a near snapshot.
/// `hits` and `misses` stay 0 unless the cache was built with
/// [`count_lookups(true)`](CacheBuilder::count_lookups).
///
/// # Examples
///
/// ```
/// use latchless::cache::Cache;
///
/// let cache = Cache::builder(10).count_lookups(true).build();
/// cache.insert(1, "one");
/// cache.get(&1);
/// cache.get(&2);
/// let s = cache.stats();
/// assert_eq!((s.hits, s.misses, s.inserts), (1, 1, 1));
/// assert_eq!(s.hit_ratio(), 0.5);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups that found their key: `get` calls, and `get_or_insert_with` calls answered from
    /// the cache without computing or waiting. Counted only with
    /// [`count_lookups(true)`](CacheBuilder::count_lookups).
    pub hits: u64,
    /// Lookups that did not: `get` calls, and `get_or_insert_with`'s first lookup (one more for
    /// each retry after a panicking initialiser), whether the caller then computes the value or
    /// waits for another caller's. Counted only with
    /// [`count_lookups(true)`](CacheBuilder::count_lookups).
    pub misses: u64,
    /// Entries stored (new keys and replacements).
    pub inserts: u64,
    /// Entries evicted by the policy to make room (expired entries it removes are not counted:
    /// the listener hears them as [`RemovalCause::Expired`]).
    pub evictions: u64,
    /// Entries refused for being heavier than the capacity.
    pub refused: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0 when there was no lookup.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::CacheStats;
    ///
    /// let mut s = CacheStats::default();
    /// (s.hits, s.misses) = (3, 1);
    /// assert_eq!(s.hit_ratio(), 0.75);
    /// ```
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

/// The statistics' counters.
struct Stats {
    /// Whether lookups are counted ([`CacheBuilder::count_lookups`]). When they are not, a hit
    /// writes nothing shared: the counters below are the only shared lines a hit would write.
    lookups: bool,
    hits: ShardedCounter,
    misses: ShardedCounter,
    inserts: ShardedCounter,
    evictions: ShardedCounter,
    refused: ShardedCounter,
}

impl Stats {
    fn new(lookups: bool) -> Self {
        let counter = ShardedCounter::for_stats;
        Self {
            lookups,
            hits: counter(),
            misses: counter(),
            inserts: counter(),
            evictions: counter(),
            refused: counter(),
        }
    }

    #[inline]
    fn hit(&self) {
        if self.lookups {
            self.hits.increment();
        }
    }

    #[inline]
    fn miss(&self) {
        if self.lookups {
            self.misses.increment();
        }
    }
}

/// Why [`Cache::compare_exchange`] did not store the new value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CompareExchangeFailure {
    /// The key was absent, or held a value other than the expected one.
    Mismatch,
    /// The new value is heavier than the whole capacity.
    Refused,
}

/// The error of [`Cache::compare_exchange`]: what the cache holds for the key, and the new value
/// handed back, so nothing is lost.
///
/// # Examples
///
/// ```
/// use latchless::cache::{Cache, CompareExchangeFailure};
///
/// let cache = Cache::new(10);
/// cache.insert("k", 1);
/// let err = cache.compare_exchange(&"k", &2, 3).unwrap_err();
/// assert_eq!(err.current, Some(1));
/// assert_eq!(err.new, 3);
/// assert_eq!(err.failure, CompareExchangeFailure::Mismatch);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct CompareExchangeError<V> {
    /// The value the cache held for the key when the exchange failed, if any.
    pub current: Option<V>,
    /// The value that was not stored, handed back.
    pub new: V,
    /// Why it failed.
    pub failure: CompareExchangeFailure,
}

impl<V> fmt::Display for CompareExchangeError<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failure {
            CompareExchangeFailure::Mismatch => {
                f.write_str("the cache does not hold the expected value for this key")
            }
            CompareExchangeFailure::Refused => {
                f.write_str("the new value is heavier than the cache's whole capacity")
            }
        }
    }
}

impl<V> fmt::Debug for CompareExchangeError<V> {
    /// Names the failure and whether the cache held a value, never the values themselves: they
    /// are often users' data, bound for logs through `?` and `unwrap` (the batcher's
    /// `SubmitError` prints no request either).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Stands for a value in `Debug` output.
        struct Elided;
        impl fmt::Debug for Elided {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("..")
            }
        }
        f.debug_struct("CompareExchangeError")
            .field("failure", &self.failure)
            .field("current", &self.current.as_ref().map(|_| Elided))
            .finish_non_exhaustive()
    }
}

impl<V> std::error::Error for CompareExchangeError<V> {}

/// A bounded concurrent key-value cache: lock-free reads and writes on a fixed index of
/// compare-and-swap buckets, S3-FIFO eviction on the crate's lock-free queues, and memory
/// reclaimed by crossbeam-epoch. See the [module docs](self) for the design, progress guarantees
/// and memory.
///
/// Values are returned by clone (`V: Clone`): keep large values behind an `Arc`.
///
/// # Thread safety
///
/// `Cache<K, V, S>` is `Send` and `Sync` when `K` and `V` are `Send + Sync` (values are read by
/// reference from many threads and dropped by whichever thread reclaims them) and `S` is `Send +
/// Sync`.
///
/// # Examples
///
/// ```
/// use latchless::cache::Cache;
/// use std::thread;
///
/// let cache = Cache::new(1000);
/// thread::scope(|s| {
///     for t in 0..4u64 {
///         let cache = &cache;
///         s.spawn(move || {
///             for i in 0..1000 {
///                 let key = i % 100;
///                 if cache.get(&key).is_none() {
///                     cache.insert(key, key * 2);
///                 }
///             }
///         });
///     }
/// });
/// assert_eq!(cache.get(&7), Some(14));
/// assert!(cache.len() <= 1000);
/// ```
pub struct Cache<K, V, S = DefaultHashBuilder> {
    index: Index<K, V>,
    policy: Policy<K, V>,
    hasher: S,
    capacity: u64,
    /// Total weight of the entries in the index (added before an entry is published, released
    /// after it is unlinked, so it never undercounts an entry that can still be evicted).
    /// Padded to a cache line of its own: every insert and eviction writes it, and sharing a line
    /// with what every `get` reads (the hasher, the collector, the statistics switch) made each
    /// write cost the other threads' next lookup a cache miss.
    weight: CachePadded<AtomicCounter>,
    /// Entries in the index, counted like `weight` (and padded likewise); `None` without a
    /// weigher, where every entry weighs 1 and `weight` is the count (one shared
    /// read-modify-write less per write).
    len: Option<CachePadded<AtomicCounter>>,
    weigher: Option<Weigher<K, V>>,
    listener: Option<Listener<K, V>>,
    stats: Stats,
    flights: Flights<K, V>,
    /// The global collector or the caller's.
    reclaim: Reclaim,
    /// The builder's time-to-live in nanoseconds, if any.
    time_to_live: Option<u64>,
    /// The builder's time-to-idle, if any.
    idle: Option<Idle>,
    /// Whether any entry may expire: set at build with a time-to-live or a time-to-idle, or by
    /// the first `insert_with_ttl`, never cleared. While it is false no lookup reads the clock.
    expiring: AtomicBool,
    /// Where deadlines are read from.
    clock: Box<dyn Clock>,
}

// SAFETY: the index holds raw pointers to entries that the cache owns; sending the cache
// sends the entries, which is sound when `K`, `V` are `Send`. `Sync` is required of them too,
// because even an owned cache may have readers on other threads still pinned on its entries.
unsafe impl<K: Send + Sync, V: Send + Sync, S: Send> Send for Cache<K, V, S> {}
// SAFETY: through `&Cache`, threads share `&K` and `&V` (readers clone values out, compare keys)
// and move entries between threads (whoever reclaims an entry drops it): `K, V: Send + Sync`.
// All shared mutable state is atomics, epoch-protected arrays and entries, and mutexes.
unsafe impl<K: Send + Sync, V: Send + Sync, S: Sync> Sync for Cache<K, V, S> {}

impl<K, V> Cache<K, V, DefaultHashBuilder> {
    /// A cache of `capacity` entries (each weighing 1), hashed with a [`DefaultHashBuilder`]. A
    /// capacity of 0 stores nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(2);
    /// cache.insert("a", 1);
    /// assert_eq!(cache.get(&"a"), Some(1));
    /// ```
    #[must_use]
    pub fn new(capacity: u64) -> Self {
        Self::builder(capacity).build()
    }

    /// A builder for a cache of `capacity` weight units.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache: Cache<u8, u8> = Cache::builder(16).estimated_entries(16).build();
    /// assert_eq!(cache.capacity(), 16);
    /// ```
    #[must_use]
    pub fn builder(capacity: u64) -> CacheBuilder<K, V, DefaultHashBuilder> {
        CacheBuilder {
            capacity,
            hasher: DefaultHashBuilder::default(),
            weigher: None,
            listener: None,
            estimated_entries: None,
            index_buckets: None,
            collector: None,
            count_lookups: false,
            time_to_live: None,
            time_to_idle: None,
            clock: None,
        }
    }
}

impl<K, V, S> Cache<K, V, S> {
    /// A cache of `capacity` entries hashed with `hasher`.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    /// use std::collections::hash_map::RandomState;
    ///
    /// // SipHash, seeded per process: the choice against hash flooding.
    /// let cache = Cache::with_hasher(8, RandomState::new());
    /// cache.insert(1, 2);
    /// assert_eq!(cache.peek(&1), Some(2));
    /// ```
    #[must_use]
    pub fn with_hasher(capacity: u64, hasher: S) -> Self {
        Cache::builder(capacity).hasher(hasher).build()
    }

    /// The capacity, in weight units (entries, without a weigher).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// assert_eq!(Cache::<u8, u8>::new(5).capacity(), 5);
    /// ```
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The number of entries: a snapshot while writers run.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(5);
    /// cache.insert(1, 1);
    /// assert_eq!(cache.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        usize::try_from(self.entries()).unwrap_or(usize::MAX)
    }

    /// Whether the cache holds no entry (a snapshot).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// assert!(Cache::<u8, u8>::new(5).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.entries() == 0
    }

    /// The total weight of the entries: a snapshot while writers run; at most
    /// [`capacity`](Self::capacity) once they have returned.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::builder(100).weigher(|_: &u8, v: &Vec<u8>| v.len() as u64).build();
    /// cache.insert(1, vec![0; 30]);
    /// assert_eq!(cache.weight(), 30);
    /// ```
    pub fn weight(&self) -> u64 {
        self.weight.get()
    }

    /// Hits, misses, inserts, evictions and refusals so far (hits and misses only with
    /// [`count_lookups(true)`](CacheBuilder::count_lookups)).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(1);
    /// cache.insert(1, ());
    /// cache.insert(2, ()); // evicts 1
    /// assert_eq!(cache.stats().evictions, 1);
    /// ```
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.stats.hits.sum(),
            misses: self.stats.misses.sum(),
            inserts: self.stats.inserts.sum(),
            evictions: self.stats.evictions.sum(),
            refused: self.stats.refused.sum(),
        }
    }

    /// The number of entries in the index.
    #[inline]
    fn entries(&self) -> u64 {
        self.len
            .as_ref()
            .map_or_else(|| self.weight.get(), |len| len.get())
    }

    /// Counts an entry in, before it is published.
    #[inline]
    fn count_in(&self, weight: u64) {
        self.weight.add(weight);
        if let Some(len) = &self.len {
            len.increment();
        }
    }

    /// Counts an entry out, after it left the index (or failed to enter it).
    #[inline]
    fn count_out(&self, weight: u64) {
        self.weight.sub(weight);
        if let Some(len) = &self.len {
            len.decrement();
        }
    }

    fn pin(&self) -> Guard {
        self.reclaim.pin()
    }

    /// Whether `e` has expired. Reads the clock only for an entry with a deadline, or in a cache
    /// with a time-to-idle.
    #[inline]
    fn is_expired(&self, e: &Entry<K, V>) -> bool {
        self.expired_now(e).0
    }

    /// Whether `e` has expired, and the clock's time if that was read (0 if not: an entry with
    /// no deadline in a cache without a time-to-idle, or a cache where nothing ever expired).
    #[inline]
    fn expired_now(&self, e: &Entry<K, V>) -> (bool, u64) {
        // Relaxed: `expiring` is set at build for a time-to-live or a time-to-idle, and
        // otherwise before any entry with a deadline is allocated; every entry reaches this
        // thread through a synchronising load: found in its bucket (Acquire, pairing with the
        // Release compare-and-swap that published it; the eviction policy too finds entries
        // there, by handle). So the flag's store happens before this load, which then reads true
        // for any entry that can expire.
        if !(self.expiring.load(Ordering::Relaxed)
            && (e.deadline != u64::MAX || self.idle.is_some()))
        {
            return (false, 0);
        }
        let now = self.clock.now();
        let at = Moment {
            now,
            idle: self.idle,
        };
        (e.expired_at(at), now)
    }

    /// The moment the eviction policy judges expiry at: the clock's time, or 0 (nothing
    /// expired) in a cache where nothing can expire, which then reads no clock.
    fn eviction_now(&self) -> Moment {
        // Relaxed: a stale `false` only misses an expiry, which a later lookup or sweep finds.
        let now = if self.expiring.load(Ordering::Relaxed) {
            self.clock.now()
        } else {
            0
        };
        Moment {
            now,
            idle: self.idle,
        }
    }

    /// The deadline of an entry stored now with `ttl` nanoseconds to live (`u64::MAX` for
    /// `None`: never), and its first access tick (0 without a time-to-idle). Reads the clock
    /// once, and only if either needs it.
    fn stamp(&self, ttl: Option<u64>) -> (u64, u64) {
        if ttl.is_none() && self.idle.is_none() {
            return (u64::MAX, 0);
        }
        let now = self.clock.now();
        (
            ttl.map_or(u64::MAX, |ttl| now.saturating_add(ttl)),
            self.idle.map_or(0, |idle| idle.tick(now)),
        )
    }

    #[track_caller]
    fn check_guard(&self, guard: &Guard) {
        self.reclaim
            .check(guard, "Cache: the guard does not pin the cache's collector");
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    #[inline]
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    fn weigh(&self, key: &K, value: &V) -> u64 {
        self.weigher.as_ref().map_or(1, |w| w(key, value))
    }

    fn notify(&self, key: &K, value: &V, cause: RemovalCause) {
        if let Some(listener) = &self.listener {
            listener(key, value, cause);
        }
    }

    /// The entry for `key` unless it has expired. An expired one is unlinked (as `remove` does)
    /// and reported as `Expired`, and the lookup misses.
    #[inline]
    fn find_live<'g, Q>(&self, hash: u64, key: &Q, guard: &'g Guard) -> Option<&'g Entry<K, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let e = self.index.find(hash, key, guard)?;
        // The flag first, inline: a cache where nothing can expire pays one load and a branch
        // per lookup; the rest is out of line.
        // Relaxed: as in `expired_now`.
        if self.expiring.load(Ordering::Relaxed) && self.expire_if_due(e, guard).is_none() {
            return None;
        }
        Some(e)
    }

    /// `find_live`'s check of an entry in a cache where entries can expire: removes `e` if it
    /// has expired (`None`), else returns the time the check read (0 if none). Out of line, so
    /// that the lookups of caches without expiry keep their code tight.
    #[cold]
    #[inline(never)]
    fn expire_if_due(&self, e: &Entry<K, V>, guard: &Guard) -> Option<u64> {
        let (expired, now) = self.expired_now(e);
        if !expired {
            return Some(now);
        }
        self.expire(e, guard);
        None
    }

    /// `get`'s check of an entry it found in a cache where entries can expire: `expire_if_due`
    /// (`None` if `e` had expired), then the access recorded (with a time-to-idle, at the time
    /// the check read). Returns whether this was the entry's first read since it was queued.
    /// Out of line, as `expire_if_due`.
    #[cold]
    #[inline(never)]
    fn access_expiring(&self, e: &Entry<K, V>, guard: &Guard) -> Option<bool> {
        let now = self.expire_if_due(e, guard)?;
        Some(match self.idle {
            Some(idle) => e.touch_at(idle.tick(now)),
            None => e.touch(),
        })
    }

    /// Removes an entry found expired, telling the listener `Expired`; nothing if a concurrent
    /// writer unlinked it first (that writer settles it).
    fn expire(&self, e: &Entry<K, V>, guard: &Guard) {
        if let Some(p) = self.index.replace(e, None, guard) {
            // SAFETY: unlinked by our own swap just now; retired once, here.
            unsafe { self.policy.retire(p, guard) };
            self.settle(e, RemovalCause::Expired);
            self.sweep(guard);
        }
    }

    /// Returns a clone of the value for `key` and records the access for the eviction policy.
    /// Lock-free; allocates nothing but the clone.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert("session-1", 42);
    /// assert_eq!(cache.get("session-1"), Some(42));
    /// assert_eq!(cache.get("session-2"), None);
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_pinned(key, &self.pin())
    }

    /// [`get`](Self::get) under a guard the caller already holds.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the cache's collector.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, 'x');
    /// let guard = crossbeam_epoch::pin();
    /// assert_eq!(cache.get_with_guard(&1, &guard), Some('x'));
    /// ```
    #[track_caller]
    pub fn get_with_guard<Q>(&self, key: &Q, guard: &Guard) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.check_guard(guard);
        self.get_pinned(key, guard)
    }

    fn get_pinned<Q>(&self, key: &Q, guard: &Guard) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // `find_live`, with the access recorded on the way: in a cache where nothing can expire,
        // the expiry costs one load and a branch, and everything else is out of line.
        let Some(e) = self.index.find(self.hash(key), key, guard) else {
            self.stats.miss();
            return None;
        };
        // Relaxed: as in `expired_now`.
        let first = if self.expiring.load(Ordering::Relaxed) {
            let Some(first) = self.access_expiring(e, guard) else {
                self.stats.miss();
                return None;
            };
            first
        } else {
            e.touch()
        };
        if first {
            self.policy.record_read(e);
        }
        self.stats.hit();
        Some(e.value.clone())
    }

    /// Returns a clone of the value for `key` without recording an access or a hit.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, "a");
    /// assert_eq!(cache.peek(&1), Some("a"));
    /// assert_eq!(cache.stats().hits, 0);
    /// ```
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.peek_pinned(key, &self.pin())
    }

    /// [`peek`](Self::peek) under a guard the caller already holds.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the cache's collector.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, 'x');
    /// let guard = crossbeam_epoch::pin();
    /// assert_eq!(cache.peek_with_guard(&1, &guard), Some('x'));
    /// ```
    #[track_caller]
    pub fn peek_with_guard<Q>(&self, key: &Q, guard: &Guard) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.check_guard(guard);
        self.peek_pinned(key, guard)
    }

    fn peek_pinned<Q>(&self, key: &Q, guard: &Guard) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find_live(self.hash(key), key, guard)
            .map(|e| e.value.clone())
    }

    /// Whether the cache holds `key`, without recording an access.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, ());
    /// assert!(cache.contains_key(&1));
    /// assert!(!cache.contains_key(&2));
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.contains_key_pinned(key, &self.pin())
    }

    /// [`contains_key`](Self::contains_key) under a guard the caller already holds.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the cache's collector.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, ());
    /// let guard = crossbeam_epoch::pin();
    /// assert!(cache.contains_key_with_guard(&1, &guard));
    /// assert!(!cache.contains_key_with_guard(&2, &guard));
    /// ```
    #[track_caller]
    pub fn contains_key_with_guard<Q>(&self, key: &Q, guard: &Guard) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.check_guard(guard);
        self.contains_key_pinned(key, guard)
    }

    fn contains_key_pinned<Q>(&self, key: &Q, guard: &Guard) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find_live(self.hash(key), key, guard).is_some()
    }

    /// Stores `value` for `key`, returning the value it replaced. Evicts as needed to stay within
    /// the capacity. An entry heavier than the whole capacity is refused: it is counted in
    /// [`CacheStats::refused`], given to the eviction listener, then dropped, and `None` is
    /// returned; use [`try_insert`](Self::try_insert) to get it back instead. Lock-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// assert_eq!(cache.insert(1, "a"), None);
    /// assert_eq!(cache.insert(1, "b"), Some("a"));
    /// ```
    pub fn insert(&self, key: K, value: V) -> Option<V> {
        self.insert_or_notify(key, value, self.time_to_live, &self.pin())
    }

    /// [`insert`](Self::insert) under a guard the caller already holds.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the cache's collector.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// let guard = crossbeam_epoch::pin();
    /// cache.insert_with_guard(1, 1, &guard);
    /// assert_eq!(cache.len(), 1);
    /// ```
    #[track_caller]
    pub fn insert_with_guard(&self, key: K, value: V, guard: &Guard) -> Option<V> {
        self.check_guard(guard);
        self.insert_or_notify(key, value, self.time_to_live, guard)
    }

    /// `insert`'s and `insert_with_ttl`'s refusal path: the listener hears of a too-heavy entry,
    /// which is then dropped. `ttl` in nanoseconds, `None` for never.
    fn insert_or_notify(&self, key: K, value: V, ttl: Option<u64>, guard: &Guard) -> Option<V> {
        self.insert_pinned(key, value, ttl, guard)
            .unwrap_or_else(|(k, v)| {
                self.notify(&k, &v, RemovalCause::Refused);
                None
            })
    }

    /// Like [`insert`](Self::insert), but an entry heavier than the whole capacity is handed
    /// back as `Err((key, value))` (and counted in [`CacheStats::refused`]).
    ///
    /// # Errors
    ///
    /// `Err((key, value))` when the entry weighs more than [`capacity`](Self::capacity).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::builder(4).weigher(|_: &u8, v: &String| v.len() as u64).build();
    /// assert_eq!(cache.try_insert(1, "abc".to_string()), Ok(None));
    /// assert_eq!(cache.try_insert(2, "abcde".to_string()), Err((2, "abcde".to_string())));
    /// assert_eq!(cache.stats().refused, 1);
    /// ```
    pub fn try_insert(&self, key: K, value: V) -> Result<Option<V>, (K, V)> {
        self.insert_pinned(key, value, self.time_to_live, &self.pin())
    }

    /// [`try_insert`](Self::try_insert) under a guard the caller already holds.
    ///
    /// # Errors
    ///
    /// As [`try_insert`](Self::try_insert).
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the cache's collector.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::builder(4).weigher(|_: &u8, v: &String| v.len() as u64).build();
    /// let guard = crossbeam_epoch::pin();
    /// assert_eq!(cache.try_insert_with_guard(1, "abc".to_string(), &guard), Ok(None));
    /// assert!(cache.try_insert_with_guard(2, "abcde".to_string(), &guard).is_err());
    /// ```
    #[track_caller]
    pub fn try_insert_with_guard(
        &self,
        key: K,
        value: V,
        guard: &Guard,
    ) -> Result<Option<V>, (K, V)> {
        self.check_guard(guard);
        self.insert_pinned(key, value, self.time_to_live, guard)
    }

    /// Stores `value` for `key` only if the cache holds no value for `key`; never replaces.
    /// Evicts as needed, as [`insert`](Self::insert) does. Lock-free.
    ///
    /// Of several threads inserting the same absent key at once, exactly one succeeds. The
    /// others get their key and value back, and the key's value is the winner's from then on
    /// (until it is removed, replaced or evicted).
    ///
    /// # Errors
    ///
    /// `Err((key, value))`, handed back, if the key is present, or if the entry weighs more than
    /// [`capacity`](Self::capacity) (then also counted in [`CacheStats::refused`]). Tell the two
    /// apart with [`peek`](Self::peek), if it matters.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let sessions = Cache::new(10);
    /// assert_eq!(sessions.insert_if_absent("s1", 1), Ok(()));
    /// // Present already: nothing changes, and the value comes back.
    /// assert_eq!(sessions.insert_if_absent("s1", 2), Err(("s1", 2)));
    /// assert_eq!(sessions.get(&"s1"), Some(1));
    /// ```
    pub fn insert_if_absent(&self, key: K, value: V) -> Result<(), (K, V)> {
        self.insert_if_absent_pinned(key, value, &self.pin())
    }

    /// [`insert_if_absent`](Self::insert_if_absent) under a guard the caller already holds.
    ///
    /// # Errors
    ///
    /// As [`insert_if_absent`](Self::insert_if_absent).
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the cache's collector.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// let guard = crossbeam_epoch::pin();
    /// assert_eq!(cache.insert_if_absent_with_guard(7, 'a', &guard), Ok(()));
    /// assert_eq!(cache.insert_if_absent_with_guard(7, 'b', &guard), Err((7, 'b')));
    /// ```
    #[track_caller]
    pub fn insert_if_absent_with_guard(
        &self,
        key: K,
        value: V,
        guard: &Guard,
    ) -> Result<(), (K, V)> {
        self.check_guard(guard);
        self.insert_if_absent_pinned(key, value, guard)
    }

    fn insert_if_absent_pinned(&self, key: K, value: V, guard: &Guard) -> Result<(), (K, V)> {
        let weight = self.weigh(&key, &value);
        if weight > self.capacity {
            self.stats.refused.increment();
            return Err((key, value));
        }
        let hash = self.hash(&key);
        // The common refusal first, without allocating (an expired entry is removed here).
        if self.find_live(hash, &key, guard).is_some() {
            return Err((key, value));
        }
        // Counted before the entry is published, as in `insert_pinned`; given back if it is not.
        self.count_in(weight);
        let (deadline, tick) = self.stamp(self.time_to_live);
        let new_ptr = Entry::new(key, value, hash, weight, deadline, tick).allocate();
        // SAFETY: as in `insert_pinned`.
        let new = unsafe { &*new_ptr };
        let fresh = || self.policy.fresh_handle();
        while let Published::Present = self.index.publish(new_ptr, false, fresh, guard) {
            // Present, unless what is there has expired: then it is removed, and we try again.
            if self.find_live(hash, &new.key, guard).is_none() {
                continue;
            }
            self.count_out(weight);
            // SAFETY: never published (the index refused it), so no other thread can reach it,
            // and `new` is not used again.
            let entry = unsafe { Entry::reclaim(new_ptr) };
            return Err((entry.key, entry.value));
        }
        self.stats.inserts.increment();
        // Admitted before anything can call user code, as in `insert_pinned`. A new key: the
        // small FIFO, or main if the ghost list remembers it.
        self.policy.admit(new);
        self.evict_over_capacity(guard);
        Ok(())
    }

    /// Stores an entry with `ttl` nanoseconds to live (`None`: forever).
    fn insert_pinned(
        &self,
        key: K,
        value: V,
        ttl: Option<u64>,
        guard: &Guard,
    ) -> Result<Option<V>, (K, V)> {
        let weight = self.weigh(&key, &value);
        if weight > self.capacity {
            self.stats.refused.increment();
            return Err((key, value));
        }
        let hash = self.hash(&key);
        // Counted before the entry is published, so that a concurrent eviction of it never
        // releases weight that was not added.
        self.count_in(weight);
        let (deadline, tick) = self.stamp(ttl);
        let new_ptr = Entry::new(key, value, hash, weight, deadline, tick).allocate();
        // SAFETY: just allocated; it is freed only after it has been published, then unlinked and
        // retired, all of which happen after this borrow (`guard` keeps it allocated until then
        // anyway).
        let new = unsafe { &*new_ptr };
        let fresh = || self.policy.fresh_handle();
        let replaced = match self.index.publish(new_ptr, true, fresh, guard) {
            Published::Replaced(p, old) => Some((p, old)),
            // `Present` only comes back when `replace` is false.
            Published::Added | Published::Present => None,
        };
        self.stats.inserts.increment();
        let Some((old_ptr, old)) = replaced else {
            // A new key. Admitted before anything can call user code (the listener, in
            // `evict_over_capacity`): a panic there must not leave a published key that no FIFO
            // holds.
            self.policy.admit(new);
            self.evict_over_capacity(guard);
            return Ok(None);
        };
        // SAFETY: swapped out by our own publish just now; retired once, here, before any user
        // code runs (a panicking listener must not leak it). `guard` keeps it readable below.
        unsafe { self.policy.retire(old_ptr, guard) };
        // The new entry inherited the key's handle, so its place in the FIFOs: nothing to queue.
        if self.is_expired(old) {
            // An expired entry replaced: the key counts as absent, and its value leaves as
            // `Expired`.
            self.settle(old, RemovalCause::Expired);
            self.evict_over_capacity(guard);
            return Ok(None);
        }
        // A replacement is an access: it keeps its key's count, plus one.
        new.set_freq(old.freq() + 1, self.idle.is_some());
        let replaced = self.release(old, RemovalCause::Replaced);
        self.evict_over_capacity(guard);
        Ok(Some(replaced))
    }

    /// Like [`insert`](Self::insert), but the entry expires `ttl` after now, whatever the
    /// builder's [`time_to_live`](CacheBuilder::time_to_live) (which it overrides for this entry
    /// only). A zero `ttl` stores an entry that is already expired. Replacing an expired entry
    /// returns `None`, as for an absent key, and the listener hears the expired value as
    /// [`RemovalCause::Expired`]. Lock-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cache = Cache::builder(10)
    ///     .time_to_live(Duration::from_secs(60))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert_with_ttl("token", 1, Duration::from_secs(1));
    /// cache.insert("profile", 2);
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(cache.get(&"token"), None);
    /// assert_eq!(cache.get(&"profile"), Some(2));
    /// // Over the expired key: nothing is replaced.
    /// assert_eq!(cache.insert_with_ttl("token", 3, Duration::from_secs(1)), None);
    /// ```
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: core::time::Duration) -> Option<V> {
        self.insert_with_ttl_pinned(key, value, ttl, &self.pin())
    }

    /// [`insert_with_ttl`](Self::insert_with_ttl) under a guard the caller already holds.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the cache's collector.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cache = Cache::builder(10).clock(clock.clone()).build();
    /// let guard = crossbeam_epoch::pin();
    /// cache.insert_with_ttl_with_guard(1, 'a', Duration::from_secs(1), &guard);
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(cache.get_with_guard(&1, &guard), None);
    /// ```
    #[track_caller]
    pub fn insert_with_ttl_with_guard(
        &self,
        key: K,
        value: V,
        ttl: core::time::Duration,
        guard: &Guard,
    ) -> Option<V> {
        self.check_guard(guard);
        self.insert_with_ttl_pinned(key, value, ttl, guard)
    }

    fn insert_with_ttl_pinned(
        &self,
        key: K,
        value: V,
        ttl: core::time::Duration,
        guard: &Guard,
    ) -> Option<V> {
        // Relaxed: set before the entry is allocated, and published to readers with it (see
        // `is_expired`).
        if !self.expiring.load(Ordering::Relaxed) {
            self.expiring.store(true, Ordering::Relaxed);
        }
        let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        self.insert_or_notify(key, value, Some(ttl), guard)
    }

    /// Bookkeeping for an entry this thread unlinked from the index (and retired): releases its
    /// weight, tells the listener, and returns a clone of its value.
    fn release(&self, e: &Entry<K, V>, cause: RemovalCause) -> V {
        self.settle(e, cause);
        e.value.clone()
    }

    /// [`release`](Self::release) without the clone.
    fn settle(&self, e: &Entry<K, V>, cause: RemovalCause) {
        self.count_out(e.weight);
        self.notify(&e.key, &e.value, cause);
    }

    fn evict_over_capacity(&self, guard: &Guard) {
        // Read once, and only if something must be evicted: most inserts evict nothing.
        let mut now = None;
        while self.weight.get() > self.capacity {
            let now = *now.get_or_insert_with(|| self.eviction_now());
            match self.policy.evict_one(&self.index, now, guard) {
                Evicted::Victim(e) => {
                    self.count_out(e.weight);
                    self.stats.evictions.increment();
                    self.notify(&e.key, &e.value, RemovalCause::Evicted);
                }
                // Not counted as an eviction.
                Evicted::Expired(e) => {
                    self.count_out(e.weight);
                    self.notify(&e.key, &e.value, RemovalCause::Expired);
                }
                // What remains is being inserted right now; its inserter evicts after admitting it.
                Evicted::Nothing => break,
            }
        }
    }

    /// After a removal left a stale handle in a FIFO: if the FIFOs hold more than twice the live
    /// entries, drop stale handles from their fronts, so insert/remove churn that evicts nothing
    /// cannot grow them without bound.
    fn sweep(&self, guard: &Guard) {
        let live = self.len();
        if self.policy.queued() > 2 * live + 16 {
            // Each removal adds one stale handle; two sweeps of each FIFO drop at least as many
            // as long as stale handles are at least half of it, which the condition ensures.
            self.sweep_once(guard);
            self.sweep_once(guard);
            self.evict_over_capacity(guard);
        }
    }

    /// One `Policy::sweep_one`, settling the expired entries it unlinked.
    fn sweep_once(&self, guard: &Guard) {
        let now = self.eviction_now();
        for e in self
            .policy
            .sweep_one(&self.index, now, guard)
            .into_iter()
            .flatten()
        {
            // Unlinked and retired by the policy already.
            self.count_out(e.weight);
            self.notify(&e.key, &e.value, RemovalCause::Expired);
        }
    }

    /// Removes `key`, returning its value. Lock-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, "a");
    /// assert_eq!(cache.remove(&1), Some("a"));
    /// assert_eq!(cache.remove(&1), None);
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_pinned(key, &self.pin())
    }

    /// [`remove`](Self::remove) under a guard the caller already holds.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the cache's collector.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, 1);
    /// let guard = crossbeam_epoch::pin();
    /// assert_eq!(cache.remove_with_guard(&1, &guard), Some(1));
    /// ```
    #[track_caller]
    pub fn remove_with_guard<Q>(&self, key: &Q, guard: &Guard) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.check_guard(guard);
        self.remove_pinned(key, guard)
    }

    fn remove_pinned<Q>(&self, key: &Q, guard: &Guard) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        loop {
            let e = self.find_live(hash, key, guard)?;
            if let Some(p) = self.index.replace(e, None, guard) {
                // SAFETY: unlinked by our own swap just now; retired once, here.
                unsafe { self.policy.retire(p, guard) };
                let value = self.release(e, RemovalCause::Removed);
                self.sweep(guard);
                return Some(value);
            }
            // Replaced or evicted meanwhile: look again.
        }
    }

    /// Iterates over clones of the cache's entries, without recording an access or a hit (like
    /// [`peek`](Self::peek)).
    ///
    /// Weakly consistent, as the iterators of concurrent maps are: the iterator walks the index
    /// bucket by bucket, pinning only while it copies the entries of a run of buckets (never
    /// across calls to `next`), so it neither blocks writers nor holds back memory reclamation. It yields
    /// each key at most once; every pair it yields was in the cache at some moment during the
    /// iteration; an entry that stays in the cache, unchanged and unexpired, for the whole
    /// iteration is yielded. Expired entries are skipped, not removed (see
    /// [`purge_expired`](Self::purge_expired)). Entries inserted, replaced or removed meanwhile may or may not be seen. The
    /// order is unspecified. Lock-free (`next` never waits for a writer).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, "a");
    /// cache.insert(2, "b");
    /// let mut pairs: Vec<(u32, &str)> = cache.iter().collect();
    /// pairs.sort();
    /// assert_eq!(pairs, [(1, "a"), (2, "b")]);
    /// ```
    pub fn iter(&self) -> Iter<'_, K, V, S>
    where
        K: Clone,
    {
        Iter {
            cache: self,
            next_bucket: 0,
            batch: Vec::new(),
        }
    }

    /// Removes every entry for which `keep` returns `false`; the eviction listener hears each with
    /// [`RemovalCause::Removed`]. Lock-free.
    ///
    /// Weakly consistent, like [`iter`](Self::iter): `keep` sees every entry that stays in the
    /// cache, unchanged, for the whole call, once each, and an entry it rejects is removed unless
    /// a writer replaced or removed it first (a replaced entry's new value is not judged).
    /// Entries inserted meanwhile may or may not be judged. The cache is pinned only while a run
    /// of buckets is judged, so `keep` runs under a pin: it may call into the cache, but should be
    /// quick.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// for i in 0..6 {
    ///     cache.insert(i, i * 10);
    /// }
    /// cache.retain(|&k, _| k % 2 == 0);
    /// assert_eq!(cache.len(), 3);
    /// assert_eq!(cache.get(&4), Some(40));
    /// assert_eq!(cache.get(&5), None);
    /// ```
    ///
    /// Expired entries are removed too, as [`RemovalCause::Expired`], without `keep` seeing them.
    pub fn retain(&self, keep: impl FnMut(&K, &V) -> bool) {
        self.remove_where(keep);
    }

    /// Removes every expired entry (see [`CacheBuilder::time_to_live`]); the eviction listener
    /// hears each with [`RemovalCause::Expired`]. Without it, an expired entry leaves when a
    /// lookup or an insert meets its key, or when the eviction policy reaches it. Weakly
    /// consistent, like [`retain`](Self::retain): once it returns, every entry that had expired
    /// when it began is gone, and with no writer running [`len`](Self::len) and
    /// [`weight`](Self::weight) count only live entries. Lock-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cache = Cache::builder(10).clock(clock.clone()).build();
    /// cache.insert_with_ttl(1, 'a', Duration::from_secs(1));
    /// cache.insert(2, 'b');
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(cache.len(), 2); // expired, but not yet removed
    /// cache.purge_expired();
    /// assert_eq!(cache.len(), 1);
    /// ```
    pub fn purge_expired(&self) {
        self.remove_where(|_, _| true);
    }

    /// [`retain`](Self::retain)'s walk: removes expired entries as `Expired`, and live ones `keep`
    /// rejects as `Removed`.
    fn remove_where(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        for chunk in (0..self.index.buckets()).step_by(PIN_BUCKETS) {
            let guard = self.pin();
            // Allocates only once an entry is rejected.
            let mut rejected = Vec::new();
            for i in chunk..(chunk + PIN_BUCKETS).min(self.index.buckets()) {
                // Judge the bucket's entries as one load found them, then unlink the rejected
                // ones: `keep` never runs inside a retry.
                self.index.visit(i, &guard, |e| {
                    if self.is_expired(e) {
                        rejected.push((e, RemovalCause::Expired));
                    } else if !keep(&e.key, &e.value) {
                        rejected.push((e, RemovalCause::Removed));
                    }
                });
                for (e, cause) in rejected.drain(..) {
                    // Unlinked only if it is still the key's entry: a replacement is not judged
                    // here.
                    if let Some(p) = self.index.replace(e, None, &guard) {
                        // SAFETY: unlinked by our own swap just now; retired once, here.
                        unsafe { self.policy.retire(p, &guard) };
                        self.settle(e, cause);
                        self.sweep(&guard);
                    }
                }
            }
        }
    }

    /// Replaces the value for `key` with `new` only if it currently equals `current`, atomically:
    /// of several racing exchanges from the same value, exactly one succeeds. The building block
    /// for optimistic updates (read, compute, exchange, retry on failure). For values without
    /// `PartialEq`, store them with a version number and compare that. Lock-free.
    ///
    /// # Errors
    ///
    /// [`CompareExchangeError`] with the value the cache holds (if any) and `new` handed back,
    /// when the key is absent or holds another value (`Mismatch`), or when `new` is heavier
    /// than the whole capacity (`Refused`).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert("tokens", 1);
    /// // Optimistic increment.
    /// loop {
    ///     let cur = cache.get("tokens").unwrap();
    ///     if cache.compare_exchange(&"tokens", &cur, cur + 1).is_ok() {
    ///         break;
    ///     }
    /// }
    /// assert_eq!(cache.get("tokens"), Some(2));
    /// ```
    pub fn compare_exchange(
        &self,
        key: &K,
        current: &V,
        new: V,
    ) -> Result<(), CompareExchangeError<V>>
    where
        K: Clone,
        V: PartialEq,
    {
        self.compare_exchange_pinned(key, current, new, &self.pin())
    }

    /// [`compare_exchange`](Self::compare_exchange) under a guard the caller already holds.
    ///
    /// # Errors
    ///
    /// As [`compare_exchange`](Self::compare_exchange).
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the cache's collector.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, 'a');
    /// let guard = crossbeam_epoch::pin();
    /// assert!(cache.compare_exchange_with_guard(&1, &'a', 'b', &guard).is_ok());
    /// assert_eq!(cache.get(&1), Some('b'));
    /// ```
    #[track_caller]
    pub fn compare_exchange_with_guard(
        &self,
        key: &K,
        current: &V,
        new: V,
        guard: &Guard,
    ) -> Result<(), CompareExchangeError<V>>
    where
        K: Clone,
        V: PartialEq,
    {
        self.check_guard(guard);
        self.compare_exchange_pinned(key, current, new, guard)
    }

    fn compare_exchange_pinned(
        &self,
        key: &K,
        current: &V,
        new: V,
        guard: &Guard,
    ) -> Result<(), CompareExchangeError<V>>
    where
        K: Clone,
        V: PartialEq,
    {
        let hash = self.hash(key);
        let weight = self.weigh(key, &new);
        let mismatch = |found: Option<&Entry<K, V>>, new: V, failure| CompareExchangeError {
            current: found.map(|e| e.value.clone()),
            new,
            failure,
        };
        if weight > self.capacity {
            self.stats.refused.increment();
            let found = self.find_live(hash, key, guard);
            return Err(mismatch(found, new, CompareExchangeFailure::Refused));
        }
        // `Err(new)` until the new entry is allocated, then `Ok(entry)`; it is published only by
        // the successful replace.
        let mut pending: Result<EntryPtr<K, V>, V> = Err(new);
        loop {
            let found = self.find_live(hash, key, guard);
            let Some(old) = found.filter(|e| e.value == *current) else {
                let new = match pending {
                    // SAFETY: allocated below by this thread and never published, so ours to
                    // free; no reference to it outlives the pass that made it.
                    Ok(p) => unsafe { Entry::reclaim(p) }.value,
                    Err(new) => new,
                };
                return Err(mismatch(found, new, CompareExchangeFailure::Mismatch));
            };
            let p = match pending {
                Ok(p) => p,
                Err(new) => {
                    let (deadline, tick) = self.stamp(self.time_to_live);
                    Entry::new(key.clone(), new, hash, weight, deadline, tick).allocate()
                }
            };
            pending = Ok(p);
            // SAFETY: allocated by this thread, and freed only after it is published and retired
            // or, unpublished, by `reclaim` above, after this pass.
            let e = unsafe { &*p };
            // Counted before publication, as in `insert_pinned`.
            self.count_in(weight);
            if let Some(old_ptr) = self.index.replace(old, Some(p), guard) {
                self.stats.inserts.increment();
                // SAFETY: swapped out by our own swap just now; retired once, here, before the
                // listener runs, as in `insert_pinned`.
                unsafe { self.policy.retire(old_ptr, guard) };
                // An access, as in `insert_pinned`; the key's handle passed to `e` with the swap.
                e.set_freq(old.freq() + 1, self.idle.is_some());
                self.release(old, RemovalCause::Replaced);
                self.evict_over_capacity(guard);
                return Ok(());
            }
            self.count_out(weight);
        }
    }

    /// Returns the value for `key`, computing it with `init` and inserting it on a miss. While one
    /// caller computes the value for a key, the others asking for the same key wait for its
    /// result instead of computing it again (single-flight): the only place the cache makes a
    /// caller wait. If `init` panics, the panic reaches its own caller, and the waiting callers
    /// are released: one of them computes instead. For a loader that may fail, see
    /// [`get_or_try_insert_with`](Self::get_or_try_insert_with).
    ///
    /// The value is returned even if it is too heavy to be stored (it is then refused as by
    /// [`insert`](Self::insert)).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::thread;
    ///
    /// let cache = Cache::new(10);
    /// let computed = AtomicUsize::new(0);
    /// thread::scope(|s| {
    ///     for _ in 0..4 {
    ///         s.spawn(|| {
    ///             let v = cache.get_or_insert_with("model", || {
    ///                 computed.fetch_add(1, Ordering::SeqCst);
    ///                 std::thread::sleep(std::time::Duration::from_millis(20));
    ///                 7
    ///             });
    ///             assert_eq!(v, 7);
    ///         });
    ///     }
    /// });
    /// assert_eq!(computed.load(Ordering::SeqCst), 1);
    /// ```
    pub fn get_or_insert_with(&self, key: K, init: impl FnOnce() -> V) -> V
    where
        K: Clone,
    {
        let Ok(v) = self.get_or_try_insert_with(key, || Ok::<V, Infallible>(init()));
        v
    }

    /// [`get_or_insert_with`](Self::get_or_insert_with) with a loader that may fail. While one
    /// caller loads the value for a key, the others asking for the same key wait for it
    /// (single-flight). If `init` fails, its error goes to its own caller and nothing is
    /// inserted; the waiting callers are released and one of them loads instead, with its own
    /// `init` (an error is never handed to a caller whose loader did not produce it).
    ///
    /// # Errors
    ///
    /// `init`'s error, when this caller ran `init` and it failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache: Cache<&str, u32> = Cache::new(10);
    /// let failed = cache.get_or_try_insert_with("weights", || "disk".parse::<u32>());
    /// assert!(failed.is_err());
    /// assert_eq!(cache.get(&"weights"), None); // nothing stored
    /// let loaded = cache.get_or_try_insert_with("weights", || "42".parse::<u32>());
    /// assert_eq!(loaded, Ok(42));
    /// assert_eq!(cache.get(&"weights"), Some(42));
    /// ```
    pub fn get_or_try_insert_with<E>(
        &self,
        key: K,
        init: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E>
    where
        K: Clone,
    {
        let hash = self.hash(&key);
        let mut init = Some(init);
        loop {
            if let Some(v) = self.get_pinned(&key, &self.pin()) {
                return Ok(v);
            }
            match self.flights.join(hash, key.clone()) {
                Joined::Leader(leader) => {
                    // A flight may have completed between the lookup and the join.
                    let found = {
                        let guard = self.pin();
                        self.find_live(hash, &key, &guard).map(|e| e.value.clone())
                    };
                    if let Some(v) = found {
                        leader.complete(v.clone());
                        return Ok(v);
                    }
                    // A caller leads at most once: it returns (or unwinds) from here.
                    let init = init.take().expect("a caller leads one flight at most");
                    // On an error (or a panic) `leader` drops without completing, which abandons
                    // the flight and wakes its followers.
                    let value = init()?;
                    self.insert(key, value.clone());
                    leader.complete(value.clone());
                    return Ok(value);
                }
                Joined::Follower(flight) => {
                    if let Some(v) = flight.wait() {
                        return Ok(v);
                    }
                    // The leader failed or panicked: try again, perhaps as the leader.
                }
            }
        }
    }

    /// Removes every entry present when `clear` reaches its bucket (entries inserted meanwhile may
    /// stay), telling the listener of each as `Removed` (or `Expired`, if it had expired).
    /// Lock-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, 1);
    /// cache.insert(2, 2);
    /// cache.clear();
    /// assert!(cache.is_empty());
    /// assert_eq!(cache.get(&1), None);
    /// ```
    pub fn clear(&self) {
        self.clear_pinned(&self.pin());
    }

    /// [`clear`](Self::clear) under a guard the caller already holds.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the cache's collector.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, 1);
    /// let guard = crossbeam_epoch::pin();
    /// cache.clear_with_guard(&guard);
    /// assert!(cache.is_empty());
    /// ```
    #[track_caller]
    pub fn clear_with_guard(&self, guard: &Guard) {
        self.check_guard(guard);
        self.clear_pinned(guard);
    }

    fn clear_pinned(&self, guard: &Guard) {
        let taken = self.index.take_all(guard);
        // All retired and their weight released before the listener hears any, so that a
        // listener that panics leaks no entry and leaves the accounting exact.
        for &(p, e) in &taken {
            // SAFETY: swapped out of its bucket by our own `take_all`; retired once, here.
            unsafe { self.policy.retire(p, guard) };
            self.count_out(e.weight);
        }
        // Drop the stale handles now rather than on later sweeps.
        for _ in 0..self.policy.queued() {
            self.sweep_once(guard);
        }
        self.evict_over_capacity(guard);
        for (_, e) in taken {
            let cause = if self.is_expired(e) {
                RemovalCause::Expired
            } else {
                RemovalCause::Removed
            };
            self.notify(&e.key, &e.value, cause);
        }
    }
}

/// For the model-checking suites (compiled in every build, as `src/sync.rs` alone may switch on
/// the model checkers); not part of the API.
impl<K, V, S> Cache<K, V, S> {
    /// Checks, with no other thread using the cache, that every entry's key has exactly one
    /// handle in the eviction policy's FIFOs: a key without one could never be evicted, and one
    /// queued twice would be evicted early.
    ///
    /// # Panics
    ///
    /// If the check fails.
    #[doc(hidden)]
    pub fn __model_check_handles(&self) {
        let guard = self.pin();
        let live = self.policy.check_handles(&self.index, &guard);
        assert_eq!(live, self.len(), "live keys without a queued handle");
    }
}

/// An iterator over clones of a [`Cache`]'s entries, weakly consistent: see [`Cache::iter`].
///
/// # Examples
///
/// ```
/// use latchless::cache::Cache;
///
/// let cache = Cache::new(10);
/// cache.insert("k", 1);
/// let mut it = cache.iter();
/// assert_eq!(it.next(), Some(("k", 1)));
/// assert_eq!(it.next(), None);
/// ```
pub struct Iter<'a, K, V, S = DefaultHashBuilder> {
    cache: &'a Cache<K, V, S>,
    /// The next bucket to copy.
    next_bucket: usize,
    /// Copies of the current bucket's entries, yielded from the back.
    batch: Vec<(K, V)>,
}

impl<K, V, S> Iterator for Iter<'_, K, V, S>
where
    K: Clone,
    V: Clone,
{
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        loop {
            if let Some(pair) = self.batch.pop() {
                return Some(pair);
            }
            let buckets = self.cache.index.buckets();
            if self.next_bucket == buckets {
                return None;
            }
            // One pin for a run of buckets, up to the first that holds anything.
            let guard = self.cache.pin();
            let end = (self.next_bucket + PIN_BUCKETS).min(buckets);
            while self.next_bucket < end && self.batch.is_empty() {
                let batch = &mut self.batch;
                let cache = self.cache;
                cache.index.visit(self.next_bucket, &guard, |e| {
                    // Expired entries are skipped (and left for a lookup or a purge to remove).
                    if !cache.is_expired(e) {
                        batch.push((e.key.clone(), e.value.clone()));
                    }
                });
                self.next_bucket += 1;
            }
        }
    }
}

impl<'a, K, V, S> IntoIterator for &'a Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    type Item = (K, V);
    type IntoIter = Iter<'a, K, V, S>;

    /// [`Cache::iter`].
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::new(10);
    /// cache.insert(1, 2);
    /// for (k, v) in &cache {
    ///     assert_eq!((k, v), (1, 2));
    /// }
    /// ```
    fn into_iter(self) -> Iter<'a, K, V, S> {
        self.iter()
    }
}

impl<K, V, S> core::iter::FusedIterator for Iter<'_, K, V, S>
where
    K: Clone,
    V: Clone,
{
}

impl<K, V, S> fmt::Debug for Iter<'_, K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("next_bucket", &self.next_bucket)
            .field("buckets", &self.cache.index.buckets())
            .finish_non_exhaustive()
    }
}

impl<K, V, S> fmt::Debug for Cache<K, V, S> {
    /// Prints sizes, never keys or values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("capacity", &self.capacity)
            .field("len", &self.entries())
            .field("weight", &self.weight.get())
            .field("buckets", &self.index.buckets())
            .finish_non_exhaustive()
    }
}

impl<K, V, S> Drop for Cache<K, V, S> {
    fn drop(&mut self) {
        // Every entry still alive is in the index (entries unlinked from it were retired by
        // whoever unlinked them, and are the epoch's): dropping the index's entries drops each
        // once. The FIFOs hold only handles.
        self.index.drop_all();
    }
}
