//! `latchless-server`: the showcase's models behind HTTP. See the library's docs for the routes
//! and limits.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use latchless_server::{ClassLimits, ModelKind, ModelSize, Server, ServerConfig};

/// Serves OpenAI-style completions from the latchless showcase's models.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The address to listen on (no TLS, CORS or auth: put a reverse proxy in front).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The port; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model served.
    #[arg(long, value_enum, default_value = "lstm")]
    model: ModelKind,
    /// The model's size.
    #[arg(long, value_enum, default_value = "showcase")]
    size: ModelSize,
    /// Batcher workers, each with its own running batch.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// The most requests running in one worker's batch.
    #[arg(long, default_value_t = 16)]
    max_batch_size: usize,
    /// The most bytes of state one worker's running requests hold between them.
    #[arg(long, default_value_t = latchless_showcase::workload::DEFAULT_STATE_BUDGET)]
    state_budget: u64,
    /// The most requests admitted at once; beyond it, 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// A request's timeout, from its admission to its last token; past it, 504.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Priority classes: a request's `priority` is 0 (most urgent) to this minus 1, the default.
    #[arg(long, default_value_t = 2)]
    priority_classes: usize,
    /// Each class's own bound on requests admitted at once, from class 0, comma-separated (e.g.
    /// `8,0`); 0, or a class past the list's end, has only --max-queue.
    #[arg(long, value_delimiter = ',')]
    class_max_queue: Vec<usize>,
    /// Each class's own timeout in milliseconds, from class 0, comma-separated (e.g.
    /// `2000,0`); 0, or a class past the list's end, has --timeout-ms.
    #[arg(long, value_delimiter = ',')]
    class_timeout_ms: Vec<u64>,
    /// The most `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 512)]
    max_tokens_cap: usize,
    /// The largest request body, in bytes; beyond it, 413.
    #[arg(long, default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// The seed of the model's random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Drop a session's state once it has gone this many milliseconds without a request; 0
    /// keeps sessions until the cache needs their room.
    #[arg(long, default_value_t = 0)]
    session_idle_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let stop = stop_signal();
    let classes = args.class_max_queue.len().max(args.class_timeout_ms.len());
    let class_limits = (0..classes)
        .map(|c| ClassLimits {
            max_queue: args.class_max_queue.get(c).copied().filter(|&n| n > 0),
            timeout: args
                .class_timeout_ms
                .get(c)
                .copied()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
        })
        .collect();
    let config = ServerConfig {
        model: args.model,
        size: args.size,
        seed: args.seed,
        workers: args.workers,
        max_batch_size: args.max_batch_size,
        state_budget: args.state_budget,
        max_queue: args.max_queue,
        timeout: Duration::from_millis(args.timeout_ms),
        priority_classes: args.priority_classes,
        class_limits,
        max_tokens_cap: args.max_tokens_cap,
        max_body_bytes: args.max_body_bytes,
        session_idle: Some(Duration::from_millis(args.session_idle_ms)).filter(|t| !t.is_zero()),
        ..ServerConfig::default()
    };
    let server = match Server::bind((args.host, args.port), config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("latchless-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(addr) => println!("listening on http://{addr}"),
        Err(e) => eprintln!("latchless-server: listening, address unknown: {e}"),
    }
    // Scripts read the address from stdout: do not leave it in a buffer.
    let _ = std::io::stdout().flush();
    match server.run(stop).await {
        Ok(()) => {
            eprintln!("latchless-server: drained, exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("latchless-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM. The handlers are installed here, before the address is
/// printed, so that a signal sent as soon as the server is up is never the default (fatal) one.
fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = signal(SignalKind::interrupt())
            .and_then(|int| Ok((int, signal(SignalKind::terminate())?)));
        async move {
            match handlers {
                Ok((mut int, mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(e) => {
                    eprintln!("latchless-server: no signal handlers ({e}); stop with SIGINT");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            eprintln!("latchless-server: stopping: no new connections, draining admitted requests");
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("latchless-server: stopping: no new connections, draining admitted requests");
        }
    }
}
