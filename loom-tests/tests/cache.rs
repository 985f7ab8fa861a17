//! loom models of `Cache`: races between inserts, reads, removals, compare-and-swaps and
//! evictions, on tiny capacities. Each model builds its own `Collector` and pins one handle per
//! thread; every entry is a `Track`ed allocation under loom, so an entry never freed fails the
//! model, and values carry their key so a torn or misplaced read shows. Times and iteration
//! counts are for `--release` at `LOOM_MAX_PREEMPTIONS=2` on the 2-core CI machine.
#![cfg(loom)]

use crossbeam_epoch::{Collector, LocalHandle};
use latchless::cache::{Cache, CacheBuilder, ManualClock, RemovalCause};
use loom::sync::Arc;
use loom::thread;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::time::Duration;

type Hasher = BuildHasherDefault<DefaultHasher>;

/// A cache of `capacity` on a fresh collector, with a fixed hasher (loom explores one hash
/// layout; the index's behaviour does not depend on which).
fn cache(capacity: u64, collector: &Collector) -> Arc<Cache<u8, (u8, u8), Hasher>> {
    Arc::new(
        Cache::builder(capacity)
            .hasher(Hasher::default())
            .index_buckets(2)
            .collector(collector.clone())
            .build(),
    )
}

/// A thread that registers with `collector` and gets key 1 from `c`, racing what the model's
/// thread does next.
fn spawn_get_1(
    c: &Arc<Cache<u8, (u8, u8), Hasher>>,
    collector: &Collector,
) -> thread::JoinHandle<Option<(u8, u8)>> {
    let (c, collector) = (Arc::clone(c), collector.clone());
    thread::spawn(move || {
        let h = collector.register();
        c.get_with_guard(&1, &h.pin())
    })
}

/// Two threads insert the same key: one value wins; the other insert either returned the
/// winner's value (it replaced it) or was itself replaced; never are both kept.
// Measured: 4,299 executions, 931.5ms (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn insert_races_insert_same_key() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let c = cache(4, &collector);
        let other = {
            let (c, collector) = (c.clone(), collector.clone());
            thread::spawn(move || {
                let h = collector.register();
                c.insert_with_guard(1, (1, 2), &h.pin())
            })
        };
        let h = collector.register();
        let mine = c.insert_with_guard(1, (1, 1), &h.pin());
        let theirs = other.join().unwrap();
        let kept = c.get_with_guard(&1, &h.pin()).expect("one value is kept");
        match (mine, theirs) {
            (None, Some(v)) => assert_eq!((v, kept), ((1, 1), (1, 2))),
            (Some(v), None) => assert_eq!((v, kept), ((1, 2), (1, 1))),
            other => panic!("both or neither replaced: {other:?}"),
        }
        assert_eq!(c.len(), 1);
        c.__model_check_handles();
    });
}

/// A read races the removal of its key: it sees the value or nothing, never freed memory (the
/// entry is retired through the epoch and tracked).
// Measured: 1,091 executions, 286.6ms (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn get_races_remove() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let c = cache(4, &collector);
        let h = collector.register();
        c.insert_with_guard(1, (1, 7), &h.pin());
        let reader = spawn_get_1(&c, &collector);
        assert_eq!(c.remove_with_guard(&1, &h.pin()), Some((1, 7)));
        h.pin().flush();
        let seen = reader.join().unwrap();
        assert!(seen.is_none() || seen == Some((1, 7)), "{seen:?}");
        assert_eq!(c.get_with_guard(&1, &h.pin()), None);
        assert_eq!(c.len(), 0);
    });
}

/// Two compare-and-swaps from the same value: exactly one succeeds, and the loser learns the
/// winner's value and gets its own back.
// Measured: 291 executions, 77.8ms (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn compare_exchange_races_compare_exchange() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let c = cache(4, &collector);
        let h = collector.register();
        c.insert_with_guard(1, (1, 0), &h.pin());
        let other = {
            let (c, collector) = (c.clone(), collector.clone());
            thread::spawn(move || {
                let h = collector.register();
                c.compare_exchange_with_guard(&1, &(1, 0), (1, 2), &h.pin())
            })
        };
        let mine = c.compare_exchange_with_guard(&1, &(1, 0), (1, 1), &h.pin());
        let theirs = other.join().unwrap();
        let now = c.get_with_guard(&1, &h.pin()).unwrap();
        match (mine, theirs) {
            (Ok(()), Err(e)) => {
                assert_eq!(now, (1, 1));
                assert_eq!((e.current, e.new), (Some((1, 1)), (1, 2)));
            }
            (Err(e), Ok(())) => {
                assert_eq!(now, (1, 2));
                assert_eq!((e.current, e.new), (Some((1, 2)), (1, 1)));
            }
            other => panic!("not exactly one success: {other:?}"),
        }
        c.__model_check_handles();
    });
}

