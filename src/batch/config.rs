//! How a batcher is configured: [`BatcherBuilder`] and the settings it holds, [`BatchConfig`].

use super::class::{PriorityClass, MAX_CLASSES};
use super::error::{ConfigError, SpawnError};
use super::step::{JoinPolicy, StepHandler};
use super::stream::StreamBatcher;
use super::Batcher;
use core::fmt;
use core::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// How batches are formed and how much may wait.
///
/// # Examples
///
/// ```
/// use latchless::batch::BatchConfig;
/// use std::time::Duration;
///
/// let mut config = BatchConfig::default();
/// config.max_batch_size = 16;
/// config.max_batch_cost = 4096; // e.g. tokens per batch
/// config.max_wait = Duration::from_millis(2);
/// config.max_queue = 256;
/// assert!(config.validate().is_ok());
/// ```
///
/// The struct is `#[non_exhaustive]`, so that a setting can be added without breaking anyone:
/// start from [`BatchConfig::default`] and assign the fields, or set them one by one on
/// [`Batcher::builder`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// [`SubmitError::Overloaded`](super::SubmitError::Overloaded). Must be at least 1.
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
    /// let mut bad = BatchConfig::default();
    /// bad.max_batch_size = 0;
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

/// Configures and starts a [`Batcher`]: from [`Batcher::builder`].
///
/// Every setting has the default of [`BatchConfig::default`]; every request costs 1 unless
/// [`cost`](Self::cost) says otherwise. [`spawn`](Self::spawn) starts one worker with one handler;
/// [`spawn_pool`](Self::spawn_pool) starts several, each with its own handler made by a factory.
///
/// # Examples
///
/// ```
/// use latchless::batch::Batcher;
/// use std::time::Duration;
///
/// let b = Batcher::builder()
///     .max_batch_size(16)
///     .max_batch_cost(4096) // e.g. tokens per batch
///     .cost(|prompt: &String| prompt.len() as u64)
///     .max_wait(Duration::from_millis(2))
///     .max_queue(256)
///     .spawn_pool(2, || |prompts: Vec<String>| prompts.iter().map(|p| p.len()).collect())
///     .unwrap();
/// assert_eq!(b.call("four".to_string()).unwrap(), 4);
/// ```
#[must_use = "a builder does nothing until `spawn` or `spawn_pool`"]
pub struct BatcherBuilder<Req, Resp> {
    settings: Settings<Req>,
    _replies: PhantomData<fn() -> Resp>,
}

/// A request's cost, shared by the submitters.
pub(super) type CostFn<Req> = Box<dyn Fn(&Req) -> u64 + Send + Sync>;

/// Everything a builder collects.
pub(super) struct Settings<Req> {
    pub(super) config: BatchConfig,
    pub(super) cost: Option<CostFn<Req>>,
    /// Most urgent first; none means one class with no bound or timeout of its own.
    pub(super) classes: Vec<PriorityClass>,
    pub(super) aging: u32,
    pub(super) join: JoinPolicy,
}

impl<Req> Settings<Req> {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.config.validate()?;
        self.join.validate()?;
        if self.classes.len() > MAX_CLASSES {
            return Err(ConfigError::TooManyClasses);
        }
        match self.classes.iter().position(|c| c.max_queue == Some(0)) {
            Some(class) => Err(ConfigError::ZeroClassQueue { class }),
            None => Ok(()),
        }
    }
}

impl<Req, Resp> fmt::Debug for BatcherBuilder<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatcherBuilder")
            .field("config", &self.settings.config)
            .field("cost", &self.settings.cost.as_ref().map(|_| "custom"))
            .field("classes", &self.settings.classes)
            .field("aging", &self.settings.aging)
            .field("join", &self.settings.join)
            .finish()
    }
}

impl<Req, Resp> BatcherBuilder<Req, Resp> {
    pub(super) fn new() -> Self {
        Self {
            settings: Settings {
                config: BatchConfig::default(),
                cost: None,
                classes: Vec::new(),
                aging: 4,
                join: JoinPolicy::default(),
            },
            _replies: PhantomData,
        }
    }

