//! Behaviour tests of a [`Batcher`] with a pool of workers (`BatcherBuilder::spawn_pool`), each
//! written to fail if the pool breaks its contract:
//!
//! - two workers run two batches at the same time, on two threads;
//! - a handler that panicked is replaced by a fresh one from the factory (its state starts
//!   over), where a single `spawn`ed handler is kept; a panicking factory fails the batch that
//!   needed it and is tried again on the next;
//! - a lone request starts at once while another worker is idle, whatever `max_wait` says;
//! - shutdown drains every worker's batches and every queued request;
//! - stress: every request computed exactly once across 4 workers, exact totals in `stats()`;
//! - histograms: every worker's merged, one value per computed request or batch, expired
//!   requests left out, times in microseconds;
//! - zero workers is a `ConfigError`.
//!
//! Every timeout here is a hang guard ([`GUARD`]), never an assertion about speed.
//!
//! ```text
//! cargo test --test batch_pool
//! ```

use latchless::batch::{BatchError, Batcher, CallError, ConfigError, SpawnError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// How long anything may take before the test calls it a hang. Generous: the machine is shared.
const GUARD: Duration = Duration::from_secs(60);

/// A `max_wait` that never passes during a test.
const LONG_WAIT: Duration = Duration::from_secs(3600);

/// The request the test handlers panic on.
const PANIC: u64 = u64::MAX;

/// Runs `f` on a thread of its own and returns its result, or panics if it takes longer than
/// [`GUARD`] (a hang).
fn guarded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(GUARD).expect("hung")
}

#[test]
fn two_workers_run_two_batches_at_once() {
    // Each batch waits inside the handler until two batches are inside at once: with one
    // worker at a time, the first would give up after the guard and fail its request.
    let inside = Arc::new((Mutex::new(0usize), Condvar::new()));
    let b = Batcher::builder()
        .max_batch_size(1)
        .max_wait(LONG_WAIT)
        .spawn_pool(2, {
            let inside = Arc::clone(&inside);
            move || {
                let inside = Arc::clone(&inside);
                move |xs: Vec<u64>| {
                    let (count, cv) = &*inside;
                    let mut n = count.lock().unwrap();
                    *n += 1;
                    cv.notify_all();
                    let (n, timeout) = cv.wait_timeout_while(n, GUARD, |n| *n < 2).unwrap();
                    assert!(!timeout.timed_out(), "the other batch never started");
                    drop(n);
                    let name = thread::current().name().unwrap_or("").to_string();
                    xs.into_iter().map(|x| (x, name.clone())).collect()
                }
            }
        })
        .unwrap();
    let p1 = b.submit(1).unwrap();
    let p2 = b.submit(2).unwrap();
    let (x1, w1) = p1.wait().unwrap();
    let (x2, w2) = p2.wait().unwrap();
    assert_eq!((x1, x2), (1, 2));
    assert_ne!(w1, w2, "both batches ran on one thread");
    assert!(w1.starts_with("latchless-batcher-") && w2.starts_with("latchless-batcher-"));
    b.shutdown();
}

/// A handler that counts its own calls: the reply is `x + 1000 * calls`, so a fresh handler
/// shows in its replies. It panics on [`PANIC`] (after counting the call).
fn counting_handler() -> impl FnMut(Vec<u64>) -> Vec<u64> {
    let mut calls = 0u64;
    move |xs| {
        calls += 1;
        if xs.contains(&PANIC) {
            panic!("the handler fails on request {PANIC}");
        }
        xs.into_iter().map(|x| x + 1000 * calls).collect()
    }
}

#[test]
fn a_panicked_pool_handler_is_replaced_by_a_fresh_one() {
    let made = Arc::new(AtomicUsize::new(0));
    let b = Batcher::builder()
        .max_batch_size(1)
        .spawn_pool(1, {
            let made = Arc::clone(&made);
            move || {
                made.fetch_add(1, Ordering::SeqCst);
                counting_handler()
            }
        })
        .unwrap();
    assert_eq!(b.call(1).unwrap(), 1001);
    assert_eq!(b.call(2).unwrap(), 2002);
    assert!(matches!(
        b.call(PANIC),
        Err(CallError::Failed(BatchError::HandlerPanicked))
    ));
    // A fresh handler: its call count starts over.
    assert_eq!(b.call(3).unwrap(), 1003);
    assert_eq!(made.load(Ordering::SeqCst), 2);
    b.shutdown();
    let s = b.stats();
    assert_eq!((s.completed, s.failed), (3, 1));
}

#[test]
fn a_single_spawned_handler_is_kept_after_a_panic() {
    let b = Batcher::builder()
        .max_batch_size(1)
        .spawn(counting_handler())
        .unwrap();
    assert_eq!(b.call(1).unwrap(), 1001);
    assert!(matches!(
        b.call(PANIC),
        Err(CallError::Failed(BatchError::HandlerPanicked))
    ));
    // The same handler: its third call.
    assert_eq!(b.call(3).unwrap(), 3003);
}

#[test]
fn a_panicking_factory_fails_the_batch_and_is_tried_again() {
    let broken = Arc::new(AtomicBool::new(true));
    let b = Batcher::builder()
        .max_batch_size(1)
        .spawn_pool(2, {
            let broken = Arc::clone(&broken);
            move || {
                assert!(!broken.load(Ordering::SeqCst), "the factory is broken");
                |xs: Vec<u64>| xs
            }
        })
        .unwrap();
    assert!(matches!(
        b.call(1),
        Err(CallError::Failed(BatchError::HandlerPanicked))
    ));
    broken.store(false, Ordering::SeqCst);
    assert_eq!(b.call(2).unwrap(), 2);
    b.shutdown();
    let s = b.stats();
    assert_eq!((s.completed, s.failed), (1, 1));
}

