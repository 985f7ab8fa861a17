//! shuttle tests of latchless, in `tests/`: randomised schedules of 3–5 threads and longer
//! operation sequences than loom can afford, for the batcher, the cache, the queue and the
//! counters. Build and run them with
//!
//! ```text
//! RUSTFLAGS="--cfg shuttle" cargo test -p latchless-shuttle-tests --release --target-dir target/shuttle
//! ```
//!
//! Under `--cfg shuttle`, latchless's `sync` shim runs its atomics, `Mutex`, `Condvar` and threads
//! on shuttle's, so shuttle chooses which thread runs at every one of those operations. It is no
//! replacement for loom: shuttle treats every atomic as `SeqCst` (no weak-memory behaviour) and
//! does not see crossbeam-epoch at all (see `src/sync.rs` in latchless), and it samples schedules
//! instead of enumerating them. It reaches what loom cannot: more threads, longer sequences.
//!
//! A failing test prints the schedule that failed; `shuttle::replay(test_body, "<schedule>")`
//! replays it (the tests use no other source of nondeterminism: fixed hashers, `shuttle::rand`
//! for random choices, a local epoch collector per schedule for the cache and the queue). The
//! batcher's request queue reclaims through the default collector, one per OS thread under
//! shuttle, whose garbage may run in a later schedule: a batcher replay may diverge (see
//! latchless's `src/sync.rs`).

/// Runs `f` under `shuttle::check_random` for `random` schedules, then under `shuttle::check_pct`
/// (depth [`PCT_DEPTH`]) for `pct` schedules, and prints how many schedules ran and how long they
/// took (run the tests with `--nocapture` to see it): the figures each test's comment quotes.
#[cfg(shuttle)]
pub fn explore<F>(random: usize, pct: usize, f: F)
where
    F: Fn() + Send + Sync + 'static,
{
    use std::sync::Arc;

    let f = Arc::new(f);
    let start = std::time::Instant::now();
    let g = Arc::clone(&f);
    shuttle::check_random(move || g(), random);
    let random_took = start.elapsed();
    let g = Arc::clone(&f);
    shuttle::check_pct(move || g(), pct, PCT_DEPTH);
    eprintln!(
        "{}: {random} random schedules in {random_took:.1?}, {pct} PCT schedules in {:.1?}",
        std::thread::current().name().unwrap_or("test"),
        start.elapsed() - random_took
    );
}

/// PCT's bug depth: the number of ordering constraints a bug needs (e.g. 2 for an atomicity
/// violation between a load and a store, 3 when a third thread must run in between). PCT finds a
/// bug of depth `d` in each schedule with a probability of at least `1 / (n * k^(d-1))` for `n`
/// threads and `k` steps.
pub const PCT_DEPTH: usize = 3;
