//! [`MsQueue`]: an unbounded lock-free multi-producer multi-consumer FIFO queue.
//!
//! # Lineage
//!
//! The queue is a Michael–Scott list of *blocks* of slots:
//! - Maged M. Michael and Michael L. Scott, "Simple, Fast, and Practical Non-Blocking and Blocking
//!   Concurrent Queue Algorithms" (PODC 1996): a linked list whose last link is extended by a
//!   compare-and-swap on the last node's `next`, after which `tail` is swung; any thread that finds
//!   `tail` lagging swings it itself ("helping"), so nobody waits for the thread that linked.
//! - Pedro Ramalhete and Andreia Correia's FAAArrayQueue (2016), and LCRQ (Morrison and Afek,
//!   2013) and LPRQ (Romanov and Koval, 2023) before and after it: the list's nodes are arrays of
//!   slots, claimed by index, so a block is allocated once per [`BLOCK_CAP`] values, and a pop that
//!   finds its claimed slot still empty does not wait for the pusher: it marks the slot abandoned
//!   and moves on, and the pusher that later finds its slot abandoned pushes its value again.
//!
//! Here a slot is claimed by a compare-and-swap on a position (one word holding the block's lap
//! and the slot's offset), never by fetch-and-add: a pop claims a slot only after it has seen that
//! a push claimed it, so a pop on an empty queue claims nothing and leaves no hole behind.
//!
//! # Positions and laps
//!
//! `head` and `tail` are each a position and a block pointer. A position counts `LAP =
//! BLOCK_CAP + 1` per block: offsets `0..BLOCK_CAP` name slots, and offset `BLOCK_CAP` means the
//! block is used up and the move to the next block is under way. The thread whose claim takes a
//! position to offset `BLOCK_CAP` moves it on (`finish_lap`); a thread that finds it there waits a
//! moment (a bounded spin, then a few yields: the move is a few instructions, and a push about to
//! take a block's last slot allocates the next block before claiming), then completes the move
//! itself (`help_lap`): it links the next block after the full one if nobody has (a
//! compare-and-swap on the block's `next`, as in Michael and Scott's queue), swings the block
//! pointer, then swings the position to the next lap's offset 0. The block pointer changes only
//! while the position sits at offset `BLOCK_CAP`, so a thread that reads the position and then the
//! block pointer, and then claims the position it read by compare-and-swap, holds a slot of the
//! block it read.
//!
//! # Reclamation: who may touch a block, and when it is freed
//!
//! A thread dereferences a block in one of two ways:
//! - **Holding a claimed slot of it.** The pusher and the popper of a slot each touch the slot
//!   (and, for the block's last slot, the block's `next`, to move `head` or `tail` on), and the
//!   last of the two to leave the slot counts it in the block's `finished`. The block is not
//!   freed before `finished` has counted every slot, so a claimant's accesses never touch freed
//!   memory. A claim needs no pin: this is the hot path, and the claimant of a block's last slot
//!   moves `head` or `tail` on without one too, through the block it holds.
//! - **Helping a move it did not start** (`help_lap`), which loads the block pointer of `head` or
//!   `tail` and reads the block's `lap` and `next`. A helper pins the queue's epoch collector and
//!   counts itself in `helpers` before it loads the pointer, and leaves the count after its last
//!   access.
//!
//! A block is retired by the last thread to finish one of its slots: each slot's finisher adds one
//! to the block's `finished` count, and the one that brings it to `BLOCK_CAP` retires the block.
//! (Per-slot flags walked by the last slot's finisher, as `SegQueue` does, were the first design:
//! the count replaced them because a slot's popper, its last user nearly always, then writes a
//! line of its own block's header instead of the slot's line, which the pushers of the
//! neighbouring slots are writing; see CHANGELOG.md's queue attempts.) The increments are
//! read-modify-writes of one atomic, so every finisher's accesses happen before the retirement.
//! Finishing the last slot happens only after both moves past the block are complete: its popper
//! completes the `head` move before it touches the slot, and its pusher completes the `tail` move
//! before writing. So when the count is complete, no thread can load the block from `head` or
//! `tail` any more. The retiring thread then reads `helpers`: if no helper is in flight, it frees
//! the block at once (a helper that loaded the block counted itself before, and that count is
//! ordered before the retirer's read: all these accesses are `SeqCst`); otherwise it hands the
//! block to the epoch collector, which frees it once the helpers pinned at that time have
//! unpinned. Helping is rare (a move left unfinished by a
//! preempted claimant), so blocks are nearly always freed at once, by the thread that used them
//! last, and the hot path never pins. "Freed" means put on the queue's one-block shelf, whose
//! previous block is freed: the next block needed is taken from the shelf before the allocator,
//! so a steady stream reuses a warm block, and a drained burst keeps one block beyond the
//! current one.
//!
//! A block is never reused, so there is no ABA on block pointers: a pinned thread's pointer cannot
//! be freed and reallocated under it, and positions only grow.

use crate::reclaim::Reclaim;
use crate::sync::{
    census, epoch, fence, AtomicPtr, AtomicUsize, Backoff, CachePadded, Ordering, UnsafeCell,
    QUEUE_BLOCK_CAP, UNDER_MODEL_CHECKER, ZEROED_ATOMICS_VALID,
};
use core::{fmt, iter::FusedIterator, marker::PhantomData, mem::MaybeUninit, ptr};
use epoch::Collector;

/// Slots per block: 127 (2 under loom, 4 under shuttle and 31 under Miri, so that small tests
/// cross blocks). A block holds `BLOCK_CAP` values in place, each beside an 8-byte state word:
/// 2 KiB for 8-byte values. Values of more than a few hundred bytes are better boxed, so that a
/// block stays a small allocation.
pub const BLOCK_CAP: usize = QUEUE_BLOCK_CAP;

/// Positions per block: its slots, then one for the move to the next block.
const LAP: usize = BLOCK_CAP + 1;

/// A position is stored shifted left by this much; the bit below holds `HAS_NEXT`.
const SHIFT: usize = 1;

/// Set in `head`'s index when `head`'s block is known not to be the last one, so that a pop need
/// not read `tail` (another thread's hot cache line) to see that its slot was pushed.
const HAS_NEXT: usize = 1;

/// Slot state: the pusher wrote the value.
const WRITE: usize = 1;
/// Slot state: the popper found no value and gave the slot up; the pusher takes its value back.
const ABANDON: usize = 2;
/// Sets `flag` in a slot's state and returns the state before.
///
/// Each flag is set at most once in a slot's life, by one party (`WRITE` by the pusher,
/// `ABANDON` by the popper), so the bit is clear
/// before the call and adding it is the same as or-ing it in. The addition is what makes this
/// fast: a `fetch_or` whose result is used compiles to a load and a compare-and-swap loop on
/// x86, two trips for a cache line the other side is polling, while `fetch_add` is one `lock
/// xadd`.
#[inline]
fn set_flag(state: &AtomicUsize, flag: usize, order: Ordering) -> usize {
    let prev = state.fetch_add(flag, order);
    debug_assert_eq!(prev & flag, 0, "slot flag {flag} set twice");
    prev
}

