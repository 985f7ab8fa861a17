//! The reply slots between the batcher's worker (one writer) and a request's reader (one
//! waiter), in either order, with the reader free to give up (drop) at any time: [`Mailbox`],
//! what both slot kinds share, and [`Slot`], the whole-request one (the stream slot is in
//! `stream.rs`).
//!
//! A mutex-guarded state and a condition variable: the slot is touched a few times per request by
//! at most two threads, so a lock costs nothing measurable here and keeps the three ways of
//! waiting (blocking, blocking with a timeout, and `Future::poll` or `Stream::poll_next`) simple
//! and obviously right. No user code runs under the lock: a value refused because its reader left
//! is dropped after the lock is released, and a panic in its `Drop` is caught, so that it never
//! unwinds the worker.

use super::BatchError;
use crate::sync::{
    Arc, AtomicBool, Backoff, Condvar, Mutex, MutexGuard, Ordering, UNDER_MODEL_CHECKER,
};
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

/// Drops a user value, keeping a panic in its `Drop` from unwinding through the worker.
pub(super) fn drop_quietly<T>(value: T) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
}

/// How a slot's one reader waits: the task to wake (`Future` and `Stream` readers), and whether a
/// thread sleeps on the condition variable (blocking readers).
struct Waiter {
    /// The task to wake when the next value arrives.
    waker: Option<Waker>,
    /// A thread sleeps (or is about to) on `ready`: set under the lock just before a wait on
    /// the condition variable, which releases the lock and sleeps at once. `send` notifies only
    /// then: a notification is a system call (a futex wake), made for nothing when the reader
    /// has not gone to sleep, as it usually has not (it spins first). No wake-up can be lost:
    /// the flag and the value are both read and written under the lock.
    sleeping: bool,
}

/// The locked part of a [`Mailbox`]: the slot's own state, and how its reader waits.
pub(super) struct Locked<T> {
    /// What the slot holds (a reply, or a stream's chunks and final item).
    pub(super) data: T,
    waiter: Waiter,
}

/// What both reply slots share: their state under a mutex, the condition variable a blocking
/// reader sleeps on, the reader's waker, and the cancellation flag; the send path (deliver, or
/// drop quietly if the reader left, then wake) and the three ways of waiting.
pub(super) struct Mailbox<T> {
    state: Mutex<Locked<T>>,
    ready: Condvar,
    /// The reader gave up (dropped its end) before the value it waits for: nobody reads, the
    /// request need not be computed. Written under the lock (by [`cancel`](Self::cancel)) and
    /// read under it by [`send`](Self::send), which the lock orders; also read without it, as a
    /// hint, by [`is_cancelled`](Self::is_cancelled).
    cancelled: AtomicBool,
}

