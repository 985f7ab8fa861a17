//! The `batch_stream` target: a [`StreamBatcher`] (one worker or a pool of two) with a
//! deterministic step handler, fed a decoded sequence of submits, reads and drops of streams by
//! one client, against a sequential model of each stream.
//!
//! The worker runs freely (no gate), so when an item joins and which items share a step depend
//! on timing; the checks hold whatever the timing:
//! - refusals: `TooCostly` exactly when the cost exceeds `max_batch_cost`; `Overloaded` only
//!   when at least `max_queue` accepted streams have not yet shown their final item (a final item
//!   comes after the item's admission is given back, so an observed one frees a place for sure);
//!   each refusal hands back the very request;
//! - every accepted stream read to its end yields its own chunks `0..k` in order, then exactly
//!   one final item: its own output with `k` equal to its step count; or `Expired` (only for
//!   requests submitted already expired); or `BadHandlerOutput` (only when a request on which
//!   the handler drops a result was accepted); never anything after the final item;
//! - the handler never steps more than `max_batch_size` items, nor items whose costs sum past
//!   `max_batch_cost`, in one worker's batch;
//! - after shutdown, `in_flight() == 0`, and `stats()` counts every accepted request exactly once
//!   (completed + failed + expired + cancelled).

use arbitrary::{Arbitrary, Unstructured};
use latchless::batch::{
    BatchError, Batcher, ChunkStream, JoinPolicy, Joined, Step, StepHandler, StreamBatcher,
    Streamed, SubmitError,
};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// At most this many operations per input.
const MAX_OPS: usize = 200;

/// One request: an id (submission order), its step count and cost, and whether the handler
/// drops a result at any step that holds it at its first step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Req {
    id: u32,
    steps: u32,
    cost: u64,
    short: bool,
}

/// The chunk `req` makes at its step `k`: derived from the id, so a chunk sent to the wrong
/// stream cannot match.
fn chunk_for(id: u32, k: u32) -> u64 {
    (u64::from(id) << 20) | u64::from(k)
}

/// The batcher's configuration, decoded first.
#[derive(Arbitrary, Debug)]
struct Config {
    max_active: u8,
    max_cost: u8,
    max_queue: u8,
    ratio_tenths: u8,
    max_waiting_steps: u8,
    pool: bool,
}

/// One operation of the client.
#[derive(Arbitrary, Debug)]
enum Op {
    /// Submits a request (already expired if `expired`).
    Submit {
        steps: u8,
        cost: u8,
        short: bool,
        expired: bool,
    },
    /// Reads one item (blocking) from an open stream, picked by index.
    Next(u8),
    /// Drops an open stream (cancelling its request if it had not ended).
    Drop(u8),
    /// Reads an open stream to its end.
    Finish(u8),
}

/// The handler, with the largest batch and batch cost it ever stepped.
struct Handler {
    widest: Arc<AtomicUsize>,
    costliest: Arc<AtomicU64>,
}

impl StepHandler for Handler {
    type Req = Req;
    type State = (Req, u32);
    type Chunk = u64;
    type Out = u32;

    fn join(&mut self, reqs: Vec<Req>) -> Vec<Joined<(Req, u32), u32>> {
        reqs.into_iter().map(|r| Joined::Running((r, 0))).collect()
    }

    fn step(&mut self, items: &mut [(Req, u32)]) -> Vec<Step<u64, u32>> {
        // Relaxed: read after the worker is joined (shutdown), which orders them.
        self.widest.fetch_max(items.len(), Ordering::Relaxed);
        let cost = items.iter().map(|(r, _)| r.cost).sum();
        self.costliest.fetch_max(cost, Ordering::Relaxed);
        let short = items.iter().any(|(r, k)| r.short && *k == 0);
        let mut out: Vec<_> = items
            .iter_mut()
            .map(|(r, k)| {
                if *k == r.steps {
                    Step::Finish(r.id)
                } else {
                    *k += 1;
                    Step::Chunk(chunk_for(r.id, *k - 1))
                }
            })
            .collect();
        if short {
            out.pop();
        }
        out
    }
}

/// An open stream and what the model knows of it.
struct Open {
    req: Req,
    expired: bool,
    stream: ChunkStream<u64, u32>,
    /// Chunks read so far.
    read: u32,
}

struct Harness {
    max_queue: u64,
    max_cost: u64,
    batcher: StreamBatcher<Req, u64, u32>,
    open: Vec<Open>,
    accepted: u64,
    /// Accepted streams whose final item was read.
    ended: u64,
    /// A request with `short` was accepted.
    any_short: bool,
    step: usize,
}

impl Harness {
    fn submit(&mut self, req: Req, expired: bool) {
        let sent = if expired {
            self.batcher.submit_before(req, Instant::now())
        } else {
            self.batcher.submit(req)
        };
        match sent {
            Ok(stream) => {
                assert!(
                    req.cost <= self.max_cost,
                    "step {}: {req:?} accepted over the budget",
                    self.step
                );
                self.accepted += 1;
                self.any_short |= req.short;
                self.open.push(Open {
                    req,
                    expired,
                    stream,
                    read: 0,
                });
            }
            Err(SubmitError::TooCostly(back)) => {
                assert_eq!(back, req);
                assert!(req.cost > self.max_cost, "step {}: {req:?}", self.step);
            }
            Err(SubmitError::Overloaded(back)) => {
                assert_eq!(back, req);
                assert!(req.cost <= self.max_cost);
                assert!(
                    self.accepted - self.ended >= self.max_queue,
                    "step {}: overloaded with {} of {} places known taken",
                    self.step,
                    self.accepted - self.ended,
                    self.max_queue
                );
            }
            Err(e) => panic!("step {}: unexpected refusal {e:?}", self.step),
        }
    }

