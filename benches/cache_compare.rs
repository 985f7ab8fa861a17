//! Comparison harness for [`latchless::cache::Cache`] against the caches a user would pick
//! instead: `moka::sync::Cache`, `quick_cache::sync::Cache` and `lru::LruCache` (behind a
//! `Mutex` when threads share it). It prints two reports as markdown on stdout, under a line
//! describing the machine; progress goes to stderr.
//!
//! **Hit ratio** (deterministic: fixed seeds, and every contender hashes with
//! `BuildHasherDefault<DefaultHasher>`, so two runs print the same table). Each workload is
//! replayed on one thread, in order, on a fresh cache per contender: `get(k)`, and on a miss
//! `insert(k, v)`; hit ratio = hits / requests, cold misses included. Workloads:
//!
//! - `zipf_0.99`, `zipf_0.7`, `zipf_1.2`: Zipf(s) over 100,000 keys, 1,000,000 requests, at
//!   capacities 1,000 (1%) and 10,000 (10%);
//! - the ARC traces in `../shared/traces` (format in its README): `OLTP` at 1,000 and 10,000
//!   entries, `P3` and `P6` at 32,768 and 131,072 entries. If the directory is missing, a line
//!   says the traces were skipped and why.
//!
//! How each contender is driven:
//!
//! - latchless: `Cache::builder(capacity).hasher(..).build()`;
//! - moka: `Cache::builder().max_capacity(capacity).build_with_hasher(..)`. moka applies reads,
//!   admission and eviction later, in batches; the replay calls `run_pending_tasks()` after every
//!   insert, so each request sees a cache of the stated capacity whose policy has seen every
//!   earlier request, in order (without it, moka holds up to a write-log's worth of entries more
//!   than its capacity between batches);
//! - quick_cache: `Cache::with_options` with the capacity as both item estimate and weight
//!   capacity and 8 shards (what its default picks on a 2-CPU machine), fixed so that the table
//!   does not depend on the machine;
//! - lru: a plain `LruCache` (exact LRU). Its OLTP figures must read 32.83% and 60.70% (the
//!   traces' README): a check on the trace loader and on the replay.
//!
//! Every hit's value is checked against the key's, and latchless's own `stats()` against the
//! replay's counts.
//!
//! **Throughput**, interleaved as in `benches/compare.rs`: R rounds (`LATCHLESS_BENCH_ROUNDS`,
//! default 9, at least 7); each round runs every contender once, in an order rotated from round
//! to round. Scenarios: `cache/get_insert_90_10/{1t,2t}` (90% `get`, 10% `insert`),
//! `cache/get_100/{1t,2t}` (`get` only) and `cache/insert_100/{1t,2t}` (`insert` only: with
//! these keys about four in five replace a present key's value, as a per-session state update
//! does, and the rest add a key and evict), keys from Zipf(0.99) over 100,000 keys, capacity
//! 10,000; then the first four again as `cache/one_hasher/...`, where every contender hashes
//! with latchless's `DefaultHashBuilder` (foldhash, randomly seeded), so that the hasher is not
//! what separates them. Each run builds a fresh cache with default settings (random hashers; latchless counts
//! no lookups by default, and runs once more with `count_lookups(true)`, once with a time-to-live
//! and once with a time-to-idle of an hour, which nothing reaches, so that those rows show what
//! expiry costs, and both again on the `CoarseClock`; moka runs once more with the same
//! time-to-idle), prefills it with
//! the 10,000 most frequent keys, then releases the workers; the key streams are generated once
//! per scenario, before any run, one per thread with its own seed. An "op" is one `get` or one
//! `insert`; `LATCHLESS_BENCH_OPS` ops per run, shared by the threads. It prints, per scenario
//! and contender, the median over the rounds of wall-clock Mops/s and of Mops per CPU-second of
//! the worker threads (`CLOCK_THREAD_CPUTIME_ID`), each with its ratio to quick_cache's median;
//! "busy CPUs" (worker CPU time over wall time), the range of the wall-clock figures, and the
//! share of `get`s that hit (median).
//!
//! ```text
//! cargo bench --bench cache_compare                  # both reports
//! cargo bench --bench cache_compare -- hit_ratio     # sections whose name contains "hit_ratio"
//! cargo bench --bench cache_compare -- cache/get_100
//! LATCHLESS_HIT_REQUESTS=200000 LATCHLESS_BENCH_ROUNDS=7 LATCHLESS_BENCH_OPS=500000 \
//!     cargo bench --bench cache_compare              # a quick run
//! ```
//!
//! Environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LATCHLESS_HIT_REQUESTS` | (none) | at most this many requests per hit-ratio workload (Zipf: 1,000,000 by default; traces: whole) |
//! | `LATCHLESS_BENCH_ROUNDS` | 9 | throughput rounds per scenario (raised to 7 if lower) |
//! | `LATCHLESS_BENCH_OPS` | 2000000 | ops per throughput run, shared by the threads |
//! | `LATCHLESS_BENCH_FILTER` | (none) | substring filter on section names, like the first argument |
//!
//! Run without `--bench` (as `cargo test --benches` does), it only smoke-tests both reports with
//! a few thousand requests and ops and one round.
//!
//! The throughput contenders, the measuring, the rotation and the statistics live in
//! `benches/common/`, shared with `benches/compare.rs` and `benches/cache.rs`.

