//! Code shared by the benches, included by each with `mod common;` (every file directly in
//! `benches/` is its own bench binary; files in this folder are not):
//!
//! - [`workers`]: running one measured run's worker threads, released together by a barrier and
//!   timed from the first worker's start to the last one's end, with their CPU time;
//! - [`harness`]: the interleaving harness of `benches/compare.rs`, `benches/cache_compare.rs`
//!   and `benches/batch_compare.rs`: command line and environment, rounds with the contenders'
//!   order rotated, medians, and the rows of the markdown tables;
//! - the contenders, each seen through one trait: [`queues`] (`benches/queue.rs`,
//!   `benches/queue_memory.rs`, `benches/compare.rs`), [`counters`] (`benches/counter.rs`,
//!   `benches/compare.rs`), [`caches`] (`benches/cache.rs`, `benches/cache_compare.rs`) and
//!   [`dispatch`] (`benches/batch.rs`, `benches/batch_compare.rs`);
//! - [`PinnedLocal`]: the per-thread pinned guard of the cache contender driven through its
//!   `*_with_guard` methods.
//!
//! Not every bench uses every item, so each includes this module under
//! `#[allow(dead_code)]`.

pub(crate) mod caches;
pub(crate) mod counters;
pub(crate) mod dispatch;
pub(crate) mod harness;
pub(crate) mod queues;
pub(crate) mod workers;

use crossbeam_epoch::Guard;

/// A pinned worker repins its guard after this many operations.
pub(crate) const REPIN_EVERY: u32 = 64;

/// A worker's guard and its operations since the last repin: the per-thread state of a
/// contender driven through its `*_with_guard` methods.
pub(crate) struct PinnedLocal {
    guard: Guard,
    ops: u32,
}

impl PinnedLocal {
    /// Pins the current thread.
    pub(crate) fn pin() -> Self {
        Self {
            guard: crossbeam_epoch::pin(),
            ops: 0,
        }
    }

    /// The guard for one more operation, repinned every [`REPIN_EVERY`] operations.
    pub(crate) fn tick(&mut self) -> &Guard {
        self.ops += 1;
        if self.ops == REPIN_EVERY {
            self.ops = 0;
            self.guard.repin();
        }
        &self.guard
    }
}
