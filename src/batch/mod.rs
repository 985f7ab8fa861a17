//! [`Batcher`]: dynamic batching in front of any `FnMut(Vec<Req>) -> Vec<Resp>`, the way model
//! servers batch inference requests.
//!
//! Client threads [`submit`](Batcher::submit) requests and get a [`Pending`] reply; one worker
//! thread owns the handler and runs it on batches. A batch closes when it holds
//! `max_batch_size` requests, when the next request would take its total cost past
//! `max_batch_cost` (a token budget, say), or when `max_wait` has passed since its first request
//! was submitted (Triton's "max queue delay"). While the handler runs, new requests accumulate, so
//! the next batch forms from everything that arrived meanwhile.
//!
//! Built from the crate's own primitives: requests travel through an [`MsQueue`]; admission
//! (at most `max_queue` requests waiting or running) is an [`AtomicCounter::try_add_below`];
//! statistics are [`ShardedCounter`]s. Producers never block: a refused request is handed back at
//! once ([`SubmitError`]), and waking the worker is an `unpark` only when it sleeps.
//!
//! # Replies: exactly one per accepted request
//!
//! Every accepted request gets exactly one reply through its [`Pending`]: the handler's result;
//! [`BatchError::HandlerPanicked`] if the handler panicked (the worker survives and serves the
//! next batch); [`BatchError::BadHandlerOutput`] if it returned the wrong number of results;
//! [`BatchError::Expired`] if its deadline passed before its batch ran (it is then never
//! computed). Dropping a `Pending` cancels its request: it is skipped, never computed. A request
//! costlier than a whole batch is refused at `submit`. [`shutdown`](Batcher::shutdown) stops
//! admission, lets the worker drain what was accepted, and returns once every reply is sent;
//! dropping the last handle does the same.
//!
//! # Time and loom
//!
//! Time is read through the crate's `sync` shim. Under loom there is no clock and no timed park:
//! the clock stands still and a timed park is a spurious wake-up, so loom models cover the
//! wake-up protocol (no lost wake-up), shutdown racing submit, and the reply slot, with deadlines
//! either already due or never due; the deadline and `max_wait` paths are tested with real time
//! in `tests/`.

mod slot;

pub use slot::Pending;

use crate::counter::{AtomicCounter, ShardedCounter};
use crate::queue::MsQueue;
use crate::sync::{
    fence, now, thread, Arc, AtomicBool, Backoff, Mutex, Ordering, Parker, UNDER_MODEL_CHECKER,
};
use core::fmt;
use slot::Slot;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

/// How batches are formed and how much may wait.
///
/// # Examples
///
/// ```
/// use latchless::batch::BatchConfig;
/// use std::time::Duration;
///
/// let config = BatchConfig {
///     max_batch_size: 16,
///     max_batch_cost: 4096, // e.g. tokens per batch
///     max_wait: Duration::from_millis(2),
///     max_queue: 256,
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// The most requests in one batch. Must be at least 1.
    pub max_batch_size: usize,
    /// The most total cost in one batch (see [`Batcher::spawn_with_cost`]; every request costs 1
    /// without a cost function). Must be at least 1. A request costlier than this alone is
    /// refused at `submit`.
    pub max_batch_cost: u64,
    /// How long a batch may wait for more requests after its first one was submitted.
    pub max_wait: Duration,
    /// The most requests waiting or running at once; beyond it `submit` refuses with
    /// [`SubmitError::Overloaded`]. Must be at least 1.
    pub max_queue: usize,
}

impl Default for BatchConfig {
    /// 32 requests, no cost budget, 5 ms of waiting, 1,024 requests in flight.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::BatchConfig;
    ///
    /// assert_eq!(BatchConfig::default().max_batch_size, 32);
    /// ```
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_cost: u64::MAX,
            max_wait: Duration::from_millis(5),
            max_queue: 1024,
        }
    }
}

