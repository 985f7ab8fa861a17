//! A work queue: two producers submit inference requests to one `MsQueue`, two workers drain it,
//! and a `ShardedCounter` collects statistics without the workers contending on one cache line.
//!
//! Run with `cargo run --example queue`.

use latchless::counter::ShardedCounter;
use latchless::queue::MsQueue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// One request: who sent it and how many prompt tokens it carries.
#[derive(Debug)]
struct Request {
    client: usize,
    id: usize,
    prompt_tokens: u64,
}

const PRODUCERS: usize = 2;
const WORKERS: usize = 2;
const REQUESTS_PER_PRODUCER: usize = 10_000;

fn main() {
    let queue = MsQueue::new();
    let requests_done = ShardedCounter::new();
    let tokens_done = ShardedCounter::new();
    let producers_finished = AtomicUsize::new(0);

    let per_worker: Vec<usize> = thread::scope(|s| {
        for client in 0..PRODUCERS {
            let (queue, producers_finished) = (&queue, &producers_finished);
            s.spawn(move || {
                for id in 0..REQUESTS_PER_PRODUCER {
                    let prompt_tokens = 16 + (id as u64 * 7 + client as u64) % 512;
                    queue.push(Request {
                        client,
                        id,
                        prompt_tokens,
                    });
                }
                // Release: every push above happens before a worker that sees the count.
                producers_finished.fetch_add(1, Ordering::Release);
            });
        }

        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (queue, requests_done, tokens_done, producers_finished) =
                    (&queue, &requests_done, &tokens_done, &producers_finished);
                s.spawn(move || {
                    let mut handled = 0;
                    let mut last_id = [None; PRODUCERS];
                    loop {
                        // Acquire: pairs with the producers' Release. Read before popping, so an
                        // empty pop after every producer finished means the work is all done.
                        let all_submitted = producers_finished.load(Ordering::Acquire) == PRODUCERS;
                        match queue.pop() {
                            Some(req) => {
                                // FIFO per producer: each client's requests arrive in order.
                                assert!(last_id[req.client] < Some(req.id));
                                last_id[req.client] = Some(req.id);
                                requests_done.increment();
                                tokens_done.add(req.prompt_tokens);
                                handled += 1;
                            }
                            None if all_submitted => return handled,
                            None => thread::yield_now(),
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect()
    });

    let expected_tokens: u64 = (0..PRODUCERS)
        .flat_map(|c| {
            (0..REQUESTS_PER_PRODUCER).map(move |id| 16 + (id as u64 * 7 + c as u64) % 512)
        })
        .sum();
    println!(
        "{PRODUCERS} producers submitted {} requests; {WORKERS} workers handled {per_worker:?}",
        PRODUCERS * REQUESTS_PER_PRODUCER
    );
    println!(
        "stats: {} requests, {} prompt tokens ({} counter shards)",
        requests_done.sum(),
        tokens_done.sum(),
        requests_done.shards()
    );
    assert_eq!(
        requests_done.sum() as usize,
        PRODUCERS * REQUESTS_PER_PRODUCER
    );
    assert_eq!(
        per_worker.iter().sum::<usize>(),
        PRODUCERS * REQUESTS_PER_PRODUCER
    );
    assert_eq!(tokens_done.sum(), expected_tokens);
    assert!(queue.is_empty());
    println!("queue empty, every request handled exactly once: {queue:?}");
}
