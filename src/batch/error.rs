//! The batcher's errors: at start ([`ConfigError`]), at submission ([`SubmitError`]), after
//! acceptance ([`BatchError`]), and both for a blocking call ([`CallError`]).

#[cfg(doc)]
use super::Batcher;
use core::fmt;

/// Why a batcher refused to start ([`BatcherBuilder::spawn`](super::BatcherBuilder::spawn),
/// [`spawn_pool`](super::BatcherBuilder::spawn_pool), [`Batcher::spawn`]).
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
    /// A pool of 0 workers was asked for.
    ZeroWorkers,
    /// A worker thread could not be started.
    Spawn(std::io::Error),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroBatchSize => f.write_str("max_batch_size must be at least 1"),
            Self::ZeroBatchCost => f.write_str("max_batch_cost must be at least 1"),
            Self::ZeroQueue => f.write_str("max_queue must be at least 1"),
            Self::ZeroWorkers => f.write_str("a batcher needs at least 1 worker"),
            Self::Spawn(e) => write!(f, "could not start a batcher worker thread: {e}"),
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
