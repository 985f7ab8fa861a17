//! criterion benches of [`latchless::batch`]'s dispatch overhead: requests/s through a
//! [`Batcher`] whose handler does nothing (`|xs| xs`), against what a user might hand-roll
//! instead: a `crossbeam_channel::unbounded` of (request, reply sender) drained by a batching loop
//! thread (block for one request, `try_recv` up to the batch size, run the handler, reply through
//! each request's own `crossbeam_channel::bounded(1)`).
//!
//! Groups `batch/dispatch_noop/{1t,2t,4t}`: that many client threads (4 oversubscribe a 2-core
//! machine on purpose, and each side has its worker thread too), each either
//! - `*_call`: one request at a time (`Batcher::call`, or send then receive), so a batch never
//!   holds more than one request per client; or
//! - `*_window64`: submits 64 requests, then waits for all 64 replies: how batching pays off.
//!
//! Both sides form batches of up to 64 greedily (the batcher with `max_wait` zero, as the
//! baseline never waits either), and every reply is checked. The batcher runs twice: with one
//! worker (`latchless_*`) and with a pool of two (`latchless_pool2_*`, `spawn_pool`), so the
//! pool's gain or cost on dispatch alone shows next to the single worker's. One iteration is [`ELEMS`] requests
//! split between the threads (`Throughput::Elements`). Threads are spawned once per sample,
//! released by a barrier, and timed from the first client's start to the last one's end (by the
//! worker runner in `benches/common/`). These are wall-clock numbers on a shared machine, for
//! development; after each contender the mean batch size it reached is printed to stderr, and
//! for the batcher the distribution of its batch sizes and queue times under that load (from
//! `Batcher::histograms`).
//!
//! Group `batch/steps_noop/32_active`: continuous batching's per-step dispatch overhead, one
//! iteration being one step over 32 running items whose step function does nothing (see
//! [`steps_noop`]).
//!
//! Group `batch/joins_noop/8_running`: continuous batching's joins per second, one iteration
//! being one request that joins a batch of 8 running items and finishes at its first step, all
//! no-ops: one at a time (`1_by_1`, a join's round trip) or 32 in flight (`window32`); see
//! [`joins_noop`].
//!
//! ```text
//! cargo bench --bench batch
//! cargo bench --bench batch -- batch/dispatch_noop/2t   # one group
//! cargo bench --bench batch -- joins                     # joins per second only
//! ```

#[allow(dead_code)]
mod common;

use common::dispatch::{batcher, clients, ChannelBatcher, Dispatch, Mode};
use common::workers::run_workers;
use criterion::{criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup};
use criterion::{Criterion, Throughput};
use latchless::batch::{Batcher, JoinPolicy, Joined, Step, StepHandler, StreamBatcher};
use std::time::{Duration, Instant};

/// Requests per iteration, over all threads.
const ELEMS: u64 = 1024;

/// `iters` iterations: `threads` clients share `iters * ELEMS` requests through `d`. Returns the
/// time from the first client's start to the last one's end.
fn run<D: Dispatch>(d: &D, mode: Mode, threads: u64, iters: u64) -> Duration {
    run_workers(clients(d, mode, threads, iters * ELEMS)).0.wall
}

/// Adds contender `d` to `group` under `id`, then reports the mean batch size it reached.
fn contender<D: Dispatch>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    group_name: &str,
    id: &str,
    d: &D,
    mode: Mode,
    threads: u64,
) {
    let (b0, r0) = d.batches();
    group.bench_function(id, |b| b.iter_custom(|iters| run(d, mode, threads, iters)));
    let (b1, r1) = d.batches();
    if b1 > b0 {
        eprintln!(
            "{group_name}/{id}: mean batch size {:.2} over {} batches",
            (r1 - r0) as f64 / (b1 - b0) as f64,
            b1 - b0
        );
    }
}

fn dispatch_noop(c: &mut Criterion) {
    for threads in [1u64, 2, 4] {
        let name = format!("batch/dispatch_noop/{threads}t");
        let mut g = c.benchmark_group(&name);
        g.throughput(Throughput::Elements(ELEMS))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for (id, mode) in [("call", Mode::Call), ("window64", Mode::Window)] {
            for (workers, tag) in [(1, ""), (2, "_pool2")] {
                let ours = batcher(workers);
                contender(
                    &mut g,
                    &name,
                    &format!("latchless{tag}_{id}"),
                    &ours,
                    mode,
                    threads,
                );
                ours.shutdown();
                let h = ours.histograms();
                eprintln!(
                    "{name}/latchless{tag}_{id}: batch size p50 {} p90 {} p99 {} max {}; queue time p50 {} us p99 {} us",
                    h.batch_size.quantile(0.5),
                    h.batch_size.quantile(0.9),
                    h.batch_size.quantile(0.99),
                    h.batch_size.max(),
                    h.queue_time.quantile(0.5),
                    h.queue_time.quantile(0.99),
                );
            }
            let baseline = ChannelBatcher::spawn(|xs| xs);
            contender(
                &mut g,
                &name,
                &format!("channel_{id}"),
                &baseline,
                mode,
                threads,
            );
        }
        g.finish();
    }
}

