//! Node leaks: once an `MsQueue` built on a local epoch `Collector` has been dropped, along with
//! the collector and every handle and guard, every heap block it ever allocated (nodes, the
//! values' own allocations, the collector's participants and garbage bags) has been freed.
//!
//! A counting `#[global_allocator]` (this file is its own test binary, so it affects nothing
//! else) wraps `System` and counts live blocks and bytes. It counts only *tracked* allocations:
//! those made by a thread inside a measured section (the test thread and the workers it starts).
//! A small header in front of each block records the section that allocated it, so its free is
//! matched exactly whichever thread performs it, and a block outliving its section (freed when a
//! thread exits, say) cannot disturb the next section's count. That keeps the test harness's own
//! allocations (spawning the next test, capturing output) out of the numbers. Measured sections
//! are serialised by a static `Mutex`.
//!
//! With crossbeam-epoch's global collector (`MsQueue::new()`) exact accounting is impossible: it
//! keeps a few garbage bags of its own. That case only checks that growth stays bounded.

use crossbeam_epoch::Collector;
use latchless::queue::MsQueue;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;

const N: usize = if cfg!(miri) { 200 } else { 20_000 };

// ---------------------------------------------------------------------------------------------
// The counting allocator.

/// Live blocks and bytes allocated in the current section. Signed, so a free without its
/// allocation shows as a negative count instead of wrapping.
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

/// The current measured section's id, 0 outside sections. Written only under `SERIAL`, before
/// the section's workers start and after they are joined.
static SECTION: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    /// Whether this thread's allocations are counted. `const`-initialised with no destructor, so
    /// reading it never allocates and works during thread teardown.
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

fn set_tracked(on: bool) {
    TRACKED.with(|t| t.set(on));
}

fn is_tracked() -> bool {
    TRACKED.try_with(Cell::get).unwrap_or(false)
}

/// The header in front of every block: at least this many bytes, and at least the block's
/// alignment, so the block that follows it stays aligned. Its last word is the tag: the id of
/// the section that allocated the block, or 0 if untracked.
const MIN_HEADER: usize = 16;
const TAG: usize = size_of::<usize>();

/// The layout actually requested from `System` for `layout`, and the header size (the offset of
/// the caller's block in it). `None` if the sizes overflow.
fn with_header(layout: Layout) -> Option<(Layout, usize)> {
    let header = layout.align().max(MIN_HEADER);
    let size = layout.size().checked_add(header)?;
    let outer = Layout::from_size_align(size, header).ok()?;
    Some((outer, header))
}

/// Wraps `System`, counting the live blocks allocated by tracked threads.
struct Counting;

