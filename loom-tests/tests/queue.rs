//! loom models of `MsQueue`: push/pop races, reclamation inside the model, and the queue's drop.
//!
//! Each model builds its own `Collector`, so reclamation is exact within the model; every node is
//! a `Track`ed allocation under loom, so a node that is never freed fails the model. Payloads are
//! `Track`ed too, and `Dropped` records each value's drop, so a value lost, duplicated or dropped
//! twice fails it. Times and iteration counts are for `--release` at `LOOM_MAX_PREEMPTIONS=2` on
//! the 2-core CI machine.
#![cfg(loom)]

use crossbeam_epoch::Collector;
use latchless::queue::MsQueue;
use loom::alloc::Track;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;

/// A payload that records its own drop in a shared table, and fails on a second drop.
struct Dropped {
    id: usize,
    table: Arc<Vec<AtomicBool>>,
    _track: Track<()>,
}

impl Dropped {
    fn new(id: usize, table: &Arc<Vec<AtomicBool>>) -> Self {
        Self {
            id,
            table: table.clone(),
            _track: Track::new(()),
        }
    }
}

impl Drop for Dropped {
    fn drop(&mut self) {
        let was = self.table[self.id].swap(true, Ordering::SeqCst);
        assert!(!was, "value {} dropped twice", self.id);
    }
}

fn drop_table(n: usize) -> Arc<Vec<AtomicBool>> {
    Arc::new((0..n).map(|_| AtomicBool::new(false)).collect())
}

fn assert_all_dropped(table: &[AtomicBool]) {
    for (id, dropped) in table.iter().enumerate() {
        assert!(
            dropped.load(Ordering::SeqCst),
            "value {id} was never dropped"
        );
    }
}

/// Two producers push concurrently (the first two values, the second one, then pops once: it is
/// also the consumer); after the join the main thread drains the rest through exclusive access.
/// Every value comes out exactly once, each producer's values in push order.
// Measured: 22,380 executions, 6.0s (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn two_producers_one_consumer() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let mut q = Arc::new(MsQueue::with_collector(collector.clone()));
        let pusher = {
            let (q, collector) = (q.clone(), collector.clone());
            thread::spawn(move || {
                let handle = collector.register();
                let guard = handle.pin();
                q.push_with_guard((0, 0), &guard);
                q.push_with_guard((0, 1), &guard);
            })
        };
        let pusher_popper = {
            let (q, collector) = (q.clone(), collector.clone());
            thread::spawn(move || {
                let handle = collector.register();
                let guard = handle.pin();
                q.push_with_guard((1, 0), &guard);
                q.pop_with_guard(&guard)
            })
        };
        pusher.join().unwrap();
        let mut seen: Vec<(usize, usize)> = pusher_popper.join().unwrap().into_iter().collect();
        let q = Arc::get_mut(&mut q).expect("threads joined");
        assert_eq!(q.len(), 3 - seen.len());
        seen.extend(q.drain());
        assert_eq!(seen.len(), 3, "lost or duplicated values: {seen:?}");
        for (p, n) in [(0, 2), (1, 1)] {
            let mine: Vec<_> = seen.iter().filter(|v| v.0 == p).map(|v| v.1).collect();
            assert_eq!(
                mine,
                (0..n).collect::<Vec<_>>(),
                "producer {p} out of order: {seen:?}"
            );
        }
        assert!(q.is_empty());
    });
}

/// Two consumers race on a single value: one thread pops while the main thread pushes the value
/// and then pops too. Exactly one of them gets it, or it is still in the queue afterwards; it is
/// dropped once.
// Measured: 6,934 executions, 1.3s (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn two_consumers_race_on_last_element() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let table = drop_table(1);
        let mut q = Arc::new(MsQueue::<Dropped>::with_collector(collector.clone()));
        let consumer = {
            let (q, collector) = (q.clone(), collector.clone());
            thread::spawn(move || {
                let handle = collector.register();
                let got = q.pop_with_guard(&handle.pin());
                got.map(|v| v.id)
            })
        };
        let mine = {
            let handle = collector.register();
            let guard = handle.pin();
            q.push_with_guard(Dropped::new(0, &table), &guard);
            q.pop_with_guard(&guard).map(|v| v.id)
        };
        let theirs = consumer.join().unwrap();

        let q = Arc::get_mut(&mut q).expect("consumer joined");
        let left: Vec<usize> = q.drain().map(|v| v.id).collect();
        let got: Vec<usize> = [mine, theirs].into_iter().flatten().chain(left).collect();
        assert_eq!(got, [0], "mine={mine:?} theirs={theirs:?}");
        assert!(q.is_empty());
        assert_all_dropped(&table);
    });
}

