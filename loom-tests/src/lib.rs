//! loom models of latchless's atomic protocols, in `tests/`. Build and run them with
//!
//! ```text
//! RUSTFLAGS="--cfg loom --cfg crossbeam_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p latchless-loom-tests --release --target-dir target/loom
//! ```
//!
//! This crate depends on latchless exactly as a user's crate does: the same command, run in a
//! user's crate, makes its own loom models explore latchless's queue and counters.
