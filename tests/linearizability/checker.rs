//! A small linearizability checker: history recording plus a Wing & Gong search with Lowe's
//! memoisation, generic over a sequential model.
//!
//! # Recording
//!
//! Every thread owns a [`Recorder`]. [`Recorder::call`] takes a stamp from the shared [`Clock`]
//! just before invoking the operation and another just after it returns, and logs the operation,
//! its response and both stamps. The logs are merged into a [`History`].
//!
//! Operation `a` *precedes* operation `b` when `a`'s response stamp is below `b`'s invocation
//! stamp. That order is sound to impose: both stamps come from read-modify-writes of one atomic,
//! so `a`'s response stamp synchronises with `b`'s invocation stamp, `a` happens-before `b`, and
//! any correct implementation must make `a`'s effect visible to `b`. Operations that do not
//! precede one another overlap, and may linearize in either order.
//!
//! # Checking
//!
//! [`check`] looks for a linearization: a total order of all operations that extends the
//! precedence order and in which the model, applying the operations one after the other from the
//! initial state, gives exactly the recorded responses (J. M. Wing and C. Gong, "Testing and
//! verifying concurrent objects", JPDC 1993). At each step, an operation may be linearized next
//! if no other pending operation returned before it was invoked; the search tries each such
//! candidate whose modelled response matches, and backtracks on a dead end. G. Lowe ("Testing for
//! linearizability", CCPE 2017) makes this practical by memoising the configurations already
//! explored: a configuration is the *set* of linearized operations plus the model state, and two
//! paths reaching the same one have the same future, so the second is cut off. That bounds the
//! work by the number of distinct configurations instead of the number of interleavings.
//!
//! Limits: every operation must have completed (no pending invocations), and a history holds at
//! most 128 operations (the linearized set is a `u128` bitmask); the tests keep histories far
//! shorter than that and check many of them.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

/// A sequential specification: the state of the object, and how one operation changes it.
///
/// The state is hashed into the memo table, so it must be `Hash + Eq` (a `BTreeMap` rather than
/// a `HashMap`, a `VecDeque` for a queue).
pub(crate) trait Model: Clone + Eq + Hash + fmt::Debug {
    /// An operation with its arguments.
    type Op: fmt::Debug;
    /// An operation's response.
    type Ret: Clone + PartialEq + fmt::Debug;

    /// Applies `op` to the state and returns the response the sequential object gives.
    fn apply(&mut self, op: &Self::Op) -> Self::Ret;
}

/// The global clock of a run: one counter every recorder stamps from.
#[derive(Debug, Default)]
pub(crate) struct Clock(AtomicU64);

impl Clock {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A fresh stamp, larger than every stamp taken before it.
    fn stamp(&self) -> u64 {
        // SeqCst: totally ordered with every other stamp of this clock (the only SeqCst
        // operations involved). The checker's argument needs less: a response stamp that a later
        // invocation stamp reads from (through the chain of read-modify-writes) synchronises with
        // it, which AcqRel already gives. SeqCst keeps the clock obviously one total order, at a
        // cost that does not matter in a test.
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}

/// One completed operation of a history.
#[derive(Clone, Debug)]
pub(crate) struct Operation<Op, Ret> {
    /// The recording thread (only used in reports).
    pub(crate) thread: usize,
    pub(crate) op: Op,
    pub(crate) ret: Ret,
    /// Stamp taken just before the invocation.
    pub(crate) call: u64,
    /// Stamp taken just after the response.
    pub(crate) returned: u64,
}

/// One thread's log of operations.
#[derive(Debug)]
pub(crate) struct Recorder<'c, Op, Ret> {
    clock: &'c Clock,
    thread: usize,
    ops: Vec<Operation<Op, Ret>>,
}

impl<'c, Op, Ret: Clone> Recorder<'c, Op, Ret> {
    pub(crate) fn new(clock: &'c Clock, thread: usize) -> Self {
        Self {
            clock,
            thread,
            ops: Vec::new(),
        }
    }

    /// Runs `run(&op)` between two clock stamps, logs it, and returns its response.
    pub(crate) fn call(&mut self, op: Op, run: impl FnOnce(&Op) -> Ret) -> Ret {
        let call = self.clock.stamp();
        let ret = run(&op);
        let returned = self.clock.stamp();
        self.ops.push(Operation {
            thread: self.thread,
            op,
            ret: ret.clone(),
            call,
            returned,
        });
        ret
    }
}

/// A complete history: the operations of every thread, ordered by invocation stamp.
#[derive(Debug)]
pub(crate) struct History<Op, Ret> {
    ops: Vec<Operation<Op, Ret>>,
}

