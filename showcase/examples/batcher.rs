//! Serves a candle LSTM and a candle transformer to many client threads, five ways, and
//! prints what each way achieved: one request at a time, a rayon thread pool, latchless's
//! `Batcher` batching whole requests, and its continuous batching (`spawn_steps_pool`), which
//! streams each byte, or (`continuous-whole`) answers clients that skip the stream's chunks
//! with the whole reply, as the other ways do (with each session's model state in latchless's
//! `Cache`).
//!
//! ```text
//! cargo run --release --example batcher
//! cargo run --release --example batcher -- --model transformer --clients 64 --max-wait-ms 2
//! cargo run --release --example batcher -- --help
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use latchless::batch::{BatchConfig, JoinPolicy};
use latchless_showcase::lstm::{LstmConfig, LstmLm};
use latchless_showcase::model::LanguageModel;
use latchless_showcase::serve::{Engine, Request};
use latchless_showcase::transformer::{TransformerConfig, TransformerLm};
use latchless_showcase::workload::{
    self, Arrivals, Mode, Outcome, Serving, Workload, DEFAULT_STATE_BUDGET,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModelChoice {
    Lstm,
    Transformer,
    Both,
}

/// Serve byte-level candle models to many client threads through latchless's batcher, and
/// compare with serving one request at a time and with a rayon thread pool.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Which model to serve.
    #[arg(long, value_enum, default_value_t = ModelChoice::Both)]
    model: ModelChoice,
    /// Client threads; each sends its next request when the previous one is answered.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    clients: u64,
    /// Requests per model and mode, shared out among the clients.
    #[arg(long, default_value_t = 960, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Sessions per client; a client takes turns among its own sessions.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    sessions_per_client: u64,
    /// Shortest prompt, in bytes (0 sends some empty prompts, which are answered with an error).
    #[arg(long, default_value_t = 8)]
    min_prompt: usize,
    /// Longest prompt, in bytes.
    #[arg(long, default_value_t = 48)]
    max_prompt: usize,
    /// Fewest bytes to generate per request.
    #[arg(long, default_value_t = 8)]
    min_new: usize,
    /// Most bytes to generate per request.
    #[arg(long, default_value_t = 24)]
    max_new: usize,
    /// The batcher's largest batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch: u64,
    /// How long a batch may wait for more requests, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// The most tokens (prompt plus generated) in one batch of the whole-request batcher.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch_cost: u64,
    /// Continuous batching: the most bytes of state (a transformer's keys and values, an LSTM's
    /// hidden states) a worker's running rows hold between them, each row counted at its largest,
    /// so that what every step reads stays in cache.
    #[arg(long, default_value_t = DEFAULT_STATE_BUDGET, value_parser = clap::value_parser!(u64).range(1..))]
    state_budget: u64,
    /// The most requests waiting or running in the batcher; beyond it a request is refused. In
    /// the closed loop its client retries after a millisecond; in the open loop it is counted
    /// (the `refused` column) and dropped.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_queue: u64,
    /// Compute threads of the batcher's engine (candle splits large products between them).
    /// One by default: on two cores a second thread mostly costs CPU.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    compute_threads: u64,
    /// Batcher workers, each computing its own batches on its own compute threads (default: one
    /// per core). Batches form late: a worker that becomes free takes what waits.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: Option<u64>,
    /// Bytes of model state the session cache keeps.
    #[arg(long, default_value_t = 64 << 20)]
    session_bytes: u64,
    /// Seed of the weights and of the workload.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Which ways of serving to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::Sequential, Mode::Pool, Mode::Batcher, Mode::Continuous, Mode::ContinuousWhole])]
    modes: Vec<Mode>,
    /// Continuous batching: waiting requests join the running batch once they have waited this
    /// many steps (or at once when nothing runs, or when they outnumber the running ones by
    /// --join-ratio). 0, the default, joins at every step: a join adds rows and computes nothing
    /// of its own (the prompt is read inside the shared steps), so waiting would only delay it.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32))]
    join_steps: u32,
    /// Continuous batching: waiting requests join when they number this many times the running
    /// ones.
    #[arg(long, default_value_t = 1.2)]
    join_ratio: f32,
    /// Open-loop loads to run after the closed loop, as shares of the capacity (the rayon pool's
    /// closed-loop requests per second, measured first), e.g. `0.25,0.5,1,1.5`. Needs the pool
    /// mode.
    #[arg(long, value_delimiter = ',')]
    loads: Vec<f64>,
    /// The share of requests (0 to 1) whose generation is --long-factor times longer: a
    /// bimodal mix.
    #[arg(long, default_value_t = 0.0)]
    long_share: f64,
    /// In the open loop, the share of requests (0 to 1) sent at high priority: the batchers
    /// then run two priority classes, and the open-loop table gives the high class's p99.
    #[arg(long, default_value_t = 0.0)]
    high_share: f64,
    /// How many times longer a long request's generation is.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    long_factor: u64,
    /// Rounds of all modes, in rotating order; the report shows each mode's median round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=15))]
    rounds: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

fn run(args: &Args) -> Result<(), String> {
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
    if args.modes.is_empty() {
        return Err("--modes names no mode".into());
    }
    if !(0.0..=1.0).contains(&args.high_share) {
        return Err(format!(
            "--high-share {} is not between 0 and 1",
            args.high_share
        ));
    }
    if !(0.0..=1.0).contains(&args.long_share) {
        return Err(format!(
            "--long-share {} is not between 0 and 1",
            args.long_share
        ));
    }
    if let Some(bad) = args.loads.iter().find(|l| !(l.is_finite() && **l > 0.0)) {
        return Err(format!(
            "--loads: {bad} is not a positive share of the capacity"
        ));
    }
    if !args.loads.is_empty() && !args.modes.contains(&Mode::Pool) {
        return Err(
            "--loads needs the pool mode (--modes ...,pool), whose throughput is the capacity"
                .into(),
        );
    }
    let work = Workload {
        clients: args.clients as usize,
        requests: args.requests as usize,
        sessions_per_client: args.sessions_per_client as usize,
        prompt_len: args.min_prompt..=args.max_prompt,
        max_new: args.min_new..=args.max_new,
        long_share: args.long_share,
        long_factor: args.long_factor as usize,
        seed: args.seed,
    };
    let mut batch = BatchConfig::default();
    batch.max_batch_size = args.max_batch as usize;
    batch.max_batch_cost = args.max_batch_cost;
    batch.max_wait = Duration::from_millis(args.max_wait_ms);
    batch.max_queue = args.max_queue as usize;
    batch.validate().map_err(|e| e.to_string())?;
    let mut join = JoinPolicy::default();
    join.max_waiting_steps = args.join_steps;
    join.waiting_served_ratio = args.join_ratio;
    join.validate().map_err(|e| e.to_string())?;
    println!(
        "{} clients, {} requests per model and mode, prompts of {}-{} bytes, {}-{} bytes generated; \
         batcher: up to {} requests or {} tokens per batch ({} KiB of row state per continuous batch), {} ms max wait, {} worker(s) of {} compute thread(s); {} cores",
        work.clients,
        work.requests,
        args.min_prompt,
        args.max_prompt,
        args.min_new,
        args.max_new,
        batch.max_batch_size,
        batch.max_batch_cost,
        args.state_budget >> 10,
        args.max_wait_ms,
        workers(args),
        args.compute_threads,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let seed = args.seed;
    if matches!(args.model, ModelChoice::Lstm | ModelChoice::Both) {
        let model = LstmLm::new(LstmConfig::showcase(), seed).map_err(|e| e.to_string())?;
        serve_model(Arc::new(model), args, &work, &batch, join)?;
    }
    if matches!(args.model, ModelChoice::Transformer | ModelChoice::Both) {
        let model =
            TransformerLm::new(TransformerConfig::showcase(), seed).map_err(|e| e.to_string())?;
        serve_model(Arc::new(model), args, &work, &batch, join)?;
    }
    Ok(())
}

fn serve_model<M: LanguageModel>(
    model: Arc<M>,
    args: &Args,
    work: &Workload,
    batch: &BatchConfig,
    join: JoinPolicy,
) -> Result<(), String> {
    let requests = work.requests();
    let mut modes = args.modes.clone();
    modes.dedup();
    let mut serving = Serving {
        batch: batch.clone(),
        join,
        workers: workers(args),
        arrivals: Arrivals::Closed,
        high_share: args.high_share,
        state_budget: args.state_budget,
    };
    let (outcomes, batcher_engine) = measure(&model, args, &requests, &serving, &modes)?;
    match &batcher_engine {
        Some(engine) => report(&model, &requests, engine, batch, workers(args), &outcomes)?,
        None => report(
            &model,
            &requests,
            &Engine::new(Arc::clone(&model), 1).map_err(|e| e.to_string())?,
            batch,
            workers(args),
            &outcomes,
        )?,
    }
    if args.loads.is_empty() {
        return Ok(());
    }
    // The open-loop sweep: loads relative to the pool's closed-loop capacity, measured above.
    let Some(pool) = outcomes.iter().find(|o| o.mode == Mode::Pool) else {
        return Err("--loads needs the pool mode, whose throughput is the capacity".into());
    };
    let capacity = pool.requests_per_sec();
    // The unloaded one-at-a-time p50: one client, one request at a time, nothing queued.
    let unloaded_work: Vec<Vec<Request>> =
        vec![requests.iter().flatten().take(32).cloned().collect()];
    let unloaded_serving = Serving {
        arrivals: Arrivals::Closed,
        ..serving.clone()
    };
    let (unloaded, _) = measure(
        &model,
        args,
        &unloaded_work,
        &unloaded_serving,
        &[Mode::Sequential],
    )?;
    let unloaded_p50 = unloaded[0].latency_ms(0.5);
    let good = Duration::from_secs_f64(5.0 * unloaded_p50 / 1000.0);
    println!(
        "open loop ({}): Poisson arrivals at a share of the capacity, {capacity:.1} requests/s (the \
         pool's, closed loop, above); each request a fresh session; goodput counts replies within \
         5 x the unloaded one-at-a-time p50 ({unloaded_p50:.1} ms)",
        model.name()
    );
    println!(
        "{:<6} {:<17} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8} {:>8} {:>10} {:>8} {:>6}",
        "load",
        "mode",
        "offered",
        "req/s",
        "p50 ms",
        "p99 ms",
        "high p99",
        "1st p50 ms",
        "itl p50",
        "itl p99",
        "goodput/s",
        "refused",
        "errors"
    );
    for (k, &load) in args.loads.iter().enumerate() {
        let rate = load * capacity;
        serving.arrivals = Arrivals::Open {
            rate,
            seed: args.seed.wrapping_add(k as u64),
        };
        let (open, _) = measure(&model, args, &requests, &serving, &modes)?;
        for o in &open {
            let streamed = o.mode == Mode::Continuous;
            let itl = |q| {
                if streamed {
                    format!("{:.1}", o.inter_token_ms(q))
                } else {
                    "-".into()
                }
            };
            println!(
                "{:<6} {:<17} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>10.1} {:>8} {:>8} {:>10.1} {:>8} {:>6}",
                format!("{load}x"),
                o.mode.label(),
                rate,
                o.requests_per_sec(),
                o.latency_ms(0.5),
                o.latency_ms(0.99),
                if o.latency_high.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.1}", o.latency_high_ms(0.99))
                },
                o.first_byte_ms(0.5),
                itl(0.5),
                itl(0.99),
                o.goodput_per_sec(good),
                o.refusals,
                o.errors.values().sum::<u64>(),
            );
        }
    }
    Ok(())
}

