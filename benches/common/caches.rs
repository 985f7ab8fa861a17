//! The cache contenders of `benches/cache.rs` and `benches/cache_compare.rs`: latchless's
//! `Cache` (plain, through `*_with_guard` with a pinned guard, and with a time-to-live or a
//! time-to-idle on the system clock or the coarse one), `moka::sync::Cache` (plain, and with a
//! time-to-idle),
//! `quick_cache::sync::Cache` and `Mutex<lru::LruCache>`, each built with its library's default
//! settings, behind [`BenchCache`]; and the same contenders again with one hasher for all
//! (latchless's `DefaultHashBuilder`).

use super::PinnedLocal;
use latchless::cache::{Cache, DefaultHashBuilder};
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// A cache under test, seen through per-thread state so that a contender that profits from
/// per-thread setup (a pinned epoch guard) can use it.
pub(crate) trait BenchCache: Sync {
    /// Per-thread state, made on the worker thread.
    type Local;
    /// A cache of `capacity` entries with the library's default settings.
    fn make(capacity: u64) -> Self;
    fn local(&self) -> Self::Local;
    fn get(&self, local: &mut Self::Local, key: u64) -> Option<u64>;
    fn insert(&self, local: &mut Self::Local, key: u64, value: u64);
    /// Brings the cache to a steady state after the prefill (moka: apply pending evictions).
    fn settle(&self) {}
}

impl BenchCache for Cache<u64, u64> {
    type Local = ();
    fn make(capacity: u64) -> Self {
        Cache::new(capacity)
    }
    fn local(&self) {}
    fn get(&self, (): &mut (), key: u64) -> Option<u64> {
        Cache::get(self, &key)
    }
    fn insert(&self, (): &mut (), key: u64, value: u64) {
        Cache::insert(self, key, value);
    }
}

/// latchless's `Cache` driven through `get_with_guard`/`insert_with_guard`, each worker holding
/// one guard and repinning it every [`REPIN_EVERY`](super::REPIN_EVERY) operations.
pub(crate) struct LatchlessPinned(Cache<u64, u64>);

impl BenchCache for LatchlessPinned {
    type Local = PinnedLocal;
    fn make(capacity: u64) -> Self {
        Self(Cache::new(capacity))
    }
    fn local(&self) -> PinnedLocal {
        PinnedLocal::pin()
    }
    fn get(&self, local: &mut PinnedLocal, key: u64) -> Option<u64> {
        self.0.get_with_guard(&key, local.tick())
    }
    fn insert(&self, local: &mut PinnedLocal, key: u64, value: u64) {
        self.0.insert_with_guard(key, value, local.tick());
    }
}

/// Declares a contender: latchless's `Cache` built by `$build` from `Cache::builder(capacity)`
/// (bound to `$b`), driven as the plain one is.
macro_rules! latchless_built {
    ($(#[$doc:meta])* $name:ident, |$b:ident| $build:expr) => {
        $(#[$doc])*
        pub(crate) struct $name(Cache<u64, u64>);

        impl BenchCache for $name {
            type Local = ();
            fn make(capacity: u64) -> Self {
                let $b = Cache::builder(capacity);
                Self($build.build())
            }
            fn local(&self) {}
            fn get(&self, (): &mut (), key: u64) -> Option<u64> {
                self.0.get(&key)
            }
            fn insert(&self, (): &mut (), key: u64, value: u64) {
                self.0.insert(key, value);
            }
        }
    };
}

latchless_built!(
    /// latchless's `Cache` with hits and misses counted (`count_lookups(true)`): what the
    /// statistics cost a hit, next to the default, which does not count them.
    LatchlessCounted,
    |b| b.count_lookups(true)
);

/// How long the expiring contenders' entries live or may idle: longer than any run, so that
/// they measure what expiry costs a cache in which nothing expires.
const EXPIRY: std::time::Duration = std::time::Duration::from_secs(3600);

latchless_built!(
    /// latchless's `Cache` with a time-to-live (of an hour, on the system clock): what a
    /// deadline costs a hit (a clock read) and an insert (a clock read for the deadline).
    LatchlessLive,
    |b| b.time_to_live(EXPIRY)
);

latchless_built!(
    /// latchless's `Cache` with a time-to-idle (of an hour, on the system clock): a clock read
    /// per hit, and a store to the entry when its access tick (225 s here) moves on.
    LatchlessIdle,
    |b| b.time_to_idle(EXPIRY)
);

latchless_built!(
    /// [`LatchlessLive`] on the coarse clock (`CoarseClock`): what the clock read costs.
    LatchlessLiveCoarse,
    |b| b.time_to_live(EXPIRY).clock(latchless::cache::CoarseClock)
);

latchless_built!(
    /// [`LatchlessIdle`] on the coarse clock (`CoarseClock`).
    LatchlessIdleCoarse,
    |b| b.time_to_idle(EXPIRY).clock(latchless::cache::CoarseClock)
);

/// moka's cache with the same time-to-idle, its expiry's cost to compare with latchless's.
pub(crate) struct MokaIdle(moka::sync::Cache<u64, u64>);

impl BenchCache for MokaIdle {
    type Local = ();
    fn make(capacity: u64) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(EXPIRY)
                .build(),
        )
    }
    fn local(&self) {}
    fn get(&self, (): &mut (), key: u64) -> Option<u64> {
        self.0.get(&key)
    }
    fn insert(&self, (): &mut (), key: u64, value: u64) {
        self.0.insert(key, value);
    }
    fn settle(&self) {
        self.0.run_pending_tasks();
    }
}

