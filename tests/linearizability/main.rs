//! Linearizability of `MsQueue` and of `Cache` (as a map, without eviction), checked on many short
//! histories recorded from real threads.
//!
//! Layout: this test binary is `tests/linearizability/main.rs`; the checker itself (recording
//! with a global clock, Wing & Gong search with Lowe's memoisation, generic over a sequential
//! [`checker::Model`]) is the module `tests/linearizability/checker.rs`, documented there; the
//! seeded generator is `tests/common/rng.rs`, shared with `tests/differential.rs`.
//!
//! Each round spawns 2 to 4 threads that meet at a `Barrier`, then run 6 to 8 random operations
//! each with a little random spinning in between, every operation stamped by the checker's
//! clock. The main thread then appends quiescent operations (it drains the queue, or reads every
//! key of the map), so lost or duplicated values show up in the same history, and the whole
//! history is checked against the sequential model:
//!
//! - `MsQueue<u32>` against a `VecDeque` (distinct values; `push(v) -> ()`, `pop() -> Option<v>`),
//!   once on the global collector, once on a local `Collector`. One queue serves all rounds, so
//!   retired blocks are reclaimed while it runs.
//! - `Cache<u8, u8>` as a map over 3 keys with capacity 64 (no eviction) and a fixed hasher,
//!   against a `BTreeMap` (the memo hashes model states, and a `HashMap` is not `Hash`): `get`,
//!   `insert` (returns the replaced value), `remove` (returns the removed value) and
//!   `compare_exchange` (`Ok`, or `Err(current)`); values come from a domain of 4 so exchanges
//!   often match. Half the rounds run on a cache whose index has one bucket (every write
//!   contends on it), half on one sized from the capacity; after the rounds, `len()` must count
//!   exactly the keys present, and nothing may have been evicted.
//!
//! The checker is shown to reject what it should: hand-written histories with known violations
//! (a LIFO pop order, a value popped twice or never pushed, an empty pop while a value sat in the
//! queue; a stale read after a completed insert, two successful exchanges from one value, a
//! wrong replaced value) are rejected, and known-good ones with overlapping operations accepted.
//! Real-thread runs against deliberately broken structures (a LIFO stack posing as a queue, a map
//! whose compare-and-exchange is a separate read and write) are rejected too.
//!
//! Sizes: `ROUNDS` histories per structure (fewer under Miri); run with `--nocapture` to see how
//! many operations overlapped another thread's and how many configurations the search explored.

mod checker;
// The seeded generator shared by the integration tests.
#[path = "../common/rng.rs"]
mod rng;

use checker::{check, Clock, History, Model, Operation, Recorder, Violation};
use crossbeam_epoch::Collector;
use latchless::cache::{Cache, CompareExchangeFailure};
use latchless::queue::MsQueue;
use rng::Rng;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;

/// Histories recorded and checked per real-thread test.
const ROUNDS: usize = if cfg!(miri) { 5 } else { 1_500 };

/// Rounds run against a broken structure before giving up on catching it.
const BROKEN_ROUNDS: usize = if cfg!(miri) { 8 } else { 500 };

/// Spins a thread spends waiting for the others at the start of a round before it yields.
const START_SPINS: u32 = if cfg!(miri) { 10 } else { 5_000 };

// ---------------------------------------------------------------------------------------------
// Randomness (the SplitMix64 generator of `tests/common/rng.rs`) and the round driver.
// ---------------------------------------------------------------------------------------------

/// A short random pause between two operations, so that threads interleave differently from one
/// round to the next: mostly a few spins, sometimes a yield.
fn jitter(rng: &mut Rng) {
    match rng.below(16) {
        0 => thread::yield_now(),
        r => {
            for _ in 0..r * 2 {
                std::hint::spin_loop();
            }
        }
    }
}

