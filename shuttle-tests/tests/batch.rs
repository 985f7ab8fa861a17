//! shuttle tests of `Batcher`: three client threads submit several requests each (one client
//! cancels one of its requests by dropping its `Pending`) while a fourth thread submits and shuts
//! the batcher down, and the worker forms batches. Every accepted request gets exactly its own
//! reply (the handler's result for that request, nothing else), nothing accepted is lost on
//! shutdown, refusals hand the request back, admission never lets more than `max_queue` requests
//! be in flight, and the statistics agree with what the clients saw
//! and what the handlers computed, with one worker and with a pool of three. Two configurations: batches that close as soon as the queue is
//! empty (`max_wait` zero), and batches that wait for more requests until full or shutdown
//! (`max_wait` never due: shutdown must wake the worker to close the batch, or the model
//! deadlocks, which shuttle reports).
//!
//! Why shuttle: the batcher is where shuttle sees most. Its admission counter, flags, fences,
//! statistics, the worker's park (a `Mutex` and a `Condvar` under the checkers), the reply slots
//! (`Mutex` + `Condvar`) and its threads are all the shim's, so every one of them is a schedule
//! point; with five threads and a dozen requests that is far beyond loom's reach.
//!
//! What it cannot see: weak memory orderings (shuttle runs every atomic and fence as `SeqCst`; the
//! fence pairs are loom's to check, loom-tests/tests/batch.rs); the request queue's links
//! (crossbeam-epoch atomics, see tests/queue.rs here); real time: under the checkers the clock
//! stands still, a timed park waits for an unpark, and the worker parks without spinning first,
//! so deadlines, `max_wait` expiry and the spin-then-return path are tested with real time in
//! latchless's own `tests/`.
#![cfg(shuttle)]

use latchless::batch::{BatchConfig, Batcher, Pending, PriorityClass, SubmitError};
use shuttle::thread;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

const CLIENTS: u32 = 3;
const REQUESTS: u32 = 3;
const MAX_BATCH: usize = 2;
/// Fewer places than requests: some submits are refused `Overloaded`.
const MAX_QUEUE: u64 = 4;

/// The batch and queue bounds every test here uses, with `max_wait`.
fn config(max_wait: Duration) -> BatchConfig {
    let mut config = BatchConfig::default();
    config.max_batch_size = MAX_BATCH;
    config.max_batch_cost = u64::MAX;
    config.max_wait = max_wait;
    config.max_queue = MAX_QUEUE as usize;
    config
}

fn reply_to(req: u32) -> u64 {
    u64::from(req) * 2 + 1
}

/// What one submitting thread saw.
#[derive(Default)]
struct Seen {
    /// Priority classes to spread requests over (by request value); 0 or 1: plain `submit`.
    classes: usize,
    accepted: u64,
    overloaded: u64,
    shutting_down: u64,
    cancelled: u64,
}

impl Seen {
    /// Submits `req`: an accepted request is kept for waiting, a refused one must come back whole.
    fn submit(&mut self, b: &Batcher<u32, u64>, req: u32) -> Option<(u32, Pending<u64>)> {
        let result = if self.classes > 1 {
            b.submit_to(req, req as usize % self.classes)
        } else {
            b.submit(req)
        };
        // Admission: never more than `max_queue` requests accepted and not yet answered.
        let in_flight = b.in_flight();
        assert!(
            in_flight <= MAX_QUEUE,
            "{in_flight} requests in flight, bound {MAX_QUEUE}"
        );
        match result {
            Ok(p) => {
                self.accepted += 1;
                Some((req, p))
            }
            Err(SubmitError::Overloaded(r)) => {
                assert_eq!(r, req, "the refused request was not handed back");
                self.overloaded += 1;
                None
            }
            Err(SubmitError::ShuttingDown(r)) => {
                assert_eq!(r, req, "the refused request was not handed back");
                self.shutting_down += 1;
                None
            }
            Err(e) => panic!("unexpected refusal {e:?}"),
        }
    }
}

