//! [`Batcher`]: dynamic batching in front of any `FnMut(Vec<Req>) -> Vec<Resp>`, the way model
//! servers batch inference requests.
//!
//! Client threads [`submit`](Batcher::submit) requests and get a [`Pending`] reply; worker
//! threads own the handlers and run them on batches: one worker with
//! [`spawn`](BatcherBuilder::spawn), or a pool of them, each with its own handler, with
//! [`spawn_pool`](BatcherBuilder::spawn_pool). A batch closes when it holds `max_batch_size`
//! requests, when the next request would take its total cost past `max_batch_cost` (a token
//! budget, say), or when `max_wait` has passed since its first request was submitted (Triton's
//! "max queue delay"); with several workers it also closes at once while another worker is idle.
//! Batches form late: a worker that becomes free takes what arrived while it computed, so
//! under load batches grow without anyone waiting for them.
//!
//! Requests may be sorted into priority classes ([`BatcherBuilder::class`], submitted with
//! [`submit_to`](Batcher::submit_to)), each with its own bound and default timeout: a worker
//! takes the most urgent class's requests first, and a class passed over `aging` batches in a
//! row leads the next one, so no class starves. Every request's queue time and latency, every
//! batch's size and compute time, go into per-worker histograms
//! ([`histograms`](Batcher::histograms)).
//!
//! For step-wise work (token generation), [`BatcherBuilder::spawn_steps`] starts a
//! [`StreamBatcher`]: continuous (iteration-level) batching, where a [`StepHandler`] advances a
//! running batch one step at a time, finished items leave at once, waiting ones join between
//! steps under the [`JoinPolicy`], and each request's partial results stream to its
//! [`ChunkStream`] (a blocking iterator and a `futures_core::Stream`), ending with exactly one
//! final item.
//!
//! Built from the crate's own primitives: requests travel through an [`MsQueue`] per class;
//! admission (at most `max_queue` requests waiting or running, and a class's own bound) is an
//! [`AtomicCounter::try_add_within`]; the submitters' statistics are [`ShardedCounter`]s, each
//! worker's its own. Producers never block: a refused request is handed back at once
//! ([`SubmitError`]), and waking a worker is an `unpark` only when one sleeps.
//!
//! # Replies: exactly one per accepted request
//!
//! Every accepted request gets exactly one reply through its [`Pending`]: the handler's result;
//! [`BatchError::HandlerPanicked`] if the handler panicked (the worker survives and serves the
//! next batch); [`BatchError::BadHandlerOutput`] if it returned the wrong number of results;
//! [`BatchError::Expired`] if its deadline passed before its batch ran (it is then never
//! computed). Dropping a `Pending` cancels its request: it is skipped, never computed. A request
//! costlier than a whole batch is refused at `submit`. [`shutdown`](Batcher::shutdown) stops
//! admission, lets the workers drain what was accepted, and returns once every reply is sent;
//! dropping the last handle does the same.
//!
//! # Time and loom
//!
//! Time is read through the crate's `sync` shim. Under loom there is no clock and no timed park:
//! the clock stands still and a timed park is a spurious wake-up, so loom models cover the
//! wake-up protocol (no lost wake-up, with one worker, with two, and across two classes),
//! shutdown racing submit, and the reply slot, with deadlines either already due or never due; the deadline and `max_wait`
//! paths are tested with real time in `tests/`.

mod class;
mod config;
mod error;
mod histogram;
mod slot;
mod stats;
mod step;
mod stream;
mod worker;

pub use class::PriorityClass;
pub use config::{BatchConfig, BatcherBuilder};
pub use error::{BatchError, CallError, ConfigError, SpawnError, SubmitError};
pub use histogram::{BatchHistograms, ClassHistograms, Histogram};
pub use slot::Pending;
pub use stats::BatchStats;
pub use step::{JoinPolicy, Joined, Step, StepHandler};
pub use stream::{ChunkStream, StreamBatcher, Streamed};