/// The position stored in an index.
#[inline]
fn position(index: usize) -> usize {
    index >> SHIFT
}

/// The number of slots before a position: `LAP` positions per block, `BLOCK_CAP` slots.
#[inline]
fn slots_before(position: usize) -> usize {
    (position / LAP) * BLOCK_CAP + position % LAP
}

/// One value's place.
struct Slot<T> {
    /// Written by the pusher before it sets `WRITE`; moved out once, by the popper after it saw
    /// `WRITE`, or by the pusher after it saw `ABANDON`.
    value: UnsafeCell<MaybeUninit<T>>,
    /// `WRITE` and `ABANDON` bits.
    state: AtomicUsize,
}

/// A block of slots, one link of the list.
struct Block<T> {
    /// The next block, null until it is linked (once, by compare-and-swap).
    next: AtomicPtr<Block<T>>,
    /// Which lap of positions this block holds. Written before the block is published, never
    /// changed after: `help_lap` tells by it whether a position's block pointer has been swung.
    lap: usize,
    /// How many slots are finished (their value taken out, and their last user gone); the thread
    /// that brings it to `BLOCK_CAP` retires the block.
    finished: AtomicUsize,
    slots: [Slot<T>; BLOCK_CAP],
}

impl<T> Block<T> {
    /// A new, empty block for `lap`, built directly on the heap: a block of large values never
    /// sits on the stack.
    fn alloc(lap: usize) -> *mut Self {
        census::note_alloc();
        if ZEROED_ATOMICS_VALID {
            let layout = std::alloc::Layout::new::<Self>();
            // SAFETY: `Block<T>` has a non-zero size (it holds at least its `next` pointer).
            let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Self>();
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            // SAFETY: `p` is a fresh, non-null allocation for a `Block<T>`, ours alone; only
            // `lap` needs a value other than zero.
            unsafe { Self::set_lap(p, lap) };
            // All-zero is a valid `Block<T>`: null `next`, lap set above, nothing finished,
            // zero states (no bit set) and uninitialised values (`MaybeUninit`);
            // `ZEROED_ATOMICS_VALID` holds for this world's atomics.
            p
        } else {
            Box::into_raw(Box::new(Self {
                next: AtomicPtr::new(ptr::null_mut()),
                lap,
                finished: AtomicUsize::new(0),
                slots: core::array::from_fn(|_| Slot {
                    value: UnsafeCell::new(MaybeUninit::uninit()),
                    state: AtomicUsize::new(0),
                }),
            }))
        }
    }

    /// Sets an unpublished block's `lap`.
    ///
    /// # Safety
    ///
    /// `this` is allocated and unpublished: no other thread can reach it.
    unsafe fn set_lap(this: *mut Self, lap: usize) {
        // SAFETY: allocated, per the caller: the field's address is in bounds, and taking it
        // creates no reference.
        let lap_field = unsafe { ptr::addr_of_mut!((*this).lap) };
        // SAFETY: in bounds and aligned; nobody else reads or writes it (unpublished).
        unsafe { lap_field.write(lap) };
    }

    /// Makes a block that was used up and retired, or never published, empty again, for `lap`.
    ///
    /// # Safety
    ///
    /// `this` is allocated, and no other thread can reach it: unpublished, or retired with every
    /// slot finished and no helper holding it. Its values were all moved out.
    unsafe fn reset(this: *mut Self, lap: usize) {
        // SAFETY: per the caller.
        unsafe { Self::set_lap(this, lap) };
        // SAFETY: allocated, per the caller.
        let block = unsafe { &*this };
        // Relaxed (all stores): the block is ours alone; whoever links it publishes it with a
        // Release compare-and-swap.
        block.next.store(ptr::null_mut(), Ordering::Relaxed);
        block.finished.store(0, Ordering::Relaxed);
        for slot in &block.slots {
            slot.state.store(0, Ordering::Relaxed);
        }
    }

    /// Slot `i` of a block.
    ///
    /// # Safety
    ///
    /// `this` points to a block that stays allocated for `'a`.
    #[inline]
    unsafe fn slot<'a>(this: *const Self, i: usize) -> &'a Slot<T> {
        // SAFETY: allocated for `'a`, per the caller.
        let block = unsafe { &*this };
        &block.slots[i]
    }

    /// Frees a block allocated by [`alloc`](Self::alloc). Values still in it are not dropped.
    ///
    /// # Safety
    ///
    /// `this` came from `alloc`, is freed once, and nobody touches it afterwards.
    unsafe fn free(this: *mut Self) {
        // Under loom the census keeps the memory until the model's execution ends, so that a
        // late access is caught (`census::assert_alive`); it frees it with `dealloc` then.
        if !census::bury(this.cast(), Self::dealloc) {
            // SAFETY: as the caller promises.
            unsafe { Self::dealloc(this.cast()) };
        }
    }

    /// Gives a block's memory back.
    ///
    /// # Safety
    ///
    /// As for [`free`](Self::free); `this` is the block's pointer, cast.
    unsafe fn dealloc(this: *mut u8) {
        // SAFETY: `alloc` made it with `Box`'s layout (`alloc_zeroed` with `Layout::new::<Self>()`
        // is the global allocator and layout `Box` uses); freed once, per the caller.
        drop(unsafe { Box::from_raw(this.cast::<Self>()) });
    }
}

/// `head` or `tail`: an index (position, plus `HAS_NEXT` in `head`'s) and the block holding it.
struct End<T> {
    index: AtomicUsize,
    block: AtomicPtr<Block<T>>,
}

/// A block allocated ahead of need by a thread that may link it (a push about to claim a
/// block's last slot allocates before claiming, so that the move to the next block is short), not
/// yet published; put on the queue's shelf on drop if it never was.
struct Spare<'q, T> {
    queue: &'q MsQueue<T>,
    block: *mut Block<T>,
}

impl<'q, T> Spare<'q, T> {
    const fn none(queue: &'q MsQueue<T>) -> Self {
        Self {
            queue,
            block: ptr::null_mut(),
        }
    }

    /// Gets a block for `lap` ready if there is none.
    fn fill(&mut self, lap: usize) {
        if self.block.is_null() {
            self.block = self.queue.new_block(lap);
        }
    }

    /// The spare (or a new block) for `lap`, to be published by the caller or put back.
    fn take_for(&mut self, lap: usize) -> *mut Block<T> {
        let b = core::mem::replace(&mut self.block, ptr::null_mut());
        if b.is_null() {
            return self.queue.new_block(lap);
        }
        // SAFETY: the spare is unpublished, ours alone: writing its `lap` races with nothing.
        unsafe { Block::set_lap(b, lap) };
        b
    }

    /// Keeps an unpublished block as the spare (shelving the old spare, if any).
    fn put_back(&mut self, b: *mut Block<T>) {
        let old = core::mem::replace(&mut self.block, b);
        if !old.is_null() {
            // SAFETY: an unpublished block, ours alone.
            unsafe { self.queue.shelve(old) };
        }
    }
}

impl<T> Drop for Spare<'_, T> {
    fn drop(&mut self) {
        if !self.block.is_null() {
            // SAFETY: an unpublished block, ours alone.
            unsafe { self.queue.shelve(self.block) };
        }
    }
}

