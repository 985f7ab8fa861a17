//! Interleaving comparison harness: the source of BENCHMARKS.md's ratio tables.
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
//!
//! The measuring, the rotation, the statistics and the contenders live in `benches/common/`,
//! shared with `benches/cache_compare.rs` and the criterion benches.

#[allow(dead_code)]
mod common;

use common::counters::{self, BenchCounter};
use common::harness::{machine, rotate_rounds, Invocation, Tally};
use common::queues::{self, BenchQueue, Channel};
use common::workers::{run_workers, thread_cpu_time, Job, Sample};
use crossbeam_queue::SegQueue;
use latchless::counter::{AtomicCounter, ShardedCounter};
use latchless::queue::MsQueue;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{atomic::AtomicU64, Mutex};
use std::time::{Duration, Instant};

/// Counter runs do this many times as many operations as queue runs: an increment is far
/// cheaper than a trip through a queue.
const COUNTER_SCALE: u64 = 10;

// ----------------------------------------------------------------------------------------------
// Runs
// ----------------------------------------------------------------------------------------------

/// Runs one queue scenario on a fresh `Q` and checks that every value came out exactly once
/// (by checksum).
fn run_queue<Q: BenchQueue>(shape: Shape, ops: u64, timeout: Duration) -> Sample {
    let q = Q::make();
    let q = &q;
    let jobs: Vec<Job<'_, u64>> = match shape {
        Shape::Single { batch } => vec![Box::new(move || queues::single(q, ops, batch))],
        Shape::Queue {
            producers,
            consumers,
        } => queues::mpmc_jobs(q, producers, consumers, ops, Instant::now() + timeout),
        Shape::Counter { .. } => unreachable!("a counter shape in a queue scenario"),
    };
    let (sample, sums) = run_workers(jobs);
    let checksum = sums.iter().fold(0u64, |acc, &s| acc.wrapping_add(s));
    assert_eq!(
        checksum,
        queues::expected_checksum(ops),
        "values lost or duplicated"
    );
    sample
}

/// Runs one counter scenario on a fresh `C`: `threads` workers share `ops` increments.
fn run_counter<C: BenchCounter>(shape: Shape, ops: u64, _timeout: Duration) -> Sample {
    let Shape::Counter { threads } = shape else {
        unreachable!("a queue shape in a counter scenario")
    };
    counters::run::<C>(threads, ops)
}

// ----------------------------------------------------------------------------------------------
// Scenarios
// ----------------------------------------------------------------------------------------------

/// The threads of a scenario.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One thread pushes `batch` values, then pops them, until `ops` values went through.
    Single { batch: u64 },
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
        queue("queue/single/pairs", Shape::Single { batch: 1 }),
        queue("queue/single/push_pop", Shape::Single { batch: 1000 }),
        queue(
            "queue/single/burst_1m",
            Shape::Single {
                batch: 1_000_000.min(queue_ops),
            },
        ),
        queue("queue/spsc/1p1c", mpmc(1, 1)),
        queue("queue/mpmc/2p2c", mpmc(2, 2)),
        queue("queue/mpmc/4p4c", mpmc(4, 4)),
        queue("queue/mpmc/8p8c", mpmc(8, 8)),
        counter("counter/increment/1t", 1),
        counter("counter/increment/2t", 2),
        counter("counter/increment/4t", 4),
    ]
}

// ----------------------------------------------------------------------------------------------
// Report
// ----------------------------------------------------------------------------------------------

/// Runs `sc` for `rounds` rounds, interleaving contenders, and appends its table rows to `out`.
fn run_scenario(sc: &Scenario, rounds: usize, timeout: Duration, out: &mut String) {
    let n = sc.contenders.len();
    // Warm-up, not recorded: page in the allocator's arenas and the code.
    for c in &sc.contenders {
        (c.run)(sc.shape, (sc.ops / 4).max(1), timeout);
    }
    let mut tallies: Vec<Tally> = (0..n).map(|_| Tally::default()).collect();
    rotate_rounds(sc.name, rounds, n, |i| {
        let sample = (sc.contenders[i].run)(sc.shape, sc.ops, timeout);
        tallies[i].record(sc.ops, sample);
    });
    let base = sc
        .contenders
        .iter()
        .position(|c| c.name == sc.baseline)
        .expect("the baseline is one of the contenders");
    for (c, t) in sc.contenders.iter().zip(&tallies) {
        let _ = writeln!(out, "{}", t.row(sc.name, c.name, &tallies[base]));
    }
}

fn main() {
    let inv = Invocation::from_env();
    let (rounds, queue_ops) = (inv.rounds, inv.ops());
    let timeout =
        Duration::from_secs(common::harness::env_u64("LATCHLESS_BENCH_TIMEOUT_SECS").unwrap_or(60));

    if !inv.bench_mode {
        println!("(smoke test: no `--bench` argument, so 1 round of a few ops; not a measurement)");
    }
    println!(
        "{}; {rounds} round(s), contenders interleaved in an order rotated each round; \
         {queue_ops} elements per queue run, {} increments per counter run; medians over \
         rounds, ratio = contender median / baseline median",
        machine(),
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
        if !sc.name.contains(inv.filter.as_str()) {
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