/// An insert into a full cache of one evicts the only entry while another thread reads it: the
/// reader sees the victim's value or nothing, and the bound holds afterwards.
// Measured: 47 executions, 10.6ms (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn eviction_races_get_on_victim() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let c = cache(1, &collector);
        let h = collector.register();
        c.insert_with_guard(1, (1, 1), &h.pin());
        let reader = spawn_get_1(&c, &collector);
        c.insert_with_guard(2, (2, 2), &h.pin());
        let seen = reader.join().unwrap();
        assert!(seen.is_none() || seen == Some((1, 1)), "{seen:?}");
        assert!(c.len() <= 1 && c.weight() <= 1, "{c:?}");
        let left: Vec<_> = [1, 2]
            .iter()
            .filter_map(|k| c.get_with_guard(k, &h.pin()))
            .collect();
        assert!(left.iter().all(|&(k, v)| k == v), "{left:?}");
    });
}

/// Two inserters into a full cache of one evict at once: once both return, the capacity bound
/// holds, and what is left is one of the inserted values under its own key.
///
/// At most one preemption: the cache's FIFOs cross a queue block boundary at nearly every push
/// under loom (two-slot blocks), and at two preemptions the model ran past 500 s (it took 148 s
/// with the former node-based queue). The queue's own boundary races are its models' to check.
// Measured: 85,495 executions, 19.2s (release, one preemption, a shared 2-core machine; 122,931
// before the frequency sketch).
#[test]
fn two_inserters_evicting() {
    latchless_loom_tests::model_with_bound(1, || {
        let collector = Collector::new();
        let c = cache(1, &collector);
        {
            let h = collector.register();
            c.insert_with_guard(0, (0, 0), &h.pin());
        }
        let inserter = {
            let (c, collector) = (c.clone(), collector.clone());
            thread::spawn(move || {
                let h = collector.register();
                c.insert_with_guard(1, (1, 1), &h.pin());
            })
        };
        let h = collector.register();
        c.insert_with_guard(2, (2, 2), &h.pin());
        inserter.join().unwrap();
        assert!(c.len() <= 1 && c.weight() <= 1, "{c:?}");
        let left: Vec<_> = [0, 1, 2]
            .iter()
            .filter_map(|k| c.get_with_guard(k, &h.pin()))
            .collect();
        assert!(
            left.len() <= 1 && left.iter().all(|&(k, v)| k == v),
            "{left:?}"
        );
        c.__model_check_handles();
    });
}

/// Two threads remove the same key: exactly one gets the value, and the entry's weight and count
/// are released once (a remover that lost the unlink must look again, not release it too).
// Measured: 35 executions, 7.0ms (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn remove_races_remove() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let c = cache(4, &collector);
        let h = collector.register();
        c.insert_with_guard(1, (1, 7), &h.pin());
        let other = {
            let (c, collector) = (c.clone(), collector.clone());
            thread::spawn(move || {
                let h = collector.register();
                c.remove_with_guard(&1, &h.pin())
            })
        };
        let mine = c.remove_with_guard(&1, &h.pin());
        let theirs = other.join().unwrap();
        match (mine, theirs) {
            (Some(v), None) | (None, Some(v)) => assert_eq!(v, (1, 7)),
            other => panic!("not exactly one removal: {other:?}"),
        }
        assert_eq!((c.len(), c.weight()), (0, 0), "{c:?}");
        assert_eq!(c.get_with_guard(&1, &h.pin()), None);
    });
}

