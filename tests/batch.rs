//! Behaviour tests of [`latchless::batch`], each written to fail if the batcher breaks its
//! contract (DESIGN.md, "Invariants every test suite holds the code to", Batcher):
//!
//! - configuration: a zero bound is a `ConfigError`, never a panic;
//! - faults: a panicking handler fails exactly its batch (`HandlerPanicked`) and the worker serves
//!   the next one; a wrong output count fails every request of the batch (`BadHandlerOutput`); a
//!   reply whose `Drop` panics, dropped by the worker because its `Pending` left, does not stop
//!   the worker;
//! - admission: beyond `max_queue` the very request is handed back (`Overloaded`) at once; a
//!   request costlier than a whole batch is refused at `submit` (`TooCostly`); a client that has
//!   its reply is admitted again at once, even with `max_queue = 1`;
//! - deadlines and cancellation: an expired request is answered `Expired` and a request whose
//!   `Pending` was dropped is skipped, and the handler never sees either;
//! - shutdown (explicit, by dropping the last handle, from several threads at once, from inside
//!   the handler): every accepted request is answered, later submits are `ShuttingDown`;
//! - batch formation: `max_batch_size`, the cost budget and `max_wait` close batches as documented;
//! - waiting: `wait_timeout` hands the `Pending` back; `Pending` is a `Future` (driven here by a
//!   ten-line executor, no async runtime);
//! - stress: 8 client threads, every reply checked against its own request, every request computed
//!   exactly once, exact totals in `stats()`.
//!
//! Many tests park the worker inside the handler (a [`Gate`]) so that requests pile up in a known
//! state before the batcher acts on them. Every timeout here is a hang guard ([`GUARD`]), never an
//! assertion about speed.
//!
//! The stress test sends `LATCHLESS_STRESS_N` requests in total (default 80,000, i.e. 8 threads x
//! 10,000; 400 under Miri).
//!
//! ```text
//! cargo test --test batch
//! cargo test --release --test batch
//! ```

use latchless::batch::{
    BatchConfig, BatchError, Batcher, CallError, ConfigError, Pending, SpawnError, SubmitError,
};
use std::future::Future;
use std::panic::resume_unwind;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

// Sizing from `LATCHLESS_STRESS_N`, shared with the other stress tests; this binary does not
// split its total over threads, so `stress_n_split` goes unused.
#[allow(dead_code)]
#[path = "common/stress_env.rs"]
mod stress_env;

use stress_env::stress_n;

/// How long anything may take before the test calls it a hang. Generous: the machine is shared.
const GUARD: Duration = Duration::from_secs(60);

/// The hang guard of the whole stress test (it takes well under a second here in debug builds).
const STRESS_GUARD: Duration = Duration::from_secs(600);

/// A `max_wait` that never passes during a test: batches close on size, cost or shutdown only.
const LONG_WAIT: Duration = Duration::from_secs(3600);

/// Requests the test handler treats specially (see [`rig_with_cost`]).
const BLOCK: u64 = u64::MAX;
const PANIC: u64 = u64::MAX - 1;
const SHORT: u64 = u64::MAX - 2;
const LONG: u64 = u64::MAX - 3;
const STOP: u64 = u64::MAX - 4;

/// The answer to request `x`: element-wise, so it never depends on the batch `x` ran in.
fn f(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ 0x5555
}

fn config(max_batch_size: usize, max_wait: Duration, max_queue: usize) -> BatchConfig {
    let mut config = BatchConfig::default();
    config.max_batch_size = max_batch_size;
    config.max_batch_cost = u64::MAX;
    config.max_wait = max_wait;
    config.max_queue = max_queue;
    config
}

/// [`config`] with a cost budget.
fn config_with_budget(
    max_batch_size: usize,
    max_batch_cost: u64,
    max_wait: Duration,
    max_queue: usize,
) -> BatchConfig {
    let mut config = config(max_batch_size, max_wait, max_queue);
    config.max_batch_cost = max_batch_cost;
    config
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The test's side of a gate that holds the worker inside the handler.
struct Gate {
    entered: Receiver<()>,
    release: Sender<()>,
}

/// The handler's side: [`Turnstile::pass`] reports arrival and blocks until released.
struct Turnstile {
    entered: Sender<()>,
    release: Receiver<()>,
}

fn gate() -> (Gate, Turnstile) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    (
        Gate {
            entered: entered_rx,
            release: release_tx,
        },
        Turnstile {
            entered: entered_tx,
            release: release_rx,
        },
    )
}

impl Gate {
    /// Returns once the worker is inside the handler, held by the gate.
    fn wait_entered(&self) {
        self.entered
            .recv_timeout(GUARD)
            .expect("the worker never ran the batch holding BLOCK");
    }

    fn release(&self) {
        let _ = self.release.send(());
    }
}

impl Turnstile {
    fn pass(&self) {
        let _ = self.entered.send(());
        // Timeout or a dropped `Gate` (a failed test) lets the worker go rather than hang.
        let _ = self.release.recv_timeout(GUARD);
    }
}

/// Every batch the handler saw, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Vec<u64>>>>);

impl Seen {
    fn record(&self, batch: &[u64]) {
        self.0.lock().unwrap().push(batch.to_vec());
    }

    fn batches(&self) -> Vec<Vec<u64>> {
        self.0.lock().unwrap().clone()
    }

    fn all(&self) -> Vec<u64> {
        self.batches().into_iter().flatten().collect()
    }
}

