//! The round driver of the real-thread tests: threads started together, random operations with
//! random pauses, the history checked; and the sizes of the runs.

use crate::checker::{check, Clock, History, Model, Recorder, Violation};
use crate::rng::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread;

/// Histories recorded and checked per real-thread test.
pub(crate) const ROUNDS: usize = if cfg!(miri) { 5 } else { 1_500 };

/// Rounds run against a broken structure before giving up on catching it.
pub(crate) const BROKEN_ROUNDS: usize = if cfg!(miri) { 8 } else { 500 };

/// Spins a thread spends waiting for the others at the start of a round before it yields.
const START_SPINS: u32 = if cfg!(miri) { 10 } else { 5_000 };

/// A short random pause between two operations, so that threads interleave differently from one
/// round to the next: mostly a few spins, sometimes a yield.
pub(crate) fn jitter(rng: &mut Rng) {
    match rng.below(16) {
        0 => thread::yield_now(),
        r => {
            for _ in 0..r * 2 {
                std::hint::spin_loop();
            }
        }
    }
}

/// Called by each of `threads` threads right after the round's `Barrier`: spins until all have
/// arrived. The barrier wakes its waiters one after the other, microseconds apart, which is
/// longer than a whole thread's operations; spinning here lines the threads up again. Spinning
/// gives way to yielding after a while, since 4 threads on 2 cores cannot all spin at once.
fn start_together(started: &AtomicUsize, threads: usize) {
    // Relaxed: only a count; the barrier already ordered everything the threads share.
    started.fetch_add(1, Ordering::Relaxed);
    let mut spins = 0u32;
    while started.load(Ordering::Relaxed) < threads {
        if spins < START_SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

/// Which thread of which round is running.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Who {
    pub(crate) round: usize,
    pub(crate) thread: usize,
}

/// The shape of round `round`: 2 to 4 threads, 6 to 8 operations each.
fn shape(round: usize) -> (usize, usize) {
    (2 + round % 3, 6 + (round / 3) % 3)
}

/// What a batch of rounds found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    histories: usize,
    operations: usize,
    overlapping: usize,
    concurrent_histories: usize,
    explored: usize,
    max_explored: usize,
    pub(crate) violations: Vec<Violation>,
}

impl Report {
    pub(crate) fn print(&self, name: &str) {
        println!(
            "{name}: {} histories ({} with overlapping operations), {} operations ({} \
             overlapping another thread's), {} configurations explored (at most {} per history), \
             {} violations",
            self.histories,
            self.concurrent_histories,
            self.operations,
            self.overlapping,
            self.explored,
            self.max_explored,
            self.violations.len()
        );
    }

    /// Panics with the first violation, if any, and checks the runs were concurrent at all.
    pub(crate) fn assert_linearizable(&self, name: &str) {
        self.print(name);
        if let Some(v) = self.violations.first() {
            panic!(
                "{name}: {} of {} histories are not linearizable; the first:\n{v}",
                self.violations.len(),
                self.histories
            );
        }
        assert!(
            self.overlapping > 0,
            "{name}: no operation overlapped another thread's: the test checked nothing concurrent"
        );
    }
}

/// Runs `rounds` rounds against `subject`: `init` reads the model state at the start of a round
/// (the subject is quiescent then), every thread runs `body` for its operations, and `tail` adds
/// the main thread's quiescent operations; the history of each round is checked. `stop_early`
/// ends the batch at its first violation (for broken subjects).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_rounds<S, M>(
    subject: &S,
    rounds: usize,
    seed: u64,
    stop_early: bool,
    mut init: impl FnMut(&S) -> M,
    body: impl Fn(&S, &mut Recorder<'_, M::Op, M::Ret>, &mut Rng, Who, usize) + Sync,
    tail: impl Fn(&S, &mut Recorder<'_, M::Op, M::Ret>),
) -> Report
where
    S: Sync,
    M: Model,
    M::Op: Send,
    M::Ret: Send,
{
    let mut report = Report::default();
    for round in 0..rounds {
        let (threads, ops) = shape(round);
        let state = init(subject);
        let clock = Clock::new();
        let barrier = Barrier::new(threads);
        let started = AtomicUsize::new(0);
        let mut recorders: Vec<Recorder<'_, M::Op, M::Ret>> = thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|thread| {
                    let (clock, barrier, started, body) = (&clock, &barrier, &started, &body);
                    let mut rng = Rng::new(seed ^ ((round as u64) << 8) ^ thread as u64);
                    s.spawn(move || {
                        let mut rec = Recorder::new(clock, thread);
                        barrier.wait();
                        start_together(started, threads);
                        body(subject, &mut rec, &mut rng, Who { round, thread }, ops);
                        rec
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a recording thread panicked"))
                .collect()
        });
        let mut last = Recorder::new(&clock, threads);
        tail(subject, &mut last);
        recorders.push(last);
        let history = History::from_recorders(recorders);
        report.histories += 1;
        report.operations += history.len();
        let overlapping = history.overlapping();
        report.overlapping += overlapping;
        report.concurrent_histories += usize::from(overlapping > 0);
        match check(&state, &history) {
            Ok(lin) => {
                assert_eq!(lin.order.len(), history.len());
                report.explored += lin.explored;
                report.max_explored = report.max_explored.max(lin.explored);
            }
            Err(v) => {
                report.explored += v.explored;
                report.max_explored = report.max_explored.max(v.explored);
                report.violations.push(v);
                if stop_early {
                    break;
                }
            }
        }
    }
    report
}
