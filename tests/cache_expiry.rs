//! Expiry: entries with a time-to-live (`CacheBuilder::time_to_live`, `Cache::insert_with_ttl`)
//! are never returned once expired, leave the cache exactly once (lazily on lookup, on insert over
//! their key, by eviction or by `purge_expired`) with the cause `Expired`, and are dropped exactly
//! once; a cache without a time-to-live never reads its clock.
//!
//! Time is a `ManualClock` the tests advance: no test sleeps or depends on real time.

use crossbeam_epoch::Collector;
use latchless::cache::{Cache, Clock, CompareExchangeFailure, ManualClock, RemovalCause};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "common/drop_log.rs"]
mod drop_log;
#[path = "common/expiry_run.rs"]
mod expiry_run;
#[path = "common/rng.rs"]
mod rng;

use drop_log::{DropLog, Tracked};
use rng::Rng;

const SEC: Duration = Duration::from_secs(1);

/// What the listener heard: (key, value, cause), in order.
type Heard = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

/// A cache of `capacity` with `ttl` (if any) on a fresh `ManualClock`, and its listener's log.
fn cache_with(capacity: u64, ttl: Option<Duration>) -> (Cache<u32, u32>, ManualClock, Heard) {
    let clock = ManualClock::new();
    let heard: Heard = Arc::default();
    let sink = heard.clone();
    let mut builder = Cache::builder(capacity)
        .clock(clock.clone())
        .eviction_listener(move |k: &u32, v: &u32, cause| {
            sink.lock().unwrap().push((*k, *v, cause))
        });
    if let Some(ttl) = ttl {
        builder = builder.time_to_live(ttl);
    }
    (builder.build(), clock, heard)
}

fn heard_with(heard: &Heard, cause: RemovalCause) -> Vec<u32> {
    let mut keys: Vec<u32> = heard
        .lock()
        .unwrap()
        .iter()
        .filter(|&&(_, _, c)| c == cause)
        .map(|&(k, _, _)| k)
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
fn an_expired_entry_is_not_returned_by_any_reader_and_is_removed_by_it() {
    let (cache, clock, heard) = cache_with(100, Some(10 * SEC));
    for k in 0..5 {
        cache.insert(k, k * 10);
    }
    // One nanosecond before the deadline: every reader still sees every entry.
    clock.advance(10 * SEC - Duration::from_nanos(1));
    assert_eq!(cache.get(&0), Some(0));
    assert_eq!(cache.peek(&1), Some(10));
    assert!(cache.contains_key(&2));
    assert_eq!(cache.iter().count(), 5);
    // At the deadline: expired.
    clock.advance(Duration::from_nanos(1));
    assert_eq!(cache.iter().count(), 0, "iter yields no expired entry");
    assert_eq!(
        cache.len(),
        5,
        "iter does not remove: lookups and purges do"
    );
    assert_eq!(cache.get(&0), None);
    assert_eq!(cache.len(), 4, "get removed its expired entry");
    assert_eq!(cache.peek(&1), None);
    assert!(!cache.contains_key(&2));
    assert_eq!(
        cache.remove(&3),
        None,
        "remove does not return an expired value"
    );
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.weight(), 1);
    assert_eq!(heard_with(&heard, RemovalCause::Expired), [0, 1, 2, 3]);
    assert!(heard_with(&heard, RemovalCause::Removed).is_empty());
}

#[test]
fn a_per_entry_ttl_overrides_the_builder_default_and_works_without_one() {
    let (cache, clock, _) = cache_with(100, Some(10 * SEC));
    cache.insert_with_ttl(1, 1, SEC);
    cache.insert_with_ttl(2, 2, 100 * SEC);
    cache.insert(3, 3); // the default, 10 s
    clock.advance(SEC);
    assert_eq!(
        (cache.get(&1), cache.get(&2), cache.get(&3)),
        (None, Some(2), Some(3))
    );
    clock.advance(9 * SEC);
    assert_eq!((cache.get(&2), cache.get(&3)), (Some(2), None));
    clock.advance(90 * SEC);
    assert_eq!(cache.get(&2), None);

    // No default: only entries given a TTL expire.
    let (cache, clock, _) = cache_with(100, None);
    cache.insert(1, 1);
    cache.insert_with_ttl(2, 2, SEC);
    clock.advance(1_000_000 * SEC);
    assert_eq!((cache.get(&1), cache.get(&2)), (Some(1), None));

    // A replacement takes the new entry's deadline: here none.
    let (cache, clock, _) = cache_with(100, None);
    cache.insert_with_ttl(1, 1, SEC);
    assert_eq!(cache.insert(1, 2), Some(1));
    clock.advance(2 * SEC);
    assert_eq!(cache.get(&1), Some(2));
}

