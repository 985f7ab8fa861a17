//! Atomic counters: [`AtomicCounter`], one word with checked admission, and [`ShardedCounter`],
//! striped for statistics written by many threads.
//!
//! `AtomicCounter` is a `fetch_add` word plus compare-and-swap loops for the operations that must
//! not cross a bound (`try_add_within`, the saturating `sub`). `ShardedCounter` follows the
//! striping of Java's `LongAdder` (Doug Lea, JSR 166): each thread adds to its own cache-padded
//! cell and `sum` adds the cells up. Unlike `LongAdder`, the stripes are allocated once at
//! construction and a thread's stripe is fixed for its life (threads are numbered round-robin),
//! so `add` is one uncontended `fetch_add` and never allocates.

use crate::sync::{
    const_fn_outside_loom, thread_index, AtomicU64, Backoff, CachePadded, Ordering,
    UNDER_MODEL_CHECKER,
};
use core::fmt;

/// A 64-bit counter in one atomic word, with wait-free `add` and a compare-and-swap bounded add
/// for admission control.
///
/// | method | progress |
/// |---|---|
/// | [`get`](Self::get), [`add`](Self::add), [`increment`](Self::increment) | wait-free |
/// | [`sub`](Self::sub), [`decrement`](Self::decrement), [`try_sub`](Self::try_sub), [`try_add_within`](Self::try_add_within) | lock-free (CAS loop) |
///
/// Read-modify-writes use `AcqRel` and reads use `Acquire`, so a thread that sees a count also
/// sees what the threads that moved it there wrote before (on x86 this costs nothing over
/// `Relaxed`: every read-modify-write is a full barrier there).
///
/// # Overflow and underflow
///
/// [`add`](Self::add) wraps past `u64::MAX` like [`AtomicU64::fetch_add`](core::sync::atomic::AtomicU64::fetch_add).
/// Counting events cannot get there in practice: at one increment per nanosecond, reaching
/// 2<sup>64</sup> takes 584 years. For arbitrary amounts use
/// [`try_add_within`](Self::try_add_within)`(n, u64::MAX)`, which refuses instead of wrapping.
///
/// The value never goes below zero: [`sub`](Self::sub) and [`decrement`](Self::decrement)
/// saturate at zero and return the previous value, so the caller can tell (`prev < n`), and
/// [`try_sub`](Self::try_sub) refuses instead.
///
/// # Examples
///
/// ```
/// use latchless::counter::AtomicCounter;
///
/// // At most 2 requests in flight.
/// let in_flight = AtomicCounter::new(0);
/// assert_eq!(in_flight.try_add_within(1, 2), Ok(0));
/// assert_eq!(in_flight.try_add_within(1, 2), Ok(1));
/// assert_eq!(in_flight.try_add_within(1, 2), Err(2)); // full: refused, value unchanged
/// in_flight.decrement();
/// assert_eq!(in_flight.get(), 1);
/// ```
pub struct AtomicCounter {
    value: AtomicU64,
}

impl AtomicCounter {
    const_fn_outside_loom! {
        /// Creates a counter holding `value`. `const` (outside loom builds), so it can be a
        /// `static`.
        ///
        /// # Examples
        ///
        /// ```
        /// use latchless::counter::AtomicCounter;
        ///
        /// static REQUESTS: AtomicCounter = AtomicCounter::new(0);
        /// REQUESTS.increment();
        /// assert_eq!(REQUESTS.get(), 1);
        /// ```
        #[must_use]
        pub const fn new(value: u64) -> Self {
            Self { value: AtomicU64::new(value) }
        }
    }

    /// Returns the current value. Wait-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::AtomicCounter;
    ///
    /// assert_eq!(AtomicCounter::new(7).get(), 7);
    /// ```
    #[inline]
    pub fn get(&self) -> u64 {
        // Acquire: pairs with the AcqRel read-modify-writes below, so whoever reads a count also
        // sees the writes made before the operations that produced it.
        self.value.load(Ordering::Acquire)
    }

