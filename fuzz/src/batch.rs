//! The `batch` target: a [`Batcher`] with a deterministic handler, fed a decoded sequence of
//! submits with costs.
//!
//! The handler first takes a gate (a mutex) that the harness holds while it submits, so while a
//! phase of submits runs no batch can complete and no live request leaves `in_flight`: admission
//! is then predictable. A `Release` step opens the gate, waits for every reply and for
//! `in_flight` to reach 0, and closes it again. Requests expired at submission (deadline =
//! now) and cancelled ones (their `Pending` dropped) may leave `in_flight` whenever the worker
//! screens them, so they widen the admission check to a range.
//!
//! Checks:
//! - refusals match the configuration: `TooCostly` exactly when the cost exceeds
//!   `max_batch_cost`; `ShuttingDown` exactly after `shutdown` (for requests that are not too
//!   costly); `Overloaded` only when `max_queue` requests may be in flight, and never when fewer
//!   can be; each refusal hands back the very request;
//! - every accepted request gets exactly one reply, its own: the handler's result for it, or
//!   `BadHandlerOutput { expected: n, got: n - 1 }` when its batch of `n` held a request on which
//!   the handler drops a result, or `Expired` for an expired one;
//! - the handler sees every live request exactly once, cancelled ones at most once, expired and
//!   refused ones never, in submission order (one submitter: FIFO), in batches of at most
//!   `max_batch_size` requests and `max_batch_cost` cost;
//! - after shutdown, `in_flight() == 0` and `stats()` equals the counts of what was observed.

use arbitrary::{Arbitrary, Unstructured};
use latchless::batch::{BatchConfig, BatchError, BatchStats, Batcher, Pending, SubmitError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// At most this many operations per input.
const MAX_OPS: usize = 300;
/// How long a reply or a drain may take before the harness calls it a hang.
const HANG: Duration = Duration::from_secs(20);

/// One request: an id (submission order), its cost, and whether the handler drops a result for
/// any batch that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Req {
    id: u32,
    cost: u64,
    short: bool,
}

/// The handler's result for `req`: derived from everything in it, so a reply sent to the wrong
/// request cannot match.
fn reply_for(req: &Req) -> u64 {
    (u64::from(req.id) << 16) ^ (req.cost << 1) ^ u64::from(req.short) ^ 0x5EED_0000_0000_0000
}

/// `max_wait` choices: short, since `Release` waits for the batches to close.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Wait {
    Zero,
    Micros100,
}

/// The batcher's configuration, decoded first.
#[derive(Arbitrary, Debug)]
struct Config {
    max_batch_size: u8,
    max_batch_cost: u8,
    max_queue: u8,
    max_wait: Wait,
}

/// One step, decoded from the fuzzer's bytes.
#[derive(Arbitrary, Debug)]
enum Op {
    /// A request of cost `cost % (max_batch_cost + 3)`; the handler drops a result for its batch
    /// when `short == 0`.
    Submit { cost: u8, short: u8 },
    /// A request whose deadline is already due: it must be answered `Expired`.
    SubmitExpired { cost: u8 },
    /// A request with a deadline an hour away: as `Submit`.
    SubmitFarDeadline { cost: u8 },
    /// Drops the `Pending` of the `i % n`-th live request still waiting, cancelling it.
    Cancel(u8),
    /// Opens the gate, waits for every reply and for `in_flight` to drain, closes the gate.
    Release,
    /// Shuts down when the byte is below 8 (rare in random inputs, where every later submit
    /// would be refused); later submits must be refused `ShuttingDown`.
    Shutdown(u8),
}

/// How an accepted request is expected to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Live,
    Expired,
    Cancelled,
}

/// An accepted request and its reply handle (`None` once cancelled or answered).
#[derive(Debug)]
struct Accepted {
    req: Req,
    kind: Kind,
    pending: Option<Pending<u64>>,
    /// Answered or skipped for sure: a drain has seen `in_flight` reach 0 since it was accepted.
    drained: bool,
}

