//! Interleaving comparison harness: the source of the README's ratio tables.
//!
//! criterion runs one contender after another and measures wall time, so on a shared, noisy
//! machine a burst of load from a neighbour lands on whichever contender happens to be running.
//! This harness instead runs R rounds (`LATCHLESS_BENCH_ROUNDS`, default 9, at least 7) of every
//! scenario; each round runs every contender once, in an order rotated from round to round, so
//! drift hits all contenders alike. For each run it records
//!
//! - wall time, taken by the harness from the moment the workers are released to the moment the
//!   last one has finished, and
//! - CPU time, measured by each worker thread on its own clock (`CLOCK_THREAD_CPUTIME_ID`) and
//!   summed over the workers, so time stolen by other processes is not charged to a contender
//!   while time it burns spinning is.
//!
//! It prints, per scenario and contender, the median over the rounds of wall-clock Mops/s and of
//! Mops per CPU-second, each with its ratio to the baseline's median (`SegQueue` for the queue
//! scenarios, `AtomicU64::fetch_add` for the counter ones), as markdown tables on stdout, under a
//! line describing the machine. Two more columns help judge the noise: "busy CPUs" (the median of
//! worker CPU time over wall time: near the thread count, capped by the cores, when the workers
//! really ran at once; near 1 when the machine's other load serialised them) and the range of the
//! wall-clock figures over the rounds. Progress goes to stderr.
//!
//! An "op" is one element through the queue (one push and its pop) or one increment.
//!
//! ```text
//! cargo bench --bench compare                 # every scenario
//! cargo bench --bench compare -- queue/mpmc   # scenarios whose name contains "queue/mpmc"
//! LATCHLESS_BENCH_ROUNDS=7 LATCHLESS_BENCH_OPS=50000 cargo bench --bench compare
//! ```
//!
//! Environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LATCHLESS_BENCH_ROUNDS` | 9 | rounds per scenario (raised to 7 if lower) |
//! | `LATCHLESS_BENCH_OPS` | 2000000 | elements per queue run; counter runs do 10x as many increments |
//! | `LATCHLESS_BENCH_FILTER` | (none) | substring filter on scenario names, like the first argument |
//! | `LATCHLESS_BENCH_TIMEOUT_SECS` | 60 | a consumer that has not received its share by then panics |
//!
//! Run without `--bench` (as `cargo test --benches` does), it only smoke-tests every scenario
//! with a few operations and one round.

use crossbeam_channel::{Receiver, Sender};
use crossbeam_epoch::Guard;
use crossbeam_queue::SegQueue;
use latchless::counter::{AtomicCounter, ShardedCounter};
use latchless::queue::MsQueue;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hint::{black_box, spin_loop};
use std::ops::Range;
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Barrier, Mutex,
};
use std::thread;
use std::time::{Duration, Instant};

/// Values pushed and popped per batch in the single-thread scenario.
const SINGLE_BATCH: u64 = 1000;
/// A pinned `MsQueue` worker repins its guard after this many operations.
const REPIN_EVERY: u32 = 64;
/// Counter runs do this many times as many operations as queue runs: an increment is far
/// cheaper than a trip through a queue.
const COUNTER_SCALE: u64 = 10;

// ----------------------------------------------------------------------------------------------
// Measuring one run
// ----------------------------------------------------------------------------------------------

/// The calling thread's CPU time, or `None` where the platform has no per-thread CPU clock.
#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` only writes one `timespec` through the pointer, and `ts` is a live,
    // writable, properly aligned `timespec` owned by this frame for the whole call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

/// The calling thread's CPU time, or `None` where the platform has no per-thread CPU clock.
#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// From the first worker's start to the last one's end.
    wall: Duration,
    /// CPU time of the worker threads, summed; `None` without a per-thread CPU clock.
    cpu: Option<Duration>,
}

/// A worker's body; returns a checksum (the sum of the values a consumer popped, else 0).
type Job<'env> = Box<dyn FnOnce() -> u64 + Send + 'env>;