#[allow(dead_code)]
mod common;

use common::caches::{
    BenchCache, LatchlessCounted, LatchlessIdle, LatchlessIdleCoarse, LatchlessLive,
    LatchlessLiveCoarse, LatchlessPinned, LruOneHasher, MokaIdle, MokaOneHasher, QuickOneHasher,
};
use common::harness::{self, fixed2, machine, median, rotate_rounds, Invocation, Tally};
use common::workers::{run_workers, share_len, thread_cpu_time, Sample};
use latchless::cache::Cache;
use rand::rngs::Xoshiro256PlusPlus;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use std::fmt::Write as _;
use std::fs::File;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::hint::black_box;
use std::io::{self, BufRead, BufReader};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Keys drawn by the Zipf workloads: `0..ZIPF_KEYS`, key `r - 1` being the `r`-th most frequent.
const ZIPF_KEYS: u64 = 100_000;
/// The Zipf exponent.
const ZIPF_S: f64 = 0.99;
/// Requests of the Zipf hit-ratio workload.
const ZIPF_REQUESTS: usize = 1_000_000;
/// Capacity of the throughput scenarios.
const THROUGHPUT_CAPACITY: u64 = 10_000;
/// Share of inserts in the mixed throughput scenarios, in percent.
const INSERT_PERCENT: u64 = 10;
/// Marks an op of a throughput stream as an insert; the key is in the low bits.
const INSERT_BIT: u64 = 1 << 63;
/// quick_cache's shard count in the hit-ratio replays (its default on a 2-CPU machine).
const QUICK_CACHE_SHARDS: usize = 8;

/// The hasher of the hit-ratio replays: SipHash-1-3 with fixed keys, so runs are reproducible.
type FixedState = BuildHasherDefault<DefaultHasher>;

/// The value stored for `key`, so that a hit can be checked.
fn value_of(key: u64) -> u64 {
    key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555
}

// ----------------------------------------------------------------------------------------------
// Workloads
// ----------------------------------------------------------------------------------------------

/// Exponents of the Zipf hit-ratio workloads: the throughput scenarios' `ZIPF_S`, and a flatter
/// and a steeper one, where recency and frequency weigh differently.
const HIT_RATIO_ZIPF_S: [f64; 3] = [ZIPF_S, 0.7, 1.2];

/// `len` keys drawn from Zipf(`ZIPF_S`) over `0..ZIPF_KEYS`, from a generator seeded with `seed`.
fn zipf_keys(len: usize, seed: u64) -> Vec<u64> {
    zipf_keys_with(ZIPF_S, len, seed)
}

