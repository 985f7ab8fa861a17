//! The cache's index: a fixed array of buckets, each an atomic word holding nothing, one entry
//! pointer, or a pointer to an immutable array of entry pointers; a bucket changes by
//! compare-and-swap of its word, copy-on-write.
//!
//! This is the "read-copy-update" bucket of lock-free hash tables in the style of Click's and of
//! RCU hash lists, on a table that never grows (a bounded cache does not need to): a reader loads
//! one bucket word and checks its entry or scans its short array, so `get` takes no lock,
//! allocates nothing and never waits for a writer; a writer builds the bucket's next word and
//! swings it with one compare-and-swap, retrying on conflict, and retires a replaced array
//! through crossbeam-epoch. Entries themselves are immutable once published (but for their
//! access counter); a replaced value is a new entry.
//!
//! A bucket of one entry, the most common kind, holds the entry's pointer itself (tagged in its
//! low bit): a hit then takes two dependent loads after the table (bucket word, entry) instead
//! of three, and replacing, adding the first entry or removing the last allocates and retires
//! nothing.
//!
//! The index owns its entries: an entry is published once and leaves the index once, by the
//! one compare-and-swap that swings it out of its bucket, and the thread whose swap that was
//! retires it to the epoch (the unlinking methods hand it the entry's pointer for that). The
//! eviction policy's FIFOs hold no entries, only each key's *handle*: a number an entry carries,
//! given to a key when it is added and copied into every entry that replaces it, so that a
//! replacement keeps its key's place in the FIFOs without touching them (see `policy`).

use crate::sync::{epoch, AtomicPtr, AtomicU64, Ordering, Track};
use core::borrow::Borrow;
use core::marker::PhantomData;
use epoch::Guard;
use std::alloc::{self, Layout};

/// One key-value pair, immutable once published but for `access`.
///
/// `repr(C)` keeps what a hit reads (the hash, the key, the value, the access word) together
/// at the front, in that order, and the weight, which only writers read, behind them, then the
/// expiry deadline, which a hit reads only in a cache that has ever set one, then the handle,
/// which only the eviction policy reads: entries
/// are 16-byte aligned by the allocator, so with small keys and values a hit then touches one
/// cache line where the compiler's own order (the `u64`s first, the counter last) often
/// straddled two.
#[repr(C)]
pub(super) struct Entry<K, V> {
    pub(super) hash: u64,
    pub(super) key: K,
    pub(super) value: V,
    /// The access word: S3-FIFO's 2-bit saturating access counter (0..=3, bumped by reads) in
    /// its low [`FREQ_BITS`] bits, and above them, in a cache with a time-to-idle, the tick of
    /// the entry's latest access (see [`Idle`]; always 0 otherwise). One word, so that a hit
    /// that refreshes both does it with one compare-and-swap, and a cache without a time-to-idle
    /// pays no byte for it: the word takes the room the counter's alignment padding took.
    access: AtomicU64,
    pub(super) weight: u64,
    /// When the entry expires, in nanoseconds of the cache's clock: it is expired once the clock
    /// reads this or later. `u64::MAX` for never.
    pub(super) deadline: u64,
    /// The key's handle in the eviction policy's FIFOs: fresh when the key was added, inherited
    /// from the entry it replaced otherwise. Written only before the entry is published (by
    /// [`Index::publish`] and [`Index::replace`], whose Release compare-and-swap publishes it),
    /// read only after.
    pub(super) handle: AtomicU64,
    /// Under loom, reports an entry that was never freed when a model ends.
    _track: Track<()>,
}

/// The low bits of [`Entry::access`] that hold the access counter.
const FREQ_BITS: u32 = 2;
/// The counter's mask in [`Entry::access`].
const FREQ: u64 = (1 << FREQ_BITS) - 1;

/// How many ticks a time-to-idle spans: an entry's latest access is recorded to a tick of
/// 1/`GRAINS` of the time-to-idle, so it expires at most that much after its time-to-idle, and a
/// hit stores to the entry at most once per tick.
const GRAINS: u64 = 16;

/// A time-to-idle, and the ticks its entries record their latest access in.
///
/// An entry expires once it has gone `limit` nanoseconds without an access (a read by `get`, or
/// its insertion). Recording the exact time of every access would make every hit store to its
/// entry; instead an entry keeps the tick (`grain` nanoseconds, `limit / GRAINS`) of its latest
/// access, and a hit stores only when the tick has moved on. The latest access then lies
/// somewhere in its tick, so the entry expires once the tick's *last* nanosecond is `limit` old:
/// never before its time-to-idle has passed, and less than one tick after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Idle {
    limit: u64,
    grain: u64,
}