/// Called by each of `threads` threads right after the round's `Barrier`: spins until all have
/// arrived. The barrier wakes its waiters one after the other, microseconds apart, which is
/// longer than a whole thread's operations; spinning here lines the threads up again. Spinning
/// gives way to yielding after a while, since 4 threads on 2 cores cannot all spin at once.
fn start_together(started: &AtomicUsize, threads: usize) {
    // Relaxed: only a count; the barrier already ordered everything the threads share.
    started.fetch_add(1, Ordering::Relaxed);
    let mut spins = 0u32;
    while started.load(Ordering::Relaxed) < threads {
        if spins < START_SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

/// Which thread of which round is running.
#[derive(Clone, Copy, Debug)]
struct Who {
    round: usize,
    thread: usize,
}

/// The shape of round `round`: 2 to 4 threads, 6 to 8 operations each.
fn shape(round: usize) -> (usize, usize) {
    (2 + round % 3, 6 + (round / 3) % 3)
}

/// What a batch of rounds found.
#[derive(Debug, Default)]
struct Report {
    histories: usize,
    operations: usize,
    overlapping: usize,
    concurrent_histories: usize,
    explored: usize,
    max_explored: usize,
    violations: Vec<Violation>,
}

impl Report {
    fn print(&self, name: &str) {
        println!(
            "{name}: {} histories ({} with overlapping operations), {} operations ({} \
             overlapping another thread's), {} configurations explored (at most {} per history), \
             {} violations",
            self.histories,
            self.concurrent_histories,
            self.operations,
            self.overlapping,
            self.explored,
            self.max_explored,
            self.violations.len()
        );
    }

    /// Panics with the first violation, if any, and checks the runs were concurrent at all.
    fn assert_linearizable(&self, name: &str) {
        self.print(name);
        if let Some(v) = self.violations.first() {
            panic!(
                "{name}: {} of {} histories are not linearizable; the first:\n{v}",
                self.violations.len(),
                self.histories
            );
        }
        assert!(
            self.overlapping > 0,
            "{name}: no operation overlapped another thread's: the test checked nothing concurrent"
        );
    }
}

/// Runs `rounds` rounds against `subject`: `init` reads the model state at the start of a round
/// (the subject is quiescent then), every thread runs `body` for its operations, and `tail` adds
/// the main thread's quiescent operations; the history of each round is checked. `stop_early`
/// ends the batch at its first violation (for broken subjects).
#[allow(clippy::too_many_arguments)]
fn run_rounds<S, M>(
    subject: &S,
    rounds: usize,
    seed: u64,
    stop_early: bool,
    mut init: impl FnMut(&S) -> M,
    body: impl Fn(&S, &mut Recorder<'_, M::Op, M::Ret>, &mut Rng, Who, usize) + Sync,
    tail: impl Fn(&S, &mut Recorder<'_, M::Op, M::Ret>),
) -> Report
where
    S: Sync,
    M: Model,
    M::Op: Send,
    M::Ret: Send,
{
    let mut report = Report::default();
    for round in 0..rounds {
        let (threads, ops) = shape(round);
        let state = init(subject);
        let clock = Clock::new();
        let barrier = Barrier::new(threads);
        let started = AtomicUsize::new(0);
        let mut recorders: Vec<Recorder<'_, M::Op, M::Ret>> = thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|thread| {
                    let (clock, barrier, started, body) = (&clock, &barrier, &started, &body);
                    let mut rng = Rng::new(seed ^ ((round as u64) << 8) ^ thread as u64);
                    s.spawn(move || {
                        let mut rec = Recorder::new(clock, thread);
                        barrier.wait();
                        start_together(started, threads);
                        body(subject, &mut rec, &mut rng, Who { round, thread }, ops);
                        rec
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a recording thread panicked"))
                .collect()
        });
        let mut last = Recorder::new(&clock, threads);
        tail(subject, &mut last);
        recorders.push(last);
        let history = History::from_recorders(recorders);
        report.histories += 1;
        report.operations += history.len();
        let overlapping = history.overlapping();
        report.overlapping += overlapping;
        report.concurrent_histories += usize::from(overlapping > 0);
        match check(&state, &history) {
            Ok(lin) => {
                assert_eq!(lin.order.len(), history.len());
                report.explored += lin.explored;
                report.max_explored = report.max_explored.max(lin.explored);
            }
            Err(v) => {
                report.explored += v.explored;
                report.max_explored = report.max_explored.max(v.explored);
                report.violations.push(v);
                if stop_early {
                    break;
                }
            }
        }
    }
    report
}

// ---------------------------------------------------------------------------------------------
// The queue.
// ---------------------------------------------------------------------------------------------

/// A FIFO queue of `u32`s, as the sequential model sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct QueueModel(VecDeque<u32>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueOp {
    Push(u32),
    Pop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueRet {
    Pushed,
    Popped(Option<u32>),
}

impl Model for QueueModel {
    type Op = QueueOp;
    type Ret = QueueRet;

    fn apply(&mut self, op: &QueueOp) -> QueueRet {
        match *op {
            QueueOp::Push(v) => {
                self.0.push_back(v);
                QueueRet::Pushed
            }
            QueueOp::Pop => QueueRet::Popped(self.0.pop_front()),
        }
    }
}

/// A concurrent queue under test.
trait TestQueue: Sync {
    fn push(&self, v: u32);
    fn pop(&self) -> Option<u32>;
}

/// `MsQueue`, on whichever collector it was built with.
impl TestQueue for MsQueue<u32> {
    fn push(&self, v: u32) {
        MsQueue::push(self, v);
    }
    fn pop(&self) -> Option<u32> {
        MsQueue::pop(self)
    }
}

/// A deliberately broken "queue": a stack behind a mutex, atomic but LIFO.
struct LifoStack(Mutex<Vec<u32>>);

impl TestQueue for LifoStack {
    fn push(&self, v: u32) {
        self.0.lock().unwrap().push(v);
    }
    fn pop(&self) -> Option<u32> {
        self.0.lock().unwrap().pop()
    }
}

/// Records one queue operation on `q` and returns its response.
fn queue_op<Q: TestQueue>(
    q: &Q,
    rec: &mut Recorder<'_, QueueOp, QueueRet>,
    op: QueueOp,
) -> QueueRet {
    rec.call(op, |op| match *op {
        QueueOp::Push(v) => {
            q.push(v);
            QueueRet::Pushed
        }
        QueueOp::Pop => QueueRet::Popped(q.pop()),
    })
}

/// Runs queue rounds: threads push distinct values (unique across rounds) and pop, half and half;
/// the main thread then pops until the queue is empty, so every round starts from an empty queue
/// and every value pushed is popped, once, within the history that pushed it.
fn queue_rounds<Q: TestQueue>(q: &Q, rounds: usize, seed: u64, stop_early: bool) -> Report {
    run_rounds(
        q,
        rounds,
        seed,
        stop_early,
        |_| QueueModel::default(),
        |q, rec, rng, who, ops| {
            for i in 0..ops {
                jitter(rng);
                let op = if rng.below(2) == 0 {
                    let v = who.round * 1_000 + who.thread * 100 + i;
                    QueueOp::Push(u32::try_from(v).expect("values fit in u32"))
                } else {
                    QueueOp::Pop
                };
                queue_op(q, rec, op);
            }
        },
        |q, rec| {
            while queue_op(q, rec, QueueOp::Pop) != QueueRet::Popped(None) {}
        },
    )
}

/// A hand-written history from `(thread, call, returned, op, response)` rows.
fn history<Op, Ret>(rows: Vec<(usize, u64, u64, Op, Ret)>) -> History<Op, Ret> {
    History::new(
        rows.into_iter()
            .map(|(thread, call, returned, op, ret)| Operation {
                thread,
                op,
                ret,
                call,
                returned,
            })
            .collect(),
    )
}

use QueueOp::{Pop, Push};
use QueueRet::{Popped, Pushed};

#[test]
fn queue_checker_rejects_known_bad_histories() {
    let bad = [
        (
            "LIFO order: push(1) then push(2), sequentially, pop 2 then 1",
            history(vec![
                (0, 0, 1, Push(1), Pushed),
                (0, 2, 3, Push(2), Pushed),
                (1, 4, 5, Pop, Popped(Some(2))),
                (1, 6, 7, Pop, Popped(Some(1))),
            ]),
        ),
        (
            "push(1) finished before push(2) began, but pop(2) finished before pop(1) began \
             (the pop of 2 overlaps its push)",
            history(vec![
                (0, 0, 1, Push(1), Pushed),
                (0, 2, 5, Push(2), Pushed),
                (1, 3, 6, Pop, Popped(Some(2))),
                (2, 7, 8, Pop, Popped(Some(1))),
            ]),
        ),
        (
            "a value popped that was never pushed",
            history(vec![
                (0, 0, 1, Push(1), Pushed),
                (1, 2, 3, Pop, Popped(Some(7))),
            ]),
        ),
        (
            "a value popped before its push began",
            history(vec![
                (1, 0, 1, Pop, Popped(Some(1))),
                (0, 2, 3, Push(1), Pushed),
            ]),
        ),
        (
            "a value popped twice (concurrent pops)",
            history(vec![
                (0, 0, 1, Push(1), Pushed),
                (1, 2, 5, Pop, Popped(Some(1))),
                (2, 3, 4, Pop, Popped(Some(1))),
            ]),
        ),
        (
            "an empty pop while a value was inside the whole time",
            history(vec![
                (0, 0, 1, Push(1), Pushed),
                (1, 2, 3, Pop, Popped(None)),
                (0, 4, 5, Pop, Popped(Some(1))),
            ]),
        ),
    ];
    for (what, h) in bad {
        match check(&QueueModel::default(), &h) {
            Ok(lin) => panic!("accepted a bad history ({what}), as {:?}:\n{h}", lin.order),
            Err(v) => println!("rejected, as it should be: {what}\n{v}"),
        }
    }
}

#[test]
fn queue_checker_accepts_known_good_histories() {
    // Overlapping pushes may take effect in either order: push(1) overlaps push(2), so popping 2
    // before 1 is fine.
    let h = history(vec![
        (0, 0, 5, Push(1), Pushed),
        (1, 1, 2, Push(2), Pushed),
        (1, 6, 7, Pop, Popped(Some(2))),
        (0, 8, 9, Pop, Popped(Some(1))),
        (1, 10, 11, Pop, Popped(None)),
    ]);
    let lin = check(&QueueModel::default(), &h).expect("a valid history");
    // History indices are by invocation: push(1) is #0, push(2) #1.
    assert_eq!(lin.order, [1, 0, 2, 3, 4]);

    // A pop that overlaps a push may return its value, and an empty pop overlapping a push may
    // take effect before it.
    let h = history(vec![
        (0, 0, 10, Push(1), Pushed),
        (1, 1, 2, Pop, Popped(None)),
        (2, 3, 4, Pop, Popped(Some(1))),
    ]);
    let lin = check(&QueueModel::default(), &h).expect("a valid history");
    assert_eq!(lin.order, [1, 0, 2]);

    // Starting from a non-empty state.
    let h = history(vec![(0, 0, 1, Pop, Popped(Some(9)))]);
    check(&QueueModel(VecDeque::from([9])), &h).expect("a valid history");
}

#[test]
fn ms_queue_histories_are_linearizable() {
    let q = MsQueue::new();
    queue_rounds(&q, ROUNDS, 0x5175_A501, false).assert_linearizable("MsQueue (global collector)");
    assert!(q.is_empty());
}

#[test]
fn ms_queue_histories_with_local_collector_are_linearizable() {
    let q = MsQueue::with_collector(Collector::new());
    queue_rounds(&q, ROUNDS, 0x5175_A502, false).assert_linearizable("MsQueue (local collector)");
    assert!(q.is_empty());
}

#[test]
fn lifo_stack_histories_are_rejected() {
    // The same driver and checker, pointed at a stack: some history must expose the LIFO order.
    let stack = LifoStack(Mutex::new(Vec::new()));
    let report = queue_rounds(&stack, BROKEN_ROUNDS, 0x57AC_C000, true);
    report.print("LIFO stack posing as a queue");
    let v = report
        .violations
        .first()
        .expect("the checker accepted every history of a LIFO stack");
    println!("first rejected history:\n{v}");
}

// ---------------------------------------------------------------------------------------------
// The cache, as a map.
// ---------------------------------------------------------------------------------------------

/// Keys of the map tests: 0..KEYS.
const KEYS: u8 = 3;
/// Values come from 0..VALUES, so that compare-and-exchange often finds its expected value.
const VALUES: u8 = 4;

/// A map from `u8` to `u8`, as the sequential model sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct MapModel(BTreeMap<u8, u8>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MapOp {
    Get(u8),
    Insert(u8, u8),
    Remove(u8),
    Cas { key: u8, current: u8, new: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MapRet {
    /// `get` (the value), `insert` (the replaced value), `remove` (the removed value).
    Value(Option<u8>),
    /// `compare_exchange`: `Ok`, or `Err` with the value held when it failed.
    Exchanged(Result<(), Option<u8>>),
}

impl Model for MapModel {
    type Op = MapOp;
    type Ret = MapRet;

    fn apply(&mut self, op: &MapOp) -> MapRet {
        match *op {
            MapOp::Get(k) => MapRet::Value(self.0.get(&k).copied()),
            MapOp::Insert(k, v) => MapRet::Value(self.0.insert(k, v)),
            MapOp::Remove(k) => MapRet::Value(self.0.remove(&k)),
            MapOp::Cas { key, current, new } => match self.0.get(&key) {
                Some(&v) if v == current => {
                    self.0.insert(key, new);
                    MapRet::Exchanged(Ok(()))
                }
                other => MapRet::Exchanged(Err(other.copied())),
            },
        }
    }
}

/// A concurrent map under test.
trait TestMap: Sync {
    fn run(&self, op: &MapOp) -> MapRet;
    /// The value of `key`, read while no other thread runs (not recorded).
    fn quiescent_get(&self, key: u8) -> Option<u8>;
}

type FixedHasher = BuildHasherDefault<DefaultHasher>;

impl TestMap for Cache<u8, u8, FixedHasher> {
    fn run(&self, op: &MapOp) -> MapRet {
        match *op {
            MapOp::Get(k) => MapRet::Value(self.get(&k)),
            MapOp::Insert(k, v) => MapRet::Value(self.insert(k, v)),
            MapOp::Remove(k) => MapRet::Value(self.remove(&k)),
            MapOp::Cas { key, current, new } => match self.compare_exchange(&key, &current, new) {
                Ok(()) => MapRet::Exchanged(Ok(())),
                Err(e) => {
                    assert_eq!(e.failure, CompareExchangeFailure::Mismatch, "{op:?}");
                    assert_eq!(e.new, new, "{op:?} handed back another value");
                    MapRet::Exchanged(Err(e.current))
                }
            },
        }
    }

    fn quiescent_get(&self, key: u8) -> Option<u8> {
        self.peek(&key)
    }
}

/// A deliberately broken map: every operation is atomic except compare-and-exchange, which reads
/// under the lock, lets go, and writes under the lock again if the value matched.
struct RacyMap(Mutex<BTreeMap<u8, u8>>);

impl TestMap for RacyMap {
    fn run(&self, op: &MapOp) -> MapRet {
        match *op {
            MapOp::Cas { key, current, new } => {
                let found = self.0.lock().unwrap().get(&key).copied();
                if found != Some(current) {
                    return MapRet::Exchanged(Err(found));
                }
                thread::yield_now();
                self.0.lock().unwrap().insert(key, new);
                MapRet::Exchanged(Ok(()))
            }
            _ => MapModel::apply_to(&mut self.0.lock().unwrap(), op),
        }
    }

    fn quiescent_get(&self, key: u8) -> Option<u8> {
        self.0.lock().unwrap().get(&key).copied()
    }
}

impl MapModel {
    /// Applies `op` to a bare map (the atomic operations of `RacyMap`).
    fn apply_to(map: &mut BTreeMap<u8, u8>, op: &MapOp) -> MapRet {
        let mut model = MapModel(std::mem::take(map));
        let ret = model.apply(op);
        *map = model.0;
        ret
    }
}

/// Runs map rounds. Each thread draws `get`, `insert`, `remove` and `compare_exchange` over
/// `KEYS` keys; an exchange expects, three times in four, the last value this thread saw for
/// the key. The main thread then reads every key, and the quiescent state (also read by
/// `quiescent_get`) seeds the next round's model. `cas_share` is the share of exchanges in
/// sixteenths.
fn map_rounds<T: TestMap>(
    map: &T,
    rounds: usize,
    seed: u64,
    stop_early: bool,
    cas_share: u64,
) -> Report {
    run_rounds(
        map,
        rounds,
        seed,
        stop_early,
        |m| {
            MapModel(
                (0..KEYS)
                    .filter_map(|k| Some((k, m.quiescent_get(k)?)))
                    .collect(),
            )
        },
        |m, rec, rng, _who, ops| {
            let mut seen = [None; KEYS as usize];
            for _ in 0..ops {
                jitter(rng);
                let key = rng.below(u64::from(KEYS)) as u8;
                let value = rng.below(u64::from(VALUES)) as u8;
                let r = rng.below(16);
                let op = if r < cas_share {
                    let current = match seen[key as usize] {
                        Some(v) if rng.below(4) != 0 => v,
                        _ => rng.below(u64::from(VALUES)) as u8,
                    };
                    MapOp::Cas {
                        key,
                        current,
                        new: value,
                    }
                } else {
                    match r % 4 {
                        0 | 1 => MapOp::Get(key),
                        2 => MapOp::Insert(key, value),
                        _ => MapOp::Remove(key),
                    }
                };
                let ret = rec.call(op, |op| m.run(op));
                seen[key as usize] = match (op, ret) {
                    (MapOp::Get(_), MapRet::Value(v)) => v,
                    (MapOp::Insert(_, v), _) => Some(v),
                    (MapOp::Remove(_), _) => None,
                    (MapOp::Cas { new, .. }, MapRet::Exchanged(Ok(()))) => Some(new),
                    (MapOp::Cas { .. }, MapRet::Exchanged(Err(v))) => v,
                    (MapOp::Get(_) | MapOp::Cas { .. }, _) => {
                        unreachable!("{op:?} got {ret:?}")
                    }
                };
            }
        },
        |m, rec| {
            for k in 0..KEYS {
                rec.call(MapOp::Get(k), |op| m.run(op));
            }
        },
    )
}

use MapOp::{Cas, Get, Insert, Remove};
use MapRet::{Exchanged, Value};

#[test]
fn map_checker_rejects_known_bad_histories() {
    let bad = [
        (
            "a stale read: get misses a key whose insert completed before it began",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (1, 2, 3, Get(0), Value(None)),
            ]),
        ),
        (
            "a stale read of an overwritten value",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (0, 2, 3, Insert(0, 2), Value(Some(1))),
                (1, 4, 5, Get(0), Value(Some(1))),
            ]),
        ),
        (
            "two successful concurrent exchanges from the same value",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (
                    1,
                    2,
                    5,
                    Cas {
                        key: 0,
                        current: 1,
                        new: 2,
                    },
                    Exchanged(Ok(())),
                ),
                (
                    2,
                    3,
                    6,
                    Cas {
                        key: 0,
                        current: 1,
                        new: 3,
                    },
                    Exchanged(Ok(())),
                ),
            ]),
        ),
        (
            "insert reports no replaced value although the key was present",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (1, 2, 3, Insert(0, 2), Value(None)),
            ]),
        ),
        (
            "two concurrent removes both return the value",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (1, 2, 5, Remove(0), Value(Some(1))),
                (2, 3, 6, Remove(0), Value(Some(1))),
            ]),
        ),
        (
            "a failed exchange that saw the expected value",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (
                    1,
                    2,
                    3,
                    Cas {
                        key: 0,
                        current: 1,
                        new: 2,
                    },
                    Exchanged(Err(Some(1))),
                ),
            ]),
        ),
        (
            "a write to one key shows up under another",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (1, 2, 3, Get(1), Value(Some(1))),
            ]),
        ),
    ];
    for (what, h) in bad {
        match check(&MapModel::default(), &h) {
            Ok(lin) => panic!("accepted a bad history ({what}), as {:?}:\n{h}", lin.order),
            Err(v) => println!("rejected, as it should be: {what}\n{v}"),
        }
    }
}