impl BatchConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first zero among `max_batch_size`, `max_batch_cost` and
    /// `max_queue`.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, ConfigError};
    ///
    /// let bad = BatchConfig { max_batch_size: 0, ..Default::default() };
    /// assert!(matches!(bad.validate(), Err(ConfigError::ZeroBatchSize)));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_batch_size == 0 {
            Err(ConfigError::ZeroBatchSize)
        } else if self.max_batch_cost == 0 {
            Err(ConfigError::ZeroBatchCost)
        } else if self.max_queue == 0 {
            Err(ConfigError::ZeroQueue)
        } else {
            Ok(())
        }
    }
}

/// Why [`Batcher::spawn`] refused to start.
///
/// # Examples
///
/// ```
/// use latchless::batch::{BatchConfig, Batcher, ConfigError};
///
/// let config = BatchConfig { max_queue: 0, ..Default::default() };
/// let err = Batcher::spawn(config, |xs: Vec<u8>| xs).unwrap_err();
/// assert!(matches!(err, ConfigError::ZeroQueue));
/// assert_eq!(err.to_string(), "max_queue must be at least 1");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_batch_size` is 0.
    ZeroBatchSize,
    /// `max_batch_cost` is 0.
    ZeroBatchCost,
    /// `max_queue` is 0.
    ZeroQueue,
    /// The worker thread could not be started.
    Spawn(std::io::Error),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroBatchSize => f.write_str("max_batch_size must be at least 1"),
            Self::ZeroBatchCost => f.write_str("max_batch_cost must be at least 1"),
            Self::ZeroQueue => f.write_str("max_queue must be at least 1"),
            Self::Spawn(e) => write!(f, "could not start the batcher's worker thread: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Batcher::submit`] refused a request. The request is handed back inside.
///
/// # Examples
///
/// ```
/// use latchless::batch::{BatchConfig, Batcher, SubmitError};
///
/// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<u8>| xs).unwrap();
/// b.shutdown();
/// let err = b.submit(5).unwrap_err();
/// assert!(matches!(err, SubmitError::ShuttingDown(5)));
/// assert_eq!(err.into_inner(), 5);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum SubmitError<Req> {
    /// `max_queue` requests are already waiting or running.
    Overloaded(Req),
    /// The batcher is shutting down.
    ShuttingDown(Req),
    /// The request alone costs more than `max_batch_cost`: it could never be batched.
    TooCostly(Req),
}

impl<Req> SubmitError<Req> {
    /// The refused request.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::SubmitError;
    ///
    /// assert_eq!(SubmitError::Overloaded("req").into_inner(), "req");
    /// ```
    pub fn into_inner(self) -> Req {
        match self {
            Self::Overloaded(r) | Self::ShuttingDown(r) | Self::TooCostly(r) => r,
        }
    }
}

impl<Req> fmt::Debug for SubmitError<Req> {
    /// Names the reason, never the request.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Overloaded(_) => "Overloaded(..)",
            Self::ShuttingDown(_) => "ShuttingDown(..)",
            Self::TooCostly(_) => "TooCostly(..)",
        })
    }
}

impl<Req> fmt::Display for SubmitError<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Overloaded(_) => "the batcher's queue is full",
            Self::ShuttingDown(_) => "the batcher is shutting down",
            Self::TooCostly(_) => "the request costs more than a whole batch may",
        })
    }
}

impl<Req> std::error::Error for SubmitError<Req> {}

/// How an accepted request failed.
///
/// # Examples
///
/// ```
/// use latchless::batch::{BatchConfig, BatchError, Batcher};
///
/// // A handler that loses a result.
/// let b = Batcher::spawn(BatchConfig::default(), |mut xs: Vec<u8>| {
///     xs.pop();
///     xs
/// })
/// .unwrap();
/// assert_eq!(
///     b.submit(1).unwrap().wait(),
///     Err(BatchError::BadHandlerOutput { expected: 1, got: 0 })
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BatchError {
    /// Its deadline passed before its batch ran; it was not computed.
    Expired,
    /// The handler panicked on its batch.
    HandlerPanicked,
    /// The handler returned `got` results for a batch of `expected` requests.
    BadHandlerOutput {
        /// The batch's size.
        expected: usize,
        /// The number of results returned.
        got: usize,
    },
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired => f.write_str("the request's deadline passed before it was computed"),
            Self::HandlerPanicked => f.write_str("the batch handler panicked"),
            Self::BadHandlerOutput { expected, got } => write!(
                f,
                "the batch handler returned {got} results for {expected} requests"
            ),
        }
    }
}

