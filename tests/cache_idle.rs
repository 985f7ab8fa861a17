//! Time-to-idle (`CacheBuilder::time_to_idle`): an entry expires once it has gone the time-to-idle
//! without an access (a `get` that finds it, or its insertion), never earlier and at most one
//! tick (a sixteenth of the time-to-idle) later; `peek` and `contains_key` are not accesses; with
//! a time-to-live too, whichever comes first. Expired entries leave exactly once, as `Expired`.
//!
//! Time is a `ManualClock` the tests advance: no test sleeps or depends on real time. With a
//! time-to-idle of 16 s a tick is 1 s, so an entry last read at `t` is live at every time up to
//! `t + 16 s` (exclusive) and gone from `t + 17 s` on, whatever `t`'s place in its tick.

use latchless::cache::{Cache, ManualClock, RemovalCause};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "common/drop_log.rs"]
mod drop_log;
#[path = "common/expiry_run.rs"]
mod expiry_run;
#[path = "common/rng.rs"]
mod rng;

const SEC: Duration = Duration::from_secs(1);
const NS: Duration = Duration::from_nanos(1);
const TTI: Duration = Duration::from_secs(16);

/// What the listener heard: (key, value, cause), in order.
type Heard = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

/// A cache of `capacity` with a time-to-idle of 16 s (and `ttl`, if any) on a fresh
/// `ManualClock`, and its listener's log.
fn idle_cache(capacity: u64, ttl: Option<Duration>) -> (Cache<u32, u32>, ManualClock, Heard) {
    let clock = ManualClock::new();
    let heard: Heard = Arc::default();
    let sink = heard.clone();
    let mut builder = Cache::builder(capacity)
        .clock(clock.clone())
        .time_to_idle(TTI)
        .eviction_listener(move |k: &u32, v: &u32, cause| {
            sink.lock().unwrap().push((*k, *v, cause))
        });
    if let Some(ttl) = ttl {
        builder = builder.time_to_live(ttl);
    }
    (builder.build(), clock, heard)
}

fn expired(heard: &Heard) -> Vec<u32> {
    let mut keys: Vec<u32> = heard
        .lock()
        .unwrap()
        .iter()
        .filter(|&&(_, _, c)| c == RemovalCause::Expired)
        .map(|&(k, _, _)| k)
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
fn an_idle_entry_expires_never_early_and_within_a_tick() {
    // Stored at the start of a tick (0 s) and at its last nanosecond (1 s - 1 ns): both are
    // live up to 16 s after their storing and gone one tick after that, whichever it was.
    let (cache, clock, heard) = idle_cache(10, None);
    cache.insert(1, 10);
    clock.advance(SEC - NS);
    cache.insert(2, 20);
    // 16 s - 1 ns after key 1 was stored: both live.
    clock.set(TTI - NS);
    assert_eq!((cache.peek(&1), cache.peek(&2)), (Some(10), Some(20)));
    // 16 s - 1 ns after key 2 was stored: still live.
    clock.set(TTI + SEC - 2 * NS);
    assert_eq!(cache.peek(&2), Some(20));
    assert!(cache.contains_key(&1), "at most a tick late, not early");
    // 17 s after the tick both were stored in began: both gone, by a lookup and by a purge.
    clock.set(TTI + SEC);
    assert_eq!(cache.get(&1), None);
    cache.purge_expired();
    assert_eq!(cache.len(), 0);
    assert_eq!(expired(&heard), [1, 2]);
}

#[test]
fn a_get_restarts_the_idle_time_and_peek_does_not() {
    let (cache, clock, heard) = idle_cache(10, None);
    cache.insert(1, 10);
    cache.insert(2, 20);
    clock.set(10 * SEC);
    assert_eq!(cache.get(&1), Some(10)); // an access
    assert_eq!(cache.peek(&2), Some(20)); // not one
    assert!(cache.contains_key(&2)); // nor this
    clock.set(17 * SEC);
    assert_eq!(cache.peek(&2), None, "idle since it was stored at 0 s");
    assert_eq!(cache.peek(&1), Some(10), "read at 10 s");
    clock.set(26 * SEC - NS);
    assert_eq!(cache.peek(&1), Some(10), "16 s - 1 ns after its read");
    clock.set(27 * SEC);
    assert_eq!(cache.peek(&1), None);
    cache.purge_expired();
    assert_eq!(expired(&heard), [1, 2]);
}

#[test]
fn an_entry_read_often_enough_never_goes_idle() {
    let (cache, clock, heard) = idle_cache(10, None);
    cache.insert(1, 10);
    for step in 1..=100 {
        clock.advance(15 * SEC);
        assert_eq!(cache.get(&1), Some(10), "read every 15 s, at step {step}");
    }
    assert!(heard.lock().unwrap().is_empty());
}

#[test]
fn a_write_is_an_access() {
    let (cache, clock, heard) = idle_cache(10, None);
    cache.insert(1, 10);
    cache.insert(2, 20);
    cache.insert(3, 30);
    clock.set(10 * SEC);
    assert_eq!(cache.insert(1, 11), Some(10));
    assert_eq!(cache.compare_exchange(&2, &20, 21), Ok(()));
    clock.set(17 * SEC);
    // 3 went idle; the rewritten keys did not.
    assert_eq!(cache.insert_if_absent(3, 31), Ok(()));
    assert_eq!((cache.peek(&1), cache.peek(&2)), (Some(11), Some(21)));
    assert_eq!(expired(&heard), [3]);
    // Each write started a new idle time: 1 and 2 at 10 s, 3 at 17 s.
    clock.set(27 * SEC);
    assert_eq!(
        (cache.peek(&1), cache.peek(&2), cache.peek(&3)),
        (None, None, Some(31))
    );
}

#[test]
fn with_a_time_to_live_too_the_earlier_expiry_wins() {
    // A time-to-live of 20 s: reads keep key 1 from idling, but not past its time-to-live.
    let (cache, clock, heard) = idle_cache(10, Some(20 * SEC));
    cache.insert(1, 10);
    cache.insert(2, 20);
    for t in [5, 10, 15] {
        clock.set(t * SEC);
        assert_eq!(cache.get(&1), Some(10));
    }
    clock.set(20 * SEC - NS);
    assert_eq!(cache.peek(&1), Some(10));
    assert_eq!(cache.peek(&2), None, "idle since 0 s");
    clock.set(20 * SEC);
    assert_eq!(cache.get(&1), None, "its time-to-live ran out");
    // A per-entry time-to-live longer than the idle time: the idle time wins.
    cache.insert_with_ttl(3, 30, 100 * SEC);
    clock.set(37 * SEC);
    assert_eq!(cache.get(&3), None);
    cache.purge_expired();
    assert_eq!(expired(&heard), [1, 2, 3]);
}

#[test]
fn a_zero_time_to_idle_stores_entries_that_are_never_returned() {
    let clock = ManualClock::new();
    let cache = Cache::builder(10)
        .clock(clock.clone())
        .time_to_idle(Duration::ZERO)
        .build();
    cache.insert(1, 1);
    assert_eq!(cache.len(), 1, "counted and admitted");
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.len(), 0, "removed by the lookup");
}

