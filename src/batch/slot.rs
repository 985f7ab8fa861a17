//! The reply slot between the batcher's worker (one writer) and a request's [`Pending`] (one
//! waiter), in either order, with the waiter free to give up (drop) at any time.
//!
//! A mutex-guarded state and a condition variable: the slot is touched twice per request by at
//! most two threads, so a lock costs nothing measurable here and keeps the three ways of waiting
//! (blocking, blocking with a timeout, and `Future::poll`) simple and obviously right.

use super::BatchError;
use crate::sync::{Arc, AtomicBool, Backoff, Condvar, Mutex, Ordering, UNDER_MODEL_CHECKER};
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

/// What the slot holds.
struct State<Resp> {
    /// The reply, until the waiter takes it.
    reply: Option<Result<Resp, BatchError>>,
    /// The task to wake when the reply arrives, for `Future` waiters.
    waker: Option<Waker>,
    /// A thread sleeps (or is about to) on `ready`: set under the lock just before a wait on
    /// the condition variable, which releases the lock and sleeps at once. `send` notifies only
    /// then: a notification is a system call (a futex wake), made for nothing when the waiter
    /// has not gone to sleep, as it usually has not (it spins first). No wake-up can be lost:
    /// the flag and the reply are both read and written under the lock.
    sleeping: bool,
}

/// What a worker needs of a request's reply slot, whatever the reply's shape (one value, or a
/// stream of chunks and a final value): whether its waiter gave up, and a way to fail it.
pub(super) trait Reply {
    /// Whether the waiter gave up (a hint: see [`Slot::is_cancelled`]).
    fn is_cancelled(&self) -> bool;
    /// Answers the request with `err` (dropped if the waiter gave up).
    fn fail(&self, err: BatchError);
}

impl<Resp> Reply for Slot<Resp> {
    fn is_cancelled(&self) -> bool {
        Slot::is_cancelled(self)
    }

    fn fail(&self, err: BatchError) {
        self.send(Err(err));
    }
}

/// One request's reply slot.
pub(super) struct Slot<Resp> {
    state: Mutex<State<Resp>>,
    ready: Condvar,
    /// Set once the reply is in `state`: lets a waiter spin briefly before it sleeps.
    sent: AtomicBool,
    /// The `Pending` was dropped: nobody waits, the request need not be computed. Written under
    /// the lock (by the `Pending`'s drop) and read under it by `send`, which the lock orders;
    /// also read without it, as a hint, by `is_cancelled`.
    cancelled: AtomicBool,
}