impl std::error::Error for BatchError {}

/// Why [`Batcher::call`] failed: refused (the request handed back), or failed after acceptance.
///
/// # Examples
///
/// ```
/// use latchless::batch::{BatchConfig, Batcher, CallError};
///
/// let b = Batcher::spawn(BatchConfig::default(), |xs: Vec<u8>| xs).unwrap();
/// b.shutdown();
/// match b.call(3) {
///     Err(CallError::Refused(e)) => assert_eq!(e.into_inner(), 3),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum CallError<Req> {
    /// Refused at submission; the request is inside.
    Refused(SubmitError<Req>),
    /// Accepted, then failed.
    Failed(BatchError),
}

impl<Req> fmt::Debug for CallError<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(e) => f.debug_tuple("Refused").field(e).finish(),
            Self::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<Req> fmt::Display for CallError<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(e) => write!(f, "request refused: {e}"),
            Self::Failed(e) => write!(f, "request failed: {e}"),
        }
    }
}

impl<Req> std::error::Error for CallError<Req> {}

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

/// The statistics' counters: submitters write the sharded ones, the worker the plain ones.
struct Counters {
    submitted: ShardedCounter,
    refused_overloaded: ShardedCounter,
    refused_shutting_down: ShardedCounter,
    refused_too_costly: ShardedCounter,
    completed: AtomicCounter,
    failed: AtomicCounter,
    expired: AtomicCounter,
    cancelled: AtomicCounter,
    batches: AtomicCounter,
    batch_sizes: [AtomicCounter; 8],
    queue_wait_nanos: AtomicCounter,
}

impl Counters {
    fn new() -> Self {
        let sharded = ShardedCounter::for_stats;
        Self {
            submitted: sharded(),
            refused_overloaded: sharded(),
            refused_shutting_down: sharded(),
            refused_too_costly: sharded(),
            completed: AtomicCounter::new(0),
            failed: AtomicCounter::new(0),
            expired: AtomicCounter::new(0),
            cancelled: AtomicCounter::new(0),
            batches: AtomicCounter::new(0),
            batch_sizes: core::array::from_fn(|_| AtomicCounter::new(0)),
            queue_wait_nanos: AtomicCounter::new(0),
        }
    }
}

/// The histogram bucket of a batch size: 1, 2, 3–4, 5–8, ..., 65+.
fn size_bucket(n: usize) -> usize {
    let b = usize::BITS - n.saturating_sub(1).leading_zeros();
    (b as usize).min(7)
}

/// One accepted request.
struct Job<Req, Resp> {
    req: Req,
    slot: Arc<Slot<Resp>>,
    cost: u64,
    submitted: Instant,
    deadline: Option<Instant>,
}

/// What the handles and the worker share.
struct Shared<Req, Resp> {
    queue: MsQueue<Job<Req, Resp>>,
    /// Requests accepted and not yet answered (waiting or running): the admission bound.
    in_flight: AtomicCounter,
    shutting_down: AtomicBool,
    /// Set by the worker just before it parks.
    sleeping: AtomicBool,
    /// Where the worker parks.
    parker: Parker,
    config: BatchConfig,
    cost: Box<dyn Fn(&Req) -> u64 + Send + Sync>,
    counters: Counters,
}

/// Owned by the handles: when the last one drops, the batcher shuts down.
struct Owner<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    /// The worker thread's id, to tell a `shutdown` from inside the handler.
    worker: thread::Thread,
    join: Mutex<Option<thread::JoinHandle<()>>>,
}