fn wait(req: u32, p: Pending<u64>) {
    assert_eq!(
        p.wait(),
        Ok(reply_to(req)),
        "request {req} got a wrong reply"
    );
}

/// One run: clients, a submitting and shutting-down thread, then the checks; `workers` workers
/// (one `spawn`ed handler, or a pool with a handler each), and `classes` priority classes (the
/// clients spread their requests over them; class 0 has a bound of its own, 2).
fn clients_and_shutdown(max_wait: Duration, workers: usize, classes: usize) {
    let config = config(max_wait);
    let computed = Arc::new(AtomicU64::new(0));
    let largest = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (computed, largest) = (Arc::clone(&computed), Arc::clone(&largest));
        move || {
            let (computed, largest) = (Arc::clone(&computed), Arc::clone(&largest));
            move |xs: Vec<u32>| {
                // std atomics: bookkeeping, not schedule points. A panic here would be caught by
                // the batcher (answered `HandlerPanicked`), so the batch size is checked after
                // the run.
                computed.fetch_add(xs.len() as u64, SeqCst);
                largest.fetch_max(xs.len(), SeqCst);
                xs.into_iter().map(reply_to).collect::<Vec<u64>>()
            }
        }
    };
    let mut builder = Batcher::builder().config(config).aging(1);
    if classes > 1 {
        builder = builder.class(PriorityClass::new().max_queue(2));
        for _ in 1..classes {
            builder = builder.class(PriorityClass::new());
        }
    }
    let b = if workers == 1 {
        builder.spawn(handler())
    } else {
        builder.spawn_pool(workers, handler)
    }
    .unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let b = b.clone();
            thread::spawn(move || {
                let mut seen = Seen {
                    classes,
                    ..Seen::default()
                };
                let mut pending = Vec::new();
                for i in 0..REQUESTS {
                    pending.extend(seen.submit(&b, c * 100 + i));
                    // Wait for the oldest reply after the second request: submits and waits
                    // interleave.
                    if i == 1 && !pending.is_empty() {
                        let (req, p) = pending.remove(0);
                        wait(req, p);
                    }
                }
                // Client 0 cancels its last accepted request.
                if c == 0 {
                    if let Some((_, p)) = pending.pop() {
                        drop(p);
                        seen.cancelled += 1;
                    }
                }
                for (req, p) in pending {
                    wait(req, p);
                }
                seen
            })
        })
        .collect();
    let closer = {
        let b = b.clone();
        thread::spawn(move || {
            let mut seen = Seen::default();
            let mine = seen.submit(&b, 999);
            b.shutdown();
            // Accepted before shutdown: answered by the time shutdown returned.
            if let Some((req, p)) = mine {
                assert!(
                    p.is_ready(),
                    "shutdown returned before answering request {req}"
                );
                wait(req, p);
            }
            assert!(matches!(
                b.submit(1000),
                Err(SubmitError::ShuttingDown(1000))
            ));
            seen
        })
    };
    let mut total = Seen::default();
    for t in clients.into_iter().chain([closer]) {
        let s = t.join().unwrap();
        total.accepted += s.accepted;
        total.overloaded += s.overloaded;
        total.shutting_down += s.shutting_down;
        total.cancelled += s.cancelled;
    }
    let s = b.stats();
    assert_eq!(b.in_flight(), 0, "{s:?}");
    assert_eq!(s.submitted, total.accepted, "{s:?}");
    assert_eq!(s.refused_overloaded, total.overloaded, "{s:?}");
    // The closer's own refused submit after shutdown counts too.
    assert_eq!(s.refused_shutting_down, total.shutting_down + 1, "{s:?}");
    assert_eq!(
        (s.failed, s.expired, s.refused_too_costly),
        (0, 0, 0),
        "{s:?}"
    );
    // A cancelled request is either skipped or computed before the worker saw the cancellation.
    assert!(s.cancelled <= total.cancelled, "{s:?}");
    assert_eq!(s.completed + s.cancelled, s.submitted, "{s:?}");
    assert_eq!(computed.load(SeqCst), s.completed, "{s:?}");
    assert_eq!(s.batch_sizes.iter().sum::<u64>(), s.batches, "{s:?}");
    assert!(
        largest.load(SeqCst) <= MAX_BATCH,
        "a batch of {}",
        largest.load(SeqCst)
    );
    assert!(s.batches <= s.completed, "{s:?}");
}