    /// Adds `n` and returns the previous value. Wait-free (one `fetch_add`). Wraps past
    /// `u64::MAX`; see [Overflow and underflow](Self#overflow-and-underflow).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::AtomicCounter;
    ///
    /// let c = AtomicCounter::new(1);
    /// assert_eq!(c.add(4), 1);
    /// assert_eq!(c.get(), 5);
    /// ```
    #[inline]
    pub fn add(&self, n: u64) -> u64 {
        // AcqRel: publishes the caller's earlier writes to whoever reads the new value (Acquire
        // in `get` or another read-modify-write) and sees those of earlier writers.
        self.value.fetch_add(n, Ordering::AcqRel)
    }

    /// Adds one and returns the previous value. Wait-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::AtomicCounter;
    ///
    /// let c = AtomicCounter::new(0);
    /// assert_eq!(c.increment(), 0);
    /// assert_eq!(c.get(), 1);
    /// ```
    #[inline]
    pub fn increment(&self) -> u64 {
        self.add(1)
    }

    /// Subtracts `n`, saturating at zero, and returns the previous value: the counter never
    /// wraps below zero, and `prev < n` tells the caller that it was clamped. Lock-free (CAS
    /// loop).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::AtomicCounter;
    ///
    /// let c = AtomicCounter::new(3);
    /// assert_eq!(c.sub(2), 3);
    /// assert_eq!(c.sub(5), 1); // clamped: 1 < 5
    /// assert_eq!(c.get(), 0);
    /// ```
    #[inline]
    pub fn sub(&self, n: u64) -> u64 {
        self.update(|cur| Some(cur.saturating_sub(n)))
            .unwrap_or_else(|cur| cur)
    }

    /// Subtracts one, saturating at zero, and returns the previous value. Lock-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::AtomicCounter;
    ///
    /// let c = AtomicCounter::new(1);
    /// assert_eq!(c.decrement(), 1);
    /// assert_eq!(c.decrement(), 0); // already zero: stays zero
    /// assert_eq!(c.get(), 0);
    /// ```
    #[inline]
    pub fn decrement(&self) -> u64 {
        self.sub(1)
    }

    /// Subtracts `n` only if the value is at least `n`. Returns `Ok(previous)`, or
    /// `Err(current)` with the value left unchanged. Lock-free (CAS loop).
    ///
    /// # Errors
    ///
    /// `Err(current)` when `current < n`.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::AtomicCounter;
    ///
    /// let c = AtomicCounter::new(2);
    /// assert_eq!(c.try_sub(2), Ok(2));
    /// assert_eq!(c.try_sub(1), Err(0));
    /// ```
    #[inline]
    pub fn try_sub(&self, n: u64) -> Result<u64, u64> {
        self.update(|cur| cur.checked_sub(n))
    }

    /// Adds `n` only if the result stays at or below `limit`: succeeds when
    /// `value + n <= limit` (with no overflow), returning `Ok(previous)`; otherwise leaves the
    /// value unchanged and returns `Err(current)`. Lock-free (CAS loop). This is admission
    /// control: with every caller going through it, the value never passes `limit`.
    ///
    /// # Errors
    ///
    /// `Err(current)` when `current + n > limit` or `current + n` overflows.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::AtomicCounter;
    ///
    /// let tokens = AtomicCounter::new(0);
    /// assert_eq!(tokens.try_add_within(60, 100), Ok(0));
    /// assert_eq!(tokens.try_add_within(60, 100), Err(60)); // 120 > 100
    /// assert_eq!(tokens.try_add_within(40, 100), Ok(60)); // exactly the limit is allowed
    /// ```
    #[inline]
    pub fn try_add_within(&self, n: u64, limit: u64) -> Result<u64, u64> {
        self.update(|cur| cur.checked_add(n).filter(|&next| next <= limit))
    }