#[test]
fn map_checker_accepts_known_good_histories() {
    // Two racing exchanges from one value: one wins, the other sees the winner's value.
    let h = history(vec![
        (0, 0, 1, Insert(0, 1), Value(None)),
        (
            1,
            2,
            6,
            Cas {
                key: 0,
                current: 1,
                new: 2,
            },
            Exchanged(Ok(())),
        ),
        (
            2,
            3,
            5,
            Cas {
                key: 0,
                current: 1,
                new: 3,
            },
            Exchanged(Err(Some(2))),
        ),
        (0, 7, 8, Get(0), Value(Some(2))),
    ]);
    let lin = check(&MapModel::default(), &h).expect("a valid history");
    assert_eq!(lin.order, [0, 1, 2, 3]);

    // A get overlapping an insert may see either the old or the new value, and the insert's
    // replaced value must be consistent with where the get is placed.
    for seen in [None, Some(5)] {
        let h = history(vec![
            (0, 0, 10, Insert(1, 5), Value(None)),
            (1, 1, 2, Get(1), Value(seen)),
            (1, 3, 4, Remove(1), Value(Some(5))),
            (1, 5, 6, Get(1), Value(None)),
        ]);
        check(&MapModel::default(), &h).expect("a valid history");
    }

    // From a non-empty state: the remove and the failed exchange overlap, and the exchange saw
    // the key absent, so the remove goes first.
    let init = MapModel(BTreeMap::from([(2, 3)]));
    let h = history(vec![
        (
            0,
            0,
            3,
            Cas {
                key: 2,
                current: 3,
                new: 0,
            },
            Exchanged(Err(None)),
        ),
        (1, 1, 2, Remove(2), Value(Some(3))),
    ]);
    let lin = check(&init, &h).expect("a valid history");
    assert_eq!(lin.order, [1, 0]);
}