/// Batches close as soon as the queue is empty.
// Measured: 20,000 random + 20,000 PCT schedules, 7.5 s (release, 2-core machine).
#[test]
fn clients_and_shutdown_eager_batches() {
    latchless_shuttle_tests::explore(20_000, 20_000, || {
        clients_and_shutdown(Duration::ZERO, 1, 1)
    });
}

/// As above with three workers: the wake-up goes to one of several sleepers, and shutdown must
/// wake each of them once `in_flight` reaches zero, whichever answered last.
// Measured: 20,000 random + 20,000 PCT schedules, 10.9 s (release, 2-core machine).
#[test]
fn clients_and_shutdown_eager_batches_three_workers() {
    latchless_shuttle_tests::explore(20_000, 20_000, || {
        clients_and_shutdown(Duration::ZERO, 3, 1)
    });
}

/// Batches wait to fill until shutdown: shutdown must wake the worker (a lost wake-up is a
/// deadlock, which shuttle reports).
// Measured: 20,000 random + 20,000 PCT schedules, 7.0 s (release, 2-core machine).
#[test]
fn clients_and_shutdown_filling_batches() {
    latchless_shuttle_tests::explore(20_000, 20_000, || {
        clients_and_shutdown(Duration::from_secs(3600), 1, 1)
    });
}

/// Two workers and three priority classes (class 0 with a bound of its own, aging after one
/// batch): whichever class a worker takes first, every accepted request is answered exactly
/// once, and a class-bound refusal hands the request back.
// Measured: 20,000 random + 20,000 PCT schedules, 10.1 s (release, 2-core machine).
#[test]
fn clients_and_shutdown_three_classes_two_workers() {
    latchless_shuttle_tests::explore(20_000, 20_000, || {
        clients_and_shutdown(Duration::ZERO, 2, 3)
    });
}

/// Batches wait to fill with three workers: a filling batch closes when another worker goes
/// idle or at shutdown; a lost wake-up of either kind is a deadlock.
// Measured: 20,000 random + 20,000 PCT schedules, 8.8 s (release, 2-core machine).
#[test]
fn clients_and_shutdown_filling_batches_three_workers() {
    latchless_shuttle_tests::explore(20_000, 20_000, || {
        clients_and_shutdown(Duration::from_secs(3600), 3, 1)
    });
}

/// A smaller race, where shuttle finds admission-versus-shutdown bugs more often: four clients
/// submit one request each while the main thread shuts down. Each request is refused
/// `ShuttingDown` (handed back) or accepted and answered; none is accepted after the worker
/// decided to exit (that would block its client forever: a deadlock, which shuttle reports).
// Measured: 20,000 random + 20,000 PCT schedules, 2.1 s (release, 2-core machine).
#[test]
fn shutdown_races_single_submits() {
    latchless_shuttle_tests::explore(20_000, 20_000, || {
        let config = config(Duration::ZERO);
        let b = Batcher::spawn(config, |xs: Vec<u32>| {
            xs.into_iter().map(reply_to).collect()
        })
        .unwrap();
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let b = b.clone();
                thread::spawn(move || {
                    let mut seen = Seen::default();
                    if let Some((req, p)) = seen.submit(&b, c) {
                        wait(req, p);
                    }
                    seen
                })
            })
            .collect();
        b.shutdown();
        let mut total = Seen::default();
        for t in clients {
            let s = t.join().unwrap();
            total.accepted += s.accepted;
            total.shutting_down += s.shutting_down;
        }
        let s = b.stats();
        assert_eq!(b.in_flight(), 0, "{s:?}");
        assert_eq!(
            (s.submitted, s.completed),
            (total.accepted, total.accepted),
            "{s:?}"
        );
        assert_eq!(s.refused_shutting_down, total.shutting_down, "{s:?}");
    });
}