impl Idle {
    /// A time-to-idle of `limit` nanoseconds.
    pub(super) fn new(limit: u64) -> Self {
        Self {
            limit,
            grain: (limit / GRAINS).max(1),
        }
    }

    /// The tick of time `now`: as many as fit above the counter's bits (they run out after
    /// 2^62 ticks, 146 years of nanoseconds).
    #[inline]
    pub(super) fn tick(self, now: u64) -> u64 {
        (now / self.grain).min(u64::MAX >> FREQ_BITS)
    }

    /// Whether an entry whose latest access fell in `tick` is idle past the limit at `now`.
    #[inline]
    fn expired(self, tick: u64, now: u64) -> bool {
        // The tick's last nanosecond, the latest the access can have been; `tick * grain` is at
        // most the time the tick was taken, so it does not overflow.
        let last = (tick * self.grain).saturating_add(self.grain - 1);
        now >= last.saturating_add(self.limit)
    }
}

/// The time a cache judges expiry at, and its time-to-idle if it has one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Moment {
    pub(super) now: u64,
    pub(super) idle: Option<Idle>,
}

impl<K, V> Entry<K, V> {
    /// An entry not yet published. `tick` is its access tick (see [`Idle`]), 0 in a cache
    /// without a time-to-idle.
    pub(super) fn new(key: K, value: V, hash: u64, weight: u64, deadline: u64, tick: u64) -> Self {
        Self {
            key,
            value,
            hash,
            weight,
            deadline,
            access: AtomicU64::new(tick << FREQ_BITS),
            handle: AtomicU64::new(0),
            _track: Track::new(()),
        }
    }

    /// Whether the entry has expired at `at`: past its deadline, if it has one, or idle too long
    /// in a cache with a time-to-idle.
    #[inline]
    pub(super) fn expired_at(&self, at: Moment) -> bool {
        (self.deadline != u64::MAX && at.now >= self.deadline)
            || at.idle.is_some_and(|idle| {
                // Relaxed: the access tick is a time, not a publication. A reader that must see
                // an access (one that happens before its check) sees it by coherence: the
                // access's store happens before the check's load.
                idle.expired(self.access.load(Ordering::Relaxed) >> FREQ_BITS, at.now)
            })
    }

    /// The access counter (0..=3).
    #[inline]
    pub(super) fn freq(&self) -> u8 {
        // Relaxed: a hint for the eviction policy; no memory is published through it.
        (self.access.load(Ordering::Relaxed) & FREQ) as u8
    }

    /// Sets the access counter to `freq` (at most 3). With `keep_tick` (a cache with a
    /// time-to-idle) the access tick is kept, by a compare-and-swap, so that a racing hit's
    /// refresh is never undone; without, a plain store (the tick is always 0 there).
    #[inline]
    pub(super) fn set_freq(&self, freq: u8, keep_tick: bool) {
        let freq = u64::from(freq.min(3));
        // Relaxed: a hint, as in `freq`; the tick is a time, as in `expired_at`.
        if keep_tick {
            let _ = self
                .access
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                    Some((w & !FREQ) | freq)
                });
        } else {
            self.access.store(freq, Ordering::Relaxed);
        }
    }

    /// Records an access: S3-FIFO's counter saturates at 3. Returns whether this was the
    /// entry's first read since it was queued (or since the eviction policy last took a pass
    /// off it down to 0). For a cache without a time-to-idle.
    #[inline]
    pub(super) fn touch(&self) -> bool {
        // Relaxed: the counter is a hint for the eviction policy; no memory is published through
        // it. A load and a store instead of a read-modify-write keep hot entries' cache lines
        // shared between readers; two racing readers may count once, which the policy tolerates.
        // The tick bits are 0 in a cache without a time-to-idle, so the word is the counter.
        let f = self.access.load(Ordering::Relaxed);
        debug_assert!(f <= FREQ, "touch in a cache with a time-to-idle");
        if f < 3 {
            self.access.store(f + 1, Ordering::Relaxed);
        }
        f == 0
    }

    /// [`touch`](Self::touch) in a cache with a time-to-idle: also moves the access tick up to
    /// `tick`. Stores nothing when neither changes (a hot entry's counter is saturated and its
    /// tick is current), so a hit writes its entry at most once per tick; when something does
    /// change, a compare-and-swap, so that a racing hit's later tick or the policy's counter is
    /// never lost. Lock-free: a failed swap means another thread changed the word.
    #[inline]
    pub(super) fn touch_at(&self, tick: u64) -> bool {
        // Relaxed: as in `touch` and `expired_at`.
        let mut w = self.access.load(Ordering::Relaxed);
        loop {
            let f = w & FREQ;
            let t = (w >> FREQ_BITS).max(tick);
            let next = (t << FREQ_BITS) | (f + 1).min(3);
            if next == w {
                return f == 0;
            }
            match self
                .access
                .compare_exchange_weak(w, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return f == 0,
                Err(now) => w = now,
            }
        }
    }

    /// The key's handle (see the field).
    #[inline]
    pub(super) fn handle(&self) -> u64 {
        // Relaxed: written before publication, and read by threads that found the entry through
        // a bucket's Acquire load (or by the thread that wrote it).
        self.handle.load(Ordering::Relaxed)
    }

    /// Sets the handle of an entry not yet published.
    #[inline]
    fn set_handle(&self, handle: u64) {
        // Relaxed: published by the Release compare-and-swap that publishes the entry.
        self.handle.store(handle, Ordering::Relaxed);
    }

    /// Moves an entry to the heap. The pointer is the owner's: it is freed by the epoch after the
    /// thread that unlinks it from the index retires it, by the cache's `Drop` while it is in the
    /// index, or by `reclaim` if it was never published.
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

