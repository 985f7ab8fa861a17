//! `Cache::iter` and `Cache::retain`, alone and racing writers:
//!
//! - `iter` yields every entry once with its value, records no access, and on an empty cache
//!   yields nothing;
//! - under churn of other keys, every iteration yields each key at most once, every stable key
//!   (present and unchanged throughout) with its value, and churned keys only with the value
//!   they were inserted with;
//! - `retain` removes exactly the rejected entries, each reported to the listener as `Removed`,
//!   and `len` and `weight` follow;
//! - `retain` racing writers that replace the kept keys' values removes every rejected key and
//!   no kept one;
//! - `retain` racing writers that replace the rejected keys' values (so that it often finds a
//!   rejected entry already replaced) leaves `len` and `weight` equal to the contents.
//!
//! Sizes shrink under Miri (`cfg!(miri)`).

use latchless::cache::{Cache, RemovalCause};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// Keys in the single-threaded tests.
const N: u64 = if cfg!(miri) { 40 } else { 2_000 };
/// Iterations racing the writers.
const ROUNDS: usize = if cfg!(miri) { 2 } else { 200 };

#[test]
fn iter_yields_every_entry_once_and_records_nothing() {
    let cache = Cache::new(2 * N);
    assert_eq!(cache.iter().next(), None);
    for k in 0..N {
        cache.insert(k, k * 3);
    }
    let mut pairs: Vec<(u64, u64)> = cache.iter().collect();
    pairs.sort_unstable();
    let want: Vec<(u64, u64)> = (0..N).map(|k| (k, k * 3)).collect();
    assert_eq!(pairs, want);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0), "iter counted lookups");
    // Fused: once done, done.
    let mut it = cache.iter();
    for _ in it.by_ref() {}
    assert_eq!(it.next(), None);
}

#[test]
fn iter_under_churn_yields_stable_keys_once_each() {
    let stable = N / 4;
    let cache = Cache::new(4 * N);
    for k in 0..stable {
        cache.insert(k, k * 3);
    }
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        for t in 0..2u64 {
            let (cache, done) = (&cache, &done);
            s.spawn(move || {
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    // Churned keys live above the stable ones, each written with its own value.
                    let k = N + (i * 2 + t) % N;
                    if i.is_multiple_of(3) {
                        cache.remove(&k);
                    } else {
                        cache.insert(k, k * 3);
                    }
                    i += 1;
                }
            });
        }
        for _ in 0..ROUNDS {
            let mut seen = HashSet::new();
            for (k, v) in cache.iter() {
                assert!(seen.insert(k), "key {k} yielded twice");
                assert_eq!(v, k * 3, "key {k} with a value it never had");
            }
            for k in 0..stable {
                assert!(seen.contains(&k), "stable key {k} not yielded");
            }
        }
        done.store(true, Ordering::Relaxed);
    });
}

#[test]
fn retain_removes_exactly_the_rejected_entries() {
    let removed: Arc<Mutex<Vec<(u64, u64, RemovalCause)>>> = Arc::default();
    let sink = Arc::clone(&removed);
    let cache = Cache::builder(10 * N)
        .weigher(|_: &u64, v: &u64| 1 + v % 3)
        .eviction_listener(move |&k: &u64, &v: &u64, cause| {
            sink.lock().unwrap().push((k, v, cause));
        })
        .build();
    for k in 0..N {
        cache.insert(k, k);
    }
    let judged = AtomicUsize::new(0);
    cache.retain(|&k, &v| {
        judged.fetch_add(1, Ordering::Relaxed);
        assert_eq!(k, v);
        k % 3 != 0
    });
    assert_eq!(judged.into_inner() as u64, N, "every entry judged once");
    let mut log = std::mem::take(&mut *removed.lock().unwrap());
    log.sort_unstable_by_key(|&(k, _, _)| k);
    let want: Vec<(u64, u64, RemovalCause)> = (0..N)
        .filter(|k| k % 3 == 0)
        .map(|k| (k, k, RemovalCause::Removed))
        .collect();
    assert_eq!(log, want);
    for k in 0..N {
        assert_eq!(cache.get(&k), (k % 3 != 0).then_some(k), "key {k}");
    }
    let kept = (0..N).filter(|k| k % 3 != 0);
    assert_eq!(cache.len() as u64, kept.clone().count() as u64);
    assert_eq!(cache.weight(), kept.map(|k| 1 + k % 3).sum::<u64>());
}

#[test]
fn retain_racing_writers_keeps_every_kept_key() {
    let n = N / 2;
    let removals = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&removals);
    let cache = Cache::builder(4 * n)
        .eviction_listener(move |_: &u64, _: &u64, cause| {
            assert!(
                matches!(cause, RemovalCause::Replaced | RemovalCause::Removed),
                "{cause:?}: nothing is evicted here"
            );
            if cause == RemovalCause::Removed {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build();
    for k in 0..n {
        cache.insert(k, 0);
    }
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let (cache_ref, done_ref) = (&cache, &done);
        s.spawn(move || {
            // Replaces the even keys' values while `retain` runs: they must all survive.
            let mut round = 1;
            while !done_ref.load(Ordering::Relaxed) {
                for k in (0..n).step_by(2) {
                    cache_ref.insert(k, round);
                }
                round += 1;
            }
        });
        cache.retain(|&k, _| k % 2 == 0);
        done.store(true, Ordering::Relaxed);
    });
    for k in 0..n {
        assert_eq!(cache.contains_key(&k), k % 2 == 0, "key {k}");
    }
    // The odd keys of `0..n`, each removed once.
    assert_eq!(removals.load(Ordering::Relaxed) as u64, n / 2);
    assert_eq!(cache.len() as u64, n - n / 2);
}

#[test]
fn retain_racing_replacements_keeps_counts_exact() {
    // A writer keeps replacing the keys `retain` rejects, so `retain` often finds a rejected
    // entry already replaced: it must then leave the replacement alone and count nothing.
    let n = N / 4;
    let cache = Cache::builder(4 * n)
        .weigher(|_: &u64, v: &u64| 1 + v % 2)
        .build();
    for k in 0..n {
        cache.insert(k, k);
    }
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let (cache_ref, done_ref) = (&cache, &done);
        s.spawn(move || {
            let mut round = 0;
            while !done_ref.load(Ordering::Relaxed) {
                for k in 0..n {
                    cache_ref.insert(k, round);
                }
                round += 1;
            }
        });
        for _ in 0..ROUNDS {
            cache.retain(|_, &v| v % 3 == 0);
        }
        done.store(true, Ordering::Relaxed);
    });
    let pairs: Vec<(u64, u64)> = cache.iter().collect();
    assert_eq!(cache.len(), pairs.len(), "len drifted from the contents");
    assert_eq!(
        cache.weight(),
        pairs.iter().map(|&(_, v)| 1 + v % 2).sum::<u64>(),
        "weight drifted from the contents"
    );
}
