//! The interleaving harness shared by `benches/compare.rs` and `benches/cache_compare.rs`: how
//! it was invoked (`--bench`, a filter, `LATCHLESS_BENCH_*`), the machine line, rounds that run
//! every contender once in an order rotated from round to round, the per-contender tally of
//! wall-clock and CPU throughput, and the common cells of a markdown table row.

use super::workers::Sample;
use std::thread;

/// The fewest rounds a `--bench` run takes.
const MIN_ROUNDS: u64 = 7;

/// How a harness was invoked.
pub(crate) struct Invocation {
    /// `cargo bench` passes `--bench`; `cargo test --benches` runs the bench targets without it,
    /// and then the harness only smoke-tests.
    pub(crate) bench_mode: bool,
    /// Substring filter on names: the first argument not starting with `-`, else
    /// `LATCHLESS_BENCH_FILTER`, else empty (everything).
    pub(crate) filter: String,
    /// Rounds per scenario: `LATCHLESS_BENCH_ROUNDS` (default 9, raised to 7 if lower) in bench
    /// mode, 1 otherwise.
    pub(crate) rounds: usize,
}

impl Invocation {
    /// Reads the command line and the environment; says on stderr when it raises the rounds.
    pub(crate) fn from_env() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let bench_mode = args.iter().any(|a| a == "--bench");
        let filter = args
            .iter()
            .find(|a| !a.starts_with('-'))
            .cloned()
            .or_else(|| std::env::var("LATCHLESS_BENCH_FILTER").ok())
            .unwrap_or_default();
        let requested_rounds = env_u64("LATCHLESS_BENCH_ROUNDS").unwrap_or(9);
        let rounds = if bench_mode {
            requested_rounds.max(MIN_ROUNDS)
        } else {
            1
        };
        if bench_mode && requested_rounds < MIN_ROUNDS {
            eprintln!(
                "LATCHLESS_BENCH_ROUNDS={requested_rounds} raised to {MIN_ROUNDS}, the minimum"
            );
        }
        Self {
            bench_mode,
            filter,
            rounds: usize::try_from(rounds).expect("a sane number of rounds"),
        }
    }

    /// Operations per run: `LATCHLESS_BENCH_OPS` (default 2,000,000) in bench mode, 2,000
    /// otherwise.
    pub(crate) fn ops(&self) -> u64 {
        if self.bench_mode {
            env_u64("LATCHLESS_BENCH_OPS").unwrap_or(2_000_000)
        } else {
            2_000
        }
    }
}

/// A positive integer from the environment variable `name`, if set.
pub(crate) fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|s| match s.trim().parse::<u64>() {
            Ok(v) if v > 0 => v,
            _ => panic!("{name}={s:?}: expected a positive integer"),
        })
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

/// The line describing the machine: `machine: N CPUs available (nproc), <model>, load average
/// at start <load>`.
pub(crate) fn machine() -> String {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "machine: {cpus} CPUs available (nproc), {}, load average at start {}",
        cpu_model(),
        load_average(),
    )
}

/// Runs `rounds` rounds of `contenders` contenders, calling `run(i)` once per round for each
/// contender `i`, in an order rotated from round to round so that drift hits all alike. Progress
/// goes to stderr under `name`.
pub(crate) fn rotate_rounds(
    name: &str,
    rounds: usize,
    contenders: usize,
    mut run: impl FnMut(usize),
) {
    for round in 0..rounds {
        eprint!("\r{name}: round {}/{rounds}   ", round + 1);
        for k in 0..contenders {
            run((round + k) % contenders);
        }
    }
    eprintln!();
}

/// The median of `xs` (mean of the middle two for an even count); NaN when empty.
pub(crate) fn median(xs: &[f64]) -> f64 {
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
pub(crate) struct Tally {
    wall_mops: Vec<f64>,
    cpu_mops: Vec<f64>,
    /// Worker CPU time over wall time: how many workers ran at once, on average.
    busy: Vec<f64>,
}

impl Tally {
    /// Records a run of `ops` operations.
    pub(crate) fn record(&mut self, ops: u64, s: Sample) {
        let mops = ops as f64 / 1e6;
        self.wall_mops.push(mops / s.wall.as_secs_f64());
        if let Some(cpu) = s.cpu {
            self.cpu_mops.push(mops / cpu.as_secs_f64());
            self.busy.push(cpu.as_secs_f64() / s.wall.as_secs_f64());
        }
    }

    /// The cells of this contender's table row, without a line break: `| scenario | contender |
    /// wall Mops/s | ratio | Mops per CPU-s | ratio | busy CPUs | wall min–max |`, the ratios
    /// taken against the medians of `base`.
    pub(crate) fn row(&self, scenario: &str, contender: &str, base: &Tally) -> String {
        let wall = median(&self.wall_mops);
        let cpu = median(&self.cpu_mops);
        let lo = self.wall_mops.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self
            .wall_mops
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {}–{} |",
            scenario,
            contender,
            fixed2(wall),
            ratio(wall, median(&base.wall_mops)),
            fixed2(cpu),
            ratio(cpu, median(&base.cpu_mops)),
            fixed2(median(&self.busy)),
            fixed2(lo),
            fixed2(hi),
        )
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
pub(crate) fn fixed2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "n/a".to_owned()
    }
}