/// A cache of capacity 64 (far more than `KEYS`: nothing is ever evicted) on a fixed hasher.
fn test_cache(index_buckets: Option<usize>) -> Cache<u8, u8, FixedHasher> {
    let builder = Cache::builder(64).hasher(FixedHasher::default());
    match index_buckets {
        Some(n) => builder.index_buckets(n).build(),
        None => builder.build(),
    }
}

#[test]
fn cache_histories_are_linearizable() {
    // One bucket for all keys, so every write contends with every other.
    let one_bucket = test_cache(Some(1));
    let sized = test_cache(None);
    let half = ROUNDS / 2;
    let a = map_rounds(&one_bucket, half, 0xCAC4_E001, false, 6);
    a.assert_linearizable("Cache (one bucket)");
    let b = map_rounds(&sized, ROUNDS - half, 0xCAC4_E002, false, 6);
    b.assert_linearizable("Cache (256 buckets)");
    for cache in [&one_bucket, &sized] {
        let present = (0..KEYS).filter(|k| cache.contains_key(k)).count();
        assert_eq!(
            cache.len(),
            present,
            "len() disagrees with the keys present"
        );
        assert_eq!(
            cache.stats().evictions,
            0,
            "the cache evicted below its capacity"
        );
    }
}

#[test]
// Checks the checker against a mutex-guarded map, no latchless code: in `BROKEN_ROUNDS` rounds,
// Miri's scheduler seldom preempts inside the broken exchange's window.
#[cfg_attr(miri, ignore = "a self-test of the checker: too few rounds under Miri")]
fn racy_map_histories_are_rejected() {
    // Mostly exchanges (12 in 16), so that two of them often expect the same value at once; the
    // yield inside the broken exchange widens its window.
    let map = RacyMap(Mutex::new(BTreeMap::new()));
    let report = map_rounds(&map, BROKEN_ROUNDS, 0x2ACE, true, 12);
    report.print("map with a non-atomic compare-and-exchange");
    let v = report
        .violations
        .first()
        .expect("the checker accepted every history of a non-atomic compare-and-exchange");
    println!("first rejected history:\n{v}");
}
