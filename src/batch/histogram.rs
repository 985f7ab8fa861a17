//! The batcher's distributions: [`BatchHistograms`], each a [`Histogram`], kept per worker and
//! merged when read.

use super::stats::WorkerCounts;
use crate::sync::{Mutex, MutexGuard};
use core::fmt;
use std::sync::PoisonError;

/// Significant decimal digits kept: values are exact to 1%, in a few tens of kilobytes.
const SIGFIGS: u8 = 2;
/// The largest time recorded exactly, in microseconds (an hour); longer times count as an hour.
const MAX_MICROS: u64 = 3_600_000_000;
/// The largest batch size recorded exactly; larger sizes count as this.
const MAX_SIZE: u64 = 1 << 20;

/// A distribution of recorded values (microseconds or request counts: each field of
/// [`BatchHistograms`] says which), exact to 1%.
///
/// # Examples
///
/// ```
/// use latchless::batch::Batcher;
///
/// let b = Batcher::builder().spawn(|xs: Vec<u8>| xs).unwrap();
/// b.call(1).unwrap();
/// b.shutdown();
/// let sizes = b.histograms().batch_size;
/// assert_eq!((sizes.len(), sizes.max()), (1, 1));
/// ```
#[derive(Clone)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Histogram {
    fn new(max: u64) -> Self {
        Self(
            hdrhistogram::Histogram::new_with_bounds(1, max, SIGFIGS)
                .expect("constant bounds are valid"),
        )
    }

    fn record(&mut self, value: u64) {
        // Saturating: a value past the bound counts as the bound, never an error. Zero counts
        // as 1 (the lowest value kept exactly).
        self.0.saturating_record(value.max(1));
    }

    /// How many values were recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder().spawn(|xs: Vec<u8>| xs).unwrap();
    /// assert_eq!(b.histograms().latency.len(), 0);
    /// ```
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether nothing was recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder().spawn(|xs: Vec<u8>| xs).unwrap();
    /// assert!(b.histograms().queue_time.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value below which a fraction `q` (0.0 to 1.0, clamped) of the recorded values lie,
    /// to 1%; 0 if nothing was recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder().max_batch_size(1).spawn(|xs: Vec<u8>| xs).unwrap();
    /// for i in 0..10 {
    ///     b.call(i).unwrap();
    /// }
    /// b.shutdown();
    /// assert_eq!(b.histograms().batch_size.quantile(0.99), 1);
    /// ```
    pub fn quantile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q.clamp(0.0, 1.0))
    }

    /// The smallest recorded value, to 1%; 0 if nothing was recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder().spawn(|xs: Vec<u8>| xs).unwrap();
    /// assert_eq!(b.histograms().batch_size.min(), 0);
    /// ```
    pub fn min(&self) -> u64 {
        if self.is_empty() {
            0
        } else {
            self.0.min()
        }
    }

    /// The largest recorded value, to 1%; 0 if nothing was recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder().max_batch_size(4).spawn(|xs: Vec<u8>| xs).unwrap();
    /// b.call(1).unwrap();
    /// assert!(b.histograms().batch_size.max() <= 4);
    /// ```
    pub fn max(&self) -> u64 {
        self.0.max()
    }

    /// The mean of the recorded values; 0.0 if nothing was recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder().spawn(|xs: Vec<u8>| xs).unwrap();
    /// b.call(1).unwrap();
    /// b.shutdown();
    /// assert_eq!(b.histograms().batch_size.mean(), 1.0);
    /// ```
    pub fn mean(&self) -> f64 {
        self.0.mean()
    }

    fn merge(&mut self, other: &Self) {
        // Same bounds on both sides, so the merge cannot fail; a value out of range would be
        // the one error, and `add` then leaves the rest merged.
        let _ = self.0.add(&other.0);
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("len", &self.len())
            .field("min", &self.min())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .field("max", &self.max())
            .finish()
    }
}

/// What a batcher's requests and batches looked like, as distributions, from
/// [`Batcher::histograms`](super::Batcher::histograms) (or
/// [`StreamBatcher::histograms`](super::StreamBatcher::histograms), where a batch is a step:
/// see there). Only computed requests are recorded: expired and cancelled ones are counted in
/// [`BatchStats`](super::BatchStats) instead.
///
/// # Examples
///
/// ```
/// use latchless::batch::Batcher;
///
/// let b = Batcher::builder().spawn(|xs: Vec<u64>| xs).unwrap();
/// for i in 0..100 {
///     b.call(i).unwrap();
/// }
/// b.shutdown();
/// let h = b.histograms();
/// assert_eq!(h.queue_time.len(), 100);
/// assert_eq!(h.latency.len(), 100);
/// assert_eq!(h.batch_size.len(), h.compute_time.len()); // one value per batch
/// assert!(h.latency.max() >= h.queue_time.max());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BatchHistograms {
    /// Per computed request, microseconds from `submit` to the start of its batch.
    pub queue_time: Histogram,
    /// Per batch, the requests in it.
    pub batch_size: Histogram,
    /// Per batch, microseconds the handler ran.
    pub compute_time: Histogram,
    /// Per computed request, microseconds from `submit` to its reply.
    pub latency: Histogram,
    /// Queue time and latency of each priority class's requests, by class index (one entry
    /// for a batcher without classes).
    pub classes: Vec<ClassHistograms>,
}

