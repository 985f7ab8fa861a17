//! Linearizability of `MsQueue` and of `Cache` (as a map, without eviction), checked on many short
//! histories recorded from real threads.
//!
//! Layout: one test binary, `tests/linearizability/main.rs`, in modules by concern:
//! - `checker.rs`: the checker itself (recording with a global clock, Wing & Gong search with
//!   Lowe's memoisation, generic over a sequential [`checker::Model`]), documented there;
//! - `self_tests.rs`: the checker on hand-written histories, good and bad;
//! - `rounds.rs`: the round driver every real-thread test runs on, and its sizes;
//! - `queue.rs`: the queue's model and rounds, on `MsQueue` and on a broken LIFO stack;
//! - `map.rs`: the map's model and rounds, on `Cache` and on a broken map.
//!
//! The seeded generator is `tests/common/rng.rs`, shared by the integration tests.
//!
//! Each round spawns 2 to 4 threads that meet at a `Barrier`, then run 6 to 8 random operations
//! each with a little random spinning in between, every operation stamped by the checker's
//! clock. The main thread then appends quiescent operations (it drains the queue, or reads every
//! key of the map), so lost or duplicated values show up in the same history, and the whole
//! history is checked against the sequential model:
//!
//! - `MsQueue<u32>` against a `VecDeque` (distinct values; `push(v) -> ()`, `pop() -> Option<v>`),
//!   once on the global collector, once on a local `Collector`. One queue serves all rounds, so
//!   retired blocks are reclaimed while it runs.
//! - `Cache<u8, u8>` as a map over 3 keys with capacity 64 (no eviction) and a fixed hasher,
//!   against a `BTreeMap` (the memo hashes model states, and a `HashMap` is not `Hash`): `get`,
//!   `insert` (returns the replaced value), `remove` (returns the removed value) and
//!   `compare_exchange` (`Ok`, or `Err(current)`); values come from a domain of 4 so exchanges
//!   often match. Half the rounds run on a cache whose index has one bucket (every write
//!   contends on it), half on one sized from the capacity; after the rounds, `len()` must count
//!   exactly the keys present, and nothing may have been evicted.
//!
//! The checker is shown to reject what it should: hand-written histories with known violations
//! (a LIFO pop order, a value popped twice or never pushed, an empty pop while a value sat in the
//! queue; a stale read after a completed insert, two successful exchanges from one value, a
//! wrong replaced value) are rejected, and known-good ones with overlapping operations accepted.
//! Real-thread runs against deliberately broken structures (a LIFO stack posing as a queue, a map
//! whose compare-and-exchange is a separate read and write) are rejected too.
//!
//! Sizes: `ROUNDS` histories per structure (fewer under Miri); run with `--nocapture` to see how
//! many operations overlapped another thread's and how many configurations the search explored.

mod checker;
mod map;
mod queue;
// The seeded generator shared by the integration tests.
#[path = "../common/rng.rs"]
mod rng;
mod rounds;
mod self_tests;
