//! The concurrent accounting run of the expiry suites (`tests/cache_expiry.rs`,
//! `tests/cache_idle.rs`): three threads insert, read, remove, peek, purge and advance a
//! `ManualClock` over 64 keys in a cache of 32 with an expiry; then everything expires, and every
//! stored value must have left exactly once, with causes that agree with the statistics and the
//! removes that returned a value, and be dropped exactly once. Included by each suite with
//! `#[path = "common/expiry_run.rs"] mod expiry_run;`, beside `drop_log` and `rng`.

use crate::drop_log::{DropLog, Tracked};
use crate::rng::Rng;
use crossbeam_epoch::Collector;
use latchless::cache::{Cache, CacheBuilder, ManualClock, RemovalCause};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

/// The run: `expiry` sets the cache's expiry on its builder; with `ttl_inserts`, one operation in
/// ten is an `insert_with_ttl` of 0 to 19 s (else a `get`); thread `t` draws from `seed + t`.
pub(crate) fn concurrent_accounting(
    expiry: impl FnOnce(CacheBuilder<u64, Tracked>) -> CacheBuilder<u64, Tracked>,
    ttl_inserts: bool,
    seed: u64,
) {
    const THREADS: usize = 3;
    const OPS: usize = if cfg!(miri) { 200 } else { 20_000 };
    const KEYS: u64 = 64;
    let log = DropLog::new(THREADS * OPS);
    let collector = Collector::new();
    let clock = ManualClock::new();
    // Each value's id, and every cause it left with.
    let left: Arc<Mutex<Vec<(usize, RemovalCause)>>> = Arc::default();
    let sink = left.clone();
    let builder = Cache::builder(32)
        .collector(collector.clone())
        .clock(clock.clone())
        .eviction_listener(move |_: &u64, v: &Tracked, cause| {
            sink.lock().unwrap().push((v.id, cause))
        });
    let cache = expiry(builder).build();
    let removed = AtomicUsize::new(0);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (cache, clock, removed, collector) = (&cache, &clock, &removed, &collector);
            s.spawn(move || {
                let handle = collector.register();
                let mut rng = Rng::new(t as u64 + seed);
                for i in 0..OPS {
                    let guard = handle.pin();
                    // One value per operation: inserted, or dropped unused.
                    let value = Tracked::new(t * OPS + i, log);
                    let key = rng.below(KEYS);
                    match rng.below(10) {
                        0..=2 => drop(cache.insert_with_guard(key, value, &guard)),
                        3 if ttl_inserts => drop(cache.insert_with_ttl_with_guard(
                            key,
                            value,
                            SEC * rng.below(20) as u32,
                            &guard,
                        )),
                        3..=6 => {
                            if let Some(v) = cache.get_with_guard(&key, &guard) {
                                assert!(v.id < THREADS * OPS);
                            }
                        }
                        7 => {
                            if cache.remove_with_guard(&key, &guard).is_some() {
                                removed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        8 => clock.advance(SEC),
                        _ if i % 100 == 0 => cache.purge_expired(),
                        _ => drop(cache.peek_with_guard(&key, &guard)),
                    }
                }
            });
        }
    });
    assert!(cache.weight() <= cache.capacity());
    // Everything expires; a purge then leaves nothing, exactly.
    clock.advance(20 * SEC);
    cache.purge_expired();
    assert_eq!((cache.len(), cache.weight()), (0, 0), "{cache:?}");
    // Every stored value left exactly once, with one cause.
    let left = left.lock().unwrap();
    let stats = cache.stats();
    assert_eq!(
        left.len() as u64,
        stats.inserts,
        "one cause per stored value"
    );
    let mut seen = vec![false; THREADS * OPS];
    for &(id, _) in left.iter() {
        assert!(!seen[id], "value {id} left twice");
        seen[id] = true;
    }
    let by = |c| left.iter().filter(|&&(_, cause)| cause == c).count();
    assert_eq!(by(RemovalCause::Removed), removed.load(Ordering::Relaxed));
    assert_eq!(by(RemovalCause::Evicted) as u64, stats.evictions);
    assert!(by(RemovalCause::Expired) > 0 && by(RemovalCause::Replaced) > 0);
    drop(left);
    drop(cache);
    drop(collector);
    log.assert_all_dropped_once();
}
