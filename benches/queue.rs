//! criterion benches of [`latchless::queue::MsQueue`] against the queues a user would pick
//! instead: `crossbeam_queue::SegQueue`, `concurrent_queue::ConcurrentQueue::unbounded`,
//! `Mutex<VecDeque>` and `crossbeam_channel::unbounded`.
//!
//! Groups are named after the workload:
//!
//! - `queue/single/push_pop`: one thread pushes a batch of 1000 values, then pops them all;
//! - `queue/spsc/1p1c`: one producer, one consumer;
//! - `queue/mpmc/2p2c`, `queue/mpmc/4p4c`: two or four producers and as many consumers (4p4c
//!   oversubscribes a 2-core machine on purpose).
//!
//! One iteration moves [`ELEMS`] values through the queue (`Throughput::Elements`). Threads are
//! spawned once per sample, released by a barrier, and timed from the first worker's start to the
//! last one's end. These are wall-clock numbers for development; the README's ratios come from
//! the interleaving harness in `benches/compare.rs`.
//!
//! ```text
//! cargo bench --bench queue
//! cargo bench --bench queue -- queue/mpmc/2p2c   # one group
//! ```

use criterion::{criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup};
use criterion::{Criterion, Throughput};
use crossbeam_channel::{Receiver, Sender};
use crossbeam_epoch::Guard;
use crossbeam_queue::SegQueue;
use latchless::queue::MsQueue;
use std::collections::VecDeque;
use std::hint::{black_box, spin_loop};
use std::ops::Range;
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Values moved through the queue per iteration; also the batch of `queue/single/push_pop`.
const ELEMS: u64 = 1000;
/// A pinned `MsQueue` worker repins its guard after this many operations.
const REPIN_EVERY: u32 = 64;
/// A consumer still short of its share this long after its sample started panics rather than
/// spin forever on values that were lost.
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(60);

/// A queue under test, seen through per-thread state so that a contender that profits from
/// per-thread setup (a pinned epoch guard) can use it.
trait BenchQueue: Sync {
    /// Per-thread state, made on the worker thread.
    type Local;
    fn make() -> Self;
    fn local(&self) -> Self::Local;
    fn push(&self, local: &mut Self::Local, v: u64);
    fn pop(&self, local: &mut Self::Local) -> Option<u64>;
}

impl BenchQueue for MsQueue<u64> {
    type Local = ();
    fn make() -> Self {
        MsQueue::new()
    }
    fn local(&self) {}
    fn push(&self, (): &mut (), v: u64) {
        MsQueue::push(self, v);
    }
    fn pop(&self, (): &mut ()) -> Option<u64> {
        MsQueue::pop(self)
    }
}

/// `MsQueue` driven through `push_with_guard`/`pop_with_guard`, each worker holding one guard
/// and repinning it every [`REPIN_EVERY`] operations.
struct MsQueuePinned(MsQueue<u64>);

/// A worker's guard and its operations since the last repin.
struct PinnedLocal {
    guard: Guard,
    ops: u32,
}

impl PinnedLocal {
    fn tick(&mut self) -> &Guard {
        self.ops += 1;
        if self.ops == REPIN_EVERY {
            self.ops = 0;
            self.guard.repin();
        }
        &self.guard
    }
}

impl BenchQueue for MsQueuePinned {
    type Local = PinnedLocal;
    fn make() -> Self {
        Self(MsQueue::new())
    }
    fn local(&self) -> PinnedLocal {
        PinnedLocal {
            guard: crossbeam_epoch::pin(),
            ops: 0,
        }
    }
    fn push(&self, local: &mut PinnedLocal, v: u64) {
        self.0.push_with_guard(v, local.tick());
    }
    fn pop(&self, local: &mut PinnedLocal) -> Option<u64> {
        self.0.pop_with_guard(local.tick())
    }
}

impl BenchQueue for SegQueue<u64> {
    type Local = ();
    fn make() -> Self {
        SegQueue::new()
    }
    fn local(&self) {}
    fn push(&self, (): &mut (), v: u64) {
        SegQueue::push(self, v);
    }
    fn pop(&self, (): &mut ()) -> Option<u64> {
        SegQueue::pop(self)
    }
}

impl BenchQueue for concurrent_queue::ConcurrentQueue<u64> {
    type Local = ();
    fn make() -> Self {
        concurrent_queue::ConcurrentQueue::unbounded()
    }
    fn local(&self) {}
    fn push(&self, (): &mut (), v: u64) {
        concurrent_queue::ConcurrentQueue::push(self, v).expect("unbounded and never closed");
    }
    fn pop(&self, (): &mut ()) -> Option<u64> {
        concurrent_queue::ConcurrentQueue::pop(self).ok()
    }
}

impl BenchQueue for Mutex<VecDeque<u64>> {
    type Local = ();
    fn make() -> Self {
        Mutex::new(VecDeque::new())
    }
    fn local(&self) {}
    fn push(&self, (): &mut (), v: u64) {
        self.lock().unwrap().push_back(v);
    }
    fn pop(&self, (): &mut ()) -> Option<u64> {
        self.lock().unwrap().pop_front()
    }
}

/// Both ends of an unbounded crossbeam channel.
struct Channel(Sender<u64>, Receiver<u64>);