/// One priority class's share of [`BatchHistograms`].
///
/// # Examples
///
/// ```
/// use latchless::batch::{Batcher, PriorityClass};
///
/// let b = Batcher::builder()
///     .class(PriorityClass::new())
///     .class(PriorityClass::new())
///     .spawn(|xs: Vec<u8>| xs)
///     .unwrap();
/// b.submit_to(1, 0).unwrap().wait().unwrap();
/// b.call(2).unwrap();
/// b.call(3).unwrap();
/// let h = b.histograms();
/// assert_eq!((h.classes[0].latency.len(), h.classes[1].latency.len()), (1, 2));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClassHistograms {
    /// Per computed request of the class, microseconds from `submit` to the start of its batch.
    pub queue_time: Histogram,
    /// Per computed request of the class, microseconds from `submit` to its reply.
    pub latency: Histogram,
}

impl ClassHistograms {
    fn new() -> Self {
        Self {
            queue_time: Histogram::new(MAX_MICROS),
            latency: Histogram::new(MAX_MICROS),
        }
    }
}

impl BatchHistograms {
    pub(super) fn new(classes: usize) -> Self {
        Self {
            queue_time: Histogram::new(MAX_MICROS),
            batch_size: Histogram::new(MAX_SIZE),
            compute_time: Histogram::new(MAX_MICROS),
            latency: Histogram::new(MAX_MICROS),
            classes: (0..classes).map(|_| ClassHistograms::new()).collect(),
        }
    }

    /// Records one batch: how long each of its requests waited and its class, and how long it
    /// ran, in nanoseconds (kept in microseconds).
    pub(super) fn record_batch(
        &mut self,
        waits_nanos: &[u64],
        classes: &[usize],
        compute_nanos: u64,
    ) {
        self.batch_size.record(waits_nanos.len() as u64);
        self.compute_time.record(compute_nanos / 1000);
        for (&w, &c) in waits_nanos.iter().zip(classes) {
            let (queued, latency) = (w / 1000, w.saturating_add(compute_nanos) / 1000);
            self.queue_time.record(queued);
            self.latency.record(latency);
            if let Some(class) = self.classes.get_mut(c) {
                class.queue_time.record(queued);
                class.latency.record(latency);
            }
        }
    }

    /// Records one step of a continuous batcher: the items in it, and how long it ran, in
    /// nanoseconds (kept in microseconds).
    pub(super) fn record_step(&mut self, items: usize, compute_nanos: u64) {
        self.batch_size.record(items as u64);
        self.compute_time.record(compute_nanos / 1000);
    }

    /// Records how long an item of class `class` waited before its join, in nanoseconds.
    pub(super) fn record_queued(&mut self, class: usize, waited_nanos: u64) {
        let queued = waited_nanos / 1000;
        self.queue_time.record(queued);
        if let Some(class) = self.classes.get_mut(class) {
            class.queue_time.record(queued);
        }
    }

    /// Records an item of class `class` that got its final item `latency_nanos` after submit.
    pub(super) fn record_latency(&mut self, class: usize, latency_nanos: u64) {
        let latency = latency_nanos / 1000;
        self.latency.record(latency);
        if let Some(class) = self.classes.get_mut(class) {
            class.latency.record(latency);
        }
    }

    fn merge(&mut self, other: &Self) {
        self.queue_time.merge(&other.queue_time);
        self.batch_size.merge(&other.batch_size);
        self.compute_time.merge(&other.compute_time);
        self.latency.merge(&other.latency);
        for (mine, theirs) in self.classes.iter_mut().zip(&other.classes) {
            mine.queue_time.merge(&theirs.queue_time);
            mine.latency.merge(&theirs.latency);
        }
    }
}

/// What one worker records: its counts and its histograms, written by that worker (once per
/// batch, and once per expired or cancelled request) and read, so locked, only when a handle asks
/// for statistics: the lock is all but uncontended, and no counter is shared between workers.
pub(super) struct WorkerRecord(Mutex<Record>);

/// The data behind a [`WorkerRecord`]'s lock.
pub(super) struct Record {
    pub(super) counts: WorkerCounts,
    pub(super) histograms: BatchHistograms,
}

impl WorkerRecord {
    pub(super) fn new(classes: usize) -> Self {
        Self(Mutex::new(Record {
            counts: WorkerCounts::default(),
            histograms: BatchHistograms::new(classes),
        }))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Record> {
        // Nothing panics while the lock is held (recording saturates; counts would overflow
        // only after 2^64 requests), and a half-recorded batch would still be valid data.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every worker's histograms merged.
pub(super) fn merged<'a>(
    workers: impl IntoIterator<Item = &'a WorkerRecord>,
    classes: usize,
) -> BatchHistograms {
    let mut all = BatchHistograms::new(classes);
    for w in workers {
        all.merge(&w.lock().histograms);
    }
    all
}
