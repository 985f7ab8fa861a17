//! Admission control: `AtomicCounter::try_add_within` caps the number of requests in flight and
//! the number of KV-cache tokens reserved, without a lock. Eight clients send requests at once;
//! a request over either limit is refused (the client retries later) instead of queueing.
//!
//! Run with `cargo run --example counter`.

use latchless::counter::{AtomicCounter, ShardedCounter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const MAX_IN_FLIGHT: u64 = 4;
const TOKEN_BUDGET: u64 = 4_096;
const CLIENTS: u64 = 8;
const REQUESTS_PER_CLIENT: u64 = 25;

/// The server's shared state.
struct Server {
    in_flight: AtomicCounter,
    tokens_reserved: AtomicCounter,
    served: ShardedCounter,
    refused: ShardedCounter,
    /// The most requests seen in flight at once, for the report.
    peak_in_flight: AtomicU64,
}

impl Server {
    /// Admits a request of `tokens` KV-cache tokens if both limits allow it, runs it, and releases
    /// its slot and tokens. Returns `false` if it was refused.
    fn try_serve(&self, tokens: u64) -> bool {
        let Ok(prev) = self.in_flight.try_add_within(1, MAX_IN_FLIGHT) else {
            return false;
        };
        // Relaxed: a statistic; nothing is published through it.
        self.peak_in_flight.fetch_max(prev + 1, Ordering::Relaxed);
        if self
            .tokens_reserved
            .try_add_within(tokens, TOKEN_BUDGET)
            .is_err()
        {
            // Give the slot back: the request did not fit in the token budget.
            self.in_flight.decrement();
            return false;
        }
        // "Generate": a short pause stands in for the model.
        thread::sleep(Duration::from_micros(200));
        self.tokens_reserved.sub(tokens);
        self.in_flight.decrement();
        true
    }
}

fn main() {
    let server = Server {
        in_flight: AtomicCounter::new(0),
        tokens_reserved: AtomicCounter::new(0),
        served: ShardedCounter::new(),
        refused: ShardedCounter::new(),
        peak_in_flight: AtomicU64::new(0),
    };

    thread::scope(|s| {
        for client in 0..CLIENTS {
            let server = &server;
            s.spawn(move || {
                for i in 0..REQUESTS_PER_CLIENT {
                    let tokens = 256 + (client * 131 + i * 97) % 1_536;
                    // Retry until admitted, backing off a little after each refusal.
                    while !server.try_serve(tokens) {
                        server.refused.increment();
                        thread::sleep(Duration::from_micros(50));
                    }
                    server.served.increment();
                }
            });
        }
    });

    let peak = server.peak_in_flight.load(Ordering::Relaxed);
    println!(
        "served {} requests from {CLIENTS} clients; {} attempts refused and retried",
        server.served.sum(),
        server.refused.sum()
    );
    println!("peak in flight: {peak} (limit {MAX_IN_FLIGHT}); token budget {TOKEN_BUDGET}");
    assert_eq!(server.served.sum(), CLIENTS * REQUESTS_PER_CLIENT);
    assert!(peak <= MAX_IN_FLIGHT, "the admission limit was passed");
    assert_eq!(server.in_flight.get(), 0);
    assert_eq!(server.tokens_reserved.get(), 0);
    println!("all slots and tokens released: {:?}", server.in_flight);
}
