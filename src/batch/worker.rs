//! The workers: how a batch forms, how a handler runs on it, and how workers sleep and wake.
//!
//! # Waking
//!
//! Each worker has its own [`Sleeper`](super::Sleeper). A worker about to park sets its state
//! (idle, or filling a batch), issues a SeqCst fence, and looks once more at what it waits for
//! (the class queues, the shutdown flag, `in_flight`, the idle count); whoever changes one of
//! those issues a SeqCst fence and then reads the states. Of two such fences one comes first, so
//! either the worker sees the change or the changer sees the state and unparks it. A submit wakes one sleeping worker
//! ([`wake_one`](Inner::wake_one)): the woken worker pops the queues before it parks again, and a
//! worker whose state was stale (already awake) pops it as well, since an unpark is kept for the
//! next park. Shutdown, and a release of admission during shutdown, wake every sleeping worker
//! ([`wake_all`](Inner::wake_all)), since each must see `in_flight` reach zero to exit. A worker
//! going idle wakes the workers filling a batch, which close it at once: while a worker is idle,
//! nobody holds requests back.

use super::slot::{drop_quietly, Reply};
use super::{class, BatchError, Inner, Job, Slot};
use crate::sync::{fence, now, Arc, Backoff, Ordering, UNDER_MODEL_CHECKER};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// A [`Sleeper`](super::Sleeper)'s states: awake, parked between batches, parked while a batch
/// waits for companions.
pub(super) const AWAKE: u8 = 0;
const IDLE: u8 = 1;
const FILLING: u8 = 2;

/// A worker's handler, and what makes it.
pub(super) struct Handler<H, M> {
    /// `None` until made, and after a panic when `renew` is set (or if the maker panicked).
    current: Option<H>,
    make: M,
    /// Whether a handler that panicked is replaced by a fresh one.
    renew: bool,
    /// The worker's index.
    me: usize,
    /// Scratch: the current batch's queue times, in nanoseconds.
    waits: Vec<u64>,
    /// Scratch: the current batch's classes, in the order of `waits`.
    classes: Vec<usize>,
}

impl<H, M: FnMut() -> Option<H>> Handler<H, M> {
    /// Worker `me`'s handler, made by `make` when first needed (and again after a panic if
    /// `renew`).
    pub(super) fn new(make: M, renew: bool, me: usize) -> Self {
        Self {
            current: None,
            make,
            renew,
            me,
            waits: Vec::new(),
            classes: Vec::new(),
        }
    }

    /// The handler, made first if need be; `None` if the maker panicked.
    pub(super) fn get(&mut self) -> Option<&mut H> {
        if self.current.is_none() {
            // A panicking maker is answered like a panicking handler: the batch fails and the
            // worker tries again on the next one.
            self.current = catch_unwind(AssertUnwindSafe(&mut self.make))
                .ok()
                .flatten();
        }
        self.current.as_mut()
    }

    /// The handler panicked: drop it if it is to be renewed.
    pub(super) fn panicked(&mut self) {
        if self.renew {
            let old = self.current.take();
            // A handler whose drop panics too is gone all the same.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(old)));
        }
    }
}