/// A no-op step-wise handler: item `n` runs `n` steps, each doing nothing (`Step::Continue`, or
/// a `Step::Chunk(())` with `CHUNKS`), then finishes.
struct NoopSteps<const CHUNKS: bool>;

impl<const CHUNKS: bool> StepHandler for NoopSteps<CHUNKS> {
    type Req = u64;
    type State = u64;
    type Chunk = ();
    type Out = ();

    fn join(&mut self, reqs: Vec<u64>) -> Vec<Joined<u64, ()>> {
        reqs.into_iter().map(Joined::Running).collect()
    }

    fn step(&mut self, items: &mut [u64]) -> Vec<Step<(), ()>> {
        items
            .iter_mut()
            .map(|left| match *left {
                0 => Step::Finish(()),
                _ => {
                    *left -= 1;
                    if CHUNKS {
                        Step::Chunk(())
                    } else {
                        Step::Continue
                    }
                }
            })
            .collect()
    }
}

/// Items running at once in the step benches (the issue's target: below 5 us per step at 32).
const ACTIVE: u64 = 32;

/// `iters` steps over [`ACTIVE`] items through `b`: submits the items, each for `iters` steps,
/// and waits for every final item. One iteration is one step of the whole batch.
fn run_steps(b: &StreamBatcher<u64, (), ()>, iters: u64) -> Duration {
    let start = Instant::now();
    let streams: Vec<_> = (0..ACTIVE).map(|_| b.submit(iters).unwrap()).collect();
    for s in streams {
        assert!(s.last().is_some_and(|i| i.is_done()));
    }
    start.elapsed()
}

/// Per-step dispatch overhead of continuous batching: `batch/steps_noop/32_active/{continue,
/// chunk}`: one iteration is one step over 32 running items whose step does nothing, streaming
/// nothing (`continue`) or an empty chunk per item (`chunk`; read by the client after the item
/// finished). The joins are amortised over the steps.
fn steps_noop(c: &mut Criterion) {
    let name = "batch/steps_noop/32_active";
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let quiet = Batcher::builder()
        .max_batch_size(ACTIVE as usize)
        .join_policy(JoinPolicy::eager())
        .spawn_steps(NoopSteps::<false>)
        .unwrap();
    g.bench_function("continue", |b| {
        b.iter_custom(|iters| run_steps(&quiet, iters))
    });
    let chunky = Batcher::builder()
        .max_batch_size(ACTIVE as usize)
        .join_policy(JoinPolicy::eager())
        .spawn_steps(NoopSteps::<true>)
        .unwrap();
    g.bench_function("chunk", |b| {
        b.iter_custom(|iters| run_steps(&chunky, iters))
    });
    g.finish();
}

/// Items kept running through the join benches, so that every join is into a running batch.
const RUNNING: u64 = 8;

/// Requests in flight at once in the windowed join bench.
const WINDOW: u64 = 32;

/// `iters` joins through `b`, each of a request that finishes at its first step, `window` in
/// flight at a time: submits `window` requests, waits for their final items, and so on.
fn run_joins(b: &StreamBatcher<u64, (), ()>, iters: u64, window: u64) -> Duration {
    let start = Instant::now();
    let mut left = iters;
    while left > 0 {
        let n = left.min(window);
        let streams: Vec<_> = (0..n).map(|_| b.submit(0).unwrap()).collect();
        for s in streams {
            assert!(s.last().is_some_and(|i| i.is_done()));
        }
        left -= n;
    }
    start.elapsed()
}

/// Joins per second into a running batch: `batch/joins_noop/8_running/{1_by_1, window32}`. The
/// batch holds [`RUNNING`] items that never finish (no-op steps), and each iteration is one
/// request that joins it and finishes at its first step (its no-op join, then one no-op step),
/// under the eager join policy: submitted one at a time, each waiting for the previous one's
/// final item (`1_by_1`: a join's round trip, submit to final item), or [`WINDOW`] at a time
/// (`window32`: joins of several items at once, as under load).
fn joins_noop(c: &mut Criterion) {
    let name = "batch/joins_noop/8_running";
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let b = Batcher::builder()
        .max_batch_size((RUNNING + WINDOW) as usize)
        .join_policy(JoinPolicy::eager())
        .spawn_steps(NoopSteps::<false>)
        .unwrap();
    // Never finish within a run; dropped (cancelled) at the end.
    let running: Vec<_> = (0..RUNNING).map(|_| b.submit(u64::MAX).unwrap()).collect();
    for (id, window) in [("1_by_1", 1), ("window32", WINDOW)] {
        g.bench_function(id, |bench| {
            bench.iter_custom(|iters| run_joins(&b, iters, window))
        });
    }
    g.finish();
    drop(running);
    b.shutdown();
}

criterion_group!(benches, dispatch_noop, steps_noop, joins_noop);
criterion_main!(benches);
