//! Continuous (iteration-level) batching: the step-wise handler ([`StepHandler`]), what it
//! returns ([`Joined`], [`Step`]), when waiting items may join a running batch ([`JoinPolicy`]),
//! and the worker loop that drives it.
//!
//! The scheme is Orca's (Yu et al., "Orca: A Distributed Serving System for Transformer-Based
//! Generative Models", OSDI 2022): the batch is re-formed at every iteration, so a finished item
//! leaves at once and a new one joins at the next step boundary. The join policy follows the idea
//! of text-generation-inference's router (a waiting-served ratio and a most-waiting-steps bound),
//! with our own rule (see [`JoinPolicy`]).
//!
//! # The worker loop
//!
//! Between two steps the worker (1) drops the active items that were cancelled (their stream was
//! dropped) or whose deadline passed (final item [`BatchError::Expired`]); (2) if the join policy
//! says so, pops waiting items, as many as `max_batch_size` active items and the cost budget
//! allow, and hands them to [`StepHandler::join`] together (their prefill); (3) runs one
//! [`StepHandler::step`] over every active item and delivers each item's chunk or final output.
//! With no active item and nothing waiting it sleeps, with the same wake-up protocol as the
//! whole-request worker (see `worker.rs`); while items are active it never sleeps, and looks at
//! the queues once per step (a lock-free pop).

use super::slot::{drop_quietly, Reply};
use super::stream::StreamSlot;
use super::worker::Handler;
use super::{class, BatchError, Inner, Job};
use crate::sync::{now, Arc};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// A step-wise handler for continuous batching, run by a
/// [`StreamBatcher`](super::StreamBatcher)'s worker: it admits new items into the running batch
/// ([`join`](Self::join), their prefill) and advances every active item by one step
/// ([`step`](Self::step), one decode iteration).
///
/// Each accepted request becomes an item with a per-item [`State`](Self::State) (its KV cache
/// position, its tokens so far, ...) that lives on the worker thread only, so it need not be
/// `Send`. Each step, every active item yields a [`Chunk`](Self::Chunk) (streamed to its client
/// at once), finishes with its [`Out`](Self::Out) (its final item; it leaves the batch at once),
/// or just continues.
///
/// Faults: if `join` panics or returns the wrong number of results, the items joining fail with
/// [`BatchError::HandlerPanicked`] or [`BatchError::BadHandlerOutput`] and the running items are
/// untouched; if `step` does, every item of that step fails the same way (their states are
/// dropped: they may be half-updated). The worker survives and keeps the handler for the next
/// items.
///
/// # Examples
///
/// A "model" that counts down from each request, streaming every number:
///
/// ```
/// use latchless::batch::{Batcher, Joined, Step, StepHandler, Streamed};
///
/// struct Countdown;
///
/// impl StepHandler for Countdown {
///     type Req = u32;
///     type State = u32;
///     type Chunk = u32;
///     type Out = &'static str;
///
///     fn join(&mut self, reqs: Vec<u32>) -> Vec<Joined<u32, &'static str>> {
///         reqs.into_iter()
///             .map(|n| if n == 0 { Joined::Finished("nothing to do") } else { Joined::Running(n) })
///             .collect()
///     }
///
///     fn step(&mut self, items: &mut [u32]) -> Vec<Step<u32, &'static str>> {
///         items
///             .iter_mut()
///             .map(|n| {
///                 *n -= 1;
///                 if *n == 0 { Step::Finish("liftoff") } else { Step::Chunk(*n) }
///             })
///             .collect()
///     }
/// }
///
/// let b = Batcher::builder().max_batch_size(8).spawn_steps(Countdown).unwrap();
/// let items: Vec<_> = b.submit(3).unwrap().collect();
/// assert_eq!(items, [Streamed::Chunk(2), Streamed::Chunk(1), Streamed::Done(Ok("liftoff"))]);
/// ```
pub trait StepHandler {
    /// A request.
    type Req;
    /// What the handler keeps for one active item between steps.
    type State;
    /// A partial result, streamed to the item's client as soon as it is made.
    type Chunk;
    /// An item's final output (make it a `Result` for items that can fail on their own).
    type Out;

    /// Admits new items into the running batch (their prefill): one result per request, in
    /// order: [`Joined::Running`] with the item's state, or [`Joined::Finished`] with its final
    /// output (it then never steps).
    fn join(&mut self, reqs: Vec<Self::Req>) -> Vec<Joined<Self::State, Self::Out>>;

    /// Advances every active item one step: one result per item, in the order of `items`.
    fn step(&mut self, items: &mut [Self::State]) -> Vec<Step<Self::Chunk, Self::Out>>;
}