impl<Req, Resp> Inner<Req, Slot<Resp>> {
    /// Worker `me`: forms batches and runs its handler on them until shutdown has drained every
    /// request.
    pub(super) fn run<H, M>(&self, me: usize, make: M, renew: bool)
    where
        H: FnMut(Vec<Req>) -> Vec<Resp>,
        M: FnMut() -> Option<H>,
    {
        let mut handler = Handler::new(make, renew, me);
        // Made before the first request arrives, so that it does not wait for it.
        let _ = handler.get();
        let pool = self.sleepers.len() > 1;
        let prioritised = self.classes.len() > 1;
        // A request popped that would have taken the previous batch past its cost budget.
        let mut carry: Option<Job<Req, Slot<Resp>>> = None;
        loop {
            let lead = if prioritised {
                class::lead(&self.classes, self.aging)
            } else {
                0
            };
            let Some(first) = carry.take().or_else(|| self.next_live(me, lead)) else {
                if self.may_exit() {
                    return;
                }
                self.sleep(me, None, false);
                continue;
            };
            let close_at = first.submitted.checked_add(self.config.max_wait);
            let mut cost = first.cost;
            // The classes that gave requests to this batch, one bit each.
            let mut served = 1u64 << first.class;
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch_size {
                match self.next_live(me, lead) {
                    Some(job) => {
                        if cost.saturating_add(job.cost) > self.config.max_batch_cost {
                            carry = Some(job);
                            break;
                        }
                        cost += job.cost;
                        served |= 1 << job.class;
                        batch.push(job);
                    }
                    None => {
                        // Relaxed: a hint to stop waiting; draining does not depend on it.
                        if self.shutting_down.load(Ordering::Relaxed) {
                            break;
                        }
                        // Relaxed: a hint too. Another worker waits for work, so holding these
                        // requests back for companions would only leave it unused.
                        if pool && self.idle.load(Ordering::Relaxed) > 0 {
                            break;
                        }
                        let left = close_at.and_then(|t| t.checked_duration_since(now()));
                        match left {
                            Some(left) if !left.is_zero() => self.sleep(me, Some(left), true),
                            // `max_wait` passed (or is too far to represent: then it is `None`
                            // from `checked_add`, and we wait untimed).
                            _ if close_at.is_some() => break,
                            _ => self.sleep(me, None, true),
                        }
                    }
                }
            }
            if prioritised {
                class::account(&self.classes, served);
            }
            // Work left behind (the batch is full, or a worker's wake-up went to one that was
            // already awake): hand it to a sleeping worker rather than let it wait for ours.
            if pool && self.any_waiting() {
                self.wake_one();
            }
            self.process(batch, &mut handler);
        }
    }

    /// Runs the handler on a batch and answers every request in it.
    fn process<H, M>(&self, batch: Vec<Job<Req, Slot<Resp>>>, handler: &mut Handler<H, M>)
    where
        H: FnMut(Vec<Req>) -> Vec<Resp>,
        M: FnMut() -> Option<H>,
    {
        // Screened again: a request may have been cancelled or expired while the batch filled.
        let me = handler.me;
        let batch: Vec<_> = batch
            .into_iter()
            .filter_map(|j| self.screen(me, j))
            .collect();
        let n = batch.len();
        if n == 0 {
            return;
        }
        let start = now();
        handler.waits.clear();
        handler.classes.clear();
        let mut waited_nanos = 0u64;
        let (reqs, slots): (Vec<Req>, Vec<Arc<Slot<Resp>>>) = batch
            .into_iter()
            .map(|j| {
                let w = start.saturating_duration_since(j.submitted).as_nanos();
                let w = u64::try_from(w).unwrap_or(u64::MAX);
                waited_nanos = waited_nanos.saturating_add(w);
                handler.waits.push(w);
                handler.classes.push(j.class);
                (j.req, j.slot)
            })
            .unzip();
        // The handler's state after a panic is the user's to judge (or the factory's, which
        // replaces it); the worker only needs to answer the batch and go on.
        let replies: Result<Vec<Resp>, BatchError> = match handler.get() {
            None => Err(BatchError::HandlerPanicked),
            Some(h) => match catch_unwind(AssertUnwindSafe(|| h(reqs))) {
                Ok(resps) if resps.len() == n => Ok(resps),
                Ok(resps) => {
                    let got = resps.len();
                    // User values: a panic in their `Drop` must not unwind the worker.
                    drop_quietly(resps);
                    Err(BatchError::BadHandlerOutput { expected: n, got })
                }
                Err(_panic) => {
                    handler.panicked();
                    Err(BatchError::HandlerPanicked)
                }
            },
        };
        let ran = now().saturating_duration_since(start).as_nanos();
        {
            // Recorded before the replies go out, so that a client holding its reply finds its
            // request in the statistics.
            let mut record = self.records[me].lock();
            record.histograms.record_batch(
                &handler.waits,
                &handler.classes,
                u64::try_from(ran).unwrap_or(u64::MAX),
            );
            let counts = &mut record.counts;
            counts.batches += 1;
            counts.batch_sizes[super::stats::size_bucket(n)] += 1;
            counts.queue_wait_nanos = counts.queue_wait_nanos.saturating_add(waited_nanos);
            match &replies {
                Ok(_) => counts.completed += n as u64,
                Err(_) => counts.failed += n as u64,
            }
        }
        // Admission is released before the replies go out, so a client that has its reply can
        // submit again at once; shutdown still waits for these replies, since it joins this
        // thread, which sends them before it can exit.
        for &c in &handler.classes {
            self.classes[c].release(1);
        }
        self.release(n as u64);
        match replies {
            Ok(resps) => {
                for (slot, resp) in slots.iter().zip(resps) {
                    slot.send(Ok(resp));
                }
            }
            Err(err) => {
                for slot in &slots {
                    slot.send(Err(err));
                }
            }
        }
    }
}