/// An entry just unlinked from the index: its allocating pointer, to retire it, and a borrow of
/// it for the unlinking thread's guard.
pub(super) type Unlinked<'g, K, V> = (EntryPtr<K, V>, &'g Entry<K, V>);

/// The tag on a bucket word that holds one entry pointer rather than an array: an entry holds a
/// `u64`, so it is aligned to at least 4 bytes and its address has its low bit clear.
const ONE: usize = 1;

/// The offset of an array's pointers from the start of its allocation: just past its length.
const PTRS: usize = core::mem::size_of::<usize>();

/// What a bucket word holds, decoded.
///
/// A bucket word is null (no entry), an entry pointer tagged with [`ONE`] (exactly one entry: the
/// common case, read with one load less and replaced without allocating), or an array of two or
/// more entry pointers: one allocation holding its length, then the pointers. Arrays are filled
/// before publication and never changed after it; entries and arrays alike are replaced whole
/// by compare-and-swap on the word.
enum Bucket<'g, K, V> {
    One(EntryPtr<K, V>),
    Many(&'g [EntryPtr<K, V>]),
}

impl<K, V> Bucket<'_, K, V> {
    /// The bucket's entry pointers.
    #[inline]
    fn entries(&self) -> &[EntryPtr<K, V>] {
        match self {
            Bucket::One(p) => core::slice::from_ref(p),
            Bucket::Many(ptrs) => ptrs,
        }
    }
}

/// The allocation of an array of `len` pointers, length included.
fn layout<K, V>(len: usize) -> Layout {
    let (layout, offset) = Layout::new::<usize>()
        .extend(Layout::array::<EntryPtr<K, V>>(len).expect("bucket array too long"))
        .expect("bucket array too long");
    debug_assert_eq!(offset, PTRS);
    layout.pad_to_align()
}

/// Decodes a bucket word loaded under `guard`.
///
/// # Safety
///
/// `word` was loaded from a bucket under `guard` (so an array it points to is not freed before
/// `guard` drops: replaced arrays are retired through the epoch).
#[inline]
unsafe fn decode<'g, K, V>(word: *mut u8, _guard: &'g Guard) -> Bucket<'g, K, V> {
    // SAFETY: the caller's guard keeps an array `word` points to allocated for `'g`.
    unsafe { decode_for(word) }
}