use crate::counter::AtomicCounter;
#[cfg(doc)]
use crate::counter::ShardedCounter;
#[cfg(doc)]
use crate::queue::MsQueue;
use crate::sync::{
    fence, now, thread, Arc, AtomicBool, AtomicU8, AtomicUsize, CachePadded, Mutex, Ordering,
    Parker,
};
use class::Class;
use config::Settings;
use core::fmt;
use histogram::WorkerRecord;
use slot::Slot;
use stats::Counters;
use std::sync::PoisonError;
use std::time::Instant;

/// One accepted request, with its reply slot `S` (a [`Slot`], or a stream's).
struct Job<Req, S> {
    req: Req,
    /// Its priority class's index.
    class: usize,
    slot: Arc<S>,
    cost: u64,
    submitted: Instant,
    deadline: Option<Instant>,
}

/// Where one worker sleeps.
#[derive(Debug, Default)]
struct Sleeper {
    /// Set by the worker just before it parks (idle, or filling a batch); `AWAKE` otherwise.
    state: AtomicU8,
    parker: Parker,
}

/// What the handles and the workers share; `S` is the requests' reply slot.
struct Inner<Req, S> {
    /// The priority classes, most urgent first, each with its queue: at least one.
    classes: Box<[Class<Req, S>]>,
    /// How many batches in a row a class with requests waiting may be passed over.
    aging: u32,
    /// When waiting items join a running batch (step-wise workers only).
    join: JoinPolicy,
    /// Requests accepted and not yet answered (waiting or running): the admission bound.
    in_flight: AtomicCounter,
    shutting_down: AtomicBool,
    /// One per worker, each on its own cache line.
    sleepers: Box<[CachePadded<Sleeper>]>,
    /// What each worker recorded (counts and histograms), each on its own cache line.
    records: Box<[CachePadded<WorkerRecord>]>,
    /// Workers between batches, waiting for work: while one is, a batch that is not full
    /// closes at once rather than wait for companions.
    idle: AtomicUsize,
    config: BatchConfig,
    cost: config::CostFn<Req>,
    counters: Counters,
}

/// Owned by the handles: when the last one drops, the batcher shuts down.
struct Owner<Req, S> {
    inner: Arc<Inner<Req, S>>,
    /// The worker threads' ids, to tell a `shutdown` from inside a handler.
    workers: Vec<thread::ThreadId>,
    join: Mutex<Vec<thread::JoinHandle<()>>>,
}

/// A dynamic batcher: a cheap, cloneable handle (`Send + Sync` when requests and replies are
/// `Send`) to worker threads that run handlers on batches of requests. Start one with
/// [`Batcher::builder`]. See the [module docs](self).
///
/// | method | progress |
/// |---|---|
/// | [`submit`](Self::submit), [`submit_before`](Self::submit_before), [`submit_to`](Self::submit_to), [`submit_to_before`](Self::submit_to_before) | lock-free: never blocks; refusals return at once |
/// | [`call`](Self::call), [`Pending::wait`] | block until the reply |
/// | [`shutdown`](Self::shutdown) | blocks until every accepted request is answered |
///
/// # Examples
///
/// ```
/// use latchless::batch::{BatchConfig, Batcher};
/// use std::thread;
///
/// // A "model" that doubles numbers, a batch at a time.
/// let batcher = Batcher::spawn(BatchConfig::default(), |batch: Vec<u64>| {
///     batch.into_iter().map(|x| 2 * x).collect()
/// })
/// .unwrap();
/// thread::scope(|s| {
///     for t in 0..4 {
///         let batcher = batcher.clone();
///         s.spawn(move || {
///             for i in 0..100 {
///                 assert_eq!(batcher.call(t * 1000 + i).unwrap(), 2 * (t * 1000 + i));
///             }
///         });
///     }
/// });
/// batcher.shutdown();
/// assert_eq!(batcher.stats().completed, 400);
/// ```
pub struct Batcher<Req, Resp> {
    owner: Arc<Owner<Req, Slot<Resp>>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            owner: Arc::clone(&self.owner),
        }
    }
}