/// Each mode's median outcome, and the whole-request batcher's engine.
type Measured<M> = (Vec<Outcome>, Option<Arc<Engine<M>>>);

/// Runs `modes` over `requests` for `--rounds` rounds, in rotating order, each on a fresh
/// engine; returns each mode's median round (by requests per second), and the engine of the
/// whole-request batcher's last round.
fn measure<M: LanguageModel>(
    model: &Arc<M>,
    args: &Args,
    requests: &[Vec<Request>],
    serving: &Serving,
    modes: &[Mode],
) -> Result<Measured<M>, String> {
    let total = requests.iter().map(Vec::len).sum::<usize>() as u64;
    let mut rounds: Vec<Vec<Outcome>> = modes.iter().map(|_| Vec::new()).collect();
    let progress = ProgressBar::new(total * modes.len() as u64 * args.rounds);
    progress.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} ({elapsed})")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let mut batcher_engine = None;
    for round in 0..args.rounds as usize {
        for k in 0..modes.len() {
            // Rotate the order every round, so no mode always runs first or last.
            let m = (k + round) % modes.len();
            progress.set_message(format!("{}: {}", model.name(), modes[m].label()));
            // A fresh engine: every mode starts with an empty session cache.
            // The batchers' engines get `--compute-threads`; one request at a time runs on one
            // thread by definition, and the pool mode brings its own workers.
            let threads = if matches!(
                modes[m],
                Mode::Batcher | Mode::Continuous | Mode::ContinuousWhole
            ) {
                args.compute_threads as usize
            } else {
                1
            };
            let engine = Arc::new(
                Engine::with_compute_threads(Arc::clone(model), args.session_bytes, threads)
                    .map_err(|e| e.to_string())?,
            );
            if modes[m] == Mode::Batcher {
                batcher_engine = Some(Arc::clone(&engine));
            }
            rounds[m].push(workload::run(
                modes[m], engine, requests, serving, &progress,
            )?);
        }
    }
    progress.finish_and_clear();
    let outcomes = rounds
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.requests_per_sec().total_cmp(&b.requests_per_sec()));
            let mid = r.len() / 2;
            r.swap_remove(mid)
        })
        .collect();
    Ok((outcomes, batcher_engine))
}