/// A removal races a replacing insert of its key: either the removal takes the old value and the
/// new one stays, or the insert replaces the old value and the removal takes the new one.
// Measured: 196 executions, 20.5ms (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn remove_races_insert_same_key() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let c = cache(4, &collector);
        let h = collector.register();
        c.insert_with_guard(1, (1, 1), &h.pin());
        let inserter = {
            let (c, collector) = (c.clone(), collector.clone());
            thread::spawn(move || {
                let h = collector.register();
                c.insert_with_guard(1, (1, 2), &h.pin())
            })
        };
        let removed = c.remove_with_guard(&1, &h.pin());
        let replaced = inserter.join().unwrap();
        let now = c.get_with_guard(&1, &h.pin());
        match (removed, replaced) {
            (Some((1, 1)), None) => assert_eq!((now, c.len()), (Some((1, 2)), 1)),
            (Some((1, 2)), Some((1, 1))) => assert_eq!((now, c.len()), (None, 0)),
            other => panic!("impossible outcome {other:?}, left {now:?}"),
        }
        assert_eq!(c.weight(), c.len() as u64, "{c:?}");
        c.__model_check_handles();
    });
}

/// Every key in one bucket: an insert of a second key (the bucket going from one entry, held in
/// the bucket word itself, to an array) races the removal of the first (the bucket going back to
/// one entry, or to none), while the remover also reads the second key. Whatever the order, both
/// operations take effect, and a read sees the second key's value or nothing, never another.
#[test]
fn one_entry_bucket_grows_while_it_shrinks() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let c = Arc::new(
            Cache::builder(4)
                .hasher(Hasher::default())
                .index_buckets(1)
                .collector(collector.clone())
                .build(),
        );
        assert_eq!(format!("{c:?}").matches("buckets: 1").count(), 1, "{c:?}");
        let h = collector.register();
        c.insert_with_guard(1u8, (1u8, 1u8), &h.pin());
        let inserter = {
            let (c, collector) = (c.clone(), collector.clone());
            thread::spawn(move || {
                let h = collector.register();
                c.insert_with_guard(2, (2, 2), &h.pin())
            })
        };
        let removed = c.remove_with_guard(&1, &h.pin());
        let seen = c.get_with_guard(&2, &h.pin());
        assert!(matches!(seen, None | Some((2, 2))), "{seen:?}");
        assert_eq!(inserter.join().unwrap(), None);
        assert_eq!(removed, Some((1, 1)));
        let g = h.pin();
        assert_eq!(c.get_with_guard(&1, &g), None);
        assert_eq!(c.get_with_guard(&2, &g), Some((2, 2)));
        assert_eq!((c.len(), c.weight()), (1, 1), "{c:?}");
    });
}

/// Two threads insert the same absent key with `insert_if_absent`: exactly one stores its value,
/// the other gets its own entry back, and the key then holds the winner's value.
#[test]
fn insert_if_absent_races_insert_if_absent() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let c = cache(4, &collector);
        let other = {
            let (c, collector) = (c.clone(), collector.clone());
            thread::spawn(move || {
                let h = collector.register();
                c.insert_if_absent_with_guard(1, (1, 2), &h.pin())
            })
        };
        let h = collector.register();
        let mine = c.insert_if_absent_with_guard(1, (1, 1), &h.pin());
        let theirs = other.join().unwrap();
        let winner = match (mine, theirs) {
            (Ok(()), Err((1, (1, 2)))) => (1, 1),
            (Err((1, (1, 1))), Ok(())) => (1, 2),
            other => panic!("not exactly one winner: {other:?}"),
        };
        assert_eq!(c.get_with_guard(&1, &h.pin()), Some(winner));
        assert_eq!((c.len(), c.weight()), (1, 1), "{c:?}");
    });
}

/// `retain`, rejecting the old value of a key, races an insert replacing that value: whether
/// `retain` unlinks the old entry first (the insert then adds its value), finds the new value
/// (and keeps it), or judged the old entry that the insert then replaced (its unlink fails and it
/// releases nothing), the new value stays and the counts agree with the contents.
// Measured: 166 executions, 33.2ms (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn retain_races_replacing_insert() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let c = cache(4, &collector);
        let h = collector.register();
        c.insert_with_guard(1, (1, 1), &h.pin());
        let retainer = {
            let c = c.clone();
            thread::spawn(move || c.retain(|_, &(_, v)| v != 1))
        };
        let replaced = c.insert_with_guard(1, (1, 2), &h.pin());
        retainer.join().unwrap();
        assert!(matches!(replaced, None | Some((1, 1))), "{replaced:?}");
        assert_eq!(c.get_with_guard(&1, &h.pin()), Some((1, 2)));
        assert_eq!((c.len(), c.weight()), (1, 1), "{c:?}");
        c.__model_check_handles();
    });
}