    /// The CAS loop behind every bounded operation: applies `f` to the current value until the
    /// swap succeeds (`Ok(previous)`) or `f` refuses (`Err(current)`).
    #[inline]
    fn update(&self, mut f: impl FnMut(u64) -> Option<u64>) -> Result<u64, u64> {
        let backoff = Backoff::new();
        // Acquire: the decision is taken on this value, so see what its writers published.
        let mut cur = self.value.load(Ordering::Acquire);
        loop {
            let next = f(cur).ok_or(cur)?;
            // AcqRel on success, as in `add`; Acquire on failure: the new value is the one the
            // next decision is taken on.
            match self
                .value
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(prev) => return Ok(prev),
                Err(actual) => {
                    cur = actual;
                    backoff.spin();
                }
            }
        }
    }
}

impl Default for AtomicCounter {
    /// A counter at zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::AtomicCounter;
    ///
    /// assert_eq!(AtomicCounter::default().get(), 0);
    /// ```
    fn default() -> Self {
        Self::new(0)
    }
}

impl fmt::Debug for AtomicCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicCounter")
            .field("value", &self.get())
            .finish()
    }
}

/// An add-only `u64` counter striped over cache-padded cells, for statistics bumped by many
/// threads at once.
///
/// Each thread adds to its own cell (threads are numbered round-robin, so as many threads as
/// there are cells never share one), so concurrent `add`s do not contend for one cache line the
/// way a single `AtomicU64` does. [`sum`](Self::sum) reads every cell.
///
/// | method | progress |
/// |---|---|
/// | [`add`](Self::add), [`increment`](Self::increment) | wait-free (one `fetch_add`) |
/// | [`sum`](Self::sum) | wait-free (one load per cell) |
///
/// # `sum` is not a snapshot
///
/// While other threads add, `sum` reads the cells one after another, so its result need not equal
/// the total at any single instant. It is exact once the writers have finished (joined, or
/// synchronised with the reader), and for add-only use the sums one thread reads never
/// decrease. The sum wraps past `u64::MAX`, which a count of events never reaches.
///
/// # Examples
///
/// ```
/// use latchless::counter::ShardedCounter;
/// use std::thread;
///
/// let hits = ShardedCounter::new();
/// thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| {
///             for _ in 0..1000 {
///                 hits.increment();
///             }
///         });
///     }
/// });
/// assert_eq!(hits.sum(), 4000);
/// ```
pub struct ShardedCounter {
    cells: Box<[CachePadded<AtomicU64>]>,
}