impl<T> Mailbox<T> {
    pub(super) fn new(data: T) -> Self {
        Self {
            state: Mutex::new(Locked {
                data,
                waiter: Waiter {
                    waker: None,
                    sleeping: false,
                },
            }),
            ready: Condvar::new(),
            cancelled: AtomicBool::new(false),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Locked<T>> {
        // No user code runs under the lock (values refused are dropped after it), and every
        // write to the state is a single step, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the reader gave up. Read without the lock: a hint that spares the worker a
    /// cancelled request's work. A cancellation it misses costs that work only, since `send`
    /// checks `cancelled` again under the lock and drops the value.
    pub(super) fn is_cancelled(&self) -> bool {
        // Relaxed: a hint (above). A drop that happens before the worker's check through other
        // synchronisation (a test's gate, say) is seen, as happens-before implies.
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Marks the slot cancelled; the caller holds the lock (`_locked`), which orders the flag
    /// for `send`.
    pub(super) fn cancel(&self, _locked: &mut Locked<T>) {
        // Relaxed: under the lock, which orders it for `send`; `is_cancelled` reads it as a
        // hint.
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// The send path of both slots: puts `value` into the state with `put`, under the lock, and
    /// wakes the reader after the lock is released. If the reader gave up, or `put` hands the
    /// value back (the reader does not want it: a stream that skips its chunks), drops `value`
    /// instead and wakes nobody, after the lock is released and catching a panic in its `Drop`
    /// (a user type's: it must not unwind the worker).
    pub(super) fn send<V>(&self, value: V, put: impl FnOnce(&mut T, V) -> Result<(), V>) {
        let (waker, sleeping) = {
            let mut state = self.lock();
            // Relaxed: written under the lock we hold, which orders it.
            let refused = if self.cancelled.load(Ordering::Relaxed) {
                Err(value)
            } else {
                put(&mut state.data, value)
            };
            if let Err(value) = refused {
                drop(state);
                drop_quietly(value);
                return;
            }
            (state.waiter.waker.take(), state.waiter.sleeping)
        };
        if sleeping {
            self.ready.notify_one();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Blocks on the condition variable until `send` wakes the reader (or spuriously); called
    /// with the lock held, returns with it held again.
    pub(super) fn sleep<'a>(
        &self,
        mut state: MutexGuard<'a, Locked<T>>,
    ) -> MutexGuard<'a, Locked<T>> {
        state.waiter.sleeping = true;
        let mut state = self
            .ready
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner);
        state.waiter.sleeping = false;
        state
    }

    /// [`sleep`](Self::sleep) for at most `timeout`.
    pub(super) fn sleep_timeout<'a>(
        &self,
        mut state: MutexGuard<'a, Locked<T>>,
        timeout: Duration,
    ) -> MutexGuard<'a, Locked<T>> {
        state.waiter.sleeping = true;
        let mut state = self
            .ready
            .wait_timeout(state, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        state.waiter.sleeping = false;
        state
    }

    /// Takes a value with `take` under the lock, for `Future::poll` and `Stream::poll_next`;
    /// if there is none yet, registers the task's waker (unless the one registered would wake
    /// the same task) so that `send` wakes it.
    pub(super) fn poll_take<V>(
        &self,
        cx: &Context<'_>,
        take: impl FnOnce(&mut T) -> Option<V>,
    ) -> Option<V> {
        let mut state = self.lock();
        let value = take(&mut state.data);
        let waiter = &mut state.waiter;
        if value.is_none()
            && !waiter
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            waiter.waker = Some(cx.waker().clone());
        }
        value
    }

    /// Forgets the registered waker (the reader is gone); returns it, to be dropped after the
    /// lock is released.
    pub(super) fn take_waker(state: &mut Locked<T>) -> Option<Waker> {
        state.waiter.waker.take()
    }
}

/// What a worker needs of a request's reply slot, whatever the reply's shape (one value, or a
/// stream of chunks and a final value): whether its waiter gave up, and a way to fail it.
pub(super) trait Reply {
    /// Whether the waiter gave up (a hint: see [`Mailbox::is_cancelled`]).
    fn is_cancelled(&self) -> bool;
    /// Answers the request with `err` (dropped if the waiter gave up).
    fn fail(&self, err: BatchError);
}

impl<Resp> Reply for Slot<Resp> {
    fn is_cancelled(&self) -> bool {
        self.mailbox.is_cancelled()
    }

    fn fail(&self, err: BatchError) {
        self.send(Err(err));
    }
}

/// One request's reply slot.
pub(super) struct Slot<Resp> {
    /// The reply, until the waiter takes it.
    mailbox: Mailbox<Option<Result<Resp, BatchError>>>,
    /// Set once the reply is in the mailbox: lets a waiter spin briefly before it sleeps.
    sent: AtomicBool,
}

impl<Resp> Slot<Resp> {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            mailbox: Mailbox::new(None),
            sent: AtomicBool::new(false),
        })
    }

    /// Delivers the reply (once) and wakes the waiter. A reply to a cancelled request is
    /// dropped (a panic in its `Drop` caught).
    pub(super) fn send(&self, reply: Result<Resp, BatchError>) {
        self.mailbox.send(reply, |slot, reply| {
            debug_assert!(slot.is_none(), "a request is answered once");
            *slot = Some(reply);
            // Release: a hint for `Pending::wait`'s spin; the reply itself is read under the
            // mutex, which orders it.
            self.sent.store(true, Ordering::Release);
            Ok(())
        });
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
        let mailbox = &self.slot.mailbox;
        let reply = {
            let mut state = mailbox.lock();
            loop {
                if let Some(reply) = state.data.take() {
                    break reply;
                }
                state = mailbox.sleep(state);
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
        let mailbox = &self.slot.mailbox;
        let got = {
            let mut state = mailbox.lock();
            loop {
                if let Some(reply) = state.data.take() {
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
                state = mailbox.sleep_timeout(state, left);
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
        self.slot.mailbox.lock().data.is_some()
    }
}

impl<Resp> Future for Pending<Resp> {
    type Output = Result<Resp, BatchError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Pending` is `Unpin` (an `Arc` and a flag).
        let this = self.get_mut();
        match this.slot.mailbox.poll_take(cx, Option::take) {
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
        let mailbox = &self.slot.mailbox;
        let unread = {
            let mut state = mailbox.lock();
            if state.data.is_none() {
                mailbox.cancel(&mut state);
            }
            // A reply that came and was never read is dropped here, on the reader's thread,
            // not by whichever of the worker and us lets go of the slot last; so is the waker.
            (state.data.take(), Mailbox::take_waker(&mut state))
        };
        drop(unread);
    }
}

impl<Resp> fmt::Debug for Pending<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("ready", &self.is_ready())
            .finish()
    }
}
