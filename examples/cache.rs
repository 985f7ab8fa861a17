//! Per-session state for an LLM server, kept in a `latchless::cache::Cache` under a byte budget.
//!
//! Each session holds the token ids of its context window. Four workers serve requests for 300
//! sessions, a few of them much busier than the rest: a request finds its session (or prefills a
//! new one, once, even if several workers ask at the same time: `get_or_insert_with` is
//! single-flight), then appends the tokens it generated with an optimistic `compare_exchange`
//! loop, retrying when another worker updated the session first. The cache weighs sessions in
//! bytes and evicts the least useful ones (S3-FIFO) to stay within the budget; an eviction
//! listener adds up what was freed.
//!
//! Run with `cargo run --release --example cache`.

use latchless::cache::{Cache, CompareExchangeFailure, RemovalCause};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

/// The byte budget for all sessions.
const BUDGET: u64 = 256 * 1024;
const SESSIONS: u64 = 300;
const WORKERS: u64 = 4;
const REQUESTS_PER_WORKER: u64 = 5_000;
/// A session keeps at most this many tokens (its context window).
const WINDOW: usize = 512;
const PROMPT_TOKENS: usize = 48;
const TOKENS_PER_REQUEST: usize = 8;

/// One session's state. Cloning it is cheap (the tokens are shared); an update builds a new
/// token list and bumps the version.
#[derive(Clone, Debug)]
struct Session {
    version: u64,
    tokens: Arc<Vec<u32>>,
}

/// `compare_exchange` needs `PartialEq`: comparing the version and the token list's identity is
/// exact (every update makes a new list) and never compares the tokens themselves.
impl PartialEq for Session {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && Arc::ptr_eq(&self.tokens, &other.tokens)
    }
}

impl Session {
    /// Prefill: a new session from its prompt.
    fn prefill(id: u64) -> Self {
        let tokens = (0..PROMPT_TOKENS as u32).map(|i| i ^ id as u32).collect();
        Self {
            version: 0,
            tokens: Arc::new(tokens),
        }
    }

    /// This session with `new` tokens appended, keeping the last `WINDOW`.
    fn extended(&self, new: &[u32]) -> Self {
        let keep = (self.tokens.len() + new.len()).saturating_sub(WINDOW);
        let tokens = self.tokens[keep.min(self.tokens.len())..]
            .iter()
            .chain(new)
            .copied()
            .collect();
        Self {
            version: self.version + 1,
            tokens: Arc::new(tokens),
        }
    }

    /// Bytes held: the tokens and a fixed overhead.
    fn bytes(&self) -> u64 {
        (self.tokens.len() * size_of::<u32>() + 64) as u64
    }
}

/// A small generator for the workload (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A session id, skewed towards low ids: a few sessions are busy, most are not.
    fn session(&mut self) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * u) * SESSIONS as f64) as u64
    }
}

fn main() {
    let freed_bytes = Arc::new(AtomicU64::new(0));
    let freed = Arc::clone(&freed_bytes);
    let cache: Cache<u64, Session> = Cache::builder(BUDGET)
        .weigher(|_, s: &Session| s.bytes())
        .eviction_listener(move |_, s: &Session, cause| {
            if cause == RemovalCause::Evicted {
                // Relaxed: a statistic, read after the workers are joined.
                freed.fetch_add(s.bytes(), Ordering::Relaxed);
            }
        })
        .build();
    let retries = AtomicU64::new(0);
    let prefills = AtomicU64::new(0);

    thread::scope(|s| {
        for w in 0..WORKERS {
            let (cache, retries, prefills) = (&cache, &retries, &prefills);
            s.spawn(move || {
                let mut rng = Rng(0x2545_f491 + w);
                for _ in 0..REQUESTS_PER_WORKER {
                    let id = rng.session();
                    let mut cur = cache.get_or_insert_with(id, || {
                        prefills.fetch_add(1, Ordering::Relaxed);
                        Session::prefill(id)
                    });
                    // "Generate" a few tokens, then record them in the session.
                    let generated: Vec<u32> = (0..TOKENS_PER_REQUEST)
                        .map(|_| rng.next() as u32 % 50_000)
                        .collect();
                    loop {
                        match cache.compare_exchange(&id, &cur, cur.extended(&generated)) {
                            Ok(()) => break,
                            Err(e) => match (e.failure, e.current) {
                                // Another worker got there first: build on its version.
                                (CompareExchangeFailure::Mismatch, Some(now)) => {
                                    retries.fetch_add(1, Ordering::Relaxed);
                                    cur = now;
                                }
                                // Evicted meanwhile: the next request prefills it again.
                                (CompareExchangeFailure::Mismatch, None) => break,
                                // Sessions never outgrow the budget (the window caps them).
                                (CompareExchangeFailure::Refused, _) => {
                                    unreachable!("a session heavier than the whole budget")
                                }
                                (failure, _) => unreachable!("not a failure of ours: {failure:?}"),
                            },
                        }
                    }
                }
            });
        }
    });

    let stats = cache.stats();
    println!(
        "{} requests over {SESSIONS} sessions from {WORKERS} workers",
        WORKERS * REQUESTS_PER_WORKER
    );
    println!(
        "  hit ratio {:.1}% ({} hits, {} misses), {} prefills",
        100.0 * stats.hit_ratio(),
        stats.hits,
        stats.misses,
        prefills.load(Ordering::Relaxed)
    );
    println!(
        "  {} sessions stored (prefills and updates), {} compare_exchange retries",
        stats.inserts,
        retries.load(Ordering::Relaxed)
    );
    println!(
        "  {} sessions evicted, {} KiB freed",
        stats.evictions,
        freed_bytes.load(Ordering::Relaxed) / 1024
    );
    println!(
        "  now {} sessions, {} of {} KiB",
        cache.len(),
        cache.weight() / 1024,
        cache.capacity() / 1024
    );
    assert!(cache.weight() <= cache.capacity());
}