    /// The most requests in one batch (default 32). Must be at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder().max_batch_size(4).spawn(|xs: Vec<u8>| xs).unwrap();
    /// assert_eq!(b.call(7).unwrap(), 7);
    /// ```
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.settings.config.max_batch_size = n;
        self
    }

    /// The most total [`cost`](Self::cost) in one batch (default: unlimited). Must be at least 1.
    /// A request costlier than this alone is refused at `submit` with
    /// [`SubmitError::TooCostly`](super::SubmitError::TooCostly).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, SubmitError};
    ///
    /// let b = Batcher::builder()
    ///     .max_batch_cost(3)
    ///     .cost(|xs: &Vec<u8>| xs.len() as u64)
    ///     .spawn(|batch: Vec<Vec<u8>>| batch)
    ///     .unwrap();
    /// assert!(matches!(b.submit(vec![0; 4]), Err(SubmitError::TooCostly(_))));
    /// ```
    pub fn max_batch_cost(mut self, cost: u64) -> Self {
        self.settings.config.max_batch_cost = cost;
        self
    }

    /// How long a batch that is not full may wait for companions, counted from its first
    /// request's submission (default 5 ms). With several workers a batch closes at once,
    /// whatever `max_wait` says, while another worker is idle: holding requests back then
    /// would only leave a worker unused.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    /// use std::time::Duration;
    ///
    /// let b = Batcher::builder().max_wait(Duration::ZERO).spawn(|xs: Vec<u8>| xs).unwrap();
    /// assert_eq!(b.call(1).unwrap(), 1);
    /// ```
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.settings.config.max_wait = wait;
        self
    }

    /// The most requests waiting or running at once (default 1,024); beyond it `submit` refuses
    /// with [`SubmitError::Overloaded`](super::SubmitError::Overloaded). Must be at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, ConfigError, SpawnError};
    ///
    /// let err = Batcher::builder().max_queue(0).spawn(|xs: Vec<u8>| xs).unwrap_err();
    /// assert!(matches!(err, SpawnError::Config(ConfigError::ZeroQueue)));
    /// ```
    pub fn max_queue(mut self, n: usize) -> Self {
        self.settings.config.max_queue = n;
        self
    }

    /// Every setting of `config` at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{BatchConfig, Batcher};
    ///
    /// let mut config = BatchConfig::default();
    /// config.max_batch_size = 8;
    /// let b = Batcher::builder().config(config).spawn(|xs: Vec<u8>| xs).unwrap();
    /// assert_eq!(b.call(2).unwrap(), 2);
    /// ```
    pub fn config(mut self, config: BatchConfig) -> Self {
        self.settings.config = config;
        self
    }

    /// What a request costs towards [`max_batch_cost`](Self::max_batch_cost), for example its
    /// token count (default: 1 per request). Called once per request, on the submitting thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder()
    ///     .max_batch_cost(8)
    ///     .cost(|prompt: &String| prompt.len() as u64)
    ///     .spawn(|xs: Vec<String>| xs.into_iter().map(|p| p.len()).collect())
    ///     .unwrap();
    /// assert_eq!(b.call("short".into()).unwrap(), 5);
    /// ```
    pub fn cost(mut self, cost: impl Fn(&Req) -> u64 + Send + Sync + 'static) -> Self {
        self.settings.cost = Some(Box::new(cost));
        self
    }

    /// Adds a priority class; the first one added is the most urgent (class 0), the last the
    /// least (and the class of [`submit`](Batcher::submit) and [`call`](Batcher::call)). With
    /// none added, a batcher has one class with no bound or timeout of its own. At most 64.
    ///
    /// A worker forming a batch takes the waiting requests of the most urgent class first, then
    /// fills the batch from the next classes in order. Strict priority would let a busy urgent
    /// class starve the others, so classes age: a class with requests waiting that has been
    /// passed over [`aging`](Self::aging) batches in a row leads the next batch (of several
    /// such, the one passed over longest). So the request at the head of a class's queue waits
    /// at most `aging + classes - 1` batch starts (every worker's starts count, and workers
    /// racing at a start may add one each), and each batch that class leads takes at least one
    /// of its requests.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, PriorityClass};
    ///
    /// let b = Batcher::builder()
    ///     .class(PriorityClass::new()) // 0: urgent
    ///     .class(PriorityClass::new().max_queue(256)) // 1: the rest
    ///     .aging(8)
    ///     .spawn(|xs: Vec<&str>| xs)
    ///     .unwrap();
    /// assert_eq!(b.submit_to("now", 0).unwrap().wait(), Ok("now"));
    /// assert_eq!(b.call("later").unwrap(), "later");
    /// ```
    pub fn class(mut self, class: PriorityClass) -> Self {
        self.settings.classes.push(class);
        self
    }

    /// How many batches in a row a class with requests waiting may be passed over before it
    /// leads one (default 4; see [`class`](Self::class)). 0 turns priority into rotation among
    /// the classes with requests waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, PriorityClass};
    ///
    /// let b = Batcher::builder()
    ///     .class(PriorityClass::new())
    ///     .class(PriorityClass::new())
    ///     .aging(u32::MAX) // strict priority
    ///     .spawn(|xs: Vec<u8>| xs)
    ///     .unwrap();
    /// assert_eq!(b.call(1).unwrap(), 1);
    /// ```
    pub fn aging(mut self, batches: u32) -> Self {
        self.settings.aging = batches;
        self
    }

    /// When waiting items may join the running batch of a [`StreamBatcher`] (default
    /// [`JoinPolicy::default`]; see there for the rule). Not used by the whole-request
    /// [`Batcher`].
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, JoinPolicy, Joined, Step, StepHandler};
    ///
    /// struct Done;
    /// impl StepHandler for Done {
    ///     type Req = u8;
    ///     type State = ();
    ///     type Chunk = ();
    ///     type Out = u8;
    ///     fn join(&mut self, xs: Vec<u8>) -> Vec<Joined<(), u8>> {
    ///         xs.into_iter().map(Joined::Finished).collect()
    ///     }
    ///     fn step(&mut self, _: &mut [()]) -> Vec<Step<(), u8>> { Vec::new() }
    /// }
    ///
    /// let b = Batcher::builder().join_policy(JoinPolicy::eager()).spawn_steps(Done).unwrap();
    /// assert_eq!(b.submit(4).unwrap().count(), 1);
    /// ```
    pub fn join_policy(mut self, policy: JoinPolicy) -> Self {
        self.settings.join = policy;
        self
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> BatcherBuilder<Req, Resp> {
    /// Starts the batcher with one worker thread, which runs `handler` on each batch.
    ///
    /// The handler must return one result per request, in order. It runs on the worker thread
    /// only, so it may keep state (`FnMut`); after a panic (its batch is answered
    /// [`BatchError::HandlerPanicked`](super::BatchError::HandlerPanicked)) the same handler
    /// serves the next batch.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Config`] if a bound is zero, [`SpawnError::Thread`] if the worker thread
    /// cannot start.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    ///
    /// let b = Batcher::builder()
    ///     .spawn(|xs: Vec<String>| xs.into_iter().map(|s| s.to_uppercase()).collect())
    ///     .unwrap();
    /// assert_eq!(b.call("hi".to_string()).unwrap(), "HI");
    /// ```
    pub fn spawn(
        self,
        handler: impl FnMut(Vec<Req>) -> Vec<Resp> + Send + 'static,
    ) -> Result<Batcher<Req, Resp>, SpawnError> {
        // Its handler is kept after a panic (`renew` false): there is no second one.
        Batcher::start(self.settings, false, once(handler))
    }

    /// Starts the batcher with `workers` worker threads, each running its own handler made by
    /// `factory` on that worker's thread (so the handler need not be `Send`: it may own a model
    /// and its scratch buffers).
    ///
    /// Batches form late: a worker that becomes free takes what is waiting, up to the limits,
    /// so more workers mean more batches in parallel, never smaller batches for nothing. A
    /// handler that panics is dropped and the worker makes a fresh one from the factory before
    /// its next batch; if the factory itself panics, that batch is answered
    /// [`BatchError::HandlerPanicked`](super::BatchError::HandlerPanicked) and the worker tries
    /// again on the next. Every guarantee of the single worker holds across the pool: exactly
    /// one reply per accepted request, cancellation, deadlines, and shutdown draining.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Config`] with [`ConfigError::ZeroWorkers`] if `workers` is 0; otherwise as
    /// [`spawn`](Self::spawn).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::Batcher;
    /// use std::thread;
    ///
    /// // Two workers, each with its own running total (state that is not shared).
    /// let b = Batcher::builder()
    ///     .spawn_pool(2, || {
    ///         let mut seen = 0u64;
    ///         move |xs: Vec<u64>| {
    ///             seen += xs.len() as u64;
    ///             xs.into_iter().map(|x| x + 1).collect()
    ///         }
    ///     })
    ///     .unwrap();
    /// thread::scope(|s| {
    ///     for t in 0..4u64 {
    ///         let b = b.clone();
    ///         s.spawn(move || {
    ///             for i in 0..50 {
    ///                 assert_eq!(b.call(t * 100 + i).unwrap(), t * 100 + i + 1);
    ///             }
    ///         });
    ///     }
    /// });
    /// b.shutdown();
    /// assert_eq!(b.stats().completed, 200);
    /// ```
    pub fn spawn_pool<H>(
        self,
        workers: usize,
        factory: impl Fn() -> H + Send + Sync + 'static,
    ) -> Result<Batcher<Req, Resp>, SpawnError>
    where
        H: FnMut(Vec<Req>) -> Vec<Resp> + 'static,
    {
        Batcher::start(self.settings, true, from_factory(workers, factory)?)
    }

    /// Starts a continuous batcher: one worker thread runs `handler`, a [`StepHandler`], on a
    /// batch that waiting requests join (under the [`join_policy`](Self::join_policy), at most
    /// `max_batch_size` running items, at most `max_batch_cost` total cost of running items)
    /// and finished ones leave between steps; each request's chunks and final output stream
    /// to its [`ChunkStream`](super::ChunkStream). See [`StreamBatcher`] for what the settings
    /// mean there and for the guarantees.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Config`] if a bound is zero or the join policy is invalid,
    /// [`SpawnError::Thread`] if the worker thread cannot start.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, Joined, Step, StepHandler, Streamed};
    ///
    /// /// Repeats each request's text `n` times, one copy per step.
    /// struct Repeat;
    /// impl StepHandler for Repeat {
    ///     type Req = (String, u32);
    ///     type State = (String, u32);
    ///     type Chunk = String;
    ///     type Out = ();
    ///     fn join(&mut self, reqs: Vec<(String, u32)>) -> Vec<Joined<(String, u32), ()>> {
    ///         reqs.into_iter().map(Joined::Running).collect()
    ///     }
    ///     fn step(&mut self, items: &mut [(String, u32)]) -> Vec<Step<String, ()>> {
    ///         items
    ///             .iter_mut()
    ///             .map(|(s, n)| if *n == 0 { Step::Finish(()) } else { *n -= 1; Step::Chunk(s.clone()) })
    ///             .collect()
    ///     }
    /// }
    ///
    /// let b = Batcher::builder()
    ///     .max_batch_size(16) // running items
    ///     .max_batch_cost(1000) // total cost of running items
    ///     .cost(|(s, n): &(String, u32)| s.len() as u64 * u64::from(*n))
    ///     .spawn_steps(Repeat)
    ///     .unwrap();
    /// let chunks = b.submit(("ab".into(), 2)).unwrap().filter(|i| !i.is_done()).count();
    /// assert_eq!(chunks, 2);
    /// ```
    pub fn spawn_steps<H>(
        self,
        handler: H,
    ) -> Result<StreamBatcher<Req, H::Chunk, Resp>, SpawnError>
    where
        H: StepHandler<Req = Req, Out = Resp> + Send + 'static,
        H::Chunk: Send + 'static,
    {
        // Its handler is kept after a panic (`renew` false): there is no second one.
        StreamBatcher::start(self.settings, false, once(handler))
    }

    /// Starts a continuous batcher with `workers` worker threads, each running its own
    /// [`StepHandler`] made by `factory` on that worker's thread (so the handler need not be
    /// `Send`: it may own a model and its KV cache), each with its own running batch. Waiting
    /// requests go to whichever worker joins them first; a worker that joined items and leaves
    /// others waiting wakes a sleeping one for them. (An item a worker popped that did not fit
    /// in its batch's remaining cost budget waits for that worker's running items to finish,
    /// even if another worker is idle: keep `max_batch_cost` well above one request's cost.) A handler that panics is dropped with the
    /// items of that join or step and replaced from the factory; every guarantee of
    /// [`spawn_steps`](Self::spawn_steps) holds across the pool, and the limits
    /// (`max_batch_size`, `max_batch_cost`, the join policy) apply to each worker's batch.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Config`] with [`ConfigError::ZeroWorkers`] if `workers` is 0; otherwise as
    /// [`spawn_steps`](Self::spawn_steps).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::batch::{Batcher, Joined, Step, StepHandler, Streamed};
    ///
    /// /// Finishes each item at its first step with its request doubled.
    /// struct Double;
    /// impl StepHandler for Double {
    ///     type Req = u32;
    ///     type State = u32;
    ///     type Chunk = ();
    ///     type Out = u32;
    ///     fn join(&mut self, xs: Vec<u32>) -> Vec<Joined<u32, u32>> {
    ///         xs.into_iter().map(Joined::Running).collect()
    ///     }
    ///     fn step(&mut self, xs: &mut [u32]) -> Vec<Step<(), u32>> {
    ///         xs.iter().map(|x| Step::Finish(2 * x)).collect()
    ///     }
    /// }
    ///
    /// let b = Batcher::builder().spawn_steps_pool(2, || Double).unwrap();
    /// let streams: Vec<_> = (0..8).map(|x| b.submit(x).unwrap()).collect();
    /// for (x, s) in streams.into_iter().enumerate() {
    ///     assert_eq!(s.last(), Some(Streamed::Done(Ok(2 * x as u32))));
    /// }
    /// ```
    pub fn spawn_steps_pool<H>(
        self,
        workers: usize,
        factory: impl Fn() -> H + Send + Sync + 'static,
    ) -> Result<StreamBatcher<Req, H::Chunk, Resp>, SpawnError>
    where
        H: StepHandler<Req = Req, Out = Resp> + 'static,
        H::Chunk: Send + 'static,
    {
        StreamBatcher::start(self.settings, true, from_factory(workers, factory)?)
    }
}

/// The makers of a single worker, for `spawn` and `spawn_steps`: one, which hands over
/// `handler` the first time it is called and nothing after.
fn once<H>(handler: H) -> Vec<impl FnMut() -> Option<H> + Send + 'static>
where
    H: Send + 'static,
{
    let mut handler = Some(handler);
    vec![move || handler.take()]
}

/// The makers of a pool, for `spawn_pool` and `spawn_steps_pool`: one per worker, each calling
/// `factory` (on its worker's thread) whenever that worker needs a fresh handler.
fn from_factory<H>(
    workers: usize,
    factory: impl Fn() -> H + Send + Sync + 'static,
) -> Result<Vec<impl FnMut() -> Option<H> + Send + 'static>, ConfigError> {
    if workers == 0 {
        return Err(ConfigError::ZeroWorkers);
    }
    let factory = Arc::new(factory);
    Ok((0..workers)
        .map(|_| {
            let factory = Arc::clone(&factory);
            move || Some(factory())
        })
        .collect())
}
