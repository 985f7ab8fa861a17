//! The `queue` target: [`MsQueue`] against a `VecDeque` of value ids.
//!
//! The queue is built on a `Collector` made for this input alone (and dropped at its end), so
//! epoch garbage cannot pile up across inputs and reclamation is exact. Operations: `push`, `pop`,
//! bursts of pushes and pops (crossing many block boundaries, so blocks are allocated and
//! retired), `len`, `is_empty`, partial and full `drain`, partial `into_iter`, holding a second
//! participant's guard across steps (which holds the epoch back, so retired blocks wait), and
//! flushing epoch garbage.
//!
//! Every value carries a fresh id; the model holds the ids in queue order, so each pop checks
//! FIFO order and exactly-once. Every value counts its drops in a per-input log: after each step
//! the values alive are exactly the model's, no value is ever dropped twice, and once the queue,
//! the held guard, the handles and the collector are gone every value has been dropped exactly
//! once.

use arbitrary::{Arbitrary, Unstructured};
use crossbeam_epoch::{Collector, Guard, LocalHandle};
use latchless::queue::MsQueue;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

/// At most this many operations per input.
const MAX_OPS: usize = 1_000;
/// At most this many values pushed per input, bursts included (inputs stay in the milliseconds
/// under AddressSanitizer).
const MAX_VALUES: usize = 6_000;
/// The largest burst: dozens of the queue's blocks, so one burst pushed and popped retires many
/// of them through the epoch.
const MAX_BURST: u16 = 2_500;

/// One step, decoded from the fuzzer's bytes.
#[derive(Arbitrary, Debug)]
enum Op {
    Push,
    /// Pushes `n % MAX_BURST` values.
    PushBurst(u16),
    Pop,
    /// Pops `n % MAX_BURST` times.
    PopBurst(u16),
    Len,
    IsEmpty,
    /// Drains at most this many values, leaving the rest.
    DrainSome(u8),
    DrainAll,
    /// Takes this many values through `into_iter` (`n % MAX_BURST`), then drops the iterator
    /// with the rest; the queue is replaced by a fresh one on the same collector.
    IntoIterSome(u16),
    /// Pins the second handle and keeps the guard across steps, holding the epoch back.
    HoldGuard,
    ReleaseGuard,
    /// Flushes the main handle's garbage a few times, letting the epoch advance.
    Flush,
}

/// How many times each value was dropped, indexed by id.
#[derive(Debug, Default)]
struct DropLog {
    counts: RefCell<Vec<u8>>,
    dropped: Cell<usize>,
    /// Set if any value was dropped twice (a drop must not panic, so it is checked after).
    twice: Cell<bool>,
}

/// A queue payload: its id, and the log its drop is recorded in.
#[derive(Debug)]
struct Value {
    id: usize,
    log: Rc<DropLog>,
}

impl Drop for Value {
    fn drop(&mut self) {
        let mut counts = self.log.counts.borrow_mut();
        let c = &mut counts[self.id];
        if *c != 0 {
            self.log.twice.set(true);
        }
        *c = c.saturating_add(1);
        self.log.dropped.set(self.log.dropped.get() + 1);
    }
}

/// The queue under test and everything it is checked against. Fields drop in order: the held
/// guard and the queue before the handles and the collector.
struct Harness {
    held: Option<Guard>,
    queue: MsQueue<Value>,
    main: LocalHandle,
    other: LocalHandle,
    collector: Collector,
    /// The ids in the queue, front first.
    model: VecDeque<usize>,
    log: Rc<DropLog>,
    step: usize,
}

impl Harness {
    fn new() -> Self {
        let collector = Collector::new();
        Self {
            held: None,
            queue: MsQueue::with_collector(collector.clone()),
            main: collector.register(),
            other: collector.register(),
            collector,
            model: VecDeque::new(),
            log: Rc::default(),
            step: 0,
        }
    }

    fn created(&self) -> usize {
        self.log.counts.borrow().len()
    }

    /// A new value, already recorded at the back of the model.
    fn value(&mut self) -> Value {
        let mut counts = self.log.counts.borrow_mut();
        let id = counts.len();
        counts.push(0);
        self.model.push_back(id);
        Value {
            id,
            log: Rc::clone(&self.log),
        }
    }

