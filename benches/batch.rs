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
//! ```text
//! cargo bench --bench batch
//! cargo bench --bench batch -- batch/dispatch_noop/2t   # one group
//! ```

#[allow(dead_code)]
mod common;

use common::workers::{run_workers, share};
use criterion::{criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup};
use criterion::{Criterion, Throughput};
use crossbeam_channel::{bounded, unbounded, Sender};
use latchless::batch::Batcher;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Requests per iteration, over all threads.
const ELEMS: u64 = 1024;
/// Requests a `*_window64` client submits before it waits.
const WINDOW: u64 = 64;
/// The most requests in one batch, on both sides.
const MAX_BATCH: usize = 64;

/// A way to get requests answered by worker threads running a batch handler.
trait Dispatch: Sync {
    /// One request, waiting for its reply.
    fn call(&self, x: u64) -> u64;
    /// Submits every request of `xs`, then waits for each reply, appending them to `out` in order.
    fn window(&self, xs: Range<u64>, out: &mut Vec<u64>);
    /// Batches run and requests answered so far, for the mean batch size.
    fn batches(&self) -> (u64, u64);
}

impl Dispatch for Batcher<u64, u64> {
    fn call(&self, x: u64) -> u64 {
        Batcher::call(self, x).expect("never refused: max_queue covers every window")
    }

    fn window(&self, xs: Range<u64>, out: &mut Vec<u64>) {
        let pending: Vec<_> = xs.map(|x| self.submit(x).expect("never refused")).collect();
        out.extend(
            pending
                .into_iter()
                .map(|p| p.wait().expect("no-op handler")),
        );
    }

    fn batches(&self) -> (u64, u64) {
        let s = self.stats();
        (s.batches, s.completed)
    }
}

/// The baseline: a channel of (request, reply sender) and a hand-rolled batching loop.
struct ChannelBatcher {
    requests: Option<Sender<(u64, Sender<u64>)>>,
    worker: Option<JoinHandle<()>>,
    /// Batches run and requests answered, counted by the worker.
    batches: Arc<(AtomicU64, AtomicU64)>,
}

impl ChannelBatcher {
    fn spawn(mut handler: impl FnMut(Vec<u64>) -> Vec<u64> + Send + 'static) -> Self {
        let (tx, rx) = unbounded::<(u64, Sender<u64>)>();
        let batches = Arc::<(AtomicU64, AtomicU64)>::default();
        let counts = Arc::clone(&batches);
        let worker = thread::spawn(move || {
            let mut replies = Vec::with_capacity(MAX_BATCH);
            while let Ok((x, reply)) = rx.recv() {
                let mut batch = Vec::with_capacity(MAX_BATCH);
                batch.push(x);
                replies.push(reply);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok((x, reply)) => {
                            batch.push(x);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                // Relaxed: statistics, read after the run.
                counts.0.fetch_add(1, Ordering::Relaxed);
                counts.1.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (reply, y) in replies.drain(..).zip(handler(batch)) {
                    let _ = reply.send(y);
                }
            }
        });
        Self {
            requests: Some(tx),
            worker: Some(worker),
            batches,
        }
    }

    fn send(&self, x: u64) -> crossbeam_channel::Receiver<u64> {
        let (tx, rx) = bounded(1);
        self.requests
            .as_ref()
            .expect("open until drop")
            .send((x, tx))
            .expect("the worker runs until drop");
        rx
    }
}

impl Dispatch for ChannelBatcher {
    fn call(&self, x: u64) -> u64 {
        self.send(x).recv().expect("one reply per request")
    }

    fn window(&self, xs: Range<u64>, out: &mut Vec<u64>) {
        let replies: Vec<_> = xs.map(|x| self.send(x)).collect();
        out.extend(
            replies
                .into_iter()
                .map(|rx| rx.recv().expect("one reply per request")),
        );
    }

    fn batches(&self) -> (u64, u64) {
        // Relaxed: read after the clients were joined.
        (
            self.batches.0.load(Ordering::Relaxed),
            self.batches.1.load(Ordering::Relaxed),
        )
    }
}

impl Drop for ChannelBatcher {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// How each client sends its requests.
#[derive(Clone, Copy)]
enum Mode {
    Call,
    Window,
}

/// `iters` iterations: `threads` clients share `iters * ELEMS` requests through `d`. Returns the
/// time from the first client's start to the last one's end.
fn run<D: Dispatch>(d: &D, mode: Mode, threads: u64, iters: u64) -> Duration {
    let total = iters * ELEMS;
    let clients: Vec<_> = (0..threads)
        .map(|t| {
            let requests = share(total, threads, t);
            let (from, to) = (requests.start, requests.end);
            // Allocated here, outside the timed region.
            let mut out = Vec::with_capacity(WINDOW as usize);
            move || match mode {
                Mode::Call => {
                    for x in from..to {
                        assert_eq!(d.call(x), x, "a reply to another request");
                    }
                }
                Mode::Window => {
                    let mut lo = from;
                    while lo < to {
                        let hi = (lo + WINDOW).min(to);
                        out.clear();
                        d.window(lo..hi, &mut out);
                        assert!(out.iter().copied().eq(lo..hi), "replies out of order");
                        lo = hi;
                    }
                }
            }
        })
        .collect();
    run_workers(clients).0.wall
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

/// A batcher with `workers` workers, each with a no-op handler.
fn batcher(workers: usize) -> Batcher<u64, u64> {
    let builder = Batcher::builder()
        .max_batch_size(MAX_BATCH)
        .max_wait(Duration::ZERO)
        .max_queue(1024);
    if workers == 1 {
        builder.spawn(|xs: Vec<u64>| xs)
    } else {
        builder.spawn_pool(workers, || |xs: Vec<u64>| xs)
    }
    .expect("a valid configuration")
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

criterion_group!(benches, dispatch_noop);
criterion_main!(benches);
