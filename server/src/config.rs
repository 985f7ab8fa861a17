//! What the server runs and its limits: [`ServerConfig`].

use std::time::Duration;

/// Which of the showcase's models the server runs.
///
/// # Examples
///
/// ```
/// use latchless_server::{ModelKind, ServerConfig};
///
/// assert_eq!(ServerConfig::default().model, ModelKind::Lstm);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// The byte-level LSTM (`latchless_showcase::lstm`).
    Lstm,
    /// The small transformer (`latchless_showcase::transformer`).
    Transformer,
}

/// How big a model: the showcase's, or the tiny one the tests use.
///
/// # Examples
///
/// ```
/// use latchless_server::{ModelSize, ServerConfig};
///
/// let for_tests = ServerConfig { size: ModelSize::Tiny, ..ServerConfig::default() };
/// assert!(for_tests.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelSize {
    /// The showcase's sizes (`LstmConfig::showcase`, `TransformerConfig::showcase`).
    Showcase,
    /// The tiny sizes, for tests and smoke runs (`LstmConfig::tiny`, `TransformerConfig::tiny`).
    Tiny,
}

/// One priority class's own limits, set through the batcher's
/// [`PriorityClass`](latchless::batch::PriorityClass): see [`ServerConfig::class_limits`].
///
/// # Examples
///
/// ```
/// use latchless_server::{ClassLimits, ServerConfig};
/// use std::time::Duration;
///
/// // Class 0 (urgent): at most 8 requests at once, 2 s each; class 1: the server's limits.
/// let config = ServerConfig {
///     class_limits: vec![ClassLimits {
///         max_queue: Some(8),
///         timeout: Some(Duration::from_secs(2)),
///     }],
///     ..ServerConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// // Limits for three classes, where there are two:
/// let bad = ServerConfig { class_limits: vec![ClassLimits::default(); 3], ..config };
/// assert!(bad.validate().unwrap_err().contains("class_limits"));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassLimits {
    /// The most requests of the class admitted (waiting or running) at once; beyond it the
    /// class's requests are refused with 429 while other classes still admit. `None`: only
    /// [`ServerConfig::max_queue`], which every class shares, applies.
    pub max_queue: Option<usize>,
    /// The class's timeout; `None`: [`ServerConfig::timeout`].
    pub timeout: Option<Duration>,
}