/// A handle whose drop cannot hang the test binary: dropped on a [`within`] thread normally, and
/// leaked when the test is already failing (its worker may be stuck, and a blocking drop during
/// unwinding would turn a failure into a hang).
struct Guarded(Option<Batcher<u64, u64>>);

impl Guarded {
    /// The handle itself, for tests about dropping it.
    fn into_inner(mut self) -> Batcher<u64, u64> {
        self.0.take().expect("present until dropped")
    }
}

impl std::ops::Deref for Guarded {
    type Target = Batcher<u64, u64>;

    fn deref(&self) -> &Batcher<u64, u64> {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            if thread::panicking() {
                std::mem::forget(b);
            } else {
                within("dropping a handle", move || drop(b));
            }
        }
    }
}

/// A batcher with the test handler, its gate and its record.
struct Rig {
    b: Guarded,
    gate: Gate,
    seen: Seen,
}

fn rig(config: BatchConfig) -> Rig {
    rig_with_cost(config, |_| 1)
}

/// The test handler records each batch, then: blocks at the gate if the batch holds `BLOCK`;
/// panics if it holds `PANIC`; returns one result too few for `SHORT`, one too many for `LONG`;
/// otherwise answers `f(x)` for each `x`.
fn rig_with_cost(config: BatchConfig, cost: impl Fn(&u64) -> u64 + Send + Sync + 'static) -> Rig {
    let (gate, turnstile) = gate();
    let seen = Seen::default();
    let record = seen.clone();
    let b = Batcher::spawn_with_cost(config, cost, move |xs: Vec<u64>| {
        record.record(&xs);
        if xs.contains(&BLOCK) {
            turnstile.pass();
        }
        if xs.contains(&PANIC) {
            panic!("test handler: asked to panic (expected in this test)");
        }
        let mut out: Vec<u64> = xs.iter().copied().map(f).collect();
        if xs.contains(&SHORT) {
            out.pop();
        }
        if xs.contains(&LONG) {
            out.push(0);
        }
        out
    })
    .expect("a valid configuration");
    Rig {
        b: Guarded(Some(b)),
        gate,
        seen,
    }
}

/// The reply, or a failed test if none comes within [`GUARD`].
fn answer(p: Pending<u64>) -> Result<u64, BatchError> {
    p.wait_timeout(GUARD)
        .unwrap_or_else(|_| panic!("no reply within {GUARD:?}: lost reply or stuck worker"))
}

fn submit(b: &Batcher<u64, u64>, x: u64) -> Pending<u64> {
    b.submit(x)
        .unwrap_or_else(|e| panic!("submit({x}) refused: {e}"))
}

/// Runs `f` on its own thread and fails the test if it does not return within [`GUARD`].
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    within_for(GUARD, what, f)
}

/// Runs `f` on its own thread and fails the test if it does not return within `guard`.
fn within_for<T: Send + 'static>(
    guard: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done_tx, done_rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let out = f();
        let _ = done_tx.send(());
        out
    });
    match done_rx.recv_timeout(guard) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
            h.join().unwrap_or_else(|panic| resume_unwind(panic))
        }
        Err(RecvTimeoutError::Timeout) => panic!("hang: {what} did not return within {guard:?}"),
    }
}

/// `b.call(x)`, failing the test instead of hanging.
fn call(b: &Batcher<u64, u64>, x: u64) -> Result<u64, CallError<u64>> {
    let b = b.clone();
    within("call", move || b.call(x))
}

fn shutdown_within(b: &Batcher<u64, u64>) {
    let b = b.clone();
    within("shutdown", move || b.shutdown());
}