impl<Req, S> Inner<Req, S> {
    /// Pops the next request still worth computing, answering or dropping the others: from
    /// class `lead` first, then from the others, most urgent first.
    pub(super) fn next_live(&self, me: usize, lead: usize) -> Option<Job<Req, S>>
    where
        S: Reply,
    {
        loop {
            let job = self.classes[lead].queue.pop().or_else(|| {
                self.classes
                    .iter()
                    .enumerate()
                    .filter(|&(c, _)| c != lead)
                    .find_map(|(_, class)| class.queue.pop())
            })?;
            if let Some(job) = self.screen(me, job) {
                return Some(job);
            }
        }
    }

    /// Whether any class has a request waiting.
    pub(super) fn any_waiting(&self) -> bool {
        self.classes.iter().any(|c| !c.queue.is_empty())
    }

    /// Passes a live job through; answers an expired one `Expired` and skips a cancelled one,
    /// releasing their admission.
    pub(super) fn screen(&self, me: usize, job: Job<Req, S>) -> Option<Job<Req, S>>
    where
        S: Reply,
    {
        let cancelled = job.slot.is_cancelled();
        if !cancelled && job.deadline.is_none_or(|d| now() < d) {
            return Some(job);
        }
        {
            let counts = &mut self.records[me].lock().counts;
            if cancelled {
                counts.cancelled += 1;
            } else {
                counts.expired += 1;
            }
        }
        // Released before the reply, as in `process`.
        self.classes[job.class].release(1);
        self.release(1);
        if !cancelled {
            job.slot.fail(BatchError::Expired);
        }
        None
    }