impl<Op, Ret> History<Op, Ret> {
    /// A history from explicit operations (hand-written histories in the checker's own tests).
    ///
    /// # Panics
    ///
    /// If an operation returns before it is invoked, or two stamps collide.
    pub(crate) fn new(mut ops: Vec<Operation<Op, Ret>>) -> Self {
        ops.sort_by_key(|o| o.call);
        let mut stamps = HashSet::new();
        for o in &ops {
            assert!(o.call < o.returned, "an operation returns after its call");
            assert!(
                stamps.insert(o.call) && stamps.insert(o.returned),
                "two events share a stamp"
            );
        }
        Self { ops }
    }

    /// Merges the logs of every recorder of one run.
    pub(crate) fn from_recorders<'c>(
        recorders: impl IntoIterator<Item = Recorder<'c, Op, Ret>>,
    ) -> Self {
        Self::new(recorders.into_iter().flat_map(|r| r.ops).collect())
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    /// How many operations overlap in time with at least one operation of another thread: a
    /// measure of how concurrent the recorded run really was.
    pub(crate) fn overlapping(&self) -> usize {
        let ops = &self.ops;
        ops.iter()
            .filter(|a| {
                ops.iter()
                    .any(|b| a.thread != b.thread && a.call < b.returned && b.call < a.returned)
            })
            .count()
    }
}

impl<Op: fmt::Debug, Ret: fmt::Debug> fmt::Display for History<Op, Ret> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, o) in self.ops.iter().enumerate() {
            writeln!(
                f,
                "  #{i:<3} thread {} [{:>5}, {:>5}] {:?} -> {:?}",
                o.thread, o.call, o.returned, o.op, o.ret
            )?;
        }
        Ok(())
    }
}

/// A successful check.
#[derive(Debug)]
pub(crate) struct Linearization {
    /// Indices into the history (ordered by invocation), in linearization order.
    pub(crate) order: Vec<usize>,
    /// Configurations the search visited.
    pub(crate) explored: usize,
}

/// A failed check: no linearization exists.
#[derive(Debug)]
pub(crate) struct Violation {
    /// The history, printed.
    pub(crate) history: String,
    /// One of the longest prefixes that could be linearized, as history indices.
    pub(crate) longest_prefix: Vec<usize>,
    /// Configurations the search visited.
    pub(crate) explored: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "history is not linearizable:")?;
        write!(f, "{}", self.history)?;
        write!(
            f,
            "longest linearizable prefix {:?} ({} configurations explored)",
            self.longest_prefix, self.explored
        )
    }
}

/// The search's working set.
struct Search<'h, M: Model> {
    ops: &'h [Operation<M::Op, M::Ret>],
    all: u128,
    /// Lowe's memo: configurations (linearized set, model state) already explored and failed.
    seen: HashSet<(u128, M)>,
    order: Vec<usize>,
    longest: Vec<usize>,
}

impl<M: Model> Search<'_, M> {
    /// Tries to extend the current linearization (`done`, reaching `state`) to all operations.
    fn extend(&mut self, done: u128, state: &M) -> bool {
        if done == self.all {
            return true;
        }
        if !self.seen.insert((done, state.clone())) {
            // Explored before from this very configuration, and it failed then.
            return false;
        }
        if self.order.len() > self.longest.len() {
            self.longest.clone_from(&self.order);
        }
        let pending = |i: &usize| done & (1u128 << i) == 0;
        // The earliest response among pending operations: only operations invoked before it can
        // be linearized next (any other has a pending predecessor).
        let horizon = (0..self.ops.len())
            .filter(pending)
            .map(|i| self.ops[i].returned)
            .min()
            .expect("a pending operation exists");
        for i in (0..self.ops.len()).filter(pending) {
            let o = &self.ops[i];
            if o.call > horizon {
                // Ordered by invocation: every later operation is past the horizon too.
                break;
            }
            let mut next = state.clone();
            if next.apply(&o.op) != o.ret {
                continue;
            }
            self.order.push(i);
            if self.extend(done | (1u128 << i), &next) {
                return true;
            }
            self.order.pop();
        }
        false
    }
}

/// Checks `history` against the sequential `model`, starting from the state `init`.
///
/// # Errors
///
/// A [`Violation`] if no linearization exists.
///
/// # Panics
///
/// If the history holds more than 128 operations.
pub(crate) fn check<M: Model>(
    init: &M,
    history: &History<M::Op, M::Ret>,
) -> Result<Linearization, Violation> {
    let n = history.ops.len();
    assert!(
        n <= 128,
        "history of {n} operations: the checker takes at most 128"
    );
    let mut search = Search {
        ops: &history.ops,
        all: if n == 128 {
            u128::MAX
        } else {
            (1u128 << n) - 1
        },
        seen: HashSet::new(),
        order: Vec::with_capacity(n),
        longest: Vec::new(),
    };
    if search.extend(0, init) {
        Ok(Linearization {
            order: search.order,
            explored: search.seen.len(),
        })
    } else {
        Err(Violation {
            history: history.to_string(),
            longest_prefix: search.longest,
            explored: search.seen.len(),
        })
    }
}