/// `len` keys drawn from Zipf(`s`) over `0..ZIPF_KEYS`, from a generator seeded with `seed`.
fn zipf_keys_with(s: f64, len: usize, seed: u64) -> Vec<u64> {
    let zipf = Zipf::new(ZIPF_KEYS as f64, s).expect("valid Zipf parameters");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    // The sample is an integer-valued float in `1..=ZIPF_KEYS`.
    (0..len).map(|_| zipf.sample(&mut rng) as u64 - 1).collect()
}

/// Reads a zstd-compressed ARC trace: one request per line, `start n ignored request_no`, each
/// expanded into the `n` keys `start..start + n`. Stops after `max` keys.
fn load_trace(path: &Path, max: usize) -> io::Result<Vec<u64>> {
    let reader = BufReader::new(zstd::stream::read::Decoder::new(File::open(path)?)?);
    let bad = |line_no: usize, what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}:{}: {what}", path.display(), line_no + 1),
        )
    };
    let mut keys = Vec::new();
    for (line_no, line) in reader.lines().enumerate() {
        let line = line?;
        let mut fields = line.split_whitespace();
        let Some(start) = fields.next() else {
            continue; // a blank line
        };
        let start: u64 = start.parse().map_err(|_| bad(line_no, "bad start block"))?;
        let n: u64 = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| bad(line_no, "bad block count"))?;
        for key in start..start + n {
            if keys.len() == max {
                return Ok(keys);
            }
            keys.push(key);
        }
    }
    Ok(keys)
}

/// The traces' directory, beside the crate.
fn traces_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/traces"))
}

// ----------------------------------------------------------------------------------------------
// Hit ratio
// ----------------------------------------------------------------------------------------------

/// Replays `keys` on a fresh contender of `capacity` entries; returns the hits.
type Replay = fn(u64, &[u64]) -> u64;

/// Counts a hit after checking its value.
fn hit(key: u64, value: u64, contender: &str) -> u64 {
    assert_eq!(
        value,
        value_of(key),
        "{contender}: wrong value for key {key}"
    );
    1
}

fn replay_latchless(capacity: u64, keys: &[u64]) -> u64 {
    let cache = Cache::builder(capacity)
        .hasher(FixedState::default())
        .count_lookups(true)
        .build();
    let mut hits = 0;
    for &k in keys {
        match cache.get(&k) {
            Some(v) => hits += hit(k, v, "latchless"),
            None => {
                cache.insert(k, value_of(k));
            }
        }
    }
    let s = cache.stats();
    assert_eq!(
        (s.hits, s.misses),
        (hits, keys.len() as u64 - hits),
        "latchless: stats() disagree with the replay"
    );
    assert!(
        cache.len() as u64 <= capacity,
        "latchless: {} entries in a cache of {capacity}",
        cache.len()
    );
    hits
}

fn replay_moka(capacity: u64, keys: &[u64]) -> u64 {
    let cache = moka::sync::Cache::builder()
        .max_capacity(capacity)
        .build_with_hasher(FixedState::default());
    let mut hits = 0;
    for &k in keys {
        match cache.get(&k) {
            Some(v) => hits += hit(k, v, "moka"),
            None => {
                cache.insert(k, value_of(k));
                // Apply the recorded reads, then this insert's admission and eviction, now.
                cache.run_pending_tasks();
            }
        }
    }
    assert!(cache.entry_count() <= capacity, "moka: over capacity");
    hits
}

fn replay_quick_cache(capacity: u64, keys: &[u64]) -> u64 {
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(usize::try_from(capacity).expect("capacity fits usize"))
        .weight_capacity(capacity)
        .shards(QUICK_CACHE_SHARDS)
        .build()
        .expect("valid quick_cache options");
    let cache = quick_cache::sync::Cache::with_options(
        options,
        quick_cache::UnitWeighter,
        FixedState::default(),
        quick_cache::sync::DefaultLifecycle::default(),
    );
    let mut hits = 0;
    for &k in keys {
        match cache.get(&k) {
            Some(v) => hits += hit(k, v, "quick_cache"),
            None => cache.insert(k, value_of(k)),
        }
    }
    hits
}

