//! Starting, running and stopping the server: [`Server`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::{TcpListener, ToSocketAddrs};

use crate::app::{router, App};
use crate::config::ServerConfig;
use crate::engine;

/// The shortest period of the purge of idle sessions ([`ServerConfig::session_idle`]).
const PURGE_FLOOR: Duration = Duration::from_millis(10);

/// Why the server could not start.
///
/// # Examples
///
/// ```
/// use latchless_server::{Server, ServerConfig, StartError};
///
/// let runtime = tokio::runtime::Runtime::new().unwrap();
/// let bad = ServerConfig { max_queue: 0, ..ServerConfig::default() };
/// let err = runtime.block_on(Server::bind("127.0.0.1:0", bad)).unwrap_err();
/// assert!(matches!(err, StartError::Config(_)));
/// assert!(err.to_string().contains("max_queue"));
/// ```
#[derive(Debug)]
pub enum StartError {
    /// A setting is out of range; the message names it.
    Config(String),
    /// The model or its batcher could not be started; the message says why.
    Model(String),
    /// The address could not be bound.
    Bind(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(msg) => write!(f, "bad configuration: {msg}"),
            Self::Model(msg) => f.write_str(msg),
            Self::Bind(e) => write!(f, "cannot bind the address: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bind(e) => Some(e),
            _ => None,
        }
    }
}

/// An HTTP server for the showcase's models, bound and ready to [`run`](Self::run).
///
/// Routes: `POST /v1/completions` (OpenAI's completions API, whole or streamed as Server-Sent
/// Events), `GET /health` and `GET /metrics` (Prometheus text). See the crate docs for the
/// request, the limits and the status codes.
///
/// # Examples
///
/// ```
/// use latchless_server::{ModelSize, Server, ServerConfig};
///
/// let runtime = tokio::runtime::Runtime::new().unwrap();
/// runtime.block_on(async {
///     let config = ServerConfig { size: ModelSize::Tiny, ..ServerConfig::default() };
///     let server = Server::bind("127.0.0.1:0", config).await.unwrap();
///     assert!(server.local_addr().unwrap().ip().is_loopback());
///     // The binary passes SIGINT or SIGTERM; this stops at once, with nothing in flight.
///     server.run(async {}).await.unwrap();
/// });
/// ```
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.listener.local_addr().ok())
            .field("model", &self.app.backend.model_name)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Builds the model `config` names, starts its batcher and binds `addr` (port 0: a free
    /// one, see [`local_addr`](Self::local_addr)). The example on [`Server`] shows it.
    ///
    /// # Errors
    ///
    /// [`StartError`]: a bad setting, a model or batcher that cannot start, an address that
    /// cannot be bound.
    pub async fn bind(addr: impl ToSocketAddrs, config: ServerConfig) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        let listener = TcpListener::bind(addr).await.map_err(StartError::Bind)?;
        // Making the weights takes a while: off the runtime's threads.
        let model_config = config.clone();
        let backend = tokio::task::spawn_blocking(move || engine::start(&model_config))
            .await
            .map_err(|e| StartError::Model(format!("starting the model panicked: {e}")))?
            .map_err(StartError::Model)?;
        Ok(Self {
            listener,
            app: Arc::new(App::new(backend, config)),
        })
    }

    /// The address the server listens on (see the example on [`Server`]).
    ///
    /// # Errors
    ///
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting connections, lets every request
    /// in flight finish (each within its timeout), stops the batcher and returns. The example
    /// on [`Server`] shows it.
    ///
    /// # Errors
    ///
    /// If the listener fails.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let Self { listener, app } = self;
        // Idle sessions expire by themselves but leave the cache only when something meets
        // them: purge them on a timer, so that their memory comes back without traffic.
        let purger = app.config.session_idle.map(|idle| {
            let sessions = Arc::clone(&app.backend.sessions);
            tokio::spawn(async move {
                let mut every = tokio::time::interval((idle / 4).max(PURGE_FLOOR));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    // A scan of the whole cache: on a blocking thread, not a runtime worker.
                    let sessions = Arc::clone(&sessions);
                    let _ = tokio::task::spawn_blocking(move || sessions.purge_expired()).await;
                }
            })
        });
        let batcher = app.backend.batcher.clone();
        let stop_admission = async move {
            shutdown.await;
            // A request that reaches the batcher from now on is answered 503; admitted ones
            // run on. `shutdown` blocks until they finished: on a blocking thread, not awaited
            // here (the connections' own draining is what the server waits for).
            tokio::task::spawn_blocking(move || batcher.shutdown());
        };
        // Each Server-Sent Event is a small write: without TCP_NODELAY, Nagle's algorithm would
        // hold it until the previous one is acknowledged.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(listener, router(Arc::clone(&app)))
            .with_graceful_shutdown(stop_admission)
            .await;
        // Every connection is closed: whatever was admitted has been answered or cancelled.
        if let Some(purger) = purger {
            purger.abort();
        }
        let batcher = app.backend.batcher.clone();
        tokio::task::spawn_blocking(move || batcher.shutdown())
            .await
            .map_err(io::Error::other)?;
        served
    }
}
