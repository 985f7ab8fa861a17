//! The one place that chooses between std, loom and shuttle.
//!
//! Every other module imports its atomics, cells, threads and epoch types from here, so no other
//! file knows loom or shuttle exists. Under `--cfg loom --cfg crossbeam_loom` the crate runs on
//! loom's atomics, `UnsafeCell`, `Track` and thread identities, and crossbeam-epoch (built with its
//! `loom` feature) runs on loom's atomics as well: a downstream crate's loom models then explore
//! latchless's protocols too.
//!
//! Under `--cfg shuttle` the crate's own atomics, `Arc`, `Mutex`, `Condvar` and threads are
//! shuttle's, so a downstream crate's shuttle tests (shuttle-tests/) run randomised schedules of
//! more threads and longer operation sequences than loom can afford. `UnsafeCell` and `Track` stay
//! the std wrappers, and crossbeam-epoch stays on std's atomics, with a default collector per OS
//! thread: see "crossbeam-epoch under shuttle" below for why, why that is sound, and what shuttle
//! therefore cannot see. shuttle models every atomic as
//! `SeqCst`: weak-memory bugs are loom's to find.
//!
//! What differs between the worlds is hidden here:
//! - loom's atomics have no `const fn new`: [`const_fn_outside_loom!`] makes a constructor `const`
//!   only outside loom;
//! - loom's `UnsafeCell` only hands out raw pointers through closures (`with`, `with_mut`), so
//!   loom can check causality of every access: outside loom, a zero-cost wrapper of
//!   `core::cell::UnsafeCell` offers the same closure API;
//! - loom's `alloc::Track` reports values still alive when a model ends: outside loom, a
//!   zero-cost wrapper with the same API;
//! - a thread's stripe index for [`ShardedCounter`](crate::counter::ShardedCounter): loom and
//!   shuttle run every model thread on one OS thread, so std's thread-locals cannot tell them
//!   apart.
//!
//! The file holds what every world shares first (the tuning constants, the loom census), then one
//! block per world (`std_world`, `loom_world`, `shuttle_world`, one of which is re-exported), then
//! the two pieces that two worlds share: std's cells with loom's API (std and shuttle) and the
//! parking token and clock of the model checkers (loom and shuttle).
//!
//! # crossbeam-epoch under shuttle
//!
//! shuttle has no epoch mode, so crossbeam-epoch keeps std's atomics. Two things change, both
//! here:
//!
//! - **The default collector is one per OS thread, not the process-wide global one.** Deferred
//!   functions may touch this shim's atomics (the queue's reuse marker does), and shuttle's atomics
//!   belong to the OS thread that runs their test: with the global collector, a test running on
//!   another OS thread (the test harness runs tests in parallel) would run them in its own
//!   collection, a data race on shuttle's unsynchronised state (seen as a "RefCell already
//!   borrowed" panic). The per-thread collector is leaked (one per test thread), so its garbage
//!   runs only when a later pin on the same OS thread collects, inside a shuttle execution. A
//!   deferred function may so touch an atomic of an earlier execution of the same test thread:
//!   harmless (the atomic stays allocated through its `Arc`), but it can add a schedule point, so
//!   a `shuttle::replay` of a failing schedule of a structure on the default collector may
//!   diverge. Structures built on a caller's collector (`with_collector`, `.collector()`) are
//!   unaffected and replay exactly; a guard from `crossbeam_epoch::pin()` does not pin the
//!   default collector under shuttle, so `*_with_guard` refuses it there.
//! - **Every pin registers its own participant** (`default_collector().register().pin()`), as
//!   with a caller's collector, instead of going through a thread-local handle: all shuttle
//!   threads run on one OS thread, and a shared handle would merge their pins. (That would still
//!   be sound, as one OS thread holding nested guards is, but each shuttle thread having its own
//!   participant is what a real thread has.)
//!
//! Sound under shuttle's scheduling: a shuttle thread switch happens only at a shuttle operation,
//! so inside epoch's code only in a deferred function that touches one of this shim's types; the
//! other shuttle threads then run epoch operations on their own participants, which is what
//! crossbeam-epoch allows any other thread to do at any time, and the collecting thread's guard
//! keeps its participant pinned meanwhile.
//!
//! What follows for the tests: shuttle does not see crossbeam-epoch's own atomics (pins, retires
//! and collections). It schedules only at this shim's types (atomics, `Mutex`, `Condvar`, thread
//! spawn, join and park), which include the queue's positions, slots and links and the cache's
//! bucket words, so those protocols are explored by both checkers; when memory may be freed is
//! loom's to check.