/// What [`StepHandler::join`] makes of one request.
///
/// # Examples
///
/// ```
/// use latchless::batch::Joined;
///
/// let j: Joined<u32, &str> = Joined::Running(7);
/// assert!(matches!(j, Joined::Running(7)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joined<State, Out> {
    /// The item runs: it takes part in the next step with this state.
    Running(State),
    /// The item is already done (an empty prompt, a cache hit, a bad request): its final output.
    Finished(Out),
}

/// What one [`StepHandler::step`] made of one item.
///
/// # Examples
///
/// ```
/// use latchless::batch::Step;
///
/// let s: Step<char, String> = Step::Chunk('a');
/// assert_eq!(s, Step::Chunk('a'));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<Chunk, Out> {
    /// A partial result for the item's stream; the item stays in the batch.
    Chunk(Chunk),
    /// The item is done: its final output. It leaves the batch at once.
    Finish(Out),
    /// Nothing to stream this step; the item stays in the batch.
    Continue,
}

/// When waiting items may join a running batch of a [`StreamBatcher`](super::StreamBatcher).
///
/// A join runs the new items' prefill, which stalls every running item's decode for that step;
/// joining one item at a time as they trickle in would stall the running ones at nearly every
/// step. So between two steps, waiting items join (as many as the free places and the cost
/// budget allow) when any of these holds:
///
/// 1. no item is running (nobody to stall);
/// 2. the waiting items number at least `waiting_served_ratio` times the running ones (enough
///    of them to be worth a stall);
/// 3. items have waited through `max_waiting_steps` steps since the last join (no waiting item
///    starves behind a long batch).
///
/// A full batch (`max_batch_size` running items) takes nobody, whatever the rule; an item whose
/// cost does not fit in the budget left waits at the head of the line (later items do not
/// overtake it) until running items finish. `waiting_served_ratio = 0.0` or `max_waiting_steps =
/// 0` joins at every step boundary ([`eager`](Self::eager)).
///
/// # Examples
///
/// ```
/// use latchless::batch::JoinPolicy;
///
/// let mut policy = JoinPolicy::default();
/// policy.waiting_served_ratio = 0.5;
/// policy.max_waiting_steps = 8;
/// assert!(policy.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct JoinPolicy {
    /// Join when waiting items number at least this many times the running ones. Finite and at
    /// least 0.
    pub waiting_served_ratio: f32,
    /// Join when items have waited through this many steps since the last join.
    pub max_waiting_steps: u32,
}

impl Default for JoinPolicy {
    /// A ratio of 1.2 and 20 steps (text-generation-inference's defaults).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::JoinPolicy;
    ///
    /// assert_eq!(JoinPolicy::default().max_waiting_steps, 20);
    /// ```
    fn default() -> Self {
        Self {
            waiting_served_ratio: 1.2,
            max_waiting_steps: 20,
        }
    }
}

impl JoinPolicy {
    /// Waiting items join at every step boundary (as many as fit): the lowest time to first
    /// chunk, the most stalls for running items.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::JoinPolicy;
    ///
    /// assert_eq!(JoinPolicy::eager().max_waiting_steps, 0);
    /// ```
    pub fn eager() -> Self {
        Self {
            waiting_served_ratio: 0.0,
            max_waiting_steps: 0,
        }
    }

    /// Checks the policy.
    ///
    /// # Errors
    ///
    /// [`ConfigError::BadJoinRatio`](super::ConfigError::BadJoinRatio) if
    /// `waiting_served_ratio` is negative or not finite.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{ConfigError, JoinPolicy};
    ///
    /// let mut policy = JoinPolicy::default();
    /// policy.waiting_served_ratio = f32::NAN;
    /// assert_eq!(policy.validate(), Err(ConfigError::BadJoinRatio));
    /// ```
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        let r = self.waiting_served_ratio;
        if r.is_finite() && r >= 0.0 {
            Ok(())
        } else {
            Err(super::ConfigError::BadJoinRatio)
        }
    }

    /// Whether `waiting` items may join `running` ones after `waited` steps without a join.
    fn admits(&self, waiting: usize, running: usize, waited: u32) -> bool {
        running == 0
            || waited >= self.max_waiting_steps
            || waiting as f64 >= f64::from(self.waiting_served_ratio) * running as f64
    }
}

/// One active item's bookkeeping, beside its state.
struct Item<C, O> {
    slot: Arc<StreamSlot<C, O>>,
    class: usize,
    cost: u64,
    /// When it was submitted: its latency runs from here to its final item.
    submitted: Instant,
    deadline: Option<Instant>,
}

/// Nanoseconds from `earlier` to `later` (0 if `later` is earlier), saturating.
fn nanos_between(later: Instant, earlier: Instant) -> u64 {
    u64::try_from(later.saturating_duration_since(earlier).as_nanos()).unwrap_or(u64::MAX)
}