/// An unbounded lock-free MPMC FIFO queue: a Michael–Scott list of blocks of slots (see the
/// [module docs](self) for the algorithm and its lineage).
///
/// Values pushed by one thread are popped in the order that thread pushed them. Every pushed
/// value is popped exactly once, or dropped exactly once when the queue drops.
///
/// The queue is unbounded and never blocks: there is no blocking pop and no bounded variant. A
/// consumer that must wait for values parks on its own (the crate's batcher does).
///
/// # Progress
///
/// | method | progress |
/// |---|---|
/// | [`push`](Self::push) | lock-free |
/// | [`pop`](Self::pop) | lock-free |
/// | [`is_empty`](Self::is_empty) | wait-free |
/// | [`len`](Self::len) | lock-free (retries only while pushes complete) |
///
/// No thread ever waits for another. A pop that claims a slot whose pusher has not written it yet
/// (say, the pusher was preempted) spins briefly, then gives the slot up and moves on; the pusher,
/// when it resumes, finds the slot given up and pushes its value again, later in the queue. A
/// thread stalled while moving `head` or `tail` to the next block is helped past by the next thread
/// that finds the move unfinished. Some thread always completes its operation in a bounded number
/// of its own steps. (A push is not wait-free: in theory pops can keep giving up its slots.)
///
/// # Memory
///
/// No allocation per value: at most one per block of [`BLOCK_CAP`] slots, allocated zeroed on
/// the heap (a block of large values never sits on the stack). No epoch pin on the hot path: a
/// thread pins the queue's epoch collector only when it helps a move to the next block that
/// another thread left unfinished. A block is retired by the last thread to leave one of its
/// slots, once all of them have been used, and freed at once (or, if a helper may still read it,
/// through the collector once the helpers pinned at that time have unpinned); one retired block
/// is kept for reuse. A drained burst so gives its memory back. Each slot takes
/// `size_of::<T>()` plus one word; each block three words more.
///
/// [`MsQueue::new`] retires blocks through crossbeam-epoch's global collector (shared with every
/// other epoch user in the process, each thread pinning through its own cached handle);
/// [`MsQueue::with_collector`] through a collector of the caller's, which makes reclamation
/// exactly accountable: once the queue and the collector drop, every block has been freed.
///
/// # Thread safety
///
/// `MsQueue<T>` is `Send` and `Sync` exactly when `T: Send`: values move between threads but are
/// never shared by reference, so `T: Sync` is not needed.
///
/// ```compile_fail
/// use latchless::queue::MsQueue;
/// use std::rc::Rc;
///
/// fn is_send<T: Send>(_: &T) {}
/// is_send(&MsQueue::<Rc<u8>>::new()); // Rc is not Send
/// ```
///
/// ```compile_fail
/// use latchless::queue::MsQueue;
/// use std::rc::Rc;
///
/// fn is_sync<T: Sync>(_: &T) {}
/// is_sync(&MsQueue::<Rc<u8>>::new()); // Rc is not Send
/// ```
///
/// # Examples
///
/// ```
/// use latchless::queue::MsQueue;
/// use std::thread;
///
/// let q = MsQueue::new();
/// thread::scope(|s| {
///     for p in 0..2 {
///         let q = &q;
///         s.spawn(move || {
///             for i in 0..100 {
///                 q.push((p, i));
///             }
///         });
///     }
/// });
/// let mut last = [None, None];
/// while let Some((p, i)) = q.pop() {
///     // FIFO per producer.
///     assert!(last[p].map_or(true, |prev| prev < i));
///     last[p] = Some(i);
/// }
/// assert_eq!(last, [Some(99), Some(99)]);
/// ```
pub struct MsQueue<T> {
    head: CachePadded<End<T>>,
    tail: CachePadded<End<T>>,
    /// Helpers (`help_lap`) between loading a block pointer and their last access to the block.
    /// Written only on the rare helping path; read once per retired block.
    helpers: CachePadded<AtomicUsize>,
    /// One block kept for reuse (or null): a block retired while no helper could hold it, or a
    /// spare that was never published. The next block needed is taken from here before the
    /// allocator, so a steady stream of values reuses a warm block instead of a free and an
    /// allocation per block.
    shelf: CachePadded<AtomicPtr<Block<T>>>,
    /// The collector that frees retired blocks while helpers may hold them: the global one or the
    /// caller's.
    reclaim: Reclaim,
    /// The queue owns `T`s (for the drop check).
    _marker: PhantomData<T>,
}

// SAFETY: the queue owns its values and moves each one to exactly one thread (the pusher hands it
// in, one popper takes it out, or the dropper drops it); no `&T` is ever handed out, so moving
// values across threads (`T: Send`) is all that sending the queue requires.
unsafe impl<T: Send> Send for MsQueue<T> {}
// SAFETY: through `&MsQueue<T>` threads only push and pop, which move values between threads as
// above; all shared state is atomics and slots handed over through their state bits. `T: Sync` is
// not needed because no two threads ever access one value at once.
unsafe impl<T: Send> Sync for MsQueue<T> {}

