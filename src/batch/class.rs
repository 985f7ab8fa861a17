//! Priority classes: [`PriorityClass`], what the batcher keeps per class, and how a worker
//! chooses which class leads a batch (strict priority, with aging).

use super::Job;
use crate::counter::AtomicCounter;
use crate::queue::MsQueue;
use crate::sync::{AtomicU32, Ordering};
use std::time::Duration;

/// The most priority classes a batcher takes.
pub(super) const MAX_CLASSES: usize = 64;

/// One priority class of a batcher: its own bound on requests in flight and its own default
/// timeout. Classes are added with [`BatcherBuilder::class`](super::BatcherBuilder::class), the
/// first one added the most urgent.
///
/// # Examples
///
/// ```
/// use latchless::batch::{Batcher, PriorityClass};
/// use std::time::Duration;
///
/// let b = Batcher::builder()
///     .class(PriorityClass::new().max_queue(16)) // 0: interactive
///     .class(PriorityClass::new().timeout(Duration::from_secs(30))) // 1: batch jobs
///     .spawn(|xs: Vec<u32>| xs)
///     .unwrap();
/// assert_eq!(b.submit_to(7, 0).unwrap().wait(), Ok(7));
/// assert_eq!(b.call(8).unwrap(), 8); // `submit` and `call` use the last class
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriorityClass {
    pub(super) max_queue: Option<usize>,
    pub(super) timeout: Option<Duration>,
}

impl PriorityClass {
    /// A class with no bound of its own (the batcher's `max_queue` still applies) and no
    /// default timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::PriorityClass;
    ///
    /// assert_eq!(PriorityClass::new(), PriorityClass::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The most requests of this class waiting or running at once; beyond it a submit to the
    /// class is refused [`Overloaded`](super::SubmitError::Overloaded), even when the batcher
    /// has room. Must be at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, PriorityClass, SubmitError};
    ///
    /// let b = Batcher::builder()
    ///     .class(PriorityClass::new().max_queue(1))
    ///     .spawn(|xs: Vec<u32>| xs)
    ///     .unwrap();
    /// assert_eq!(b.call(1).unwrap(), 1);
    /// ```
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = Some(n);
        self
    }

    /// The deadline of a request submitted to this class without one: `timeout` after its
    /// submission. A request not started by then is answered
    /// [`Expired`](super::BatchError::Expired) and never computed.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchError, Batcher, PriorityClass};
    /// use std::time::Duration;
    ///
    /// let b = Batcher::builder()
    ///     .class(PriorityClass::new().timeout(Duration::ZERO)) // every request is late
    ///     .spawn(|xs: Vec<u32>| xs)
    ///     .unwrap();
    /// assert_eq!(b.submit(1).unwrap().wait(), Err(BatchError::Expired));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// What the batcher keeps for one class.
pub(super) struct Class<Req, S> {
    pub(super) queue: MsQueue<Job<Req, S>>,
    /// Requests of this class accepted and not yet answered, if the class has a bound.
    pub(super) in_flight: Option<(AtomicCounter, u64)>,
    pub(super) timeout: Option<Duration>,
    /// Batches started in a row while this class had requests waiting and gave none of them.
    skipped: AtomicU32,
}

impl<Req, S> Class<Req, S> {
    pub(super) fn new(config: &PriorityClass) -> Self {
        Self {
            queue: MsQueue::new(),
            in_flight: config
                .max_queue
                .map(|n| (AtomicCounter::new(0), u64::try_from(n).unwrap_or(u64::MAX))),
            timeout: config.timeout,
            skipped: AtomicU32::new(0),
        }
    }

    /// Gives back `n` of this class's places, if it counts them.
    pub(super) fn release(&self, n: u64) {
        if let Some((count, _)) = &self.in_flight {
            count.sub(n);
        }
    }
}

/// The class that leads the next batch (its requests are taken first): the most urgent class
/// with requests waiting, unless classes have been passed over `aging` batches in a row; then
/// the one passed over longest (the most urgent of those on a tie).
pub(super) fn lead<Req, S>(classes: &[Class<Req, S>], aging: u32) -> usize {
    let mut lead = None;
    let mut longest = aging;
    for (c, class) in classes.iter().enumerate() {
        // Relaxed: a scheduling hint; which request goes first never affects what it is
        // answered.
        let skipped = class.skipped.load(Ordering::Relaxed);
        if skipped >= longest && (lead.is_none() || skipped > longest) && !class.queue.is_empty() {
            lead = Some(c);
            longest = skipped;
        }
    }
    lead.unwrap_or(0)
}

/// After a batch formed: a class that gave requests to it starts over; one that had requests
/// waiting and gave none was passed over once more.
pub(super) fn account<Req, S>(classes: &[Class<Req, S>], served: u64) {
    for (c, class) in classes.iter().enumerate() {
        // Relaxed: as in `lead`.
        if served & (1 << c) != 0 {
            class.skipped.store(0, Ordering::Relaxed);
        } else if !class.queue.is_empty() {
            class.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
