//! The one place that chooses between std and loom.
//!
//! Every other module imports its atomics, cells, threads and epoch types from here, so no other
//! file knows loom exists. Under `--cfg loom --cfg crossbeam_loom` the crate runs on loom's
//! atomics, `UnsafeCell`, `Track` and thread identities, and crossbeam-epoch (built with its `loom`
//! feature) runs on loom's atomics as well: a downstream crate's loom models then explore
//! latchless's protocols too.
//!
//! What differs between the two worlds is hidden here:
//! - loom's atomics have no `const fn new`: [`const_fn_outside_loom!`] makes a constructor `const`
//!   only outside loom;
//! - loom's `UnsafeCell` only hands out raw pointers through closures (`with`, `with_mut`), so
//!   loom can check causality of every access: outside loom, a zero-cost wrapper of
//!   `core::cell::UnsafeCell` offers the same closure API;
//! - loom's `alloc::Track` reports values still alive when a model ends: outside loom, a
//!   zero-cost wrapper with the same API;
//! - a thread's stripe index for [`ShardedCounter`](crate::counter::ShardedCounter): loom runs
//!   every model thread on one OS thread, so std's thread-locals cannot tell them apart.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{
    fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

#[cfg(loom)]
pub(crate) use loom::{
    alloc::Track,
    cell::UnsafeCell,
    sync::{Arc, Condvar, Mutex, MutexGuard},
};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Whether the crate runs under loom, for the few tuning constants that must be tiny there so
/// that a model of a handful of operations still reaches the code paths they gate.
pub(crate) const UNDER_LOOM: bool = cfg!(loom);

pub(crate) use crossbeam_epoch as epoch;
pub(crate) use crossbeam_utils::{Backoff, CachePadded};

/// Makes a `const fn` outside loom and a plain `fn` under loom, whose atomics have no `const`
/// constructor.
macro_rules! const_fn_outside_loom {
    ($(#[$attr:meta])* $vis:vis const fn $($rest:tt)*) => {
        #[cfg(not(loom))]
        $(#[$attr])*
        $vis const fn $($rest)*

        #[cfg(loom)]
        $(#[$attr])*
        $vis fn $($rest)*
    };
}
pub(crate) use const_fn_outside_loom;

/// `core::cell::UnsafeCell` with loom's closure API, so payload accesses read the same in both
/// worlds.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    #[inline]
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a raw pointer for reading. Whether reading through it is sound is the
    /// caller's proof, as with `core::cell::UnsafeCell::get`.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a raw pointer for writing. Whether writing through it is sound is the
    /// caller's proof, as with `core::cell::UnsafeCell::get`.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// loom's leak tracker; outside loom it is the bare value.
#[cfg(not(loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub(crate) struct Track<T>(T);

#[cfg(not(loom))]
impl<T> Track<T> {
    #[inline]
    pub(crate) const fn new(value: T) -> Self {
        Self(value)
    }
}

/// A small per-thread number, stable for the thread's life: threads started one after another
/// get consecutive numbers, so up to `n` threads spread over `n` stripes without collisions.
#[cfg(not(loom))]
#[inline]
pub(crate) fn thread_index() -> usize {
    use core::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
    static NEXT: StdAtomicUsize = StdAtomicUsize::new(0);
    std::thread_local! {
        // Relaxed: the number is only a placement hint; no memory is published through it.
        static INDEX: usize = NEXT.fetch_add(1, StdOrdering::Relaxed);
    }
    INDEX.try_with(|i| *i).unwrap_or(0)
}

/// Under loom every model thread shares one OS thread, so the index comes from loom's own thread
/// number (0 for the model's main thread, then 1, 2, ... in spawn order), which is the same in
/// every explored execution. loom only shows it through `Debug` (`ThreadId(N)`); its `Hash` mixes
/// in the execution, which would make the stripe differ from one execution to the next.
#[cfg(loom)]
pub(crate) fn thread_index() -> usize {
    let id = format!("{:?}", loom::thread::current().id());
    id.chars()
        .filter(char::is_ascii_digit)
        .fold(0usize, |n, d| n * 10 + (d as usize - '0' as usize))
}

/// Threads: std's, or loom's model threads.
pub(crate) mod thread {
    #[cfg(loom)]
    pub(crate) use loom::thread::{current, Builder, JoinHandle, Thread};
    #[cfg(not(loom))]
    pub(crate) use std::thread::{current, Builder, JoinHandle, Thread};
}

/// One thread's park/unpark token: `park` (by the owning thread only) returns once `unpark` has
/// been called since the last return, or spuriously.
///
/// Outside loom it is std's thread park/unpark on the thread that registered itself. Under loom
/// it is a mutex-guarded token and a condition variable: loom's own `unpark` also wakes a thread
/// blocked on a mutex, which std's never does, and would fail a model over a protocol that is
/// sound under std. loom has no clock: `park_timeout` waits for an unpark there.
#[derive(Debug, Default)]
pub(crate) struct Parker {
    #[cfg(not(loom))]
    thread: std::sync::OnceLock<std::thread::Thread>,
    #[cfg(loom)]
    token: Mutex<bool>,
    #[cfg(loom)]
    woken: Condvar,
}

impl Parker {
    /// Makes the calling thread the one that parks. Call it before the first `park`.
    #[cfg(not(loom))]
    pub(crate) fn register_current(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    #[cfg(not(loom))]
    pub(crate) fn park(&self) {
        std::thread::park();
    }

    #[cfg(not(loom))]
    pub(crate) fn park_timeout(&self, timeout: std::time::Duration) {
        std::thread::park_timeout(timeout);
    }

    /// Wakes the registered thread (a no-op before it registered: it has not parked yet).
    #[cfg(not(loom))]
    pub(crate) fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    #[cfg(loom)]
    pub(crate) fn register_current(&self) {}

    #[cfg(loom)]
    pub(crate) fn park(&self) {
        let mut token = self.token.lock().unwrap();
        while !*token {
            token = self.woken.wait(token).unwrap();
        }
        *token = false;
    }

    /// Under loom the clock stands still, so a timeout never fires: a timed park waits for an
    /// unpark like `park`. A model whose progress needs a timeout would deadlock; one whose
    /// progress must come from an unpark (shutdown waking a worker that waits out `max_wait`)
    /// shows a lost wake-up as a deadlock.
    #[cfg(loom)]
    pub(crate) fn park_timeout(&self, _: std::time::Duration) {
        self.park();
    }

    #[cfg(loom)]
    pub(crate) fn unpark(&self) {
        *self.token.lock().unwrap() = true;
        self.woken.notify_one();
    }
}

/// The time now. Under loom, a constant (one instant for the whole process): models are
/// deterministic, and a deadline is passed only if it is already due (a zero wait).
#[cfg(not(loom))]
#[inline]
pub(crate) fn now() -> std::time::Instant {
    std::time::Instant::now()
}

#[cfg(loom)]
pub(crate) fn now() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}
