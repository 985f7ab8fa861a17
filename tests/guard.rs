//! Guard checking and exact single-threaded sizes.
//!
//! `push_with_guard` and `pop_with_guard` must panic when handed a guard that pins a different
//! epoch collector than the queue's (a guard of the wrong collector would not protect the
//! queue's nodes), and must work with a guard of the right one. Single-threaded, `len` and
//! `is_empty` must be exact after every push and pop, checked against a `VecDeque` model.

use crossbeam_epoch::Collector;
use latchless::queue::MsQueue;
use std::collections::VecDeque;

#[test]
#[should_panic(expected = "guard does not pin")]
fn push_with_guard_of_another_local_collector_panics() {
    let q = MsQueue::with_collector(Collector::new());
    let other = Collector::new();
    let handle = other.register();
    q.push_with_guard(1, &handle.pin());
}

#[test]
#[should_panic(expected = "guard does not pin")]
fn pop_with_guard_of_another_local_collector_panics() {
    let q = MsQueue::with_collector(Collector::new());
    q.push(1);
    let other = Collector::new();
    let handle = other.register();
    let _ = q.pop_with_guard(&handle.pin());
}

#[test]
#[should_panic(expected = "guard does not pin")]
fn push_with_global_guard_on_local_queue_panics() {
    let q = MsQueue::with_collector(Collector::new());
    q.push_with_guard(1, &crossbeam_epoch::pin());
}

#[test]
#[should_panic(expected = "guard does not pin")]
fn pop_with_local_guard_on_global_queue_panics() {
    let q: MsQueue<u32> = MsQueue::new();
    let other = Collector::new();
    let handle = other.register();
    let _ = q.pop_with_guard(&handle.pin());
}

#[test]
#[should_panic(expected = "guard does not pin")]
fn push_with_local_guard_on_global_queue_panics() {
    let q = MsQueue::new();
    let other = Collector::new();
    let handle = other.register();
    q.push_with_guard(1, &handle.pin());
}

#[test]
#[should_panic(expected = "guard does not pin")]
fn pop_with_unprotected_guard_panics() {
    // `unprotected()` pins no collector at all.
    let q: MsQueue<u32> = MsQueue::new();
    // SAFETY: the guard is only passed to `pop_with_guard`, which must reject it before using
    // it; no pointer is ever loaded through it.
    let guard = unsafe { crossbeam_epoch::unprotected() };
    let _ = q.pop_with_guard(guard);
}

#[test]
fn guard_of_the_queues_local_collector_works() {
    let collector = Collector::new();
    let q = MsQueue::with_collector(collector.clone());
    // A second clone of the collector is the same collector.
    let handle = collector.clone().register();
    let guard = handle.pin();
    for i in 0..10 {
        q.push_with_guard(i, &guard);
    }
    // Mixing guarded and plain calls on one queue is fine.
    q.push(10);
    assert_eq!(q.pop(), Some(0));
    for i in 1..=10 {
        assert_eq!(q.pop_with_guard(&guard), Some(i));
    }
    assert_eq!(q.pop_with_guard(&guard), None);
}

#[test]
fn guard_of_the_global_collector_works() {
    let q = MsQueue::new();
    let guard = crossbeam_epoch::pin();
    q.push_with_guard("a", &guard);
    q.push("b");
    assert_eq!(q.pop_with_guard(&guard), Some("a"));
    assert_eq!(q.pop_with_guard(&guard), Some("b"));
    assert_eq!(q.pop_with_guard(&guard), None);
}

/// A small deterministic generator (xorshift64), so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn check_sizes_against_model(q: &MsQueue<u64>) {
    let steps = if cfg!(miri) { 300 } else { 50_000 };
    let mut model = VecDeque::new();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
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