/// Runs `jobs` on one thread each, released together by a barrier, and returns what was
/// measured with the sum of the jobs' checksums. A worker's panic is re-raised here.
///
/// Wall time runs from the first worker's start to the last worker's end, both read by the
/// workers themselves: with more threads than cores, the threads a barrier releases start one
/// after another, and some may even finish before the spawning thread is scheduled again.
fn run_workers(jobs: Vec<Job<'_>>) -> (Sample, u64) {
    let barrier = Barrier::new(jobs.len());
    thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let cpu_start = thread_cpu_time();
                    let start = Instant::now();
                    let checksum = job();
                    let end = Instant::now();
                    let cpu = thread_cpu_time()
                        .zip(cpu_start)
                        .map(|(end, start)| end - start);
                    (start, end, cpu, checksum)
                })
            })
            .collect();
        let mut first_start: Option<Instant> = None;
        let mut last_end: Option<Instant> = None;
        let mut cpu = Some(Duration::ZERO);
        let mut checksum = 0u64;
        for h in handles {
            let (start, end, c, sum) = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            first_start = Some(first_start.map_or(start, |f| f.min(start)));
            last_end = Some(last_end.map_or(end, |l| l.max(end)));
            cpu = cpu.zip(c).map(|(a, b)| a + b);
            checksum = checksum.wrapping_add(sum);
        }
        let wall = last_end
            .zip(first_start)
            .map_or(Duration::ZERO, |(end, start)| end - start);
        (Sample { wall, cpu }, checksum)
    })
}

/// The `i`-th of `parts` near-equal slices of `0..total`.
fn share(total: u64, parts: u64, i: u64) -> Range<u64> {
    total * i / parts..total * (i + 1) / parts
}

/// The length of [`share`]`(total, parts, i)`.
fn share_len(total: u64, parts: u64, i: u64) -> u64 {
    let r = share(total, parts, i);
    r.end - r.start
}

/// Sum of `0..n`, the checksum of a queue run that lost and duplicated nothing.
fn expected_checksum(n: u64) -> u64 {
    (0..n).fold(0u64, |acc, v| acc.wrapping_add(v))
}

// ----------------------------------------------------------------------------------------------
// Queue contenders
// ----------------------------------------------------------------------------------------------

/// A queue under test, seen through per-thread state so that contenders that profit from
/// per-thread setup (a pinned epoch guard) can use it.
trait BenchQueue: Sync {
    /// Per-thread state, made on the worker thread.
    type Local;
    fn make() -> Self;
    fn local(&self) -> Self::Local;
    fn push(&self, local: &mut Self::Local, v: u64);
    fn pop(&self, local: &mut Self::Local) -> Option<u64>;
}

impl BenchQueue for MsQueue<u64> {
    type Local = ();
    fn make() -> Self {
        MsQueue::new()
    }
    fn local(&self) {}
    fn push(&self, (): &mut (), v: u64) {
        MsQueue::push(self, v);
    }
    fn pop(&self, (): &mut ()) -> Option<u64> {
        MsQueue::pop(self)
    }
}

/// `MsQueue` driven through `push_with_guard`/`pop_with_guard`, each worker holding one guard
/// and repinning it every [`REPIN_EVERY`] operations.
struct MsQueuePinned(MsQueue<u64>);

/// A worker's guard and its operations since the last repin.
struct PinnedLocal {
    guard: Guard,
    ops: u32,
}

impl PinnedLocal {
    fn tick(&mut self) -> &Guard {
        self.ops += 1;
        if self.ops == REPIN_EVERY {
            self.ops = 0;
            self.guard.repin();
        }
        &self.guard
    }
}

impl BenchQueue for MsQueuePinned {
    type Local = PinnedLocal;
    fn make() -> Self {
        Self(MsQueue::new())
    }
    fn local(&self) -> PinnedLocal {
        PinnedLocal {
            guard: crossbeam_epoch::pin(),
            ops: 0,
        }
    }
    fn push(&self, local: &mut PinnedLocal, v: u64) {
        self.0.push_with_guard(v, local.tick());
    }
    fn pop(&self, local: &mut PinnedLocal) -> Option<u64> {
        self.0.pop_with_guard(local.tick())
    }
}

