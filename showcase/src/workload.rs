//! The example's workload and the three ways of serving it: one request at a time, a rayon
//! thread pool, and the batcher. Every mode serves the same requests from the same client
//! threads, each client sending its next request when the previous one is answered.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cpu_time::ProcessTime;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use latchless::batch::{
    BatchConfig, BatchHistograms, BatchStats, Batcher, CallError, JoinPolicy, PriorityClass,
    Streamed, SubmitError,
};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::continuous::Continuous;
use crate::model::{generate, Job, LanguageModel};
use crate::serve::{Answer, Engine, Reply, Request};

/// How requests are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Mode {
    /// One request at a time, on one server thread fed by a channel.
    Sequential,
    /// A rayon thread pool of its own, one task per request, as many workers as cores.
    Pool,
    /// latchless's `Batcher`: requests from all clients computed together, by a pool of
    /// batcher workers.
    Batcher,
    /// latchless's `StreamBatcher` (continuous batching): each worker runs one batch that
    /// requests join and leave between decode steps, streaming each byte as it is made.
    Continuous,
    /// The same continuous batcher, with clients that want the whole reply, as every other mode
    /// gives it: each skips its stream's chunks (`ChunkStream::skip_chunks`), so it is woken
    /// once, for the final item, instead of once per byte. Like for like with the pool.
    ContinuousWhole,
}

impl Mode {
    /// The mode's name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Sequential => "one at a time",
            Self::Pool => "rayon pool",
            Self::Batcher => "batcher",
            Self::Continuous => "continuous",
            Self::ContinuousWhole => "continuous, whole",
        }
    }
}

/// The requests the clients send.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Client threads.
    pub clients: usize,
    /// Requests in all, shared out among the clients.
    pub requests: usize,
    /// Sessions each client takes turns with (its own: clients never share a session).
    pub sessions_per_client: usize,
    /// Prompt lengths in bytes, drawn uniformly.
    pub prompt_len: RangeInclusive<usize>,
    /// Bytes to generate per request, drawn uniformly.
    pub max_new: RangeInclusive<usize>,
    /// The share of requests (0 to 1) that generate `long_factor` times as many bytes: a
    /// bimodal mix of short and long generations. 0 for none.
    pub long_share: f64,
    /// How many times longer a long request's generation is.
    pub long_factor: usize,
    /// Seed of the prompts and lengths.
    pub seed: u64,
}

impl Workload {
    /// Each client's requests, in the order it sends them; the same for every mode.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless_showcase::workload::Workload;
    ///
    /// let w = Workload { clients: 3, requests: 10, sessions_per_client: 2,
    ///                    prompt_len: 4..=8, max_new: 1..=2, long_share: 0.1, long_factor: 10,
    ///                    seed: 5 };
    /// let per_client = w.requests();
    /// assert_eq!(per_client.iter().map(Vec::len).sum::<usize>(), 10);
    /// assert_eq!(per_client, w.requests());
    /// ```
    pub fn requests(&self) -> Vec<Vec<Request>> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.seed);
        let clients = self.clients.max(1);
        let per_session = self.sessions_per_client.max(1);
        let mut out = vec![Vec::new(); clients];
        for i in 0..self.requests {
            let client = i % clients;
            let turn = out[client].len();
            let session = (client * per_session + turn % per_session) as u64;
            let len = rng.random_range(self.prompt_len.clone());
            // Printable ASCII, so a reader can look at prompts if they want.
            let prompt = (0..len).map(|_| rng.random_range(b' '..=b'~')).collect();
            let mut max_new = rng.random_range(self.max_new.clone());
            // Drawn only for a bimodal mix, so that other workloads stay as they were.
            if self.long_share > 0.0 && rng.random_bool(self.long_share.min(1.0)) {
                max_new = max_new.saturating_mul(self.long_factor);
            }
            out[client].push(Request {
                session,
                prompt,
                max_new,
            });
        }
        out
    }
}

/// How the clients send their requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// Closed loop: one thread per client, each sending its next request when the previous one
    /// is answered (the offered load adapts to the server).
    Closed,
    /// Open loop: requests arrive at random (Poisson) times, `rate` per second on average,
    /// whatever the server's speed, each sent by a thread of its own; a request's latency counts
    /// from its scheduled arrival. The requests are taken in turn from each client's list, each
    /// with a session of its own (independent arrivals would otherwise send two turns of one
    /// session at once).
    Open {
        /// Mean arrivals per second.
        rate: f64,
        /// Seed of the arrival times.
        seed: u64,
    },
}

