//! What a batcher did: [`BatchStats`], and the counters behind it.

#[cfg(doc)]
use super::Batcher;
use crate::counter::ShardedCounter;
use std::time::Duration;

/// Counts of what a batcher did, from [`Batcher::stats`].
///
/// # Examples
///
/// ```
/// use latchless::batch::{BatchConfig, Batcher};
///
/// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<u8>| xs).unwrap();
/// b.call(1).unwrap();
/// b.shutdown();
/// let s = b.stats();
/// assert_eq!((s.submitted, s.completed, s.batches), (1, 1, 1));
/// assert_eq!(s.batch_sizes[0], 1); // one batch of size 1
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Requests accepted.
    pub submitted: u64,
    /// Requests answered with the handler's result.
    pub completed: u64,
    /// Requests answered `HandlerPanicked` or `BadHandlerOutput`.
    pub failed: u64,
    /// Requests answered `Expired` (or skipped expired with nobody waiting).
    pub expired: u64,
    /// Requests skipped because their `Pending` was dropped.
    pub cancelled: u64,
    /// Requests refused: queue full.
    pub refused_overloaded: u64,
    /// Requests refused: shutting down.
    pub refused_shutting_down: u64,
    /// Requests refused: costlier than a whole batch.
    pub refused_too_costly: u64,
    /// Batches run.
    pub batches: u64,
    /// Batches by size: 1, 2, 3–4, 5–8, 9–16, 17–32, 33–64, 65 and more.
    pub batch_sizes: [u64; 8],
    /// Total time the computed requests spent between `submit` and the start of their batch.
    pub queue_wait: Duration,
}

impl BatchStats {
    /// The mean batch size, or 0 before the first batch.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::BatchStats;
    ///
    /// let s = BatchStats { completed: 6, failed: 2, batches: 2, ..Default::default() };
    /// assert_eq!(s.mean_batch_size(), 4.0);
    /// ```
    pub fn mean_batch_size(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            (self.completed + self.failed) as f64 / self.batches as f64
        }
    }
}

/// The submitters' counters, striped: every submit writes one.
pub(super) struct Counters {
    pub(super) submitted: ShardedCounter,
    pub(super) refused_overloaded: ShardedCounter,
    pub(super) refused_shutting_down: ShardedCounter,
    pub(super) refused_too_costly: ShardedCounter,
}

impl Counters {
    pub(super) fn new() -> Self {
        let sharded = ShardedCounter::for_stats;
        Self {
            submitted: sharded(),
            refused_overloaded: sharded(),
            refused_shutting_down: sharded(),
            refused_too_costly: sharded(),
        }
    }
}

/// One worker's counts: plain integers, kept with its histograms under the worker's own lock
/// (see `histogram::WorkerRecord`), so that workers never write a shared counter per batch.
#[derive(Default)]
pub(super) struct WorkerCounts {
    pub(super) completed: u64,
    pub(super) failed: u64,
    pub(super) expired: u64,
    pub(super) cancelled: u64,
    pub(super) batches: u64,
    pub(super) batch_sizes: [u64; 8],
    pub(super) queue_wait_nanos: u64,
}

impl WorkerCounts {
    /// Adds these counts to `stats`.
    pub(super) fn add_to(&self, stats: &mut BatchStats) {
        stats.completed += self.completed;
        stats.failed += self.failed;
        stats.expired += self.expired;
        stats.cancelled += self.cancelled;
        stats.batches += self.batches;
        for (sum, n) in stats.batch_sizes.iter_mut().zip(self.batch_sizes) {
            *sum += n;
        }
        stats.queue_wait += Duration::from_nanos(self.queue_wait_nanos);
    }
}

/// The histogram bucket of a batch size: 1, 2, 3–4, 5–8, ..., 65+.
pub(super) fn size_bucket(n: usize) -> usize {
    let b = usize::BITS - n.saturating_sub(1).leading_zeros();
    (b as usize).min(7)
}
