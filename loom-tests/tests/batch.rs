//! loom models of `Batcher`: the worker's park racing a submit (no lost wake-up), shutdown racing
//! submit (every accepted request answered), shutdown waking a worker that waits out `max_wait`
//! on a partly filled batch, the same hand-offs with a pool of two workers (a submit waking one
//! of two sleepers, shutdown waking both, an idle worker closing the other's filling batch),
//! submits to two priority classes racing the worker's park, and the reply slot (the worker's reply racing the waiter, including
//! a waiter that gives up); and continuous batching (`StreamBatcher`): an item joining while a
//! step runs, a stream dropped while the step that finishes its item runs, a stream dropped
//! while a chunk is sent (a lost stream wake-up shows as a loom deadlock), and a pool of two
//! step-wise workers handing off and shutting down. loom has no clock: the batcher's clock stands still under loom and a
//! timed park waits for an unpark, so `max_wait` is either zero (a batch closes as soon as the
//! queue is empty) or never due; deadlines are not modelled. Real-time paths are tested in
//! `tests/batch.rs`. Times and iteration counts are for `--release` at `LOOM_MAX_PREEMPTIONS=2`
//! on the 2-core CI machine.
#![cfg(loom)]

use latchless::batch::{
    BatchConfig, Batcher, ChunkStream, JoinPolicy, Joined, PriorityClass, Step, StepHandler,
    StreamBatcher, Streamed, SubmitError,
};
use loom::thread;
use std::time::Duration;

fn config() -> BatchConfig {
    let mut config = BatchConfig::default();
    config.max_batch_size = 2;
    config.max_batch_cost = u64::MAX;
    config.max_wait = Duration::ZERO;
    config.max_queue = 2;
    config
}

/// [`config`] with a `max_wait` that never passes (under loom a timed park waits for an unpark).
fn config_waiting_long() -> BatchConfig {
    let mut config = config();
    config.max_wait = Duration::from_secs(3600);
    config
}

fn doubler() -> Batcher<u32, u32> {
    Batcher::spawn(config(), |xs: Vec<u32>| {
        xs.into_iter().map(|x| 2 * x).collect()
    })
    .unwrap()
}

/// A submit races the idle worker going to sleep: the request is always answered (a lost
/// wake-up would leave every thread blocked, which loom reports as a deadlock).
// Measured: 345 executions, 39ms (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
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
// Measured: 388 executions, 58ms (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
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
// Measured: 967 executions, 80ms (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
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
// Measured: 298 executions, 38ms (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
#[test]
fn shutdown_wakes_a_filling_batch() {
    latchless_loom_tests::model(|| {
        let b: Batcher<u32, u32> =
            Batcher::spawn(config_waiting_long(), |xs: Vec<u32>| xs).unwrap();
        let pending = b.submit(7).unwrap();
        b.shutdown();
        assert_eq!(pending.wait(), Ok(7));
    });
}

/// Two workers, each with its own handler from the factory: a submit wakes one of them (the
/// other may be anywhere in its own sleep protocol), the request is answered once, and shutdown
/// wakes both and waits for both (a worker left parked would show as a deadlock).
// Measured: 56,697 executions, 9.7s (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
#[test]
fn two_workers_hand_off_and_shut_down() {
    latchless_loom_tests::model(|| {
        let b: Batcher<u32, u32> = Batcher::builder()
            .config(config())
            .spawn_pool(2, || |xs: Vec<u32>| xs.into_iter().map(|x| 2 * x).collect())
            .unwrap();
        assert_eq!(b.call(21).unwrap(), 42);
        b.shutdown();
        let s = b.stats();
        assert_eq!((s.submitted, s.completed), (1, 1));
        assert_eq!(b.in_flight(), 0);
    });
}