fn report<M: LanguageModel>(
    model: &Arc<M>,
    requests: &[Vec<Request>],
    batcher_engine: &Engine<M>,
    batch: &BatchConfig,
    workers: usize,
    outcomes: &[Outcome],
) -> Result<(), String> {
    println!();
    println!("== {} ==", model.name());
    println!(
        "{:<17} {:>8} {:>9} {:>10} {:>8} {:>8} {:>8} {:>12} {:>7} {:>9}",
        "mode",
        "req/s",
        "tokens/s",
        "req/CPU-s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "1st byte p50",
        "errors",
        "vs first"
    );
    let base = outcomes[0].requests_per_sec();
    for o in outcomes {
        let errors: u64 = o.errors.values().sum();
        println!(
            "{:<17} {:>8.1} {:>9.0} {:>10.1} {:>8.1} {:>8.1} {:>8.1} {:>12.1} {:>7} {:>8.2}x",
            o.mode.label(),
            o.requests_per_sec(),
            o.tokens_per_sec(),
            o.requests_per_cpu_sec(),
            o.latency_ms(0.5),
            o.latency_ms(0.9),
            o.latency_ms(0.99),
            o.first_byte_ms(0.5),
            errors,
            o.requests_per_sec() / base,
        );
    }
    for o in outcomes {
        for (e, n) in &o.errors {
            println!("  {}: {n} x {e}", o.mode.label());
        }
    }
    let pool = outcomes.iter().find(|o| o.mode == Mode::Pool);
    // The headline: the mode this crate recommends for generation (continuous batching with a
    // worker per core) against the pool. Machine-readable up to "requests/s".
    if let (Some(c), Some(pool)) = (outcomes.iter().find(|o| o.mode == Mode::Continuous), pool) {
        let ratio = c.requests_per_sec() / pool.requests_per_sec();
        let per_cpu = c.requests_per_cpu_sec() / pool.requests_per_cpu_sec();
        println!(
            "batcher over rayon pool: {ratio:.2}x requests/s (continuous batching, {workers} worker(s)); \
             {per_cpu:.2}x requests per CPU-second; first byte at p50 after {:.1} ms, where the pool's \
             whole reply comes at p50 after {:.1} ms",
            c.first_byte_ms(0.5),
            pool.latency_ms(0.5),
        );
    }
    // Like for like: the same batcher, its clients taking whole replies as the pool's do, so
    // that neither side wakes a client per byte. Not the headline: that stays as defined above.
    let whole = outcomes.iter().find(|o| o.mode == Mode::ContinuousWhole);
    if let (Some(w), Some(pool)) = (whole, pool) {
        println!(
            "like for like, whole replies from both: {:.2}x requests/s, {:.2}x requests per \
             CPU-second (continuous batching, its clients skipping the chunks)",
            w.requests_per_sec() / pool.requests_per_sec(),
            w.requests_per_cpu_sec() / pool.requests_per_cpu_sec(),
        );
    }
    if let Some(c) = outcomes.iter().find(|o| o.mode == Mode::Continuous) {
        if let (Some(s), Some(h)) = (&c.batches, &c.histograms) {
            println!(
                "continuous: {} steps, {:.1} requests running per step on average, a step taking \
                 {:.2} ms at p50; session cache hits {:.1}%; refusals {}; expired {}",
                s.batches,
                h.batch_size.mean(),
                h.compute_time.quantile(0.5) as f64 / 1e3,
                c.session_hit_ratio * 100.0,
                c.refusals,
                s.expired,
            );
        }
    }
    let Some(b) = outcomes.iter().find(|o| o.mode == Mode::Batcher) else {
        return Ok(());
    };
    let stats = b.batches.as_ref();
    let mean_batch = stats.map_or(1.0, |s| s.mean_batch_size());
    if let Some(s) = stats {
        const LABELS: [&str; 8] = ["1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65+"];
        let sizes: Vec<String> = LABELS
            .iter()
            .zip(s.batch_sizes)
            .filter(|(_, n)| *n > 0)
            .map(|(l, n)| format!("{l}: {n}"))
            .collect();
        println!(
            "whole-request batcher: {} batches, mean size {:.1} (by size: {}); session cache hits {:.1}%; \
             refusals {}; expired {}",
            s.batches,
            mean_batch,
            sizes.join(", "),
            b.session_hit_ratio * 100.0,
            b.refusals,
            s.expired,
        );
    }
    // A request waits at most `max_wait` for companions, then for a worker to come free (at
    // most one batch's compute, whichever worker frees first), then for its own batch's compute.
    // With several workers batches differ in size, so the batch compute is taken at its p99, not
    // its mean: a request may wait behind a larger batch than the average one.
    let compute_ms = b.compute.value_at_quantile(0.99) as f64 / 1000.0;
    let bound = batch.max_wait.as_secs_f64() * 1000.0 + 2.0 * compute_ms;
    let p99 = b.latency_ms(0.99);
    println!(
        "whole-request batcher p99 {p99:.1} ms; max_wait + 2 x p99 batch compute = {:.1} + 2 x {compute_ms:.1} = {bound:.1} ms",
        batch.max_wait.as_secs_f64() * 1000.0,
    );
    if let Some(seq) = outcomes.iter().find(|o| o.mode == Mode::Sequential) {
        // What batching alone gains at the batch size the batcher reached, measured now on the
        // workload's own requests: fresh (the first request of each client), and continuing
        // the sessions the batcher left in its cache (the last request of each client), which
        // carry long key/value caches and so gain less.
        let n = (mean_batch.round() as usize).clamp(1, requests.len());
        let firsts: Vec<Request> = requests
            .iter()
            .filter_map(|r| r.first().cloned())
            .take(n)
            .collect();
        let lasts: Vec<Request> = requests
            .iter()
            .filter_map(|r| r.last().cloned())
            .take(n)
            .collect();
        // Measured on one compute thread, like one request at a time.
        let fresh_engine = Engine::new(Arc::clone(model), 1).map_err(|e| e.to_string())?;
        let fresh = workload::jobs_for(&fresh_engine, &firsts);
        let continuing = workload::jobs_for(batcher_engine, &lasts);
        let fresh =
            workload::raw_batching_gain(&fresh_engine, &fresh, 5).map_err(|e| e.to_string())?;
        let continuing = workload::raw_batching_gain(&fresh_engine, &continuing, 5)
            .map_err(|e| e.to_string())?;
        let served_gain = b.requests_per_sec() / seq.requests_per_sec();
        println!(
            "raw model gain at batch {}: {:.2}x fresh, {:.2}x continuing sessions; whole-request batcher over one at a time: {served_gain:.2}x = {:.2} of the continuing gain",
            fresh.batch,
            fresh.gain(),
            continuing.gain(),
            served_gain / continuing.gain(),
        );
    }
    if let Some(pool) = outcomes.iter().find(|o| o.mode == Mode::Pool) {
        let ratio = b.requests_per_sec() / pool.requests_per_sec();
        let per_cpu = b.requests_per_cpu_sec() / pool.requests_per_cpu_sec();
        println!(
            "whole-request batcher over rayon pool: {ratio:.2}x requests/s; {per_cpu:.2}x requests per CPU-second",
        );
        let batcher_threads = batcher_engine.compute_threads() * workers;
        if ratio <= 1.0 && batcher_threads < pool_threads() {
            println!(
                "  why: the pool computes {} requests at once on {} cores, the batcher on {} thread(s), \
                 and batching these models gains less than {}x on a CPU (try --workers {})",
                pool_threads(),
                pool_threads(),
                batcher_threads,
                pool_threads(),
                pool_threads(),
            );
        }
    }
    Ok(())
}

/// The batcher's workers: `--workers`, or one per core.
fn workers(args: &Args) -> usize {
    args.workers.map_or_else(pool_threads, |w| w as usize)
}

fn pool_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
