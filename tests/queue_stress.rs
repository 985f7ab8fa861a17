//! Queue stress: many threads hammering one `MsQueue`, then an exact check of the outcome.
//!
//! 4 producers x 4 consumers; every value is seen exactly once, and each consumer sees every
//! producer's values in the order that producer pushed them. Once with crossbeam-epoch's global
//! collector, once with a local collector (retired blocks freed through it). The counters'
//! stress tests are `tests/counter_stress.rs`.
//!
//! The queue's total is `LATCHLESS_STRESS_N` values (default 1,000,000; 2,000 under Miri).

use crossbeam_epoch::Collector;
use latchless::queue::MsQueue;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

#[path = "common/stress_env.rs"]
mod stress_env;

use stress_env::stress_n_split;

const PRODUCERS: usize = 4;
const CONSUMERS: usize = 4;

/// Total number of values pushed through the queue, rounded down to a multiple of `PRODUCERS`.
fn total_values() -> usize {
    stress_n_split(if cfg!(miri) { 1_200 } else { 1_000_000 }, PRODUCERS)
}

/// A value carries its producer in the high half and its sequence number in the low half.
fn encode(producer: usize, seq: usize) -> u64 {
    ((producer as u64) << 32) | seq as u64
}

fn decode(v: u64) -> (usize, usize) {
    ((v >> 32) as usize, (v & 0xffff_ffff) as usize)
}

/// Counts a producer as finished when dropped, even if it panicked, so consumers never wait for
/// a producer that is gone.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        // Release: pairs with the consumers' Acquire load, so all of this producer's pushes
        // happen before a consumer that sees the count concludes the queue is drained.
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Raises the flag if its thread panics, so the other threads stop instead of spinning on a
/// queue that is known to be broken (the panic itself fails the test at `join`).
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            // Relaxed: only tells the others to stop; no data is published through it.
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs 4 producers and 4 consumers over `q`, then checks exactly-once delivery and
/// per-producer FIFO order as seen by every consumer.
fn mpmc(q: &MsQueue<u64>) {
    let total = total_values();
    let per_producer = total / PRODUCERS;
    let seen: Vec<AtomicBool> = (0..total).map(|_| AtomicBool::new(false)).collect();
    let producers_done = AtomicUsize::new(0);
    let popped = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);

    thread::scope(|s| {
        for p in 0..PRODUCERS {
            let (producers_done, stop) = (&producers_done, &stop);
            s.spawn(move || {
                let _finished = Finished(producers_done);
                let _stop = StopOnPanic(stop);
                for seq in 0..per_producer {
                    q.push(encode(p, seq));
                }
            });
        }
        for _ in 0..CONSUMERS {
            let (seen, producers_done, popped, stop) = (&seen, &producers_done, &popped, &stop);
            s.spawn(move || {
                let _stop = StopOnPanic(stop);
                let mut last_seq: [Option<usize>; PRODUCERS] = [None; PRODUCERS];
                while !stop.load(Ordering::Relaxed) {
                    // Read the flag before popping: if every producer had finished before this
                    // load and the pop still finds nothing, the queue is empty for good.
                    let all_pushed = producers_done.load(Ordering::Acquire) == PRODUCERS;
                    let Some(v) = q.pop() else {
                        if all_pushed {
                            break;
                        }
                        thread::yield_now();
                        continue;
                    };
                    let (p, seq) = decode(v);
                    assert!(
                        p < PRODUCERS && seq < per_producer,
                        "value {v:#x} was never pushed"
                    );
                    if let Some(prev) = last_seq[p] {
                        assert!(
                            seq > prev,
                            "producer {p}: seq {seq} popped after seq {prev} by the same consumer"
                        );
                    }
                    last_seq[p] = Some(seq);
                    let already = seen[p * per_producer + seq].swap(true, Ordering::Relaxed);
                    assert!(!already, "producer {p} seq {seq} popped twice");
                    let n = popped.fetch_add(1, Ordering::Relaxed) + 1;
                    assert!(n <= total, "more values popped than pushed");
                }
            });
        }
    });

    assert_eq!(popped.load(Ordering::Relaxed), total, "values popped");
    let missing: Vec<(usize, usize)> = seen
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.load(Ordering::Relaxed))
        .map(|(i, _)| (i / per_producer, i % per_producer))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "never popped (first 10 as (producer, seq)): {missing:?}"
    );
    assert!(q.is_empty());
    assert_eq!(q.len(), 0);
    assert_eq!(q.pop(), None);
}

#[test]
fn queue_mpmc_4p4c_global_collector() {
    let q = MsQueue::new();
    mpmc(&q);
}

#[test]
fn queue_mpmc_4p4c_local_collector() {
    let q = MsQueue::with_collector(Collector::new());
    mpmc(&q);
}