    /// Checks one item read from `open`; returns whether it was the final one.
    fn check(&mut self, i: usize, item: Option<Streamed<u64, u32>>) -> bool {
        let o = &mut self.open[i];
        let req = o.req;
        match item {
            Some(Streamed::Chunk(c)) => {
                assert_eq!(
                    c,
                    chunk_for(req.id, o.read),
                    "step {}: {req:?} chunk {}",
                    self.step,
                    o.read
                );
                o.read += 1;
                assert!(
                    o.read <= req.steps,
                    "step {}: {req:?} too many chunks",
                    self.step
                );
                false
            }
            Some(Streamed::Done(result)) => {
                match result {
                    Ok(out) => {
                        assert_eq!(out, req.id, "step {}", self.step);
                        assert_eq!(o.read, req.steps, "step {}: {req:?}", self.step);
                    }
                    Err(BatchError::Expired) => assert!(o.expired, "step {}: {req:?}", self.step),
                    Err(BatchError::BadHandlerOutput { expected, got }) => {
                        assert!(self.any_short, "step {}: {req:?}", self.step);
                        assert_eq!(got + 1, expected, "step {}", self.step);
                    }
                    Err(e) => panic!("step {}: {req:?} failed {e:?}", self.step),
                }
                assert!(
                    o.stream.next().is_none(),
                    "step {}: an item after the final one",
                    self.step
                );
                self.ended += 1;
                true
            }
            None => panic!("step {}: {req:?} ended without a final item", self.step),
        }
    }

    fn next(&mut self, i: usize) {
        let item = self.open[i].stream.next();
        if self.check(i, item) {
            self.open.swap_remove(i);
        }
    }

    fn finish(&mut self, i: usize) {
        loop {
            let item = self.open[i].stream.next();
            if self.check(i, item) {
                self.open.swap_remove(i);
                return;
            }
        }
    }
}

/// Runs one input; returns the number of operations it ran.
pub fn run(data: &[u8]) -> usize {
    let mut u = Unstructured::new(data);
    let Ok(c) = Config::arbitrary(&mut u) else {
        return 0;
    };
    let max_active = 1 + usize::from(c.max_active % 4);
    let max_cost = 1 + u64::from(c.max_cost % 16);
    let max_queue = 1 + u64::from(c.max_queue % 8);
    let mut policy = JoinPolicy::default();
    policy.waiting_served_ratio = f32::from(c.ratio_tenths % 40) / 10.0;
    policy.max_waiting_steps = u32::from(c.max_waiting_steps % 8);
    let widest = Arc::new(AtomicUsize::new(0));
    let costliest = Arc::new(AtomicU64::new(0));
    let make = {
        let (widest, costliest) = (Arc::clone(&widest), Arc::clone(&costliest));
        move || Handler {
            widest: Arc::clone(&widest),
            costliest: Arc::clone(&costliest),
        }
    };
    let builder = Batcher::builder()
        .max_batch_size(max_active)
        .max_batch_cost(max_cost)
        .max_queue(max_queue as usize)
        .cost(|r: &Req| r.cost)
        .join_policy(policy);
    let batcher = if c.pool {
        builder.spawn_steps_pool(2, make)
    } else {
        builder.spawn_steps(make())
    }
    .expect("a valid configuration");
    let mut h = Harness {
        max_queue,
        max_cost,
        batcher,
        open: Vec::new(),
        accepted: 0,
        ended: 0,
        any_short: false,
        step: 0,
    };
    let mut next_id = 0;
    while h.step < MAX_OPS && !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        match op {
            Op::Submit {
                steps,
                cost,
                short,
                expired,
            } => {
                let req = Req {
                    id: next_id,
                    steps: u32::from(steps % 6),
                    cost: 1 + u64::from(cost % 20),
                    short,
                };
                next_id += 1;
                h.submit(req, expired);
            }
            Op::Next(i) if !h.open.is_empty() => h.next(usize::from(i) % h.open.len()),
            Op::Drop(i) if !h.open.is_empty() => {
                let i = usize::from(i) % h.open.len();
                drop(h.open.swap_remove(i));
            }
            Op::Finish(i) if !h.open.is_empty() => h.finish(usize::from(i) % h.open.len()),
            _ => {}
        }
        h.step += 1;
    }
    h.batcher.shutdown();
    // Every accepted item has its final item by now: read the rest without blocking for long.
    while !h.open.is_empty() {
        h.finish(0);
    }
    let s = h.batcher.stats();
    assert_eq!(h.batcher.in_flight(), 0, "{s:?}");
    assert_eq!(s.submitted, h.accepted, "{s:?}");
    assert_eq!(
        s.completed + s.failed + s.expired + s.cancelled,
        h.accepted,
        "{s:?}"
    );
    assert!(widest.load(Ordering::Relaxed) <= max_active);
    assert!(costliest.load(Ordering::Relaxed) <= max_cost);
    h.step
}