/// A cache of `capacity` on `clock`, with the expiry `expiry` sets on its builder, reporting
/// every removal to `heard`.
fn timed_cache(
    capacity: u64,
    collector: &Collector,
    clock: &ManualClock,
    heard: &Heard,
    expiry: impl FnOnce(CacheBuilder<u8, (u8, u8), Hasher>) -> CacheBuilder<u8, (u8, u8), Hasher>,
) -> Arc<Cache<u8, (u8, u8), Hasher>> {
    let sink = heard.clone();
    let builder = Cache::builder(capacity)
        .hasher(Hasher::default())
        .index_buckets(2)
        .collector(collector.clone())
        .clock(clock.clone())
        .eviction_listener(move |_: &u8, &v: &(u8, u8), cause| {
            sink.lock().unwrap().push((v, cause));
        });
    Arc::new(expiry(builder).build())
}

/// A cache of 4 whose entries live 1 ns on `clock`, reporting every removal to `heard`.
fn expiring_cache(
    collector: &Collector,
    clock: &ManualClock,
    heard: &Heard,
) -> Arc<Cache<u8, (u8, u8), Hasher>> {
    timed_cache(4, collector, clock, heard, |b| {
        b.time_to_live(Duration::from_nanos(1))
    })
}

/// What a model's listener heard: (value, cause). A std mutex: the listener does no loom
/// operation while it holds it, so it adds no schedule point and cannot block a loom thread.
type Heard = std::sync::Arc<std::sync::Mutex<Vec<((u8, u8), RemovalCause)>>>;

/// A get that finds its entry expired (and removes it) races an insert of the same key, which
/// finds it expired too (and replaces it): whichever unlinks the expired entry reports it, so
/// the listener hears it exactly once, as `Expired`; the insert never returns the stale value;
/// the reader sees nothing or the new value; the counts end exact and every entry is freed
/// (loom's `Track`).
// Measured: 63 executions, 4.5ms (release, LOOM_MAX_PREEMPTIONS=2, a shared 2-core machine).
#[test]
fn get_expiring_races_insert_same_key() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let clock = ManualClock::new();
        let heard = Heard::default();
        let c = expiring_cache(&collector, &clock, &heard);
        let h = collector.register();
        c.insert_with_guard(1, (1, 1), &h.pin());
        clock.advance(Duration::from_nanos(1));
        let reader = spawn_get_1(&c, &collector);
        assert_eq!(c.insert_with_guard(1, (1, 2), &h.pin()), None);
        let seen = reader.join().unwrap();
        assert!(matches!(seen, None | Some((1, 2))), "{seen:?}");
        assert_eq!(c.get_with_guard(&1, &h.pin()), Some((1, 2)));
        assert_eq!((c.len(), c.weight()), (1, 1), "{c:?}");
        assert_eq!(*heard.lock().unwrap(), [((1, 1), RemovalCause::Expired)]);
        c.__model_check_handles();
    });
}

/// A get that finds its entry expired races a remove of the key, which finds it expired too:
/// exactly one of them unlinks it and reports it, once, as `Expired`; the remove returns nothing
/// (an expired value is never returned), and the cache ends empty.
// Measured: 39 executions, 2.2ms (release, LOOM_MAX_PREEMPTIONS=2, a shared 2-core machine).
#[test]
fn get_expiring_races_remove() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let clock = ManualClock::new();
        let heard = Heard::default();
        let c = expiring_cache(&collector, &clock, &heard);
        let h = collector.register();
        c.insert_with_guard(1, (1, 1), &h.pin());
        let reader = {
            let (c, collector, clock) = (c.clone(), collector.clone(), clock.clone());
            thread::spawn(move || {
                // The model's time passes on the reader's thread, racing the remover's lookup.
                clock.advance(Duration::from_nanos(1));
                let h = collector.register();
                c.get_with_guard(&1, &h.pin())
            })
        };
        let removed = c.remove_with_guard(&1, &h.pin());
        assert_eq!(reader.join().unwrap(), None);
        let heard = heard.lock().unwrap();
        match removed {
            // The remove came first: the value was live, and left as Removed.
            Some(v) => assert_eq!(
                (v, &heard[..]),
                ((1, 1), &[((1, 1), RemovalCause::Removed)][..])
            ),
            None => assert_eq!(*heard, [((1, 1), RemovalCause::Expired)]),
        }
        assert_eq!((c.len(), c.weight()), (0, 0), "{c:?}");
    });
}