fn replay_lru(capacity: u64, keys: &[u64]) -> u64 {
    let cap = NonZeroUsize::new(usize::try_from(capacity).expect("capacity fits usize"))
        .expect("a positive capacity");
    let mut cache = lru::LruCache::with_hasher(cap, FixedState::default());
    let mut hits = 0;
    for &k in keys {
        match cache.get(&k) {
            Some(&v) => hits += hit(k, v, "lru"),
            None => {
                cache.put(k, value_of(k));
            }
        }
    }
    hits
}

/// The hit-ratio contenders; the first is latchless, compared with the best of the others.
const REPLAYS: [(&str, Replay); 4] = [
    ("latchless", replay_latchless),
    ("moka", replay_moka),
    ("quick_cache", replay_quick_cache),
    ("lru (exact LRU)", replay_lru),
];

/// A hit-ratio workload: its name, its keys, and the capacities it is replayed at.
struct Workload {
    name: String,
    keys: Vec<u64>,
    capacities: &'static [u64],
}

/// The hit-ratio workloads, each limited to `max` requests (Zipf: `zipf_requests`), with a note
/// for each trace that could not be read.
fn workloads(zipf_requests: usize, max: usize, filter: &str) -> (Vec<Workload>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for s in HIT_RATIO_ZIPF_S {
        let zipf_name = format!("hit_ratio/zipf_{s}");
        if zipf_name.contains(filter) {
            out.push(Workload {
                name: zipf_name,
                keys: zipf_keys_with(s, zipf_requests.min(max), 0x5EED_0001),
                capacities: &[1_000, 10_000],
            });
        }
    }
    let traces: [(&str, &'static [u64]); 3] = [
        ("OLTP", &[1_000, 10_000]),
        ("P3", &[32_768, 131_072]),
        ("P6", &[32_768, 131_072]),
    ];
    let dir = traces_dir();
    let wanted: Vec<_> = traces
        .iter()
        .filter(|(t, _)| format!("hit_ratio/{t}").contains(filter))
        .collect();
    if wanted.is_empty() {
        return (out, notes);
    }
    if !dir.is_dir() {
        notes.push(format!(
            "traces skipped: {} is not a directory (scripts/fetch_traces.sh fetches them)",
            dir.display()
        ));
        return (out, notes);
    }
    for &&(trace, capacities) in &wanted {
        let path = dir.join(format!("{trace}.lis.zst"));
        eprint!("loading {}... ", path.display());
        match load_trace(&path, max) {
            Ok(keys) => {
                eprintln!("{} requests", keys.len());
                out.push(Workload {
                    name: format!("hit_ratio/{trace}"),
                    keys,
                    capacities,
                });
            }
            Err(e) => {
                eprintln!("failed");
                notes.push(format!("trace {trace} skipped: {e}"));
            }
        }
    }
    (out, notes)
}

/// Distinct keys in `keys`.
fn distinct(keys: &[u64]) -> usize {
    let mut v = keys.to_vec();
    v.sort_unstable();
    v.dedup();
    v.len()
}

/// Replays every workload on every contender and returns the table.
fn hit_ratio_report(workloads: &[Workload]) -> String {
    let mut out = String::from(
        "| workload | requests | distinct keys | capacity | latchless | moka | quick_cache | lru (exact LRU) | latchless − best peer (points) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for w in workloads {
        let requests = w.keys.len();
        let unique = distinct(&w.keys);
        for &capacity in w.capacities {
            let ratios: Vec<f64> = REPLAYS
                .iter()
                .map(|&(name, replay)| {
                    eprint!("\r{} @ {capacity}: {name}                ", w.name);
                    let hits = replay(capacity, &w.keys);
                    100.0 * hits as f64 / requests.max(1) as f64
                })
                .collect();
            eprintln!();
            let best_peer = ratios[1..]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let _ = writeln!(
                out,
                "| {} | {requests} | {unique} | {capacity} | {:.2}% | {:.2}% | {:.2}% | {:.2}% | {:+.2} |",
                w.name.trim_start_matches("hit_ratio/"),
                ratios[0],
                ratios[1],
                ratios[2],
                ratios[3],
                ratios[0] - best_peer,
            );
        }
    }
    out
}

// ----------------------------------------------------------------------------------------------
// Throughput runs (the contenders, the workers and the measuring are in benches/common/)
// ----------------------------------------------------------------------------------------------

/// What one throughput run measured: the workers' times, and the `get`s that hit out of all
/// `get`s, over the workers.
#[derive(Clone, Copy, Debug)]
struct Run {
    sample: Sample,
    hits: u64,
    gets: u64,
}

/// Runs `ops` (keys, with [`INSERT_BIT`] on inserts) against `cache`; returns `(hits, gets)`.
fn work<C: BenchCache>(cache: &C, ops: &[u64]) -> (u64, u64) {
    let mut local = cache.local();
    let (mut hits, mut gets) = (0u64, 0u64);
    for &op in ops {
        let key = op & !INSERT_BIT;
        if op & INSERT_BIT == 0 {
            gets += 1;
            if let Some(v) = black_box(cache.get(&mut local, key)) {
                // Every contender pays this compare alike; a wrong value is a bug, not noise.
                assert!(v == value_of(key), "wrong value for key {key}");
                hits += 1;
            }
        } else {
            cache.insert(&mut local, key, value_of(key));
        }
    }
    (hits, gets)
}

/// One measured run: a fresh, prefilled cache, one worker per stream.
fn run_cache<C: BenchCache>(streams: &[Vec<u64>]) -> Run {
    let cache = C::make(THROUGHPUT_CAPACITY);
    {
        let mut local = cache.local();
        // The most frequent keys: the steady state of a warm cache.
        for key in 0..THROUGHPUT_CAPACITY {
            cache.insert(&mut local, key, value_of(key));
        }
    }
    cache.settle();
    let cache = &cache;
    let jobs: Vec<_> = streams.iter().map(|ops| move || work(cache, ops)).collect();
    let (sample, counts) = run_workers(jobs);
    let (hits, gets) = counts
        .iter()
        .fold((0, 0), |(hits, gets), &(h, g)| (hits + h, gets + g));
    Run { sample, hits, gets }
}

/// `len` throughput ops for one thread: Zipf keys, `insert_percent`% of them inserts.
fn op_stream(len: usize, insert_percent: u64, seed: u64) -> Vec<u64> {
    let mut keys = zipf_keys(len, seed);
    // Which ops insert: a separate generator, so the key stream is the same in every scenario.
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xA5A5_A5A5);
    for k in &mut keys {
        if rand::RngExt::random_range(&mut rng, 0..100) < insert_percent {
            *k |= INSERT_BIT;
        }
    }
    keys
}

