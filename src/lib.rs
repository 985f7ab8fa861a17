//! Lock-free concurrency primitives for the hot paths of LLM serving: a queue, counters, a
//! bounded cache and a dynamic batcher to put between request threads and a model.
//!
//! Every atomic protocol here is model-checked with loom (and, for longer schedules, shuttle),
//! and every speed claim is measured against the crate a user would pick instead; the
//! repository's `TESTING.md` and `BENCHMARKS.md` say how.
//!
//! # Which one to reach for
//!
//! - Many threads send requests to a model that runs better on batches:
//!   [`Batcher`](batch::Batcher). It forms batches when a worker is free, bounds the queue,
//!   honours deadlines and priority classes, and gives every accepted request exactly one reply.
//! - Generation, where requests finish at different steps and clients want tokens as they come:
//!   [`StreamBatcher`](batch::StreamBatcher), continuous batching of a
//!   [`StepHandler`](batch::StepHandler), each request's output streamed.
//! - Per-session state (a key/value cache, a recurrent state) shared by the serving threads:
//!   [`Cache`](cache::Cache), bounded by weight, with lock-free reads and single-flight loaders.
//! - A plain work queue between threads: [`MsQueue`](queue::MsQueue).
//! - Admission control and statistics: [`AtomicCounter`](counter::AtomicCounter) and
//!   [`ShardedCounter`](counter::ShardedCounter).
//!
//! # A batcher in front of a model
//!
//! The handler sees a whole batch and returns one result per request, in order. Client threads
//! [`submit`](batch::Batcher::submit) (never blocking) and wait on the [`Pending`](batch::Pending)
//! reply, which is also a `Future`:
//!
//! ```
//! use latchless::batch::Batcher;
//! use std::time::Duration;
//!
//! let batcher = Batcher::builder()
//!     .max_batch_size(16)
//!     .max_wait(Duration::from_millis(1))
//!     .max_queue(256)
//!     .spawn(|batch: Vec<u32>| batch.into_iter().map(|x| x * x).collect())
//!     .unwrap();
//! let pending: Vec<_> = (0..10).map(|x| batcher.submit(x).unwrap()).collect();
//! let squares: Vec<u32> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
//! assert_eq!(squares, (0..10).map(|x| x * x).collect::<Vec<_>>());
//! batcher.shutdown();
//! ```
//!
//! A refusal (the queue full, a request over the batch budget, the batcher shutting down) hands
//! the request back in [`SubmitError`](batch::SubmitError): nothing is lost.
//! [`spawn_pool`](batch::BatcherBuilder::spawn_pool) runs several workers, each with a handler
//! of its own.
//!
//! # Streaming generation
//!
//! A [`StepHandler`](batch::StepHandler) advances every running item by one step; items join and
//! leave between steps, and each item's chunks reach its [`ChunkStream`](batch::ChunkStream) as
//! they are made, then exactly one final item:
//!
//! ```
//! use latchless::batch::{Batcher, Joined, Step, StepHandler, Streamed};
//!
//! /// Emits `n - 1, ..., 1`, then finishes.
//! struct Countdown;
//!
//! impl StepHandler for Countdown {
//!     type Req = u32;
//!     type State = u32;
//!     type Chunk = u32;
//!     type Out = &'static str;
//!
//!     fn join(&mut self, reqs: Vec<u32>) -> Vec<Joined<u32, &'static str>> {
//!         reqs.into_iter().map(Joined::Running).collect()
//!     }
//!
//!     fn step(&mut self, items: &mut [u32]) -> Vec<Step<u32, &'static str>> {
//!         items
//!             .iter_mut()
//!             .map(|n| {
//!                 *n -= 1;
//!                 if *n == 0 { Step::Finish("done") } else { Step::Chunk(*n) }
//!             })
//!             .collect()
//!     }
//! }
//!
//! let batcher = Batcher::builder().max_batch_size(8).spawn_steps(Countdown).unwrap();
//! let items: Vec<_> = batcher.submit(3).unwrap().collect();
//! assert_eq!(items, [Streamed::Chunk(2), Streamed::Chunk(1), Streamed::Done(Ok("done"))]);
//! ```
//!
//! Dropping a stream cancels its item, which leaves the batch before the next step.
//!
//! # Session state in a cache
//!
//! ```
//! use latchless::cache::{Cache, CoarseClock};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! // At most 1 MiB of session state, each entry weighed by its bytes; a session not continued
//! // for ten minutes expires (on a clock read to a few milliseconds, cheaply).
//! let sessions: Cache<u64, Arc<Vec<f32>>> = Cache::builder(1 << 20)
//!     .weigher(|_, state: &Arc<Vec<f32>>| (state.len() * 4) as u64)
//!     .time_to_idle(Duration::from_secs(600))
//!     .clock(CoarseClock)
//!     .build();
//! let first = Arc::new(vec![0.0; 256]);
//! sessions.insert(7, Arc::clone(&first));
//! // Continue the session only if nobody stored a newer state meanwhile.
//! let next = Arc::new(vec![1.0; 256]);
//! assert!(sessions.compare_exchange(&7, &first, next).is_ok());
//! assert_eq!(sessions.get(&7).unwrap()[0], 1.0);
//! ```
//!
//! # A queue and counters
//!
//! ```
//! use latchless::counter::{AtomicCounter, ShardedCounter};
//! use latchless::queue::MsQueue;
//! use std::thread;
//!
//! let requests = MsQueue::new();
//! let in_flight = AtomicCounter::new(0);
//! let served = ShardedCounter::new();
//!
//! thread::scope(|s| {
//!     // Producers: admit at most 64 requests in flight; the rest are turned away.
//!     for client in 0..2 {
//!         let (requests, in_flight) = (&requests, &in_flight);
//!         s.spawn(move || {
//!             for i in 0..100 {
//!                 if in_flight.try_add_within(1, 64).is_ok() {
//!                     requests.push((client, i));
//!                 }
//!             }
//!         });
//!     }
//! });
//! // A consumer drains what was admitted.
//! while let Some((_client, _i)) = requests.pop() {
//!     served.increment();
//!     in_flight.decrement();
//! }
//! assert_eq!(served.sum(), 64);
//! assert_eq!(in_flight.get(), 0);
//! ```
//!
//! # Modules
//!
//! | module | what it holds | progress |
//! |---|---|---|
//! | [`queue`] | [`MsQueue`](queue::MsQueue): unbounded MPMC FIFO, a Michael–Scott list of blocks of slots | lock-free push and pop |
//! | [`counter`] | [`AtomicCounter`](counter::AtomicCounter), [`ShardedCounter`](counter::ShardedCounter) | wait-free add, lock-free bounded add |
//! | [`cache`] | [`Cache`](cache::Cache): bounded key-value cache, CAS buckets, S3-FIFO eviction | lock-free get, insert, remove |
//! | [`batch`] | [`Batcher`](batch::Batcher): dynamic batching in front of a handler, on one worker or a pool, with admission, priority classes, deadlines, cancellation and histograms; and [`StreamBatcher`](batch::StreamBatcher): continuous (iteration-level) batching of a step-wise handler, each request's chunks streamed, with the same histograms | submit never blocks |
//!
//! # Progress guarantees
//!
//! | operation | guarantee |
//! |---|---|
//! | `MsQueue::push`, `pop`, `len` | lock-free |
//! | `MsQueue::is_empty` | wait-free |
//! | `AtomicCounter::get`, `add`, `increment` | wait-free |
//! | `AtomicCounter::sub`, `decrement`, `try_sub`, `try_add_within` | lock-free |
//! | `ShardedCounter::add`, `increment`, `sum` | wait-free |
//! | `Cache::get`, `peek`, `contains_key`, `insert`, `insert_if_absent`, `remove`, `compare_exchange`, `clear` | lock-free |
//! | `Cache::get_or_insert_with`, `get_or_try_insert_with` | lock-free on a hit; on a miss, waits for the caller computing the same key |
//! | `Cache::iter` (each `next`), `retain` | lock-free; weakly consistent, one bucket at a time |
//! | `Batcher::submit`, `submit_before`, `submit_to`, `submit_to_before` | lock-free: never blocks, refusals return at once |
//! | `Batcher::call`, `Pending::wait`, `Batcher::shutdown` | blocking (they wait for replies) |
//! | `StreamBatcher::submit`, `submit_before`, `submit_to` | lock-free: never blocks, refusals return at once |
//! | `ChunkStream::next` (blocking iterator), `StreamBatcher::shutdown` | blocking; `ChunkStream::try_next` and `Stream::poll_next` never block |
//!
//! # Features
//!
//! | feature / cfg | what it does |
//! |---|---|
//! | (none by default) | the crate has no cargo features |
//! | `--cfg loom --cfg crossbeam_loom` | builds every primitive on loom's atomics and crossbeam-epoch's loom mode, so a downstream crate's loom models explore latchless too |
//! | `--cfg shuttle` | builds every primitive on shuttle's atomics, locks and threads, for randomised schedules longer than loom can explore |
//!
//! # Model-checking your own code with latchless inside
//!
//! Built with `RUSTFLAGS="--cfg loom --cfg crossbeam_loom"`, latchless's atomics, cells and
//! threads become loom's, so your loom models explore latchless along with your code. Add
//! `crossbeam-epoch = { version = "0.9", features = ["loom"] }` under
//! `[target.'cfg(loom)'.dependencies]`, and build the queue and the cache on a `Collector` made
//! inside the model ([`MsQueue::with_collector`](queue::MsQueue::with_collector), the cache
//! builder's `collector`), so that memory freed through the epoch is freed inside the model.
//! Under `--cfg shuttle` the same holds with shuttle's primitives; crossbeam-epoch then stays on
//! std's atomics (shuttle does not see pins, so orderings and reclamation stay loom's to check).
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod batch;
pub mod cache;
pub mod counter;
pub mod queue;
mod reclaim;
mod sync;

/// Counters that the model-checking suites read (queue blocks allocated and freed, counted only
/// under the model checker); not part of the API.
#[doc(hidden)]
pub use sync::census as __model_census;

/// The cache's frequency sketch, for the loom models of its counters; not part of the API.
#[doc(hidden)]
pub use cache::sketch::Sketch as __ModelSketch;

/// The README's examples, run as doctests: it is the first page most users read.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