/// [`decode`] for a lifetime the caller vouches for.
///
/// # Safety
///
/// An array `word` points to stays allocated and unchanged for `'a`.
#[inline]
unsafe fn decode_for<'a, K, V>(word: *mut u8) -> Bucket<'a, K, V> {
    if word.is_null() {
        Bucket::Many(&[])
    } else if word as usize & ONE != 0 {
        // Strip the tag; `wrapping_sub` keeps the pointer's provenance (that of the entry's
        // `Box::into_raw`, see `EntryPtr`).
        Bucket::One(word.wrapping_sub(ONE).cast::<Entry<K, V>>().cast_const())
    } else {
        // SAFETY: an untagged, non-null word is an array that `build` wrote (its length at
        // offset 0, then that many initialised pointers) and published before this load; the
        // caller vouches that it stays allocated.
        let len = unsafe { word.cast::<usize>().read() };
        // SAFETY: the pointers start at `PTRS`, inside the same allocation.
        let ptrs = unsafe { word.add(PTRS) }.cast::<EntryPtr<K, V>>();
        // SAFETY: `len` initialised pointers at `ptrs`, allocated for `'a` and never written
        // after publication.
        Bucket::Many(unsafe { core::slice::from_raw_parts(ptrs, len) })
    }
}

/// Builds the bucket word for the `len` pointers `ptrs` yields: null, one tagged entry pointer,
/// or a new array.
fn build<K, V>(len: usize, mut ptrs: impl Iterator<Item = EntryPtr<K, V>>) -> *mut u8 {
    match len {
        0 => core::ptr::null_mut(),
        1 => {
            let p = ptrs.next().expect("bucket array built short");
            debug_assert_eq!(p as usize & ONE, 0, "an entry pointer with its low bit set");
            // `wrapping_add` keeps the entry pointer's provenance.
            p.cast_mut().cast::<u8>().wrapping_add(ONE)
        }
        _ => {
            let layout = layout::<K, V>(len);
            // SAFETY: the layout is never zero-sized: it holds the length.
            let base = unsafe { alloc::alloc(layout) };
            if base.is_null() {
                alloc::handle_alloc_error(layout);
            }
            // SAFETY: a fresh allocation of `layout`, aligned for `usize`; the length is at 0.
            unsafe { base.cast::<usize>().write(len) };
            // SAFETY: the pointers start at `PTRS`, inside the allocation.
            let slots = unsafe { base.add(PTRS) }.cast::<EntryPtr<K, V>>();
            let mut filled = 0;
            for p in ptrs.take(len) {
                // SAFETY: `filled < len`: inside the allocation.
                let slot = unsafe { slots.add(filled) };
                // SAFETY: aligned and inside the allocation; nobody else can see the array yet.
                unsafe { slot.write(p) };
                filled += 1;
            }
            assert_eq!(filled, len, "bucket array built short");
            base
        }
    }
}

/// Frees what a bucket word owns itself: an array (its entries are retired one by one by
/// whoever unlinks them, and null owns nothing).
///
/// # Safety
///
/// `word` came from `build`, no thread can reach it any more (it was never published, or every
/// thread that may have loaded it has unpinned), and it is freed once.
unsafe fn free<K, V>(word: *mut u8) {
    if word.is_null() || word as usize & ONE != 0 {
        return;
    }
    // SAFETY: an array `build` allocated, its length at offset 0.
    let len = unsafe { word.cast::<usize>().read() };
    // SAFETY: allocated by `build` with the layout of that length; freed once (the caller).
    unsafe { alloc::dealloc(word, layout::<K, V>(len)) };
}

/// Retires a bucket word that was just swung out of its bucket: an array is freed after every
/// thread pinned now has unpinned.
///
/// # Safety
///
/// As for [`free`], except that threads pinned under the current epoch may still read it.
unsafe fn retire<K, V>(word: *mut u8, guard: &Guard) {
    if word.is_null() || word as usize & ONE != 0 {
        return;
    }
    let free_later = move || {
        // SAFETY: the epoch runs this once, after every thread that could reach the array (the
        // threads pinned when it left its bucket) has unpinned; nothing else frees it.
        unsafe { free::<K, V>(word) }
    };
    // SAFETY: the epoch's contract for `defer_unchecked`: the closure may run on another thread
    // and after `guard` drops; it only frees an array of plain pointers, which is sound anywhere
    // and at any time after the last reader (see above).
    unsafe { guard.defer_unchecked(free_later) };
}

/// A copy of `slots` with the pointer at `i` replaced by `p`.
fn with_slot<K, V>(slots: &[EntryPtr<K, V>], i: usize, p: EntryPtr<K, V>) -> *mut u8 {
    build(
        slots.len(),
        slots
            .iter()
            .enumerate()
            .map(|(j, &q)| if i == j { p } else { q }),
    )
}