impl<Req, Resp> fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.owner.inner;
        f.debug_struct("Batcher")
            .field("config", &inner.config)
            .field("workers", &inner.sleepers.len())
            .field("classes", &inner.classes.len())
            .field("in_flight", &inner.in_flight.get())
            .field("shutting_down", &inner.shutting_down.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Batcher<Req, Resp> {
    /// A builder with the default settings of [`BatchConfig::default`]: set what you need, then
    /// [`spawn`](BatcherBuilder::spawn) one worker or
    /// [`spawn_pool`](BatcherBuilder::spawn_pool) several.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder().max_batch_size(8).spawn(|xs: Vec<u32>| xs).unwrap();
    /// assert_eq!(b.call(3).unwrap(), 3);
    /// ```
    pub fn builder() -> BatcherBuilder<Req, Resp> {
        BatcherBuilder::new()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts a batcher with one worker that runs `handler` on each batch; every request costs
    /// 1. The same as `Batcher::builder().config(config).spawn(handler)`.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Config`] if the configuration has a zero bound, [`SpawnError::Thread`] if
    /// the worker thread cannot start.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher};
    ///
    /// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<String>| {
    ///     xs.into_iter().map(|s| s.to_uppercase()).collect()
    /// })
    /// .unwrap();
    /// assert_eq!(b.call("hi".to_string()).unwrap(), "HI");
    /// ```
    pub fn spawn(
        config: BatchConfig,
        handler: impl FnMut(Vec<Req>) -> Vec<Resp> + Send + 'static,
    ) -> Result<Self, SpawnError> {
        Self::builder().config(config).spawn(handler)
    }

    /// Starts a batcher with one worker whose requests cost `cost(&req)` each (for example their
    /// token count), so that a batch never costs more than `max_batch_cost` in total. The same
    /// as `Batcher::builder().config(config).cost(cost).spawn(handler)`.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher, SubmitError};
    ///
    /// let mut config = BatchConfig::default();
    /// config.max_batch_cost = 8;
    /// let b = Batcher::spawn_with_cost(config, |prompt: &String| prompt.len() as u64, |xs| {
    ///     xs.into_iter().map(|p: String| p.len()).collect()
    /// })
    /// .unwrap();
    /// assert_eq!(b.call("short".into()).unwrap(), 5);
    /// // Longer than a whole batch's budget: refused, handed back.
    /// assert!(matches!(b.submit("far too long".into()), Err(SubmitError::TooCostly(_))));
    /// ```
    pub fn spawn_with_cost(
        config: BatchConfig,
        cost: impl Fn(&Req) -> u64 + Send + Sync + 'static,
        handler: impl FnMut(Vec<Req>) -> Vec<Resp> + Send + 'static,
    ) -> Result<Self, SpawnError> {
        Self::builder().config(config).cost(cost).spawn(handler)
    }

    /// Starts one worker per maker. A worker calls its maker on its own thread for its handler,
    /// and again after a panic when `renew` is set.
    fn start<H, M>(settings: Settings<Req>, renew: bool, makers: Vec<M>) -> Result<Self, SpawnError>
    where
        M: FnMut() -> Option<H> + Send + 'static,
        H: FnMut(Vec<Req>) -> Vec<Resp> + 'static,
    {
        let bodies = makers
            .into_iter()
            .map(|make| {
                move |inner: Arc<Inner<Req, Slot<Resp>>>, me: usize| inner.run(me, make, renew)
            })
            .collect();
        Ok(Self {
            owner: Arc::new(Owner::launch(settings, bodies)?),
        })
    }
}

impl<Req: Send + 'static, S: Send + Sync + 'static> Owner<Req, S> {
    /// Builds the shared state and starts one worker thread per body, each running its body
    /// with its index; stops those already started if a thread cannot start.
    fn launch<F>(settings: Settings<Req>, bodies: Vec<F>) -> Result<Self, SpawnError>
    where
        F: FnOnce(Arc<Inner<Req, S>>, usize) + Send + 'static,
    {
        settings.validate()?;
        let Settings {
            config,
            cost,
            mut classes,
            aging,
            join,
        } = settings;
        if classes.is_empty() {
            classes.push(PriorityClass::new());
        }
        let workers = bodies.len();
        let inner = Arc::new(Inner {
            classes: classes.iter().map(Class::new).collect(),
            aging,
            join,
            in_flight: AtomicCounter::new(0),
            shutting_down: AtomicBool::new(false),
            sleepers: (0..workers).map(|_| CachePadded::default()).collect(),
            records: (0..workers)
                .map(|_| CachePadded::new(WorkerRecord::new(classes.len())))
                .collect(),
            idle: AtomicUsize::new(0),
            config,
            cost: cost.unwrap_or_else(|| Box::new(|_| 1)),
            counters: Counters::new(),
        });
        let mut joins = Vec::with_capacity(workers);
        for (me, body) in bodies.into_iter().enumerate() {
            let worker_inner = Arc::clone(&inner);
            let name = if workers == 1 {
                "latchless-batcher".to_string()
            } else {
                format!("latchless-batcher-{me}")
            };
            let spawned = thread::Builder::new().name(name).spawn(move || {
                worker_inner.sleepers[me].parker.register_current();
                body(worker_inner, me);
            });
            match spawned {
                Ok(join) => joins.push(join),
                Err(e) => {
                    // Nothing was accepted yet: the workers already started exit at once.
                    inner.begin_shutdown();
                    for join in joins {
                        let _ = join.join();
                    }
                    return Err(SpawnError::Thread(e));
                }
            }
        }
        Ok(Owner {
            inner,
            workers: joins.iter().map(|j| j.thread().id()).collect(),
            join: Mutex::new(joins),
        })
    }
}

impl<Req, Resp> Batcher<Req, Resp> {
    /// Submits a request; its reply comes through the returned [`Pending`]. Never blocks.
    ///
    /// # Errors
    ///
    /// The request handed back inside a [`SubmitError`]: `TooCostly` if it costs more than
    /// `max_batch_cost`, `Overloaded` if `max_queue` requests are in flight, `ShuttingDown` once
    /// shutdown began.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher};
    ///
    /// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<i32>| xs).unwrap();
    /// let pending: Vec<_> = (0..10).map(|i| b.submit(i).unwrap()).collect();
    /// let replies: Vec<i32> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
    /// assert_eq!(replies, (0..10).collect::<Vec<_>>());
    /// ```
    pub fn submit(&self, req: Req) -> Result<Pending<Resp>, SubmitError<Req>> {
        self.submit_inner(req, self.owner.inner.default_class(), None)
    }

    /// Submits a request that must start computing before `deadline`; otherwise it is answered
    /// [`BatchError::Expired`] and never computed. Never blocks.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, BatchError, Batcher};
    /// use std::time::Instant;
    ///
    /// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<u8>| xs).unwrap();
    /// let already_late = Instant::now();
    /// let p = b.submit_before(1, already_late).unwrap();
    /// assert_eq!(p.wait(), Err(BatchError::Expired));
    /// ```
    pub fn submit_before(
        &self,
        req: Req,
        deadline: Instant,
    ) -> Result<Pending<Resp>, SubmitError<Req>> {
        self.submit_inner(req, self.owner.inner.default_class(), Some(deadline))
    }

    /// Submits a request to priority class `class` (0 the most urgent; see
    /// [`BatcherBuilder::class`]). Never blocks. Without a deadline of its own, it gets its
    /// class's default timeout, if any.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), and [`SubmitError::NoSuchClass`] if the batcher has no
    /// class `class`; `Overloaded` also when the class is at its own bound.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, PriorityClass, SubmitError};
    ///
    /// let b = Batcher::builder()
    ///     .class(PriorityClass::new())
    ///     .class(PriorityClass::new())
    ///     .spawn(|xs: Vec<u8>| xs)
    ///     .unwrap();
    /// assert_eq!(b.submit_to(1, 0).unwrap().wait(), Ok(1));
    /// assert!(matches!(b.submit_to(2, 5), Err(SubmitError::NoSuchClass(2))));
    /// ```
    pub fn submit_to(&self, req: Req, class: usize) -> Result<Pending<Resp>, SubmitError<Req>> {
        self.submit_inner(req, class, None)
    }

    /// [`submit_to`](Self::submit_to) with a deadline, as [`submit_before`](Self::submit_before)
    /// (the class's default timeout does not apply).
    ///
    /// # Errors
    ///
    /// As [`submit_to`](Self::submit_to).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchError, Batcher, PriorityClass};
    /// use std::time::Instant;
    ///
    /// let b = Batcher::builder()
    ///     .class(PriorityClass::new())
    ///     .spawn(|xs: Vec<u8>| xs)
    ///     .unwrap();
    /// let p = b.submit_to_before(1, 0, Instant::now()).unwrap();
    /// assert_eq!(p.wait(), Err(BatchError::Expired));
    /// ```
    pub fn submit_to_before(
        &self,
        req: Req,
        class: usize,
        deadline: Instant,
    ) -> Result<Pending<Resp>, SubmitError<Req>> {
        self.submit_inner(req, class, Some(deadline))
    }

    fn submit_inner(
        &self,
        req: Req,
        class: usize,
        deadline: Option<Instant>,
    ) -> Result<Pending<Resp>, SubmitError<Req>> {
        let slot = Slot::new();
        self.owner
            .inner
            .enqueue(req, class, deadline, Arc::clone(&slot))?;
        Ok(Pending::new(slot))
    }

    /// Submits a request and waits for its reply.
    ///
    /// # Errors
    ///
    /// [`CallError::Refused`] with the request handed back, or [`CallError::Failed`].
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher};
    ///
    /// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<u32>| xs.iter().map(|x| x * x).collect()).unwrap();
    /// assert_eq!(b.call(12).unwrap(), 144);
    /// ```
    pub fn call(&self, req: Req) -> Result<Resp, CallError<Req>> {
        self.submit(req)
            .map_err(CallError::Refused)?
            .wait()
            .map_err(CallError::Failed)
    }

    /// Stops admission, lets the workers drain every accepted request, and returns once every
    /// reply has been sent and every worker has exited. Idempotent; callable from any handle.
    /// Called from inside a handler, it only stops admission (a worker cannot wait for itself).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher};
    ///
    /// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<u8>| xs).unwrap();
    /// let p = b.submit(1).unwrap();
    /// b.shutdown();
    /// assert_eq!(p.wait(), Ok(1)); // accepted before shutdown: answered
    /// assert!(b.submit(2).is_err());
    /// ```
    pub fn shutdown(&self) {
        self.owner.shutdown();
    }

    /// What the batcher has done so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher};
    ///
    /// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<u8>| xs).unwrap();
    /// assert_eq!(b.stats().submitted, 0);
    /// ```
    pub fn stats(&self) -> BatchStats {
        let c = &self.owner.inner.counters;
        let mut stats = BatchStats {
            submitted: c.submitted.sum(),
            refused_overloaded: c.refused_overloaded.sum(),
            refused_shutting_down: c.refused_shutting_down.sum(),
            refused_too_costly: c.refused_too_costly.sum(),
            ..BatchStats::default()
        };
        for record in self.owner.inner.records.iter() {
            record.lock().counts.add_to(&mut stats);
        }
        stats
    }

    /// Distributions of queue time, batch size, compute time and latency so far, every
    /// worker's merged. Each worker keeps its own and records once per batch; reading locks each
    /// in turn (briefly: a worker waits for it at most the time of one merge).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder().spawn_pool(2, || |xs: Vec<u8>| xs).unwrap();
    /// for i in 0..20 {
    ///     b.call(i).unwrap();
    /// }
    /// b.shutdown();
    /// let h = b.histograms();
    /// assert_eq!(h.latency.len(), 20);
    /// println!("p99 latency {} us, mean batch {:.1}", h.latency.quantile(0.99), h.batch_size.mean());
    /// ```
    pub fn histograms(&self) -> BatchHistograms {
        let inner = &self.owner.inner;
        histogram::merged(inner.records.iter().map(|r| &**r), inner.classes.len())
    }

    /// Requests accepted and not yet answered (a snapshot).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher};
    ///
    /// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<u8>| xs).unwrap();
    /// b.shutdown();
    /// assert_eq!(b.in_flight(), 0);
    /// ```
    pub fn in_flight(&self) -> u64 {
        self.owner.inner.in_flight.get()
    }
}

impl<Req, S> Inner<Req, S> {
    /// The class `submit` (and `call`) use, in every batcher kind: the last, least urgent one.
    fn default_class(&self) -> usize {
        self.classes.len() - 1
    }
}

impl<Req, S: slot::Reply> Inner<Req, S> {
    /// Admits a request with its reply slot into class `class`, or hands it back: the
    /// lock-free submit path of every batcher kind.
    fn enqueue(
        &self,
        req: Req,
        class: usize,
        deadline: Option<Instant>,
        slot: Arc<S>,
    ) -> Result<(), SubmitError<Req>> {
        let inner = self;
        let Some(queue_class) = inner.classes.get(class) else {
            return Err(SubmitError::NoSuchClass(req));
        };
        let cost = (inner.cost)(&req);
        if cost > inner.config.max_batch_cost {
            inner.counters.refused_too_costly.increment();
            return Err(SubmitError::TooCostly(req));
        }
        if let Some((count, bound)) = &queue_class.in_flight {
            if count.try_add_within(1, *bound).is_err() {
                inner.counters.refused_overloaded.increment();
                return Err(SubmitError::Overloaded(req));
            }
        }
        let bound = u64::try_from(inner.config.max_queue).unwrap_or(u64::MAX);
        if inner.in_flight.try_add_within(1, bound).is_err() {
            queue_class.release(1);
            inner.counters.refused_overloaded.increment();
            return Err(SubmitError::Overloaded(req));
        }
        // SeqCst fence: pairs with the one in `Inner::may_exit`. Either this load sees the
        // shutdown flag, or the worker's load of `in_flight` sees our increment (and so waits
        // for this request): a request is never accepted after the worker decided to exit.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        if inner.shutting_down.load(Ordering::Relaxed) {
            inner.counters.refused_shutting_down.increment();
            queue_class.release(1);
            // Workers may be waiting for `in_flight` to reach zero.
            inner.release(1);
            return Err(SubmitError::ShuttingDown(req));
        }
        let submitted = now();
        let deadline =
            deadline.or_else(|| queue_class.timeout.and_then(|t| submitted.checked_add(t)));
        queue_class.queue.push(Job {
            req,
            class,
            slot,
            cost,
            submitted,
            deadline,
        });
        inner.counters.submitted.increment();
        inner.wake_one();
        Ok(())
    }
}

impl<Req, S> Owner<Req, S> {
    fn shutdown(&self) {
        self.inner.begin_shutdown();
        if self.workers.contains(&thread::current().id()) {
            return;
        }
        // Held while joining, so a concurrent `shutdown` returns only once the workers are gone.
        let mut joins = self.join.lock().unwrap_or_else(PoisonError::into_inner);
        for join in joins.drain(..) {
            // A worker catches handler panics; an error here could only be a bug of ours, and
            // the replies it owed were sent by its unwinding jobs' slots or never will be.
            let _ = join.join();
        }
    }
}

impl<Req, S> Drop for Owner<Req, S> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
