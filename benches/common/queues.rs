//! The queue contenders of `benches/queue.rs`, `benches/compare.rs` and
//! `benches/queue_memory.rs`: latchless's `MsQueue`, `crossbeam_queue::SegQueue`,
//! `concurrent_queue::ConcurrentQueue::unbounded`, `Mutex<VecDeque>` and
//! `crossbeam_channel::unbounded`, behind [`BenchQueue`], with the workers that drive them.

use super::workers::{share, share_len, Job};
use crossbeam_channel::{Receiver, Sender};
use crossbeam_queue::SegQueue;
use latchless::queue::MsQueue;
use std::collections::VecDeque;
use std::hint::{black_box, spin_loop};
use std::ops::Range;
use std::sync::Mutex;
use std::thread;
use std::time::Instant;

/// A queue under test.
pub(crate) trait BenchQueue: Sync {
    fn make() -> Self;
    fn push(&self, v: u64);
    fn pop(&self) -> Option<u64>;
}

impl BenchQueue for MsQueue<u64> {
    fn make() -> Self {
        MsQueue::new()
    }
    fn push(&self, v: u64) {
        MsQueue::push(self, v);
    }
    fn pop(&self) -> Option<u64> {
        MsQueue::pop(self)
    }
}

impl BenchQueue for SegQueue<u64> {
    fn make() -> Self {
        SegQueue::new()
    }
    fn push(&self, v: u64) {
        SegQueue::push(self, v);
    }
    fn pop(&self) -> Option<u64> {
        SegQueue::pop(self)
    }
}

impl BenchQueue for concurrent_queue::ConcurrentQueue<u64> {
    fn make() -> Self {
        concurrent_queue::ConcurrentQueue::unbounded()
    }
    fn push(&self, v: u64) {
        concurrent_queue::ConcurrentQueue::push(self, v).expect("unbounded and never closed");
    }
    fn pop(&self) -> Option<u64> {
        concurrent_queue::ConcurrentQueue::pop(self).ok()
    }
}

impl BenchQueue for Mutex<VecDeque<u64>> {
    fn make() -> Self {
        Mutex::new(VecDeque::new())
    }
    fn push(&self, v: u64) {
        self.lock().unwrap().push_back(v);
    }
    fn pop(&self) -> Option<u64> {
        self.lock().unwrap().pop_front()
    }
}

/// Both ends of an unbounded crossbeam channel.
pub(crate) struct Channel(Sender<u64>, Receiver<u64>);

impl BenchQueue for Channel {
    fn make() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self(tx, rx)
    }
    fn push(&self, v: u64) {
        self.0
            .send(v)
            .expect("the receiver lives as long as the sender");
    }
    fn pop(&self) -> Option<u64> {
        self.1.try_recv().ok()
    }
}

/// Pushes `values`; returns 0, a producer's share of the checksum.
pub(crate) fn produce<Q: BenchQueue>(q: &Q, values: Range<u64>) -> u64 {
    for v in values {
        q.push(v);
    }
    0
}

/// Pops exactly `quota` values and returns their sum. On an empty queue it spins a little, then
/// yields (4 threads oversubscribe 2 cores: the producer it waits for may need this core); past
/// `deadline` it panics instead of spinning forever on values that were lost.
pub(crate) fn consume<Q: BenchQueue>(q: &Q, quota: u64, deadline: Instant) -> u64 {
    let mut got = 0u64;
    let mut sum = 0u64;
    let mut idle = 0u32;
    while got < quota {
        if let Some(v) = q.pop() {
            sum = sum.wrapping_add(black_box(v));
            got += 1;
            idle = 0;
        } else {
            idle = idle.wrapping_add(1);
            if idle < 64 {
                spin_loop();
            } else {
                thread::yield_now();
                if idle.is_multiple_of(1024) && Instant::now() > deadline {
                    panic!("consumer gave up: {got} of {quota} values popped before the deadline");
                }
            }
        }
    }
    sum
}

/// One thread pushes a batch of `batch` values and pops them all, `ops` values in all; returns
/// the sum of the values popped.
pub(crate) fn single<Q: BenchQueue>(q: &Q, ops: u64, batch: u64) -> u64 {
    let mut sum = 0u64;
    let mut next = 0u64;
    while next < ops {
        let end = (next + batch).min(ops);
        for v in next..end {
            q.push(v);
        }
        for _ in next..end {
            let v = q.pop().expect("a value pushed by this thread");
            sum = sum.wrapping_add(black_box(v));
        }
        next = end;
    }
    sum
}

/// The workers of a producer/consumer run on `q`: `producers` threads push the values `0..total`
/// between them, `consumers` threads pop as many, each returning the sum of what it popped.
///
/// Each consumer pops a fixed share rather than racing on a shared "popped" counter, which would
/// add one contended atomic per element to every contender alike; as every value is pushed, every
/// share is eventually met (or `deadline` passes, and the consumer panics).
pub(crate) fn mpmc_jobs<Q: BenchQueue>(
    q: &Q,
    producers: u64,
    consumers: u64,
    total: u64,
    deadline: Instant,
) -> Vec<Job<'_, u64>> {
    let mut jobs: Vec<Job<'_, u64>> = Vec::new();
    for i in 0..producers {
        let values = share(total, producers, i);
        jobs.push(Box::new(move || produce(q, values)));
    }
    for i in 0..consumers {
        let quota = share_len(total, consumers, i);
        jobs.push(Box::new(move || consume(q, quota, deadline)));
    }
    jobs
}

/// Sum of `0..n`, the checksum of a queue run that lost and duplicated nothing.
pub(crate) fn expected_checksum(n: u64) -> u64 {
    (0..n).fold(0u64, |acc, v| acc.wrapping_add(v))
}