    /// Gives back `n` places of admission. During shutdown, wakes the sleeping workers: each
    /// waits for `in_flight` to reach zero before it exits.
    pub(super) fn release(&self, n: u64) {
        self.in_flight.sub(n);
        // SeqCst fence: pairs with the one in `begin_shutdown`'s `wake_all` and with the one in
        // `sleep`. Either this load sees the shutdown flag (and we wake the sleepers), or
        // shutdown's fence comes after ours, and a worker it wakes, or that parks after it,
        // sees our release.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        if self.shutting_down.load(Ordering::Relaxed) {
            self.wake_all();
        }
    }

    /// Stops admission and wakes every sleeping worker.
    pub(super) fn begin_shutdown(&self) {
        // SeqCst: totally ordered with the fences in `submit_inner`, `release` and `may_exit`.
        self.shutting_down.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Whether shutdown began and every accepted request has been answered.
    pub(super) fn may_exit(&self) -> bool {
        // SeqCst: see `begin_shutdown`.
        if !self.shutting_down.load(Ordering::SeqCst) {
            return false;
        }
        // SeqCst fence: pairs with the one in `submit_inner` (see there).
        fence(Ordering::SeqCst);
        self.in_flight.get() == 0
    }

    /// Wakes one sleeping worker, if any, after the caller pushed a job.
    pub(super) fn wake_one(&self) {
        // SeqCst fence: pairs with the one in `sleep` (see the module docs).
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        if let Some(s) = self
            .sleepers
            .iter()
            .find(|s| s.state.load(Ordering::Relaxed) != AWAKE)
        {
            s.parker.unpark();
        }
    }

    /// Wakes every sleeping worker, after the caller began shutdown or released admission
    /// during it.
    fn wake_all(&self) {
        // SeqCst fence: pairs with the one in `sleep` (see the module docs).
        fence(Ordering::SeqCst);
        for s in self.sleepers.iter() {
            // Relaxed: ordered by the fence above.
            if s.state.load(Ordering::Relaxed) != AWAKE {
                s.parker.unpark();
            }
        }
    }

    /// Parks worker `me` until a producer or shutdown wakes it, or `timeout` passes; `filling`
    /// says whether a batch is waiting for more requests. It first spins a little (crossbeam's
    /// `Backoff`), so that a request arriving right after a batch is picked up without a park
    /// and an unpark; under loom it parks at once, to keep models small.
    pub(super) fn sleep(&self, me: usize, timeout: Option<Duration>, filling: bool) {
        let pool = self.sleepers.len() > 1;
        if pool && !filling {
            // Relaxed: ordered by the fence below.
            self.idle.fetch_add(1, Ordering::Relaxed);
            // SeqCst fence: pairs with the one in `sleep_inner`. Either a worker waiting for
            // companions sees us idle and closes its batch, or we see it sleeping and wake it to
            // do so.
            fence(Ordering::SeqCst);
            for s in self.sleepers.iter() {
                // Relaxed: ordered by the fence above.
                if s.state.load(Ordering::Relaxed) == FILLING {
                    s.parker.unpark();
                }
            }
        }
        self.sleep_inner(me, timeout, filling);
        if pool && !filling {
            // Relaxed: a hint for filling workers, read after their fence; a stale count costs
            // at most one batch closed early or one wait of `max_wait`.
            self.idle.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn sleep_inner(&self, me: usize, timeout: Option<Duration>, filling: bool) {
        if !UNDER_MODEL_CHECKER {
            let backoff = Backoff::new();
            while !backoff.is_completed() {
                if self.any_waiting() {
                    return;
                }
                backoff.snooze();
            }
        }
        let sleeper = &self.sleepers[me];
        let state = if filling { FILLING } else { IDLE };
        // Relaxed: ordered by the fence below.
        sleeper.state.store(state, Ordering::Relaxed);
        // SeqCst fence: pairs with the ones in `wake_one`, `wake_all`, `release` and `sleep`
        // (see the module docs).
        fence(Ordering::SeqCst);
        // While a batch fills, shutdown ends the wait: the batch must close at once rather than
        // sleep out `max_wait`; so does another worker going idle. Between batches, shutdown
        // ends it only once every accepted request is answered (a worker or a refused submitter
        // releasing its place during shutdown wakes us after).
        // Relaxed: ordered by the fence above, which pairs with the one in `wake_all` after
        // `begin_shutdown`'s store, and with the one in `sleep` after an `idle` increment.
        let stop = if filling {
            self.shutting_down.load(Ordering::Relaxed)
                || (self.sleepers.len() > 1 && self.idle.load(Ordering::Relaxed) > 0)
        } else {
            self.may_exit()
        };
        if !self.any_waiting() && !stop {
            match timeout {
                Some(t) => sleeper.parker.park_timeout(t),
                None => sleeper.parker.park(),
            }
        }
        // Relaxed: a stale state only costs a waker one needless unpark (the woken worker
        // pops the queue before it parks again; see the module docs).
        sleeper.state.store(AWAKE, Ordering::Relaxed);
    }
}