/// A replacing insert races the eviction of the entry it replaces (capacity 1; another key's
/// insert evicts). The FIFOs hold the key's handle, which the replacement passes to its new
/// entry: the evictor that popped the handle may find the old entry, fail to unlink it (the
/// replacement swapped it out first) and must then find the new one by the same handle, or
/// the replacement may come after the eviction and add its key afresh. Either way each value
/// that leaves is heard exactly once with its cause, the replaced value is returned only if it
/// was still there, the bound holds, the counts agree with the contents, and every entry is
/// freed exactly once (loom's `Track`; an entry retired by both the replacer and the evictor
/// would be a double free).
// Measured: 8,991 executions, 2.0s (release, LOOM_MAX_PREEMPTIONS=2, a shared 2-core machine).
// With the evictor planted to drop the handle when its unlink fails, it fails in 1.5s: the
// replaced key is left without a handle.
#[test]
fn replacement_races_eviction() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let heard = Heard::default();
        let sink = heard.clone();
        let c = Arc::new(
            Cache::builder(1)
                .hasher(Hasher::default())
                .index_buckets(2)
                .collector(collector.clone())
                .eviction_listener(move |_: &u8, &v: &(u8, u8), cause| {
                    sink.lock().unwrap().push((v, cause));
                })
                .build(),
        );
        let h = collector.register();
        c.insert_with_guard(1, (1, 1), &h.pin());
        let evictor = {
            let (c, collector) = (c.clone(), collector.clone());
            thread::spawn(move || {
                let h = collector.register();
                c.insert_with_guard(2, (2, 2), &h.pin());
            })
        };
        let replaced = c.insert_with_guard(1, (1, 2), &h.pin());
        evictor.join().unwrap();
        assert!(c.len() <= 1 && c.weight() <= 1, "{c:?}");
        assert_eq!(c.len() as u64, c.weight(), "{c:?}");
        let left: Vec<_> = [1, 2]
            .iter()
            .filter_map(|k| c.get_with_guard(k, &h.pin()))
            .collect();
        assert_eq!(left.len(), c.len(), "{left:?} {c:?}");
        // The survivor is still evictable: its key's handle is queued, once.
        c.__model_check_handles();
        let mut heard = heard.lock().unwrap().clone();
        heard.sort_by_key(|&(v, _)| v);
        // (1, 1) leaves once: replaced (and returned) if the replacement found it, else evicted.
        let first = match replaced {
            Some(v) => {
                assert_eq!(v, (1, 1));
                ((1, 1), RemovalCause::Replaced)
            }
            None => ((1, 1), RemovalCause::Evicted),
        };
        assert_eq!(heard[0], first, "{heard:?}");
        // Of (1, 2) and (2, 2), the one not left in the cache was evicted, and heard once.
        let gone: Vec<_> = [(1, 2), (2, 2)]
            .into_iter()
            .filter(|v| !left.contains(v))
            .map(|v| (v, RemovalCause::Evicted))
            .collect();
        assert_eq!(heard[1..], gone[..], "{heard:?} left {left:?}");
    });
}

/// A cache of capacity 2 whose entries expire after 16 ns without a `get` on `clock` (a tick of
/// 1 ns: idle expiry is exact), reporting every removal to `heard`.
fn idle_cache(
    collector: &Collector,
    clock: &ManualClock,
    heard: &Heard,
) -> Arc<Cache<u8, (u8, u8), Hasher>> {
    timed_cache(2, collector, clock, heard, |b| {
        b.time_to_idle(Duration::from_nanos(16))
    })
}

/// The model's clock set to `ns` nanoseconds.
fn at(clock: &ManualClock, ns: u64) {
    clock.set(Duration::from_nanos(ns));
}