#[test]
fn eviction_takes_an_idle_entry_even_if_it_was_read() {
    // Capacity 2: both entries are read, so without expiry eviction would promote them and
    // evict the newcomer. Key 1 is read again later, so only key 0 has gone idle.
    let (cache, clock, heard) = idle_cache(2, None);
    cache.insert(0, 0);
    cache.insert(1, 1);
    assert_eq!((cache.get(&0), cache.get(&1)), (Some(0), Some(1)));
    clock.set(10 * SEC);
    assert_eq!(cache.get(&1), Some(1));
    clock.set(17 * SEC);
    cache.insert(2, 2);
    assert_eq!(expired(&heard), [0]);
    assert_eq!(cache.stats().evictions, 0, "an expiry is not an eviction");
    assert_eq!((cache.get(&1), cache.get(&2)), (Some(1), Some(2)));
}

#[test]
fn eviction_of_read_entries_keeps_their_access_time() {
    // The eviction policy lowers read entries' access counters as it passes them over, in the
    // word that also holds the latest access: it must not lose the access. Capacity 4, every key
    // read at 10 s, then churn that makes the policy pass over them.
    let (cache, clock, heard) = idle_cache(4, None);
    for k in 0..4 {
        cache.insert(k, k);
    }
    clock.set(10 * SEC);
    for _ in 0..3 {
        for k in 0..4 {
            assert_eq!(cache.get(&k), Some(k));
        }
    }
    // Churn with no reads: only the passes of the policy write the read keys' access words.
    for k in 100..104 {
        cache.insert(k, k);
    }
    let survivors: Vec<u32> = (0..4).filter(|k| cache.peek(k).is_some()).collect();
    assert!(!survivors.is_empty(), "read keys survive the churn");
    // Every read key that survived eviction is live until 26 s - 1 ns.
    clock.set(26 * SEC - NS);
    for k in survivors {
        assert_eq!(
            cache.peek(&k),
            Some(k),
            "key {k}, read at 10 s, expired early"
        );
    }
    assert!(expired(&heard).is_empty(), "{:?}", heard.lock().unwrap());
}

#[test]
fn concurrent_reads_writes_and_clock_advances_account_exactly() {
    expiry_run::concurrent_accounting(|b| b.time_to_idle(8 * SEC), false, 11);
}