/// A worker fills a batch with a `max_wait` that never passes (under loom a timed park waits
/// for an unpark) while the other worker goes idle: either the filling worker sees the idle one
/// and closes its batch, or the idle one sees it parked and wakes it. A lost wake-up would leave
/// the request unanswered, which loom reports as a deadlock.
// Measured: 64,969 executions, 10.4s (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
#[test]
fn an_idle_worker_closes_a_filling_batch() {
    latchless_loom_tests::model(|| {
        let b: Batcher<u32, u32> = Batcher::builder()
            .config(config_waiting_long())
            .spawn_pool(2, || |xs: Vec<u32>| xs)
            .unwrap();
        assert_eq!(b.call(5).unwrap(), 5);
        b.shutdown();
        assert_eq!(b.in_flight(), 0);
    });
}

/// Shutdown races a client's submit with two workers: the request is refused (handed back) or
/// answered, and shutdown returns only once both workers have seen `in_flight` reach zero,
/// whichever of them answered it.
// Measured: 17,513 executions, 3.3s (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
#[test]
fn two_workers_shutdown_races_submit() {
    latchless_loom_tests::model(|| {
        let b: Batcher<u32, u32> = Batcher::builder()
            .config(config())
            .spawn_pool(2, || |xs: Vec<u32>| xs)
            .unwrap();
        let client = {
            let b = b.clone();
            thread::spawn(move || match b.submit(3) {
                Ok(pending) => Some(pending.wait().expect("an accepted request is answered")),
                Err(SubmitError::ShuttingDown(req)) => {
                    assert_eq!(req, 3);
                    None
                }
                Err(e) => panic!("unexpected refusal {e:?}"),
            })
        };
        b.shutdown();
        let answer = client.join().unwrap();
        assert!(answer.is_none() || answer == Some(3), "{answer:?}");
        assert_eq!(b.in_flight(), 0);
    });
}

