//! The cache's index: a fixed array of buckets, each an atomic pointer to an immutable array of
//! entry pointers, replaced copy-on-write by compare-and-swap.
//!
//! This is the "read-copy-update" bucket of lock-free hash tables in the style of Click's and of
//! RCU hash lists, on a table that never grows (a bounded cache does not need to): a reader loads
//! one bucket pointer and scans a short array, so `get` takes no lock, allocates nothing and never
//! waits for a writer; a writer builds the bucket's next array and swings the pointer with one
//! compare-and-swap, retrying on conflict, and retires the old array through crossbeam-epoch.
//! Entries themselves are immutable once published (but for their access counter and their
//! `dead` flag); a replaced value is a new entry.
//!
//! Entries are owned by the eviction policy's FIFOs, not by the index: every entry the index ever
//! published sits in exactly one FIFO until it is popped there, and only then is it retired to
//! the epoch (see `policy`). The index only publishes and unlinks them.

use crate::sync::{epoch, AtomicBool, AtomicU8, Ordering, Track};
use core::borrow::Borrow;
use epoch::{Atomic, Guard, Owned, Pointable, Shared};
use std::alloc::{self, Layout};

/// One key-value pair, immutable once published but for `freq` and `dead`.
pub(super) struct Entry<K, V> {
    pub(super) key: K,
    pub(super) value: V,
    pub(super) hash: u64,
    pub(super) weight: u64,
    /// S3-FIFO's 2-bit saturating access counter (0..=3), bumped by reads.
    pub(super) freq: AtomicU8,
    /// Set once the entry has left the index (removed, replaced, evicted or cleared): the FIFO
    /// that owns it can then retire it without looking it up.
    pub(super) dead: AtomicBool,
    /// Under loom, reports an entry that was never freed when a model ends.
    _track: Track<()>,
}

impl<K, V> Entry<K, V> {
    pub(super) fn new(key: K, value: V, hash: u64, weight: u64) -> Self {
        Self {
            key,
            value,
            hash,
            weight,
            freq: AtomicU8::new(0),
            dead: AtomicBool::new(false),
            _track: Track::new(()),
        }
    }

    /// Records an access: S3-FIFO's counter saturates at 3.
    #[inline]
    pub(super) fn touch(&self) {
        // Relaxed: the counter is a hint for the eviction policy; no memory is published through
        // it. A load and a store instead of a read-modify-write keep hot entries' cache lines
        // shared between readers; two racing readers may count once, which the policy tolerates.
        let f = self.freq.load(Ordering::Relaxed);
        if f < 3 {
            self.freq.store(f + 1, Ordering::Relaxed);
        }
    }

    /// Moves an entry to the heap. The pointer is the owner's: it is freed by the epoch after its
    /// FIFO pops it, by the cache's `Drop`, or by `reclaim` if it was never published.
    pub(super) fn allocate(self) -> EntryPtr<K, V> {
        Box::into_raw(Box::new(self))
    }

    /// Frees an entry that was never published, handing it back.
    ///
    /// # Safety
    ///
    /// `p` came from [`allocate`](Self::allocate), no other thread can reach it (it was never
    /// published, or every structure that held it is gone), no reference to it is alive, and it
    /// is not used after this call.
    pub(super) unsafe fn reclaim(p: EntryPtr<K, V>) -> Self {
        // SAFETY: the caller guarantees `p` is a `Box` of ours alone, as `allocate` made it.
        *unsafe { Box::from_raw(p.cast_mut()) }
    }
}

/// A pointer to an entry, as stored in buckets and FIFOs.
///
/// Every copy descends from the `Box::into_raw` that allocated the entry ([`Entry::allocate`]),
/// never from a `&Entry`: the pointer that frees an entry must carry the allocation's full
/// permission (under Tree Borrows, a pointer derived from a shared reference may only read).
pub(super) type EntryPtr<K, V> = *const Entry<K, V>;

