//! The queue: `MsQueue<u32>` against a `VecDeque` model, and a LIFO stack posing as a queue that
//! the checker must reject.

use crate::checker::{Model, Recorder};
use crate::rounds::{jitter, run_rounds, Report, BROKEN_ROUNDS, ROUNDS};
use crossbeam_epoch::Collector;
use latchless::queue::MsQueue;
use std::collections::VecDeque;
use std::sync::Mutex;

/// A FIFO queue of `u32`s, as the sequential model sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct QueueModel(pub(crate) VecDeque<u32>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueOp {
    Push(u32),
    Pop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueRet {
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