/// Whether shutdown has begun, read from the handle's `Debug` output (the only outside view of
/// it that does not submit a request).
fn shutting_down(b: &Batcher<u64, u64>) -> bool {
    let dbg = format!("{b:?}");
    assert!(
        dbg.contains("shutting_down: "),
        "Debug output changed: {dbg}"
    );
    dbg.contains("shutting_down: true")
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + GUARD;
    while !cond() {
        assert!(Instant::now() < end, "hang: {what} never happened");
        thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn zero_bounds_are_config_errors_not_panics() {
    let handler = |xs: Vec<u64>| xs;
    let mut zero_size = BatchConfig::default();
    zero_size.max_batch_size = 0;
    let mut zero_cost = BatchConfig::default();
    zero_cost.max_batch_cost = 0;
    let mut zero_queue = BatchConfig::default();
    zero_queue.max_queue = 0;
    assert!(matches!(
        Batcher::spawn(zero_size.clone(), handler),
        Err(SpawnError::Config(ConfigError::ZeroBatchSize))
    ));
    assert!(matches!(
        Batcher::spawn(zero_cost.clone(), handler),
        Err(SpawnError::Config(ConfigError::ZeroBatchCost))
    ));
    assert!(matches!(
        Batcher::spawn(zero_queue.clone(), handler),
        Err(SpawnError::Config(ConfigError::ZeroQueue))
    ));
    assert!(matches!(
        Batcher::spawn_with_cost(zero_cost, |_: &u64| 1, handler),
        Err(SpawnError::Config(ConfigError::ZeroBatchCost))
    ));
    for bad in [&zero_size, &zero_queue] {
        let err = bad.validate().unwrap_err();
        assert!(!err.to_string().is_empty());
    }
    // Zero `max_wait` is valid: batches are then formed greedily from what is queued.
    let greedy = config(1, Duration::ZERO, 1);
    assert!(greedy.validate().is_ok());
    let b = Batcher::spawn(greedy, |xs: Vec<u64>| xs.into_iter().map(f).collect()).unwrap();
    let b = Guarded(Some(b));
    assert_eq!(call(&b, 9).unwrap(), f(9));
    shutdown_within(&b);
}

#[test]
fn handles_and_pendings_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Batcher<String, Vec<u8>>>();
    send_sync::<Pending<Vec<u8>>>();
    send_sync::<SubmitError<String>>();
    send_sync::<CallError<String>>();
}

// ---------------------------------------------------------------------------------------------
// Handler faults
// ---------------------------------------------------------------------------------------------

#[test]
fn handler_panic_fails_exactly_its_batch_and_the_worker_survives() {
    // Batches close at exactly 3 requests: `max_wait` never passes.
    let Rig { b, seen, .. } = rig(config(3, LONG_WAIT, 64));
    for round in 0..3u64 {
        let base = 100 * round;
        let bad: Vec<_> = [base + 1, PANIC, base + 3]
            .into_iter()
            .map(|x| submit(&b, x))
            .collect();
        for p in bad {
            assert_eq!(answer(p), Err(BatchError::HandlerPanicked), "round {round}");
        }
        // The next batch is served normally by the same worker.
        let good: Vec<_> = (base + 4..base + 7).map(|x| (x, submit(&b, x))).collect();
        for (x, p) in good {
            assert_eq!(answer(p), Ok(f(x)), "round {round}: worker did not recover");
        }
    }
    shutdown_within(&b);
    let s = b.stats();
    assert_eq!((s.failed, s.completed, s.batches), (9, 9, 6), "{s:?}");
    assert_eq!(seen.batches().len(), 6);
    assert_eq!(b.in_flight(), 0);
}

#[test]
fn wrong_output_count_fails_every_request_of_the_batch() {
    let Rig { b, seen, .. } = rig(config(3, LONG_WAIT, 64));
    let short: Vec<_> = [1, SHORT, 3].into_iter().map(|x| submit(&b, x)).collect();
    for p in short {
        assert_eq!(
            answer(p),
            Err(BatchError::BadHandlerOutput {
                expected: 3,
                got: 2
            })
        );
    }
    let long: Vec<_> = [4, LONG, 6].into_iter().map(|x| submit(&b, x)).collect();
    for p in long {
        assert_eq!(
            answer(p),
            Err(BatchError::BadHandlerOutput {
                expected: 3,
                got: 4
            })
        );
    }
    let good: Vec<_> = (7..10).map(|x| (x, submit(&b, x))).collect();
    for (x, p) in good {
        assert_eq!(answer(p), Ok(f(x)));
    }
    shutdown_within(&b);
    let s = b.stats();
    assert_eq!((s.failed, s.completed, s.batches), (6, 3, 3), "{s:?}");
    assert_eq!(
        seen.batches(),
        vec![vec![1, SHORT, 3], vec![4, LONG, 6], vec![7, 8, 9]]
    );
}

// ---------------------------------------------------------------------------------------------
// Admission
// ---------------------------------------------------------------------------------------------

#[test]
fn overload_hands_the_very_request_back_at_once() {
    // One request per batch, at most 4 waiting or running.
    let Rig { b, gate, seen } = rig(config(1, Duration::ZERO, 4));
    let blocker = submit(&b, BLOCK);
    gate.wait_entered();
    // BLOCK is running; three more fill the queue bound.
    let queued: Vec<_> = (1..4).map(|x| (x, submit(&b, x))).collect();
    assert_eq!(b.in_flight(), 4);
    match b.submit(40) {
        Err(SubmitError::Overloaded(back)) => assert_eq!(back, 40),
        other => panic!("expected Overloaded(40), got {other:?}"),
    }
    match call(&b, 41) {
        Err(CallError::Refused(SubmitError::Overloaded(back))) => assert_eq!(back, 41),
        other => panic!("expected Refused(Overloaded(41)), got {other:?}"),
    }
    let err = b.submit(42).unwrap_err();
    assert!(matches!(err, SubmitError::Overloaded(_)));
    assert_eq!(err.into_inner(), 42);
    assert_eq!(b.stats().refused_overloaded, 3);
    assert_eq!(b.in_flight(), 4, "a refusal must not take a place");

    gate.release();
    assert_eq!(answer(blocker), Ok(f(BLOCK)));
    for (x, p) in queued {
        assert_eq!(answer(p), Ok(f(x)));
    }
    shutdown_within(&b);
    let s = b.stats();
    assert_eq!((s.submitted, s.completed, s.refused_overloaded), (4, 4, 3));
    let all = seen.all();
    assert!(
        !all.iter().any(|x| (40..43).contains(x)),
        "a refused request was computed: {all:?}"
    );
}

#[test]
fn a_request_costlier_than_a_batch_is_refused_at_submit() {
    let cfg = config_with_budget(8, 10, Duration::ZERO, 8);
    let Rig { b, seen, .. } = rig_with_cost(cfg, |&x| x);
    match b.submit(11) {
        Err(SubmitError::TooCostly(back)) => assert_eq!(back, 11),
        other => panic!("expected TooCostly(11), got {other:?}"),
    }
    match call(&b, 1_000) {
        Err(CallError::Refused(SubmitError::TooCostly(back))) => assert_eq!(back, 1_000),
        other => panic!("expected Refused(TooCostly(1000)), got {other:?}"),
    }
    // Exactly the budget is fine, and the worker is not stuck on the refused ones.
    assert_eq!(answer(submit(&b, 10)), Ok(f(10)));
    assert_eq!(call(&b, 3).unwrap(), f(3));
    shutdown_within(&b);
    let s = b.stats();
    assert_eq!(
        (s.refused_too_costly, s.submitted, s.completed),
        (2, 2, 2),
        "{s:?}"
    );
    assert_eq!(seen.all(), vec![10, 3]);
}

/// A client that has received the reply to its only request has nothing in flight, so with
/// `max_queue = 1` its next `submit` must be admitted, and `in_flight()` (documented as "accepted
/// and not yet answered") must read 0. Each request is retried until accepted, so the count
/// below is of replies after which the very next submission was wrongly refused.
#[test]
fn a_sequential_client_is_never_refused_with_max_queue_1() {
    let n: u64 = if cfg!(miri) { 200 } else { 20_000 };
    let b = Batcher::spawn(config(1, Duration::ZERO, 1), |xs: Vec<u64>| {
        xs.into_iter().map(f).collect()
    })
    .unwrap();
    let b = Guarded(Some(b));
    let mut refused_after_reply = 0u64;
    let mut in_flight_after_reply = 0u64;
    for i in 0..n {
        let mut first_try = true;
        let p = loop {
            match b.submit(i) {
                Ok(p) => break p,
                Err(SubmitError::Overloaded(back)) => {
                    assert_eq!(back, i);
                    refused_after_reply += u64::from(first_try);
                    first_try = false;
                    thread::yield_now();
                }
                Err(e) => panic!("submit({i}): {e}"),
            }
        };
        assert_eq!(answer(p), Ok(f(i)));
        in_flight_after_reply += u64::from(b.in_flight() != 0);
    }
    shutdown_within(&b);
    assert_eq!(
        (refused_after_reply, in_flight_after_reply),
        (0, 0),
        "after {n} replies to a lone sequential client: the next submit was refused Overloaded \
         {refused_after_reply} times, and in_flight() read non-zero {in_flight_after_reply} times"
    );
}

// ---------------------------------------------------------------------------------------------
// Deadlines and cancellation
// ---------------------------------------------------------------------------------------------

#[test]
fn expired_requests_are_answered_expired_and_never_computed() {
    let Rig { b, gate, seen } = rig(config(8, Duration::ZERO, 64));
    let blocker = submit(&b, BLOCK);
    gate.wait_entered();
    let soon = Instant::now() + Duration::from_millis(20);
    let late = b.submit_before(10, soon).unwrap();
    let plain = submit(&b, 11);
    let far = b.submit_before(12, Instant::now() + LONG_WAIT).unwrap();
    let already = b.submit_before(13, Instant::now()).unwrap();
    // Let `soon` pass while the worker is still held, so 10 is due before its batch can form.
    while Instant::now() <= soon {
        thread::sleep(Duration::from_millis(5));
    }
    gate.release();
    assert_eq!(answer(blocker), Ok(f(BLOCK)));
    assert_eq!(answer(late), Err(BatchError::Expired));
    assert_eq!(answer(plain), Ok(f(11)));
    assert_eq!(answer(far), Ok(f(12)));
    assert_eq!(answer(already), Err(BatchError::Expired));
    // Unheld worker, deadline already passed at submit.
    let past = Instant::now();
    thread::sleep(Duration::from_millis(2));
    assert_eq!(
        answer(b.submit_before(14, past).unwrap()),
        Err(BatchError::Expired)
    );
    shutdown_within(&b);
    let all = seen.all();
    for x in [10, 13, 14] {
        assert!(!all.contains(&x), "expired {x} was computed: {all:?}");
    }
    let s = b.stats();
    assert_eq!((s.expired, s.completed, s.submitted), (3, 3, 6), "{s:?}");
    assert_eq!(b.in_flight(), 0);
}

#[test]
fn a_dropped_pending_is_never_computed() {
    let Rig { b, gate, seen } = rig(config(8, Duration::ZERO, 64));
    let blocker = submit(&b, BLOCK);
    gate.wait_entered();
    drop(submit(&b, 20));
    let kept = submit(&b, 21);
    drop(submit(&b, 22));
    // Cancelled after a timed-out wait: still a cancellation.
    let waited = submit(&b, 23)
        .wait_timeout(Duration::from_millis(1))
        .expect_err("the worker is held: no reply yet");
    drop(waited);
    gate.release();
    assert_eq!(answer(blocker), Ok(f(BLOCK)));
    assert_eq!(answer(kept), Ok(f(21)));
    shutdown_within(&b);
    let all = seen.all();
    for x in [20, 22, 23] {
        assert!(!all.contains(&x), "cancelled {x} was computed: {all:?}");
    }
    let s = b.stats();
    assert_eq!((s.cancelled, s.completed, s.submitted), (3, 2, 5), "{s:?}");
    assert_eq!(b.in_flight(), 0, "a cancellation must release its place");
}

/// A reply whose `Drop` panics when `armed`: a user type with a faulty destructor.
struct Touchy {
    value: u64,
    armed: bool,
}

impl Drop for Touchy {
    fn drop(&mut self) {
        if self.armed && !thread::panicking() {
            panic!("Touchy::drop panics on purpose (expected in this test)");
        }
    }
}

/// The id of the request whose reply is a [`Touchy`] that panics when dropped.
const ARMED: u64 = 40;

#[test]
fn a_reply_whose_drop_panics_after_its_pending_left_does_not_stop_the_worker() {
    let (gate, turnstile) = gate();
    let b = Batcher::builder()
        .config(config(8, Duration::ZERO, 64))
        .spawn(move |xs: Vec<u64>| {
            if xs.contains(&BLOCK) {
                turnstile.pass();
            }
            xs.into_iter()
                .map(|x| Touchy {
                    value: f(x),
                    armed: x == ARMED,
                })
                .collect()
        })
        .expect("a valid configuration");
    let reply = |p: Pending<Touchy>| {
        p.wait_timeout(GUARD)
            .unwrap_or_else(|_| panic!("no reply within {GUARD:?}: lost reply or stuck worker"))
            .map(|t| t.value)
    };
    // The worker is held in a first batch while the second one queues: the armed request
    // first, so that without a guard its reply's drop would unwind the worker before it
    // answers the others.
    let first = b.submit(BLOCK).unwrap();
    gate.wait_entered();
    let armed = b.submit(ARMED).unwrap();
    let second: Vec<_> = [41, BLOCK, 42]
        .into_iter()
        .map(|x| (x, b.submit(x).unwrap()))
        .collect();
    gate.release();
    // Inside the second batch: its armed request was screened live and is being computed; its
    // reader leaves now, so the worker drops the reply.
    gate.wait_entered();
    drop(armed);
    gate.release();
    assert_eq!(reply(first), Ok(f(BLOCK)));
    for (x, p) in second {
        assert_eq!(reply(p), Ok(f(x)), "request {x}");
    }
    // The worker still serves.
    for x in 50..60 {
        assert_eq!(reply(b.submit(x).unwrap()), Ok(f(x)));
    }
    within("shutdown", move || {
        b.shutdown();
        let s = b.stats();
        // The armed request was computed (its reply dropped): completed, not cancelled.
        assert_eq!((s.submitted, s.completed, s.failed), (15, 15, 0), "{s:?}");
        assert_eq!(b.in_flight(), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn shutdown_with_a_full_queue_answers_every_accepted_request() {
    // Batches of 4 that never close on time; at most 14 requests in flight.
    let Rig { b, gate, seen } = rig(config(4, LONG_WAIT, 14));
    let mut pending: Vec<_> = [BLOCK, 1, 2, 3]
        .into_iter()
        .map(|x| (x, submit(&b, x)))
        .collect();
    gate.wait_entered();
    // 10 more: the queue is now full, and they form batches of 4, 4 and a last one of 2 that
    // only shutdown can close.
    pending.extend((4..14).map(|x| (x, submit(&b, x))));
    assert!(matches!(b.submit(99), Err(SubmitError::Overloaded(99))));

    let closer = b.clone();
    let shutdown = thread::spawn(move || closer.shutdown());
    wait_until("shutdown began", || shutting_down(&b));
    gate.release();
    within("shutdown with a full queue", move || shutdown.join()).unwrap();

    for (x, p) in &pending {
        assert!(
            p.is_ready(),
            "request {x} unanswered after shutdown returned"
        );
    }
    for (x, p) in pending {
        assert_eq!(answer(p), Ok(f(x)));
    }
    match b.submit(100) {
        Err(SubmitError::ShuttingDown(back)) => assert_eq!(back, 100),
        other => panic!("expected ShuttingDown(100), got {other:?}"),
    }
    match call(&b, 101) {
        Err(CallError::Refused(SubmitError::ShuttingDown(back))) => assert_eq!(back, 101),
        other => panic!("expected Refused(ShuttingDown(101)), got {other:?}"),
    }
    shutdown_within(&b); // idempotent
    let s = b.stats();
    assert_eq!(
        (
            s.submitted,
            s.completed,
            s.refused_overloaded,
            s.refused_shutting_down
        ),
        (14, 14, 1, 2),
        "{s:?}"
    );
    assert_eq!(b.in_flight(), 0);
    let mut all = seen.all();
    all.sort_unstable();
    let mut expected: Vec<u64> = (1..14).chain([BLOCK]).collect();
    expected.sort_unstable();
    assert_eq!(all, expected, "each accepted request computed exactly once");
    let sizes: Vec<usize> = seen.batches().iter().map(Vec::len).collect();
    assert_eq!(sizes, [4, 4, 4, 2]);
}

#[test]
fn dropping_the_last_handle_flushes_a_waiting_batch() {
    let Rig { b, seen, .. } = rig(config(4, LONG_WAIT, 64));
    // Three requests: the batch waits for a fourth for an hour, unless shutdown closes it.
    let pending: Vec<_> = (1..4).map(|x| (x, submit(&b, x))).collect();
    let b = b.into_inner();
    within("drop of the last handle", move || drop(b));
    for (x, p) in pending {
        assert!(
            p.is_ready(),
            "request {x} unanswered after the last handle dropped"
        );
        assert_eq!(answer(p), Ok(f(x)));
    }
    assert_eq!(seen.batches(), vec![vec![1, 2, 3]]);
}

#[test]
fn dropping_the_last_handle_drains_a_full_queue() {
    let Rig { b, gate, seen } = rig(config(4, LONG_WAIT, 16));
    let mut pending: Vec<_> = [BLOCK, 1, 2, 3]
        .into_iter()
        .map(|x| (x, submit(&b, x)))
        .collect();
    gate.wait_entered();
    pending.extend((4..16).map(|x| (x, submit(&b, x))));
    assert!(matches!(b.submit(99), Err(SubmitError::Overloaded(99))));
    let b = b.into_inner();
    let dropper = thread::spawn(move || drop(b));
    // Best effort so the drop starts while the worker is held; nothing below depends on it.
    thread::sleep(Duration::from_millis(50));
    gate.release();
    within("drop of the last handle", move || dropper.join()).unwrap();
    for (x, p) in &pending {
        assert!(
            p.is_ready(),
            "request {x} unanswered after the last handle dropped"
        );
    }
    for (x, p) in pending {
        assert_eq!(answer(p), Ok(f(x)));
    }
    assert_eq!(seen.all().len(), 16);
}

#[test]
fn concurrent_shutdowns_all_return_after_the_drain() {
    let Rig { b, gate, .. } = rig(config(2, LONG_WAIT, 64));
    let mut pending: Vec<_> = [BLOCK, 1].into_iter().map(|x| (x, submit(&b, x))).collect();
    gate.wait_entered();
    pending.extend((2..9).map(|x| (x, submit(&b, x))));
    let closers: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            thread::spawn(move || {
                b.shutdown();
                // Every accepted request was answered before *any* shutdown returns.
                b.in_flight()
            })
        })
        .collect();
    wait_until("shutdown began", || shutting_down(&b));
    gate.release();
    for (i, c) in closers.into_iter().enumerate() {
        let left = within("a concurrent shutdown", move || c.join()).unwrap();
        assert_eq!(left, 0, "shutdown #{i} returned with requests in flight");
    }
    for (x, p) in pending {
        assert!(
            p.is_ready(),
            "request {x} unanswered after shutdown returned"
        );
        assert_eq!(answer(p), Ok(f(x)));
    }
    assert_eq!(b.stats().completed, 9);
}

/// The handler's own handle to its batcher, taken (and dropped) when it sees `STOP`.
type OwnHandle = Arc<Mutex<Option<Batcher<u64, u64>>>>;

/// A handler with access to its own batcher, through `me`, that shuts it down on `STOP` and
/// blocks at the gate on `BLOCK`.
fn self_stopping(cfg: BatchConfig) -> (Guarded, Gate, OwnHandle) {
    let me = OwnHandle::default();
    let (gate, turnstile) = gate();
    let inner = Arc::clone(&me);
    let b = Batcher::spawn(cfg, move |xs: Vec<u64>| {
        if xs.contains(&BLOCK) {
            turnstile.pass();
        }
        if xs.contains(&STOP) {
            let handle = inner.lock().unwrap().take();
            if let Some(handle) = handle {
                handle.shutdown();
                drop(handle);
            }
        }
        xs.into_iter().map(f).collect()
    })
    .unwrap();
    *me.lock().unwrap() = Some(b.clone());
    (Guarded(Some(b)), gate, me)
}

#[test]
fn shutdown_from_inside_the_handler_does_not_deadlock() {
    let (b, _gate, _me) = self_stopping(config(8, Duration::ZERO, 64));
    assert_eq!(answer(submit(&b, 1)), Ok(f(1)));
    assert_eq!(answer(submit(&b, STOP)), Ok(f(STOP)));
    // The handler set the flag before it returned, and so before STOP's reply was sent.
    assert!(matches!(b.submit(2), Err(SubmitError::ShuttingDown(2))));
    shutdown_within(&b);
    assert_eq!(b.stats().completed, 2);
}

#[test]
fn the_last_handle_dropped_inside_the_handler_does_not_deadlock() {
    let (b, gate, me) = self_stopping(config(8, Duration::ZERO, 64));
    let blocker = submit(&b, BLOCK);
    gate.wait_entered();
    let pending: Vec<_> = [1, STOP, 2]
        .into_iter()
        .map(|x| (x, submit(&b, x)))
        .collect();
    // Not the last handle (the handler's `me` holds one), so this returns at once.
    let b = b.into_inner();
    within("drop of a handle that is not the last", move || drop(b));
    gate.release();
    assert_eq!(answer(blocker), Ok(f(BLOCK)));
    for (x, p) in pending {
        assert_eq!(answer(p), Ok(f(x)));
    }
    assert!(
        me.lock().unwrap().is_none(),
        "the handler dropped the last handle"
    );
}

// ---------------------------------------------------------------------------------------------
// Batch formation
// ---------------------------------------------------------------------------------------------

#[test]
fn batches_close_at_max_batch_size() {
    let Rig { b, gate, seen } = rig(config(4, LONG_WAIT, 64));
    // BLOCK and three more make a full first batch, which holds the worker.
    let mut pending: Vec<_> = [BLOCK, 1, 2, 3]
        .into_iter()
        .map(|x| (x, submit(&b, x)))
        .collect();
    gate.wait_entered();
    // Eight requests pile up while the handler runs.
    pending.extend((10..18).map(|x| (x, submit(&b, x))));
    gate.release();
    for (x, p) in pending {
        assert_eq!(answer(p), Ok(f(x)));
    }
    shutdown_within(&b);
    let batches = seen.batches();
    assert!(batches.iter().all(|batch| batch.len() <= 4), "{batches:?}");
    // `max_wait` never passes, so each batch closed exactly when full, in submission order.
    assert_eq!(
        batches,
        vec![
            vec![BLOCK, 1, 2, 3],
            vec![10, 11, 12, 13],
            vec![14, 15, 16, 17]
        ]
    );
    let s = b.stats();
    assert_eq!(s.batches, 3);
    assert_eq!(s.batch_sizes, [0, 0, 3, 0, 0, 0, 0, 0], "3 batches of 3-4");
    assert_eq!(s.mean_batch_size(), 4.0);
}

/// Greedy split of `costs` into batches of total cost at most `budget`, the documented rule: a
/// batch closes when adding the next request would pass the budget.
fn greedy(costs: &[u64], budget: u64) -> Vec<Vec<u64>> {
    let mut out: Vec<Vec<u64>> = Vec::new();
    let mut sum = 0;
    for &c in costs {
        match out.last_mut() {
            Some(last) if sum + c <= budget => {
                last.push(c);
                sum += c;
            }
            _ => {
                out.push(vec![c]);
                sum = c;
            }
        }
    }
    out
}

#[test]
fn batches_respect_the_cost_budget() {
    const BUDGET: u64 = 10;
    let cfg = config_with_budget(1_000, BUDGET, LONG_WAIT, 1_000);
    // A request costs its value; BLOCK costs the whole budget.
    let cost = |&x: &u64| if x == BLOCK { BUDGET } else { x };
    let Rig { b, gate, seen } = rig_with_cost(cfg, cost);
    let costs = [3, 4, 2, 5, 6, 1, 7, 2, 8, 10, 1, 9, 1, 1, 1, 4, 4];
    let blocker = submit(&b, BLOCK);
    // The first 3 cannot join BLOCK's batch (10 + 3 > 10), so that batch closes and runs.
    let mut pending = vec![(costs[0], submit(&b, costs[0]))];
    gate.wait_entered();
    pending.extend(costs[1..].iter().map(|&x| (x, submit(&b, x))));
    gate.release();
    assert_eq!(answer(blocker), Ok(f(BLOCK)));
    // The last batch can only close on shutdown (no size limit, no timeout).
    shutdown_within(&b);
    for (x, p) in pending {
        assert!(p.is_ready());
        assert_eq!(answer(p), Ok(f(x)));
    }
    let batches = seen.batches();
    for batch in &batches {
        let total: u64 = batch.iter().map(cost).sum();
        assert!(total <= BUDGET, "batch {batch:?} costs {total} > {BUDGET}");
    }
    let mut expected = vec![vec![BLOCK]];
    expected.extend(greedy(&costs, BUDGET));
    assert_eq!(batches, expected);
}

#[test]
fn a_lone_request_is_answered_after_max_wait() {
    // A batch of 1,000 will never fill: only `max_wait` can close it.
    let Rig { b, seen, .. } = rig(config(1_000, Duration::from_millis(20), 1_000));
    assert_eq!(answer(submit(&b, 5)), Ok(f(5)));
    assert_eq!(call(&b, 6).unwrap(), f(6));
    thread::sleep(Duration::from_millis(30));
    assert_eq!(answer(submit(&b, 7)), Ok(f(7)));
    assert_eq!(seen.all(), vec![5, 6, 7]);
    shutdown_within(&b);
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

#[test]
fn wait_timeout_hands_the_pending_back_and_the_request_is_still_answered() {
    let Rig { b, gate, seen } = rig(config(8, Duration::ZERO, 64));
    let blocker = submit(&b, BLOCK);
    gate.wait_entered();
    let p = submit(&b, 7);
    let p = p
        .wait_timeout(Duration::ZERO)
        .expect_err("no reply while the worker is held");
    let p = p
        .wait_timeout(Duration::from_millis(10))
        .expect_err("no reply while the worker is held");
    assert!(!p.is_ready());
    gate.release();
    assert_eq!(answer(blocker), Ok(f(BLOCK)));
    // `Duration::MAX` cannot be added to an instant: the "wait forever" path.
    let reply = within("wait_timeout(Duration::MAX)", move || {
        p.wait_timeout(Duration::MAX).map_err(|_| ())
    });
    assert_eq!(reply, Ok(Ok(f(7))));
    assert_eq!(
        seen.all(),
        vec![BLOCK, 7],
        "the timed-out wait did not cancel"
    );
    shutdown_within(&b);
}

/// Wakes the executor's thread and counts the wake-ups.
struct Unparker {
    thread: Thread,
    wakes: AtomicUsize,
}

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // SeqCst: simplest correct choice for a test; the count is read by the polling thread.
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// The smallest executor: polls `fut` on this thread, parking between polls. Fails the test if a
/// poll returns `Pending` and nothing wakes the task within [`GUARD`] (a lost wake-up).
fn block_on<F: Future>(fut: F, unparker: &Arc<Unparker>) -> F::Output {
    let waker = Waker::from(Arc::clone(unparker));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let end = Instant::now() + GUARD;
    loop {
        let before = unparker.wakes.load(Ordering::SeqCst);
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        while unparker.wakes.load(Ordering::SeqCst) == before {
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "lost wake-up: Pending never woke its task");
            thread::park_timeout(left);
        }
    }
}

#[test]
fn pending_is_a_future() {
    let Rig { b, gate, .. } = rig(config(8, Duration::ZERO, 64));
    let unparker = Arc::new(Unparker {
        thread: thread::current(),
        wakes: AtomicUsize::new(0),
    });
    let waker = Waker::from(Arc::clone(&unparker));
    let mut cx = Context::from_waker(&waker);

    let blocker = submit(&b, BLOCK);
    gate.wait_entered();
    let mut p = submit(&b, 5);
    // The worker is held: the first poll must be pending, and registers the waker.
    assert!(Pin::new(&mut p).poll(&mut cx).is_pending());
    assert!(Pin::new(&mut p).poll(&mut cx).is_pending());
    assert_eq!(unparker.wakes.load(Ordering::SeqCst), 0);
    gate.release();
    assert_eq!(block_on(p, &unparker), Ok(f(5)));
    assert!(
        unparker.wakes.load(Ordering::SeqCst) >= 1,
        "the reply arrived after a Pending poll but the waker was never called"
    );
    assert_eq!(answer(blocker), Ok(f(BLOCK)));

    // Already answered: ready at the first poll.
    let mut q = submit(&b, 6);
    wait_until("reply to 6", || q.is_ready());
    assert_eq!(Pin::new(&mut q).poll(&mut cx), Poll::Ready(Ok(f(6))));

    // From async code, with errors flowing through too.
    let b2 = b.clone();
    let out = block_on(
        async move {
            let a = b2.submit(1).unwrap().await;
            let c = b2.submit_before(2, Instant::now()).unwrap().await;
            let d = b2.submit(3).unwrap().await;
            (a, c, d)
        },
        &unparker,
    );
    assert_eq!(out, (Ok(f(1)), Err(BatchError::Expired), Ok(f(3))));
    shutdown_within(&b);
}

// ---------------------------------------------------------------------------------------------
// Stress
// ---------------------------------------------------------------------------------------------

/// Total requests in the stress test.
fn stress_total() -> u64 {
    stress_n(if cfg!(miri) { 400 } else { 80_000 })
}

/// Submits `req` (with `deadline`, if any), retrying while the queue is full; counts the refusals
/// into `refused` and checks that each hands back the very request.
fn submit_retrying(
    b: &Batcher<u64, u64>,
    req: u64,
    deadline: Option<Instant>,
    refused: &mut u64,
) -> Pending<u64> {
    loop {
        let submitted = match deadline {
            Some(d) => b.submit_before(req, d),
            None => b.submit(req),
        };
        match submitted {
            Ok(p) => return p,
            Err(SubmitError::Overloaded(back)) => {
                assert_eq!(back, req, "Overloaded handed back another request");
                *refused += 1;
                thread::yield_now();
            }
            Err(e) => panic!("submit({req:#x}): {e}"),
        }
    }
}

#[test]
fn eight_threads_every_request_answered_exactly_once_with_its_own_answer() {
    const THREADS: u64 = 8;
    let per_thread = (stress_total() / THREADS).max(1);
    let total = per_thread * THREADS;
    // How often the handler computed each request; the request is `thread << 32 | index`.
    let computed = Arc::new(Mutex::new(vec![0u32; usize::try_from(total).unwrap()]));
    let tally = Arc::clone(&computed);
    // A queue bound smaller than what 8 windows of up to 24 can hold: overload happens and is
    // retried.
    let cfg = config(16, Duration::from_micros(200), 64);
    let b = Batcher::spawn(cfg, move |xs: Vec<u64>| {
        let mut tally = tally.lock().unwrap();
        for &x in &xs {
            let (t, i) = (x >> 32, x & 0xFFFF_FFFF);
            tally[usize::try_from(t * per_thread + i).unwrap()] += 1;
        }
        drop(tally);
        xs.into_iter().map(f).collect()
    })
    .unwrap();
    let b = Guarded(Some(b));

    let clients = b.clone();
    let far = Instant::now() + LONG_WAIT;
    let refused: u64 = within_for(STRESS_GUARD, "the stress clients", move || {
        thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let b = clients.clone();
                    s.spawn(move || {
                        let mut refused = 0u64;
                        let mut window = Vec::with_capacity(32);
                        let mut i = 0u64;
                        while i < per_thread {
                            let w = 1 + (i * 7 + t * 13) % 24;
                            if w.is_multiple_of(5) {
                                // Now and then a lone request, with a deadline that never
                                // comes (`call` itself would wait without a hang guard).
                                let req = (t << 32) | i;
                                let p = submit_retrying(&b, req, Some(far), &mut refused);
                                assert_eq!(answer(p), Ok(f(req)), "wrong answer to {req:#x}");
                                i += 1;
                                continue;
                            }
                            // A window of submissions, then every reply checked in order.
                            let end = (i + w).min(per_thread);
                            for j in i..end {
                                let req = (t << 32) | j;
                                window.push((req, submit_retrying(&b, req, None, &mut refused)));
                            }
                            for (req, p) in window.drain(..) {
                                assert_eq!(answer(p), Ok(f(req)), "wrong answer to {req:#x}");
                            }
                            i = end;
                        }
                        refused
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|e| resume_unwind(e)))
                .sum()
        })
    });
    shutdown_within(&b);

    let counts = computed.lock().unwrap();
    let wrong: Vec<(usize, u32)> = counts
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, c)| c != 1)
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "requests computed other than once (index, times): {wrong:?}"
    );
    let s = b.stats();
    assert_eq!(s.submitted, total, "{s:?}");
    assert_eq!(s.completed, total, "{s:?}");
    assert_eq!((s.failed, s.expired, s.cancelled), (0, 0, 0), "{s:?}");
    assert_eq!(s.refused_overloaded, refused, "{s:?}");
    assert_eq!(s.batch_sizes.iter().sum::<u64>(), s.batches, "{s:?}");
    assert_eq!(
        s.batch_sizes[5..],
        [0, 0, 0],
        "a batch larger than 16: {s:?}"
    );
    assert_eq!(b.in_flight(), 0);
}
