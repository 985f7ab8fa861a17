//! `loadgen`: a load generator for `latchless-server`, on loopback only.
//!
//! It sends streamed completions of the showcase's workload (prompt and generation lengths, the
//! long-request mix: the same `Workload` as `showcase/examples/batcher.rs`) either in an open
//! loop (`--rate`: Poisson arrivals, seeded) or a closed loop (`--clients`), for `--duration`
//! seconds, and reports requests/s, tokens/s, latency, time to first token, inter-token latency,
//! goodput and refusals, then the server's own overhead read from `/metrics`.
//!
//! ```text
//! cargo run --release -p latchless-server --bin loadgen -- --url http://127.0.0.1:8080 --rate 100
//! cargo run --release -p latchless-server --bin loadgen -- --spawn --clients 64 --duration 10
//! cargo run --release -p latchless-server --bin loadgen -- --spawn --compare --rounds 3
//! ```
//!
//! `--spawn` starts the server in this process on a free port; `--compare` (with `--spawn`)
//! serves one fixed workload over HTTP and in-process through the same continuous batcher and
//! engine, in interleaved rounds, and prints the throughput ratio and the CPU time per request
//! of each.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use cpu_time::ProcessTime;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request as HttpRequest, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use latchless::batch::{BatchConfig, JoinPolicy};
use latchless_server::{ModelKind, ModelSize, Server, ServerConfig};
use latchless_showcase::lstm::{LstmConfig, LstmLm};
use latchless_showcase::model::LanguageModel;
use latchless_showcase::serve::{Engine, Request};
use latchless_showcase::transformer::{TransformerConfig, TransformerLm};
use latchless_showcase::workload::{self, Arrivals, Mode, Serving, Workload};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// Load a latchless server over HTTP on loopback: open or closed loop, streamed completions.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The server, on loopback (e.g. http://127.0.0.1:8080). Not with --spawn.
    #[arg(long)]
    url: Option<String>,
    /// Start the server in this process, on 127.0.0.1 and a free port, with --model, --size,
    /// --workers, --max-batch and --max-queue.
    #[arg(long)]
    spawn: bool,
    /// With --spawn: serve --requests requests over HTTP and in-process through the same
    /// continuous batcher and engine, in --rounds interleaved rounds of a closed loop of
    /// --clients clients, and print the throughput ratio and CPU time per request.
    #[arg(long)]
    compare: bool,
    /// Seconds of sending; then requests in flight get --grace seconds to finish.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds requests in flight may take to finish after --duration; those left are counted
    /// unfinished.
    #[arg(long, default_value_t = 10.0)]
    grace: f64,
    /// Open loop: mean arrivals per second (Poisson). Without it, a closed loop of --clients.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: clients, each sending its next request when the previous one is answered.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    clients: u64,
    /// With --compare: requests per round, shared out among the clients.
    #[arg(long, default_value_t = 960, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// With --compare: rounds; the report gives medians and ranges.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=15))]
    rounds: u64,
    /// Sessions per client in the closed loop (each open-loop request has its own).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    sessions_per_client: u64,
    /// Shortest prompt, in bytes.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    min_prompt: u64,
    /// Longest prompt, in bytes.
    #[arg(long, default_value_t = 48)]
    max_prompt: u64,
    /// Fewest bytes to generate per request.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    min_new: u64,
    /// Most bytes to generate per request.
    #[arg(long, default_value_t = 24)]
    max_new: u64,
    /// The share of requests (0 to 1) whose generation is --long-factor times longer.
    #[arg(long, default_value_t = 0.0)]
    long_share: f64,
    /// How many times longer a long request's generation is.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    long_factor: u64,
    /// The share of requests (0 to 1) sent for a whole reply instead of a stream.
    #[arg(long, default_value_t = 0.0)]
    whole_share: f64,
    /// With --compare: an unmeasured round of each side first, of at most 512 requests.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    warmup: bool,
    /// Goodput counts replies finished within this many milliseconds; without it, within 5 x
    /// the unloaded p50 (measured first, one request at a time).
    #[arg(long)]
    slo_ms: Option<f64>,
    /// Seed of the workload, the arrivals and (--spawn) the model's weights.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// --spawn: the server's runtime threads (the binary's `#[tokio::main]` runs one per core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    server_threads: Option<u64>,
    /// The generator's runtime threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    client_threads: u64,
    /// --spawn: the model served.
    #[arg(long, value_enum, default_value = "lstm")]
    model: ModelKind,
    /// --spawn: its size.
    #[arg(long, value_enum, default_value = "showcase")]
    size: ModelSize,
    /// --spawn: batcher workers (the showcase example's default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// --spawn: the most requests running in one worker's batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// --spawn: the most requests admitted at once.
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// Names of the generator's runtime threads, by which `--spawn` tells its CPU time from the
/// server's.
const GENERATOR_THREADS: &str = "loadgen-rt";