/// The worker's active batch: the states (one slice, for [`StepHandler::step`]) and, at the same
/// indices, the items' bookkeeping.
struct Active<S, C, O> {
    states: Vec<S>,
    items: Vec<Item<C, O>>,
    /// The total cost of the active items.
    cost: u64,
}

impl<S, C, O> Active<S, C, O> {
    /// Takes item `i` out (the last one moves into its place).
    fn remove(&mut self, i: usize) -> Item<C, O> {
        drop_quietly(self.states.swap_remove(i));
        let item = self.items.swap_remove(i);
        self.cost -= item.cost;
        item
    }
}

impl<Req, C, O> Inner<Req, StreamSlot<C, O>> {
    /// Step-wise worker `me`: joins waiting items into its batch and steps it until shutdown has
    /// drained every accepted item. Its handler comes from `make`, called on this thread, and
    /// again after a panic when `renew` is set.
    pub(super) fn run_steps<H, M>(&self, me: usize, make: M, renew: bool)
    where
        H: StepHandler<Req = Req, Chunk = C, Out = O>,
        M: FnMut() -> Option<H>,
    {
        let mut handler = Handler::new(make, renew, me);
        let handler = &mut handler;
        // Made before the first request arrives, so that it does not wait for it.
        let _ = handler.get();
        let pool = self.sleepers.len() > 1;
        let prioritised = self.classes.len() > 1;
        let mut active = Active {
            states: Vec::new(),
            items: Vec::new(),
            cost: 0,
        };
        // An item popped whose cost did not fit in the budget left: first in line next time.
        let mut carry: Option<Job<Req, StreamSlot<C, O>>> = None;
        // Steps run since the last join while items were waiting.
        let mut waited = 0u32;
        loop {
            self.leave_cancelled_or_expired(me, &mut active);
            let room = self
                .config
                .max_batch_size
                .saturating_sub(active.items.len());
            if room > 0 && (carry.is_some() || self.any_waiting()) {
                let waiting = usize::from(carry.is_some())
                    + self.classes.iter().map(|c| c.queue.len()).sum::<usize>();
                if self.join.admits(waiting, active.items.len(), waited)
                    && self.join_waiting(me, handler, &mut active, &mut carry, prioritised)
                {
                    waited = 0;
                    // Items left behind (this batch is full, or its budget is): hand them to a
                    // sleeping worker rather than let them wait for ours.
                    if pool && self.any_waiting() {
                        self.wake_one();
                    }
                }
            }
            if active.items.is_empty() {
                if carry.is_some() {
                    // It fits in an empty batch (`submit` refuses costlier ones): join it now.
                    continue;
                }
                if self.may_exit() {
                    return;
                }
                self.sleep(me, None, false);
                continue;
            }
            self.step_all(me, handler, &mut active);
            if carry.is_some() || self.any_waiting() {
                waited = waited.saturating_add(1);
            }
        }
    }

    /// Drops the active items whose stream was dropped, and fails those whose deadline passed.
    fn leave_cancelled_or_expired<S>(&self, me: usize, active: &mut Active<S, C, O>) {
        let mut t = None;
        let mut i = active.items.len();
        while i > 0 {
            i -= 1;
            let item = &active.items[i];
            if item.slot.is_cancelled() {
                let item = active.remove(i);
                self.records[me].lock().counts.cancelled += 1;
                self.leave(&item);
            } else if let Some(d) = item.deadline {
                if *t.get_or_insert_with(now) >= d {
                    let item = active.remove(i);
                    self.records[me].lock().counts.expired += 1;
                    self.leave(&item);
                    item.slot.fail(BatchError::Expired);
                }
            }
        }
    }

    /// Gives back an item's admission (before its final item goes out, as in `process`).
    fn leave(&self, item: &Item<C, O>) {
        self.classes[item.class].release(1);
        self.release(1);
    }

    /// Ends an item that left the batch with `result` as its final item (its output, or a
    /// handler fault), recording its latency before the final item goes out.
    fn finish(&self, me: usize, item: &Item<C, O>, result: Result<O, BatchError>) {
        {
            let latency = nanos_between(now(), item.submitted);
            let mut record = self.records[me].lock();
            record.histograms.record_latency(item.class, latency);
            let counts = &mut record.counts;
            if result.is_ok() {
                counts.completed += 1;
            } else {
                counts.failed += 1;
            }
        }
        self.leave(item);
        item.slot.finish(result);
    }