#[test]
fn a_zero_ttl_stores_an_entry_that_is_never_returned() {
    let (cache, _clock, heard) = cache_with(100, Some(Duration::ZERO));
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), None);
    cache.insert(2, 2);
    cache.insert_with_ttl(3, 3, Duration::ZERO);
    cache.insert_with_ttl(4, 4, SEC); // overrides the zero default
    assert_eq!(
        (cache.peek(&2), cache.peek(&3), cache.peek(&4)),
        (None, None, Some(4))
    );
    assert_eq!(heard_with(&heard, RemovalCause::Expired), [1, 2, 3]);
    assert_eq!(cache.len(), 1);
}

#[test]
fn writes_over_an_expired_key_treat_it_as_absent() {
    let (cache, clock, heard) = cache_with(100, Some(SEC));
    for k in 0..5 {
        cache.insert(k, k);
    }
    clock.advance(SEC);
    assert_eq!(cache.insert(0, 100), None, "not the stale value");
    assert_eq!(cache.try_insert(1, 101), Ok(None));
    assert_eq!(
        cache.insert_if_absent(2, 102),
        Ok(()),
        "an expired key is absent"
    );
    let err = cache.compare_exchange(&3, &3, 103).unwrap_err();
    assert_eq!(
        (err.current, err.new, err.failure),
        (None, 103, CompareExchangeFailure::Mismatch)
    );
    assert_eq!(cache.get_or_insert_with(4, || 104), 104, "computed afresh");
    assert_eq!(heard_with(&heard, RemovalCause::Expired), [0, 1, 2, 3, 4]);
    assert!(heard_with(&heard, RemovalCause::Replaced).is_empty());
    for k in [0, 1, 2, 4] {
        assert_eq!(cache.get(&k), Some(100 + k));
    }
    assert_eq!(cache.len(), 4);
}

#[test]
fn the_listener_hears_each_expired_value_exactly_once() {
    const N: u32 = 200;
    let (cache, clock, heard) = cache_with(1000, None);
    for k in 0..N {
        cache.insert_with_ttl(k, k, SEC * (k % 4 + 1));
    }
    clock.advance(4 * SEC);
    // Every way of meeting an expired entry, several times over.
    for _ in 0..3 {
        for k in 0..N {
            match k % 5 {
                0 => assert_eq!(cache.get(&k), None),
                1 => assert_eq!(cache.peek(&k), None),
                2 => assert!(!cache.contains_key(&k)),
                3 => assert_eq!(cache.remove(&k), None),
                _ => {}
            }
        }
        cache.purge_expired();
        assert_eq!(cache.iter().count(), 0);
    }
    let mut count: HashMap<u32, usize> = HashMap::new();
    for &(k, v, cause) in heard.lock().unwrap().iter() {
        assert_eq!((k, cause), (v, RemovalCause::Expired));
        *count.entry(k).or_default() += 1;
    }
    assert_eq!(count.len(), N as usize);
    assert!(count.values().all(|&n| n == 1), "{count:?}");
    assert!(cache.is_empty());
}

#[test]
fn purge_expired_leaves_exact_len_and_weight() {
    let clock = ManualClock::new();
    let cache = Cache::builder(10_000)
        .weigher(|_: &u32, v: &Vec<u8>| v.len() as u64)
        // 300 entries, not the 10,000 the capacity would size the index for: each purge walks
        // every bucket, which took Miri over ten minutes at 65,536 buckets.
        .estimated_entries(300)
        .clock(clock.clone())
        .build();
    let mut live_weight = 0;
    for k in 0..300u32 {
        let v = vec![0u8; (k % 7 + 1) as usize];
        if k % 3 == 0 {
            cache.insert(k, v); // forever
            live_weight += u64::from(k % 7 + 1);
        } else {
            cache.insert_with_ttl(k, v, SEC * (k % 3));
        }
    }
    clock.advance(SEC);
    cache.purge_expired();
    // The 1-second entries are gone; the 2-second ones stay.
    let two_second: u64 = (0..300u32)
        .filter(|k| k % 3 == 2)
        .map(|k| u64::from(k % 7 + 1))
        .sum();
    assert_eq!(cache.len(), 200);
    assert_eq!(cache.weight(), live_weight + two_second);
    clock.advance(SEC);
    cache.purge_expired();
    assert_eq!(cache.len(), 100);
    assert_eq!(cache.weight(), live_weight);
    let mut keys: Vec<u32> = cache.iter().map(|(k, _)| k).collect();
    keys.sort_unstable();
    assert_eq!(keys, (0..300).step_by(3).collect::<Vec<_>>());
}

#[test]
fn retain_removes_expired_entries_as_expired_without_judging_them() {
    let (cache, clock, heard) = cache_with(100, None);
    cache.insert_with_ttl(1, 1, SEC);
    cache.insert(2, 2);
    cache.insert(3, 3);
    clock.advance(SEC);
    let mut judged = Vec::new();
    cache.retain(|&k, _| {
        judged.push(k);
        k != 3
    });
    judged.sort_unstable();
    assert_eq!(judged, [2, 3]);
    assert_eq!(heard_with(&heard, RemovalCause::Expired), [1]);
    assert_eq!(heard_with(&heard, RemovalCause::Removed), [3]);
    assert_eq!(cache.len(), 1);
}