impl<T> MsQueue<T> {
    /// Creates an empty queue whose blocks are freed through crossbeam-epoch's global collector.
    /// Allocates its first block.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::queue::MsQueue;
    ///
    /// let q: MsQueue<u32> = MsQueue::new();
    /// assert!(q.is_empty());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::build(None)
    }

    /// Creates an empty queue whose retired blocks, when a helper may still read them, are freed
    /// through `collector`: once the queue, the collector and every handle of it have dropped,
    /// every block has been freed, which a test counting allocations can check exactly (and
    /// Miri's leak check too). The hot path never pins, so this costs nothing per operation; a
    /// thread that helps a move to the next block registers a fresh handle with `collector`,
    /// which is slower than the global collector's cached one.
    ///
    /// # Examples
    ///
    /// ```
    /// use crossbeam_epoch::Collector;
    /// use latchless::queue::MsQueue;
    ///
    /// let collector = Collector::new();
    /// let q = MsQueue::with_collector(collector.clone());
    /// q.push(1);
    /// assert_eq!(q.pop(), Some(1));
    /// ```
    #[must_use]
    pub fn with_collector(collector: Collector) -> Self {
        Self::build(Some(collector))
    }

    fn build(collector: Option<Collector>) -> Self {
        let first = Block::alloc(0);
        Self {
            head: CachePadded::new(End {
                index: AtomicUsize::new(0),
                block: AtomicPtr::new(first),
            }),
            tail: CachePadded::new(End {
                index: AtomicUsize::new(0),
                block: AtomicPtr::new(first),
            }),
            helpers: CachePadded::new(AtomicUsize::new(0)),
            shelf: CachePadded::new(AtomicPtr::new(ptr::null_mut())),
            reclaim: Reclaim::new(collector),
            _marker: PhantomData,
        }
    }

    /// An empty block for `lap`, unpublished: the shelved one if there is one, else a new one.
    fn new_block(&self, lap: usize) -> *mut Block<T> {
        // AcqRel: Acquire pairs with `shelve`'s Release, so the shelving thread's last accesses
        // to the block happen before our reset; Release is not needed but harmless.
        if UNDER_MODEL_CHECKER {
            // No reuse under the model checkers: every retired block is freed (under loom,
            // buried), so that a late access to it fails the model instead of reading a reused
            // block. Reuse takes the same condition as freeing (the block is ours alone).
            return Block::alloc(lap);
        }
        let b = self.shelf.swap(ptr::null_mut(), Ordering::AcqRel);
        if b.is_null() {
            return Block::alloc(lap);
        }
        // SAFETY: a shelved block is no other thread's (see `shelve`), allocated, and empty of
        // values; taking it off the shelf made it ours alone.
        unsafe { Block::reset(b, lap) };
        b
    }

    /// Keeps `b` for reuse, freeing the block it displaces.
    ///
    /// # Safety
    ///
    /// `b` is allocated, no other thread can reach it, and its values were all moved out.
    unsafe fn shelve(&self, b: *mut Block<T>) {
        // AcqRel: Release publishes our last accesses to `b` to the thread that takes it;
        // Acquire pairs with the Release of whoever shelved the block we displace, before we free
        // it.
        if UNDER_MODEL_CHECKER {
            // No reuse under the model checkers (see `new_block`).
            // SAFETY: as the caller promises: ours alone, freed once.
            unsafe { Block::free(b) };
            return;
        }
        let old = self.shelf.swap(b, Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: the displaced block was shelved under the same promise, and taking it off
            // the shelf made it ours alone; freed once.
            unsafe { Block::free(old) };
        }
    }

    /// Pushes `value` at the back. Lock-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::queue::MsQueue;
    ///
    /// let q = MsQueue::new();
    /// q.push("a");
    /// q.push("b");
    /// assert_eq!(q.pop(), Some("a"));
    /// ```
    pub fn push(&self, value: T) {
        let mut value = value;
        // Each failed round means a pop gave up this push's slot: that pop moved on, and the
        // value goes to a later slot.
        while let Err(back) = self.push_once(value) {
            value = back;
        }
    }

    /// Claims a slot at the back and writes `value` into it. Hands the value back if a pop gave
    /// the slot up before the write.
    fn push_once(&self, value: T) -> Result<(), T> {
        let backoff = Backoff::new();
        // Acquire (both loads, here and below): a lap's index is stored after its block pointer
        // (`finish_lap`), so the block read after the index is the index's block or a later one,
        // and its contents, published by the link and swing, are visible.
        let mut tail = self.tail.index.load(Ordering::Acquire);
        let mut block = self.tail.block.load(Ordering::Acquire);
        let mut spare = Spare::none(self);
        loop {
            let offset = position(tail) % LAP;
            if offset == BLOCK_CAP {
                // Another pusher claimed the block's last slot and has not moved `tail` on yet:
                // give it a moment, then complete the move for it instead of waiting longer.
                if Self::wait_for_lap(&self.tail, tail) == tail {
                    self.help_lap(&self.tail, tail, &mut spare);
                }
                tail = self.tail.index.load(Ordering::Acquire);
                block = self.tail.block.load(Ordering::Acquire);
                continue;
            }
            if offset + 1 == BLOCK_CAP {
                // We may take the last slot: have the next block ready, so that the move to it
                // after our claim is a few compare-and-swaps.
                spare.fill(position(tail) / LAP + 1);
            }
            let new_tail = tail + (1 << SHIFT);
            // SeqCst: claims are totally ordered with the pops' reads of `tail`, which decide
            // emptiness; it is also a release, so that a thread that later sees this lap's index
            // at offset `BLOCK_CAP` (Acquire) has our block read before its swing. Acquire on
            // failure: we reread the block pointer for the index we got.
            match self.tail.index.compare_exchange_weak(
                tail,
                new_tail,
                Ordering::SeqCst,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if offset + 1 == BLOCK_CAP {
                        #[cfg(test)]
                        hooks::reach(hooks::Point::Linking);
                        // We took the last slot: move `tail` to the next block before writing,
                        // so the block is not retired while `tail` still points at it.
                        // SAFETY: our claim keeps `block`, the block of `tail`, allocated.
                        unsafe { self.finish_lap(&self.tail, new_tail, block, &mut spare) };
                    }
                    #[cfg(test)]
                    hooks::reach(hooks::Point::Claimed);
                    // SAFETY: our claim made `block` the block of position `tail` (see the
                    // module docs), and the block cannot be freed before our slot is finished,
                    // which only we or its popper can do after our write below.
                    return unsafe { self.write(block, offset, value) };
                }
                Err(t) => {
                    tail = t;
                    block = self.tail.block.load(Ordering::Acquire);
                    backoff.spin();
                }
            }
        }
    }

    /// Writes `value` into a slot this thread claimed for a push.
    ///
    /// # Safety
    ///
    /// Slot `offset` of `block` was claimed by this thread's push, and the push has not written
    /// it yet.
    unsafe fn write(&self, block: *mut Block<T>, offset: usize, value: T) -> Result<(), T> {
        // SAFETY: the block is allocated while our slot is unfinished (the caller's claim).
        let slot = unsafe { Block::slot(block, offset) };
        // SAFETY: until we set `WRITE`, only we touch the value cell: the popper reads it only
        // after seeing `WRITE`.
        slot.value
            .with_mut(|p| unsafe { p.write(MaybeUninit::new(value)) });
        // AcqRel: Release publishes the value to the popper that sees `WRITE`; Acquire pairs with
        // the popper's Release `ABANDON`, so if we finish the slot below, the popper's move of
        // `head` (for the last slot) happens before our retiring of the block.
        let prev = set_flag(&slot.state, WRITE, Ordering::AcqRel);
        if prev & ABANDON == 0 {
            return Ok(());
        }
        // The popper gave the slot up before our write: the value is still ours.
        // SAFETY: the popper left without reading the value; we wrote it above and nobody else
        // reads it: it is moved out exactly once, here.
        let value = slot.value.with(|p| unsafe { ptr::read(p.cast::<T>()) });
        // SAFETY: we are this slot's last user, and the caller's claim holds.
        unsafe { self.finish_slot(block) };
        Err(value)
    }

    /// Counts a slot finished, by its last user, and retires the block if it was the last one.
    ///
    /// # Safety
    ///
    /// The caller holds a claim on a slot of `block` and is the slot's last user; it does not
    /// touch the slot or the block afterwards.
    unsafe fn finish_slot(&self, block: *mut Block<T>) {
        // SAFETY: allocated: our slot is not counted until the RMW below.
        let b = unsafe { &*block };
        // AcqRel: Release orders our accesses to the slot (and, for the last slot, our part of a
        // move past the block) before the retirer's; Acquire, in the retirer, receives those of
        // every earlier finisher: the increments are one atomic's read-modify-writes, so each
        // reads the one before it and the Release of every one is seen by the last.
        if b.finished.fetch_add(1, Ordering::AcqRel) + 1 != BLOCK_CAP {
            return;
        }
        // SAFETY: every slot is finished and we are the last to finish one.
        unsafe { self.retire(block) };
    }

    /// Frees a block whose every slot is finished, at once if no helper can hold it, else through
    /// the epoch collector.
    ///
    /// # Safety
    ///
    /// Called once per block, by the thread whose `finish_slot` counted its last slot.
    unsafe fn retire(&self, block: *mut Block<T>) {
        if UNDER_MODEL_CHECKER {
            // A write to the block that loom sees, standing for its free: a helper's read of
            // `next` then conflicts with the free, so loom explores the helper reading after it
            // (and `census::assert_alive` fails the model if that can happen).
            // SAFETY: the retirement is ours: the block is allocated.
            let b = unsafe { &*block };
            // Relaxed: nothing is published; the block's `next` is never read by a claimant
            // again (both moves past the block are complete).
            b.next.store(ptr::null_mut(), Ordering::Relaxed);
            // And a write to every value cell, standing for the free too: each slot's pusher and
            // popper accessed its cell, and loom fails the model if any such access does not
            // happen before this one (the `finished` count's Acquire is what orders them).
            for slot in &b.slots {
                slot.value.with_mut(|_| ());
            }
        }
        // The fence pairs with the one in `help_lap`: a helper's count comes before its fence and
        // its load of the block pointer; both moves past this block happen before our fence. If
        // the helper's fence comes first in the total order of `SeqCst` fences, we see its
        // count; if ours does, its load sees the moves and not this block.
        fence(Ordering::SeqCst);
        if self.helpers.load(Ordering::SeqCst) == 0 {
            // SAFETY: every slot is finished, so no claimant touches the block again, and all
            // values were moved out; `head` and `tail` were swung past it, so no thread can load
            // it any more; no helper that loaded it before is still in flight (above). Only one
            // thread counts the last slot: the block is ours alone, to reuse or free once.
            unsafe { self.shelve(block) };
            return;
        }
        let guard = self.reclaim.pin();
        let free = move || {
            // SAFETY: run once, by the collector, after the grace period argued below.
            unsafe { Block::free(block) }
        };
        // SAFETY: every slot is finished, so no claimant touches the block again, and both
        // `head` and `tail` were swung past it, so no helper that pins from now on can load it;
        // helpers that loaded it before pinned before, and the collector runs `free` only after
        // they unpin. `free` touches no value of type `T`.
        unsafe { guard.defer_unchecked(free) };
    }

    /// Moves `end` (`head` or `tail`) from the used-up block `full` to the next one, by the
    /// thread that claimed `full`'s last slot, leaving `end`'s index at `index` (offset
    /// `BLOCK_CAP`): links a next block if none is, swings the block pointer, swings the index.
    /// After it returns, the index has moved past `index`. No pin: the claim protects `full`,
    /// and no other block is dereferenced.
    ///
    /// # Safety
    ///
    /// The caller claimed `full`'s last slot and has not finished it.
    unsafe fn finish_lap(
        &self,
        end: &End<T>,
        index: usize,
        full: *mut Block<T>,
        spare: &mut Spare<'_, T>,
    ) {
        debug_assert_eq!(position(index) % LAP, BLOCK_CAP);
        // SAFETY: allocated while the caller's slot is unfinished.
        unsafe { self.advance_block(end, full, spare) };
        Self::swing_index(end, index);
    }

    /// Links a block after `full` if none is, then swings `end`'s block pointer from `full` to
    /// it, unless another thread swung it already. The middle step of a move to the next lap,
    /// shared by its starter (`finish_lap`) and its helpers (`help_lap`).
    ///
    /// # Safety
    ///
    /// `full` stays allocated until this returns: the caller holds a claim on one of its slots,
    /// or is counted in `helpers` and pinned.
    unsafe fn advance_block(&self, end: &End<T>, full: *mut Block<T>, spare: &mut Spare<'_, T>) {
        // SAFETY: allocated (the caller's contract).
        let next = self.next_block(unsafe { &*full }, spare);
        census::assert_alive(full.cast());
        // SeqCst, on failure too (another thread swung it already): the swing, ours or the one
        // we read, is then ordered before the caller's finishing of its slot and so before the
        // retirer's read of `helpers` (see the module docs).
        let _ = end
            .block
            .compare_exchange(full, next, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Completes a move of `end` that another thread started (`end`'s index was `index`, at
    /// offset `BLOCK_CAP`) and has not finished: links a next block if none is, swings the block
    /// pointer, swings the index. After it returns, the index has moved past `index`.
    fn help_lap(&self, end: &End<T>, index: usize, spare: &mut Spare<'_, T>) {
        debug_assert_eq!(position(index) % LAP, BLOCK_CAP);
        let lap = position(index) / LAP;
        let guard = self.reclaim.pin();
        // SeqCst (this, the fence, the load below and the decrement): a retirer that does
        // not see our count cannot retire a block we load (see the module docs). The fence makes
        // the count-then-load order hold against the retirer's fence-then-read (a Dekker pair):
        // `SeqCst` accesses alone would do in C++'s model, but loom checks `SeqCst` accesses as
        // acquire/release only, and fences fully; it found this pair unprotected without them.
        self.helpers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // SeqCst: as above; it is also an acquire: the block of our index's lap or a later one
        // (see `push_once`), with its contents visible.
        let block = end.block.load(Ordering::SeqCst);
        #[cfg(test)]
        hooks::reach(hooks::Point::Helping);
        // SAFETY: loaded while we are counted in `helpers` and pinned, from `end`: a thread that
        // retires it either sees our count and hands it to the collector, which frees it only
        // after we unpin, or ran before our load, when `end` no longer held it. `lap` is
        // immutable after publication.
        let same_lap = unsafe { &*block }.lap == lap;
        census::assert_alive(block.cast());
        if same_lap {
            // SAFETY: as above: counted and pinned until after this call.
            unsafe { self.advance_block(end, block, spare) };
        }
        // After our last access to the block.
        self.helpers.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        Self::swing_index(end, index);
    }

    /// Swings `end`'s index from `index` (offset `BLOCK_CAP`) to the next lap's offset 0, once
    /// its block pointer is the next lap's (we swung it, saw it swung, or the index has moved on
    /// and this fails).
    fn swing_index(end: &End<T>, index: usize) {
        let lap = position(index) / LAP;
        // SeqCst on success: the index is stored after the block pointer and released to the
        // Acquire loads of the index. Acquire on failure: whoever moved the index swung the block
        // pointer before, and a caller that goes on to finish its slot must have the move happen
        // before any retiring of the old block.
        let _ = end.index.compare_exchange(
            index,
            ((lap + 1) * LAP) << SHIFT,
            Ordering::SeqCst,
            Ordering::Acquire,
        );
    }

    /// The block after `full`, linking `spare` (or a new block) if there is none yet. `full` is
    /// used up: its every slot was claimed by a push (if `head` reached its end, `tail` did
    /// before).
    fn next_block(&self, full: &Block<T>, spare: &mut Spare<'_, T>) -> *mut Block<T> {
        // Acquire: pairs with the Release link below, so the next block's contents are visible.
        let next = full.next.load(Ordering::Acquire);
        if !next.is_null() {
            return next;
        }
        let new = spare.take_for(full.lap + 1);
        // Release: publishes the new block's contents. Acquire on failure: we use the block
        // another thread linked, whose contents its Release published.
        match full
            .next
            .compare_exchange(ptr::null_mut(), new, Ordering::Release, Ordering::Acquire)
        {
            Ok(_) => new,
            Err(linked) => {
                // `new` was never published: it is ours alone, to keep for later or free.
                spare.put_back(new);
                linked
            }
        }
    }

    /// Waits a moment for a move to the next lap that another thread started (`end`'s index at
    /// `index`) to complete, as it nearly always does within a few instructions; returns the
    /// index seen last. Bounded: a caller that still sees `index` then helps (`help_lap`).
    fn wait_for_lap(end: &End<T>, index: usize) -> usize {
        if UNDER_MODEL_CHECKER {
            // Neither checker has a clock to make a wait mean anything.
            return index;
        }
        let backoff = Backoff::new();
        loop {
            // Spins, then yields (the thread we wait for may be preempted on this core): about
            // ten rounds in all.
            backoff.snooze();
            // Acquire: as every load of an index.
            let now = end.index.load(Ordering::Acquire);
            if now != index || backoff.is_completed() {
                return now;
            }
        }
    }

    /// Pops the value at the front, or returns `None` if the queue is empty. Lock-free.
    ///
    /// An empty queue returns `None` without claiming anything. A pop claims a slot only once a
    /// push has claimed it; if that push has not written its value yet, the pop waits a moment,
    /// then gives the slot up and tries the next one (the push's value then comes later).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::queue::MsQueue;
    ///
    /// let q = MsQueue::new();
    /// assert_eq!(q.pop(), None);
    /// q.push(5);
    /// assert_eq!(q.pop(), Some(5));
    /// assert_eq!(q.pop(), None);
    /// ```
    pub fn pop(&self) -> Option<T> {
        let backoff = Backoff::new();
        // Acquire (both loads, here and below): as in `push_once`.
        let mut head = self.head.index.load(Ordering::Acquire);
        let mut block = self.head.block.load(Ordering::Acquire);
        loop {
            let offset = position(head) % LAP;
            if offset == BLOCK_CAP {
                // Another pop took the block's last slot and has not moved `head` on: give it a
                // moment, then help.
                if Self::wait_for_lap(&self.head, head) == head {
                    self.help_lap(&self.head, head, &mut Spare::none(self));
                }
                head = self.head.index.load(Ordering::Acquire);
                block = self.head.block.load(Ordering::Acquire);
                continue;
            }
            let mut new_head = head + (1 << SHIFT);
            if new_head & HAS_NEXT == 0 {
                // SeqCst: a pop that returns `None` is linearised at this load, ordered with
                // the claims of every push.
                let tail = self.tail.index.load(Ordering::SeqCst);
                if position(head) >= position(tail) {
                    return None;
                }
                if position(head) / LAP != position(tail) / LAP {
                    // `tail` has left our block: every slot of it was claimed by a push.
                    new_head |= HAS_NEXT;
                }
            }
            // SeqCst: as in `push_once`. Acquire on failure: we reread the block pointer.
            match self.head.index.compare_exchange_weak(
                head,
                new_head,
                Ordering::SeqCst,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if offset + 1 == BLOCK_CAP {
                        #[cfg(test)]
                        hooks::reach(hooks::Point::Linking);
                        // We took the last slot: move `head` to the next block before touching
                        // the slot, so the block is not retired while `head` points at it.
                        // SAFETY: our claim keeps `block`, the block of `head`, allocated.
                        unsafe {
                            self.finish_lap(&self.head, new_head, block, &mut Spare::none(self))
                        };
                    }
                    // SAFETY: our claim made `block` the block of position `head`; it cannot be
                    // freed before our slot is finished.
                    if let Some(value) = unsafe { self.read(block, offset) } {
                        return Some(value);
                    }
                    // Gave the slot up: try the next one.
                    head = self.head.index.load(Ordering::Acquire);
                    block = self.head.block.load(Ordering::Acquire);
                }
                Err(h) => {
                    head = h;
                    block = self.head.block.load(Ordering::Acquire);
                    backoff.spin();
                }
            }
        }
    }

    /// Takes the value out of a slot this thread claimed for a pop, or gives the slot up if its
    /// pusher has not written it after a short wait.
    ///
    /// # Safety
    ///
    /// Slot `offset` of `block` was claimed by this thread's pop.
    unsafe fn read(&self, block: *mut Block<T>, offset: usize) -> Option<T> {
        // SAFETY: allocated while our slot is unfinished (the caller's claim).
        let slot = unsafe { Block::slot(block, offset) };
        // Acquire (here and in the loop): pairs with the pusher's Release `WRITE`, so the value
        // is visible.
        let mut state = slot.state.load(Ordering::Acquire);
        if state & WRITE == 0 {
            #[cfg(test)]
            if hooks::waiting_pop() {
                // The planted flaw of the progress test: wait for the pusher, however long.
                while state & WRITE == 0 {
                    std::thread::yield_now();
                    state = slot.state.load(Ordering::Acquire);
                }
            }
            // A claimed slot's pusher is between its claim and its write: usually a few
            // instructions. Wait that long, not more: the pusher may have been preempted.
            // Neither model checker has a clock to make a spin mean anything.
            if !UNDER_MODEL_CHECKER {
                let backoff = Backoff::new();
                while state & WRITE == 0 && !backoff.is_completed() {
                    backoff.snooze();
                    state = slot.state.load(Ordering::Acquire);
                }
            }
            if state & WRITE == 0 {
                // AcqRel: Release publishes our history (our move of `head`, for the last slot)
                // to the pusher that sees `ABANDON` and may retire the block; Acquire pairs with
                // the pusher's Release `WRITE` if it came first, making the value visible.
                state = set_flag(&slot.state, ABANDON, Ordering::AcqRel);
                if state & WRITE == 0 {
                    // Given up: the pusher will take its value back and finish the slot.
                    return None;
                }
            }
        }
        // SAFETY: `WRITE` is set and we claimed the slot: the value is initialised, visible
        // (Acquire above), and ours alone to move out, once.
        let value = slot.value.with(|p| unsafe { ptr::read(p.cast::<T>()) });
        // SAFETY: we are the slot's last user (the pusher left after setting `WRITE`).
        unsafe { self.finish_slot(block) };
        Some(value)
    }

    /// Returns `true` if the queue was empty at a moment during the call. Wait-free.
    ///
    /// `false` means that a push had claimed a slot that no pop had: usually a value is there,
    /// but a push still between its claim and its write counts too (a pop that then takes the
    /// slot gives it up and the value arrives later).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::queue::MsQueue;
    ///
    /// let q = MsQueue::new();
    /// assert!(q.is_empty());
    /// q.push(());
    /// assert!(!q.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        // SeqCst (both): `head` first, and `head` never passes `tail`'s claims, so `head` at or
        // past the `tail` read after it means `head` met `tail` at the moment of that read.
        // Acquire would not do: it does not place the two reads in the single order of the
        // claims (SeqCst compare-and-swaps), which is what makes "at that moment" mean anything
        // to a caller that pushed or popped just before. On x86 and AArch64 a SeqCst load costs
        // what an Acquire load does.
        let head = self.head.index.load(Ordering::SeqCst);
        let tail = self.tail.index.load(Ordering::SeqCst);
        position(head) >= position(tail)
    }

    /// Returns the number of values in the queue: exact when no other thread is pushing or
    /// popping; otherwise the number of slots claimed by pushes and not yet by pops at a moment
    /// during the call (a push between its claim and its write counts). O(1) and lock-free.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::queue::MsQueue;
    ///
    /// let q = MsQueue::new();
    /// q.push(1);
    /// q.push(2);
    /// q.pop();
    /// assert_eq!(q.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        loop {
            // SeqCst (all three): `tail` read twice around `head`; if it did not move, both were
            // current at the moment `head` was read.
            let tail = self.tail.index.load(Ordering::SeqCst);
            let head = self.head.index.load(Ordering::SeqCst);
            if self.tail.index.load(Ordering::SeqCst) == tail {
                // `head` may run one lap ahead of `tail` for a moment (its move to the next
                // block completed first): the queue is empty then.
                return slots_before(position(tail)).saturating_sub(slots_before(position(head)));
            }
        }
    }

    /// Pops every value, front to back, through a mutable borrow: no other thread can push
    /// meanwhile, so the drain ends exactly when the queue is empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::queue::MsQueue;
    ///
    /// let mut q = MsQueue::new();
    /// q.push(1);
    /// q.push(2);
    /// assert_eq!(q.drain().collect::<Vec<_>>(), [1, 2]);
    /// assert!(q.is_empty());
    /// ```
    pub fn drain(&mut self) -> Drain<'_, T> {
        Drain { queue: self }
    }
}

