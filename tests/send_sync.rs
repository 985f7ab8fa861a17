//! Thread-safety markers: `MsQueue<T>` is `Send + Sync` whenever `T: Send` (even when `T` is not
//! `Sync`), and both counters are `Send + Sync`. Checked at compile time, plus runtime tests
//! that move a queue into a thread and share one of non-`Sync` values between threads.
//!
//! The negative case (`MsQueue<Rc<_>>` is neither) is a `compile_fail` doctest in `src/queue.rs`.

use latchless::counter::{AtomicCounter, ShardedCounter};
use latchless::queue::{Drain, IntoIter, MsQueue};
use std::cell::Cell;
use std::sync::Arc;
use std::thread;

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}
fn assert_send_sync<T: Send + Sync>() {}

/// A value that is `Send` but not `Sync`.
type NotSync = Cell<u8>;

// Checked at compile time: this file does not compile if a marker goes missing.
const _: () = {
    let _ = assert_send_sync::<MsQueue<u32>>;
    // Spelled out for the interesting case: `Sync` although the values are not.
    let _ = assert_send::<MsQueue<NotSync>>;
    let _ = assert_sync::<MsQueue<NotSync>>;
    let _ = assert_send_sync::<MsQueue<String>>;
    let _ = assert_send_sync::<AtomicCounter>;
    let _ = assert_send_sync::<ShardedCounter>;
    let _ = assert_send::<IntoIter<u32>>;
    let _ = assert_send::<IntoIter<NotSync>>;
    let _ = assert_send::<Drain<'static, u32>>;
};

#[test]
fn queue_moves_into_a_thread_and_back() {
    let q = MsQueue::new();
    q.push(1u32);
    let q = thread::spawn(move || {
        assert_eq!(q.pop(), Some(1));
        q.push(2);
        q.push(3);
        q
    })
    .join()
    .expect("worker panicked");
    assert_eq!(q.into_iter().collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn queue_of_non_sync_values_is_shared_between_threads() {
    let q: Arc<MsQueue<NotSync>> = Arc::new(MsQueue::new());
    let producers: Vec<_> = (0..2u8)
        .map(|p| {
            let q = Arc::clone(&q);
            thread::spawn(move || {
                for i in 0..50u8 {
                    q.push(Cell::new(p * 100 + i));
                }
            })
        })
        .collect();
    for p in producers {
        p.join().expect("producer panicked");
    }
    let consumer = {
        let q = Arc::clone(&q);
        thread::spawn(move || {
            let mut sum = 0u32;
            while let Some(cell) = q.pop() {
                // The popping thread owns the cell and may mutate it.
                let v = cell.replace(0);
                sum += u32::from(v);
            }
            sum
        })
    };
    let expected: u32 = (0..2u32)
        .flat_map(|p| (0..50u32).map(move |i| p * 100 + i))
        .sum();
    assert_eq!(consumer.join().expect("consumer panicked"), expected);
    assert!(q.is_empty());
}

#[test]
fn counters_are_shared_between_threads() {
    let c = Arc::new(AtomicCounter::new(0));
    let s = Arc::new(ShardedCounter::new());
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (c, s) = (Arc::clone(&c), Arc::clone(&s));
            thread::spawn(move || {
                for _ in 0..1000 {
                    c.increment();
                    s.increment();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked");
    }
    assert_eq!(c.get(), 2000);
    assert_eq!(s.sum(), 2000);
}