/// Two priority classes: a submit to the less urgent one races the worker going to sleep, while
/// the main thread submits to the urgent one. The worker's last look before parking must cover
/// every class's queue (a look at one queue only would lose the wake-up: a loom deadlock), and
/// both requests are answered.
// Measured: 27,561 executions, 5.2s (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
#[test]
fn submits_to_two_classes_race_worker_park() {
    latchless_loom_tests::model(|| {
        let b: Batcher<u32, u32> = Batcher::builder()
            .config(config())
            .class(PriorityClass::new())
            .class(PriorityClass::new().max_queue(1))
            .spawn(|xs: Vec<u32>| xs)
            .unwrap();
        let client = {
            let b = b.clone();
            thread::spawn(move || b.submit_to(2, 1).unwrap().wait())
        };
        assert_eq!(b.submit_to(1, 0).unwrap().wait(), Ok(1));
        assert_eq!(client.join().unwrap(), Ok(2));
        b.shutdown();
        assert_eq!(b.in_flight(), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Continuous batching (`StreamBatcher`): a step-wise handler whose items stream chunks.
// ---------------------------------------------------------------------------------------------

/// Item `n` streams `n` chunks (`0..n`), one per step, then finishes with `n` at the next step.
struct Chunks;

impl StepHandler for Chunks {
    type Req = u32;
    type State = (u32, u32);
    type Chunk = u32;
    type Out = u32;

    fn join(&mut self, reqs: Vec<u32>) -> Vec<Joined<(u32, u32), u32>> {
        reqs.into_iter().map(|n| Joined::Running((0, n))).collect()
    }

    fn step(&mut self, items: &mut [(u32, u32)]) -> Vec<Step<u32, u32>> {
        items
            .iter_mut()
            .map(|(i, n)| {
                if *i == *n {
                    Step::Finish(*n)
                } else {
                    *i += 1;
                    Step::Chunk(*i - 1)
                }
            })
            .collect()
    }
}

fn chunks_batcher() -> StreamBatcher<u32, u32, u32> {
    Batcher::builder()
        .config(config())
        .join_policy(JoinPolicy::eager())
        .spawn_steps(Chunks)
        .unwrap()
}

/// Reads a stream to its end and checks it: chunks `0..n` in order, then `Done(Ok(n))`.
fn read_whole(stream: ChunkStream<u32, u32>, n: u32) {
    let items: Vec<_> = stream.collect();
    let mut want: Vec<_> = (0..n).map(Streamed::Chunk).collect();
    want.push(Streamed::Done(Ok(n)));
    assert_eq!(items, want);
}

/// An item joins while the worker is stepping another one (or just before, or after it left):
/// both streams get their chunks in order and exactly one final item, and shutdown drains.
// Measured: 4,788 executions, 0.6s (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
#[test]
fn stream_item_joins_while_a_step_runs() {
    latchless_loom_tests::model(|| {
        let b = chunks_batcher();
        let first = b.submit(1).unwrap();
        let client = {
            let b = b.clone();
            thread::spawn(move || read_whole(b.submit(0).unwrap(), 0))
        };
        read_whole(first, 1);
        client.join().unwrap();
        b.shutdown();
        let s = b.stats();
        assert_eq!((s.submitted, s.completed), (2, 2));
        assert_eq!(b.in_flight(), 0);
    });
}

/// The client drops its stream while the worker runs the step that finishes the item: either
/// the item finished first (its final item is dropped with the stream) or it leaves as
/// cancelled; counted once either way, admission is given back, and shutdown drains.
// Measured: 582 executions, 57ms (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
#[test]
fn stream_cancel_races_the_finishing_step() {
    latchless_loom_tests::model(|| {
        let b = chunks_batcher();
        let stream = b.submit(0).unwrap();
        drop(stream);
        b.shutdown();
        let s = b.stats();
        assert_eq!(s.completed + s.cancelled, 1, "{s:?}");
        assert_eq!(b.in_flight(), 0);
    });
}

/// The client reads a first chunk, then drops its stream while the worker sends the next
/// chunk (or the final item): nothing is delivered twice or lost track of, the item leaves,
/// and shutdown drains.
// Measured: 707 executions, 52ms (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
#[test]
fn stream_consumer_drops_while_a_chunk_is_sent() {
    latchless_loom_tests::model(|| {
        let b = chunks_batcher();
        let mut stream = b.submit(2).unwrap();
        assert_eq!(stream.next(), Some(Streamed::Chunk(0)));
        drop(stream);
        b.shutdown();
        let s = b.stats();
        assert_eq!(s.completed + s.cancelled, 1, "{s:?}");
        assert_eq!(b.in_flight(), 0);
    });
}

/// The client reads the first chunk, then asks for the final item only while the worker sends
/// the second chunk: that chunk is either queued and dropped by `skip_chunks` or refused by the
/// worker, and either way the reader, asleep or not, is woken by the final item (a chunk that
/// neither queues nor wakes must not leave it asleep).
// Measured: 433 executions, 0.13s (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
#[test]
fn stream_skipping_chunks_races_a_chunk_and_gets_the_final_item() {
    latchless_loom_tests::model(|| {
        let b = chunks_batcher();
        let mut stream = b.submit(2).unwrap();
        assert_eq!(stream.next(), Some(Streamed::Chunk(0)));
        stream.skip_chunks();
        assert_eq!(stream.next(), Some(Streamed::Done(Ok(2))));
        assert_eq!(stream.next(), None);
        b.shutdown();
        let s = b.stats();
        assert_eq!((s.submitted, s.completed), (1, 1));
        assert_eq!(b.in_flight(), 0);
    });
}

/// Two step-wise workers, each with its own handler and batch: a submit wakes one of them (the
/// other may be anywhere in its own sleep protocol), the item's final item comes once, and shutdown wakes both and waits for both (a worker left parked shows as a deadlock).
// Measured: 57,912 executions, 7.2s (release, LOOM_MAX_PREEMPTIONS=2, 2-core dev machine).
#[test]
fn stream_two_workers_hand_off_and_shut_down() {
    latchless_loom_tests::model(|| {
        let b = Batcher::builder()
            .config(config())
            .join_policy(JoinPolicy::eager())
            .spawn_steps_pool(2, || Chunks)
            .unwrap();
        read_whole(b.submit(0).unwrap(), 0);
        b.shutdown();
        let s = b.stats();
        assert_eq!((s.submitted, s.completed), (1, 1));
        assert_eq!(b.in_flight(), 0);
    });
}