#[test]
fn a_lone_request_starts_at_once_while_another_worker_is_idle() {
    // `max_wait` is an hour and the batch is far from full: only the idle-worker rule closes it.
    let b = Batcher::builder()
        .max_batch_size(64)
        .max_wait(LONG_WAIT)
        .spawn_pool(2, || |xs: Vec<u64>| xs)
        .unwrap();
    for i in 0..20 {
        let b = b.clone();
        assert_eq!(guarded(move || b.call(i).unwrap()), i);
    }
    b.shutdown();
}

#[test]
fn shutdown_drains_every_worker_and_the_queue() {
    let b = Batcher::builder()
        .max_batch_size(4)
        .max_wait(Duration::from_millis(1))
        .spawn_pool(2, || {
            |xs: Vec<u64>| {
                thread::sleep(Duration::from_millis(1));
                xs.into_iter().map(|x| x * 3).collect()
            }
        })
        .unwrap();
    let pending: Vec<_> = (0..200).map(|i| (i, b.submit(i).unwrap())).collect();
    guarded({
        let b = b.clone();
        move || b.shutdown()
    });
    assert!(b.submit(7).is_err(), "admitted after shutdown");
    for (i, p) in pending {
        assert_eq!(p.wait().unwrap(), i * 3);
    }
    let s = b.stats();
    assert_eq!((s.submitted, s.completed), (200, 200));
    assert_eq!(b.in_flight(), 0);
}

#[test]
fn pool_stress_computes_every_request_exactly_once() {
    const CLIENTS: u64 = 8;
    let per_client: u64 = if cfg!(miri) { 25 } else { 2_000 };
    let seen = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    let b = Batcher::builder()
        .max_batch_size(16)
        .max_wait(Duration::from_micros(200))
        .max_queue(64)
        .spawn_pool(4, {
            let seen = Arc::clone(&seen);
            move || {
                let seen = Arc::clone(&seen);
                move |xs: Vec<u64>| {
                    let mut seen = seen.lock().unwrap();
                    for &x in &xs {
                        *seen.entry(x).or_default() += 1;
                    }
                    xs.into_iter().map(|x| x ^ 0xABCD).collect()
                }
            }
        })
        .unwrap();
    guarded({
        let b = b.clone();
        move || {
            thread::scope(|s| {
                for t in 0..CLIENTS {
                    let b = b.clone();
                    s.spawn(move || {
                        for i in 0..per_client {
                            let x = t * 1_000_000 + i;
                            // At most `CLIENTS` requests are in flight, below
                            // `max_queue`: none is refused.
                            let reply = b.call(x).unwrap();
                            assert_eq!(reply, x ^ 0xABCD);
                        }
                    });
                }
            });
        }
    });
    b.shutdown();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, CLIENTS * per_client);
    assert!(seen.values().all(|&n| n == 1), "a request computed twice");
    let s = b.stats();
    assert_eq!(s.completed, CLIENTS * per_client);
    assert_eq!(s.submitted, CLIENTS * per_client);
    assert_eq!(s.failed + s.expired + s.cancelled, 0);
}

#[test]
fn zero_workers_is_a_config_error() {
    let err = Batcher::builder()
        .spawn_pool(0, || |xs: Vec<u8>| xs)
        .unwrap_err();
    assert!(matches!(err, SpawnError::Config(ConfigError::ZeroWorkers)));
    assert_eq!(err.to_string(), "a batcher needs at least 1 worker");
}

#[test]
fn histograms_merge_every_worker_and_record_only_computed_requests() {
    // Each batch sleeps 2 ms: a lower bound on compute time and latency (a sleep is never
    // shorter), never an assertion about speed.
    let b = Batcher::builder()
        .max_batch_size(1)
        .max_wait(Duration::ZERO)
        .spawn_pool(2, || {
            |xs: Vec<u64>| {
                thread::sleep(Duration::from_millis(2));
                xs
            }
        })
        .unwrap();
    let pending: Vec<_> = (0..40).map(|i| b.submit(i).unwrap()).collect();
    // An expired request: answered, never computed, so never in the histograms.
    let expired = b.submit_before(99, std::time::Instant::now()).unwrap();
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.wait().unwrap(), i as u64);
    }
    assert_eq!(expired.wait(), Err(BatchError::Expired));
    b.shutdown();
    let s = b.stats();
    let h = b.histograms();
    assert_eq!(s.completed, 40);
    assert_eq!(s.batches, 40);
    assert_eq!(h.queue_time.len(), 40);
    assert_eq!(h.latency.len(), 40);
    assert_eq!(h.batch_size.len(), 40);
    assert_eq!(h.compute_time.len(), 40);
    assert_eq!((h.batch_size.min(), h.batch_size.max()), (1, 1));
    // Microseconds, to 1%.
    assert!(h.compute_time.min() >= 1_980, "{:?}", h.compute_time);
    assert!(h.latency.min() >= h.compute_time.min(), "{h:?}");
    // With 40 requests queued at once behind 2 workers, the last waited ~19 batches of 2 ms.
    assert!(h.queue_time.max() >= 30_000, "{:?}", h.queue_time);
}
