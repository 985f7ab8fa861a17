#![doc = include_str!("../README.md")]
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
