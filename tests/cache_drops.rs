//! Value drops: every value that enters a `Cache` is dropped exactly once, whether it is evicted,
//! removed, replaced (by `insert` or `compare_exchange`), cleared, refused, handed back by a
//! failed `compare_exchange` or `try_insert`, or still in the cache when the cache drops; also
//! when several threads insert, remove, exchange and evict at once.
//!
//! The cache hands out clones (`V: Clone`), so the payload counts instances: see
//! `tests/common/drop_log.rs` for the `Tracked` payload and its `DropLog`.
//!
//! Caches are built on a local epoch `Collector` that is dropped (with every handle and guard)
//! before the final check, so any entry the epoch still held has been freed by then. One test
//! uses crossbeam-epoch's global collector and flushes it until every value has gone.

use crossbeam_epoch::Collector;
use latchless::cache::{Cache, CompareExchangeFailure};
use std::thread;

#[path = "common/drop_log.rs"]
mod drop_log;

use drop_log::{DropLog, Tracked};

const N: usize = if cfg!(miri) { 64 } else { 10_000 };

#[test]
fn the_log_detects_leaks_and_double_drops() {
    let log = DropLog::new(3);
    drop(Tracked::new(0, log));
    let kept = Tracked::new(1, log);
    let clone = kept.clone();
    drop(kept);
    // Id 1 has a clone alive, id 2 was never created.
    assert_eq!(log.not_dropped_once(), [(1, 2, 1), (2, 0, 0)]);
    std::mem::forget(clone);
    drop(Tracked::new(2, log));
    assert_eq!(log.not_dropped_once(), [(1, 2, 1)], "a leak stays visible");
    assert!(!log.double_dropped());
    // A double drop, simulated: as if a bitwise copy of `v` had been dropped already.
    let v = Tracked::new(0, log);
    log.count_drop(0);
    drop(v);
    assert!(log.double_dropped(), "the double drop is flagged");
}

/// A cache of `capacity` entries on a collector of its own, returned so the test drops it last.
fn local_cache(capacity: u64) -> (Cache<usize, Tracked>, Collector) {
    let collector = Collector::new();
    let cache = Cache::builder(capacity)
        .collector(collector.clone())
        .build();
    (cache, collector)
}