/// The bucket array: fixed at construction, a power of two long.
pub(super) struct Index<K, V> {
    /// Bucket words, as [`Bucket`] describes them.
    buckets: Box<[AtomicPtr<u8>]>,
    _entries: PhantomData<EntryPtr<K, V>>,
}

impl<K, V> Index<K, V> {
    /// An index of at least `n` buckets (rounded up to a power of two, at least 1).
    pub(super) fn new(n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        Self {
            buckets: (0..n)
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect(),
            _entries: PhantomData,
        }
    }

    pub(super) fn buckets(&self) -> usize {
        self.buckets.len()
    }

    #[inline]
    fn bucket(&self, hash: u64) -> &AtomicPtr<u8> {
        // The length is a power of two. The low bits pick the bucket; the ghost list uses others.
        &self.buckets[(hash as usize) & (self.buckets.len() - 1)]
    }

    /// Loads a bucket: its word (for a later compare-and-swap) and its entries.
    #[inline]
    fn load<'g>(&self, hash: u64, guard: &'g Guard) -> (*mut u8, Bucket<'g, K, V>) {
        // Acquire: pairs with the Release compare-and-swap that published this word, so the
        // array and the entries it points to (published before it) are fully visible.
        let word = self.bucket(hash).load(Ordering::Acquire);
        // SAFETY: loaded from a bucket under `guard`.
        (word, unsafe { decode(word, guard) })
    }

    /// The entry in the bucket of `hash` whose key holds `handle`, if any: the key's current
    /// entry, for the eviction policy.
    pub(super) fn find_handle<'g>(
        &self,
        hash: u64,
        handle: u64,
        guard: &'g Guard,
    ) -> Option<&'g Entry<K, V>> {
        self.load(hash, guard).1.entries().iter().find_map(|&p| {
            // SAFETY: as in `find`.
            let e: &'g Entry<K, V> = unsafe { &*p };
            (e.handle() == handle).then_some(e)
        })
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
        let matches = |p: EntryPtr<K, V>| {
            // SAFETY: an entry published in a bucket loaded under `guard` is retired only after it
            // left every bucket, through the epoch: it stays allocated until `guard` drops.
            let e: &'g Entry<K, V> = unsafe { &*p };
            (e.hash == hash && e.key.borrow() == key).then_some(e)
        };
        match self.load(hash, guard).1 {
            Bucket::One(p) => matches(p),
            Bucket::Many(ptrs) => ptrs.iter().find_map(|&p| matches(p)),
        }
    }

    /// Calls `f` on each entry of bucket `i` (of [`buckets`](Self::buckets)), as one load of its
    /// word found them: distinct keys, each in the index at the moment of the load.
    pub(super) fn visit<'g>(&self, i: usize, guard: &'g Guard, mut f: impl FnMut(&'g Entry<K, V>))
    where
        K: 'g,
        V: 'g,
    {
        // Acquire: as in `load`.
        let word = self.buckets[i].load(Ordering::Acquire);
        // SAFETY: loaded from a bucket under `guard`.
        let bucket = unsafe { decode::<K, V>(word, guard) };
        for &p in bucket.entries() {
            // SAFETY: as in `find`.
            f(unsafe { &*p });
        }
    }

    /// Publishes `new_ptr` (allocated by this thread and not yet published anywhere). If its
    /// bucket holds an entry with the same key, `replace` decides: that entry is swapped out
    /// ([`Published::Replaced`], the new entry inheriting its handle; the caller retires it) or
    /// kept, and `new_ptr` left unpublished ([`Published::Present`]). If the key is absent, the
    /// new entry takes a handle from `fresh` (called at most once) and is [`Published::Added`].
    /// Lock-free.
    pub(super) fn publish<'g>(
        &self,
        new_ptr: EntryPtr<K, V>,
        replace: bool,
        mut fresh: impl FnMut() -> u64,
        guard: &'g Guard,
    ) -> Published<'g, K, V>
    where
        K: Eq,
    {
        // SAFETY: the caller's entry is allocated and freed only after it has been published and
        // then retired, which cannot happen before this call returns.
        let new = unsafe { &*new_ptr };
        let backoff = crate::sync::Backoff::new();
        let mut fresh_handle = None;
        loop {
            let (cur, bucket) = self.load(new.hash, guard);
            let slots = bucket.entries();
            let same_key = slots.iter().position(|&p| {
                // SAFETY: as in `find`.
                let e = unsafe { &*p };
                e.hash == new.hash && e.key == new.key
            });
            // SAFETY: as in `find`; the entry stays allocated for `guard`'s life.
            let old = same_key.map(|i| (i, unsafe { &*slots[i] }));
            let next = match old {
                Some(_) if !replace => return Published::Present,
                Some((i, e)) => {
                    new.set_handle(e.handle());
                    with_slot(slots, i, new_ptr)
                }
                None => {
                    new.set_handle(*fresh_handle.get_or_insert_with(&mut fresh));
                    build(
                        slots.len() + 1,
                        slots.iter().copied().chain(core::iter::once(new_ptr)),
                    )
                }
            };
            if self.swap_bucket(new.hash, cur, next, guard) {
                return match old {
                    Some((i, e)) => Published::Replaced(slots[i], e),
                    None => Published::Added,
                };
            }
            backoff.spin();
        }
    }

    /// Replaces the entry `expected` (by identity) with `new` (allocated by this thread, not yet
    /// published, and given `expected`'s handle here), or unlinks it if `new` is `None`,
    /// provided it is still in its bucket. Returns its allocating pointer, for the caller to
    /// retire: it left the index by this call. `None` if it is not in its bucket (another thread
    /// unlinked it, and retires it). Lock-free.
    pub(super) fn replace(
        &self,
        expected: &Entry<K, V>,
        new: Option<EntryPtr<K, V>>,
        guard: &Guard,
    ) -> Option<EntryPtr<K, V>> {
        let backoff = crate::sync::Backoff::new();
        let expected_ptr: EntryPtr<K, V> = expected;
        if let Some(new) = new {
            // SAFETY: allocated by the caller and not yet published: alive, and ours to write.
            unsafe { &*new }.set_handle(expected.handle());
        }
        loop {
            let (cur, bucket) = self.load(expected.hash, guard);
            let slots = bucket.entries();
            let i = slots.iter().position(|&p| p == expected_ptr)?;
            let next = match new {
                Some(new) => with_slot(slots, i, new),
                None => build(
                    slots.len() - 1,
                    slots
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, &p)| p),
                ),
            };
            if self.swap_bucket(expected.hash, cur, next, guard) {
                // The bucket's copy, not `expected_ptr`: it descends from the entry's allocation.
                return Some(slots[i]);
            }
            backoff.spin();
        }
    }

    /// Swings a bucket from `cur` to `next`; on success retires `cur`, on failure frees `next`.
    fn swap_bucket(&self, hash: u64, cur: *mut u8, next: *mut u8, guard: &Guard) -> bool {
        // Release: publishes the new array and the entries it points to; pairs with the Acquire
        // load in `load`. Relaxed on failure: the caller retries from a fresh Acquire load.
        match self
            .bucket(hash)
            .compare_exchange(cur, next, Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => {
                // The word may have left and come back since our load (an entry alone, then
                // with another, then alone again): harmless, as a word fixes the bucket's
                // contents, and neither an array nor an entry we loaded can be freed and its
                // address reused while we are pinned. So the bucket held exactly what we read.
                // SAFETY: `cur` left the bucket by our compare-and-swap, and readers that loaded
                // it are pinned. Retiring an array drops no entry; an entry that left the index
                // is retired by our caller.
                unsafe { retire::<K, V>(cur, guard) };
                true
            }
            Err(_) => {
                // SAFETY: `next` was built by this thread and never published.
                unsafe { free::<K, V>(next) };
                false
            }
        }
    }

    /// Empties every bucket and returns the entries that were in them (now unlinked, for the
    /// caller to retire): each entry's allocating pointer and a borrow of it.
    pub(super) fn take_all<'g>(&self, guard: &'g Guard) -> Vec<Unlinked<'g, K, V>> {
        let mut taken = Vec::new();
        for bucket in self.buckets.iter() {
            // AcqRel: Acquire as in `load` (we read the entries), Release so that a later
            // writer's Acquire load sees the bucket emptied after our reads.
            let word = bucket.swap(core::ptr::null_mut(), Ordering::AcqRel);
            // SAFETY: swapped out of a bucket under `guard`: an array in it is ours to retire,
            // and stays allocated meanwhile.
            let entries = unsafe { decode::<K, V>(word, guard) };
            // SAFETY: as in `find`.
            taken.extend(entries.entries().iter().map(|&p| (p, unsafe { &*p })));
            // SAFETY: unreachable now; readers that loaded it are pinned.
            unsafe { retire::<K, V>(word, guard) };
        }
        taken
    }

    /// Drops every entry still in the index, and frees every bucket array, through exclusive
    /// access.
    pub(super) fn drop_all(&mut self) {
        for bucket in self.buckets.iter() {
            // Relaxed: exclusive access.
            let word = bucket.swap(core::ptr::null_mut(), Ordering::Relaxed);
            // SAFETY: exclusive access: the word is no other thread's, and nothing frees it
            // before the `free` below, after the last use of `bucket`.
            let entries = unsafe { decode_for::<K, V>(word) };
            for &p in entries.entries() {
                // SAFETY: an entry in the index has not been retired (whoever unlinks it retires
                // it, and it is still linked); exclusive access means no reader holds it; it
                // is in one bucket once, so dropped once. `p` descends from its allocation.
                drop(unsafe { Entry::reclaim(p) });
            }
            // SAFETY: unreachable now, and no other thread can hold it (exclusive access).
            unsafe { free::<K, V>(word) };
        }
    }
}