impl BenchQueue for SegQueue<u64> {
    type Local = ();
    fn make() -> Self {
        SegQueue::new()
    }
    fn local(&self) {}
    fn push(&self, (): &mut (), v: u64) {
        SegQueue::push(self, v);
    }
    fn pop(&self, (): &mut ()) -> Option<u64> {
        SegQueue::pop(self)
    }
}

impl BenchQueue for concurrent_queue::ConcurrentQueue<u64> {
    type Local = ();
    fn make() -> Self {
        concurrent_queue::ConcurrentQueue::unbounded()
    }
    fn local(&self) {}
    fn push(&self, (): &mut (), v: u64) {
        concurrent_queue::ConcurrentQueue::push(self, v).expect("unbounded and never closed");
    }
    fn pop(&self, (): &mut ()) -> Option<u64> {
        concurrent_queue::ConcurrentQueue::pop(self).ok()
    }
}

impl BenchQueue for Mutex<VecDeque<u64>> {
    type Local = ();
    fn make() -> Self {
        Mutex::new(VecDeque::new())
    }
    fn local(&self) {}
    fn push(&self, (): &mut (), v: u64) {
        self.lock().unwrap().push_back(v);
    }
    fn pop(&self, (): &mut ()) -> Option<u64> {
        self.lock().unwrap().pop_front()
    }
}

/// Both ends of an unbounded crossbeam channel.
struct Channel(Sender<u64>, Receiver<u64>);

impl BenchQueue for Channel {
    type Local = ();
    fn make() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self(tx, rx)
    }
    fn local(&self) {}
    fn push(&self, (): &mut (), v: u64) {
        self.0
            .send(v)
            .expect("the receiver lives as long as the sender");
    }
    fn pop(&self, (): &mut ()) -> Option<u64> {
        self.1.try_recv().ok()
    }
}

/// Pushes `values`.
fn produce<Q: BenchQueue>(q: &Q, values: Range<u64>) -> u64 {
    let mut local = q.local();
    for v in values {
        q.push(&mut local, v);
    }
    0
}

/// Pops exactly `quota` values and returns their sum. On an empty queue it spins a little, then
/// yields (4 threads oversubscribe 2 cores: the producer it waits for may need this core); past
/// `deadline` it panics instead of spinning forever on values that were lost.
fn consume<Q: BenchQueue>(q: &Q, quota: u64, deadline: Instant) -> u64 {
    let mut local = q.local();
    let mut got = 0u64;
    let mut sum = 0u64;
    let mut idle = 0u32;
    while got < quota {
        if let Some(v) = q.pop(&mut local) {
            sum = sum.wrapping_add(black_box(v));
            got += 1;
            idle = 0;
        } else {
            idle = idle.wrapping_add(1);
            if idle < 64 {
                spin_loop();
            } else {
                thread::yield_now();
                if idle % 1024 == 0 && Instant::now() > deadline {
                    panic!("consumer gave up: {got} of {quota} values popped before the deadline");
                }
            }
        }
    }
    sum
}

/// One thread pushes a batch of [`SINGLE_BATCH`] values and pops them all, `ops` values in all.
fn single<Q: BenchQueue>(q: &Q, ops: u64) -> u64 {
    let mut local = q.local();
    let mut sum = 0u64;
    let mut next = 0u64;
    while next < ops {
        let end = (next + SINGLE_BATCH).min(ops);
        for v in next..end {
            q.push(&mut local, v);
        }
        for _ in next..end {
            let v = q.pop(&mut local).expect("a value pushed by this thread");
            sum = sum.wrapping_add(black_box(v));
        }
        next = end;
    }
    sum
}

