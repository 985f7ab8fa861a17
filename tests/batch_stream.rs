//! Behaviour tests of continuous batching ([`latchless::batch::StreamBatcher`]), each written to
//! fail if the batcher breaks its contract (DESIGN.md, "Invariants every test suite holds the
//! code to", Batcher):
//!
//! - streams: every chunk in order, then exactly one final item, then nothing; the blocking
//!   iterator and the `futures_core::Stream` (driven by a ten-line executor) agree; a stream that
//!   skips its chunks yields its final item alone, drops every chunk once, and is woken for the
//!   final item only;
//! - join limits, checked step by step with a scripted handler that the test advances one step at
//!   a time: at most `max_batch_size` running items; the cost budget of running items, with no
//!   later item overtaking one that does not fit; the join policy's waiting-served ratio and
//!   most-waiting-steps bound, to the exact step; a finished item leaves at once and a waiting one
//!   takes its place at the next boundary;
//! - faults: a panicking or miscounting `step` fails exactly the items of that step, a panicking
//!   `join` exactly the joining items, and the worker serves the next ones; a chunk whose `Drop`
//!   panics, dropped by the worker because its stream left, does not stop the worker;
//! - cancellation: a dropped stream's item leaves at the next step (and a queued one never joins);
//! - deadlines: in the queue (never joins) and during generation (chunks, then `Expired`);
//! - shutdown: every accepted item runs to completion, later submits are handed back;
//! - statistics: one queue time and one latency per item (per class too), one batch size and one
//!   compute time per step; queue time, step time and latency measured, not left at zero;
//! - stress: 4 clients, cancellations and deadlines mixed in, exactly one final item per accepted
//!   request and exact totals in `stats()`;
//! - `Send`/`Sync`: checked at compile time.
//!
//! Every timeout here is a hang guard ([`GUARD`]), never an assertion about speed.
//!
//! ```text
//! cargo test --release --test batch_stream
//! ```

use latchless::batch::{
    BatchError, Batcher, ChunkStream, ConfigError, JoinPolicy, Joined, PriorityClass, SpawnError,
    Step, StepHandler, StreamBatcher, Streamed, SubmitError,
};
use std::panic::panic_any;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

// Thread-safety markers, checked at compile time: the handle and a stream are `Send + Sync` when
// requests, chunks and outputs are `Send`, even when they are not `Sync`.
const _: () = {
    fn assert_send_sync<T: Send + Sync>() {}
    type NotSync = std::cell::Cell<u8>;
    let _ = assert_send_sync::<StreamBatcher<NotSync, NotSync, NotSync>>;
    let _ = assert_send_sync::<ChunkStream<NotSync, NotSync>>;
    let _ = assert_send_sync::<Streamed<u8, u8>>;
};

/// How long anything may take before the test calls it a hang. Generous: the machine is shared.
const GUARD: Duration = Duration::from_secs(60);

/// One request to the test handlers.
#[derive(Clone, Copy, Debug)]
struct Req {
    id: u32,
    /// Steps until it finishes (0: finished at its join).
    steps: u32,
    cost: u64,
    /// Its join panics.
    panic_join: bool,
    /// The step after which it would have taken this many steps panics.
    panic_at: Option<u32>,
}

fn req(id: u32, steps: u32) -> Req {
    Req {
        id,
        steps,
        cost: 1,
        panic_join: false,
        panic_at: None,
    }
}

/// The chunk item `id` makes at its step `k` (0-based).
fn chunk(id: u32, k: u32) -> u64 {
    u64::from(id) * 1000 + u64::from(k)
}

/// What the scripted handler tells the test.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// `join` was called with these ids.
    Joined(Vec<u32>),
    /// A step started over these ids (sorted).
    Step(Vec<u32>),
}

/// A running item: its request and the steps it took.
struct Item {
    req: Req,
    done: u32,
}

/// The test handler. Scripted: it reports every join and step start, and waits for a permit
/// before each step (once the test drops its permit sender, it runs freely). Free: `permits` is
/// `None` and each step sleeps `pause`.
struct Handler {
    events: Option<Sender<Event>>,
    permits: Option<Receiver<()>>,
    pause: Duration,
}

impl StepHandler for Handler {
    type Req = Req;
    type State = Item;
    type Chunk = u64;
    type Out = u32;

    fn join(&mut self, reqs: Vec<Req>) -> Vec<Joined<Item, u32>> {
        if let Some(tx) = &self.events {
            let _ = tx.send(Event::Joined(reqs.iter().map(|r| r.id).collect()));
        }
        if reqs.iter().any(|r| r.panic_join) {
            panic_any("join panics on purpose");
        }
        reqs.into_iter()
            .map(|req| {
                if req.steps == 0 {
                    Joined::Finished(req.id)
                } else {
                    Joined::Running(Item { req, done: 0 })
                }
            })
            .collect()
    }

