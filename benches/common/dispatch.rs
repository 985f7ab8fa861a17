//! The batch dispatch contenders of `benches/batch.rs` and `benches/batch_compare.rs`:
//! latchless's [`Batcher`] with a no-op handler, and what a user might hand-roll instead, a
//! `crossbeam_channel::unbounded` of (request, reply sender) drained by a batching loop thread
//! ([`ChannelBatcher`]), both behind [`Dispatch`]; and the clients that drive them.

use super::workers::share;
use crossbeam_channel::{bounded, unbounded, Sender};
use latchless::batch::Batcher;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Requests a `*_window64` client submits before it waits.
pub(crate) const WINDOW: u64 = 64;
/// The most requests in one batch, on both sides.
pub(crate) const MAX_BATCH: usize = 64;

/// A way to get requests answered by worker threads running a batch handler.
pub(crate) trait Dispatch: Sync {
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
pub(crate) struct ChannelBatcher {
    requests: Option<Sender<(u64, Sender<u64>)>>,
    worker: Option<JoinHandle<()>>,
    /// Batches run and requests answered, counted by the worker.
    batches: Arc<(AtomicU64, AtomicU64)>,
}

impl ChannelBatcher {
    pub(crate) fn spawn(mut handler: impl FnMut(Vec<u64>) -> Vec<u64> + Send + 'static) -> Self {
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
pub(crate) enum Mode {
    Call,
    Window,
}

/// The client jobs of one run: `threads` clients share `total` requests through `d`, each
/// checking every reply.
pub(crate) fn clients<D: Dispatch>(
    d: &D,
    mode: Mode,
    threads: u64,
    total: u64,
) -> Vec<impl FnOnce() + Send + '_> {
    (0..threads)
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
        .collect()
}

/// A batcher with `workers` workers, each with a no-op handler, forming batches of up to
/// [`MAX_BATCH`] greedily (`max_wait` zero).
pub(crate) fn batcher(workers: usize) -> Batcher<u64, u64> {
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