/// The server's model, batcher and limits. Start from [`ServerConfig::default`] and change
/// fields.
///
/// # Examples
///
/// ```
/// use latchless_server::{ModelKind, ServerConfig};
/// use std::time::Duration;
///
/// let config = ServerConfig {
///     model: ModelKind::Transformer,
///     timeout: Duration::from_secs(5),
///     ..ServerConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The model served. Default: the LSTM.
    pub model: ModelKind,
    /// Its size. Default: the showcase's.
    pub size: ModelSize,
    /// The seed of the model's random weights. Default: 1.
    pub seed: u64,
    /// Batcher workers, each with its own running batch and compute thread. Default: 1.
    pub workers: usize,
    /// The most requests running in one worker's batch at once. Default: 16.
    pub max_batch_size: usize,
    /// The most bytes of state (a transformer's keys and values, an LSTM's hidden states) one
    /// worker's running requests hold between them, each counted at its largest
    /// (`Engine::row_bytes`), so that what every decode step reads stays in cache; a request
    /// that alone needs more is refused as too costly. Default: the showcase's
    /// `DEFAULT_STATE_BUDGET`, 2 MiB.
    pub state_budget: u64,
    /// The most requests admitted (waiting or running); beyond it a request is refused with
    /// 429. Default: 256.
    pub max_queue: usize,
    /// Priority classes: a request's `priority` is 0 (most urgent) to `priority_classes - 1`,
    /// the default. Default: 2.
    pub priority_classes: usize,
    /// How long a request may take from its submission to the batcher (its arrival plus the
    /// server's admission work, well under a millisecond) to its last token; past it the
    /// request leaves the batch and is answered 504. A class's own timeout
    /// ([`class_limits`](Self::class_limits)) replaces it. Default: 30 s.
    pub timeout: Duration,
    /// Limits of the priority classes' own, by class (index 0 the most urgent); classes past the
    /// end of the list have none. At most [`priority_classes`](Self::priority_classes) entries.
    /// Default: none.
    pub class_limits: Vec<ClassLimits>,
    /// The most `max_tokens` a request may ask for. Default: 512.
    pub max_tokens_cap: usize,
    /// The largest request body, in bytes; a larger one is refused with 413. Default: 64 KiB.
    pub max_body_bytes: usize,
    /// The bytes of model state the session cache keeps. Default: 64 MiB.
    pub session_bytes: u64,
    /// How long a session may go without a request before its state is dropped (never earlier,
    /// at most a sixteenth later); a request for it then starts afresh, and the server purges
    /// dropped states from the cache every quarter of this (at least every 10 ms). `None`:
    /// sessions stay until the cache evicts them for room. Default: none.
    pub session_idle: Option<Duration>,
    /// A pause before each decode step, to make a small model as slow as a large one (tests
    /// use it to keep requests in flight). Default: none.
    pub step_delay: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model: ModelKind::Lstm,
            size: ModelSize::Showcase,
            seed: 1,
            workers: 1,
            max_batch_size: 16,
            state_budget: latchless_showcase::workload::DEFAULT_STATE_BUDGET,
            max_queue: 256,
            priority_classes: 2,
            timeout: Duration::from_secs(30),
            class_limits: Vec::new(),
            max_tokens_cap: 512,
            max_body_bytes: 64 * 1024,
            session_bytes: 64 << 20,
            session_idle: None,
            step_delay: Duration::ZERO,
        }
    }
}

impl ServerConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// A message naming the first setting out of its range: zero where it must not be (a
    /// `session_idle` of zero too), more than 64 priority classes (the batcher's bound), or
    /// limits for more classes than there are.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless_server::ServerConfig;
    /// use std::time::Duration;
    ///
    /// let bad = ServerConfig { workers: 0, ..ServerConfig::default() };
    /// assert!(bad.validate().unwrap_err().contains("workers"));
    /// let bad = ServerConfig { session_idle: Some(Duration::ZERO), ..ServerConfig::default() };
    /// assert!(bad.validate().unwrap_err().contains("session_idle"));
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        let nonzero = [
            ("workers", self.workers),
            ("max_batch_size", self.max_batch_size),
            ("max_queue", self.max_queue),
            ("priority_classes", self.priority_classes),
            ("max_tokens_cap", self.max_tokens_cap),
            ("max_body_bytes", self.max_body_bytes),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.state_budget == 0 {
            return Err("state_budget must be at least 1".into());
        }
        if self.priority_classes > 64 {
            return Err("priority_classes must be at most 64".into());
        }
        if self.timeout.is_zero() {
            return Err("timeout must be above zero".into());
        }
        if self.session_idle.is_some_and(|t| t.is_zero()) {
            return Err("session_idle must be above zero (None keeps sessions)".into());
        }
        if self.class_limits.len() > self.priority_classes {
            return Err(format!(
                "class_limits has {} entries for {} priority classes",
                self.class_limits.len(),
                self.priority_classes
            ));
        }
        for (c, limits) in self.class_limits.iter().enumerate() {
            if limits.max_queue == Some(0) {
                return Err(format!("class {c}'s max_queue must be at least 1"));
            }
            if limits.timeout.is_some_and(|t| t.is_zero()) {
                return Err(format!("class {c}'s timeout must be above zero"));
            }
        }
        Ok(())
    }

    /// Class `class`'s limits: its own, or the server's where it has none.
    pub(crate) fn class(&self, class: usize) -> (Option<usize>, Duration) {
        let own = self.class_limits.get(class).copied().unwrap_or_default();
        (own.max_queue, own.timeout.unwrap_or(self.timeout))
    }
}
