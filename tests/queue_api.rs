//! The queue's size API and a few edge cases.
//!
//! - Single-threaded, `len` and `is_empty` must be exact after every push and pop, checked
//!   against a `VecDeque` model; `Debug` shows the length only.
//! - After pops that raced on an empty queue with a pusher, `len` must still be exact once the
//!   threads are joined (a failed pop must not leave the count off by one).
//! - Values of 256 KiB go through the queue on a thread with a 256 KiB stack, so no block of
//!   values is ever built on the stack.

use crossbeam_epoch::Collector;
use latchless::queue::MsQueue;
use std::collections::VecDeque;

/// The seeded generator (SplitMix64), shared by the integration tests, so a failure reproduces.
#[path = "common/rng.rs"]
mod rng;

use rng::Rng;

fn check_sizes_against_model(q: &MsQueue<u64>) {
    let steps = if cfg!(miri) { 300 } else { 50_000 };
    let mut model = VecDeque::new();
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut next_value = 0u64;
    assert!(q.is_empty());
    assert_eq!(q.len(), 0);
    for step in 0..steps {
        // Phases of mostly pushes and mostly pops, so the length swings up and back to zero.
        let push_bias = if (step / 1000) % 2 == 0 { 3 } else { 1 };
        if rng.next() % 4 < push_bias {
            q.push(next_value);
            model.push_back(next_value);
            next_value += 1;
        } else {
            assert_eq!(q.pop(), model.pop_front(), "step {step}: popped value");
        }
        assert_eq!(q.len(), model.len(), "step {step}: len");
        assert_eq!(q.is_empty(), model.is_empty(), "step {step}: is_empty");
    }
    while let Some(expected) = model.pop_front() {
        assert_eq!(q.pop(), Some(expected));
        assert_eq!(q.len(), model.len());
    }
    assert!(q.is_empty());
    assert_eq!(q.len(), 0);
    assert_eq!(q.pop(), None);
    assert_eq!(q.len(), 0, "popping an empty queue changes nothing");
}

#[test]
fn len_and_is_empty_are_exact_single_threaded() {
    check_sizes_against_model(&MsQueue::new());
    check_sizes_against_model(&MsQueue::with_collector(Collector::new()));
}

#[test]
fn len_counts_a_simple_sequence() {
    let q = MsQueue::default();
    assert_eq!((q.len(), q.is_empty()), (0, true));
    q.push('a');
    assert_eq!((q.len(), q.is_empty()), (1, false));
    q.push('b');
    q.push('c');
    assert_eq!((q.len(), q.is_empty()), (3, false));
    assert_eq!(q.pop(), Some('a'));
    assert_eq!((q.len(), q.is_empty()), (2, false));
    assert_eq!(q.pop(), Some('b'));
    assert_eq!(q.pop(), Some('c'));
    assert_eq!((q.len(), q.is_empty()), (0, true));
    assert_eq!(q.pop(), None);
    assert_eq!((q.len(), q.is_empty()), (0, true));
    q.push('d');
    assert_eq!((q.len(), q.is_empty()), (1, false));
    assert_eq!(
        format!("{q:?}"),
        "MsQueue { len: 1, .. }",
        "Debug shows the length only"
    );
}

#[test]
fn len_is_exact_after_concurrent_empty_pops() {
    let (pops, pushes) = if cfg!(miri) {
        (200, 50)
    } else {
        (100_000, 10_000)
    };
    let q = MsQueue::new();
    let mut seen = vec![0u32; pushes];
    std::thread::scope(|s| {
        let poppers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut got = Vec::new();
                    for _ in 0..pops {
                        if let Some(v) = q.pop() {
                            got.push(v);
                        }
                    }
                    got
                })
            })
            .collect();
        s.spawn(|| {
            for v in 0..pushes {
                q.push(v);
            }
        });
        for popper in poppers {
            for v in popper.join().expect("popper panicked") {
                seen[v] += 1;
            }
        }
    });
    while let Some(v) = q.pop() {
        seen[v] += 1;
    }
    for (v, &count) in seen.iter().enumerate() {
        assert_eq!(count, 1, "value {v} came out {count} times");
    }
    assert_eq!(q.len(), 0);
    assert!(q.is_empty());
    for v in 0..5 {
        q.push(v);
    }
    assert_eq!(q.len(), 5);
    assert!(!q.is_empty());
}

/// The size of the large values: 256 KiB.
const LARGE: usize = 1 << 18;

/// The stack of the thread that moves them: room for 24 of them.
const LARGE_STACK: usize = 24 * LARGE;

#[inline(never)]
fn push_large(q: &MsQueue<[u8; LARGE]>, byte: u8) {
    q.push([byte; LARGE]);
}

#[inline(never)]
fn pop_large(q: &MsQueue<[u8; LARGE]>) -> Option<u8> {
    let v = q.pop()?;
    assert!(v.iter().all(|&b| b == v[0]), "a value came out torn");
    Some(v[0])
}

#[inline(never)]
fn drain_large(q: &mut MsQueue<[u8; LARGE]>) -> Vec<u8> {
    q.drain().map(|v| v[LARGE - 1]).collect()
}

/// 256 KiB values through the queue on a thread whose stack holds 24 of them (6 MiB): the moves
/// of one value on its way in and out fit (a debug build copies it about 14 times down `push`'s
/// call chain, each step of the test in its own small frame here), but a block of the queue's
/// 31 slots built on the stack would overflow it, even in a branch that is never taken (a debug
/// build reserves stack for every branch of a function).
#[test]
#[cfg_attr(miri, ignore)]
fn large_values_do_not_overflow_the_stack() {
    std::thread::Builder::new()
        .stack_size(LARGE_STACK)
        .spawn(|| {
            let mut q = MsQueue::new();
            for round in 0..3u8 {
                for i in 0..4 {
                    push_large(&q, round * 16 + i);
                }
                assert_eq!(q.len(), 4);
                for i in 0..4 {
                    assert_eq!(pop_large(&q), Some(round * 16 + i));
                }
                assert_eq!(pop_large(&q), None);
            }
            push_large(&q, 7);
            push_large(&q, 8);
            assert_eq!(drain_large(&mut q), [7, 8]);
            // A value still queued is dropped with the queue.
            push_large(&q, 9);
        })
        .expect("spawn")
        .join()
        .expect("the thread with the small stack panicked");
}