/// Key 1 of `c` holds `(1, 1)` until `ns` nanoseconds (exclusive) and has expired at `ns`
/// (which removes it): moves the model's clock to each side and peeks.
fn assert_live_until(
    c: &Cache<u8, (u8, u8), Hasher>,
    clock: &ManualClock,
    h: &LocalHandle,
    ns: u64,
) {
    at(clock, ns - 1);
    assert_eq!(
        c.peek_with_guard(&1, &h.pin()),
        Some((1, 1)),
        "expired early"
    );
    at(clock, ns);
    assert_eq!(c.peek_with_guard(&1, &h.pin()), None, "expired late");
}

/// A get's refresh of its entry's latest access (at 10 ns) races the eviction policy passing
/// over the same entry (read before, so promoted: the policy stores its access counter, in the
/// word that holds the access tick). Neither write may undo the other: the entry, last read at
/// 10 ns, is live until 26 ns and gone at 26 ns; the unread key is the one evicted.
// Measured: 83 executions, 15ms (release, LOOM_MAX_PREEMPTIONS=2, a shared 2-core machine).
#[test]
fn idle_refresh_races_eviction_pass() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let clock = ManualClock::new();
        let heard = Heard::default();
        let c = idle_cache(&collector, &clock, &heard);
        let h = collector.register();
        c.insert_with_guard(1, (1, 1), &h.pin());
        c.insert_with_guard(2, (2, 2), &h.pin());
        assert_eq!(c.get_with_guard(&1, &h.pin()), Some((1, 1)));
        at(&clock, 10);
        let reader = spawn_get_1(&c, &collector);
        // Over capacity: the policy passes over read key 1 and evicts unread key 2.
        c.insert_with_guard(3, (3, 3), &h.pin());
        assert_eq!(reader.join().unwrap(), Some((1, 1)));
        assert_eq!(*heard.lock().unwrap(), [((2, 2), RemovalCause::Evicted)]);
        assert_live_until(&c, &clock, &h, 26);
        c.purge_expired();
        assert_eq!((c.len(), c.weight()), (0, 0), "{c:?}");
    });
}

/// Two gets of one entry race their refreshes: one reads the clock at 10 ns or 12 ns, the other
/// at 12 ns. The latest access wins whatever the order of their stores (a refresh only moves
/// the tick forward): the entry is live until 28 ns and gone at 28 ns.
// Measured: 58 executions, 12ms (release, LOOM_MAX_PREEMPTIONS=2, a shared 2-core machine).
#[test]
fn idle_refreshes_race_each_other() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let clock = ManualClock::new();
        let heard = Heard::default();
        let c = idle_cache(&collector, &clock, &heard);
        let h = collector.register();
        c.insert_with_guard(1, (1, 1), &h.pin());
        at(&clock, 10);
        let reader = spawn_get_1(&c, &collector);
        at(&clock, 12);
        assert_eq!(c.get_with_guard(&1, &h.pin()), Some((1, 1)));
        assert_eq!(reader.join().unwrap(), Some((1, 1)));
        assert_live_until(&c, &clock, &h, 28);
        assert_eq!(*heard.lock().unwrap(), [((1, 1), RemovalCause::Expired)]);
    });
}

/// A get at 15 ns (the entry stored at 0 ns, live until 16 ns) races the clock moving to 16 ns
/// and a purge. The get and the purge are concurrent, so the purge may or may not see the get's
/// access: the get returns the value if it read the clock at 15 ns and nothing at 16 ns; the
/// entry is purged, or survives with the get's access (live until 31 ns, gone at 31 ns); the
/// listener hears it at most once, as `Expired`; the counts end exact.
// Measured: 5,005 executions, 0.46s (release, LOOM_MAX_PREEMPTIONS=2, a shared 2-core machine).
#[test]
fn idle_refresh_races_purge() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let clock = ManualClock::new();
        let heard = Heard::default();
        let c = idle_cache(&collector, &clock, &heard);
        let h = collector.register();
        c.insert_with_guard(1, (1, 1), &h.pin());
        at(&clock, 15);
        let reader = spawn_get_1(&c, &collector);
        at(&clock, 16);
        c.purge_expired();
        let seen = reader.join().unwrap();
        let present = c.len() == 1;
        let heard = heard.lock().unwrap().clone();
        if present {
            assert_eq!(seen, Some((1, 1)), "kept only by the get's access");
            assert!(heard.is_empty());
            assert_live_until(&c, &clock, &h, 31);
        } else {
            assert_eq!(heard, [((1, 1), RemovalCause::Expired)]);
            assert_eq!(c.weight(), 0, "{c:?}");
        }
    });
}