/// A bucket's array: its length, then that many entry pointers, in one allocation. Filled by
/// `build` before publication and never changed after it.
///
/// The crate implements crossbeam-epoch's `Pointable` for it rather than using the epoch's own
/// `[MaybeUninit<T>]` arrays: their `DerefMut` hands out a `&mut` slice derived from a shared
/// reference, so filling one is a write that Tree Borrows (and Miri) rejects. Here every
/// reference comes from the allocation's own pointer.
#[repr(C)]
pub(super) struct Slots<K, V> {
    len: usize,
    ptrs: [EntryPtr<K, V>],
}

impl<K, V> Slots<K, V> {
    /// The offset of the pointers from the start of the allocation: just past the header, as
    /// `repr(C)` lays it out (a pointer is aligned as a `usize`).
    const PTRS: usize = core::mem::size_of::<usize>();

    /// The allocation of an array of `len` pointers, header included.
    fn layout(len: usize) -> Layout {
        let (layout, offset) = Layout::new::<usize>()
            .extend(Layout::array::<EntryPtr<K, V>>(len).expect("bucket array too long"))
            .expect("bucket array too long");
        debug_assert_eq!(offset, Self::PTRS);
        layout.pad_to_align()
    }

    /// The wide pointer to the array at `ptr`, its length read from the header.
    ///
    /// # Safety
    ///
    /// `ptr` came from `init` and has not been dropped.
    unsafe fn wide(ptr: usize) -> *mut Self {
        // SAFETY: the caller guarantees a live array, whose header `init` wrote.
        let len = unsafe { *(ptr as *const usize) };
        // A slice pointer cast to a struct whose last field is a slice keeps the address and the
        // length: here the header's address and the pointers' count.
        core::ptr::slice_from_raw_parts_mut(ptr as *mut EntryPtr<K, V>, len) as *mut Self
    }

    /// The entry pointers.
    #[inline]
    fn entries(&self) -> &[EntryPtr<K, V>] {
        debug_assert_eq!(self.len, self.ptrs.len());
        &self.ptrs
    }
}

impl<K, V> Pointable for Slots<K, V> {
    const ALIGN: usize = core::mem::align_of::<usize>();

    /// The number of pointers. They start null; `build` fills them.
    type Init = usize;

    unsafe fn init(len: usize) -> usize {
        let layout = Self::layout(len);
        // SAFETY: the layout is never zero-sized: it holds the header.
        let base = unsafe { alloc::alloc(layout) };
        if base.is_null() {
            alloc::handle_alloc_error(layout);
        }
        // SAFETY: `base` is a fresh allocation of `layout`, aligned for `usize`; the header is at
        // offset 0.
        unsafe { base.cast::<usize>().write(len) };
        // SAFETY: the pointers start at `PTRS`, inside the allocation (`layout` holds them).
        let ptrs = unsafe { base.add(Self::PTRS) }.cast::<EntryPtr<K, V>>();
        for i in 0..len {
            // SAFETY: `i < len`, so inside the allocation (`layout` holds `len` pointers).
            let slot = unsafe { ptrs.add(i) };
            // SAFETY: aligned and inside the allocation; initialising every pointer makes the
            // array readable as soon as it exists.
            unsafe { slot.write(core::ptr::null()) };
        }
        base as usize
    }

    unsafe fn deref<'a>(ptr: usize) -> &'a Self {
        // SAFETY: the epoch's contract: `ptr` came from `init` and is not dropped.
        let wide = unsafe { Self::wide(ptr) };
        // SAFETY: a live array (as above), and nobody holds it mutably (the epoch's contract).
        unsafe { &*wide }
    }

    unsafe fn deref_mut<'a>(ptr: usize) -> &'a mut Self {
        // SAFETY: as in `deref`.
        let wide = unsafe { Self::wide(ptr) };
        // SAFETY: a live array, and nobody else holds it at all (the epoch's contract).
        unsafe { &mut *wide }
    }

    unsafe fn drop(ptr: usize) {
        // SAFETY: `ptr` came from `init` and is dropped once (the epoch's contract).
        let len = unsafe { *(ptr as *const usize) };
        // SAFETY: allocated by `init` with this very layout (the header holds its length).
        // Dropping the array drops no entry: it holds raw pointers.
        unsafe { alloc::dealloc(ptr as *mut u8, Self::layout(len)) };
    }
}

