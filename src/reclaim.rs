//! Which epoch collector a structure reclaims its memory through: crossbeam-epoch's global one,
//! pinned through the thread's cached handle, or a caller's own (tests, loom models, exact
//! accounting), and the check that a caller's guard pins the right one.

use crate::sync::epoch::{self, Collector, Guard};

/// A structure's reclamation domain.
#[derive(Debug)]
pub(crate) struct Reclaim {
    /// `None`: the global collector.
    own: Option<Collector>,
}

impl Reclaim {
    pub(crate) fn new(own: Option<Collector>) -> Self {
        Self { own }
    }

    /// The collector itself.
    pub(crate) fn collector(&self) -> &Collector {
        self.own
            .as_ref()
            .unwrap_or_else(|| epoch::default_collector())
    }

    /// Pins the current thread. With a caller's collector this registers a fresh handle each
    /// time (slow: the reason for the `*_with_guard` methods).
    #[inline]
    pub(crate) fn pin(&self) -> Guard {
        match &self.own {
            None => epoch::pin(),
            // A guard outlives the handle it came from: the participant stays registered until
            // both are gone.
            Some(c) => c.register().pin(),
        }
    }

    /// Panics with `message` unless `guard` pins this domain's collector.
    #[inline]
    #[track_caller]
    pub(crate) fn check(&self, guard: &Guard, message: &str) {
        assert!(guard.collector() == Some(self.collector()), "{message}");
    }
}