fn run(args: &Args) -> Result<(), String> {
    check(args)?;
    let generator = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads as usize)
        .thread_name(GENERATOR_THREADS)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the generator's runtime: {e}"))?;
    if !args.spawn {
        let url = args.url.as_deref().unwrap_or_default();
        let base = loopback_base(url)?;
        return generator.block_on(load(args, &base, false));
    }
    // The server's own runtime: by default one thread per core, as the binary's.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads.map_or(cores, |n| n as usize))
        .thread_name("server-rt")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the server's runtime: {e}"))?;
    if args.compare {
        return compare(args, &generator, &server_rt);
    }
    let server = Spawned::start(&server_rt, server_config(args))?;
    let base = format!("http://{}", server.addr);
    let loaded = generator.block_on(load(args, &base, true));
    server.stop(&server_rt)?;
    loaded
}

/// Checks the arguments that clap cannot.
fn check(args: &Args) -> Result<(), String> {
    if args.spawn == args.url.is_some() {
        return Err("give either --url (a running server) or --spawn (one started here)".into());
    }
    if args.compare && !args.spawn {
        return Err("--compare needs --spawn".into());
    }
    if args.compare && args.rate.is_some() {
        return Err("--compare runs a closed loop of --clients; drop --rate".into());
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err(format!(
            "--duration {} is not a positive number of seconds",
            args.duration
        ));
    }
    if !(args.grace.is_finite() && args.grace >= 0.0) {
        return Err(format!("--grace {} is not a number of seconds", args.grace));
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "--rate {rate} is not a positive number of requests per second"
            ));
        }
    }
    if let Some(slo) = args.slo_ms {
        if !(slo.is_finite() && slo > 0.0) {
            return Err(format!(
                "--slo-ms {slo} is not a positive number of milliseconds"
            ));
        }
    }
    if args.min_prompt > args.max_prompt {
        return Err(format!(
            "--min-prompt {} is above --max-prompt {}",
            args.min_prompt, args.max_prompt
        ));
    }
    if args.min_new > args.max_new {
        return Err(format!(
            "--min-new {} is above --max-new {}",
            args.min_new, args.max_new
        ));
    }
    if !(0.0..=1.0).contains(&args.whole_share) {
        return Err(format!(
            "--whole-share {} is not between 0 and 1",
            args.whole_share
        ));
    }
    if args.compare && args.whole_share > 0.0 {
        return Err(
            "--compare streams every request, as the in-process run does; drop --whole-share"
                .into(),
        );
    }
    if !(0.0..=1.0).contains(&args.long_share) {
        return Err(format!(
            "--long-share {} is not between 0 and 1",
            args.long_share
        ));
    }
    Ok(())
}

/// `url` without a trailing slash, if it is plain HTTP to a loopback address.
fn loopback_base(url: &str) -> Result<String, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("--url {url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url {url:?}: only plain http:// is supported"));
    }
    let host = uri.host().unwrap_or_default();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(format!(
            "--url {url:?}: the load generator talks to loopback only (127.0.0.1, ::1 or \
             localhost), not {host:?}"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("--url {url:?} has no host"))?;
    Ok(format!("http://{authority}"))
}

/// The spawned server's configuration, the same batcher settings the in-process run uses.
fn server_config(args: &Args) -> ServerConfig {
    ServerConfig {
        model: args.model,
        size: args.size,
        seed: args.seed,
        workers: workers(args),
        max_batch_size: args.max_batch,
        max_queue: args.max_queue,
        // One class: the in-process run submits to one class too.
        priority_classes: 1,
        // Long enough for every request of a run.
        timeout: Duration::from_secs(600),
        ..ServerConfig::default()
    }
}