#[test]
fn eviction_takes_an_expired_entry_even_if_it_was_read() {
    // Capacity 4: every entry starts in the small FIFO. All four are read, so without expiry
    // eviction would promote them all and evict the newcomer.
    let (cache, clock, heard) = cache_with(4, None);
    cache.insert(0, 0);
    cache.insert(1, 1);
    cache.insert_with_ttl(2, 2, SEC);
    cache.insert_with_ttl(3, 3, SEC);
    for k in 0..4 {
        assert_eq!(cache.get(&k), Some(k));
    }
    clock.advance(SEC);
    cache.insert(4, 4);
    // Eviction reached expired 2 (after promoting 0 and 1), without any lookup of it.
    assert_eq!(heard_with(&heard, RemovalCause::Expired), [2]);
    assert!(heard_with(&heard, RemovalCause::Evicted).is_empty());
    assert_eq!(
        cache.stats().evictions,
        0,
        "an expiry is not counted as an eviction"
    );
    assert_eq!(cache.len(), 4);
    assert_eq!(
        (cache.get(&0), cache.get(&1), cache.get(&4)),
        (Some(0), Some(1), Some(4))
    );
}

#[test]
fn expired_values_are_dropped_exactly_once() {
    const N: usize = if cfg!(miri) { 300 } else { 2_000 };
    let log = DropLog::new(N);
    let collector = Collector::new();
    let clock = ManualClock::new();
    let expired = Arc::new(AtomicUsize::new(0));
    let count = expired.clone();
    let cache = Cache::builder(64)
        .collector(collector.clone())
        .clock(clock.clone())
        .time_to_live(SEC)
        .eviction_listener(move |_: &usize, _: &Tracked, cause| {
            if cause == RemovalCause::Expired {
                count.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build();
    let handle = collector.register();
    let mut rng = Rng::new(7);
    for id in 0..N {
        let guard = handle.pin();
        let key = rng.below(100) as usize;
        // Expired entries leave by every path: lookups, inserts over them, eviction, purges.
        match rng.below(4) {
            0 => drop(cache.get_with_guard(&key, &guard)),
            1 => clock.advance(SEC / 2),
            2 if id % 50 == 0 => cache.purge_expired(),
            _ => {}
        }
        drop(cache.insert_with_guard(key, Tracked::new(id, log), &guard));
        log.assert_no_double_drop();
    }
    assert!(
        expired.load(Ordering::Relaxed) > N / 20,
        "expiry was exercised"
    );
    drop(handle);
    drop(cache);
    drop(collector);
    log.assert_all_dropped_once();
}

/// A clock that counts its reads.
#[derive(Clone, Default)]
struct CountingClock {
    reads: Arc<AtomicUsize>,
    time: ManualClock,
}

impl Clock for CountingClock {
    fn now(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.time.now()
    }
}

#[test]
fn a_cache_without_a_ttl_never_reads_its_clock() {
    let clock = CountingClock::default();
    let cache = Cache::builder(50).clock(clock.clone()).build();
    for k in 0..100u32 {
        cache.insert(k, k); // evicts half
    }
    for k in 0..1_000u32 {
        cache.get(&(k % 100));
        cache.peek(&(k % 100));
        cache.contains_key(&(k % 100));
    }
    cache.iter().count();
    cache.retain(|_, _| true);
    cache.purge_expired();
    assert_eq!(cache.insert_if_absent(1000, 0), Ok(()));
    for k in 0..100 {
        cache.remove(&k);
    }
    assert_eq!(clock.reads.load(Ordering::SeqCst), 0);

    // Once an entry has a TTL, lookups of it read the clock (so the count above can fail)...
    cache.insert_with_ttl(7, 7, SEC);
    let before = clock.reads.load(Ordering::SeqCst);
    for _ in 0..10 {
        cache.get(&7);
    }
    assert_eq!(clock.reads.load(Ordering::SeqCst), before + 10);
    // ...but lookups of entries without a deadline still do not.
    cache.insert(8, 8);
    let before = clock.reads.load(Ordering::SeqCst);
    for _ in 0..10 {
        cache.get(&8);
    }
    assert_eq!(clock.reads.load(Ordering::SeqCst), before);
}

#[test]
fn concurrent_lookups_inserts_and_clock_advances_account_exactly() {
    expiry_run::concurrent_accounting(|b| b.time_to_live(10 * SEC), true, 1);
}

#[test]
fn with_a_ttl_an_insert_that_evicts_nothing_reads_the_clock_once() {
    let clock = CountingClock::default();
    let cache = Cache::builder(10)
        .time_to_live(SEC)
        .clock(clock.clone())
        .build();
    for k in 0..5u32 {
        cache.insert(k, k);
    }
    // One read each, for the deadline: the eviction check reads it only when over capacity.
    assert_eq!(clock.reads.load(Ordering::SeqCst), 5);
}
