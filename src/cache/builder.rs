//! [`CacheBuilder`]: how a [`Cache`] is configured before it is built.

use super::clock::{Clock, SystemClock};
use super::flight::Flights;
use super::index::{Idle, Index};
use super::policy::Policy;
use super::{Cache, DefaultHashBuilder, Listener, RemovalCause, Stats, Weigher};
use crate::counter::AtomicCounter;
use crate::reclaim::Reclaim;
use crate::sync::{epoch::Collector, AtomicBool, CachePadded, UNDER_MODEL_CHECKER};
use core::fmt;
use core::time::Duration;

/// Index buckets per expected entry (rounded up to a power of two, at most 2^26 buckets).
///
/// A sparse index keeps most buckets at one entry or none. At one bucket per entry (0.5 to 1
/// entries per bucket after rounding) 40-60% of entries share their bucket, and as many lookups
/// of an absent key land on another key's entry: a write then often copies a bucket's array (an
/// allocation, and a retirement through the epoch) and a miss reads an entry for nothing (a
/// cache miss). At four buckets per entry, 12-22%. Measured with callgrind on one
/// thread, 10,000 entries, keys skewed over 100,000: an insert costs 15% fewer instructions than
/// at one bucket per entry (10% at two), and a `get` 17% fewer first-level cache misses (10% at
/// two). The price is 32 bytes of index per expected entry instead of 8.
const BUCKETS_PER_ENTRY: usize = 4;

/// Configures a [`Cache`]: weigher, eviction listener, hasher, index size, epoch collector,
/// time-to-live and clock.
///
/// # Examples
///
/// ```
/// use latchless::cache::{Cache, RemovalCause};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// let freed = Arc::new(AtomicU64::new(0));
/// let counter = freed.clone();
/// // A budget of 1 KiB of session state, weighed in bytes.
/// let cache = Cache::builder(1024)
///     .weigher(|_key: &u32, state: &Vec<u8>| state.len() as u64)
///     .eviction_listener(move |_key, state, cause| {
///         if cause == RemovalCause::Evicted {
///             counter.fetch_add(state.len() as u64, Ordering::Relaxed);
///         }
///     })
///     .build();
/// for session in 0..8 {
///     cache.insert(session, vec![0u8; 256]);
/// }
/// assert!(cache.weight() <= 1024);
/// assert_eq!(freed.load(Ordering::Relaxed), 4 * 256);
/// ```
pub struct CacheBuilder<K, V, S = DefaultHashBuilder> {
    pub(super) capacity: u64,
    pub(super) hasher: S,
    pub(super) weigher: Option<Weigher<K, V>>,
    pub(super) listener: Option<Listener<K, V>>,
    pub(super) estimated_entries: Option<usize>,
    pub(super) index_buckets: Option<usize>,
    pub(super) collector: Option<Collector>,
    pub(super) count_lookups: bool,
    pub(super) time_to_live: Option<Duration>,
    pub(super) time_to_idle: Option<Duration>,
    pub(super) clock: Option<Box<dyn Clock>>,
}