/// What the handler saw: one entry per call, the requests of its batch in order.
type Batches = Arc<Mutex<Vec<Vec<Req>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs one input: a configuration, then operations until the bytes run out (or `MAX_OPS`), then
/// a shutdown and the final accounting. Returns the number of steps run; panics at the first
/// disagreement.
pub fn run(data: &[u8]) -> usize {
    let mut u = Unstructured::new(data);
    let Ok(c) = Config::arbitrary(&mut u) else {
        return 0;
    };
    let mut config = BatchConfig::default();
    config.max_batch_size = 1 + usize::from(c.max_batch_size % 8);
    config.max_batch_cost = 1 + u64::from(c.max_batch_cost % 16);
    config.max_wait = match c.max_wait {
        Wait::Zero => Duration::ZERO,
        Wait::Micros100 => Duration::from_micros(100),
    };
    config.max_queue = 1 + usize::from(c.max_queue % 16);
    let gate = Arc::new(Mutex::new(()));
    let batches: Batches = Arc::default();
    let batcher = {
        let (gate, batches) = (Arc::clone(&gate), Arc::clone(&batches));
        Batcher::spawn_with_cost(
            config.clone(),
            |r: &Req| r.cost,
            move |reqs: Vec<Req>| {
                drop(lock(&gate));
                let mut replies: Vec<u64> = reqs.iter().map(reply_for).collect();
                if reqs.iter().any(|r| r.short) {
                    replies.pop();
                }
                lock(&batches).push(reqs);
                replies
            },
        )
        .expect("a valid configuration")
    };
    let mut h = Harness {
        config,
        batcher,
        accepted: Vec::new(),
        replies: HashMap::new(),
        refused: BatchStats::default(),
        next_id: 0,
        shut: false,
        step: 0,
    };
    let mut held = Some(lock(&gate));
    while h.step < MAX_OPS && !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        match op {
            Op::Submit { cost, short } => h.submit(cost, short == 0, None),
            Op::SubmitExpired { cost } => h.submit(cost, false, Some(Instant::now())),
            Op::SubmitFarDeadline { cost } => {
                let far = Instant::now() + Duration::from_secs(3600);
                h.submit(cost, false, Some(far));
            }
            Op::Cancel(i) => h.cancel(i),
            Op::Release => {
                drop(held.take());
                h.drain();
                if !h.shut {
                    held = Some(lock(&gate));
                }
            }
            Op::Shutdown(b) if b < 8 => {
                drop(held.take());
                h.drain();
                h.batcher.shutdown();
                h.shut = true;
            }
            Op::Shutdown(_) => {}
        }
        h.step += 1;
    }
    drop(held);
    h.drain();
    h.batcher.shutdown();
    let batches = std::mem::take(&mut *lock(&batches));
    let steps = h.step;
    h.finish(&batches);
    steps
}

struct Harness {
    config: BatchConfig,
    batcher: Batcher<Req, u64>,
    /// Every accepted request, in submission order.
    accepted: Vec<Accepted>,
    /// The replies received, by request id.
    replies: HashMap<u32, Result<u64, BatchError>>,
    /// The refusals observed (only the `refused_*` fields are used).
    refused: BatchStats,
    next_id: u32,
    shut: bool,
    step: usize,
}

impl Harness {
    /// Accepted requests still waiting for a reply or for the worker to skip them: live ones
    /// (certainly in flight while the gate is closed) and expired or cancelled ones (in flight
    /// until the worker screens them, at a time the harness does not know).
    fn outstanding(&self) -> (usize, usize) {
        let mut live = 0;
        let mut maybe = 0;
        for a in self.accepted.iter().filter(|a| !a.drained) {
            match a.kind {
                Kind::Live => live += 1,
                Kind::Expired | Kind::Cancelled => maybe += 1,
            }
        }
        (live, maybe)
    }

    fn submit(&mut self, cost: u8, short: bool, deadline: Option<Instant>) {
        let step = self.step;
        let req = Req {
            id: self.next_id,
            cost: u64::from(cost) % (self.config.max_batch_cost + 3),
            short,
        };
        self.next_id += 1;
        let (live, maybe) = self.outstanding();
        let result = match deadline {
            Some(d) => self.batcher.submit_before(req, d),
            None => self.batcher.submit(req),
        };
        let too_costly = req.cost > self.config.max_batch_cost;
        let max_queue = self.config.max_queue;
        let what = format!(
            "step {step}: submit {req:?} (deadline {deadline:?}, {live} live and up to {maybe} \
             more in flight, max_queue {max_queue}, shut down {})",
            self.shut
        );
        match result {
            Ok(pending) => {
                assert!(
                    !too_costly && !self.shut && live < max_queue,
                    "{what}: accepted"
                );
                let expired = deadline.is_some_and(|d| d <= Instant::now());
                self.accepted.push(Accepted {
                    req,
                    kind: if expired { Kind::Expired } else { Kind::Live },
                    pending: Some(pending),
                    drained: false,
                });
            }
            Err(e) => {
                let (counter, back) = match e {
                    SubmitError::TooCostly(r) => {
                        assert!(too_costly, "{what}: refused as too costly");
                        (&mut self.refused.refused_too_costly, r)
                    }
                    SubmitError::Overloaded(r) => {
                        assert!(!too_costly, "{what}: overloaded before the cost check");
                        assert!(live + maybe >= max_queue, "{what}: refused as overloaded");
                        (&mut self.refused.refused_overloaded, r)
                    }
                    SubmitError::ShuttingDown(r) => {
                        assert!(!too_costly && self.shut, "{what}: refused as shutting down");
                        (&mut self.refused.refused_shutting_down, r)
                    }
                    // Every submit here goes to the one default class.
                    SubmitError::NoSuchClass(_) => panic!("{what}: refused for a class"),
                };
                *counter += 1;
                assert_eq!(
                    back, req,
                    "{what}: the refusal must hand back the very request"
                );
            }
        }
    }

