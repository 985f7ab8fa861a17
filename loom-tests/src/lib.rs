//! loom models of latchless's atomic protocols, in `tests/`. Build and run them with
//!
//! ```text
//! RUSTFLAGS="--cfg loom --cfg crossbeam_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p latchless-loom-tests --release --target-dir target/loom
//! ```
//!
//! This crate depends on latchless exactly as a user's crate does: the same command, run in a
//! user's crate, makes its own loom models explore latchless's queue and counters.

/// Runs `f` under `loom::model`, then prints how many executions loom explored and how long it
/// took (run the tests with `--nocapture` to see it): the figures each model's comment quotes.
#[cfg(loom)]
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    check(loom::model::Builder::new(), f);
}

/// [`model`] with at most `bound` preemptions, whatever `LOOM_MAX_PREEMPTIONS` says: for the few
/// models too large to explore at CI's bound (each says so).
#[cfg(loom)]
pub fn model_with_bound<F>(bound: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(bound);
    check(builder, f);
}

#[cfg(loom)]
fn check<F>(builder: loom::model::Builder, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let executions = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&executions);
    let start = std::time::Instant::now();
    builder.check(move || {
        // Relaxed: a count read after `check` returns, on the same OS thread.
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    eprintln!(
        "{}: {} executions in {:.1?}",
        std::thread::current().name().unwrap_or("model"),
        executions.load(Ordering::Relaxed),
        start.elapsed()
    );
}