/// The default of [`Serving::state_budget`]: 2 MiB, twice a core's L2 cache on the AMD host
/// measured, and the best of the budgets swept there (BENCHMARKS.md). That is four of the
/// showcase transformer's rows at its full context (512 KiB each), five or six at the closed
/// loop's usual session lengths. The LSTM's rows hold 4 KiB each, so `max_batch_size` bounds
/// its batches first.
pub const DEFAULT_STATE_BUDGET: u64 = 2 << 20;

/// How the batching modes are set up, and how requests arrive.
#[derive(Debug, Clone)]
pub struct Serving {
    /// The batchers' limits (both batching modes).
    pub batch: BatchConfig,
    /// When waiting requests join the continuous batch.
    pub join: JoinPolicy,
    /// Workers of each batcher.
    pub workers: usize,
    /// How requests arrive.
    pub arrivals: Arrivals,
    /// In the open loop, the share of requests (0 to 1) sent at high priority: the batchers then
    /// run two priority classes (the high one first, with aging), the other modes serve in
    /// arrival order. 0 for one class.
    pub high_share: f64,
    /// The continuous batch's budget of row state, in bytes: a worker's running rows hold at
    /// most this much state between them ([`Engine::row_bytes`] is a request's cost, in place of
    /// `batch.max_batch_cost`), so that what every step reads stays in cache. `u64::MAX` for no
    /// bound but `batch.max_batch_size`.
    pub state_budget: u64,
}

/// What one mode measured.
#[derive(Debug)]
pub struct Outcome {
    /// The mode.
    pub mode: Mode,
    /// Wall-clock time from the first request to the last reply.
    pub wall: Duration,
    /// CPU time of the whole process over the same span (clients, server and compute).
    pub cpu: Duration,
    /// Requests answered with a reply.
    pub ok: u64,
    /// Bytes generated over all replies.
    pub tokens: u64,
    /// Requests answered with an error, by error.
    pub errors: BTreeMap<String, u64>,
    /// Refusals with `Overloaded` (batchers only). In the closed loop, times a client was
    /// refused and retried after a millisecond; in the open loop, requests refused and dropped,
    /// as a server facing more arrivals than it can serve would: they count in neither `ok`
    /// nor `errors`, and the latencies are the admitted requests'.
    pub refusals: u64,
    /// Latency of answered requests, in microseconds, from first submission to reply.
    pub latency: Histogram<u64>,
    /// Latency of answered high-priority requests (open loop with `high_share`), in
    /// microseconds.
    pub latency_high: Histogram<u64>,
    /// Time to the first thing an answered request's client receives, in microseconds, from
    /// first submission: the first streamed byte in the continuous mode, the whole reply in the
    /// others.
    pub first_byte: Histogram<u64>,
    /// Gaps between consecutive streamed bytes of a request (continuous mode only), in
    /// microseconds: the inter-token latency.
    pub inter_token: Histogram<u64>,
    /// Time of each model call (a batch, or a single request), in microseconds.
    pub compute: Histogram<u64>,
    /// The batcher's statistics (batcher only).
    pub batches: Option<BatchStats>,
    /// The batcher's histograms (batcher only): for the continuous batcher a "batch" is a step,
    /// its size the requests running in it.
    pub histograms: Option<BatchHistograms>,
    /// Session-cache hits over lookups.
    pub session_hit_ratio: f64,
}