impl BenchCache for moka::sync::Cache<u64, u64> {
    type Local = ();
    fn make(capacity: u64) -> Self {
        moka::sync::Cache::new(capacity)
    }
    fn local(&self) {}
    fn get(&self, (): &mut (), key: u64) -> Option<u64> {
        moka::sync::Cache::get(self, &key)
    }
    fn insert(&self, (): &mut (), key: u64, value: u64) {
        moka::sync::Cache::insert(self, key, value);
    }
    fn settle(&self) {
        self.run_pending_tasks();
    }
}

impl BenchCache for quick_cache::sync::Cache<u64, u64> {
    type Local = ();
    fn make(capacity: u64) -> Self {
        quick_cache::sync::Cache::new(usize::try_from(capacity).expect("capacity fits usize"))
    }
    fn local(&self) {}
    fn get(&self, (): &mut (), key: u64) -> Option<u64> {
        quick_cache::sync::Cache::get(self, &key)
    }
    fn insert(&self, (): &mut (), key: u64, value: u64) {
        quick_cache::sync::Cache::insert(self, key, value);
    }
}

impl BenchCache for Mutex<lru::LruCache<u64, u64>> {
    type Local = ();
    fn make(capacity: u64) -> Self {
        let cap = NonZeroUsize::new(usize::try_from(capacity).expect("capacity fits usize"))
            .expect("a positive capacity");
        Mutex::new(lru::LruCache::new(cap))
    }
    fn local(&self) {}
    fn get(&self, (): &mut (), key: u64) -> Option<u64> {
        self.lock().unwrap().get(&key).copied()
    }
    fn insert(&self, (): &mut (), key: u64, value: u64) {
        self.lock().unwrap().put(key, value);
    }
}

// ----------------------------------------------------------------------------------------------
// One hasher for all: the same contenders, each built with latchless's `DefaultHashBuilder`
// (foldhash, randomly seeded), so that the hasher is not what separates them.

/// quick_cache with latchless's hasher (its own default is foldhash too, seeded its own way).
pub(crate) struct QuickOneHasher(
    quick_cache::sync::Cache<u64, u64, quick_cache::UnitWeighter, DefaultHashBuilder>,
);

impl BenchCache for QuickOneHasher {
    type Local = ();
    fn make(capacity: u64) -> Self {
        let n = usize::try_from(capacity).expect("capacity fits usize");
        Self(quick_cache::sync::Cache::with(
            n,
            capacity,
            quick_cache::UnitWeighter,
            DefaultHashBuilder::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        ))
    }
    fn local(&self) {}
    fn get(&self, (): &mut (), key: u64) -> Option<u64> {
        self.0.get(&key)
    }
    fn insert(&self, (): &mut (), key: u64, value: u64) {
        self.0.insert(key, value);
    }
}

/// moka with latchless's hasher (its own default is std's SipHash).
pub(crate) struct MokaOneHasher(moka::sync::Cache<u64, u64, DefaultHashBuilder>);

impl BenchCache for MokaOneHasher {
    type Local = ();
    fn make(capacity: u64) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(DefaultHashBuilder::default()),
        )
    }
    fn local(&self) {}
    fn get(&self, (): &mut (), key: u64) -> Option<u64> {
        self.0.get(&key)
    }
    fn insert(&self, (): &mut (), key: u64, value: u64) {
        self.0.insert(key, value);
    }
    fn settle(&self) {
        self.0.run_pending_tasks();
    }
}

/// `Mutex<lru::LruCache>` with latchless's hasher.
pub(crate) struct LruOneHasher(Mutex<lru::LruCache<u64, u64, DefaultHashBuilder>>);

impl BenchCache for LruOneHasher {
    type Local = ();
    fn make(capacity: u64) -> Self {
        let cap = NonZeroUsize::new(usize::try_from(capacity).expect("capacity fits usize"))
            .expect("a positive capacity");
        Self(Mutex::new(lru::LruCache::with_hasher(
            cap,
            DefaultHashBuilder::default(),
        )))
    }
    fn local(&self) {}
    fn get(&self, (): &mut (), key: u64) -> Option<u64> {
        self.0.lock().unwrap().get(&key).copied()
    }
    fn insert(&self, (): &mut (), key: u64, value: u64) {
        self.0.lock().unwrap().put(key, value);
    }
}