// ----------------------------------------------------------------------------------------------
// Throughput scenarios, statistics and report
// ----------------------------------------------------------------------------------------------

/// One contender: a name and a function running one measured run.
#[derive(Clone, Copy)]
struct Contender {
    name: &'static str,
    run: fn(&[Vec<u64>]) -> Run,
}

/// The contender the ratios are taken against.
const BASELINE: &str = "quick_cache::sync::Cache";
/// The contender the ratios are taken against when every contender uses one hasher.
const BASELINE_ONE_HASHER: &str = "quick_cache::sync::Cache (one hasher)";

/// The contenders, each with its library's default hasher; or, with `one_hasher`, each with
/// latchless's `DefaultHashBuilder` (latchless's default already).
fn contenders(one_hasher: bool) -> Vec<Contender> {
    if one_hasher {
        return vec![
            Contender {
                name: "latchless Cache",
                run: run_cache::<Cache<u64, u64>>,
            },
            Contender {
                name: "moka::sync::Cache (one hasher)",
                run: run_cache::<MokaOneHasher>,
            },
            Contender {
                name: BASELINE_ONE_HASHER,
                run: run_cache::<QuickOneHasher>,
            },
            Contender {
                name: "Mutex<lru::LruCache> (one hasher)",
                run: run_cache::<LruOneHasher>,
            },
        ];
    }
    vec![
        Contender {
            name: "latchless Cache",
            run: run_cache::<Cache<u64, u64>>,
        },
        Contender {
            name: "latchless Cache (count_lookups)",
            run: run_cache::<LatchlessCounted>,
        },
        Contender {
            name: "latchless Cache (guard, repin/64)",
            run: run_cache::<LatchlessPinned>,
        },
        Contender {
            name: "latchless Cache (time_to_live 1 h)",
            run: run_cache::<LatchlessLive>,
        },
        Contender {
            name: "latchless Cache (time_to_idle 1 h)",
            run: run_cache::<LatchlessIdle>,
        },
        Contender {
            name: "latchless Cache (time_to_live 1 h, CoarseClock)",
            run: run_cache::<LatchlessLiveCoarse>,
        },
        Contender {
            name: "latchless Cache (time_to_idle 1 h, CoarseClock)",
            run: run_cache::<LatchlessIdleCoarse>,
        },
        Contender {
            name: "moka::sync::Cache",
            run: run_cache::<moka::sync::Cache<u64, u64>>,
        },
        Contender {
            name: "moka::sync::Cache (time_to_idle 1 h)",
            run: run_cache::<MokaIdle>,
        },
        Contender {
            name: BASELINE,
            run: run_cache::<quick_cache::sync::Cache<u64, u64>>,
        },
        Contender {
            name: "Mutex<lru::LruCache>",
            run: run_cache::<Mutex<lru::LruCache<u64, u64>>>,
        },
    ]
}