impl<T> Default for MsQueue<T> {
    /// Same as [`MsQueue::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::queue::MsQueue;
    ///
    /// let q: MsQueue<String> = Default::default();
    /// assert_eq!(q.len(), 0);
    /// ```
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for MsQueue<T> {
    /// Prints the length snapshot, never the values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsQueue")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<T> Drop for MsQueue<T> {
    fn drop(&mut self) {
        // Relaxed (all loads here): `&mut self` means every operation on the queue happened
        // before this drop, and none is in flight: every claimed slot between `head` and `tail`
        // holds a written value, and every block before `head` has been retired.
        let head = position(self.head.index.load(Ordering::Relaxed));
        let tail = position(self.tail.index.load(Ordering::Relaxed));
        let mut block = self.head.block.load(Ordering::Relaxed);
        let mut pos = head;
        while pos < tail {
            let offset = pos % LAP;
            if offset < BLOCK_CAP {
                // SAFETY: `block` is the block of this lap (we follow `next` at each lap's end),
                // allocated until we free it below.
                let slot = unsafe { Block::slot(block, offset) };
                // SAFETY: a slot between `head` and `tail` with no operation in flight: written,
                // not taken; the value is dropped exactly once, here.
                slot.value
                    .with_mut(|p| unsafe { ptr::drop_in_place(p.cast::<T>()) });
            } else {
                // SAFETY: the used-up block is not yet retired (its slots from `head` on were
                // not finished); nobody else can reach it; freed once, here.
                let next = unsafe { (*block).next.load(Ordering::Relaxed) };
                // SAFETY: as above.
                unsafe { Block::free(block) };
                block = next;
            }
            pos += 1;
        }
        // Relaxed: exclusive access, as above.
        let shelved = self.shelf.load(Ordering::Relaxed);
        if !shelved.is_null() {
            // SAFETY: a shelved block is the queue's alone; freed once, here.
            unsafe { Block::free(shelved) };
        }
        while !block.is_null() {
            // SAFETY: the block of `tail` and any linked after it: reachable only from here;
            // each freed once.
            let next = unsafe { (*block).next.load(Ordering::Relaxed) };
            // SAFETY: as above.
            unsafe { Block::free(block) };
            block = next;
        }
    }
}

/// A draining iterator over an [`MsQueue`], created by [`MsQueue::drain`]. Values not yet
/// yielded when it drops stay in the queue.
///
/// # Examples
///
/// ```
/// use latchless::queue::MsQueue;
///
/// let mut q = MsQueue::new();
/// q.push('x');
/// let mut drain = q.drain();
/// assert_eq!(drain.next(), Some('x'));
/// assert_eq!(drain.next(), None);
/// ```
pub struct Drain<'a, T> {
    queue: &'a mut MsQueue<T>,
}

