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
//! last one's end. These are wall-clock numbers for development; BENCHMARKS.md's ratios come from
//! the interleaving harness in `benches/compare.rs`. The contenders and their workers are in
//! `benches/common/`, shared with it.
//!
//! ```text
//! cargo bench --bench queue
//! cargo bench --bench queue -- queue/mpmc/2p2c   # one group
//! ```

#[allow(dead_code)]
mod common;

use common::queues::{self, BenchQueue, Channel};
use common::workers::run_workers;
use criterion::{criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup};
use criterion::{Criterion, Throughput};
use crossbeam_queue::SegQueue;
use latchless::queue::MsQueue;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Values moved through the queue per iteration; also the batch of `queue/single/push_pop`.
const ELEMS: u64 = 1000;
/// A consumer still short of its share this long after its sample started panics rather than
/// spin forever on values that were lost.
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(60);

/// `iters` iterations of `queue/single/push_pop` on a fresh `Q`: push [`ELEMS`] values, pop them.
fn single<Q: BenchQueue>(iters: u64) -> Duration {
    let q = Q::make();
    let q = &q;
    run_workers(vec![move || queues::single(q, iters * ELEMS, ELEMS)])
        .0
        .wall
}

/// `iters` iterations of a producer/consumer workload on a fresh `Q`: `producers` threads push
/// `iters * ELEMS` values between them, `consumers` threads pop as many.
fn mpmc<Q: BenchQueue>(producers: u64, consumers: u64, iters: u64) -> Duration {
    let q = Q::make();
    let deadline = Instant::now() + CONSUMER_TIMEOUT;
    let jobs = queues::mpmc_jobs(&q, producers, consumers, iters * ELEMS, deadline);
    run_workers(jobs).0.wall
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
        contender::<SegQueue<u64>>(&mut g, "crossbeam_SegQueue", shape);
        contender::<concurrent_queue::ConcurrentQueue<u64>>(&mut g, "ConcurrentQueue", shape);
        contender::<Mutex<VecDeque<u64>>>(&mut g, "Mutex_VecDeque", shape);
        contender::<Channel>(&mut g, "crossbeam_channel", shape);
        g.finish();
    }
}

criterion_group!(benches, queues);
criterion_main!(benches);