/// A throughput workload.
struct Scenario {
    name: &'static str,
    threads: u64,
    insert_percent: u64,
    /// Every contender built with latchless's `DefaultHashBuilder`.
    one_hasher: bool,
}

const fn scenario(name: &'static str, threads: u64, insert_percent: u64) -> Scenario {
    Scenario {
        name,
        threads,
        insert_percent,
        one_hasher: false,
    }
}

const fn one_hasher(name: &'static str, threads: u64, insert_percent: u64) -> Scenario {
    Scenario {
        name,
        threads,
        insert_percent,
        one_hasher: true,
    }
}

const SCENARIOS: [Scenario; 10] = [
    scenario("cache/get_insert_90_10/1t", 1, INSERT_PERCENT),
    scenario("cache/get_insert_90_10/2t", 2, INSERT_PERCENT),
    scenario("cache/get_100/1t", 1, 0),
    scenario("cache/get_100/2t", 2, 0),
    scenario("cache/insert_100/1t", 1, 100),
    scenario("cache/insert_100/2t", 2, 100),
    one_hasher("cache/one_hasher/get_insert_90_10/1t", 1, INSERT_PERCENT),
    one_hasher("cache/one_hasher/get_insert_90_10/2t", 2, INSERT_PERCENT),
    one_hasher("cache/one_hasher/get_100/1t", 1, 0),
    one_hasher("cache/one_hasher/get_100/2t", 2, 0),
];

/// What the rounds measured for one contender: the common [`Tally`], and the share of `get`s
/// that hit.
#[derive(Default)]
struct CacheTally {
    tally: Tally,
    /// Percentage of `get`s that hit.
    hit_pct: Vec<f64>,
}

impl CacheTally {
    fn record(&mut self, ops: u64, run: Run) {
        self.tally.record(ops, run.sample);
        if run.gets > 0 {
            self.hit_pct.push(100.0 * run.hits as f64 / run.gets as f64);
        }
    }
}

/// Runs `sc` for `rounds` rounds of `ops` ops, interleaving contenders, and appends its table
/// rows to `out`.
fn run_scenario(sc: &Scenario, rounds: usize, ops: u64, out: &mut String) {
    let contenders = contenders(sc.one_hasher);
    let baseline = if sc.one_hasher {
        BASELINE_ONE_HASHER
    } else {
        BASELINE
    };
    let n = contenders.len();
    // Generated once, outside every timed region: one stream per thread, its own seed.
    let streams: Vec<Vec<u64>> = (0..sc.threads)
        .map(|i| {
            let len = share_len(ops, sc.threads, i);
            op_stream(
                usize::try_from(len).expect("ops fit usize"),
                sc.insert_percent,
                0x7E57_0000 + i,
            )
        })
        .collect();
    // Warm-up, not recorded: page in the allocator's arenas and the code.
    let warm: Vec<Vec<u64>> = streams.iter().map(|s| s[..s.len() / 4].to_vec()).collect();
    for c in &contenders {
        (c.run)(&warm);
    }
    let mut tallies: Vec<CacheTally> = (0..n).map(|_| CacheTally::default()).collect();
    rotate_rounds(sc.name, rounds, n, |i| {
        let run = (contenders[i].run)(&streams);
        tallies[i].record(ops, run);
    });
    let base = contenders
        .iter()
        .position(|c| c.name == baseline)
        .expect("the baseline is one of the contenders");
    for (c, t) in contenders.iter().zip(&tallies) {
        let _ = writeln!(
            out,
            "{} {} |",
            t.tally.row(sc.name, c.name, &tallies[base].tally),
            fixed2(median(&t.hit_pct)),
        );
    }
}

