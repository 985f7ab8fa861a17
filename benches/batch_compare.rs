//! Interleaving comparison of batch dispatch: requests/s through a batcher whose handler does
//! nothing (`|xs| xs`), with one worker (the baseline), with a pool of two (`spawn_pool`), and
//! through the batching loop a user might hand-roll instead (a `crossbeam_channel` of requests
//! and a reply channel per request; `benches/common/dispatch.rs`).
//!
//! As in `benches/compare.rs`: R rounds (`LATCHLESS_BENCH_ROUNDS`, default 9, at least 7) of
//! every scenario, each round running every contender once in an order rotated from round to
//! round; medians over the rounds of wall-clock Mrequests/s and of Mrequests per CPU-second,
//! with their ratios to the one-worker batcher. The CPU time here is the whole process's
//! (`CLOCK_PROCESS_CPUTIME_ID`) over the run, not only the client threads': the contenders'
//! own worker threads, which spin, park and wake, are what is compared. Each run builds a fresh
//! contender (outside the timed region) and shuts it down after.
//!
//! Scenarios `batch/noop_call/{1t,2t,4t}` (each client sends one request and waits for its
//! reply, so a batch holds at most one request per client) and `batch/noop_window64/{1t,2t,4t}`
//! (each client submits 64 requests, then waits for all 64 replies). 4 clients oversubscribe a
//! 2-core machine on purpose. Batches form greedily, up to 64, on every side; every reply is
//! checked. Requests per run: `LATCHLESS_BENCH_OPS` / 20 (100,000 by default).
//!
//! ```text
//! cargo bench --bench batch_compare
//! cargo bench --bench batch_compare -- batch/noop_call
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it only smoke-tests every scenario
//! with a few requests and one round.

#[allow(dead_code)]
mod common;

use common::dispatch::{batcher, clients, ChannelBatcher, Dispatch, Mode};
use common::harness::{machine, rotate_rounds, Invocation, Tally};
use common::workers::{process_cpu_time, run_workers, Sample};
use std::fmt::Write as _;
use std::time::Instant;

/// Batch dispatch is far slower per request than a queue: a run does this fraction of
/// `LATCHLESS_BENCH_OPS`.
const OPS_DIVISOR: u64 = 20;

/// Runs `total` requests from `threads` clients through `d`, measuring the whole process's CPU
/// time over the run.
fn measure<D: Dispatch>(d: &D, mode: Mode, threads: u64, total: u64) -> Sample {
    let jobs = clients(d, mode, threads, total);
    let cpu_before = process_cpu_time();
    let (sample, _) = run_workers(jobs);
    let cpu = match (cpu_before, process_cpu_time()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    Sample {
        wall: sample.wall,
        cpu,
    }
}

fn run_batcher<const WORKERS: usize>(mode: Mode, threads: u64, total: u64) -> Sample {
    let b = batcher(WORKERS);
    let sample = measure(&b, mode, threads, total);
    b.shutdown();
    sample
}

fn run_channel(mode: Mode, threads: u64, total: u64) -> Sample {
    let c = ChannelBatcher::spawn(|xs| xs);
    measure(&c, mode, threads, total)
}

/// One contender: a name and a function running one measured run.
struct Contender {
    name: &'static str,
    run: fn(Mode, u64, u64) -> Sample,
}

const BASELINE: &str = "latchless Batcher (1 worker)";

const CONTENDERS: [Contender; 3] = [
    Contender {
        name: BASELINE,
        run: run_batcher::<1>,
    },
    Contender {
        name: "latchless Batcher (2 workers)",
        run: run_batcher::<2>,
    },
    Contender {
        name: "channel batching loop",
        run: run_channel,
    },
];

fn main() {
    let inv = Invocation::from_env();
    let (rounds, total) = (inv.rounds, (inv.ops() / OPS_DIVISOR).max(64));
    if !inv.bench_mode {
        println!(
            "(smoke test: no `--bench` argument, so 1 round of a few requests; not a measurement)"
        );
    }
    println!(
        "{}; {rounds} round(s), contenders interleaved in an order rotated each round; {total} \
         requests per run; medians over rounds, ratio = contender median / baseline median; CPU \
         time of the whole process",
        machine(),
    );
    let mut rows = String::new();
    let started = Instant::now();
    for (mode, tag) in [(Mode::Call, "noop_call"), (Mode::Window, "noop_window64")] {
        for threads in [1u64, 2, 4] {
            let name = format!("batch/{tag}/{threads}t");
            if !name.contains(inv.filter.as_str()) {
                continue;
            }
            // Warm-up, not recorded.
            for c in &CONTENDERS {
                (c.run)(mode, threads, (total / 4).max(64));
            }
            let mut tallies: Vec<Tally> = CONTENDERS.iter().map(|_| Tally::default()).collect();
            rotate_rounds(&name, rounds, CONTENDERS.len(), |i| {
                let sample = (CONTENDERS[i].run)(mode, threads, total);
                tallies[i].record(total, sample);
            });
            for (c, t) in CONTENDERS.iter().zip(&tallies) {
                let _ = writeln!(rows, "{}", t.row(&name, c.name, &tallies[0]));
            }
        }
    }
    if !rows.is_empty() {
        println!(
            "\n### batch dispatch (baseline: {BASELINE})\n\n\
             | scenario | contender | wall Mreq/s | ratio | Mreq per CPU-s | ratio | busy CPUs | wall min–max |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n{rows}"
        );
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}