/// A dynamic batcher: a cheap, cloneable handle (`Send + Sync` when requests and replies are
/// `Send`) to a worker thread that runs a handler on batches of requests. See the
/// [module docs](self).
///
/// | method | progress |
/// |---|---|
/// | [`submit`](Self::submit), [`submit_with`](Self::submit_with) | lock-free: never blocks; refusals return at once |
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
    owner: Arc<Owner<Req, Resp>>,
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
        let shared = &self.owner.shared;
        f.debug_struct("Batcher")
            .field("config", &shared.config)
            .field("in_flight", &shared.in_flight.get())
            .field(
                "shutting_down",
                &shared.shutting_down.load(Ordering::SeqCst),
            )
            .finish_non_exhaustive()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts a batcher whose worker runs `handler` on each batch; every request costs 1.
    ///
    /// The handler must return one result per request, in order. It runs on the worker thread
    /// only, so it may keep state (`FnMut`).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the configuration has a zero bound, or the worker thread cannot start.
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
    ) -> Result<Self, ConfigError> {
        Self::spawn_with_cost(config, |_| 1, handler)
    }

    /// Starts a batcher whose requests cost `cost(&req)` each (for example their token count),
    /// so that a batch never costs more than `max_batch_cost` in total.
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
    /// let config = BatchConfig { max_batch_cost: 8, ..Default::default() };
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
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let shared = Arc::new(Shared {
            queue: MsQueue::new(),
            in_flight: AtomicCounter::new(0),
            shutting_down: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            parker: Parker::default(),
            config,
            cost: Box::new(cost),
            counters: Counters::new(),
        });
        let worker_shared = Arc::clone(&shared);
        let join = thread::Builder::new()
            .name("latchless-batcher".into())
            .spawn(move || {
                worker_shared.parker.register_current();
                worker_shared.run(handler);
            })
            .map_err(ConfigError::Spawn)?;
        Ok(Self {
            owner: Arc::new(Owner {
                shared,
                worker: join.thread().clone(),
                join: Mutex::new(Some(join)),
            }),
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
        self.submit_inner(req, None)
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
    /// let p = b.submit_with(1, already_late).unwrap();
    /// assert_eq!(p.wait(), Err(BatchError::Expired));
    /// ```
    pub fn submit_with(
        &self,
        req: Req,
        deadline: Instant,
    ) -> Result<Pending<Resp>, SubmitError<Req>> {
        self.submit_inner(req, Some(deadline))
    }

    fn submit_inner(
        &self,
        req: Req,
        deadline: Option<Instant>,
    ) -> Result<Pending<Resp>, SubmitError<Req>> {
        let shared = &self.owner.shared;
        let cost = (shared.cost)(&req);
        if cost > shared.config.max_batch_cost {
            shared.counters.refused_too_costly.increment();
            return Err(SubmitError::TooCostly(req));
        }
        let bound = u64::try_from(shared.config.max_queue).unwrap_or(u64::MAX);
        if shared.in_flight.try_add_below(1, bound).is_err() {
            shared.counters.refused_overloaded.increment();
            return Err(SubmitError::Overloaded(req));
        }
        // SeqCst fence: pairs with the one in `Shared::may_exit`. Either this load sees the
        // shutdown flag, or the worker's load of `in_flight` sees our increment (and so waits
        // for this request): a request is never accepted after the worker decided to exit.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        if shared.shutting_down.load(Ordering::Relaxed) {
            shared.in_flight.decrement();
            shared.counters.refused_shutting_down.increment();
            // The worker may be waiting for `in_flight` to reach zero.
            shared.wake();
            return Err(SubmitError::ShuttingDown(req));
        }
        let slot = Slot::new();
        shared.queue.push(Job {
            req,
            slot: Arc::clone(&slot),
            cost,
            submitted: now(),
            deadline,
        });
        shared.counters.submitted.increment();
        shared.wake();
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

    /// Stops admission, lets the worker drain every accepted request, and returns once every
    /// reply has been sent and the worker has exited. Idempotent; callable from any handle. Called
    /// from inside the handler, it only stops admission (the worker cannot wait for itself).
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
        let c = &self.owner.shared.counters;
        BatchStats {
            submitted: c.submitted.sum(),
            completed: c.completed.get(),
            failed: c.failed.get(),
            expired: c.expired.get(),
            cancelled: c.cancelled.get(),
            refused_overloaded: c.refused_overloaded.sum(),
            refused_shutting_down: c.refused_shutting_down.sum(),
            refused_too_costly: c.refused_too_costly.sum(),
            batches: c.batches.get(),
            batch_sizes: core::array::from_fn(|i| c.batch_sizes[i].get()),
            queue_wait: Duration::from_nanos(c.queue_wait_nanos.get()),
        }
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
        self.owner.shared.in_flight.get()
    }
}

