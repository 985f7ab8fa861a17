//! A counting global allocator and measured sections, shared by the leak tests
//! (`tests/queue_leak.rs`, `tests/cache_leak.rs`). Each includes this file as a module and installs
//! the allocator in its own binary:
//!
//! ```text
//! #[path = "common/counting_alloc.rs"]
//! mod counting_alloc;
//!
//! #[global_allocator]
//! static ALLOC: counting_alloc::Counting = counting_alloc::Counting;
//! ```
//!
//! (every file directly in `tests/` is its own test binary, so the allocator affects nothing
//! else). [`Counting`] wraps `System` and counts live blocks and bytes. It counts only *tracked*
//! allocations: those made by a thread inside a measured [`Section`] (the test thread and the
//! workers it starts through [`on_tracked_threads`]). A small header in front of each block
//! records the section that allocated it, so its free is matched exactly whichever thread
//! performs it, and a block outliving its section (freed when a thread exits, or by a later
//! section) cannot disturb the next section's count. That keeps the test harness's own
//! allocations (spawning the next test, capturing output) out of the numbers. Measured sections
//! are serialised by a static `Mutex`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;

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

/// Wraps `System`, counting the live blocks allocated by tracked threads. Install it with
/// `#[global_allocator]` in the test binary.
pub(crate) struct Counting;

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

// ---------------------------------------------------------------------------------------------
// Measured sections.

/// Serialises measured sections: tests in one binary run in parallel.
static SERIAL: Mutex<()> = Mutex::new(());

/// Live blocks and bytes allocated in a section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Live {
    pub(crate) blocks: isize,
    pub(crate) bytes: isize,
}

/// A measured section: holds the serialising lock, tracks the current thread and counts from
/// zero. Dropping it ends the section and stops tracking.
pub(crate) struct Section {
    _serial: MutexGuard<'static, ()>,
}

impl Section {
    pub(crate) fn start() -> Self {
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
    pub(crate) fn live(&self) -> Live {
        Live {
            blocks: LIVE_BLOCKS.load(Ordering::Relaxed),
            bytes: LIVE_BYTES.load(Ordering::Relaxed),
        }
    }

    /// The accounting itself can fail: in a section where nothing is live yet, a leaked
    /// `Box<u64>` shows as one live block of 8 bytes, and nothing is live once it is freed.
    #[track_caller]
    pub(crate) fn assert_counts_a_leaked_box(&self) {
        // `black_box`: without it the optimiser may drop an allocation nothing reads.
        let leaked = Box::into_raw(std::hint::black_box(Box::new(7u64)));
        assert_eq!(
            self.live(),
            Live {
                blocks: 1,
                bytes: 8
            }
        );
        // SAFETY: `leaked` came from `Box::into_raw` just above and is reclaimed once.
        drop(unsafe { Box::from_raw(leaked) });
        self.assert_all_freed("after freeing the box");
    }

    #[track_caller]
    pub(crate) fn assert_all_freed(&self, what: &str) {
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

impl Drop for Section {
    fn drop(&mut self) {
        set_tracked(false);
        // Relaxed: see `alloc`; the lock, still held, orders this with the next section.
        SECTION.store(0, Ordering::Relaxed);
    }
}

/// Runs `f(t)` on `threads` workers whose allocations are tracked, and joins them (a native
/// join, so each worker's thread-local destructors have run by the time this returns).
pub(crate) fn on_tracked_threads(threads: usize, f: impl Fn(usize) + Sync) {
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
