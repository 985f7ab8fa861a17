//! Dispatch through a [`Batcher`] with a handler that does next to nothing: 4 client threads
//! `call` it in a loop for about a second, then the example prints requests/s and the batch-size
//! histogram from [`Batcher::stats`].
//!
//! What it shows: the batcher's own cost per request, and how batches form on their own when
//! several clients wait at once. Each client has one request in flight, so a batch never holds
//! more than 4; `max_wait` is zero, since waiting for a fifth request that cannot come would only
//! add latency (with many clients or windows of requests, a small `max_wait` fills batches).
//!
//! Run with `cargo run --release --example batch_noop`.

use latchless::batch::{BatchConfig, Batcher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const CLIENTS: u64 = 4;
const RUN_FOR: Duration = Duration::from_secs(1);
/// The labels of `BatchStats::batch_sizes`.
const BUCKETS: [&str; 8] = ["1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65+"];

fn main() {
    let mut config = BatchConfig::default();
    config.max_batch_size = 64;
    config.max_batch_cost = u64::MAX;
    config.max_wait = Duration::ZERO;
    config.max_queue = 1024;
    // The "model": one multiply per request.
    let batcher = Batcher::spawn(config, |batch: Vec<u64>| {
        batch.into_iter().map(|x| x.wrapping_mul(3)).collect()
    })
    .expect("a valid configuration");

    let stop = AtomicBool::new(false);
    let start = Instant::now();
    thread::scope(|s| {
        for client in 0..CLIENTS {
            let (batcher, stop) = (batcher.clone(), &stop);
            s.spawn(move || {
                let mut i = client << 40;
                // Relaxed: a stop signal; no data is published through it.
                while !stop.load(Ordering::Relaxed) {
                    let reply = batcher.call(i).expect("nothing is refused here");
                    assert_eq!(reply, i.wrapping_mul(3), "a reply to another request");
                    i += 1;
                }
            });
        }
        thread::sleep(RUN_FOR);
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed();
    batcher.shutdown();

    let stats = batcher.stats();
    let secs = elapsed.as_secs_f64();
    println!(
        "batch_noop: {CLIENTS} client threads calling a no-op handler for {secs:.2} s (max_wait 0)"
    );
    println!(
        "  requests   {:>10}   {:>8.3} M requests/s",
        stats.completed,
        stats.completed as f64 / secs / 1e6
    );
    println!(
        "  batches    {:>10}   mean size {:.2}",
        stats.batches,
        stats.mean_batch_size()
    );
    let mean_wait = if stats.completed == 0 {
        Duration::ZERO
    } else {
        stats.queue_wait / u32::try_from(stats.completed).unwrap_or(u32::MAX)
    };
    println!("  queue wait mean {mean_wait:?} between submit and the start of its batch");
    println!(
        "  refused    {:>10}",
        stats.refused_overloaded + stats.refused_shutting_down + stats.refused_too_costly
    );
    println!("  batch sizes:");
    let most = stats.batch_sizes.iter().copied().max().unwrap_or(0).max(1);
    for (label, &count) in BUCKETS.iter().zip(&stats.batch_sizes) {
        // Bar length proportional to the count, at most 40 characters.
        let bar = usize::try_from(count * 40 / most).unwrap_or(40);
        let line = format!("    {label:>6} {count:>10}  {}", "#".repeat(bar));
        println!("{}", line.trim_end());
    }
}