    /// Checks a popped value (or its absence) against the model's front.
    fn popped(&mut self, got: Option<Value>, op: &Op) {
        let want = self.model.pop_front();
        assert_eq!(
            got.as_ref().map(|v| v.id),
            want,
            "step {}: {op:?} popped the wrong value (FIFO or exactly-once broken)",
            self.step
        );
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Push => {
                let v = self.value();
                self.queue.push(v);
            }
            Op::PushBurst(n) => {
                let n = usize::from(n % MAX_BURST).min(MAX_VALUES.saturating_sub(self.created()));
                for _ in 0..n {
                    let v = self.value();
                    self.queue.push(v);
                }
            }
            Op::Pop => {
                let got = self.queue.pop();
                self.popped(got, op);
            }
            Op::PopBurst(n) => {
                let n = usize::from(n % MAX_BURST);
                for _ in 0..n {
                    let got = self.queue.pop();
                    self.popped(got, op);
                }
            }
            Op::Len => assert_eq!(
                self.queue.len(),
                self.model.len(),
                "step {}: len",
                self.step
            ),
            Op::IsEmpty => assert_eq!(
                self.queue.is_empty(),
                self.model.is_empty(),
                "step {}: is_empty",
                self.step
            ),
            Op::DrainSome(k) => {
                let got: Vec<usize> = self
                    .queue
                    .drain()
                    .take(usize::from(k))
                    .map(|v| v.id)
                    .collect();
                let want: Vec<usize> = self
                    .model
                    .drain(..usize::from(k).min(self.model.len()))
                    .collect();
                assert_eq!(got, want, "step {}: {op:?}", self.step);
            }
            Op::DrainAll => {
                let mut drain = self.queue.drain();
                let got: Vec<usize> = drain.by_ref().map(|v| v.id).collect();
                assert!(
                    drain.next().is_none(),
                    "step {}: drain is not fused",
                    self.step
                );
                let want: Vec<usize> = self.model.drain(..).collect();
                assert_eq!(got, want, "step {}: {op:?}", self.step);
                assert!(
                    self.queue.is_empty(),
                    "step {}: not empty after a full drain",
                    self.step
                );
            }
            Op::IntoIterSome(k) => {
                let fresh = MsQueue::with_collector(self.collector.clone());
                let mut it = std::mem::replace(&mut self.queue, fresh).into_iter();
                for _ in 0..k % MAX_BURST {
                    let got = it.next();
                    self.popped(got, op);
                }
                // The rest drops with the iterator.
                drop(it);
                self.model.clear();
            }
            Op::HoldGuard => self.held = Some(self.other.pin()),
            Op::ReleaseGuard => self.held = None,
            Op::Flush => {
                for _ in 0..3 {
                    self.main.pin().flush();
                }
            }
        }
    }

    /// What must hold after every step.
    fn check(&self, op: &Op) {
        let step = self.step;
        assert!(
            !self.log.twice.get(),
            "step {step}: {op:?}: a value was dropped twice"
        );
        let alive = self.created() - self.log.dropped.get();
        assert_eq!(
            alive,
            self.model.len(),
            "step {step}: {op:?}: values alive vs the model (leaked or dropped too early)"
        );
        let len = self.queue.len();
        assert_eq!(
            len,
            self.model.len(),
            "step {step}: {op:?}: len after the step"
        );
    }

    /// Drops the queue and the collector, then checks every value was dropped exactly once.
    fn finish(self) {
        let Self {
            held,
            queue,
            main,
            other,
            collector,
            model,
            log,
            step,
        } = self;
        assert_eq!(queue.len(), model.len(), "final len");
        drop(held);
        drop(queue);
        drop((main, other, collector));
        let counts = log.counts.borrow();
        if let Some(id) = counts.iter().position(|&c| c != 1) {
            panic!(
                "after {step} steps and dropping the queue: value {id} of {} was dropped {} times",
                counts.len(),
                counts[id]
            );
        }
    }
}

/// Runs one input: decodes operations until the bytes run out (or `MAX_OPS`), applying each to an
/// `MsQueue` and to the model. Returns the number of steps run; panics at the first disagreement.
pub fn run(data: &[u8]) -> usize {
    let mut u = Unstructured::new(data);
    let mut h = Harness::new();
    while h.step < MAX_OPS && !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        h.apply(&op);
        h.check(&op);
        h.step += 1;
    }
    let steps = h.step;
    h.finish();
    steps
}
