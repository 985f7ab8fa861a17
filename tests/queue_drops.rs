//! Element drops: every value pushed into an `MsQueue` is dropped exactly once, whether it is
//! popped, left in the queue when the queue drops, left in a partially consumed `IntoIter` or
//! `Drain`, or pushed concurrently from several threads.
//!
//! Each value is a `Tracked` payload that records its own drop in a shared `DropLog`
//! (`tests/common/drop_log.rs`), which notices a value dropped twice (and, at the end of a test,
//! a value never dropped). Queues are
//! built on a local epoch `Collector` that is dropped before the final check, so any block the
//! epoch still held has been freed by then: a block whose destruction dropped a value already
//! popped would show up as a double drop.

use crossbeam_epoch::Collector;
use latchless::queue::MsQueue;
use std::thread;

#[path = "common/drop_log.rs"]
mod drop_log;

use drop_log::{DropLog, Tracked};

const N: usize = if cfg!(miri) { 64 } else { 10_000 };

/// A queue on a collector of its own, returned so the test can drop it last.
fn local_queue() -> (MsQueue<Tracked>, Collector) {
    let collector = Collector::new();
    (MsQueue::with_collector(collector.clone()), collector)
}

fn filled(log: &'static DropLog) -> (MsQueue<Tracked>, Collector) {
    let (q, collector) = local_queue();
    for id in 0..log.ids() {
        q.push(Tracked::new(id, log));
    }
    (q, collector)
}

#[test]
fn queue_drop_drops_unpopped_values_once() {
    let log = DropLog::new(N);
    let (q, collector) = filled(log);
    // Pop a third and drop them at once.
    for id in 0..N / 3 {
        let v = q.pop().expect("queue holds N values");
        assert_eq!(v.id, id, "FIFO");
    }
    assert_eq!(
        log.dropped_total(),
        N / 3,
        "popped values dropped by the caller"
    );
    // Pop another third and keep them: the queue must not drop them.
    let kept: Vec<Tracked> = (0..N / 3).map(|_| q.pop().expect("non-empty")).collect();
    assert_eq!(
        log.dropped_total(),
        N / 3,
        "values held by the caller are alive"
    );
    assert_eq!(q.len(), N - 2 * (N / 3));

    drop(q);
    assert_eq!(
        log.dropped_total(),
        N - N / 3,
        "the queue dropped exactly its remaining values"
    );
    for v in &kept {
        assert_eq!(log.dropped(v.id), 0, "a value the caller holds was dropped");
    }
    drop(kept);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn empty_and_fully_popped_queues_drop_nothing_twice() {
    let log = DropLog::new(N);
    let (q, collector) = filled(log);
    while q.pop().is_some() {}
    assert_eq!(log.dropped_total(), N);
    // The emptied queue still works, and drops its new values with it.
    let log2 = DropLog::new(3);
    for id in 0..3 {
        q.push(Tracked::new(id, log2));
    }
    drop(q);
    drop(collector);
    log.assert_all_dropped_once();
    log2.assert_all_dropped_once();
}

#[test]
fn into_iter_partially_consumed_drops_the_rest_once() {
    let log = DropLog::new(N);
    let (q, collector) = filled(log);
    let mut it = q.into_iter();
    let taken: Vec<Tracked> = it.by_ref().take(N / 2).collect();
    assert_eq!(
        taken.iter().map(|v| v.id).collect::<Vec<_>>(),
        (0..N / 2).collect::<Vec<_>>()
    );
    assert_eq!(log.dropped_total(), 0);
    drop(it);
    assert_eq!(
        log.dropped_total(),
        N - N / 2,
        "the iterator dropped the values it had left"
    );
    drop(taken);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn drain_partially_consumed_leaves_the_rest_in_the_queue() {
    let log = DropLog::new(N);
    let (mut q, collector) = filled(log);
    {
        let mut drain = q.drain();
        for id in 0..N / 4 {
            assert_eq!(drain.next().map(|v| v.id), Some(id));
        }
    }
    assert_eq!(
        log.dropped_total(),
        N / 4,
        "only the drained values were dropped"
    );
    assert_eq!(q.len(), N - N / 4, "the rest stay in the queue");
    assert_eq!(q.pop().map(|v| v.id), Some(N / 4));
    // A full drain empties the queue.
    assert_eq!(q.drain().count(), N - N / 4 - 1);
    assert!(q.is_empty());
    drop(q);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn concurrent_pushes_then_drop() {
    const THREADS: usize = 4;
    let per_thread = N / THREADS;
    let log = DropLog::new(per_thread * THREADS);
    let (q, collector) = local_queue();
    thread::scope(|s| {
        for t in 0..THREADS {
            let q = &q;
            s.spawn(move || {
                for i in 0..per_thread {
                    q.push(Tracked::new(t * per_thread + i, log));
                }
            });
        }
    });
    assert_eq!(q.len(), per_thread * THREADS);
    assert_eq!(log.dropped_total(), 0);
    drop(q);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn concurrent_push_and_pop_then_drop() {
    const THREADS: usize = 4;
    let per_thread = N / THREADS;
    let log = DropLog::new(per_thread * THREADS);
    let (q, collector) = local_queue();
    thread::scope(|s| {
        for t in 0..THREADS {
            let q = &q;
            s.spawn(move || {
                for i in 0..per_thread {
                    q.push(Tracked::new(t * per_thread + i, log));
                    // Every other round, pop one (someone's) value and drop it here.
                    if i % 2 == 1 {
                        drop(q.pop());
                    }
                }
            });
        }
    });
    let popped = THREADS * (per_thread / 2);
    assert_eq!(log.dropped_total(), popped);
    assert_eq!(q.len(), per_thread * THREADS - popped);
    drop(q);
    drop(collector);
    log.assert_all_dropped_once();
}

#[test]
fn global_collector_queue_drops_values_once() {
    // `MsQueue::new()`: retired blocks go to the global collector, which frees them at some later
    // time; values never depend on that, so the counts are exact as soon as the queue drops.
    let log = DropLog::new(N);
    let q = MsQueue::new();
    for id in 0..N {
        q.push(Tracked::new(id, log));
    }
    for _ in 0..N / 2 {
        drop(q.pop());
    }
    drop(q);
    // Let the global collector free what it can; a block destructor dropping a popped value
    // would then show as a second drop.
    for _ in 0..4 {
        crossbeam_epoch::pin().flush();
    }
    log.assert_all_dropped_once();
}