/// What [`Index::publish`] did.
pub(super) enum Published<'g, K, V> {
    /// The key was absent: the new entry is in.
    Added,
    /// The new entry took the place of this one (its allocating pointer and a borrow), which is
    /// out of the index now, for the caller to retire.
    Replaced(EntryPtr<K, V>, &'g Entry<K, V>),
    /// An entry holds the key and stays (`replace` was false); the new one was not published.
    Present,
}

#[cfg(test)]
mod tests {
    use super::{Entry, Idle, Moment, FREQ_BITS};
    use crate::sync::Ordering;

    fn entry(tick: u64) -> Entry<u32, u32> {
        Entry::new(1, 1, 0, 1, u64::MAX, tick)
    }

    fn access(e: &Entry<u32, u32>) -> (u64, u8) {
        (e.access.load(Ordering::Relaxed) >> FREQ_BITS, e.freq())
    }

    #[test]
    fn an_idle_entry_expires_after_its_ticks_last_nanosecond() {
        // 160 ns: ticks of 10 ns. Accessed in tick 3 (30..=39 ns): expired from 39 + 160.
        let idle = Idle::new(160);
        assert_eq!((idle.tick(30), idle.tick(39), idle.tick(40)), (3, 3, 4));
        let e = entry(3);
        let at = |now| Moment {
            now,
            idle: Some(idle),
        };
        assert!(!e.expired_at(at(198)));
        assert!(e.expired_at(at(199)));
        // Without a time-to-idle the tick means nothing.
        assert!(!e.expired_at(Moment {
            now: u64::MAX,
            idle: None,
        }));
        // Under 16 ns the tick is a nanosecond: exact.
        let exact = Idle::new(5);
        assert_eq!(exact.tick(7), 7);
        assert!(!exact.expired(7, 11) && exact.expired(7, 12));
        // Zero: expired at once. Huge: never, without overflow.
        assert!(Idle::new(0).expired(Idle::new(0).tick(9), 9));
        let never = Idle::new(u64::MAX);
        assert!(!never.expired(never.tick(u64::MAX - 1), u64::MAX - 1));
    }

    #[test]
    fn touch_at_counts_moves_the_tick_up_only_and_reports_the_first_read() {
        let e = entry(5);
        assert!(e.touch_at(5), "the first read");
        assert_eq!(access(&e), (5, 1));
        assert!(!e.touch_at(4), "an older tick");
        assert_eq!(access(&e), (5, 2), "counted, tick kept");
        assert!(!e.touch_at(9));
        assert_eq!(access(&e), (9, 3));
        let before = e.access.load(Ordering::Relaxed);
        assert!(!e.touch_at(9));
        assert_eq!(
            e.access.load(Ordering::Relaxed),
            before,
            "saturated and current: nothing changes"
        );
    }

    #[test]
    fn set_freq_keeps_the_tick_when_asked() {
        let e = entry(7);
        e.touch_at(8);
        e.set_freq(0, true);
        assert_eq!(access(&e), (8, 0));
        e.set_freq(9, true);
        assert_eq!(access(&e), (8, 3), "saturates at 3");
        // Without a time-to-idle the tick is 0, and a plain store keeps it so.
        let plain = entry(0);
        assert!(plain.touch());
        plain.set_freq(2, false);
        assert_eq!(access(&plain), (0, 2));
    }
}