#[test]
fn evicted_values_and_those_left_at_drop_are_dropped_once() {
    const CAPACITY: usize = 10;
    let log = DropLog::new(N);
    let (cache, collector) = local_cache(CAPACITY as u64);
    let handle = collector.register();
    for id in 0..N {
        let guard = handle.pin();
        assert!(cache
            .insert_with_guard(id, Tracked::new(id, log), &guard)
            .is_none());
        // Read some entries, so that the policy also promotes and re-queues.
        if id % 3 == 0 {
            drop(cache.get_with_guard(&(id / 2), &guard));
        }
    }
    assert_eq!(cache.len(), CAPACITY);
    assert_eq!(cache.stats().evictions, (N - CAPACITY) as u64);
    log.assert_no_double_drop();

    let present: Vec<usize> = (0..N).filter(|id| cache.contains_key(id)).collect();
    assert_eq!(present.len(), CAPACITY);
    for &id in &present {
        assert_eq!(log.alive(id), 1, "the cache holds one instance of {id}");
    }
    drop(cache);
    // The cache drops what it held itself, without waiting for the epoch.
    for &id in &present {
        assert_eq!(
            log.alive(id),
            0,
            "value {id} left in the cache was not dropped"
        );
    }
    drop(handle);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn values_left_in_a_cache_are_dropped_with_it() {
    let log = DropLog::new(N);
    let (cache, collector) = local_cache(N as u64);
    for id in 0..N {
        cache.insert(id, Tracked::new(id, log));
    }
    assert_eq!(cache.len(), N);
    assert_eq!(
        log.alive_total(),
        N as i64,
        "one instance each, in the cache"
    );
    drop(cache);
    // No entry ever left the index, so none waits in the epoch: all are dropped already.
    assert_eq!(log.alive_total(), 0);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn removed_values_are_dropped_once() {
    let log = DropLog::new(N);
    let (cache, collector) = local_cache(N as u64);
    for id in 0..N {
        cache.insert(id, Tracked::new(id, log));
    }
    for id in (0..N).step_by(2) {
        let v = cache.remove(&id).expect("present");
        assert_eq!(v.id, id);
        assert!(cache.remove(&id).is_none());
    }
    assert_eq!(cache.len(), N / 2);
    log.assert_no_double_drop();
    drop(cache);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn replaced_values_are_dropped_once() {
    let log = DropLog::new(N);
    let (cache, collector) = local_cache(8);
    // Keys 0..4, each replaced over and over.
    for id in 0..N {
        let old = cache.insert(id % 4, Tracked::new(id, log));
        assert_eq!(old.map(|v| v.id), id.checked_sub(4), "insert of {id}");
    }
    assert_eq!(cache.len(), 4);
    assert_eq!(cache.stats().evictions, 0);
    log.assert_no_double_drop();
    drop(cache);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn exchanged_and_handed_back_values_are_dropped_once() {
    let log = DropLog::new(2 * N);
    let (cache, collector) = local_cache(8);
    let handle = collector.register();
    cache.insert(0, Tracked::new(0, log));
    for id in 1..N {
        let guard = handle.pin();
        // A failed exchange (wrong expected value) hands `new` back, a good one stores it.
        let wrong = Tracked::new(N + id, log);
        let err = cache
            .compare_exchange_with_guard(&0, &wrong, Tracked::new(id, log), &guard)
            .unwrap_err();
        assert_eq!(err.failure, CompareExchangeFailure::Mismatch);
        assert_eq!(err.current.as_ref().map(|v| v.id), Some(id - 1));
        let new = err.new;
        assert_eq!(new.id, id);
        let cur = cache.get_with_guard(&0, &guard).expect("present");
        assert!(cache
            .compare_exchange_with_guard(&0, &cur, new, &guard)
            .is_ok());
        // An absent key.
        let err = cache
            .compare_exchange_with_guard(&1, &cur, Tracked::new(id, log), &guard)
            .unwrap_err();
        assert!(err.current.is_none());
    }
    assert_eq!(cache.get(&0).map(|v| v.id), Some(N - 1));
    log.assert_no_double_drop();
    drop(handle);
    drop(cache);
    drop(collector);
    // Ids 0..N were stored or offered, N + 1.. were the wrong expectations; N itself was never
    // created: create and drop it, so the final check can require every id.
    drop(Tracked::new(N, log));
    log.assert_all_dropped_once();
}

#[test]
fn refused_values_are_dropped_once() {
    const CAPACITY: u64 = 10;
    let log = DropLog::new(N);
    let collector = Collector::new();
    // Every seventh id weighs more than the whole capacity.
    let weight = |v: &Tracked| {
        if v.id.is_multiple_of(7) {
            CAPACITY + 1
        } else {
            1
        }
    };
    let cache = Cache::builder(CAPACITY)
        .weigher(move |_: &usize, v: &Tracked| weight(v))
        .collector(collector.clone())
        .build();
    for id in 0..N {
        let v = Tracked::new(id, log);
        let heavy = weight(&v) > CAPACITY;
        match id % 4 {
            0 => {
                cache.insert(id, v);
            }
            1 => match cache.try_insert(id, v) {
                Ok(_) => assert!(!heavy),
                Err((k, v)) => {
                    assert!(heavy);
                    assert_eq!((k, v.id), (id, id));
                }
            },
            2 => {
                let got = cache.get_or_insert_with(id, || v);
                assert_eq!(got.id, id, "computed and returned even when refused");
            }
            _ => {
                // An exchange from whatever key 1 holds.
                let cur = cache.peek(&1).unwrap_or_else(|| Tracked::new(1, log));
                match cache.compare_exchange(&1, &cur, v) {
                    Ok(()) => assert!(!heavy),
                    Err(e) => {
                        assert_eq!(e.new.id, id, "handed back");
                        if heavy {
                            assert_eq!(e.failure, CompareExchangeFailure::Refused);
                        }
                    }
                }
            }
        }
        assert!(cache.weight() <= CAPACITY);
    }
    assert!(cache.stats().refused > 0);
    log.assert_no_double_drop();
    drop(cache);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn cleared_values_are_dropped_once() {
    let log = DropLog::new(N);
    let (cache, collector) = local_cache(N as u64);
    for id in 0..N / 2 {
        cache.insert(id, Tracked::new(id, log));
    }
    cache.clear();
    assert!(cache.is_empty());
    assert_eq!(cache.get(&0), None);
    // The cleared cache takes new values, which it drops with itself.
    for id in N / 2..N {
        cache.insert(id, Tracked::new(id, log));
    }
    cache.clear();
    for id in N / 2..N {
        assert!(cache.peek(&id).is_none());
    }
    log.assert_no_double_drop();
    drop(cache);
    drop(collector);
    log.assert_all_dropped_once();
}

/// A listener that panics (once per call it is asked to, here on every removal) leaks nothing:
/// the entries a `clear`, a replacing `insert` or a `remove` unlinked are retired before the
/// listener hears of them, so a panic there cannot strand them outside both the index and the
/// epoch.
#[test]
fn a_panicking_listener_leaks_nothing() {
    let log = DropLog::new(N);
    let collector = Collector::new();
    let cache: Cache<usize, Tracked> = Cache::builder(N as u64)
        .collector(collector.clone())
        .eviction_listener(|_: &usize, _: &Tracked, _| panic!("listener panics"))
        .build();
    let quiet = |f: &mut dyn FnMut()| {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        assert!(caught.is_err(), "the listener was called and panicked");
    };
    for id in 0..N / 2 {
        cache.insert(id, Tracked::new(id, log));
    }
    // A replacement: the old value leaves through the panicking listener.
    quiet(&mut || drop(cache.insert(0, Tracked::new(N / 2, log))));
    quiet(&mut || drop(cache.remove(&1)));
    // `clear` hears the first of many and panics there: the rest must not leak.
    quiet(&mut || cache.clear());
    assert!(cache.is_empty());
    for id in N / 2 + 1..N {
        cache.insert(id, Tracked::new(id, log));
    }
    log.assert_no_double_drop();
    drop(cache);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn get_or_insert_with_values_are_dropped_once() {
    let log = DropLog::new(N);
    let (cache, collector) = local_cache(16);
    for id in 0..N {
        // Keys repeat, so most calls hit and their `init` (and its value) is never used.
        let key = id % 32;
        let v = cache.get_or_insert_with(key, || Tracked::new(id, log));
        assert!(v.id % 32 == key);
    }
    // The ids whose `init` never ran were never created: create and drop them now, so the final
    // check can require every id.
    for id in 0..N {
        if log.created(id) == 0 {
            drop(Tracked::new(id, log));
        }
    }
    drop(cache);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn concurrent_writers_then_drop() {
    const THREADS: usize = 4;
    const KEYS: usize = 200;
    // Under Miri, `N` writes would not fill 64 entries: a smaller cache still evicts.
    const CAPACITY: u64 = if cfg!(miri) { 8 } else { 64 };
    let per_thread = N / THREADS;
    let log = DropLog::new(per_thread * THREADS);
    let (cache, collector) = local_cache(CAPACITY);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (cache, collector) = (&cache, &collector);
            s.spawn(move || {
                let handle = collector.register();
                let mut guard = handle.pin();
                for i in 0..per_thread {
                    let id = t * per_thread + i;
                    let key = (id * 7919) % KEYS;
                    if i % 32 == 0 {
                        guard.repin();
                    }
                    let v = Tracked::new(id, log);
                    match i % 6 {
                        0 | 1 => drop(cache.insert_with_guard(key, v, &guard)),
                        2 => drop(cache.insert(key, v)),
                        3 => {
                            drop(cache.remove_with_guard(&key, &guard));
                            drop(v);
                        }
                        4 => {
                            if let Some(cur) = cache.get_with_guard(&key, &guard) {
                                drop(cache.compare_exchange_with_guard(&key, &cur, v, &guard));
                            }
                        }
                        _ => drop(cache.get_or_insert_with(key, || v)),
                    }
                }
            });
        }
    });
    assert!(cache.len() as u64 <= CAPACITY);
    assert!(cache.stats().evictions > 0);
    log.assert_no_double_drop();
    drop(cache);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn global_collector_cache_drops_values_once() {
    // `Cache::new`: entries that leave the cache go to the global collector, which frees them at
    // some later time. Flush until every value has gone; a double drop shows as it happens.
    let log = DropLog::new(N);
    let cache = Cache::new(100);
    for id in 0..N {
        cache.insert(id % 500, Tracked::new(id, log));
        if id % 5 == 0 {
            drop(cache.remove(&(id % 500 / 2)));
        }
    }
    drop(cache);
    let mut flushes = 0;
    while log.alive_total() > 0 && flushes < 10_000 {
        crossbeam_epoch::pin().flush();
        flushes += 1;
    }
    println!("global collector: all values dropped after {flushes} flushes");
    log.assert_all_dropped_once();
}