impl BenchQueue for Channel {
    type Local = ();
    fn make() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self(tx, rx)
    }
    fn local(&self) {}
    fn push(&self, (): &mut (), v: u64) {
        self.0
            .send(v)
            .expect("the receiver lives as long as the sender");
    }
    fn pop(&self, (): &mut ()) -> Option<u64> {
        self.1.try_recv().ok()
    }
}

/// The `i`-th of `parts` near-equal slices of `0..total`.
fn share(total: u64, parts: u64, i: u64) -> Range<u64> {
    total * i / parts..total * (i + 1) / parts
}

/// A worker's body.
type Job<'env> = Box<dyn FnOnce() + Send + 'env>;

/// Runs `jobs` on one thread each, released together by a barrier, and returns the time from
/// the first worker's start to the last one's end (read by the workers: with more threads than
/// cores, the released threads start one after another).
fn run_workers(jobs: Vec<Job<'_>>) -> Duration {
    let barrier = Barrier::new(jobs.len());
    thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    job();
                    (start, Instant::now())
                })
            })
            .collect();
        let times: Vec<(Instant, Instant)> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        let first = times.iter().map(|t| t.0).min();
        let last = times.iter().map(|t| t.1).max();
        last.zip(first)
            .map_or(Duration::ZERO, |(last, first)| last - first)
    })
}

/// Pushes `values`.
fn produce<Q: BenchQueue>(q: &Q, values: Range<u64>) {
    let mut local = q.local();
    for v in values {
        q.push(&mut local, v);
    }
}

/// Pops exactly `quota` values. On an empty queue it spins a little, then yields (the producer
/// it waits for may need this core); past `deadline` it panics.
fn consume<Q: BenchQueue>(q: &Q, quota: u64, deadline: Instant) {
    let mut local = q.local();
    let mut got = 0u64;
    let mut idle = 0u32;
    while got < quota {
        if let Some(v) = q.pop(&mut local) {
            black_box(v);
            got += 1;
            idle = 0;
        } else {
            idle = idle.wrapping_add(1);
            if idle < 64 {
                spin_loop();
            } else {
                thread::yield_now();
                if idle % 1024 == 0 && Instant::now() > deadline {
                    panic!("consumer gave up: {got} of {quota} values popped before the deadline");
                }
            }
        }
    }
}

/// `iters` iterations of `queue/single/push_pop` on a fresh `Q`: push [`ELEMS`] values, pop them.
fn single<Q: BenchQueue>(iters: u64) -> Duration {
    let q = Q::make();
    let q = &q;
    run_workers(vec![Box::new(move || {
        let mut local = q.local();
        for _ in 0..iters {
            for v in 0..ELEMS {
                q.push(&mut local, v);
            }
            for _ in 0..ELEMS {
                black_box(q.pop(&mut local).expect("a value pushed by this thread"));
            }
        }
    })])
}

/// `iters` iterations of a producer/consumer workload on a fresh `Q`: `producers` threads push
/// `iters * ELEMS` values between them, `consumers` threads pop as many.
///
/// Each consumer pops a fixed share rather than racing on a shared "popped" counter, which would
/// add one contended atomic per element to every contender alike; as every value is pushed, every
/// share is eventually met.
fn mpmc<Q: BenchQueue>(producers: u64, consumers: u64, iters: u64) -> Duration {
    let q = Q::make();
    let q = &q;
    let total = iters * ELEMS;
    let deadline = Instant::now() + CONSUMER_TIMEOUT;
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for i in 0..producers {
        let values = share(total, producers, i);
        jobs.push(Box::new(move || produce(q, values)));
    }
    for i in 0..consumers {
        let r = share(total, consumers, i);
        jobs.push(Box::new(move || consume(q, r.end - r.start, deadline)));
    }
    run_workers(jobs)
}

/// The threads of a group.
#[derive(Clone, Copy)]
enum Shape {
    Single,
    Mpmc { producers: u64, consumers: u64 },
}

/// Adds contender `Q` to `group` under `id`.
fn contender<Q: BenchQueue>(group: &mut BenchmarkGroup<'_, WallTime>, id: &str, shape: Shape) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| match shape {
            Shape::Single => single::<Q>(iters),
            Shape::Mpmc {
                producers,
                consumers,
            } => mpmc::<Q>(producers, consumers, iters),
        });
    });
}

fn queues(c: &mut Criterion) {
    let groups = [
        ("queue/single/push_pop", Shape::Single),
        (
            "queue/spsc/1p1c",
            Shape::Mpmc {
                producers: 1,
                consumers: 1,
            },
        ),
        (
            "queue/mpmc/2p2c",
            Shape::Mpmc {
                producers: 2,
                consumers: 2,
            },
        ),
        (
            "queue/mpmc/4p4c",
            Shape::Mpmc {
                producers: 4,
                consumers: 4,
            },
        ),
    ];
    for (name, shape) in groups {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(ELEMS))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        contender::<MsQueue<u64>>(&mut g, "latchless_MsQueue", shape);
        contender::<MsQueuePinned>(&mut g, "latchless_MsQueue_guard", shape);
        contender::<SegQueue<u64>>(&mut g, "crossbeam_SegQueue", shape);
        contender::<concurrent_queue::ConcurrentQueue<u64>>(&mut g, "ConcurrentQueue", shape);
        contender::<Mutex<VecDeque<u64>>>(&mut g, "Mutex_VecDeque", shape);
        contender::<Channel>(&mut g, "crossbeam_channel", shape);
        g.finish();
    }
}

criterion_group!(benches, queues);
criterion_main!(benches);