impl<Req, Resp> Owner<Req, Resp> {
    fn shutdown(&self) {
        // SeqCst: totally ordered with the fences in `submit_inner` and `may_exit`.
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.wake();
        if thread::current().id() == self.worker.id() {
            return;
        }
        // Held while joining, so a concurrent `shutdown` returns only once the worker is gone.
        let mut join = self.join.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = join.take() {
            // The worker catches handler panics; an error here could only be a bug of ours, and
            // the replies it owed were sent by its unwinding jobs' slots or never will be.
            let _ = handle.join();
        }
    }
}

impl<Req, Resp> Drop for Owner<Req, Resp> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl<Req, Resp> Shared<Req, Resp> {
    /// The worker: forms batches and runs the handler until shutdown has drained every request.
    fn run(&self, mut handler: impl FnMut(Vec<Req>) -> Vec<Resp>) {
        // A request popped that would have taken the previous batch past its cost budget.
        let mut carry: Option<Job<Req, Resp>> = None;
        loop {
            let Some(first) = carry.take().or_else(|| self.next_live()) else {
                if self.may_exit() {
                    return;
                }
                self.sleep(None, false);
                continue;
            };
            let close_at = first.submitted.checked_add(self.config.max_wait);
            let mut cost = first.cost;
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch_size {
                match self.next_live() {
                    Some(job) => {
                        if cost.saturating_add(job.cost) > self.config.max_batch_cost {
                            carry = Some(job);
                            break;
                        }
                        cost += job.cost;
                        batch.push(job);
                    }
                    None => {
                        // Relaxed: a hint to stop waiting; draining does not depend on it.
                        if self.shutting_down.load(Ordering::Relaxed) {
                            break;
                        }
                        let left = close_at.and_then(|t| t.checked_duration_since(now()));
                        match left {
                            Some(left) if !left.is_zero() => self.sleep(Some(left), true),
                            // `max_wait` passed (or is too far to represent: then it is `None`
                            // from `checked_add`, and we wait untimed).
                            _ if close_at.is_some() => break,
                            _ => self.sleep(None, true),
                        }
                    }
                }
            }
            self.process(batch, &mut handler);
        }
    }

    /// Pops the next request still worth computing, answering or dropping the others.
    fn next_live(&self) -> Option<Job<Req, Resp>> {
        loop {
            let job = self.queue.pop()?;
            if let Some(job) = self.screen(job) {
                return Some(job);
            }
        }
    }

    /// Passes a live job through; answers an expired one `Expired` and skips a cancelled one,
    /// releasing their admission.
    fn screen(&self, job: Job<Req, Resp>) -> Option<Job<Req, Resp>> {
        if job.slot.is_cancelled() {
            self.counters.cancelled.increment();
            self.in_flight.decrement();
        } else if job.deadline.is_some_and(|d| now() >= d) {
            self.counters.expired.increment();
            // Released before the reply, as in `process`.
            self.in_flight.decrement();
            job.slot.send(Err(BatchError::Expired));
        } else {
            return Some(job);
        }
        None
    }