fn workers(args: &Args) -> usize {
    args.workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// The workload of `requests` requests shared out among `clients` clients.
fn workload(args: &Args, clients: usize, requests: usize) -> Workload {
    Workload {
        clients,
        requests,
        sessions_per_client: args.sessions_per_client as usize,
        prompt_len: args.min_prompt as usize..=args.max_prompt as usize,
        max_new: args.min_new as usize..=args.max_new as usize,
        long_share: args.long_share,
        long_factor: args.long_factor as usize,
        seed: args.seed,
    }
}

fn bounds(args: &Args) -> Bounds {
    Bounds {
        duration: Duration::from_secs_f64(args.duration),
        grace: Duration::from_secs_f64(args.grace),
        whole_share: args.whole_share,
        seed: args.seed.wrapping_add(2),
    }
}

/// A server started in this process.
struct Spawned {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Spawned {
    fn start(rt: &Runtime, config: ServerConfig) -> Result<Self, String> {
        let server = rt
            .block_on(Server::bind("127.0.0.1:0", config))
            .map_err(|e| format!("starting the server: {e}"))?;
        let addr = server
            .local_addr()
            .map_err(|e| format!("the server's address: {e}"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let done = rt.spawn(server.run(async {
            let _ = stopped.await;
        }));
        Ok(Self { addr, stop, done })
    }

    fn stop(self, rt: &Runtime) -> Result<(), String> {
        let _ = self.stop.send(());
        rt.block_on(self.done)
            .map_err(|e| format!("the server's task: {e}"))?
            .map_err(|e| format!("the server: {e}"))
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    // Requests are small writes; do not let Nagle's algorithm hold them.
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

/// How one request went, timed from when it was sent (for a retried one, its first try).
#[derive(Debug)]
enum Attempt {
    /// Streamed to `[DONE]`.
    Done(Answered),
    /// 429: the server's queue was full.
    Refused,
    /// Anything else, described.
    Failed(String),
}

/// A completed streamed reply.
#[derive(Debug, Default)]
struct Answered {
    /// Generated tokens, as the reply's `usage` counts them.
    tokens: u64,
    /// From the request's send to its first event.
    first: Option<Duration>,
    /// Gaps between consecutive events that carried tokens.
    gaps: Vec<Duration>,
}

/// Sends `req` as a streamed completion and reads its events to the end.
async fn complete(client: &HttpClient, url: &Uri, req: &Request, stream: bool) -> Attempt {
    let body = json!({
        "prompt": String::from_utf8_lossy(&req.prompt),
        "max_tokens": req.max_new,
        "stream": stream,
        "session": req.session,
    });
    let http = HttpRequest::post(url.clone())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())));
    let http = match http {
        Ok(http) => http,
        Err(e) => return Attempt::Failed(format!("building the request: {e}")),
    };
    let start = Instant::now();
    let resp = match client.request(http).await {
        Ok(resp) => resp,
        Err(e) => return Attempt::Failed(format!("sending: {e}")),
    };
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::TOO_MANY_REQUESTS => return Attempt::Refused,
        status => return Attempt::Failed(format!("status {}", status.as_u16())),
    }
    let mut body = resp.into_body();
    if !stream {
        return match body.collect().await {
            Ok(whole) => {
                let tokens = serde_json::from_slice::<Value>(&whole.to_bytes())
                    .ok()
                    .and_then(|v| v["usage"]["completion_tokens"].as_u64());
                match tokens {
                    Some(tokens) => Attempt::Done(Answered {
                        tokens,
                        ..Answered::default()
                    }),
                    None => Attempt::Failed("a reply without usage".into()),
                }
            }
            Err(e) => Attempt::Failed(format!("reading the reply: {e}")),
        };
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut answered = Answered::default();
    let mut last: Option<Instant> = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Attempt::Failed(format!("reading the stream: {e}")),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let now = Instant::now();
            for line in event.split(|&b| b == b'\n') {
                let Some(data) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let data = data.strip_prefix(b" ").unwrap_or(data);
                if data == b"[DONE]" {
                    return Attempt::Done(answered);
                }
                if data.starts_with(b"{\"error\"") {
                    return Attempt::Failed(error_of(data));
                }
                // Only the final chunk has `usage` (a quote inside a text is escaped, so the
                // key cannot appear there): the others need no parsing.
                if contains(data, b"\"usage\"") {
                    answered.tokens = serde_json::from_slice::<Value>(data)
                        .ok()
                        .and_then(|v| v["usage"]["completion_tokens"].as_u64())
                        .unwrap_or(0);
                    continue;
                }
                answered.first.get_or_insert(now - start);
                if let Some(before) = last.replace(now) {
                    answered.gaps.push(now - before);
                }
            }
        }
    }
    Attempt::Failed("the stream ended without [DONE]".into())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An error event's message.
fn error_of(data: &[u8]) -> String {
    serde_json::from_slice::<Value>(data)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(data).into_owned())
}

/// What a load run measured.
#[derive(Debug, Default)]
struct Measured {
    /// From the first send to the last reply (or the end of the grace period).
    wall: Duration,
    sent: u64,
    ok: u64,
    refused: u64,
    errors: BTreeMap<String, u64>,
    /// Requests still in flight when the grace period ended.
    unfinished: u64,
    tokens: u64,
    /// Per answered request: latency, time to first token, in milliseconds.
    latency_ms: Vec<f64>,
    first_ms: Vec<f64>,
    /// Gaps between token events, in milliseconds.
    gap_ms: Vec<f64>,
}

impl Measured {
    fn add(&mut self, attempt: Attempt, latency: Duration, lag: Duration) {
        match attempt {
            Attempt::Done(a) => {
                self.ok += 1;
                self.tokens += a.tokens;
                self.latency_ms.push(ms(latency));
                // The first token, like the latency, counts from the request's start (its
                // scheduled arrival in the open loop), `lag` before its last send.
                self.first_ms.push(ms(a.first.unwrap_or(latency) + lag));
                self.gap_ms.extend(a.gaps.iter().map(|&g| ms(g)));
            }
            Attempt::Refused => self.refused += 1,
            Attempt::Failed(e) => *self.errors.entry(e).or_default() += 1,
        }
    }

    fn requests_per_sec(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile of `values` (sorted here), 0 if empty.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// How the requests of a run are sent.
enum Plan {
    /// Each client sends its list's requests one after the other (again from the start when
    /// `cycle`, until the duration is over); a refused request is sent again after 1 ms.
    Closed {
        lists: Vec<Vec<Request>>,
        cycle: bool,
    },
    /// Requests arrive at Poisson times, `rate` per second; a refused one is not sent again.
    Open {
        reqs: Vec<Request>,
        rate: f64,
        seed: u64,
    },
}

/// How long a run sends, how it ends, and which requests are streamed.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// How long requests are sent.
    duration: Duration,
    /// How long those in flight then have to finish.
    grace: Duration,
    /// The share of requests sent for a whole (not streamed) reply, drawn with `seed`.
    whole_share: f64,
    seed: u64,
}

/// Sends `plan`'s requests to `url` within `bounds`.
async fn drive(url: &Uri, plan: Plan, bounds: Bounds) -> Measured {
    let Bounds {
        duration,
        grace,
        whole_share,
        seed: whole_seed,
    } = bounds;
    let client = client();
    let results = Arc::new(Mutex::new(Measured::default()));
    let in_flight = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    let record = {
        let results = Arc::clone(&results);
        move |attempt, latency, lag| {
            results
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(attempt, latency, lag);
        }
    };
    match plan {
        Plan::Closed { lists, cycle } => {
            for (c, list) in lists.into_iter().enumerate() {
                let (client, url, record) = (client.clone(), url.clone(), record.clone());
                let (in_flight, sent) = (Arc::clone(&in_flight), Arc::clone(&sent));
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(whole_seed ^ (c as u64) << 20);
                tasks.spawn(async move {
                    let mut turn = 0;
                    while Instant::now() < until && (cycle || turn < list.len()) {
                        let Some(req) = list.get(turn % list.len().max(1)) else {
                            break;
                        };
                        turn += 1;
                        let stream = !(whole_share > 0.0 && rng.random_bool(whole_share));
                        in_flight.fetch_add(1, Ordering::Relaxed);
                        sent.fetch_add(1, Ordering::Relaxed);
                        let begin = Instant::now();
                        let mut refused = 0u64;
                        let (attempt, lag) = loop {
                            let send = Instant::now();
                            match complete(&client, &url, req, stream).await {
                                Attempt::Refused if Instant::now() < until => {
                                    refused += 1;
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                                attempt => break (attempt, send - begin),
                            }
                        };
                        for _ in 0..refused {
                            record(Attempt::Refused, Duration::ZERO, Duration::ZERO);
                        }
                        record(attempt, begin.elapsed(), lag);
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                });
            }
        }
        Plan::Open { reqs, rate, seed } => {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut at = 0.0f64;
            for req in reqs {
                // Exponential gaps: a Poisson process of `rate` arrivals per second.
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                at += -u.ln() / rate;
                let arrival = start + Duration::from_secs_f64(at);
                if arrival >= until {
                    break;
                }
                let stream = !(whole_share > 0.0 && rng.random_bool(whole_share));
                tokio::time::sleep_until(arrival.into()).await;
                let (client, url, record) = (client.clone(), url.clone(), record.clone());
                let in_flight = Arc::clone(&in_flight);
                in_flight.fetch_add(1, Ordering::Relaxed);
                sent.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    let send = Instant::now();
                    let attempt = complete(&client, &url, &req, stream).await;
                    record(attempt, arrival.elapsed(), send - arrival);
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
    let deadline = until + grace;
    let mut finished = true;
    while !tasks.is_empty() {
        if tokio::time::timeout_at(deadline.into(), tasks.join_next())
            .await
            .is_err()
        {
            finished = false;
            tasks.abort_all();
            break;
        }
    }
    let wall = start.elapsed();
    let mut measured = std::mem::take(&mut *results.lock().unwrap_or_else(PoisonError::into_inner));
    measured.wall = wall;
    measured.sent = sent.load(Ordering::Relaxed);
    if !finished {
        measured.unfinished = in_flight.load(Ordering::Relaxed);
    }
    measured
}

/// The CPU time of this process's live threads whose name starts with `prefix`: from
/// `/proc/self/task/*/schedstat` (nanoseconds on the CPU), else `stat` (utime + stime, in
/// ticks taken as 10 ms). None where `/proc` cannot be read.
fn threads_cpu(prefix: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for task in fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(name) = fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        let from_schedstat = fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .map(Duration::from_nanos);
        let cpu = from_schedstat.or_else(|| {
            let ticks = stat_ticks(&fs::read_to_string(path.join("stat")).ok()?)?;
            Some(Duration::from_millis(ticks.saturating_mul(10)))
        });
        total += cpu.unwrap_or_default();
    }
    Some(total)
}

/// utime + stime, in clock ticks, from a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The fields after the name (in parentheses, and which may hold spaces or parentheses):
    // utime and stime are the 12th and 13th.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

fn process_cpu() -> Duration {
    ProcessTime::try_now().map_or(Duration::ZERO, |t| t.as_duration())
}

/// CPU time over a span: the whole process, and the generator's threads.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    process: Duration,
    generator: Option<Duration>,
}

impl Cpu {
    fn now() -> Self {
        Self {
            process: process_cpu(),
            generator: threads_cpu(GENERATOR_THREADS),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            process: self.process.saturating_sub(before.process),
            generator: self
                .generator
                .zip(before.generator)
                .map(|(a, b)| a.saturating_sub(b)),
        }
    }
}

/// Fetches `/metrics` as text.
async fn metrics(base: &str) -> Result<String, String> {
    let uri: Uri = format!("{base}/metrics")
        .parse()
        .map_err(|e| format!("the metrics URL: {e}"))?;
    let resp = client()
        .get(uri)
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("GET /metrics: status {}", resp.status().as_u16()));
    }
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A sample of Prometheus text: the value of the line `name` (with its labels, as printed).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Measures the unloaded p50 (16 requests one at a time), runs the load, and reports.
/// `spawned`: the server runs in this process (its CPU is the process's minus the generator's).
async fn load(args: &Args, base: &str, spawned: bool) -> Result<(), String> {
    let url: Uri = format!("{base}/v1/completions")
        .parse()
        .map_err(|e| format!("the completions URL: {e}"))?;
    let bounds = bounds(args);
    let duration = bounds.duration;
    let clients = args.clients as usize;
    let open = args.rate;
    println!(
        "loadgen: {base}, {} for {:.1} s (then up to {:.1} s for requests in flight); prompts of \
         {}-{} bytes, {}-{} generated, long share {} (x{}); seed {}",
        match open {
            Some(rate) => format!("open loop, Poisson arrivals at {rate:.1} requests/s"),
            None => format!("closed loop of {clients} clients"),
        },
        args.duration,
        args.grace,
        args.min_prompt,
        args.max_prompt,
        args.min_new,
        args.max_new,
        args.long_share,
        args.long_factor,
        args.seed,
    );
    // The unloaded latency: one client, one request at a time, its own sessions.
    let probe = workload(args, 1, 16).requests();
    let mut unloaded = drive(
        &url,
        Plan::Closed {
            lists: probe
                .into_iter()
                .map(|l| {
                    l.into_iter()
                        .map(|r| Request {
                            session: 3 << 32 | r.session,
                            ..r
                        })
                        .collect()
                })
                .collect(),
            cycle: false,
        },
        Bounds {
            duration: duration.max(Duration::from_secs(30)),
            whole_share: 0.0,
            ..bounds
        },
    )
    .await;
    if unloaded.ok == 0 {
        return Err(format!(
            "no request was answered unloaded: {:?}; is the server up at {base}?",
            unloaded.errors
        ));
    }
    let unloaded_p50 = quantile(&mut unloaded.latency_ms, 0.5);
    let (limit_ms, why) = match args.slo_ms {
        Some(slo) => (slo, "--slo-ms".to_string()),
        None => (5.0 * unloaded_p50, "5 x the unloaded p50".to_string()),
    };
    println!(
        "unloaded: p50 {unloaded_p50:.1} ms over {} requests one at a time; goodput counts \
         replies within {limit_ms:.1} ms ({why})",
        unloaded.ok
    );
    let plan = match open {
        Some(rate) => {
            // Enough requests for the duration at the rate, and then some.
            let n = (rate * args.duration * 1.5).ceil() as usize + 64;
            let reqs = workload(args, clients, n)
                .requests()
                .into_iter()
                .flatten()
                .enumerate()
                // Each its own session: independent arrivals would send two turns of one
                // session at once.
                .map(|(i, r)| Request {
                    session: 1 << 32 | i as u64,
                    ..r
                })
                .collect();
            Plan::Open {
                reqs,
                rate,
                seed: args.seed.wrapping_add(1),
            }
        }
        None => Plan::Closed {
            lists: workload(args, clients, clients * 64).requests(),
            cycle: true,
        },
    };
    let server_before = server_cpu(base, spawned).await;
    let cpu_before = Cpu::now();
    let mut m = drive(&url, plan, bounds).await;
    let cpu = Cpu::now().since(cpu_before);
    let server_after = server_cpu(base, spawned).await;
    report(&mut m, limit_ms);
    let text = metrics(base).await?;
    let overhead = |phase: &str| {
        let median = sample(
            &text,
            &format!("latchless_server_overhead_seconds{{phase=\"{phase}\",quantile=\"0.5\"}}"),
        );
        let count = sample(
            &text,
            &format!("latchless_server_overhead_seconds_count{{phase=\"{phase}\"}}"),
        );
        match (median, count) {
            (Some(m), Some(n)) if n > 0.0 => format!("{phase} {:.3} ms (n {n})", m * 1e3),
            _ => format!("{phase} -"),
        }
    };
    println!(
        "server overhead (median since the server started, from /metrics): {}, {}, {}",
        overhead("admit"),
        overhead("finish_stream"),
        overhead("finish_whole")
    );
    let per_req = |d: Duration| ms(d) / m.ok.max(1) as f64;
    let generator = if spawned {
        cpu.generator.unwrap_or_default()
    } else {
        cpu.process
    };
    let server = match (spawned, server_before, server_after) {
        (true, ..) => Some(cpu.process.saturating_sub(generator)),
        (false, Some(a), Some(b)) => Some(Duration::from_secs_f64((b - a).max(0.0))),
        _ => None,
    };
    println!(
        "cpu: generator {:.2} s ({:.2} ms/request), server {} ({}); {}",
        generator.as_secs_f64(),
        per_req(generator),
        server.map_or("-".into(), |s| format!("{:.2} s", s.as_secs_f64())),
        server.map_or("-".into(), |s| format!("{:.2} ms/request", per_req(s))),
        if spawned {
            "one process: the generator is its runtime's threads, the server the rest"
        } else {
            "the server's from its process_cpu_seconds_total"
        }
    );
    Ok(())
}

/// The server's process CPU seconds from its `/metrics`, if it runs apart.
async fn server_cpu(base: &str, spawned: bool) -> Option<f64> {
    if spawned {
        return None;
    }
    sample(&metrics(base).await.ok()?, "process_cpu_seconds_total")
}

/// Prints a load run's figures.
fn report(m: &mut Measured, limit_ms: f64) {
    let errors: u64 = m.errors.values().sum();
    println!(
        "requests: {} sent, {} ok, {} refused (429), {errors} errors, {} unfinished",
        m.sent, m.ok, m.refused, m.unfinished
    );
    for (e, n) in &m.errors {
        println!("  error: {n} x {e}");
    }
    let secs = m.wall.as_secs_f64().max(1e-9);
    println!(
        "throughput: {:.1} requests/s, {:.0} tokens/s over {secs:.2} s",
        m.requests_per_sec(),
        m.tokens as f64 / secs
    );
    println!(
        "latency: p50 {:.1} ms, p99 {:.1} ms; time to first token p50 {:.1} ms, p99 {:.1} ms; \
         inter-token (between events) p50 {:.2} ms, p99 {:.2} ms",
        quantile(&mut m.latency_ms, 0.5),
        quantile(&mut m.latency_ms, 0.99),
        quantile(&mut m.first_ms, 0.5),
        quantile(&mut m.first_ms, 0.99),
        quantile(&mut m.gap_ms, 0.5),
        quantile(&mut m.gap_ms, 0.99),
    );
    let good = m.latency_ms.iter().filter(|&&l| l <= limit_ms).count();
    println!(
        "goodput: {:.1} requests/s within {limit_ms:.1} ms ({good} of {} answered)",
        good as f64 / secs,
        m.ok
    );
}

/// One round of the comparison, either side.
#[derive(Debug, Clone, Copy)]
struct Side {
    requests_per_sec: f64,
    p50_ms: f64,
    /// Requests per decode step (mean) and the step's model time (p50, ms).
    step_size: f64,
    step_ms: f64,
    /// CPU per answered request: all, and (HTTP) the server's and the generator's parts.
    cpu_ms: f64,
    server_ms: Option<f64>,
    generator_ms: Option<f64>,
}

/// Serves the same fixed workload over HTTP (a fresh spawned server each round) and
/// in-process (the showcase's continuous mode on a fresh engine), in interleaved rounds.
fn compare(args: &Args, generator: &Runtime, server_rt: &Runtime) -> Result<(), String> {
    let clients = args.clients as usize;
    let work = workload(args, clients, args.requests as usize).requests();
    let config = server_config(args);
    println!(
        "compare: {} requests per round from a closed loop of {clients} clients, prompts of \
         {}-{} bytes, {}-{} generated, long share {} (x{}); {:?} {:?}, {} batcher worker(s), \
         batches of up to {}; {} rounds, HTTP and in-process alternating which goes first",
        args.requests,
        args.min_prompt,
        args.max_prompt,
        args.min_new,
        args.max_new,
        args.long_share,
        args.long_factor,
        args.model,
        args.size,
        config.workers,
        config.max_batch_size,
        args.rounds,
    );
    if args.warmup {
        // Page faults, allocator growth, kernel choice: not in the measured rounds.
        let n = work.iter().map(Vec::len).sum::<usize>().min(512);
        let warm = workload(args, clients, n).requests();
        http_round(args, &warm, generator, server_rt)?;
        local_round(args, &warm)?;
    }
    let mut http = Vec::new();
    let mut local = Vec::new();
    for round in 0..args.rounds {
        let http_first = round % 2 == 0;
        for side in 0..2 {
            if (side == 0) == http_first {
                http.push(http_round(args, &work, generator, server_rt)?);
            } else {
                local.push(local_round(args, &work)?);
            }
        }
        let (h, l) = (http[http.len() - 1], local[local.len() - 1]);
        println!(
            "compare: round {}: HTTP {:.1} requests/s (p50 {:.1} ms; steps of {:.1} requests, \
             {:.2} ms at p50), in-process {:.1} requests/s (p50 {:.1} ms; steps of {:.1}, {:.2} \
             ms), ratio {:.3}; CPU per request: HTTP {:.2} ms (server {}, generator {}), \
             in-process {:.2} ms",
            round + 1,
            h.requests_per_sec,
            h.p50_ms,
            h.step_size,
            h.step_ms,
            l.requests_per_sec,
            l.p50_ms,
            l.step_size,
            l.step_ms,
            h.requests_per_sec / l.requests_per_sec.max(1e-9),
            h.cpu_ms,
            h.server_ms.map_or("-".into(), |v| format!("{v:.2}")),
            h.generator_ms.map_or("-".into(), |v| format!("{v:.2}")),
            l.cpu_ms,
        );
    }
    let mut ratios: Vec<f64> = http
        .iter()
        .zip(&local)
        .map(|(h, l)| h.requests_per_sec / l.requests_per_sec.max(1e-9))
        .collect();
    let median_of = |v: &mut Vec<f64>| quantile(v, 0.5);
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.3}-{hi:.3}")
    };
    let mut h_rps: Vec<f64> = http.iter().map(|s| s.requests_per_sec).collect();
    let mut l_rps: Vec<f64> = local.iter().map(|s| s.requests_per_sec).collect();
    let mut h_cpu: Vec<f64> = http.iter().map(|s| s.cpu_ms).collect();
    let mut h_server: Vec<f64> = http.iter().filter_map(|s| s.server_ms).collect();
    let mut h_gen: Vec<f64> = http.iter().filter_map(|s| s.generator_ms).collect();
    let mut l_cpu: Vec<f64> = local.iter().map(|s| s.cpu_ms).collect();
    // Requests per CPU-second, HTTP over in-process, by round: what HTTP costs where the cores
    // are the limit, less sensitive than wall-clock throughput to other load on the machine.
    let mut per_cpu: Vec<f64> = http
        .iter()
        .zip(&local)
        .map(|(h, l)| l.cpu_ms / h.cpu_ms.max(1e-9))
        .collect();
    println!(
        "compare: HTTP over in-process throughput: median {:.3} (range {}) over {} rounds; HTTP \
         median {:.1} requests/s, in-process {:.1}",
        median_of(&mut ratios),
        range(&ratios),
        ratios.len(),
        median_of(&mut h_rps),
        median_of(&mut l_rps),
    );
    println!(
        "compare: CPU per request (median): HTTP {:.2} ms = server {:.2} + generator {:.2}; \
         in-process {:.2} ms (clients, batcher and model in one process: the whole process's \
         CPU). HTTP's split: the generator is its runtime's threads ({GENERATOR_THREADS}), the \
         server the rest of the process",
        median_of(&mut h_cpu),
        median_of(&mut h_server),
        median_of(&mut h_gen),
        median_of(&mut l_cpu),
    );
    println!(
        "compare: HTTP over in-process requests per CPU-second (generator included): median \
         {:.3} (range {})",
        median_of(&mut per_cpu),
        range(&per_cpu),
    );
    Ok(())
}

fn http_round(
    args: &Args,
    work: &[Vec<Request>],
    generator: &Runtime,
    server_rt: &Runtime,
) -> Result<Side, String> {
    let server = Spawned::start(server_rt, server_config(args))?;
    let url: Uri = format!("http://{}/v1/completions", server.addr)
        .parse()
        .map_err(|e| format!("the completions URL: {e}"))?;
    let before = Cpu::now();
    let mut m = generator.block_on(drive(
        &url,
        Plan::Closed {
            lists: work.to_vec(),
            cycle: false,
        },
        bounds(args),
    ));
    let cpu = Cpu::now().since(before);
    let text = generator
        .block_on(metrics(&format!("http://{}", server.addr)))
        .unwrap_or_default();
    server.stop(server_rt)?;
    let step_size = sample(&text, "latchless_batch_step_size_sum").unwrap_or(0.0)
        / sample(&text, "latchless_batch_step_size_count")
            .unwrap_or(0.0)
            .max(1.0);
    let step_ms =
        sample(&text, "latchless_batch_step_seconds{quantile=\"0.5\"}").unwrap_or(0.0) * 1e3;
    if m.ok == 0 {
        return Err(format!("no request was answered over HTTP: {:?}", m.errors));
    }
    if m.ok < work.iter().map(Vec::len).sum::<usize>() as u64 {
        eprintln!(
            "loadgen: only {} of the round's requests were answered within --duration {} s \
             ({} refused, errors {:?})",
            m.ok, args.duration, m.refused, m.errors
        );
    }
    let per = |d: Duration| ms(d) / m.ok as f64;
    let generator_cpu = cpu.generator;
    Ok(Side {
        requests_per_sec: m.requests_per_sec(),
        p50_ms: quantile(&mut m.latency_ms, 0.5),
        step_size,
        step_ms,
        cpu_ms: per(cpu.process),
        server_ms: generator_cpu.map(|g| per(cpu.process.saturating_sub(g))),
        generator_ms: generator_cpu.map(per),
    })
}

fn local_round(args: &Args, work: &[Vec<Request>]) -> Result<Side, String> {
    match args.model {
        ModelKind::Lstm => {
            let sizes = match args.size {
                ModelSize::Showcase => LstmConfig::showcase(),
                ModelSize::Tiny => LstmConfig::tiny(),
            };
            let model = LstmLm::new(sizes, args.seed).map_err(|e| e.to_string())?;
            local_run(args, work, model)
        }
        ModelKind::Transformer => {
            let sizes = match args.size {
                ModelSize::Showcase => TransformerConfig::showcase(),
                ModelSize::Tiny => TransformerConfig::tiny(),
            };
            let model = TransformerLm::new(sizes, args.seed).map_err(|e| e.to_string())?;
            local_run(args, work, model)
        }
    }
}

/// The in-process side: the showcase's continuous mode (client threads submitting to a
/// `StreamBatcher` over the same step handler the server runs), with the server's settings.
fn local_run<M: LanguageModel>(
    args: &Args,
    work: &[Vec<Request>],
    model: M,
) -> Result<Side, String> {
    let config = server_config(args);
    let engine =
        Arc::new(Engine::new(Arc::new(model), config.session_bytes).map_err(|e| e.to_string())?);
    let mut batch = BatchConfig::default();
    batch.max_batch_size = config.max_batch_size;
    batch.max_queue = config.max_queue;
    let serving = Serving {
        batch,
        join: JoinPolicy::default(),
        workers: config.workers,
        arrivals: Arrivals::Closed,
        high_share: 0.0,
        state_budget: config.state_budget,
    };
    let progress = indicatif::ProgressBar::hidden();
    let o = workload::run(Mode::Continuous, engine, work, &serving, &progress)?;
    if !o.errors.is_empty() {
        return Err(format!("in-process errors: {:?}", o.errors));
    }
    Ok(Side {
        requests_per_sec: o.requests_per_sec(),
        p50_ms: o.latency_ms(0.5),
        step_size: o.histograms.as_ref().map_or(0.0, |h| h.batch_size.mean()),
        step_ms: o
            .histograms
            .as_ref()
            .map_or(0.0, |h| h.compute_time.quantile(0.5) as f64 / 1e3),
        cpu_ms: ms(o.cpu) / o.ok.max(1) as f64,
        server_ms: None,
        generator_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_taken() {
        assert_eq!(
            loopback_base("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(loopback_base("http://localhost:1").is_ok());
        assert!(loopback_base("http://[::1]:1").is_ok());
        assert!(loopback_base("http://127.3.4.5:1").is_ok());
        for bad in [
            "http://10.0.0.1:80",
            "http://example.com",
            "https://127.0.0.1:1",
            "nope",
        ] {
            assert!(loopback_base(bad).is_err(), "{bad}");
        }
        let e = loopback_base("http://192.168.1.2:8080").unwrap_err();
        assert!(e.contains("loopback only"), "{e}");
    }

    #[test]
    fn ticks_from_a_stat_line() {
        let line = "4242 (loadgen-rt (x) 1) S 1 2 3 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0";
        assert_eq!(stat_ticks(line), Some(22));
        assert_eq!(stat_ticks("4242 (cut) S 1 2"), None);
        assert_eq!(stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn quantiles_of_a_sample() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn a_sample_of_prometheus_text() {
        let text =
            "# HELP x y\nx_count{phase=\"admit\"} 3\nx{phase=\"admit\",quantile=\"0.5\"} 0.0001\n";
        assert_eq!(sample(text, "x_count{phase=\"admit\"}"), Some(3.0));
        assert_eq!(
            sample(text, "x{phase=\"admit\",quantile=\"0.5\"}"),
            Some(0.0001)
        );
        assert_eq!(sample(text, "x_sum"), None);
    }
}
