//! The batcher's errors: at start ([`SpawnError`], with [`ConfigError`] inside), at submission ([`SubmitError`]), after
//! acceptance ([`BatchError`]), and both for a blocking call ([`CallError`]).

#[cfg(doc)]
use super::Batcher;
use core::fmt;

/// A setting that makes no batcher: a zero bound, or zero workers. From
/// [`BatchConfig::validate`](super::BatchConfig::validate), and inside
/// [`SpawnError::Config`] when a batcher is started.
///
/// # Examples
///
/// ```
/// use latchless::batch::{BatchConfig, ConfigError};
///
/// let mut config = BatchConfig::default();
/// config.max_queue = 0;
/// let err = config.validate().unwrap_err();
/// assert!(matches!(err, ConfigError::ZeroQueue));
/// assert_eq!(err.to_string(), "max_queue must be at least 1");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_batch_size` is 0.
    ZeroBatchSize,
    /// `max_batch_cost` is 0.
    ZeroBatchCost,
    /// `max_queue` is 0.
    ZeroQueue,
    /// A pool of 0 workers was asked for.
    ZeroWorkers,
    /// Priority class `class` has a `max_queue` of 0.
    ZeroClassQueue {
        /// The class's index.
        class: usize,
    },
    /// More than 64 priority classes.
    TooManyClasses,
    /// A [`JoinPolicy`](super::JoinPolicy)'s `waiting_served_ratio` is negative or not finite.
    BadJoinRatio,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroBatchSize => f.write_str("max_batch_size must be at least 1"),
            Self::ZeroBatchCost => f.write_str("max_batch_cost must be at least 1"),
            Self::ZeroQueue => f.write_str("max_queue must be at least 1"),
            Self::ZeroWorkers => f.write_str("a batcher needs at least 1 worker"),
            Self::ZeroClassQueue { class } => {
                write!(f, "priority class {class}: max_queue must be at least 1")
            }
            Self::TooManyClasses => f.write_str("a batcher takes at most 64 priority classes"),
            Self::BadJoinRatio => {
                f.write_str("the join policy's waiting_served_ratio must be finite and at least 0")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why a batcher did not start ([`BatcherBuilder::spawn`](super::BatcherBuilder::spawn),
/// [`spawn_pool`](super::BatcherBuilder::spawn_pool), [`Batcher::spawn`]): a bad setting, or
/// a worker thread the system would not start (the workers already started are stopped first).
///
/// # Examples
///
/// ```
/// use latchless::batch::{Batcher, ConfigError, SpawnError};
///
/// let err = Batcher::builder().max_queue(0).spawn(|xs: Vec<u8>| xs).unwrap_err();
/// assert!(matches!(err, SpawnError::Config(ConfigError::ZeroQueue)));
/// assert_eq!(err.to_string(), "max_queue must be at least 1");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum SpawnError {
    /// A setting makes no batcher.
    Config(ConfigError),
    /// A worker thread could not be started.
    Thread(std::io::Error),
}

impl From<ConfigError> for SpawnError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => fmt::Display::fmt(e, f),
            Self::Thread(e) => write!(f, "could not start a batcher worker thread: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Thread(e) => Some(e),
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
    /// The batcher has no priority class of that index.
    NoSuchClass(Req),
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
            Self::Overloaded(r)
            | Self::ShuttingDown(r)
            | Self::TooCostly(r)
            | Self::NoSuchClass(r) => r,
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
            Self::NoSuchClass(_) => "NoSuchClass(..)",
        })
    }
}

impl<Req> fmt::Display for SubmitError<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Overloaded(_) => "the batcher's queue is full",
            Self::ShuttingDown(_) => "the batcher is shutting down",
            Self::TooCostly(_) => "the request costs more than a whole batch may",
            Self::NoSuchClass(_) => "the batcher has no such priority class",
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
    /// Its deadline passed before its batch ran; it was not computed. For a streamed request
    /// ([`StreamBatcher`](super::StreamBatcher)): its deadline passed before it finished, while it
    /// waited or while it generated (its stream then held the chunks made until then).
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