impl<T> Iterator for Drain<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.queue.pop()
    }
}

impl<T> FusedIterator for Drain<'_, T> {}

impl<T> fmt::Debug for Drain<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain").finish_non_exhaustive()
    }
}

/// An owning iterator over an [`MsQueue`]'s values, front to back, created by
/// [`IntoIterator::into_iter`]. Values not yet yielded drop with it.
///
/// # Examples
///
/// ```
/// use latchless::queue::MsQueue;
///
/// let q = MsQueue::new();
/// q.push(1);
/// q.push(2);
/// let v: Vec<i32> = q.into_iter().collect();
/// assert_eq!(v, [1, 2]);
/// ```
pub struct IntoIter<T> {
    queue: MsQueue<T>,
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.queue.pop()
    }
}

impl<T> FusedIterator for IntoIter<T> {}

impl<T> fmt::Debug for IntoIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntoIter").finish_non_exhaustive()
    }
}

impl<T> IntoIterator for MsQueue<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;

    fn into_iter(self) -> IntoIter<T> {
        IntoIter { queue: self }
    }
}

/// Test-only hooks for the progress test: stall the calling thread at a point of a push until
/// the test resumes it, and plant a pop that waits for its pusher (the flaw the test must catch).
#[cfg(test)]
mod hooks {
    use std::cell::{Cell, RefCell};
    use std::sync::mpsc::{Receiver, Sender};