// ----------------------------------------------------------------------------------------------
// Main
// ----------------------------------------------------------------------------------------------

fn main() {
    let inv = Invocation::from_env();
    let filter = inv.filter.as_str();
    let hit_limit = harness::env_u64("LATCHLESS_HIT_REQUESTS")
        .map(|n| usize::try_from(n).expect("a sane number of requests"));
    let (rounds, ops) = (inv.rounds, inv.ops());
    let (zipf_requests, max_requests) = if inv.bench_mode {
        (ZIPF_REQUESTS, hit_limit.unwrap_or(usize::MAX))
    } else {
        (5_000, 5_000)
    };

    if !inv.bench_mode {
        println!("(smoke test: no `--bench` argument, so a few thousand requests and ops and 1 round; not a measurement)");
    }
    println!("{}", machine());
    let started = Instant::now();

    // Hit ratio.
    let (workloads, notes) = workloads(zipf_requests, max_requests, filter);
    if !workloads.is_empty() || !notes.is_empty() {
        let limit = if max_requests == usize::MAX {
            "traces replayed whole".to_owned()
        } else {
            format!("at most {max_requests} requests per workload")
        };
        println!(
            "\n### Hit ratio\n\nSingle thread, sequential replay: `get(k)`, on a miss `insert(k, v)`; \
             hit ratio = hits / requests (cold misses included). Every contender hashes with \
             `BuildHasherDefault<DefaultHasher>`; Zipf(0.7, 0.99 and 1.2) over {ZIPF_KEYS} keys, seed fixed; {limit}. \
             moka: `run_pending_tasks()` after every insert; quick_cache: {QUICK_CACHE_SHARDS} shards; \
             lru: exact LRU. Last column: latchless minus the best of the three peers, in percentage \
             points.\n"
        );
        for note in &notes {
            println!("{note}\n");
        }
        if !workloads.is_empty() {
            println!("{}", hit_ratio_report(&workloads));
        }
    }

    // Throughput: with each library's default hasher, then with one hasher for all.
    for (one, baseline, hashers) in [
        (false, BASELINE, "default hashers"),
        (
            true,
            BASELINE_ONE_HASHER,
            "one hasher for all (latchless's `DefaultHashBuilder`, foldhash)",
        ),
    ] {
        let mut rows = String::new();
        for sc in SCENARIOS.iter().filter(|sc| sc.one_hasher == one) {
            if sc.name.contains(filter) {
                run_scenario(sc, rounds, ops, &mut rows);
            }
        }
        if rows.is_empty() {
            continue;
        }
        println!(
            "\n### Throughput (baseline: {baseline})\n\n{rounds} round(s), contenders interleaved in \
             an order rotated each round; {ops} ops per run shared by the threads; Zipf(0.99) keys \
             over {ZIPF_KEYS}, capacity {THROUGHPUT_CAPACITY} prefilled with the hottest keys, \
             {hashers}; medians over rounds, ratio = contender median / baseline median.\n"
        );
        if thread_cpu_time().is_none() {
            println!("(no per-thread CPU clock on this platform: the CPU columns read n/a)\n");
        }
        println!(
            "| scenario | contender | wall Mops/s | ratio | Mops per CPU-s | ratio | busy CPUs | wall min–max | get hit % |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|\n{rows}"
        );
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}
