//! The bodies of latchless's cargo-fuzz targets, as plain functions, so that they build and run
//! on stable too: `fuzz_targets/*.rs` hand libFuzzer's bytes to them, and `tests/replay.rs` runs
//! the committed corpus (`corpus/<target>/`) and seeded pseudo-random inputs through them.
//!
//! Each target decodes an operation sequence from its bytes with `arbitrary` (the decoding lives
//! in the target's own module), applies it to one latchless primitive and to a reference model,
//! and panics at the first disagreement, naming the step and the operation.
//!
//! | target | primitive | reference and checks |
//! |---|---|---|
//! | `queue` | `MsQueue` on a local `Collector` | `VecDeque` of value ids: order, exactly-once, every value dropped exactly once |
//! | `cache` | `Cache` with and without eviction, and with expiry (time-to-live, time-to-idle, `insert_with_ttl`, `purge_expired` on a `ManualClock`) | `HashMap` kept exact through the eviction listener, with deadlines and latest accesses; `len`/`weight` within capacity, stats |
//! | `counter` | `AtomicCounter`, `ShardedCounter` | a `u64` with the documented wrapping and saturation |
//! | `batch` | `Batcher` with a gated handler | exactly one reply per accepted request, its own; refusals as configured |
//! | `batch_stream` | `StreamBatcher` (one worker or two) with a step handler | each stream's own chunks in order, then exactly one final item; refusals as configured; join limits; exact stats |
//!
//! Every input is bounded (operations, values), so one input runs in well under a second.

pub mod batch;
pub mod batch_stream;
pub mod cache;
pub mod counter;
pub mod queue;

pub use batch::run as run_batch;
pub use batch_stream::run as run_batch_stream;
pub use cache::run as run_cache;
pub use counter::run as run_counter;
pub use queue::run as run_queue;
