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
    BatchConfig, BatchStats, Batcher, CallError, JoinPolicy, Streamed, SubmitError,
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
}

impl Mode {
    /// The mode's name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Sequential => "one at a time",
            Self::Pool => "rayon pool",
            Self::Batcher => "batcher",
            Self::Continuous => "continuous",
        }
    }
}

/// The requests the clients send.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    ///                    prompt_len: 4..=8, max_new: 1..=2, seed: 5 };
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
            let max_new = rng.random_range(self.max_new.clone());
            out[client].push(Request {
                session,
                prompt,
                max_new,
            });
        }
        out
    }
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
    /// Times a client was refused with `Overloaded` and retried (batcher only).
    pub refusals: u64,
    /// Latency of answered requests, in microseconds, from first submission to reply.
    pub latency: Histogram<u64>,
    /// Time to the first thing an answered request's client receives, in microseconds, from
    /// first submission: the first streamed byte in the continuous mode, the whole reply in the
    /// others.
    pub first_byte: Histogram<u64>,
    /// Time of each model call (a batch, or a single request), in microseconds.
    pub compute: Histogram<u64>,
    /// The batcher's statistics (batcher only).
    pub batches: Option<BatchStats>,
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

    /// A quantile of the time to the first byte, in milliseconds.
    pub fn first_byte_ms(&self, q: f64) -> f64 {
        self.first_byte.value_at_quantile(q) as f64 / 1000.0
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
/// that every mode starts with an empty session cache. The batchers run `workers` workers: one
/// computes on `engine`'s own compute pool; several each compute on a rayon pool of their own
/// with as many threads as `engine`'s, so that no worker queues behind another's kernels. The
/// continuous mode lets waiting requests join a running batch under `join`.
///
/// # Errors
///
/// If a thread, the pool or the batcher cannot be started.
pub fn run<M: LanguageModel>(
    mode: Mode,
    engine: Arc<Engine<M>>,
    work: &[Vec<Request>],
    batch: &BatchConfig,
    join: JoinPolicy,
    workers: usize,
    progress: &ProgressBar,
) -> Result<Outcome, String> {
    let compute = Arc::new(Mutex::new(histogram()));
    let cpu_start = ProcessTime::now();
    let start = Instant::now();
    let (answers, refusals, batches) = match mode {
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
            let answers = clients(work, progress, |req| {
                let (reply_tx, reply_rx) = mpsc::sync_channel(1);
                if tx.send((req, reply_tx)).is_err() {
                    return (Err("the server stopped".to_string()), None);
                }
                let answer = reply_rx
                    .recv()
                    .map_err(|_| "the server stopped".to_string())
                    .and_then(|a| a);
                (answer, None)
            });
            drop(tx);
            server
                .join()
                .map_err(|_| "the server panicked".to_string())?;
            (answers, 0, None)
        }
        Mode::Pool => {
            let workers = thread::available_parallelism().map_or(2, |n| n.get());
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(workers)
                .thread_name(|i| format!("pool-worker-{i}"))
                .build()
                .map_err(|e| e.to_string())?;
            let answers = clients(work, progress, |req| {
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
                (answer, None)
            });
            (answers, 0, None)
        }
        Mode::Batcher => {
            let handler_engine = Arc::clone(&engine);
            let handler_compute = Arc::clone(&compute);
            let builder = Batcher::builder().config(batch.clone()).cost(Request::cost);
            let batcher = if workers <= 1 {
                builder.spawn(move |reqs| timed(&handler_compute, || handler_engine.serve(reqs)))
            } else {
                let threads = engine.compute_threads();
                builder.spawn_pool(workers, move || {
                    // Made on the worker's thread. A pool that cannot be built panics here, and
                    // the batcher answers the batch `HandlerPanicked` and tries again.
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .thread_name(|i| format!("batcher-compute-{i}"))
                        .build()
                        .expect("a worker's compute pool");
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
            let answers = clients(work, progress, |mut req| loop {
                match batcher.call(req) {
                    Ok(answer) => return (answer.map_err(|e| e.to_string()), None),
                    Err(CallError::Refused(SubmitError::Overloaded(back))) => {
                        refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        req = back;
                        thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return (Err(e.to_string()), None),
                }
            });
            batcher.shutdown();
            (answers, refusals.into_inner(), Some(batcher.stats()))
        }
        Mode::Continuous => {
            let handler_engine = Arc::clone(&engine);
            let builder = Batcher::builder()
                .config(batch.clone())
                .cost(Request::cost)
                .join_policy(join);
            let batcher = if workers <= 1 {
                builder.spawn_steps(Continuous::new(Arc::clone(&engine), None))
            } else {
                let threads = engine.compute_threads();
                builder.spawn_steps_pool(workers, move || {
                    // Made on the worker's thread; a pool that cannot be built panics here, and
                    // the batcher fails the items of that join and tries again.
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .thread_name(|i| format!("continuous-compute-{i}"))
                        .build()
                        .expect("a worker's compute pool");
                    Continuous::new(Arc::clone(&handler_engine), Some(pool))
                })
            }
            .map_err(|e| e.to_string())?;
            let refusals = std::sync::atomic::AtomicU64::new(0);
            let answers = clients(work, progress, |mut req| {
                let start = Instant::now();
                let stream = loop {
                    match batcher.submit(req) {
                        Ok(stream) => break stream,
                        Err(SubmitError::Overloaded(back)) => {
                            refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            req = back;
                            thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => return (Err(e.to_string()), None),
                    }
                };
                let mut first = None;
                for item in stream {
                    first.get_or_insert_with(|| start.elapsed());
                    if let Streamed::Done(done) = item {
                        let answer = match done {
                            Ok(answer) => answer.map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        return (answer, first);
                    }
                }
                (
                    Err("the stream ended without a final item".to_string()),
                    first,
                )
            });
            batcher.shutdown();
            (answers, refusals.into_inner(), Some(batcher.stats()))
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
        first_byte: histogram(),
        compute: compute
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram()),
        batches,
        session_hit_ratio: engine.sessions().stats().hit_ratio(),
    };
    for (answer, latency, first_byte) in answers {
        match answer {
            Ok(reply) => {
                outcome.ok += 1;
                outcome.tokens += reply.text.len() as u64;
                outcome.latency.saturating_record(micros(latency));
                outcome
                    .first_byte
                    .saturating_record(micros(first_byte.unwrap_or(latency)));
            }
            Err(e) => *outcome.errors.entry(e).or_default() += 1,
        }
    }
    Ok(outcome)
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

/// Runs one thread per client; each sends its requests one after another through `send`,
/// which returns the answer and, for a streamed answer, how long its first item took.
fn clients(
    work: &[Vec<Request>],
    progress: &ProgressBar,
    send: impl Fn(Request) -> (ClientAnswer, Option<Duration>) + Sync,
) -> Vec<(ClientAnswer, Duration, Option<Duration>)> {
    thread::scope(|s| {
        let handles: Vec<_> = work
            .iter()
            .map(|reqs| {
                let send = &send;
                s.spawn(move || {
                    reqs.iter()
                        .map(|req| {
                            let start = Instant::now();
                            let (answer, first) = send(req.clone());
                            progress.inc(1);
                            (answer, start.elapsed(), first)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a client thread panicked"))
            .collect()
    })
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
