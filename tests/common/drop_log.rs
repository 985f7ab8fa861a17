//! The drop log and its payload, shared by every integration test that counts drops
//! (`tests/queue_drops.rs`, `tests/cache_drops.rs`, the queue's differential test and
//! `tests/cache_api.rs`), each of which includes this file as a module.
//!
//! A [`Tracked`] payload counts its instances per id: the original and every clone bump its id's
//! `created` count, each drop bumps `dropped`. A drop that takes `dropped` past `created` is a
//! double drop, flagged at once (not panicked on: it may happen while unwinding); at the end of a
//! test every id must have `dropped == created`. Totals are kept beside the per-id counts, so a
//! test may check the instances alive after every step at no cost.
//!
//! Logs are leaked (`&'static`), so that a double drop of a value never touches freed memory of
//! the log itself; each stays listed in a static, so leak checkers (valgrind memcheck in CI,
//! Miri) see it as still reachable, not lost.

// Each including test uses part of the log: what one leaves unused is not dead for another.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Per id, the instances created (the original and its clones) and dropped, and their totals.
#[derive(Debug)]
pub(crate) struct DropLog {
    created: Vec<AtomicU32>,
    dropped: Vec<AtomicU32>,
    created_total: AtomicUsize,
    dropped_total: AtomicUsize,
    /// Set by a drop that took `dropped` past `created`.
    double_drop: AtomicBool,
}

impl DropLog {
    /// A log for ids `0..n`, leaked: see the module docs.
    pub(crate) fn new(n: usize) -> &'static Self {
        static LOGS: Mutex<Vec<&'static DropLog>> = Mutex::new(Vec::new());
        let log: &'static Self = Box::leak(Box::new(Self {
            created: (0..n).map(|_| AtomicU32::new(0)).collect(),
            dropped: (0..n).map(|_| AtomicU32::new(0)).collect(),
            created_total: AtomicUsize::new(0),
            dropped_total: AtomicUsize::new(0),
            double_drop: AtomicBool::new(false),
        }));
        LOGS.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(log);
        log
    }

    /// The number of ids the log covers (`n` of [`DropLog::new`]).
    pub(crate) fn ids(&self) -> usize {
        self.created.len()
    }

    /// Instances of `id` created so far.
    pub(crate) fn created(&self, id: usize) -> u32 {
        self.created[id].load(Ordering::SeqCst)
    }

    /// Instances of `id` dropped so far.
    pub(crate) fn dropped(&self, id: usize) -> u32 {
        self.dropped[id].load(Ordering::SeqCst)
    }

    /// Instances of any id dropped so far.
    pub(crate) fn dropped_total(&self) -> usize {
        self.dropped_total.load(Ordering::SeqCst)
    }

    /// Instances of `id` alive now.
    pub(crate) fn alive(&self, id: usize) -> i64 {
        i64::from(self.created(id)) - i64::from(self.dropped(id))
    }

    /// Instances of any id alive now.
    pub(crate) fn alive_total(&self) -> i64 {
        // Dropped first: an instance is created before it drops, so a drop counted here has its
        // creation counted in the later load, and the difference is never below the truth.
        let dropped = self.dropped_total();
        let created = self.created_total.load(Ordering::SeqCst);
        i64::try_from(created).expect("fits") - i64::try_from(dropped).expect("fits")
    }

    /// Whether a drop so far took an id's drops past its creations.
    pub(crate) fn double_dropped(&self) -> bool {
        self.double_drop.load(Ordering::SeqCst)
    }

    /// Counts a drop of an instance of `id`, flagging it if it takes the drops past the
    /// creations. [`Tracked`]'s `Drop` calls it; a test of the log calls it to play a double drop.
    pub(crate) fn count_drop(&self, id: usize) {
        // No panic here: a double drop may happen while unwinding, and a panic then would abort.
        // Reading `created` after our increment: our own instance was created before, so a
        // correct drop always finds `dropped <= created`.
        self.dropped_total.fetch_add(1, Ordering::SeqCst);
        let dropped = self.dropped[id].fetch_add(1, Ordering::SeqCst) + 1;
        let created = self.created(id);
        if dropped > created {
            eprintln!("Tracked({id}): drop {dropped} of {created} created");
            self.double_drop.store(true, Ordering::SeqCst);
        }
    }

    /// Asserts that no drop so far took an id's drops past its creations.
    pub(crate) fn assert_no_double_drop(&self) {
        assert!(
            !self.double_dropped(),
            "a value was dropped more often than it was created (see stderr)"
        );
    }

    /// The ids (first 10) not created, or whose instances were not all dropped exactly once, as
    /// `(id, created, dropped)`.
    pub(crate) fn not_dropped_once(&self) -> Vec<(usize, u32, u32)> {
        (0..self.ids())
            .map(|id| (id, self.created(id), self.dropped(id)))
            .filter(|&(_, c, d)| c == 0 || c != d)
            .take(10)
            .collect()
    }

    /// Asserts that every instance of every id was dropped exactly once, and every id was used.
    pub(crate) fn assert_all_dropped_once(&self) {
        self.assert_no_double_drop();
        let wrong = self.not_dropped_once();
        assert!(
            wrong.is_empty(),
            "values not dropped exactly once (first 10 as (id, created, dropped)): {wrong:?}"
        );
    }
}

/// A payload that logs its creation, clones and drops in a [`DropLog`]. Equal when the ids are.
pub(crate) struct Tracked {
    pub(crate) id: usize,
    log: &'static DropLog,
}

impl Tracked {
    /// A new instance of `id`, which must be below the log's [`DropLog::ids`].
    pub(crate) fn new(id: usize, log: &'static DropLog) -> Self {
        log.created[id].fetch_add(1, Ordering::SeqCst);
        log.created_total.fetch_add(1, Ordering::SeqCst);
        Self { id, log }
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        Self::new(self.id, self.log)
    }
}

impl PartialEq for Tracked {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tracked({})", self.id)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.log.count_drop(self.id);
    }
}