#[cfg(all(loom, shuttle))]
compile_error!("`--cfg loom` and `--cfg shuttle` exclude each other: run one checker at a time");

/// Whether the crate runs under a model checker, loom or shuttle, for the few tuning constants
/// that must be tiny there so that a model of a handful of operations still reaches the code paths
/// they gate (one flight shard, one stats cell), and for the spins before a park or before a pop
/// gives up on a slot, which neither checker can use: neither has a clock, and a spin only adds
/// schedule points that lead to the same states as giving up at once. Under shuttle this keeps the
/// paths the loom models check and lets longer sequences reach them more often; the spin paths are
/// left to the std stress tests.
pub(crate) const UNDER_MODEL_CHECKER: bool = cfg!(any(loom, shuttle));

/// Whether an all-zero bit pattern is a valid value of this world's atomics, so that a structure
/// of them can be allocated zeroed on the heap instead of built on the stack and moved: true for
/// std's, false for loom's and shuttle's, which register themselves with their checker when
/// constructed.
pub(crate) const ZEROED_ATOMICS_VALID: bool = !cfg!(any(loom, shuttle));

/// Counters per key in the cache's frequency sketch (`cache::sketch`). Four elsewhere, as in
/// TinyLFU; under loom one: every counter is incremented and halved by the same
/// read-modify-write protocol on its own word, which the sketch's own models check, and four of
/// them in every insert of a cache model multiplied the states of its eviction models by 17
/// (`two_inserters_evicting`: 2.2 million executions and 465 s against 85,000 and 19 s with one).
pub(crate) const SKETCH_DEPTH: usize = if cfg!(loom) { 1 } else { 4 };

/// Slots per block of [`MsQueue`](crate::queue::MsQueue). Under loom two, so that a model of three
/// or four pushes crosses a block boundary (link, swing, help, free); under shuttle four, so that
/// its longer runs cross many; under Miri 31, so that its scaled-down tests still cross a block
/// every few dozen values. Elsewhere 127: a position then has 128 offsets per lap (a power of two),
/// a block of 8-byte values is 2 KiB, and the move to the next block, which every claimant waits
/// for, comes once per 127 values. Measured against 31 and 63 slots (BENCHMARKS.md, "What the queue
/// figures mean"): the move's cost per value is what separated the queue from `SegQueue` under
/// contention.
pub(crate) const QUEUE_BLOCK_CAP: usize = if cfg!(loom) {
    2
} else if cfg!(shuttle) {
    4
} else if cfg!(miri) {
    31
} else {
    127
};

/// Counts of the queue's block allocations and frees, and a graveyard of freed blocks, kept only
/// under loom (per model execution, through loom's `lazy_static`), so that loom models can check
/// that every block is freed exactly once and that no helper touches a freed block: under loom a
/// freed block's memory is not given back until the execution ends, so its address stays unique,
/// and `assert_alive` after an access fails the model if the block was freed before it. Elsewhere
/// the notes compile to nothing and the counts read zero.
pub mod census {
    /// A buried block and the function that frees it.
    #[cfg(loom)]
    type Grave = (*mut u8, unsafe fn(*mut u8));

    #[cfg(loom)]
    struct Graveyard(std::sync::Mutex<Vec<Grave>>);

    // SAFETY: the pointers are only compared, and freed once by the graveyard's drop at the end
    // of the execution, on whichever thread drops it; the blocks they point to hold no value.
    #[cfg(loom)]
    unsafe impl Send for Graveyard {}
    // SAFETY: as above; the list is behind a mutex.
    #[cfg(loom)]
    unsafe impl Sync for Graveyard {}

    #[cfg(loom)]
    impl Drop for Graveyard {
        fn drop(&mut self) {
            let list = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
            for (p, free) in list.drain(..) {
                // SAFETY: each buried block is freed once, here, after its execution ended.
                unsafe { free(p) };
            }
        }
    }

    #[cfg(loom)]
    loom::lazy_static! {
        // std's atomics, not loom's: counting must add no schedule point to the model.
        static ref ALLOCATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        static ref FREED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        static ref GRAVEYARD: Graveyard = Graveyard(std::sync::Mutex::new(Vec::new()));
    }