/// Reclamation inside the model: a consumer pops, unpins, and flushes its garbage so the epoch
/// can advance and free retired nodes while another consumer may still hold them. Nodes and
/// values are `Track`ed: one never freed fails the model.
// Measured: 48,780 executions, 11.6s (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn reclamation_with_flush_races_pop() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let table = drop_table(2);
        let q = Arc::new(MsQueue::with_collector(collector.clone()));
        {
            let handle = collector.register();
            let guard = handle.pin();
            q.push_with_guard(Dropped::new(0, &table), &guard);
            q.push_with_guard(Dropped::new(1, &table), &guard);
        }

        let other = {
            let (q, collector) = (q.clone(), collector.clone());
            thread::spawn(move || {
                let handle = collector.register();
                // Bound to a local so that the guard (a temporary borrowing `handle`) is dropped
                // before `handle`: as a tail expression it would outlive it (edition 2021).
                #[allow(clippy::let_and_return)]
                let got = q.pop_with_guard(&handle.pin()).map(|v| v.id);
                got
            })
        };

        let handle = collector.register();
        let first = q.pop_with_guard(&handle.pin()).map(|v| v.id);
        // Unpinned between the two: the node retired above may be freed by this flush.
        handle.pin().flush();
        let second = q.pop_with_guard(&handle.pin()).map(|v| v.id);
        handle.pin().flush();
        let theirs = other.join().unwrap();

        let mut got: Vec<usize> = [first, second, theirs].into_iter().flatten().collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [0, 1],
            "first={first:?} second={second:?} theirs={theirs:?}"
        );
        assert_all_dropped(&table);
    });
}

/// Push and pop race with the queue's drop: whichever thread drops the last `Arc` drops the
/// queue, and every value is dropped exactly once — by its popper or by the queue.
// Measured: 24,782 executions, 6.0s (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn push_pop_race_with_drop() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let table = drop_table(3);
        let q = Arc::new(MsQueue::with_collector(collector.clone()));
        {
            let handle = collector.register();
            q.push_with_guard(Dropped::new(0, &table), &handle.pin());
        }

        let pusher = {
            let (q, collector, table) = (q.clone(), collector.clone(), table.clone());
            thread::spawn(move || {
                let handle = collector.register();
                let guard = handle.pin();
                q.push_with_guard(Dropped::new(1, &table), &guard);
                q.push_with_guard(Dropped::new(2, &table), &guard);
            })
        };
        let popper = {
            let (q, collector) = (q.clone(), collector.clone());
            thread::spawn(move || {
                let handle = collector.register();
                drop(q.pop_with_guard(&handle.pin()));
            })
        };
        drop(q);
        pusher.join().unwrap();
        popper.join().unwrap();
        drop(collector);
        assert_all_dropped(&table);
    });
}

/// Node reuse and trimming racing a stale reader: the main thread pops past two recycling points
/// (loom builds recycle every second pop and keep one retired node), flushing so the reuse markers
/// can pass their grace periods, which lets the second recycling point free retired nodes; then it
/// pushes again, possibly into a recycled node. Meanwhile another thread pops and may still hold
/// the nodes being recycled or freed. No value is lost, duplicated or dropped twice, and every
/// node is freed exactly once.
// Measured: 44,936 executions, 10.8s (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn node_reuse_races_pop() {
    latchless_loom_tests::model(|| {
        let collector = Collector::new();
        let table = drop_table(5);
        let mut q = Arc::new(MsQueue::<Dropped>::with_collector(collector.clone()));
        let handle = collector.register();
        {
            let guard = handle.pin();
            for id in 0..4 {
                q.push_with_guard(Dropped::new(id, &table), &guard);
            }
        }

        let other = {
            let (q, collector) = (q.clone(), collector.clone());
            thread::spawn(move || {
                let handle = collector.register();
                // Bound to a local so that the guard (a temporary borrowing `handle`) is dropped
                // before `handle`: as a tail expression it would outlive it (edition 2021).
                #[allow(clippy::let_and_return)]
                let got = q.pop_with_guard(&handle.pin()).map(|v| v.id);
                got
            })
        };

        let mut got: Vec<usize> = Vec::new();
        for _ in 0..3 {
            got.extend(q.pop_with_guard(&handle.pin()).map(|v| v.id));
            handle.pin().flush();
        }
        q.push_with_guard(Dropped::new(4, &table), &handle.pin());
        got.extend(other.join().unwrap());
        drop(handle);

        let q = Arc::get_mut(&mut q).expect("thread joined");
        got.extend(q.drain().map(|v| v.id));
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert_all_dropped(&table);
    });
}