    fn cancel(&mut self, i: u8) {
        let waiting: Vec<usize> = (0..self.accepted.len())
            .filter(|&j| self.accepted[j].kind == Kind::Live && !self.accepted[j].drained)
            .collect();
        if waiting.is_empty() {
            return;
        }
        let a = &mut self.accepted[waiting[usize::from(i) % waiting.len()]];
        a.kind = Kind::Cancelled;
        drop(a.pending.take());
    }

    /// Waits for every outstanding reply (the gate must be open), then for `in_flight` to reach
    /// 0 (cancelled requests leave it only when the worker skips them).
    fn drain(&mut self) {
        let step = self.step;
        for a in &mut self.accepted {
            if let Some(p) = a.pending.take() {
                let reply = p.wait_timeout(HANG).unwrap_or_else(|_| {
                    panic!("step {step}: no reply to {:?} within {HANG:?}", a.req)
                });
                let dup = self.replies.insert(a.req.id, reply);
                assert!(dup.is_none(), "two replies for {:?}", a.req);
            }
        }
        let start = Instant::now();
        while self.batcher.in_flight() != 0 {
            assert!(
                start.elapsed() < HANG,
                "step {step}: in_flight stuck at {} with every reply received",
                self.batcher.in_flight()
            );
            std::thread::yield_now();
        }
        for a in &mut self.accepted {
            a.drained = true;
        }
    }

    /// Checks every reply against the batches the handler saw, and the statistics.
    fn finish(self, batches: &[Vec<Req>]) {
        let cfg = &self.config;
        assert_eq!(self.batcher.in_flight(), 0, "in_flight after shutdown");
        // Batch shape and FIFO order.
        let mut in_batch: HashMap<u32, usize> = HashMap::new();
        let mut last_id = None;
        for (b, batch) in batches.iter().enumerate() {
            assert!(
                !batch.is_empty() && batch.len() <= cfg.max_batch_size,
                "batch {b} has {} requests (max_batch_size {})",
                batch.len(),
                cfg.max_batch_size
            );
            let cost: u64 = batch.iter().map(|r| r.cost).sum();
            assert!(
                cost <= cfg.max_batch_cost,
                "batch {b} costs {cost} (max_batch_cost {})",
                cfg.max_batch_cost
            );
            for r in batch {
                assert!(
                    last_id < Some(r.id),
                    "batch {b}: {r:?} out of submission order, or computed twice"
                );
                last_id = Some(r.id);
                in_batch.insert(r.id, b);
            }
        }
        let accepted: HashMap<u32, &Accepted> =
            self.accepted.iter().map(|a| (a.req.id, a)).collect();
        for (&id, &b) in &in_batch {
            let a = accepted
                .get(&id)
                .unwrap_or_else(|| panic!("the handler saw request {id}, which was refused"));
            assert_eq!(
                batches[b].iter().find(|r| r.id == id),
                Some(&a.req),
                "request {id} reached the handler altered"
            );
        }
        let mut want = self.refused;
        for a in &self.accepted {
            let id = a.req.id;
            want.submitted += 1;
            match a.kind {
                Kind::Expired => {
                    assert!(
                        !in_batch.contains_key(&id),
                        "expired {:?} was computed",
                        a.req
                    );
                    assert_eq!(
                        self.replies.get(&id),
                        Some(&Err(BatchError::Expired)),
                        "reply to {:?}",
                        a.req
                    );
                    want.expired += 1;
                }
                Kind::Cancelled if !in_batch.contains_key(&id) => want.cancelled += 1,
                Kind::Live | Kind::Cancelled => {
                    let b = *in_batch
                        .get(&id)
                        .unwrap_or_else(|| panic!("{:?} was never computed", a.req));
                    let batch = &batches[b];
                    let reply = if batch.iter().any(|r| r.short) {
                        want.failed += 1;
                        Err(BatchError::BadHandlerOutput {
                            expected: batch.len(),
                            got: batch.len() - 1,
                        })
                    } else {
                        want.completed += 1;
                        Ok(reply_for(&a.req))
                    };
                    if a.kind == Kind::Live {
                        assert_eq!(
                            self.replies.get(&id),
                            Some(&reply),
                            "reply to {:?} (batch {b}: {batch:?})",
                            a.req
                        );
                    }
                }
            }
        }
        want.batches = batches.len() as u64;
        for batch in batches {
            let bucket = match batch.len() {
                1 => 0,
                2 => 1,
                3..=4 => 2,
                5..=8 => 3,
                9..=16 => 4,
                17..=32 => 5,
                33..=64 => 6,
                _ => 7,
            };
            want.batch_sizes[bucket] += 1;
        }
        let mut got = self.batcher.stats();
        // Timing, not accounting.
        got.queue_wait = Duration::ZERO;
        assert_eq!(got, want, "stats after shutdown");
    }
}