    /// Notes one block allocated.
    #[inline]
    pub(crate) fn note_alloc() {
        // Relaxed (all four): a count, read after the model's threads are joined.
        #[cfg(loom)]
        ALLOCATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Notes one block freed. Under loom, keeps the block's memory until the execution ends
    /// (`free` runs then) and returns `true`: the caller must not free it. Elsewhere returns
    /// `false`.
    #[inline]
    pub(crate) fn bury(block: *mut u8, free: unsafe fn(*mut u8)) -> bool {
        #[cfg(loom)]
        {
            FREED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut list = GRAVEYARD.0.lock().unwrap_or_else(|e| e.into_inner());
            assert!(
                list.iter().all(|(p, _)| *p != block),
                "a queue block was freed twice"
            );
            list.push((block, free));
            true
        }
        #[cfg(not(loom))]
        {
            let _ = (block, free);
            false
        }
    }

    /// Under loom, panics if `block` was freed: call it after an access to the block made
    /// without a claim on one of its slots.
    #[inline]
    pub(crate) fn assert_alive(block: *const u8) {
        #[cfg(loom)]
        assert!(
            GRAVEYARD
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .all(|(p, _)| p.cast_const() != block),
            "a helper touched a freed queue block"
        );
        #[cfg(not(loom))]
        let _ = block;
    }

    /// How many queue blocks this loom execution has allocated (zero outside loom).
    #[must_use]
    pub fn blocks_allocated() -> usize {
        #[cfg(loom)]
        return ALLOCATED.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(loom))]
        0
    }

    /// How many queue blocks this loom execution has freed (zero outside loom).
    #[must_use]
    pub fn blocks_freed() -> usize {
        #[cfg(loom)]
        return FREED.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(loom))]
        0
    }
}

// The world this build runs in, under the names the rest of the crate uses.
#[cfg(loom)]
pub(crate) use loom_world::*;
#[cfg(shuttle)]
pub(crate) use shuttle_world::*;
#[cfg(not(any(loom, shuttle)))]
pub(crate) use std_world::*;

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

// ---------------------------------------------------------------------------------------------
// std: what a user's build runs on.
// ---------------------------------------------------------------------------------------------