// SAFETY: every block comes from `System` with a layout valid for it (`with_header`), and is
// returned to `System` with that same layout; the caller's pointer is `header` bytes into the
// block, `header` being a multiple of the caller's alignment (both are powers of two and
// `header >= align`), so it is aligned and has `layout.size()` bytes after it. Nothing here
// allocates, so there is no recursion.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((outer, header)) = with_header(layout) else {
            return ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size (it includes the header).
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        // Relaxed: `SECTION` changes only while no tracked thread of another section runs
        // (under `SERIAL`, ordered with the workers by spawn and join).
        let section = if is_tracked() {
            SECTION.load(Ordering::Relaxed)
        } else {
            0
        };
        // The caller's block starts after the header; the tag is the header's last word.
        let block = base.wrapping_add(header);
        let tag = block.wrapping_sub(TAG).cast::<usize>();
        // SAFETY: `tag` is `header - TAG` bytes into the `outer.size() >= header` bytes just
        // allocated, so in bounds and writable, and aligned for `usize`: `base` is aligned to
        // `header >= 16` and `TAG` is `usize`'s size.
        unsafe { tag.write(section) };
        if section != 0 {
            // Relaxed: plain statistics; the tests read them after joining every worker.
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((outer, header)) = with_header(layout) else {
            // `alloc` returned null for this layout, so no such block can be freed.
            std::process::abort();
        };
        // `ptr` was returned by `alloc` for this `layout` (the caller's obligation), so it lies
        // `header` bytes into a block from `System`, right after the tag.
        let base = ptr.wrapping_sub(header);
        let tag = ptr.wrapping_sub(TAG).cast::<usize>();
        // SAFETY: `alloc` wrote the tag at this aligned, in-bounds address, and nothing else
        // writes the header.
        let section = unsafe { tag.read() };
        // Relaxed: see `alloc`. A block of an earlier section is not counted any more.
        if section != 0 && section == SECTION.load(Ordering::Relaxed) {
            LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: `base` came from `System.alloc(outer)` in `alloc` and is freed once, here.
        unsafe { System.dealloc(base, outer) };
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Measured sections.

/// Serialises measured sections: tests in one binary run in parallel.
static SERIAL: Mutex<()> = Mutex::new(());

/// Live blocks and bytes allocated in a section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Live {
    blocks: isize,
    bytes: isize,
}

fn live_now() -> Live {
    Live {
        blocks: LIVE_BLOCKS.load(Ordering::Relaxed),
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
    }
}

/// A measured section: holds the serialising lock, tracks the current thread and counts from
/// zero. Dropping it ends the section and stops tracking.
struct Measure {
    _serial: MutexGuard<'static, ()>,
}

impl Measure {
    fn start() -> Self {
        static LAST_SECTION: AtomicUsize = AtomicUsize::new(0);
        // A failed test poisons the lock; the counters are reset below, so carry on.
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed (all three): see `alloc`; the lock orders sections.
        let id = LAST_SECTION.fetch_add(1, Ordering::Relaxed) + 1;
        LIVE_BLOCKS.store(0, Ordering::Relaxed);
        LIVE_BYTES.store(0, Ordering::Relaxed);
        SECTION.store(id, Ordering::Relaxed);
        set_tracked(true);
        Self { _serial: serial }
    }

    /// Blocks and bytes allocated in this section and still live.
    fn live(&self) -> Live {
        live_now()
    }

    #[track_caller]
    fn assert_all_freed(&self, what: &str) {
        assert_eq!(
            self.live(),
            Live {
                blocks: 0,
                bytes: 0
            },
            "{what}: heap blocks/bytes allocated in the section and still live"
        );
    }
}

impl Drop for Measure {
    fn drop(&mut self) {
        set_tracked(false);
        // Relaxed: see `alloc`; the lock, still held, orders this with the next section.
        SECTION.store(0, Ordering::Relaxed);
    }
}

/// Runs `f` on `threads` workers whose allocations are tracked, and joins them (a native join,
/// so each worker's thread-local destructors have run by the time this returns).
fn on_tracked_threads(threads: usize, f: impl Fn(usize) + Sync) {
    thread::scope(|s| {
        let f = &f;
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    set_tracked(true);
                    f(t);
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker panicked");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// The accounting itself can fail: a leaked `Box` and a leaked queue both show.
#[test]
fn counting_detects_leaks() {
    let m = Measure::start();
    let leaked = Box::into_raw(Box::new(7u64));
    assert_eq!(
        m.live(),
        Live {
            blocks: 1,
            bytes: 8
        }
    );
    // SAFETY: `leaked` came from `Box::into_raw` just above and is reclaimed once.
    drop(unsafe { Box::from_raw(leaked) });
    m.assert_all_freed("after freeing the box");

    let collector = Collector::new();
    let q = MsQueue::with_collector(collector.clone());
    for i in 0..10 {
        q.push(Box::new(i));
    }
    // Not dropping the queue keeps its nodes and values live: the check must see it.
    let q = ManuallyDrop::new(q);
    drop(collector);
    assert!(
        m.live().blocks >= 21,
        "10 nodes, 10 boxes and a sentinel should be live, got {:?}",
        m.live()
    );
    drop(ManuallyDrop::into_inner(q));
    m.assert_all_freed("after dropping the queue after all");
}

#[test]
fn single_thread_push_pop_frees_everything() {
    let m = Measure::start();
    {
        let collector = Collector::new();
        let q = MsQueue::with_collector(collector.clone());
        // Values own heap memory too, so a value leak shows as well as a node leak.
        for i in 0..N {
            q.push(format!("value {i}"));
            if i % 3 == 0 {
                assert!(q.pop().is_some());
            }
        }
        // Pop half of the rest; the other half is dropped with the queue.
        for _ in 0..q.len() / 2 {
            assert!(q.pop().is_some());
        }
        assert!(m.live().blocks > 0, "the queue holds live nodes and values");
        drop(q);
        drop(collector);
    }
    m.assert_all_freed("queue and collector dropped");
}

#[test]
fn threads_with_guards_and_plain_calls_free_everything() {
    const THREADS: usize = 4;
    let m = Measure::start();
    {
        let collector = Collector::new();
        let q = MsQueue::with_collector(collector.clone());
        on_tracked_threads(THREADS, |t| {
            let handle = collector.register();
            let mut guard = handle.pin();
            for i in 0..N / THREADS {
                let value = Box::new((t, i));
                // Mostly guarded calls re-pinned now and then (so the epoch advances and
                // frees nodes meanwhile), some plain ones.
                if i % 128 == 0 {
                    guard.repin();
                }
                if i % 10 == 0 {
                    q.push(value);
                } else {
                    q.push_with_guard(value, &guard);
                }
                if i % 2 == 0 {
                    let _ = q.pop_with_guard(&guard);
                } else if i % 7 == 0 {
                    let _ = q.pop();
                }
            }
            // Let this thread's guard and handle go before the flush, as a worker would.
            drop(guard);
            handle.pin().flush();
        });
        assert!(!q.is_empty());
        drop(q);
        drop(collector);
    }
    m.assert_all_freed("queue, collector, handles and guards dropped");
}

#[test]
fn concurrent_producers_and_consumers_free_everything() {
    let m = Measure::start();
    {
        let collector = Collector::new();
        let q = MsQueue::with_collector(collector.clone());
        on_tracked_threads(4, |t| {
            let handle = collector.register();
            if t < 2 {
                for i in 0..N / 2 {
                    q.push_with_guard(vec![i; 4], &handle.pin());
                }
            } else {
                let guard = handle.pin();
                for i in 0..N / 2 {
                    let _ = q.pop_with_guard(&guard);
                    if i % 64 == 0 {
                        drop(q.pop());
                    }
                }
            }
        });
        drop(q);
        drop(collector);
    }
    m.assert_all_freed("queue and collector dropped");
}

#[test]
fn into_iter_and_drain_free_everything() {
    let m = Measure::start();
    {
        let collector = Collector::new();
        let mut q = MsQueue::with_collector(collector.clone());
        for i in 0..N {
            q.push(Box::new(i));
        }
        assert_eq!(q.drain().take(N / 4).count(), N / 4);
        let mut it = q.into_iter();
        assert_eq!(it.by_ref().take(N / 4).count(), N / 4);
        // The iterator drops with half of the values still in it.
        drop(it);
        drop(collector);
    }
    m.assert_all_freed("partially consumed drain and iterator dropped");
}

#[test]
fn global_collector_growth_stays_bounded() {
    // The global collector is shared with the whole process and never dropped, so it may keep a
    // few bags of garbage (and this thread's handle) for good; and a live queue keeps up to
    // 2,048 popped nodes for reuse by design. Check only that the live heap does not grow with
    // the work done: a queue leaking its nodes, or failing to reuse them, would grow by 1,000
    // blocks per round and pass the bound within three rounds. No measured section of the other tests pins the global collector, so these
    // leftovers cannot be freed in the middle of theirs.
    const ROUNDS: usize = 20;
    const PER_ROUND: usize = 1_000;
    const BOUND: isize = 2_048 + 100;
    let m = Measure::start();
    let q = MsQueue::new();
    let mut peak = 0;
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            q.push(Box::new(i));
        }
        for _ in 0..PER_ROUND {
            assert!(q.pop().is_some());
        }
        for _ in 0..4 {
            crossbeam_epoch::pin().flush();
        }
        let live = m.live();
        peak = peak.max(live.blocks);
        assert!(
            live.blocks <= BOUND,
            "round {round}: {live:?} still live after {} values",
            (round + 1) * PER_ROUND
        );
    }
    drop(q);
    drop(m);
    // Printed outside the section: the harness keeps captured output beyond it.
    println!("global collector: at most {peak} blocks live after a round");
}