/// Runs one queue scenario on a fresh `Q` and checks that every value came out exactly once
/// (by checksum).
fn run_queue<Q: BenchQueue>(shape: Shape, ops: u64, timeout: Duration) -> Sample {
    let q = Q::make();
    let q = &q;
    let mut jobs: Vec<Job<'_>> = Vec::new();
    match shape {
        Shape::Single => jobs.push(Box::new(move || single(q, ops))),
        Shape::Queue {
            producers,
            consumers,
        } => {
            let deadline = Instant::now() + timeout;
            for i in 0..producers {
                let values = share(ops, producers, i);
                jobs.push(Box::new(move || produce(q, values)));
            }
            for i in 0..consumers {
                let quota = share_len(ops, consumers, i);
                jobs.push(Box::new(move || consume(q, quota, deadline)));
            }
        }
        Shape::Counter { .. } => unreachable!("a counter shape in a queue scenario"),
    }
    let (sample, checksum) = run_workers(jobs);
    assert_eq!(
        checksum,
        expected_checksum(ops),
        "values lost or duplicated"
    );
    sample
}

// ----------------------------------------------------------------------------------------------
// Counter contenders
// ----------------------------------------------------------------------------------------------

/// A counter under test.
trait BenchCounter: Sync {
    fn make() -> Self;
    fn increment(&self);
    fn total(&self) -> u64;
}

impl BenchCounter for AtomicCounter {
    fn make() -> Self {
        AtomicCounter::new(0)
    }
    fn increment(&self) {
        AtomicCounter::increment(self);
    }
    fn total(&self) -> u64 {
        self.get()
    }
}

impl BenchCounter for ShardedCounter {
    fn make() -> Self {
        ShardedCounter::new()
    }
    fn increment(&self) {
        ShardedCounter::increment(self);
    }
    fn total(&self) -> u64 {
        self.sum()
    }
}

impl BenchCounter for AtomicU64 {
    fn make() -> Self {
        AtomicU64::new(0)
    }
    fn increment(&self) {
        // Relaxed: what a user counting events would write; nothing is published through it.
        self.fetch_add(1, Ordering::Relaxed);
    }
    fn total(&self) -> u64 {
        // Relaxed: read after the workers were joined, which already synchronised with them.
        self.load(Ordering::Relaxed)
    }
}

impl BenchCounter for Mutex<u64> {
    fn make() -> Self {
        Mutex::new(0)
    }
    fn increment(&self) {
        *self.lock().unwrap() += 1;
    }
    fn total(&self) -> u64 {
        *self.lock().unwrap()
    }
}

/// Runs one counter scenario on a fresh `C`: `threads` workers share `ops` increments.
fn run_counter<C: BenchCounter>(shape: Shape, ops: u64, _timeout: Duration) -> Sample {
    let Shape::Counter { threads } = shape else {
        unreachable!("a queue shape in a counter scenario")
    };
    let c = C::make();
    let c = &c;
    let jobs: Vec<Job<'_>> = (0..threads)
        .map(|i| {
            let n = share_len(ops, threads, i);
            Box::new(move || {
                for _ in 0..n {
                    c.increment();
                }
                0u64
            }) as Job<'_>
        })
        .collect();
    let (sample, _) = run_workers(jobs);
    assert_eq!(c.total(), ops, "increments lost");
    sample
}

// ----------------------------------------------------------------------------------------------
// Scenarios
// ----------------------------------------------------------------------------------------------

/// The threads of a scenario.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One thread pushes and pops batches.
    Single,
    /// `producers` threads push, `consumers` threads pop.
    Queue { producers: u64, consumers: u64 },
    /// `threads` threads increment one counter.
    Counter { threads: u64 },
}

/// One contender: a name and a function running one measured run.
#[derive(Clone, Copy)]
struct Contender {
    name: &'static str,
    run: fn(Shape, u64, Duration) -> Sample,
}

/// A workload, the contenders that run it, and which of them the ratios are taken against.
struct Scenario {
    name: &'static str,
    shape: Shape,
    ops: u64,
    contenders: Vec<Contender>,
    baseline: &'static str,
}