impl<K, V, S> CacheBuilder<K, V, S> {
    /// Weighs entries with `weigher` (for example in bytes); the capacity is then in the same
    /// units. Without one, every entry weighs 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::builder(10).weigher(|_: &&str, v: &String| v.len() as u64).build();
    /// cache.insert("a", "12345".to_string());
    /// assert_eq!(cache.weight(), 5);
    /// ```
    #[must_use]
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u64 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(weigher));
        self
    }

    /// Calls `listener` with the key, value and cause of every entry that leaves the cache
    /// (evicted, replaced, removed), or is refused by [`Cache::insert`] or
    /// [`Cache::get_or_insert_with`] (refusals by [`Cache::try_insert`] and
    /// [`Cache::compare_exchange`] hand the value back instead). It runs on the thread that
    /// caused the removal,
    /// after the cache's own bookkeeping; keep it short.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Cache, RemovalCause};
    /// use std::sync::Mutex;
    ///
    /// let log = std::sync::Arc::new(Mutex::new(Vec::new()));
    /// let sink = log.clone();
    /// let cache = Cache::builder(10)
    ///     .eviction_listener(move |k: &i32, _v: &i32, cause| sink.lock().unwrap().push((*k, cause)))
    ///     .build();
    /// cache.insert(1, 10);
    /// cache.insert(1, 11);
    /// cache.remove(&1);
    /// assert_eq!(*log.lock().unwrap(), [(1, RemovalCause::Replaced), (1, RemovalCause::Removed)]);
    /// ```
    #[must_use]
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(&K, &V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// Hashes keys with `hasher` instead of a [`DefaultHashBuilder`]: a fixed hasher for
    /// reproducible eviction, or std's SipHash `RandomState` against hash flooding (see
    /// [`DefaultHashBuilder`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    /// use std::hash::BuildHasherDefault;
    /// use std::collections::hash_map::DefaultHasher;
    ///
    /// let cache = Cache::builder(10)
    ///     .hasher(BuildHasherDefault::<DefaultHasher>::default())
    ///     .build();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.get(&1), Some(1));
    /// ```
    #[must_use]
    pub fn hasher<S2>(self, hasher: S2) -> CacheBuilder<K, V, S2> {
        CacheBuilder {
            capacity: self.capacity,
            hasher,
            weigher: self.weigher,
            listener: self.listener,
            estimated_entries: self.estimated_entries,
            index_buckets: self.index_buckets,
            collector: self.collector,
            count_lookups: self.count_lookups,
            time_to_live: self.time_to_live,
            time_to_idle: self.time_to_idle,
            clock: self.clock,
        }
    }

    /// Sizes the index for about `n` entries (four buckets per entry, rounded up to a power of
    /// two). Without it the index is sized from the capacity (for at most 65,536 entries when a
    /// weigher is set, since the capacity is then not a count).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::<u64, Vec<u8>>::builder(1 << 30)
    ///     .weigher(|_, v| v.len() as u64)
    ///     .estimated_entries(4096)
    ///     .build();
    /// assert_eq!(cache.capacity(), 1 << 30);
    /// ```
    #[must_use]
    pub fn estimated_entries(mut self, n: usize) -> Self {
        self.estimated_entries = Some(n);
        self
    }

    /// Gives the index exactly `n` buckets (rounded up to a power of two, at least 1, at most
    /// 2^26), overriding [`estimated_entries`](Self::estimated_entries): each costs 8 bytes, and
    /// keys that share a bucket cost their readers and writers more. One bucket is valid (every
    /// key in one array), which tests use to make every write contend.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache = Cache::builder(100).index_buckets(1).build();
    /// for i in 0..10 {
    ///     cache.insert(i, i);
    /// }
    /// assert_eq!(cache.len(), 10);
    /// assert!(format!("{cache:?}").contains("buckets: 1"));
    /// ```
    #[must_use]
    pub fn index_buckets(mut self, n: usize) -> Self {
        self.index_buckets = Some(n);
        self
    }

    /// Counts hits and misses in [`Cache::stats`] (`true`), or not (`false`, the default).
    ///
    /// Off, a hit writes nothing that other threads read or write: the entry's access counter
    /// is stored only when it changes, and nothing else. On, every lookup also increments a
    /// striped counter (one read-modify-write, on a stripe chosen per thread), and the counts
    /// are exact once the threads that used the cache are synchronised with the reader. The
    /// other counts (inserts, evictions, refusals) are always kept: they fall on paths that write
    /// shared state anyway.
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
    /// assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
    ///
    /// let quiet = Cache::new(10);
    /// quiet.insert(1, "one");
    /// quiet.get(&1);
    /// assert_eq!((quiet.stats().hits, quiet.stats().inserts), (0, 1));
    /// ```
    #[must_use]
    pub fn count_lookups(mut self, on: bool) -> Self {
        self.count_lookups = on;
        self
    }

    /// Reclaims memory with `collector` instead of crossbeam-epoch's global collector, which
    /// makes reclamation exactly accountable (tests, loom models). Plain methods then register a
    /// handle with it on every call: pin one per thread and use the `*_with_guard` methods.
    ///
    /// # Examples
    ///
    /// ```
    /// use crossbeam_epoch::Collector;
    /// use latchless::cache::Cache;
    ///
    /// let collector = Collector::new();
    /// let cache = Cache::builder(4).collector(collector.clone()).build();
    /// let handle = collector.register();
    /// let guard = handle.pin();
    /// cache.insert_with_guard(1, 'a', &guard);
    /// assert_eq!(cache.get_with_guard(&1, &guard), Some('a'));
    /// ```
    #[must_use]
    pub fn collector(mut self, collector: Collector) -> Self {
        self.collector = Some(collector);
        self
    }

    /// Expires every entry `ttl` after it was stored (by any insert, or a replacement), unless
    /// [`Cache::insert_with_ttl`] gives it its own. An expired entry is never returned: lookups
    /// treat it as absent and remove it, the eviction sweep removes it, and
    /// [`Cache::purge_expired`] removes all of them; the listener hears each as
    /// [`RemovalCause::Expired`]. Time is read from the [`clock`](Self::clock).
    ///
    /// A zero `ttl` is valid and means what it says: entries expire as soon as they are stored
    /// (they are counted and admitted, then never returned). A `ttl` too long to add to the
    /// clock's time means never. Without a time-to-live here or per entry, or a time-to-idle,
    /// the cache never reads its clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cache = Cache::builder(10)
    ///     .time_to_live(Duration::from_secs(5))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert(1, "a");
    /// clock.advance(Duration::from_secs(5));
    /// assert_eq!(cache.get(&1), None);
    /// ```
    #[must_use]
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// Expires every entry that goes `tti` without an access: a [`Cache::get`] (or a hit of
    /// [`Cache::get_or_insert_with`]) that finds it, or its insertion (a replacement is a new
    /// entry, and starts afresh). [`Cache::peek`], [`Cache::contains_key`] and iteration are not
    /// accesses. An entry that has gone idle is never returned, and leaves the cache as one past
    /// its [`time_to_live`](Self::time_to_live) does, as [`RemovalCause::Expired`]. With both
    /// set, an entry expires at whichever comes first.
    ///
    /// Precision: an entry expires once its time-to-idle has passed since its latest access,
    /// never before, and at most a sixteenth of `tti` after. That slack is what keeps a hit from
    /// writing shared memory: an entry records which sixteenth of `tti` its latest access fell
    /// in, so a `get` stores to an entry at most once per sixteenth (and otherwise only reads
    /// it, as in a cache without a time-to-idle), at the price of one clock read per hit. An
    /// access counts for every check that happens after it; a `get` racing an expiry check on
    /// another thread may be seen by it or not, as if it had come just after the check.
    ///
    /// A zero `tti` is valid: entries expire as soon as they are stored. A `tti` too long to add
    /// to the clock's time means never.
    ///
    /// [`Cache::get`]: super::Cache::get
    /// [`Cache::get_or_insert_with`]: super::Cache::get_or_insert_with
    /// [`Cache::peek`]: super::Cache::peek
    /// [`Cache::contains_key`]: super::Cache::contains_key
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cache = Cache::builder(10)
    ///     .time_to_idle(Duration::from_secs(16))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert("kept", 1);
    /// cache.insert("idle", 2);
    /// for _ in 0..4 {
    ///     clock.advance(Duration::from_secs(10));
    ///     assert_eq!(cache.get("kept"), Some(1)); // read every 10 s: never idle for 16 s
    /// }
    /// assert_eq!(cache.get("idle"), None); // not read for 40 s
    /// ```
    #[must_use]
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.time_to_idle = Some(tti);
        self
    }

    /// Reads time for expiry from `clock` instead of the [`SystemClock`]: a [`ManualClock`]
    /// makes tests of expiry independent of real time, and a [`CoarseClock`] makes a hit on an
    /// entry that can expire about 1.7 times as fast (one thread) where a kernel tick's
    /// precision (a few milliseconds) is enough.
    ///
    /// [`ManualClock`]: super::ManualClock
    /// [`CoarseClock`]: super::CoarseClock
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cache = Cache::builder(10).clock(clock.clone()).build();
    /// cache.insert_with_ttl(1, 'a', Duration::from_millis(10));
    /// cache.insert(2, 'b'); // no time-to-live: never expires
    /// clock.advance(Duration::from_secs(3600));
    /// assert_eq!((cache.get(&1), cache.get(&2)), (None, Some('b')));
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Box::new(clock));
        self
    }

    /// Builds the cache.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::Cache;
    ///
    /// let cache: Cache<u32, u32> = Cache::builder(100).build();
    /// assert_eq!(cache.capacity(), 100);
    /// ```
    #[must_use]
    pub fn build(self) -> Cache<K, V, S> {
        let entries = self.estimated_entries.unwrap_or_else(|| {
            let cap = usize::try_from(self.capacity).unwrap_or(usize::MAX);
            if self.weigher.is_some() {
                cap.min(1 << 16)
            } else {
                cap
            }
        });
        let entries = entries.clamp(1, 1 << 26);
        let reclaim = Reclaim::new(self.collector);
        Cache {
            index: Index::new(
                self.index_buckets
                    .unwrap_or_else(|| entries.saturating_mul(BUCKETS_PER_ENTRY))
                    .clamp(1, 1 << 26),
            ),
            policy: Policy::new(self.capacity, entries, reclaim.collector()),
            hasher: self.hasher,
            capacity: self.capacity,
            weight: CachePadded::new(AtomicCounter::new(0)),
            len: self
                .weigher
                .is_some()
                .then(|| CachePadded::new(AtomicCounter::new(0))),
            weigher: self.weigher,
            listener: self.listener,
            stats: Stats::new(self.count_lookups),
            flights: Flights::new(if UNDER_MODEL_CHECKER { 1 } else { 64 }),
            reclaim,
            time_to_live: self
                .time_to_live
                .map(|ttl| u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)),
            idle: self
                .time_to_idle
                .map(|tti| Idle::new(u64::try_from(tti.as_nanos()).unwrap_or(u64::MAX))),
            expiring: AtomicBool::new(self.time_to_live.is_some() || self.time_to_idle.is_some()),
            clock: self.clock.unwrap_or_else(|| Box::new(SystemClock)),
        }
    }
}

impl<K, V, S> fmt::Debug for CacheBuilder<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("capacity", &self.capacity)
            .field("weigher", &self.weigher.is_some())
            .field("eviction_listener", &self.listener.is_some())
            .field("estimated_entries", &self.estimated_entries)
            .field("index_buckets", &self.index_buckets)
            .field("count_lookups", &self.count_lookups)
            .field("time_to_live", &self.time_to_live)
            .field("time_to_idle", &self.time_to_idle)
            .field("clock", &self.clock.is_some())
            .finish_non_exhaustive()
    }
}
