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

#[path = "../tests/common/counting_alloc.rs"]
#[allow(dead_code)]
mod counting_alloc;

use counting_alloc::{Counting, Section};
use crossbeam_queue::SegQueue;
use latchless::queue::MsQueue;
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Mutex;

#[global_allocator]
static ALLOC: Counting = Counting;

/// Live bytes and allocations once `n` values are queued by `fill`, and after they are popped
/// again by `empty`.
fn measure<Q>(n: u64, make: impl FnOnce() -> Q, fill: impl Fn(&Q, u64), empty: impl Fn(&Q)) {
    let section = Section::start();
    let q = make();
    for v in 0..n {
        fill(&q, v);
    }
    let full = section.live();
    empty(&q);
    let drained = section.live();
    drop(black_box(q));
    print!(
        "| {:.2} | {} | {} |",
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
    print!("| latchless MsQueue ");
    measure(
        n,
        MsQueue::new,
        |q, v| q.push(v),
        |q| while q.pop().is_some() {},
    );
    println!();
    print!("| crossbeam SegQueue ");
    measure(
        n,
        SegQueue::new,
        |q, v| q.push(v),
        |q| while q.pop().is_some() {},
    );
    println!();
    print!("| ConcurrentQueue::unbounded ");
    measure(
        n,
        concurrent_queue::ConcurrentQueue::unbounded,
        |q, v| q.push(v).expect("unbounded, never closed"),
        |q| while q.pop().is_ok() {},
    );
    println!();
    print!("| `Mutex<VecDeque>` ");
    measure(
        n,
        || Mutex::new(VecDeque::new()),
        |q, v| q.lock().unwrap().push_back(v),
        |q| while q.lock().unwrap().pop_front().is_some() {},
    );
    println!();
    print!("| crossbeam_channel::unbounded ");
    measure(
        n,
        crossbeam_channel::unbounded,
        |(tx, _), v| tx.send(v).expect("the receiver lives"),
        |(_, rx)| while rx.try_recv().is_ok() {},
    );
    println!();
}