fn queue_contenders() -> Vec<Contender> {
    vec![
        Contender {
            name: "latchless MsQueue",
            run: run_queue::<MsQueue<u64>>,
        },
        Contender {
            name: "latchless MsQueue (guard, repin/64)",
            run: run_queue::<MsQueuePinned>,
        },
        Contender {
            name: "crossbeam SegQueue",
            run: run_queue::<SegQueue<u64>>,
        },
        Contender {
            name: "ConcurrentQueue::unbounded",
            run: run_queue::<concurrent_queue::ConcurrentQueue<u64>>,
        },
        Contender {
            name: "Mutex<VecDeque>",
            run: run_queue::<Mutex<VecDeque<u64>>>,
        },
        Contender {
            name: "crossbeam_channel::unbounded",
            run: run_queue::<Channel>,
        },
    ]
}

fn counter_contenders() -> Vec<Contender> {
    vec![
        Contender {
            name: "latchless AtomicCounter::increment",
            run: run_counter::<AtomicCounter>,
        },
        Contender {
            name: "latchless ShardedCounter::increment",
            run: run_counter::<ShardedCounter>,
        },
        Contender {
            name: "AtomicU64::fetch_add(Relaxed)",
            run: run_counter::<AtomicU64>,
        },
        Contender {
            name: "Mutex<u64>",
            run: run_counter::<Mutex<u64>>,
        },
    ]
}

fn scenarios(queue_ops: u64) -> Vec<Scenario> {
    let queue = |name, shape| Scenario {
        name,
        shape,
        ops: queue_ops,
        contenders: queue_contenders(),
        baseline: "crossbeam SegQueue",
    };
    let counter = |name, threads| Scenario {
        name,
        shape: Shape::Counter { threads },
        ops: queue_ops * COUNTER_SCALE,
        contenders: counter_contenders(),
        baseline: "AtomicU64::fetch_add(Relaxed)",
    };
    let mpmc = |p, c| Shape::Queue {
        producers: p,
        consumers: c,
    };
    vec![
        queue("queue/single/push_pop", Shape::Single),
        queue("queue/spsc/1p1c", mpmc(1, 1)),
        queue("queue/mpmc/2p2c", mpmc(2, 2)),
        queue("queue/mpmc/4p4c", mpmc(4, 4)),
        counter("counter/increment/1t", 1),
        counter("counter/increment/2t", 2),
        counter("counter/increment/4t", 4),
    ]
}

// ----------------------------------------------------------------------------------------------
// Statistics and report
// ----------------------------------------------------------------------------------------------

/// The median of `xs` (mean of the middle two for an even count); NaN when empty.
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// What the rounds measured for one contender: Mops/s on the wall clock and per CPU-second.
#[derive(Default)]
struct Tally {
    wall_mops: Vec<f64>,
    cpu_mops: Vec<f64>,
    /// Worker CPU time over wall time: how many workers ran at once, on average.
    busy: Vec<f64>,
}

impl Tally {
    fn record(&mut self, ops: u64, s: Sample) {
        let mops = ops as f64 / 1e6;
        self.wall_mops.push(mops / s.wall.as_secs_f64());
        if let Some(cpu) = s.cpu {
            self.cpu_mops.push(mops / cpu.as_secs_f64());
            self.busy.push(cpu.as_secs_f64() / s.wall.as_secs_f64());
        }
    }
}

/// Formats a ratio, or `n/a` when it is not a number.
fn ratio(x: f64, base: f64) -> String {
    let r = x / base;
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "n/a".to_owned()
    }
}

/// Formats a number with two decimals, or `n/a` when it is not a number.
fn fixed2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "n/a".to_owned()
    }
}

