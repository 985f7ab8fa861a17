//! shuttle tests of `MsQueue`: four threads that each push and pop a sequence of values (up to
//! ten operations each), then the main thread drains part of the rest and drops the queue with
//! the remainder. Every value is delivered exactly once (popped once, or dropped once with the
//! queue), each consumer sees each producer's values in the order they were pushed, `len` is
//! exact once the threads have joined, and every value is dropped exactly once (a live count).
//!
//! Why shuttle: more threads and longer sequences than loom's three threads of two operations.
//! Under shuttle a block has four slots, so these sequences cross many block boundaries (link,
//! swing, help, retire) and pops race pushes between their claim and their write (the pop gives
//! the slot up at once under shuttle, which has no clock to spin by).
//!
//! What it sees: every atomic of the queue is the shim's (the positions, the block pointers, each
//! block's `next` and each slot's state), so each is a schedule point. What it cannot see,
//! honestly: weak orderings (shuttle runs everything `SeqCst`) and crossbeam-epoch's own atomics
//! (pins on the boundary paths, deferred frees). Orderings and reclamation are loom's to check
//! (loom-tests/tests/queue.rs); this test checks delivery, FIFO order and bookkeeping over long
//! interleaved sequences.
#![cfg(shuttle)]

use crossbeam_epoch::Collector;
use latchless::queue::MsQueue;
use shuttle::thread;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

const THREADS: usize = 4;
/// Each thread's script: `true` pushes its next value, `false` pops.
const SCRIPT: [bool; 9] = [true, true, false, true, false, true, true, false, false];

/// A value that counts itself: `live` is the number of `Item`s not yet dropped. std atomics: not
/// schedule points (every shuttle thread runs on one OS thread), so counting adds no
/// interleavings.
#[derive(Debug)]
struct Item {
    producer: usize,
    seq: usize,
    live: Arc<AtomicUsize>,
}

impl Item {
    fn new(producer: usize, seq: usize, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, SeqCst);
        Self {
            producer,
            seq,
            live: Arc::clone(live),
        }
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        let before = self.live.fetch_sub(1, SeqCst);
        assert!(before > 0, "an item was dropped twice");
    }
}

/// Checks one consumer's pops: each producer's values arrive in push order.
fn assert_fifo_per_producer(popped: &[(usize, usize)]) {
    let mut last = [None; THREADS];
    for &(p, s) in popped {
        assert!(
            last[p].is_none_or(|prev| prev < s),
            "producer {p}: {s} after {:?}",
            last[p]
        );
        last[p] = Some(s);
    }
}

/// Four threads push and pop per `SCRIPT`; then exactly-once delivery, per-producer FIFO, an
/// exact `len` and exact drops.
// Measured: 20,000 random + 20,000 PCT schedules, 3.6 s (release, 2-core machine).
#[test]
fn push_pop_exactly_once() {
    latchless_shuttle_tests::explore(20_000, 20_000, || {
        let live = Arc::new(AtomicUsize::new(0));
        let collector = Collector::new();
        let q = Arc::new(MsQueue::with_collector(collector.clone()));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (q, live) = (Arc::clone(&q), Arc::clone(&live));
                thread::spawn(move || {
                    let mut pushed = 0;
                    let mut popped = Vec::new();
                    for &push in &SCRIPT {
                        if push {
                            q.push(Item::new(t, pushed, &live));
                            pushed += 1;
                        } else if let Some(it) = q.pop() {
                            popped.push((it.producer, it.seq));
                        }
                    }
                    (pushed, popped)
                })
            })
            .collect();
        let mut pushed_total = 0;
        let mut seen = BTreeSet::new();
        for t in threads {
            let (pushed, popped) = t.join().unwrap();
            pushed_total += pushed;
            assert_fifo_per_producer(&popped);
            for v in popped {
                assert!(seen.insert(v), "{v:?} popped twice");
            }
        }
        let left = pushed_total - seen.len();
        assert_eq!(q.len(), left, "len after join");
        assert_eq!(live.load(SeqCst), left, "items alive besides those queued");
        // Drain half of the rest, in order; drop the queue with the other half inside.
        let mut drained = Vec::new();
        for _ in 0..left / 2 {
            let it = q.pop().expect("len said there was more");
            drained.push((it.producer, it.seq));
        }
        assert_fifo_per_producer(&drained);
        for v in drained {
            assert!(seen.insert(v), "{v:?} popped twice");
        }
        let mut q = Arc::into_inner(q).expect("every thread joined");
        let rest: Vec<_> = q.drain().take(1).map(|it| (it.producer, it.seq)).collect();
        for v in rest {
            assert!(seen.insert(v), "{v:?} popped twice");
        }
        let remaining = pushed_total - seen.len();
        assert_eq!(q.len(), remaining);
        assert_eq!(live.load(SeqCst), remaining);
        // Every value popped was one pushed.
        let per_producer = SCRIPT.iter().filter(|p| **p).count();
        assert!(seen.iter().all(|&(p, s)| p < THREADS && s < per_producer));
        // The queue drops the rest, each once (a second drop fails in `Item::drop`).
        drop(q);
        drop(collector);
        assert_eq!(live.load(SeqCst), 0, "items leaked");
    });
}