impl Outcome {
    /// Answered requests per wall-clock second.
    pub fn requests_per_sec(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Generated bytes per wall-clock second.
    pub fn tokens_per_sec(&self) -> f64 {
        self.tokens as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Answered requests per CPU-second of the process.
    pub fn requests_per_cpu_sec(&self) -> f64 {
        self.ok as f64 / self.cpu.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// A latency quantile of the high-priority requests in milliseconds (0 if none).
    pub fn latency_high_ms(&self, q: f64) -> f64 {
        self.latency_high.value_at_quantile(q) as f64 / 1000.0
    }

    /// A quantile of the time to the first byte, in milliseconds.
    pub fn first_byte_ms(&self, q: f64) -> f64 {
        self.first_byte.value_at_quantile(q) as f64 / 1000.0
    }

    /// A quantile of the inter-token latency in milliseconds (0 for modes that do not stream).
    pub fn inter_token_ms(&self, q: f64) -> f64 {
        self.inter_token.value_at_quantile(q) as f64 / 1000.0
    }

    /// Answered requests whose latency was at most `limit`, per wall-clock second: the goodput.
    pub fn goodput_per_sec(&self, limit: Duration) -> f64 {
        let within = self.latency.count_between(0, micros(limit));
        within as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to an hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// How a client's request ended.
type ClientAnswer = Result<Reply, String>;

/// Serves `work` (one list per client) in `mode` and measures it. `engine` should be fresh, so
/// that every mode starts with an empty session cache. The batchers run `workers` workers, so
/// that no worker queues behind another's kernels. The whole-request batcher's one worker
/// computes on `engine`'s own compute pool; several each compute on a rayon pool of their own
/// with as many threads as `engine`'s. The continuous mode's workers compute on their own
/// threads when `engine` has one compute thread (the models run every kernel on the calling
/// thread), on pools as above otherwise, and let waiting requests join a running batch under
/// `join`.
///
/// # Errors
///
/// If a thread, the pool or the batcher cannot be started.
pub fn run<M: LanguageModel>(
    mode: Mode,
    engine: Arc<Engine<M>>,
    work: &[Vec<Request>],
    serving: &Serving,
    progress: &ProgressBar,
) -> Result<Outcome, String> {
    let (batch, join, workers) = (&serving.batch, serving.join, serving.workers);
    let arrivals = serving.arrivals;
    // In the open loop a refused request is dropped, not retried.
    let open = matches!(arrivals, Arrivals::Open { .. });
    let classes = serving.high_share > 0.0;
    // With two classes, class 0 is the high one; `submit` and `call` use the last class.
    let with_classes = |b: latchless::batch::BatcherBuilder<Request, Answer>| {
        if classes {
            b.class(PriorityClass::new()).class(PriorityClass::new())
        } else {
            b
        }
    };
    let compute = Arc::new(Mutex::new(histogram()));
    let cpu_start = ProcessTime::now();
    let start = Instant::now();
    let (answers, refusals, batches, histograms) = match mode {
        Mode::Sequential => {
            let (tx, rx) = mpsc::channel::<(Request, mpsc::SyncSender<ClientAnswer>)>();
            let server_engine = Arc::clone(&engine);
            let compute = Arc::clone(&compute);
            let server = thread::Builder::new()
                .name("sequential-server".into())
                .spawn(move || {
                    for (req, reply) in rx {
                        let out = timed(&compute, || server_engine.serve(vec![req]));
                        let answer = first(out);
                        let _ = reply.send(answer);
                    }
                })
                .map_err(|e| e.to_string())?;
            let answers = send_all(
                work,
                arrivals,
                serving.high_share,
                progress,
                |req, _high| {
                    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
                    if tx.send((req, reply_tx)).is_err() {
                        return Sent::whole(Err("the server stopped".to_string()));
                    }
                    let answer = reply_rx
                        .recv()
                        .map_err(|_| "the server stopped".to_string())
                        .and_then(|a| a);
                    Sent::whole(answer)
                },
            );
            drop(tx);
            server
                .join()
                .map_err(|_| "the server panicked".to_string())?;
            (answers, 0, None, None)
        }
        Mode::Pool => {
            let workers = thread::available_parallelism().map_or(2, |n| n.get());
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(workers)
                .thread_name(|i| format!("pool-worker-{i}"))
                .build()
                .map_err(|e| e.to_string())?;
            let answers = send_all(
                work,
                arrivals,
                serving.high_share,
                progress,
                |req, _high| {
                    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
                    let engine = Arc::clone(&engine);
                    let compute = Arc::clone(&compute);
                    pool.spawn(move || {
                        let out = timed(&compute, || engine.serve_on_current_pool(vec![req]));
                        let _ = reply_tx.send(first(out));
                    });
                    let answer = reply_rx
                        .recv()
                        .map_err(|_| "the pool dropped the task".to_string())
                        .and_then(|a| a);
                    Sent::whole(answer)
                },
            );
            (answers, 0, None, None)
        }
        Mode::Batcher => {
            let handler_engine = Arc::clone(&engine);
            let handler_compute = Arc::clone(&compute);
            let builder =
                with_classes(Batcher::builder().config(batch.clone()).cost(Request::cost));
            let batcher = if workers <= 1 {
                builder.spawn(move |reqs| timed(&handler_compute, || handler_engine.serve(reqs)))
            } else {
                let threads = engine.compute_threads();
                builder.spawn_pool(workers, move || {
                    // Made on the worker's thread. A pool that cannot be built panics here, and
                    // the batcher answers the batch `HandlerPanicked` and tries again.
                    let pool = compute_pool(threads, "batcher");
                    let (engine, compute) =
                        (Arc::clone(&handler_engine), Arc::clone(&handler_compute));
                    move |reqs| {
                        timed(&compute, || {
                            pool.install(|| engine.serve_on_current_pool(reqs))
                        })
                    }
                })
            }
            .map_err(|e| e.to_string())?;
            let refusals = std::sync::atomic::AtomicU64::new(0);
            let answers = send_all(
                work,
                arrivals,
                serving.high_share,
                progress,
                |mut req, high| loop {
                    let sent = if high {
                        batcher
                            .submit_to(req, 0)
                            .map_err(CallError::Refused)
                            .and_then(|p| p.wait().map_err(CallError::Failed))
                    } else {
                        batcher.call(req)
                    };
                    match sent {
                        Ok(answer) => return Sent::whole(answer.map_err(|e| e.to_string())),
                        Err(CallError::Refused(SubmitError::Overloaded(back))) => {
                            refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if open {
                                return Sent::refused();
                            }
                            req = back;
                            thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => return Sent::whole(Err(e.to_string())),
                    }
                },
            );
            batcher.shutdown();
            let histograms = Some(batcher.histograms());
            (
                answers,
                refusals.into_inner(),
                Some(batcher.stats()),
                histograms,
            )
        }
        Mode::Continuous | Mode::ContinuousWhole => {
            let whole = mode == Mode::ContinuousWhole;
            let handler_engine = Arc::clone(&engine);
            let mut config = batch.clone();
            config.max_batch_cost = serving.state_budget;
            let builder = with_classes(
                Batcher::builder()
                    .config(config)
                    .cost(Engine::row_cost(&engine))
                    .join_policy(join),
            );
            // One compute thread a worker: the worker's own. The showcase's models run every
            // kernel on the calling thread, so a step needs no hand-off to a pool's thread and
            // back (with more threads, each worker gets a pool of its own).
            let threads = engine.compute_threads();
            let batcher = if workers <= 1 && threads <= 1 {
                builder.spawn_steps(Continuous::on_worker_thread(Arc::clone(&engine)))
            } else if workers <= 1 {
                builder.spawn_steps(Continuous::new(Arc::clone(&engine), None))
            } else {
                builder.spawn_steps_pool(workers, move || {
                    let engine = Arc::clone(&handler_engine);
                    if threads <= 1 {
                        return Continuous::on_worker_thread(engine);
                    }
                    // Made on the worker's thread; a pool that cannot be built panics here, and
                    // the batcher fails the items of that join and tries again.
                    Continuous::new(engine, Some(compute_pool(threads, "continuous")))
                })
            }
            .map_err(|e| e.to_string())?;
            let refusals = std::sync::atomic::AtomicU64::new(0);
            let answers = send_all(
                work,
                arrivals,
                serving.high_share,
                progress,
                |mut req, high| {
                    let start = Instant::now();
                    let stream = loop {
                        let submitted = if high {
                            batcher.submit_to(req, 0, None)
                        } else {
                            batcher.submit(req)
                        };
                        match submitted {
                            Ok(stream) => break stream,
                            Err(SubmitError::Overloaded(back)) => {
                                refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if open {
                                    return Sent::refused();
                                }
                                req = back;
                                thread::sleep(Duration::from_millis(1));
                            }
                            Err(e) => return Sent::whole(Err(e.to_string())),
                        }
                    };
                    let mut stream = stream;
                    if whole {
                        // The final item only: its time is the first byte's, as in the pool.
                        stream.skip_chunks();
                    }
                    let mut sent = Sent::whole(Err("the stream ended without a final item".into()));
                    let mut last = None;
                    for item in stream {
                        let now = start.elapsed();
                        sent.first.get_or_insert(now);
                        if let Some(before) = last.replace(now) {
                            sent.gaps.push(now - before);
                        }
                        if let Streamed::Done(done) = item {
                            sent.answer = match done {
                                Ok(answer) => answer.map_err(|e| e.to_string()),
                                Err(e) => Err(e.to_string()),
                            };
                            break;
                        }
                    }
                    sent
                },
            );
            batcher.shutdown();
            let histograms = Some(batcher.histograms());
            (
                answers,
                refusals.into_inner(),
                Some(batcher.stats()),
                histograms,
            )
        }
    };
    let wall = start.elapsed();
    let cpu = cpu_start.elapsed();

    let mut outcome = Outcome {
        mode,
        wall,
        cpu,
        ok: 0,
        tokens: 0,
        errors: BTreeMap::new(),
        refusals,
        latency: histogram(),
        latency_high: histogram(),
        first_byte: histogram(),
        inter_token: histogram(),
        compute: compute
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram()),
        batches,
        histograms,
        session_hit_ratio: engine.sessions().stats().hit_ratio(),
    };
    for (sent, latency) in answers {
        if sent.refused {
            continue;
        }
        match sent.answer {
            Ok(reply) => {
                outcome.ok += 1;
                outcome.tokens += reply.text.len() as u64;
                outcome.latency.saturating_record(micros(latency));
                if sent.high {
                    outcome.latency_high.saturating_record(micros(latency));
                }
                // The first byte, like every latency, counts from the request's start (its
                // arrival, in the open loop), which may be before `send` began.
                let lag = latency.saturating_sub(sent.took);
                let first = sent.first.map_or(latency, |f| f + lag);
                outcome.first_byte.saturating_record(micros(first));
                for gap in sent.gaps {
                    outcome.inter_token.saturating_record(micros(gap));
                }
            }
            Err(e) => *outcome.errors.entry(e).or_default() += 1,
        }
    }
    Ok(outcome)
}

/// A batcher worker's own compute pool of `threads` threads, named `<mode>-compute-<i>`.
/// Panics if the pool cannot be built (called from a handler factory, where the batcher turns a
/// panic into failed requests and tries again).
fn compute_pool(threads: usize, mode: &'static str) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{mode}-compute-{i}"))
        .build()
        .expect("a worker's compute pool")
}

/// Runs `f`, recording how long it took in `compute`.
fn timed<R>(compute: &Mutex<Histogram<u64>>, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let out = f();
    let took = micros(start.elapsed());
    if let Ok(mut h) = compute.lock() {
        h.saturating_record(took);
    }
    out
}

fn first(mut out: Vec<Answer>) -> ClientAnswer {
    match out.pop() {
        Some(answer) => answer.map_err(|e| e.to_string()),
        None => Err("no reply".to_string()),
    }
}

/// What a client got for one request.
struct Sent {
    answer: ClientAnswer,
    /// When the first streamed item came, from the start of `send` (streamed answers only).
    first: Option<Duration>,
    /// Gaps between consecutive streamed items.
    gaps: Vec<Duration>,
    /// How long `send` took (set by `send_all`).
    took: Duration,
    /// Whether it was sent at high priority (set by `send_all`).
    high: bool,
    /// Whether it was refused and dropped (open loop): counted in `Outcome::refusals` only.
    refused: bool,
}

impl Sent {
    /// An answer that came whole, not streamed.
    fn whole(answer: ClientAnswer) -> Self {
        Self {
            answer,
            first: None,
            gaps: Vec::new(),
            took: Duration::ZERO,
            high: false,
            refused: false,
        }
    }

    /// A request refused and dropped.
    fn refused() -> Self {
        Self {
            refused: true,
            ..Self::whole(Err("refused".into()))
        }
    }
}

/// Sends every request of `work` through `send` as `arrivals` says; returns what each got and
/// its latency (from its start in the closed loop, from its scheduled arrival in the open one).
fn send_all(
    work: &[Vec<Request>],
    arrivals: Arrivals,
    high_share: f64,
    progress: &ProgressBar,
    send: impl Fn(Request, bool) -> Sent + Sync,
) -> Vec<(Sent, Duration)> {
    let timed_send = |req: Request, high: bool, since: Instant| {
        let start = Instant::now();
        let mut sent = send(req, high);
        sent.took = start.elapsed();
        sent.high = high;
        progress.inc(1);
        let latency = since.elapsed();
        (sent, latency)
    };
    match arrivals {
        Arrivals::Closed => thread::scope(|s| {
            let handles: Vec<_> = work
                .iter()
                .map(|reqs| {
                    let timed_send = &timed_send;
                    s.spawn(move || {
                        reqs.iter()
                            .map(|req| timed_send(req.clone(), false, Instant::now()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a client thread panicked"))
                .collect()
        }),
        Arrivals::Open { rate, seed } => {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let longest = work.iter().map(Vec::len).max().unwrap_or(0);
            // In turn from each client's list; every request a session of its own.
            let reqs: Vec<Request> = (0..longest)
                .flat_map(|turn| work.iter().filter_map(move |w| w.get(turn)))
                .enumerate()
                .map(|(i, r)| Request {
                    session: 1 << 32 | i as u64,
                    ..r.clone()
                })
                .collect();
            thread::scope(|s| {
                let start = Instant::now();
                let mut at = 0.0f64;
                let mut handles = Vec::with_capacity(reqs.len());
                for req in reqs {
                    // Exponential gaps: a Poisson process of `rate` arrivals per second.
                    let u: f64 = rng.random_range(f64::EPSILON..1.0);
                    at += -u.ln() / rate.max(1e-9);
                    let arrival = start + Duration::from_secs_f64(at);
                    let high = high_share > 0.0 && rng.random_bool(high_share.min(1.0));
                    if let Some(wait) = arrival.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    let timed_send = &timed_send;
                    let handle = thread::Builder::new()
                        .stack_size(256 << 10)
                        .spawn_scoped(s, move || timed_send(req, high, arrival))
                        .expect("a client thread");
                    handles.push(handle);
                }
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a client thread panicked"))
                    .collect()
            })
        }
    }
}

/// The jobs that serving `reqs` with `engine` would run now: each continues its session's
/// state if the engine's cache holds it (read without touching the cache's statistics), else
/// starts fresh; the model's [`fit`](LanguageModel::fit) applied as when serving.
pub fn jobs_for<M: LanguageModel>(engine: &Engine<M>, reqs: &[Request]) -> Vec<Job<M::State>> {
    let model = engine.model();
    reqs.iter()
        .map(|r| {
            let state = match engine.sessions().peek(&r.session) {
                Some(s) => s.state().clone(),
                None => model.fresh_state(),
            };
            let prompt: Vec<u32> = r.prompt.iter().map(|&b| u32::from(b)).collect();
            let (state, feed) = model.fit(state, &prompt, r.max_new);
            Job::new(state, feed, r.max_new)
        })
        .collect()
}

/// What batching alone gains on `jobs`, before any serving cost: the model's jobs per second
/// when it generates them all together, over its jobs per second when it generates them one
/// at a time, on the engine's compute thread. The median of `reps` runs of each, interleaved.
///
/// # Errors
///
/// A candle error, or a job with an empty prompt.
pub fn raw_batching_gain<M: LanguageModel>(
    engine: &Engine<M>,
    jobs: &[Job<M::State>],
    reps: usize,
) -> candle_core::Result<RawGain> {
    let model = engine.model();
    let n = jobs.len() as f64;
    let mut alone = Vec::new();
    let mut together = Vec::new();
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        for job in jobs {
            engine.on_compute_thread(|| generate(model, &mut [job.clone()]))?;
        }
        alone.push(n / start.elapsed().as_secs_f64().max(1e-9));
        let mut all = jobs.to_vec();
        let start = Instant::now();
        engine.on_compute_thread(|| generate(model, &mut all))?;
        together.push(n / start.elapsed().as_secs_f64().max(1e-9));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(RawGain {
        batch: jobs.len(),
        alone: median(alone),
        together: median(together),
    })
}

/// The result of [`raw_batching_gain`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawGain {
    /// How many requests ran together.
    pub batch: usize,
    /// Requests per second, one at a time.
    pub alone: f64,
    /// Requests per second, all together.
    pub together: f64,
}

impl RawGain {
    /// `together / alone`.
    pub fn gain(&self) -> f64 {
        self.together / self.alone.max(1e-9)
    }
}