    /// Runs the handler on a batch and answers every request in it.
    fn process(&self, batch: Vec<Job<Req, Resp>>, handler: &mut impl FnMut(Vec<Req>) -> Vec<Resp>) {
        // Screened again: a request may have been cancelled or expired while the batch filled.
        let batch: Vec<_> = batch.into_iter().filter_map(|j| self.screen(j)).collect();
        let n = batch.len();
        if n == 0 {
            return;
        }
        let start = now();
        let mut waited = 0u64;
        let (reqs, slots): (Vec<Req>, Vec<Arc<Slot<Resp>>>) = batch
            .into_iter()
            .map(|j| {
                let w = start.saturating_duration_since(j.submitted).as_nanos();
                waited = waited.saturating_add(u64::try_from(w).unwrap_or(u64::MAX));
                (j.req, j.slot)
            })
            .unzip();
        self.counters.batches.increment();
        self.counters.batch_sizes[size_bucket(n)].increment();
        self.counters.queue_wait_nanos.add(waited);
        // The handler's state after a panic is the user's to judge; the worker only needs to
        // answer the batch and go on.
        let replies: Result<Vec<Resp>, BatchError> =
            match catch_unwind(AssertUnwindSafe(|| handler(reqs))) {
                Ok(resps) if resps.len() == n => Ok(resps),
                Ok(resps) => Err(BatchError::BadHandlerOutput {
                    expected: n,
                    got: resps.len(),
                }),
                Err(_panic) => Err(BatchError::HandlerPanicked),
            };
        match &replies {
            Ok(_) => self.counters.completed.add(n as u64),
            Err(_) => self.counters.failed.add(n as u64),
        };
        // Admission is released before the replies go out, so a client that has its reply can
        // submit again at once; shutdown still waits for these replies, since only this thread
        // (the worker) sends them and it exits after this call.
        self.in_flight.sub(n as u64);
        match replies {
            Ok(resps) => {
                for (slot, resp) in slots.iter().zip(resps) {
                    slot.send(Ok(resp));
                }
            }
            Err(err) => {
                for slot in &slots {
                    slot.send(Err(err));
                }
            }
        }
    }

    /// Whether shutdown began and every accepted request has been answered.
    fn may_exit(&self) -> bool {
        // SeqCst: see `Owner::shutdown`.
        if !self.shutting_down.load(Ordering::SeqCst) {
            return false;
        }
        // SeqCst fence: pairs with the one in `submit_inner` (see there).
        fence(Ordering::SeqCst);
        self.in_flight.get() == 0
    }

    /// Wakes the worker if it sleeps, after the caller changed what it waits for (pushed a job,
    /// released admission, began shutdown).
    fn wake(&self) {
        // SeqCst fence: pairs with the one in `sleep`. Either the worker, about to park, sees the
        // caller's change (a job in the queue, `in_flight` or the shutdown flag), or we see it
        // sleeping and wake it: no lost wake-up.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        if self.sleeping.load(Ordering::Relaxed) {
            self.parker.unpark();
        }
    }

    /// Parks the worker until a producer or shutdown wakes it, or `timeout` passes; `filling`
    /// says whether a batch is waiting for more requests. It first
    /// spins a little (crossbeam's `Backoff`), so that a request arriving right after a batch is
    /// picked up without a park and an unpark; under loom it parks at once, to keep models small.
    fn sleep(&self, timeout: Option<Duration>, filling: bool) {
        if !UNDER_MODEL_CHECKER {
            let backoff = Backoff::new();
            while !backoff.is_completed() {
                if !self.queue.is_empty() {
                    return;
                }
                backoff.snooze();
            }
        }
        // Relaxed: ordered by the fence below.
        self.sleeping.store(true, Ordering::Relaxed);
        // SeqCst fence: pairs with the one in `wake` (see there).
        fence(Ordering::SeqCst);
        // While a batch fills, shutdown ends the wait: the batch must close at once rather than
        // sleep out `max_wait`. Between batches, shutdown ends it only once every accepted
        // request is answered (a refused submitter still releasing its place wakes us after).
        // Relaxed: ordered by the fence above, which pairs with the one in `wake` after
        // `shutdown`'s store.
        let stop = if filling {
            self.shutting_down.load(Ordering::Relaxed)
        } else {
            self.may_exit()
        };
        let idle = self.queue.is_empty() && !stop;
        if idle {
            match timeout {
                Some(t) => self.parker.park_timeout(t),
                None => self.parker.park(),
            }
        }
        // Relaxed: a stale `true` only costs a producer one needless unpark.
        self.sleeping.store(false, Ordering::Relaxed);
    }
}