/// Builds a bucket array of the `len` pointers `ptrs` yields, or returns null for an empty
/// bucket.
fn build<'g, K, V>(
    len: usize,
    ptrs: impl Iterator<Item = EntryPtr<K, V>>,
    guard: &'g Guard,
) -> Shared<'g, Slots<K, V>> {
    if len == 0 {
        return Shared::null();
    }
    let mut array = Owned::<Slots<K, V>>::init(len);
    let mut filled = 0;
    for (slot, p) in array.ptrs.iter_mut().zip(ptrs) {
        *slot = p;
        filled += 1;
    }
    assert_eq!(filled, len, "bucket array built short");
    array.into_shared(guard)
}

/// A copy of `slots` with the pointer at `i` replaced by `p`.
fn with_slot<'g, K, V>(
    slots: &[EntryPtr<K, V>],
    i: usize,
    p: EntryPtr<K, V>,
    guard: &'g Guard,
) -> Shared<'g, Slots<K, V>> {
    build(
        slots.len(),
        slots
            .iter()
            .enumerate()
            .map(|(j, &q)| if i == j { p } else { q }),
        guard,
    )
}

/// The bucket array: fixed at construction, a power of two long.
pub(super) struct Index<K, V> {
    buckets: Box<[Atomic<Slots<K, V>>]>,
}

impl<K, V> Index<K, V> {
    /// An index of at least `n` buckets (rounded up to a power of two, at least 1).
    pub(super) fn new(n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        Self {
            buckets: (0..n).map(|_| Atomic::null()).collect(),
        }
    }

    pub(super) fn buckets(&self) -> usize {
        self.buckets.len()
    }

    #[inline]
    fn bucket(&self, hash: u64) -> &Atomic<Slots<K, V>> {
        // The length is a power of two. The low bits pick the bucket; the ghost list uses others.
        &self.buckets[(hash as usize) & (self.buckets.len() - 1)]
    }