#[cfg(not(any(loom, shuttle)))]
mod std_world {
    pub(crate) use super::plain_cells::{Track, UnsafeCell};
    pub(crate) use core::sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
    };
    pub(crate) use crossbeam_epoch as epoch;
    pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

    /// Threads: std's.
    pub(crate) mod thread {
        pub(crate) use std::thread::{current, Builder, JoinHandle, ThreadId};
    }

    /// A small per-thread number, stable for the thread's life: threads started one after
    /// another get consecutive numbers, so up to `n` threads spread over `n` stripes without
    /// collisions.
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

    /// The time now.
    #[inline]
    pub(crate) fn now() -> std::time::Instant {
        std::time::Instant::now()
    }

    /// One thread's park/unpark token: `park` (by the owning thread only) returns once `unpark`
    /// has been called since the last return, or spuriously. std's thread park/unpark on the
    /// thread that registered itself.
    #[derive(Debug, Default)]
    pub(crate) struct Parker {
        thread: std::sync::OnceLock<std::thread::Thread>,
    }

    impl Parker {
        /// Makes the calling thread the one that parks. Call it before the first `park`.
        pub(crate) fn register_current(&self) {
            let _ = self.thread.set(std::thread::current());
        }

        pub(crate) fn park(&self) {
            std::thread::park();
        }

        pub(crate) fn park_timeout(&self, timeout: std::time::Duration) {
            std::thread::park_timeout(timeout);
        }

        /// Wakes the registered thread (a no-op before it registered: it has not parked yet).
        pub(crate) fn unpark(&self) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// loom: `--cfg loom --cfg crossbeam_loom`, exhaustive interleavings of small models.
// ---------------------------------------------------------------------------------------------

#[cfg(loom)]
mod loom_world {
    pub(crate) use super::model_common::{now, Parker};
    pub(crate) use crossbeam_epoch as epoch;
    pub(crate) use loom::{
        alloc::Track,
        cell::UnsafeCell,
        sync::atomic::{
            fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
        },
        sync::{Arc, Condvar, Mutex, MutexGuard},
    };

    /// Threads: loom's model threads.
    pub(crate) mod thread {
        pub(crate) use loom::thread::{current, Builder, JoinHandle, ThreadId};
    }

    /// Every model thread shares one OS thread, so the index comes from loom's own thread number
    /// (0 for the model's main thread, then 1, 2, ... in spawn order), which is the same in every
    /// explored execution. loom only shows it through `Debug` (`ThreadId(N)`); its `Hash` mixes
    /// in the execution, which would make the stripe differ from one execution to the next.
    pub(crate) fn thread_index() -> usize {
        let id = format!("{:?}", loom::thread::current().id());
        id.chars()
            .filter(char::is_ascii_digit)
            .fold(0usize, |n, d| n * 10 + (d as usize - '0' as usize))
    }
}

// ---------------------------------------------------------------------------------------------
// shuttle: `--cfg shuttle`, randomised schedules of longer runs.
// ---------------------------------------------------------------------------------------------

#[cfg(shuttle)]
mod shuttle_world {
    pub(crate) use super::model_common::{now, Parker};
    pub(crate) use super::plain_cells::{Track, UnsafeCell};
    // shuttle's `Arc` is std's: its reference count is not a schedule point.
    pub(crate) use shuttle::sync::{
        atomic::{
            fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
        },
        Arc, Condvar, Mutex, MutexGuard,
    };

    /// Threads: shuttle's.
    pub(crate) mod thread {
        pub(crate) use shuttle::thread::{current, Builder, JoinHandle, ThreadId};
    }

    /// Every thread shares one OS thread; shuttle's thread id converts to its task number (0 for
    /// the test's main thread, then 1, 2, ... in spawn order), which is the same in every
    /// schedule.
    pub(crate) fn thread_index() -> usize {
        usize::from(shuttle::thread::current().id())
    }

    /// crossbeam-epoch with a per-OS-thread default collector and a participant per pin (see
    /// "crossbeam-epoch under shuttle" above). The two functions defined here shadow the glob's.
    pub(crate) mod epoch {
        pub(crate) use crossbeam_epoch::*;

        std::thread_local! {
            /// Leaked: its garbage may hold this thread's shuttle atomics, which must not be
            /// touched outside a shuttle execution (as dropping it at thread exit would).
            static COLLECTOR: &'static Collector = Box::leak(Box::new(Collector::new()));
        }

        /// This OS thread's collector.
        pub(crate) fn default_collector() -> &'static Collector {
            COLLECTOR.with(|c| *c)
        }

        /// Pins a participant of its own on [`default_collector`].
        pub(crate) fn pin() -> Guard {
            default_collector().register().pin()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared by two worlds.
// ---------------------------------------------------------------------------------------------

/// std's cells with loom's API, for std and shuttle (shuttle has no checked cell).
#[cfg(not(loom))]
mod plain_cells {
    /// `core::cell::UnsafeCell` with loom's closure API, so payload accesses read the same in
    /// every world.
    #[derive(Debug)]
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

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
    #[derive(Debug, Default)]
    #[repr(transparent)]
    pub(crate) struct Track<T>(T);

    impl<T> Track<T> {
        #[inline]
        pub(crate) const fn new(value: T) -> Self {
            Self(value)
        }
    }
}

/// The parking token and the clock of both model checkers, loom and shuttle.
#[cfg(any(loom, shuttle))]
mod model_common {
    use super::{Condvar, Mutex};

    /// One thread's park/unpark token: `park` (by the owning thread only) returns once `unpark`
    /// has been called since the last return, or spuriously.
    ///
    /// A mutex-guarded token and a condition variable (the shim's, so the checker schedules
    /// around them): loom's own `unpark` also wakes a thread blocked on a mutex, which std's
    /// never does, and would fail a model over a protocol that is sound under std; shuttle's
    /// park is std-like, but the same token keeps one `Parker` for both checkers. Neither has a
    /// clock: `park_timeout` waits for an unpark.
    #[derive(Debug, Default)]
    pub(crate) struct Parker {
        token: Mutex<bool>,
        woken: Condvar,
    }

    impl Parker {
        pub(crate) fn register_current(&self) {}

        pub(crate) fn park(&self) {
            let mut token = self.token.lock().unwrap();
            while !*token {
                token = self.woken.wait(token).unwrap();
            }
            *token = false;
        }

        /// The clock stands still, so a timeout never fires: a timed park waits for an unpark
        /// like `park`. A model whose progress needs a timeout would deadlock; one whose
        /// progress must come from an unpark (shutdown waking a worker that waits out
        /// `max_wait`) shows a lost wake-up as a deadlock.
        pub(crate) fn park_timeout(&self, _: std::time::Duration) {
            self.park();
        }

        pub(crate) fn unpark(&self) {
            *self.token.lock().unwrap() = true;
            self.woken.notify_one();
        }
    }

    /// A constant (one instant for the whole process): models are deterministic, and a deadline
    /// is passed only if it is already due (a zero wait).
    pub(crate) fn now() -> std::time::Instant {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(std::time::Instant::now)
    }
}