    fn step(&mut self, items: &mut [Item]) -> Vec<Step<u64, u32>> {
        if let Some(tx) = &self.events {
            let mut ids: Vec<u32> = items.iter().map(|i| i.req.id).collect();
            ids.sort_unstable();
            let _ = tx.send(Event::Step(ids));
        }
        if let Some(rx) = &self.permits {
            // A dropped sender (the test is done scripting) lets the handler run freely.
            let _ = rx.recv_timeout(GUARD);
        }
        if !self.pause.is_zero() {
            thread::sleep(self.pause);
        }
        if items.iter().any(|i| i.req.panic_at == Some(i.done)) {
            panic_any("step panics on purpose");
        }
        items
            .iter_mut()
            .map(|i| {
                if i.done == i.req.steps {
                    Step::Finish(i.req.id)
                } else {
                    i.done += 1;
                    Step::Chunk(chunk(i.req.id, i.done - 1))
                }
            })
            .collect()
    }
}

/// A free-running handler whose steps take `pause`.
fn free(pause: Duration) -> Handler {
    Handler {
        events: None,
        permits: None,
        pause,
    }
}

/// The test's side of a scripted handler.
struct Script {
    events: Receiver<Event>,
    permits: Option<Sender<()>>,
}

impl Script {
    fn expect(&self, want: Event) {
        match self.events.recv_timeout(GUARD) {
            Ok(got) => assert_eq!(got, want),
            Err(e) => panic!("waited for {want:?}: {e:?}"),
        }
    }

    /// Lets the step that started run.
    fn permit(&self) {
        self.permits.as_ref().unwrap().send(()).unwrap();
    }

    /// Stops scripting: the step waiting for a permit goes on, and so does every later one.
    fn release(&mut self) {
        self.permits = None;
    }