    /// Loads a bucket: its array pointer (for a later compare-and-swap) and its entries.
    #[inline]
    #[allow(clippy::type_complexity)]
    fn load<'g>(
        &self,
        hash: u64,
        guard: &'g Guard,
    ) -> (Shared<'g, Slots<K, V>>, &'g [EntryPtr<K, V>]) {
        // Acquire: pairs with the Release compare-and-swap that published this array, so the
        // array and the entries it points to (published before it) are fully visible.
        let cur = self.bucket(hash).load(Ordering::Acquire, guard);
        // SAFETY: loaded under `guard`: a replaced array is retired through the epoch, so it stays
        // allocated until `guard` drops; `as_ref` handles the empty (null) bucket.
        let slots = unsafe { cur.as_ref() }.map_or(&[][..], Slots::entries);
        (cur, slots)
    }

    /// The entry for `key` in the bucket of `hash`, if any.
    #[inline]
    pub(super) fn find<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        guard: &'g Guard,
    ) -> Option<&'g Entry<K, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let (_, slots) = self.load(hash, guard);
        slots.iter().find_map(|&p| {
            // SAFETY: an entry published in a bucket loaded under `guard` is retired only after it
            // left every bucket, through the epoch: it stays allocated until `guard` drops.
            let e = unsafe { &*p };
            (e.hash == hash && e.key.borrow() == key).then_some(e)
        })
    }

    /// Publishes `new_ptr` (allocated by this thread and not yet published anywhere), replacing
    /// the entry with the same key if there is one; returns the replaced entry. Lock-free.
    pub(super) fn upsert<'g>(
        &self,
        new_ptr: EntryPtr<K, V>,
        guard: &'g Guard,
    ) -> Option<&'g Entry<K, V>>
    where
        K: Eq,
    {
        // SAFETY: the caller's entry is allocated and freed only after it has been published and
        // then retired, which cannot happen before this call returns.
        let new = unsafe { &*new_ptr };
        let backoff = crate::sync::Backoff::new();
        loop {
            let (cur, slots) = self.load(new.hash, guard);
            let old = slots.iter().position(|&p| {
                // SAFETY: as in `find`.
                let e = unsafe { &*p };
                e.hash == new.hash && e.key == new.key
            });
            let next = match old {
                Some(i) => with_slot(slots, i, new_ptr, guard),
                None => build(
                    slots.len() + 1,
                    slots.iter().copied().chain(core::iter::once(new_ptr)),
                    guard,
                ),
            };
            if self.swap_bucket(new.hash, cur, next, guard) {
                // SAFETY: as in `find`; the entry stays allocated for `guard`'s life.
                return old.map(|i| unsafe { &*slots[i] });
            }
            backoff.spin();
        }
    }

    /// Replaces the entry `expected` (by identity) with `new` (allocated by this thread, not yet
    /// published), or unlinks it if `new` is `None`, provided it is still in its bucket. Returns
    /// `false` if it is not. Lock-free.
    pub(super) fn replace(
        &self,
        expected: &Entry<K, V>,
        new: Option<EntryPtr<K, V>>,
        guard: &Guard,
    ) -> bool {
        let backoff = crate::sync::Backoff::new();
        let expected_ptr: EntryPtr<K, V> = expected;
        loop {
            let (cur, slots) = self.load(expected.hash, guard);
            let Some(i) = slots.iter().position(|&p| p == expected_ptr) else {
                return false;
            };
            let next = match new {
                Some(new) => with_slot(slots, i, new, guard),
                None => build(
                    slots.len() - 1,
                    slots
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, &p)| p),
                    guard,
                ),
            };
            if self.swap_bucket(expected.hash, cur, next, guard) {
                return true;
            }
            backoff.spin();
        }
    }

    /// Swings a bucket from `cur` to `next`; on success retires `cur`, on failure frees `next`.
    fn swap_bucket<'g>(
        &self,
        hash: u64,
        cur: Shared<'g, Slots<K, V>>,
        next: Shared<'g, Slots<K, V>>,
        guard: &'g Guard,
    ) -> bool {
        // Release: publishes the new array and the entries it points to; pairs with the Acquire
        // load in `load`. Relaxed on failure: the caller retries from a fresh Acquire load.
        match self.bucket(hash).compare_exchange(
            cur,
            next,
            Ordering::Release,
            Ordering::Relaxed,
            guard,
        ) {
            Ok(_) => {
                if !cur.is_null() {
                    // SAFETY: `cur` is no longer reachable from the bucket, and readers that
                    // loaded it are pinned: the epoch frees it after they unpin. Dropping an array
                    // of raw pointers drops no entry.
                    unsafe { guard.defer_destroy(cur) };
                }
                true
            }
            Err(_) => {
                if !next.is_null() {
                    // SAFETY: `next` was built by this thread and never published.
                    drop(unsafe { next.into_owned() });
                }
                false
            }
        }
    }

    /// Empties every bucket and returns the entries that were in them (now unlinked).
    pub(super) fn take_all<'g>(&self, guard: &'g Guard) -> Vec<&'g Entry<K, V>> {
        let mut taken = Vec::new();
        for bucket in self.buckets.iter() {
            // AcqRel: Acquire as in `load` (we read the entries), Release so that a later
            // writer's Acquire load sees the bucket emptied after our reads.
            let cur = bucket.swap(Shared::null(), Ordering::AcqRel, guard);
            // SAFETY: as in `load`.
            if let Some(slots) = unsafe { cur.as_ref() } {
                // SAFETY: as in `find`.
                taken.extend(slots.entries().iter().map(|&p| unsafe { &*p }));
                // SAFETY: unreachable now; readers that loaded it are pinned.
                unsafe { guard.defer_destroy(cur) };
            }
        }
        taken
    }

    /// Frees every bucket array (not the entries) through exclusive access.
    pub(super) fn free_arrays(&mut self) {
        // SAFETY: `&mut self`: no other thread can reach the index.
        let guard = unsafe { epoch::unprotected() };
        for bucket in self.buckets.iter() {
            // Relaxed: exclusive access.
            let cur = bucket.swap(Shared::null(), Ordering::Relaxed, guard);
            if !cur.is_null() {
                // SAFETY: unreachable now, and no other thread can hold it (exclusive access).
                drop(unsafe { cur.into_owned() });
            }
        }
    }
}