impl ShardedCounter {
    /// Creates a counter at zero with four cells per available CPU (rounded up to a power of
    /// two, at most 256), so threads started one after another land on distinct cells even when
    /// there are more threads than cores.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::ShardedCounter;
    ///
    /// let c = ShardedCounter::new();
    /// c.add(3);
    /// assert_eq!(c.sum(), 3);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_shards(cpus.saturating_mul(4))
    }

    /// Creates a counter at zero with `shards` cells, rounded up to a power of two and clamped
    /// to `1..=256`. One cell behaves like a single shared `AtomicU64`.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::ShardedCounter;
    ///
    /// let c = ShardedCounter::with_shards(3);
    /// assert_eq!(c.shards(), 4);
    /// c.increment();
    /// assert_eq!(c.sum(), 1);
    /// ```
    #[must_use]
    pub fn with_shards(shards: usize) -> Self {
        let n = shards.clamp(1, 256).next_power_of_two();
        Self {
            cells: (0..n)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// A counter for the crate's own statistics: as [`new`](Self::new), but a single cell under
    /// loom, which keeps models small.
    pub(crate) fn for_stats() -> Self {
        if UNDER_MODEL_CHECKER {
            Self::with_shards(1)
        } else {
            Self::new()
        }
    }

    /// The number of cells.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::ShardedCounter;
    ///
    /// assert!(ShardedCounter::new().shards().is_power_of_two());
    /// ```
    pub fn shards(&self) -> usize {
        self.cells.len()
    }

    /// Adds `n` to the calling thread's cell. Wait-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::ShardedCounter;
    ///
    /// let bytes = ShardedCounter::new();
    /// bytes.add(512);
    /// bytes.add(512);
    /// assert_eq!(bytes.sum(), 1024);
    /// ```
    #[inline]
    pub fn add(&self, n: u64) {
        // The length is a power of two, so the mask keeps the index in bounds.
        let cell = &self.cells[thread_index() & (self.cells.len() - 1)];
        // Relaxed: the counter is a statistic; no other memory is published through it, and
        // each cell's modification order alone keeps the total exact.
        cell.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` to the calling thread's cell and returns the cell's previous value: a per-thread
    /// pace (every k-th call of a thread) without a shared read-modify-write. Wait-free.
    #[inline]
    pub(crate) fn add_to_cell(&self, n: u64) -> u64 {
        let cell = &self.cells[thread_index() & (self.cells.len() - 1)];
        // Relaxed: as in `add`.
        cell.fetch_add(n, Ordering::Relaxed)
    }

    /// Adds one to the calling thread's cell. Wait-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::ShardedCounter;
    ///
    /// let c = ShardedCounter::new();
    /// c.increment();
    /// assert_eq!(c.sum(), 1);
    /// ```
    #[inline]
    pub fn increment(&self) {
        self.add(1);
    }

    /// Adds up the cells. Not a snapshot under concurrent writes; see
    /// [`sum` is not a snapshot](Self#sum-is-not-a-snapshot).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::ShardedCounter;
    ///
    /// let c = ShardedCounter::with_shards(8);
    /// c.add(2);
    /// c.add(3);
    /// assert_eq!(c.sum(), 5);
    /// ```
    pub fn sum(&self) -> u64 {
        self.cells
            .iter()
            // Relaxed: per-cell coherence is all that `sum` promises (each cell read is at least
            // as new as the last one this thread read); exactness after the writers finish comes
            // from whatever synchronised them with the reader (e.g. `join`).
            .fold(0u64, |acc, c| acc.wrapping_add(c.load(Ordering::Relaxed)))
    }
}

impl Default for ShardedCounter {
    /// Same as [`ShardedCounter::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::counter::ShardedCounter;
    ///
    /// assert_eq!(ShardedCounter::default().sum(), 0);
    /// ```
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedCounter")
            .field("shards", &self.cells.len())
            .field("sum", &self.sum())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_add_within_refuses_overflow_and_limit() {
        let c = AtomicCounter::new(u64::MAX - 1);
        assert_eq!(c.try_add_within(2, u64::MAX), Err(u64::MAX - 1));
        assert_eq!(c.try_add_within(1, u64::MAX), Ok(u64::MAX - 1));
        assert_eq!(c.get(), u64::MAX);
    }

    #[test]
    fn sub_saturates_and_try_sub_refuses() {
        let c = AtomicCounter::new(1);
        assert_eq!(c.try_sub(2), Err(1));
        assert_eq!(c.get(), 1);
        assert_eq!(c.sub(10), 1);
        assert_eq!(c.get(), 0);
        assert_eq!(c.decrement(), 0);
        assert_eq!(c.get(), 0);
    }

    #[test]
    fn counters_lose_no_update_across_threads() {
        let a = AtomicCounter::new(0);
        let s = ShardedCounter::with_shards(4);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        a.increment();
                        s.increment();
                    }
                });
            }
        });
        assert_eq!(a.get(), 40_000);
        assert_eq!(s.sum(), 40_000);
    }

    #[test]
    fn concurrent_admission_never_passes_limit() {
        let c = AtomicCounter::new(0);
        let admitted = AtomicCounter::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        if c.try_add_within(3, 100).is_ok() {
                            admitted.increment();
                            assert!(c.get() <= 100);
                        }
                    }
                });
            }
        });
        assert_eq!(c.get(), 99);
        assert_eq!(admitted.get(), 33);
    }
}