    /// Where a push can be stalled.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Point {
        /// After claiming a slot, before writing it.
        Claimed,
        /// After claiming a block's last slot, before linking the next block and moving `tail`
        /// (a push) or `head` (a pop) to it.
        Linking,
        /// In `help_lap`, after loading the block pointer, before reading the block.
        Helping,
    }

    type Stall = (Point, Sender<()>, Receiver<()>);

    std::thread_local! {
        static STALL: RefCell<Option<Stall>> = const { RefCell::new(None) };
        static WAITING_POP: Cell<bool> = const { Cell::new(false) };
    }

    /// The calling thread's next push to reach `point` reports on `reached`, then waits for a
    /// message on `resume`. Once only.
    pub(super) fn stall_at(point: Point, reached: Sender<()>, resume: Receiver<()>) {
        STALL.with(|s| *s.borrow_mut() = Some((point, reached, resume)));
    }

    /// Called by a push at `point`.
    pub(super) fn reach(point: Point) {
        let stall = STALL.with(|s| {
            let mut s = s.borrow_mut();
            if matches!(&*s, Some((p, _, _)) if *p == point) {
                s.take()
            } else {
                None
            }
        });
        if let Some((_, reached, resume)) = stall {
            reached.send(()).expect("the test waits for the stall");
            resume.recv().expect("the test resumes the stalled push");
        }
    }

    /// Makes the calling thread's pops wait for their pusher instead of giving the slot up.
    pub(super) fn plant_waiting_pop() {
        WAITING_POP.with(|w| w.set(true));
    }

    pub(super) fn waiting_pop() -> bool {
        WAITING_POP.with(Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::{hooks, MsQueue, BLOCK_CAP};
    use std::collections::HashSet;
    use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    /// Operations per free-running worker.
    const OPS: u64 = 2_000;
    /// How long the free-running workers may take while two pushes are stalled.
    const WATCHDOG: Duration = Duration::from_secs(10);

    /// Value tags, so that every value is distinct.
    const STALLED_CLAIM: u64 = 1 << 40;
    const STALLED_LINK: u64 = 2 << 40;
    const FILLER: u64 = 3 << 40;

    /// Spawns a thread running `f`, stalled at its first arrival at `point`; returns once it has
    /// stalled, with its handle and the sender that resumes it.
    fn spawn_stalled<R: Send + 'static>(
        point: hooks::Point,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<(thread::JoinHandle<R>, Sender<()>), String> {
        let (reached, stalled) = channel();
        let (resume, wait) = channel();
        let handle = thread::spawn(move || {
            hooks::stall_at(point, reached, wait);
            f()
        });
        stalled
            .recv_timeout(WATCHDOG)
            .map_err(|e| format!("never stalled at {point:?}: {e}"))?;
        Ok((handle, resume))
    }

    /// Stalls one push after its claim and another in the middle of moving `tail` to a new block;
    /// then two pushers and two poppers run `OPS` operations each. `Ok` if they all finished
    /// before the watchdog; either way the stalled pushes are resumed and every value is checked
    /// to come out exactly once.
    fn run_with_stalled_pushes(waiting_pop: bool) -> Result<(), String> {
        let q = Arc::new(MsQueue::new());

        // One push stalls after claiming slot 0.
        let (claim, resume_claim) = {
            let q = Arc::clone(&q);
            spawn_stalled(hooks::Point::Claimed, move || q.push(STALLED_CLAIM))?
        };
        // Fill the block up to its last slot; another push stalls after claiming that one.
        for i in 1..BLOCK_CAP as u64 - 1 {
            q.push(FILLER + i);
        }
        let (link, resume_link) = {
            let q = Arc::clone(&q);
            spawn_stalled(hooks::Point::Linking, move || q.push(STALLED_LINK))?
        };

        // Free-running workers: they must all finish while both pushes stay stalled.
        let (done, finished) = channel();
        let mut workers = Vec::new();
        for w in 0..4u64 {
            let q = Arc::clone(&q);
            let done = done.clone();
            workers.push(thread::spawn(move || {
                let mut got = Vec::new();
                if w < 2 {
                    for i in 0..OPS {
                        q.push((w << 32) | i);
                    }
                } else {
                    if waiting_pop {
                        hooks::plant_waiting_pop();
                    }
                    for _ in 0..OPS {
                        got.extend(q.pop());
                    }
                }
                done.send(()).expect("the test is waiting");
                got
            }));
        }
        drop(done);
        let mut outcome = Ok(());
        for _ in 0..workers.len() {
            match finished.recv_timeout(WATCHDOG) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {
                    outcome = Err("a worker waited for a stalled push".to_string());
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    outcome = Err("a worker panicked".to_string());
                    break;
                }
            }
        }

        // Resume the stalled pushes; everything must come out exactly once.
        resume_link.send(()).expect("the stalled push waits");
        resume_claim.send(()).expect("the stalled push waits");
        link.join().map_err(|_| "the linking push panicked")?;
        claim.join().map_err(|_| "the claiming push panicked")?;
        let mut seen = HashSet::new();
        for w in workers {
            for v in w.join().map_err(|_| "a worker panicked")? {
                assert!(seen.insert(v), "{v:#x} popped twice");
            }
        }
        while let Some(v) = q.pop() {
            assert!(seen.insert(v), "{v:#x} popped twice");
        }
        let mut want: HashSet<u64> = (0..2u64)
            .flat_map(|w| (0..OPS).map(move |i| (w << 32) | i))
            .collect();
        want.extend((1..BLOCK_CAP as u64 - 1).map(|i| FILLER + i));
        want.insert(STALLED_CLAIM);
        want.insert(STALLED_LINK);
        assert_eq!(seen, want, "values lost or invented");
        assert_eq!(q.len(), 0);
        outcome
    }

    #[test]
    #[cfg_attr(miri, ignore)] // threads, channels and a watchdog: far too slow under Miri
    fn no_thread_waits_for_a_stalled_push() {
        run_with_stalled_pushes(false).unwrap();
    }

    /// The check above can fail: with pops that wait for their pusher, the watchdog fires.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn a_waiting_pop_fails_the_progress_check() {
        let outcome = run_with_stalled_pushes(true);
        assert!(
            outcome.is_err(),
            "pops that wait for a stalled pusher should have tripped the watchdog"
        );
    }

    /// A helper loads the block pointer of `head` while the pop that took the block's last slot
    /// is stalled before moving `head`; the helper is stalled in turn, the pop resumes, moves
    /// `head`, takes its value and, as the block's last user, retires the block while the helper
    /// still holds it. The main thread then pops the whole next block, whose retirement would
    /// push the first block off the reuse shelf and free it, were it there. The helper then reads
    /// the block. Without the helper count and the epoch fallback, that read is a use-after-free,
    /// which Miri reports (this test runs in the nightly tier's Miri half); with them the block is
    /// freed only after the helper unpins.
    #[test]
    fn a_helper_holding_a_block_while_its_last_user_retires_it() {
        let cap = BLOCK_CAP as u64;
        let collector = crossbeam_epoch::Collector::new();
        let q = Arc::new(MsQueue::with_collector(collector.clone()));
        // Three blocks' worth: the blocks after the first are linked now, so that nothing below
        // takes a block off the shelf.
        for i in 0..3 * cap {
            q.push(i);
        }
        for i in 0..cap - 1 {
            assert_eq!(q.pop(), Some(i));
        }
        let (last_user, resume_last) = {
            let q = Arc::clone(&q);
            spawn_stalled(hooks::Point::Linking, move || q.pop()).unwrap()
        };
        let (helper, resume_helper) = {
            let q = Arc::clone(&q);
            spawn_stalled(hooks::Point::Helping, move || q.pop()).unwrap()
        };
        resume_last.send(()).unwrap();
        assert_eq!(last_user.join().unwrap(), Some(cap - 1));
        for i in cap..2 * cap {
            assert_eq!(q.pop(), Some(i));
        }
        resume_helper.send(()).unwrap();
        assert_eq!(helper.join().unwrap(), Some(2 * cap));
        let rest: Vec<u64> = core::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest, (2 * cap + 1..3 * cap).collect::<Vec<_>>());
        drop(q);
        drop(collector);
    }

    #[test]
    fn len_counts_slots_across_blocks() {
        let q = MsQueue::new();
        for i in 0..3 * BLOCK_CAP + 5 {
            assert_eq!(q.len(), i);
            q.push(i);
        }
        for i in 0..3 * BLOCK_CAP + 5 {
            assert_eq!(q.pop(), Some(i));
            assert_eq!(q.len(), 3 * BLOCK_CAP + 4 - i);
        }
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }
}
