//! Bytes of heap per queued element: each queue contender holds 1,000,000 `u64`s (or
//! `LATCHLESS_BENCH_OPS` of them) at once, and a counting global allocator reports the bytes its
//! allocations requested and still hold (the allocator's own per-block overhead not included).
//! A deterministic count, not a timing: one run per contender.
//!
//! ```text
//! cargo bench --bench queue_memory
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it only smoke-tests with 10,000
//! elements.

#[allow(dead_code)]
mod common;
#[path = "../tests/common/counting_alloc.rs"]
#[allow(dead_code)]
mod counting_alloc;

use common::queues::{BenchQueue, Channel};
use counting_alloc::{Counting, Section};
use crossbeam_queue::SegQueue;
use latchless::queue::MsQueue;
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Mutex;

#[global_allocator]
static ALLOC: Counting = Counting;

/// One table row: live bytes and allocations once `n` values are queued in a fresh `Q`, and
/// the bytes still live after they are popped again.
fn row<Q: BenchQueue>(name: &str, n: u64) {
    let section = Section::start();
    let q = Q::make();
    for v in 0..n {
        q.push(v);
    }
    let full = section.live();
    while q.pop().is_some() {}
    let drained = section.live();
    drop(black_box(q));
    println!(
        "| {name} | {:.2} | {} | {} |",
        full.bytes as f64 / n as f64,
        full.blocks,
        drained.bytes
    );
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let n: u64 = match std::env::var("LATCHLESS_BENCH_OPS") {
        Ok(v) => v.parse().expect("LATCHLESS_BENCH_OPS is a number"),
        Err(_) if bench_mode => 1_000_000,
        Err(_) => 10_000,
    };
    println!("{n} u64 values queued at once; bytes requested from the allocator and still live\n");
    println!("| contender | bytes per element | live allocations | bytes live after popping all |");
    println!("|---|---:|---:|---:|");
    row::<MsQueue<u64>>("latchless MsQueue", n);
    row::<SegQueue<u64>>("crossbeam SegQueue", n);
    row::<concurrent_queue::ConcurrentQueue<u64>>("ConcurrentQueue::unbounded", n);
    row::<Mutex<VecDeque<u64>>>("`Mutex<VecDeque>`", n);
    row::<Channel>("crossbeam_channel::unbounded", n);
}