    /// Pops the waiting items that fit and runs their prefill. Returns whether any was popped.
    fn join_waiting<H, M>(
        &self,
        me: usize,
        handler: &mut Handler<H, M>,
        active: &mut Active<H::State, C, O>,
        carry: &mut Option<Job<Req, StreamSlot<C, O>>>,
        prioritised: bool,
    ) -> bool
    where
        H: StepHandler<Req = Req, Chunk = C, Out = O>,
        M: FnMut() -> Option<H>,
    {
        let lead = if prioritised {
            class::lead(&self.classes, self.aging)
        } else {
            0
        };
        let mut served = 0u64;
        let mut reqs = Vec::new();
        let mut joining = Vec::new();
        let mut cost = active.cost;
        while active.items.len() + joining.len() < self.config.max_batch_size {
            let job = match carry.take() {
                // Screened again: it may have been cancelled or expired while it waited.
                Some(job) => match self.screen(me, job) {
                    Some(job) => job,
                    None => continue,
                },
                None => match self.next_live(me, lead) {
                    Some(job) => job,
                    None => break,
                },
            };
            if cost.saturating_add(job.cost) > self.config.max_batch_cost {
                *carry = Some(job);
                break;
            }
            cost += job.cost;
            served |= 1 << job.class;
            reqs.push(job.req);
            joining.push(Item {
                slot: job.slot,
                class: job.class,
                cost: job.cost,
                submitted: job.submitted,
                deadline: job.deadline,
            });
        }
        if prioritised {
            class::account(&self.classes, served);
        }
        if joining.is_empty() {
            return false;
        }
        let n = joining.len();
        {
            // Queue time: from submit to this join (the start of the item's prefill).
            let start = now();
            let mut record = self.records[me].lock();
            let mut waited_total = 0u64;
            for item in &joining {
                let waited = nanos_between(start, item.submitted);
                waited_total = waited_total.saturating_add(waited);
                record.histograms.record_queued(item.class, waited);
            }
            let counts = &mut record.counts;
            counts.queue_wait_nanos = counts.queue_wait_nanos.saturating_add(waited_total);
        }
        let joined = match handler.get() {
            // The maker panicked.
            None => Err(BatchError::HandlerPanicked),
            Some(h) => match catch_unwind(AssertUnwindSafe(|| h.join(reqs))) {
                Ok(joined) if joined.len() == n => Ok(joined),
                Ok(joined) => {
                    let got = joined.len();
                    drop_quietly(joined);
                    Err(BatchError::BadHandlerOutput { expected: n, got })
                }
                Err(_panic) => {
                    handler.panicked();
                    Err(BatchError::HandlerPanicked)
                }
            },
        };
        match joined {
            Ok(joined) => {
                for (item, j) in joining.into_iter().zip(joined) {
                    match j {
                        Joined::Running(state) => {
                            active.cost += item.cost;
                            active.states.push(state);
                            active.items.push(item);
                        }
                        Joined::Finished(out) => self.finish(me, &item, Ok(out)),
                    }
                }
            }
            Err(err) => {
                for item in &joining {
                    self.finish(me, item, Err(err));
                }
            }
        }
        true
    }

    /// Runs one step over every active item and delivers what it made.
    fn step_all<H, M>(
        &self,
        me: usize,
        handler: &mut Handler<H, M>,
        active: &mut Active<H::State, C, O>,
    ) where
        H: StepHandler<Req = Req, Chunk = C, Out = O>,
        M: FnMut() -> Option<H>,
    {
        let n = active.items.len();
        let start = now();
        // `None`: the maker panicked.
        let stepped = handler
            .get()
            .map(|h| catch_unwind(AssertUnwindSafe(|| h.step(&mut active.states))));
        {
            // Recorded before the step's items go out, so that a client holding its final item
            // finds its step in the statistics.
            let ran = nanos_between(now(), start);
            let mut record = self.records[me].lock();
            record.histograms.record_step(n, ran);
            let counts = &mut record.counts;
            counts.batches += 1;
            counts.batch_sizes[super::stats::size_bucket(n)] += 1;
        }
        let err = match stepped {
            None => BatchError::HandlerPanicked,
            Some(Ok(steps)) if steps.len() == n => {
                // Backwards, so that `remove` (a swap with the last item) only moves items whose
                // step was already delivered.
                for (i, step) in steps.into_iter().enumerate().rev() {
                    match step {
                        Step::Chunk(chunk) => active.items[i].slot.push(chunk),
                        Step::Finish(out) => {
                            let item = active.remove(i);
                            self.finish(me, &item, Ok(out));
                        }
                        Step::Continue => {}
                    }
                }
                return;
            }
            Some(Ok(steps)) => {
                let got = steps.len();
                drop_quietly(steps);
                BatchError::BadHandlerOutput { expected: n, got }
            }
            Some(Err(_panic)) => {
                handler.panicked();
                BatchError::HandlerPanicked
            }
        };
        // Every item of the failed step leaves: its state may be half-updated.
        while !active.items.is_empty() {
            let item = active.remove(active.items.len() - 1);
            self.finish(me, &item, Err(err));
        }
    }
}