    /// Asserts that nothing more was reported (after the batcher shut down).
    fn expect_no_join_of(&self, id: u32) {
        loop {
            match self.events.try_recv() {
                Ok(Event::Joined(ids)) => assert!(!ids.contains(&id), "{id} joined"),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

fn scripted() -> (Script, Handler) {
    let (etx, erx) = mpsc::channel();
    let (ptx, prx) = mpsc::channel();
    (
        Script {
            events: erx,
            permits: Some(ptx),
        },
        Handler {
            events: Some(etx),
            permits: Some(prx),
            pause: Duration::ZERO,
        },
    )
}

type Batch = StreamBatcher<Req, u64, u32>;

/// Reads a stream to its end (each item with a hang guard), checking that exactly one final
/// item comes, last.
fn drain<C: Send + 'static>(s: ChunkStream<C, u32>) -> (Vec<C>, Result<u32, BatchError>) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let items: Vec<_> = s.collect();
        let _ = tx.send(items);
    });
    let items = rx
        .recv_timeout(GUARD)
        .expect("a stream ended within the guard");
    let mut chunks = Vec::new();
    let mut done = None;
    for item in items {
        assert!(done.is_none(), "an item after the final one");
        match item {
            Streamed::Chunk(c) => chunks.push(c),
            Streamed::Done(r) => done = Some(r),
        }
    }
    (chunks, done.expect("exactly one final item"))
}

fn ok_chunks(id: u32, steps: u32) -> Vec<u64> {
    (0..steps).map(|k| chunk(id, k)).collect()
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

#[test]
fn chunks_in_order_then_one_final_item() {
    let b = Batcher::builder()
        .max_batch_size(4)
        .spawn_steps(free(Duration::ZERO))
        .unwrap();
    let streams: Vec<_> = (0..12)
        .map(|id| (id, b.submit(req(id, id % 5)).unwrap()))
        .collect();
    for (id, s) in streams {
        let (chunks, done) = drain(s);
        assert_eq!(chunks, ok_chunks(id, id % 5));
        assert_eq!(done, Ok(id));
    }
    b.shutdown();
    let s = b.stats();
    assert_eq!((s.submitted, s.completed, s.failed), (12, 12, 0));
    assert!(s.batches > 0);
}

#[test]
fn iterator_is_fused_after_the_final_item() {
    let b = Batcher::builder()
        .spawn_steps(free(Duration::ZERO))
        .unwrap();
    let mut s = b.submit(req(1, 1)).unwrap();
    assert_eq!(s.next(), Some(Streamed::Chunk(chunk(1, 0))));
    assert_eq!(s.next(), Some(Streamed::Done(Ok(1))));
    assert!(s.is_ended());
    assert_eq!(s.next(), None);
    assert_eq!(s.try_next(), None);
}

/// Wakes a thread.
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls a stream to its end on this thread, parking between polls.
fn collect_async(s: &mut ChunkStream<u64, u32>) -> Vec<Streamed<u64, u32>> {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let start = Instant::now();
    let mut items = Vec::new();
    loop {
        match futures_core::Stream::poll_next(Pin::new(&mut *s), &mut cx) {
            Poll::Ready(Some(item)) => items.push(item),
            Poll::Ready(None) => return items,
            Poll::Pending => {
                assert!(start.elapsed() < GUARD, "stream hangs");
                thread::park_timeout(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn stream_impl_yields_the_same_items() {
    let b = Batcher::builder()
        .spawn_steps(free(Duration::from_millis(1)))
        .unwrap();
    let mut s = b.submit(req(3, 4)).unwrap();
    assert!(!futures_core::FusedStream::is_terminated(&s));
    let items = collect_async(&mut s);
    let mut want: Vec<_> = ok_chunks(3, 4).into_iter().map(Streamed::Chunk).collect();
    want.push(Streamed::Done(Ok(3)));
    assert_eq!(items, want);
    assert!(futures_core::FusedStream::is_terminated(&s));
}

/// Counts wake-ups.
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_stream_skipping_its_chunks_is_woken_for_the_final_item_only() {
    let (script, handler) = scripted();
    let b = Batcher::builder()
        .join_policy(JoinPolicy::eager())
        .spawn_steps(handler)
        .unwrap();
    let mut s = b.submit(req(5, 3)).unwrap();
    s.skip_chunks();
    let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&wakes));
    let mut cx = Context::from_waker(&waker);
    let mut poll =
        |s: &mut ChunkStream<u64, u32>| futures_core::Stream::poll_next(Pin::new(s), &mut cx);
    // Registers the waker: nothing has come yet.
    assert_eq!(poll(&mut s), Poll::Pending);
    script.expect(Event::Joined(vec![5]));
    // Three steps that each make a chunk: a step starts only after the previous one's chunks
    // were sent, so by the fourth step's start all three were, and none woke the reader.
    for _ in 0..3 {
        script.expect(Event::Step(vec![5]));
        script.permit();
    }
    script.expect(Event::Step(vec![5]));
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        0,
        "woken for a skipped chunk"
    );
    assert_eq!(s.try_next(), None, "a skipped chunk was kept");
    // The step that finishes the item: one wake-up, and the final item alone.
    script.permit();
    let start = Instant::now();
    while wakes.0.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < GUARD, "never woken for the final item");
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(poll(&mut s), Poll::Ready(Some(Streamed::Done(Ok(5)))));
    assert_eq!(poll(&mut s), Poll::Ready(None));
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    b.shutdown();
    assert_eq!(b.stats().completed, 1);
}

/// A chunk that counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Makes `n` [`Counted`] chunks for request `n`, one per step, then answers `n`; counts the
/// chunks it made.
struct MakesCounted {
    made: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl StepHandler for MakesCounted {
    type Req = u32;
    type State = (u32, u32);
    type Chunk = Counted;
    type Out = u32;

    fn join(&mut self, ns: Vec<u32>) -> Vec<Joined<(u32, u32), u32>> {
        ns.into_iter().map(|n| Joined::Running((n, n))).collect()
    }

    fn step(&mut self, items: &mut [(u32, u32)]) -> Vec<Step<Counted, u32>> {
        items
            .iter_mut()
            .map(|(left, n)| {
                if *left == 0 {
                    Step::Finish(*n)
                } else {
                    *left -= 1;
                    self.made.fetch_add(1, Ordering::SeqCst);
                    Step::Chunk(Counted(Arc::clone(&self.dropped)))
                }
            })
            .collect()
    }
}

#[test]
fn skipped_chunks_are_dropped_once_whether_read_late_or_never_queued() {
    let made = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let b = Batcher::builder()
        .spawn_steps(MakesCounted {
            made: Arc::clone(&made),
            dropped: Arc::clone(&dropped),
        })
        .unwrap();
    // Skipped at once: every chunk is dropped by the worker as it is made.
    let mut early = b.submit(40).unwrap();
    early.skip_chunks();
    // Skipped after one chunk was read and the rest were made: the unread ones are dropped by
    // `skip_chunks`.
    let mut late = b.submit(30).unwrap();
    assert!(matches!(late.next(), Some(Streamed::Chunk(_))));
    // Returns once every accepted item has its final item: all 70 chunks are made.
    b.shutdown();
    late.skip_chunks();
    assert_eq!(late.next().map(strip), Some(Streamed::Done(Ok(30))));
    assert_eq!(early.next().map(strip), Some(Streamed::Done(Ok(40))));
    assert!(early.next().is_none() && late.next().is_none());
    // Skipping again, or after the end, changes nothing.
    late.skip_chunks();
    assert_eq!(made.load(Ordering::SeqCst), 70);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        70,
        "each chunk dropped exactly once"
    );
}

/// A stream item with its chunk replaced by `()`, to compare.
fn strip(item: Streamed<Counted, u32>) -> Streamed<(), u32> {
    match item {
        Streamed::Chunk(_) => Streamed::Chunk(()),
        Streamed::Done(d) => Streamed::Done(d),
    }
}

// ---------------------------------------------------------------------------------------------
// Join limits, step by step
// ---------------------------------------------------------------------------------------------

fn spawn_scripted(max_active: usize, budget: u64, policy: JoinPolicy, handler: Handler) -> Batch {
    Batcher::builder()
        .max_batch_size(max_active)
        .max_batch_cost(budget)
        .cost(|r: &Req| r.cost)
        .join_policy(policy)
        .spawn_steps(handler)
        .unwrap()
}

#[test]
fn at_most_max_batch_size_items_run_and_a_finished_one_makes_room() {
    let (mut script, handler) = scripted();
    let b = spawn_scripted(2, u64::MAX, JoinPolicy::eager(), handler);
    let a = b.submit(req(1, 1)).unwrap();
    script.expect(Event::Joined(vec![1]));
    script.expect(Event::Step(vec![1]));
    // Submitted while the worker is inside step 1.
    let rest: Vec<_> = [req(2, 5), req(3, 5)]
        .into_iter()
        .map(|r| b.submit(r).unwrap())
        .collect();
    script.permit();
    // One place left: only 2 joins.
    script.expect(Event::Joined(vec![2]));
    script.expect(Event::Step(vec![1, 2]));
    script.permit();
    // Item 1 finished in that step: it left at once, and 3 takes its place.
    script.expect(Event::Joined(vec![3]));
    script.expect(Event::Step(vec![2, 3]));
    script.release();
    assert_eq!(drain(a), (ok_chunks(1, 1), Ok(1)));
    for (s, id) in rest.into_iter().zip([2, 3]) {
        assert_eq!(drain(s), (ok_chunks(id, 5), Ok(id)));
    }
}

#[test]
fn cost_budget_holds_and_nobody_overtakes_an_item_that_does_not_fit() {
    let (mut script, handler) = scripted();
    let b = spawn_scripted(8, 10, JoinPolicy::eager(), handler);
    let a = b
        .submit(Req {
            cost: 6,
            ..req(1, 2)
        })
        .unwrap();
    script.expect(Event::Joined(vec![1]));
    script.expect(Event::Step(vec![1]));
    // 6 + 5 > 10: item 2 waits; item 3 (cost 1) would fit but must not overtake it.
    let s2 = b
        .submit(Req {
            cost: 5,
            ..req(2, 1)
        })
        .unwrap();
    let s3 = b.submit(req(3, 1)).unwrap();
    script.permit();
    script.expect(Event::Step(vec![1]));
    script.permit();
    // Step 3 of item 1 finishes it; then both join (5 + 1 <= 10).
    script.expect(Event::Step(vec![1]));
    script.permit();
    script.expect(Event::Joined(vec![2, 3]));
    script.expect(Event::Step(vec![2, 3]));
    script.release();
    assert_eq!(drain(a), (ok_chunks(1, 2), Ok(1)));
    assert_eq!(drain(s2), (ok_chunks(2, 1), Ok(2)));
    assert_eq!(drain(s3), (ok_chunks(3, 1), Ok(3)));
    // Costlier than the whole budget: refused at once, handed back.
    match b.submit(Req {
        cost: 11,
        ..req(4, 1)
    }) {
        Err(SubmitError::TooCostly(r)) => assert_eq!(r.id, 4),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn waiting_served_ratio_holds_joins_back_until_enough_wait() {
    let (mut script, handler) = scripted();
    let mut policy = JoinPolicy::default();
    policy.waiting_served_ratio = 2.0;
    policy.max_waiting_steps = 1000;
    let b = spawn_scripted(8, u64::MAX, policy, handler);
    let a = b.submit(req(1, 5)).unwrap();
    script.expect(Event::Joined(vec![1]));
    script.expect(Event::Step(vec![1]));
    let s2 = b.submit(req(2, 1)).unwrap();
    script.permit();
    // 1 waiting < 2.0 x 1 running: no join.
    script.expect(Event::Step(vec![1]));
    let s3 = b.submit(req(3, 1)).unwrap();
    script.permit();
    // 2 waiting >= 2.0 x 1 running: both join.
    script.expect(Event::Joined(vec![2, 3]));
    script.expect(Event::Step(vec![1, 2, 3]));
    script.release();
    assert_eq!(drain(a).1, Ok(1));
    assert_eq!(drain(s2).1, Ok(2));
    assert_eq!(drain(s3).1, Ok(3));
}

#[test]
fn max_waiting_steps_bounds_how_long_an_item_waits() {
    let (mut script, handler) = scripted();
    let mut policy = JoinPolicy::default();
    policy.waiting_served_ratio = 100.0;
    policy.max_waiting_steps = 3;
    let b = spawn_scripted(8, u64::MAX, policy, handler);
    let a = b.submit(req(1, 10)).unwrap();
    script.expect(Event::Joined(vec![1]));
    script.expect(Event::Step(vec![1]));
    let s2 = b.submit(req(2, 1)).unwrap();
    // Item 2 waits through exactly 3 steps (the one running now and two more), then joins.
    for _ in 0..2 {
        script.permit();
        script.expect(Event::Step(vec![1]));
    }
    script.permit();
    script.expect(Event::Joined(vec![2]));
    script.expect(Event::Step(vec![1, 2]));
    script.release();
    assert_eq!(drain(a), (ok_chunks(1, 10), Ok(1)));
    assert_eq!(drain(s2), (ok_chunks(2, 1), Ok(2)));
}

#[test]
fn bad_join_ratio_is_a_config_error() {
    for ratio in [-1.0, f32::NAN, f32::INFINITY] {
        let mut policy = JoinPolicy::default();
        policy.waiting_served_ratio = ratio;
        let err = Batcher::builder()
            .join_policy(policy)
            .spawn_steps(free(Duration::ZERO))
            .unwrap_err();
        assert!(matches!(err, SpawnError::Config(ConfigError::BadJoinRatio)));
    }
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

#[test]
fn a_panicking_step_fails_exactly_its_items_and_the_worker_survives() {
    let (mut script, handler) = scripted();
    let b = spawn_scripted(8, u64::MAX, JoinPolicy::eager(), handler);
    let s1 = b.submit(req(1, 5)).unwrap();
    script.expect(Event::Joined(vec![1]));
    script.expect(Event::Step(vec![1]));
    let s2 = b
        .submit(Req {
            panic_at: Some(1),
            ..req(2, 5)
        })
        .unwrap();
    script.permit();
    script.expect(Event::Joined(vec![2]));
    script.expect(Event::Step(vec![1, 2]));
    script.permit();
    // Step 3 panics (item 2 at its second step): both items of that step fail.
    script.expect(Event::Step(vec![1, 2]));
    let s3 = b.submit(req(3, 2)).unwrap();
    script.permit();
    script.expect(Event::Joined(vec![3]));
    script.expect(Event::Step(vec![3]));
    script.release();
    assert_eq!(
        drain(s1),
        (ok_chunks(1, 2), Err(BatchError::HandlerPanicked))
    );
    assert_eq!(
        drain(s2),
        (ok_chunks(2, 1), Err(BatchError::HandlerPanicked))
    );
    assert_eq!(drain(s3), (ok_chunks(3, 2), Ok(3)));
    b.shutdown();
    let s = b.stats();
    assert_eq!((s.completed, s.failed), (1, 2));
}

#[test]
fn a_panicking_join_fails_only_the_joining_items() {
    let (mut script, handler) = scripted();
    let b = spawn_scripted(8, u64::MAX, JoinPolicy::eager(), handler);
    let s1 = b.submit(req(1, 3)).unwrap();
    script.expect(Event::Joined(vec![1]));
    script.expect(Event::Step(vec![1]));
    let s2 = b
        .submit(Req {
            panic_join: true,
            ..req(2, 3)
        })
        .unwrap();
    let s3 = b.submit(req(3, 3)).unwrap();
    script.permit();
    script.expect(Event::Joined(vec![2, 3]));
    script.expect(Event::Step(vec![1]));
    script.release();
    assert_eq!(drain(s1), (ok_chunks(1, 3), Ok(1)));
    assert_eq!(drain(s2), (vec![], Err(BatchError::HandlerPanicked)));
    assert_eq!(drain(s3), (vec![], Err(BatchError::HandlerPanicked)));
}

/// Returns one result too few at every step.
struct Miscounts;

impl StepHandler for Miscounts {
    type Req = u8;
    type State = ();
    type Chunk = ();
    type Out = ();

    fn join(&mut self, reqs: Vec<u8>) -> Vec<Joined<(), ()>> {
        reqs.into_iter().map(|_| Joined::Running(())).collect()
    }

    fn step(&mut self, items: &mut [()]) -> Vec<Step<(), ()>> {
        vec![Step::Continue; items.len() - 1]
    }
}

#[test]
fn a_miscounting_step_fails_its_items() {
    let b = Batcher::builder().spawn_steps(Miscounts).unwrap();
    let items: Vec<_> = b.submit(1).unwrap().collect();
    assert_eq!(
        items,
        [Streamed::Done(Err(BatchError::BadHandlerOutput {
            expected: 1,
            got: 0
        }))]
    );
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

#[test]
fn histograms_record_each_item_once_and_each_step_once() {
    let b = Batcher::builder()
        .max_batch_size(3)
        .class(PriorityClass::new())
        .class(PriorityClass::new())
        .spawn_steps(free(Duration::ZERO))
        .unwrap();
    // 10 items in class 0, 14 in class 1; some finish at their join (0 steps).
    let streams: Vec<_> = (0..24)
        .map(|id| {
            let class = usize::from(id >= 10);
            (id, b.submit_to(req(id, id % 4), class, None).unwrap())
        })
        .collect();
    for (id, s) in streams {
        assert_eq!(drain(s), (ok_chunks(id, id % 4), Ok(id)));
    }
    b.shutdown();
    let (h, s) = (b.histograms(), b.stats());
    assert_eq!(s.completed, 24);
    // One queue time and one latency per item, by class too.
    assert_eq!((h.queue_time.len(), h.latency.len()), (24, 24));
    assert_eq!(h.classes.len(), 2);
    assert_eq!(
        (h.classes[0].latency.len(), h.classes[1].latency.len()),
        (10, 14)
    );
    assert_eq!(
        (h.classes[0].queue_time.len(), h.classes[1].queue_time.len()),
        (10, 14)
    );
    // One batch size and one compute time per step, never more items than may run.
    assert!(s.batches > 0);
    assert_eq!(
        (h.batch_size.len(), h.compute_time.len()),
        (s.batches, s.batches)
    );
    assert!(h.batch_size.max() <= 3 && h.batch_size.min() >= 1);
    assert_eq!(s.batch_sizes.iter().sum::<u64>(), s.batches);
}

#[test]
fn queue_time_and_compute_time_are_measured() {
    // One item at a time, each step 2 ms: 3 items of 3 steps each (2 chunks, then the final
    // output), so the second waits at least 6 ms to join and the third at least 12 ms.
    let pause = Duration::from_millis(2);
    let b = Batcher::builder()
        .max_batch_size(1)
        .spawn_steps(free(pause))
        .unwrap();
    let streams: Vec<_> = (1..=3).map(|id| b.submit(req(id, 2)).unwrap()).collect();
    for s in streams {
        assert_eq!(drain(s).1.map(|_| ()), Ok(()));
    }
    b.shutdown();
    let (h, s) = (b.histograms(), b.stats());
    assert!(
        s.queue_wait >= 9 * pause, // 0 + 6 + 12 ms
        "queue_wait {:?} for items that waited 0, >= 6 and >= 12 ms",
        s.queue_wait
    );
    // Histograms are exact to 1%.
    assert!(h.queue_time.max() >= 11_800, "{:?}", h.queue_time);
    assert_eq!(s.batches, 9);
    assert!(h.compute_time.min() >= 1_980, "{:?}", h.compute_time);
    assert!(h.latency.min() >= 5_900, "{:?}", h.latency);
    assert!(
        h.latency.max() >= h.queue_time.max() + 5_900,
        "{:?}",
        h.latency
    );
}

// ---------------------------------------------------------------------------------------------
// Cancellation and deadlines
// ---------------------------------------------------------------------------------------------

#[test]
fn a_dropped_stream_leaves_at_the_next_step_and_a_queued_one_never_joins() {
    let (mut script, handler) = scripted();
    let mut policy = JoinPolicy::default();
    policy.waiting_served_ratio = 100.0;
    policy.max_waiting_steps = 1000;
    let b = spawn_scripted(8, u64::MAX, policy, handler);
    let s1 = b.submit(req(1, 100)).unwrap();
    script.expect(Event::Joined(vec![1]));
    script.expect(Event::Step(vec![1]));
    // Queued behind the policy, then cancelled: it must never join.
    let queued = b.submit(req(9, 1)).unwrap();
    drop(queued);
    let s2 = b.submit(req(2, 100)).unwrap();
    drop(s1);
    script.permit();
    // Item 1 left before the next step (its chunk was dropped); with nobody running, 2 joins
    // at once, and the cancelled 9 is skipped on the way.
    script.expect(Event::Joined(vec![2]));
    script.expect(Event::Step(vec![2]));
    assert_eq!(b.in_flight(), 1);
    drop(s2);
    script.release();
    b.shutdown();
    script.expect_no_join_of(9);
    let s = b.stats();
    assert_eq!((s.submitted, s.cancelled, s.completed), (3, 3, 0));
    assert_eq!(b.in_flight(), 0);
}

/// A chunk whose `Drop` panics when `armed`: a user type with a faulty destructor.
#[derive(Debug)]
struct Touchy {
    id: u32,
    armed: bool,
}

impl Drop for Touchy {
    fn drop(&mut self) {
        if self.armed && !thread::panicking() {
            panic!("Touchy::drop panics on purpose (expected in this test)");
        }
    }
}

/// Streams `steps` [`Touchy`] chunks per request `(id, steps, armed)`, then its id. Each step
/// reports its start on `entered` and waits for a permit (none once the permits' sender is gone).
struct Fragile {
    entered: Sender<()>,
    permits: Receiver<()>,
}

impl StepHandler for Fragile {
    type Req = (u32, u32, bool);
    type State = (u32, u32, bool);
    type Chunk = Touchy;
    type Out = u32;

    fn join(&mut self, reqs: Vec<(u32, u32, bool)>) -> Vec<Joined<(u32, u32, bool), u32>> {
        reqs.into_iter().map(Joined::Running).collect()
    }

    fn step(&mut self, items: &mut [(u32, u32, bool)]) -> Vec<Step<Touchy, u32>> {
        let _ = self.entered.send(());
        let _ = self.permits.recv_timeout(GUARD);
        items
            .iter_mut()
            .map(|(id, left, armed)| {
                if *left == 0 {
                    Step::Finish(*id)
                } else {
                    *left -= 1;
                    Step::Chunk(Touchy {
                        id: *id,
                        armed: *armed,
                    })
                }
            })
            .collect()
    }
}

/// Reads a stream of [`Touchy`] chunks to its end within the guard ([`drain`]): the chunks'
/// ids, and the final item.
fn drain_touchy(s: ChunkStream<Touchy, u32>) -> (Vec<u32>, Result<u32, BatchError>) {
    let (chunks, done) = drain(s);
    (chunks.iter().map(|t| t.id).collect(), done)
}

#[test]
fn a_chunk_whose_drop_panics_after_its_stream_left_does_not_stop_the_worker() {
    let (entered_tx, entered) = mpsc::channel();
    let (permits, permits_rx) = mpsc::channel::<()>();
    let b = Batcher::builder()
        .join_policy(JoinPolicy::eager())
        .spawn_steps(Fragile {
            entered: entered_tx,
            permits: permits_rx,
        })
        .unwrap();
    // The armed item joins first, so it runs in the first step.
    let armed = b.submit((1, 3, true)).unwrap();
    let other = b.submit((2, 3, false)).unwrap();
    entered
        .recv_timeout(GUARD)
        .expect("the worker never stepped");
    // Its reader leaves during the step: the worker drops the chunk the step makes for it.
    drop(armed);
    // Every later step runs freely.
    drop(permits);
    assert_eq!(drain_touchy(other), (vec![2, 2, 2], Ok(2)));
    // The worker still serves.
    assert_eq!(
        drain_touchy(b.submit((3, 2, false)).unwrap()),
        (vec![3, 3], Ok(3))
    );
    let (done_tx, done) = mpsc::channel();
    thread::spawn(move || {
        b.shutdown();
        let _ = done_tx.send(b.stats());
    });
    let s = done.recv_timeout(GUARD).expect("shutdown returned");
    assert_eq!((s.submitted, s.completed, s.cancelled), (3, 2, 1), "{s:?}");
}

#[test]
fn deadlines_apply_in_the_queue_and_during_generation() {
    let b = Batcher::builder()
        .max_batch_size(1)
        .spawn_steps(free(Duration::from_millis(1)))
        .unwrap();
    // Runs until its deadline: some chunks, then `Expired`.
    let deadline = Instant::now() + Duration::from_millis(60);
    let long = b.submit_before(req(1, u32::MAX), deadline).unwrap();
    // Waits behind it (one place) past its own deadline: never joins.
    let queued = b
        .submit_before(req(2, 1), Instant::now() + Duration::from_millis(20))
        .unwrap();
    let (chunks, done) = drain(long);
    assert_eq!(done, Err(BatchError::Expired));
    assert!(Instant::now() >= deadline);
    assert!(!chunks.is_empty());
    assert_eq!(chunks, ok_chunks(1, chunks.len() as u32));
    assert_eq!(drain(queued), (vec![], Err(BatchError::Expired)));
    b.shutdown();
    assert_eq!(b.stats().expired, 2);
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn shutdown_runs_every_accepted_item_to_completion() {
    let b = Batcher::builder()
        .max_batch_size(3)
        .spawn_steps(free(Duration::from_micros(200)))
        .unwrap();
    let streams: Vec<_> = (0..10)
        .map(|id| (id, b.submit(req(id, 3 + id)).unwrap()))
        .collect();
    let stopper = {
        let b = b.clone();
        thread::spawn(move || b.shutdown())
    };
    for (id, s) in streams {
        assert_eq!(drain(s), (ok_chunks(id, 3 + id), Ok(id)));
    }
    stopper.join().unwrap();
    match b.submit(req(99, 1)) {
        Err(SubmitError::ShuttingDown(r)) => assert_eq!(r.id, 99),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(b.stats().completed, 10);
}

#[test]
fn dropping_the_last_handle_drains_too() {
    let b = Batcher::builder()
        .spawn_steps(free(Duration::from_micros(100)))
        .unwrap();
    let s = b.submit(req(5, 20)).unwrap();
    drop(b);
    assert_eq!(drain(s), (ok_chunks(5, 20), Ok(5)));
}

#[test]
fn overload_hands_the_request_back() {
    let (mut script, handler) = scripted();
    let b: Batch = Batcher::builder()
        .max_queue(1)
        .spawn_steps(handler)
        .unwrap();
    let s = b.submit(req(1, 1)).unwrap();
    match b.submit(req(2, 1)) {
        Err(SubmitError::Overloaded(r)) => assert_eq!(r.id, 2),
        other => panic!("{:?}", other.map(|_| ())),
    }
    script.release();
    assert_eq!(drain(s).1, Ok(1));
    // Admission is back once the final item is out: the client may submit again at once.
    let s = b.submit(req(3, 0)).unwrap();
    assert_eq!(drain(s), (vec![], Ok(3)));
}

// ---------------------------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------------------------

#[test]
fn a_pool_serves_every_item_and_replaces_a_handler_that_panicked() {
    let made = Arc::new(AtomicUsize::new(0));
    let b: Batch = {
        let made = Arc::clone(&made);
        Batcher::builder()
            .max_batch_size(4)
            .spawn_steps_pool(2, move || {
                made.fetch_add(1, Ordering::SeqCst);
                free(Duration::from_micros(50))
            })
            .unwrap()
    };
    let panicking = |id: u32| id % 10 == 7;
    let results: Vec<(u32, Vec<u64>, Result<u32, BatchError>)> = thread::scope(|s| {
        let clients: Vec<_> = (0..3u32)
            .map(|t| {
                let b = b.clone();
                s.spawn(move || {
                    let streams: Vec<_> = (0..20u32)
                        .map(|i| {
                            let id = t * 100 + i;
                            let r = Req {
                                panic_at: panicking(id).then_some(1),
                                ..req(id, 1 + i % 4)
                            };
                            (id, b.submit(r).unwrap())
                        })
                        .collect();
                    streams
                        .into_iter()
                        .map(|(id, st)| {
                            let (chunks, done) = drain_here(st);
                            (id, chunks, done)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let mut failed = 0;
    for (id, chunks, done) in &results {
        match done {
            Ok(got) => {
                assert_eq!(got, id);
                assert_eq!(*chunks, ok_chunks(*id, 1 + id % 100 % 4));
            }
            Err(BatchError::HandlerPanicked) => failed += 1,
            Err(e) => panic!("{id}: {e:?}"),
        }
        if panicking(*id) {
            assert_eq!(*done, Err(BatchError::HandlerPanicked), "{id}");
        }
    }
    b.shutdown();
    let s = b.stats();
    assert_eq!((s.submitted, s.completed + s.failed), (60, 60));
    assert_eq!(s.failed, failed);
    // One handler per worker, and a fresh one after each panic.
    assert!(made.load(Ordering::SeqCst) > 2, "{made:?}");
}

#[test]
fn a_pool_of_zero_workers_is_a_config_error() {
    let err = Batcher::builder()
        .spawn_steps_pool(0, || free(Duration::ZERO))
        .unwrap_err();
    assert!(matches!(err, SpawnError::Config(ConfigError::ZeroWorkers)));
}

// ---------------------------------------------------------------------------------------------
// Stress
// ---------------------------------------------------------------------------------------------

#[test]
fn clients_with_cancellations_and_deadlines_get_exactly_one_final_item_each() {
    const PER_CLIENT: u32 = if cfg!(miri) { 10 } else { 300 };
    let b = Batcher::builder()
        .max_batch_size(8)
        .max_queue(64)
        .spawn_steps(free(Duration::ZERO))
        .unwrap();
    let totals: Vec<(u64, u64)> = thread::scope(|s| {
        let clients: Vec<_> = (0..4u32)
            .map(|t| {
                let b = b.clone();
                s.spawn(move || {
                    let (mut accepted, mut ok) = (0u64, 0u64);
                    for i in 0..PER_CLIENT {
                        let id = t * 100_000 + i;
                        let r = req(id, i % 7);
                        let sub = if i % 5 == 0 {
                            b.submit_before(r, Instant::now() + Duration::from_micros(50))
                        } else {
                            b.submit(r)
                        };
                        let Ok(mut stream) = sub else { continue };
                        accepted += 1;
                        if i % 3 == 0 {
                            // Read one item at most, then cancel.
                            let _ = stream.next();
                            drop(stream);
                            continue;
                        }
                        let (chunks, done) = drain_here(stream);
                        match done {
                            Ok(got) => {
                                assert_eq!(got, id);
                                assert_eq!(chunks, ok_chunks(id, i % 7));
                                ok += 1;
                            }
                            Err(BatchError::Expired) => assert_eq!(i % 5, 0),
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    (accepted, ok)
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    b.shutdown();
    let accepted: u64 = totals.iter().map(|t| t.0).sum();
    let s = b.stats();
    assert_eq!(s.submitted, accepted);
    assert_eq!(s.failed, 0);
    assert_eq!(s.completed + s.expired + s.cancelled, accepted);
    assert!(s.completed >= totals.iter().map(|t| t.1).sum());
    assert_eq!(b.in_flight(), 0);
}

/// [`drain`] on the calling thread (the stress clients are threads already).
fn drain_here(s: ChunkStream<u64, u32>) -> (Vec<u64>, Result<u32, BatchError>) {
    let mut chunks = Vec::new();
    let mut done = None;
    for item in s {
        assert!(done.is_none(), "an item after the final one");
        match item {
            Streamed::Chunk(c) => chunks.push(c),
            Streamed::Done(r) => done = Some(r),
        }
    }
    (chunks, done.expect("exactly one final item"))
}