/// Runs `sc` for `rounds` rounds, interleaving contenders, and appends its table rows to `out`.
fn run_scenario(sc: &Scenario, rounds: usize, timeout: Duration, out: &mut String) {
    let n = sc.contenders.len();
    // Warm-up, not recorded: page in the allocator's arenas and the code.
    for c in &sc.contenders {
        (c.run)(sc.shape, (sc.ops / 4).max(1), timeout);
    }
    let mut tallies: Vec<Tally> = (0..n).map(|_| Tally::default()).collect();
    for round in 0..rounds {
        eprint!("\r{}: round {}/{rounds}   ", sc.name, round + 1);
        for k in 0..n {
            let i = (round + k) % n;
            let c = &sc.contenders[i];
            let sample = (c.run)(sc.shape, sc.ops, timeout);
            tallies[i].record(sc.ops, sample);
        }
    }
    eprintln!();
    let base = sc
        .contenders
        .iter()
        .position(|c| c.name == sc.baseline)
        .expect("the baseline is one of the contenders");
    let base_wall = median(&tallies[base].wall_mops);
    let base_cpu = median(&tallies[base].cpu_mops);
    for (c, t) in sc.contenders.iter().zip(&tallies) {
        let wall = median(&t.wall_mops);
        let cpu = median(&t.cpu_mops);
        let lo = t.wall_mops.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = t
            .wall_mops
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {}–{} |",
            sc.name,
            c.name,
            fixed2(wall),
            ratio(wall, base_wall),
            fixed2(cpu),
            ratio(cpu, base_cpu),
            fixed2(median(&t.busy)),
            fixed2(lo),
            fixed2(hi),
        );
    }
}

/// The CPU model from `/proc/cpuinfo`, where there is one.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU model".to_owned())
}

/// The 1-minute load average from `/proc/loadavg`, where there is one: how busy the shared
/// machine was when the run started.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A positive integer from the environment variable `name`, or `default`.
fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(v) if v > 0 => v,
            _ => panic!("{name}={s:?}: expected a positive integer"),
        },
        Err(_) => default,
    }
}

fn main() {
    // cargo bench passes `--bench`; cargo test runs bench targets without it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let filter = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .cloned()
        .or_else(|| std::env::var("LATCHLESS_BENCH_FILTER").ok())
        .unwrap_or_default();

    let requested_rounds = env_u64("LATCHLESS_BENCH_ROUNDS", 9);
    let (rounds, queue_ops) = if bench_mode {
        (
            requested_rounds.max(7),
            env_u64("LATCHLESS_BENCH_OPS", 2_000_000),
        )
    } else {
        (1, 2_000)
    };
    let rounds = usize::try_from(rounds).expect("a sane number of rounds");
    let timeout = Duration::from_secs(env_u64("LATCHLESS_BENCH_TIMEOUT_SECS", 60));
    if bench_mode && requested_rounds < 7 {
        eprintln!("LATCHLESS_BENCH_ROUNDS={requested_rounds} raised to 7, the minimum");
    }

    let threads = thread::available_parallelism().map_or(0, |n| n.get());
    if !bench_mode {
        println!("(smoke test: no `--bench` argument, so 1 round of a few ops; not a measurement)");
    }
    println!(
        "machine: {threads} CPUs available (nproc), {}, load average at start {}; {rounds} \
         round(s), contenders interleaved in an order rotated each round; {queue_ops} elements \
         per queue run, {} increments per counter run; medians over rounds, ratio = contender \
         median / baseline median",
        cpu_model(),
        load_average(),
        queue_ops * COUNTER_SCALE,
    );
    if thread_cpu_time().is_none() {
        println!("(no per-thread CPU clock on this platform: the CPU columns read n/a)");
    }

    let header =
        "| scenario | contender | wall Mops/s | ratio | Mops per CPU-s | ratio | busy CPUs | wall min–max |\n\
                  |---|---|---:|---:|---:|---:|---:|---:|\n";
    let mut tables: Vec<(&str, String)> =
        vec![("queue", String::new()), ("counter", String::new())];
    let started = Instant::now();
    for sc in scenarios(queue_ops) {
        if !sc.name.contains(filter.as_str()) {
            continue;
        }
        let family = sc.name.split('/').next().unwrap_or_default();
        let table = tables
            .iter_mut()
            .find(|(f, _)| *f == family)
            .map(|(_, t)| t)
            .expect("every scenario belongs to a table");
        run_scenario(&sc, rounds, timeout, table);
    }
    for (family, rows) in &tables {
        if rows.is_empty() {
            continue;
        }
        let baseline = if *family == "queue" {
            "crossbeam SegQueue"
        } else {
            "AtomicU64::fetch_add(Relaxed)"
        };
        println!("\n### {family} (baseline: {baseline})\n\n{header}{rows}");
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}