impl<Resp> Slot<Resp> {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                reply: None,
                waker: None,
                sleeping: false,
            }),
            ready: Condvar::new(),
            sent: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> crate::sync::MutexGuard<'_, State<Resp>> {
        // A panic never happens while the lock is held (no user code runs under it), but if one
        // did, the state is still consistent: every write to it is a single assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the waiter gave up. Read without the lock: a hint that spares the worker a
    /// cancelled request's work. A cancellation it misses costs that work only, since `send`
    /// checks `cancelled` again under the lock and drops the reply.
    pub(super) fn is_cancelled(&self) -> bool {
        // Relaxed: a hint (above). A drop that happens before the worker's check through other
        // synchronisation (a test's gate, say) is seen, as happens-before implies.
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Delivers the reply (once) and wakes the waiter. A reply to a cancelled request is dropped.
    pub(super) fn send(&self, reply: Result<Resp, BatchError>) {
        let (waker, sleeping) = {
            let mut state = self.lock();
            // Relaxed: written under the lock we hold, which orders it.
            if self.cancelled.load(Ordering::Relaxed) {
                return;
            }
            debug_assert!(state.reply.is_none(), "a request is answered once");
            state.reply = Some(reply);
            // Release: a hint for `Pending::wait`'s spin; the reply itself is read under the
            // mutex, which orders it.
            self.sent.store(true, Ordering::Release);
            (state.waker.take(), state.sleeping)
        };
        if sleeping {
            self.ready.notify_one();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The reply to a submitted request, to wait for: [`wait`](Pending::wait),
/// [`wait_timeout`](Pending::wait_timeout), or `.await` (it is a [`Future`], usable from any async
/// runtime or none). Dropping it cancels the request: if it has not been computed yet, it never
/// will be.
///
/// # Examples
///
/// ```
/// use latchless::batch::{BatchConfig, Batcher};
///
/// let batcher = Batcher::spawn(BatchConfig::default(), |xs: Vec<u32>| {
///     xs.into_iter().map(|x| x + 1).collect()
/// })
/// .unwrap();
/// let pending = batcher.submit(41).unwrap();
/// assert_eq!(pending.wait(), Ok(42));
/// ```
#[must_use = "dropping a Pending cancels its request"]
pub struct Pending<Resp> {
    slot: Arc<Slot<Resp>>,
    /// The reply was taken: dropping cancels nothing, and need not lock the slot.
    answered: bool,
}

impl<Resp> Pending<Resp> {
    pub(super) fn new(slot: Arc<Slot<Resp>>) -> Self {
        Self {
            slot,
            answered: false,
        }
    }

    /// Blocks until the reply arrives.
    ///
    /// # Errors
    ///
    /// The [`BatchError`] the request was answered with: expired, handler panicked, or handler
    /// returned the wrong number of results.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher};
    ///
    /// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<&str>| {
    ///     xs.into_iter().map(str::len).collect()
    /// })
    /// .unwrap();
    /// assert_eq!(b.submit("four").unwrap().wait(), Ok(4));
    /// ```
    pub fn wait(mut self) -> Result<Resp, BatchError> {
        // A reply usually comes within microseconds: spin a little before sleeping (not under
        // loom, to keep models small).
        if !UNDER_MODEL_CHECKER {
            let backoff = Backoff::new();
            // Acquire: pairs with the Release store in `send` (a hint only, see there).
            while !self.slot.sent.load(Ordering::Acquire) && !backoff.is_completed() {
                backoff.snooze();
            }
        }
        let reply = {
            let mut state = self.slot.lock();
            loop {
                if let Some(reply) = state.reply.take() {
                    break reply;
                }
                state.sleeping = true;
                state = self
                    .slot
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        self.answered = true;
        reply
    }

    /// Blocks until the reply arrives or `timeout` passes. On timeout the `Pending` is handed
    /// back, so the request is neither lost nor cancelled: wait again, or drop it to cancel.
    ///
    /// # Errors
    ///
    /// `Ok(Err(..))` when the request was answered with a [`BatchError`]; `Err(self)` on timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher};
    /// use std::time::Duration;
    ///
    /// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<u8>| xs).unwrap();
    /// let reply = b.submit(7).unwrap().wait_timeout(Duration::from_secs(10));
    /// assert_eq!(reply.ok(), Some(Ok(7)));
    /// ```
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Result<Resp, BatchError>, Self> {
        let deadline = Instant::now().checked_add(timeout);
        let got = {
            let mut state = self.slot.lock();
            loop {
                if let Some(reply) = state.reply.take() {
                    break Some(reply);
                }
                let left = match deadline {
                    Some(d) => match d.checked_duration_since(Instant::now()) {
                        Some(left) if !left.is_zero() => left,
                        _ => break None,
                    },
                    // Too far to represent: as good as forever.
                    None => Duration::from_secs(u32::MAX.into()),
                };
                state.sleeping = true;
                state = self
                    .slot
                    .ready
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        match got {
            Some(reply) => {
                self.answered = true;
                Ok(reply)
            }
            None => Err(self),
        }
    }

    /// Whether the reply has arrived (so [`wait`](Self::wait) would not block).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher};
    ///
    /// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<u8>| xs).unwrap();
    /// let p = b.submit(1).unwrap();
    /// b.shutdown(); // returns once every accepted request is answered
    /// assert!(p.is_ready());
    /// ```
    pub fn is_ready(&self) -> bool {
        self.slot.lock().reply.is_some()
    }
}

impl<Resp> Future for Pending<Resp> {
    type Output = Result<Resp, BatchError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Pending` is `Unpin` (an `Arc` and a flag).
        let this = self.get_mut();
        let reply = {
            let mut state = this.slot.lock();
            let reply = state.reply.take();
            if reply.is_none()
                && !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
            reply
        };
        match reply {
            Some(reply) => {
                this.answered = true;
                Poll::Ready(reply)
            }
            None => Poll::Pending,
        }
    }
}

impl<Resp> Drop for Pending<Resp> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let state = self.slot.lock();
        if state.reply.is_none() {
            // Relaxed: under the lock, which orders it for `send`; `is_cancelled` reads it as a
            // hint.
            self.slot.cancelled.store(true, Ordering::Relaxed);
        }
    }
}

impl<Resp> fmt::Debug for Pending<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("ready", &self.is_ready())
            .finish()
    }
}
