//! [`MsQueue`]: an unbounded lock-free multi-producer multi-consumer FIFO queue.
//!
//! The algorithm is the one of Maged M. Michael and Michael L. Scott, "Simple, Fast, and
//! Practical Non-Blocking and Blocking Concurrent Queue Algorithms" (PODC 1996): a singly linked
//! list with a sentinel node, `head` pointing at the sentinel and `tail` at the last node or the
//! one before it. A push links its node after the last one with a compare-and-swap on that node's
//! `next`, then swings `tail`; a pop swings `head` to the sentinel's successor and takes the
//! value out of it, the successor becoming the new sentinel. Any thread that finds `tail` lagging
//! swings it forward first ("helping"), so no operation ever waits for another to finish.
//!
//! What we changed from the paper:
//! - memory is reclaimed with crossbeam-epoch (Fraser's epoch-based reclamation) instead of
//!   counted pointers. Popped nodes are not handed to the epoch one by one: they stay linked
//!   behind `head` (the *retired prefix*, from `free` up to `head`), and every
//!   `RECYCLE_BATCH`-th pop defers one marker through the epoch that, once every thread pinned at
//!   that time has unpinned, declares the nodes before it reusable. Pushes then take their node
//!   from the front of the prefix instead of the allocator; the prefix beyond `RETIRED_KEEP`
//!   nodes is handed to the epoch to be freed. Nodes are only ever reused or freed after a grace
//!   period, so there is no ABA (see `take_free`);
//! - each node carries its position in the queue (`seq`), written before the node is published,
//!   which gives [`MsQueue::len`] in O(1) without a shared length counter on the hot path;
//! - `head` and `tail` sit on separate cache lines, and failed compare-and-swaps back off.

use crate::reclaim::Reclaim;
use crate::sync::{
    epoch, Arc, AtomicUsize, Backoff, CachePadded, Ordering, Track, UnsafeCell, UNDER_LOOM,
};
use core::{fmt, iter::FusedIterator, marker::PhantomData, mem::MaybeUninit, ptr};
use epoch::{Atomic, Collector, Guard, Owned, Shared};

/// Every pop that makes a node whose position is a multiple of this the sentinel hands one
/// reuse marker to the epoch (and flushes its thread's epoch garbage so the marker is not held
/// back in a thread-local bag). Under loom, models pop a handful of values: the recycling paths
/// must be reachable there.
const RECYCLE_BATCH: usize = if UNDER_LOOM { 2 } else { 128 };

/// How many retired nodes the queue keeps for reuse before it frees the excess through the
/// epoch: enough to cover the grace period of a busy queue, small enough that a drained burst
/// gives its memory back.
const RETIRED_KEEP: usize = if UNDER_LOOM { 1 } else { 16 * RECYCLE_BATCH };

/// One link of the list. The values of the sentinel and of the retired nodes before it are
/// uninitialised (moved out by the pop that made the node the sentinel, or never set for the
/// first one); every node after the sentinel holds an initialised value.
///
/// A node may be reused after a grace period, while a thread that read `free` before that may
/// still read its `next` and `seq` (see `take_free`): those two are atomics, and a reused node is
/// only ever reached through shared references.
struct Node<T> {
    /// Written by the pusher before the node is published; moved out once by the pop that
    /// swings `head` onto this node.
    value: UnsafeCell<MaybeUninit<T>>,
    /// Null while this node is the last one; immutable from its link until the node is reused.
    next: Atomic<Node<T>>,
    /// This node's position: one more than its predecessor's. Positions only grow, across reuse
    /// too. Written before publication, immutable until the node is reused.
    seq: AtomicUsize,
    /// Under loom, reports a node that was never freed when a model ends.
    _track: Track<()>,
}

impl<T> Node<T> {
    fn empty() -> Self {
        Self {
            value: UnsafeCell::new(MaybeUninit::uninit()),
            next: Atomic::null(),
            seq: AtomicUsize::new(0),
            _track: Track::new(()),
        }
    }
}

/// An unbounded lock-free MPMC FIFO queue (Michael & Scott, 1996), with memory reclaimed by
/// crossbeam-epoch.
///
/// Values pushed by one thread are popped in the order that thread pushed them. Every pushed
/// value is popped exactly once, or dropped exactly once when the queue drops.
///
/// # Progress
///
/// | method | progress |
/// |---|---|
/// | [`push`](Self::push), [`push_with_guard`](Self::push_with_guard) | lock-free |
/// | [`pop`](Self::pop), [`pop_with_guard`](Self::pop_with_guard) | lock-free |
/// | [`is_empty`](Self::is_empty), [`len`](Self::len) | lock-free |
///
/// Strictly lock-free: no operation ever waits for another thread to finish. A thread stalled in
/// the middle of a push (its node linked, `tail` not yet swung) is helped past by the next thread
/// that sees it, and its value is already visible to consumers. Some thread always completes its
/// operation in a bounded number of its own steps.
///
/// # Memory
///
/// One heap node per value. Popped nodes are recycled: once every thread pinned when they were
/// popped has unpinned (a grace period of the queue's epoch [`Collector`]), pushes reuse them
/// instead of allocating. Up to a few thousand retired nodes are kept for reuse; beyond that they
/// are freed through the epoch, so a drained burst gives its memory back. [`MsQueue::new`] uses crossbeam-epoch's
/// global collector (shared with every other epoch user in the process, each thread pinning
/// through its own cached handle); [`MsQueue::with_collector`] uses a collector of the caller's,
/// which makes reclamation exactly accountable: once the queue and the collector drop, every node
/// has been freed.
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
    /// The sentinel node.
    head: CachePadded<Atomic<Node<T>>>,
    /// The last node, or (while a push is between its two CASes) the one before it.
    tail: CachePadded<Atomic<Node<T>>>,
    /// The oldest retired node not yet reused or freed: the retired prefix runs from here along
    /// `next` up to `head` (exclusive). Equal to `head` when the prefix is empty.
    free: CachePadded<Atomic<Node<T>>>,
    /// Nodes whose position is below this mark were retired before a grace period that has
    /// ended: no thread can still hold them. Raised by deferred functions, which may outlive the
    /// queue, hence the `Arc`.
    reusable: Arc<CachePadded<AtomicUsize>>,
    /// The global collector or the caller's.
    reclaim: Reclaim,
    /// The queue owns `T`s (for the drop check).
    _marker: PhantomData<T>,
}

// SAFETY: the queue owns its values and moves each one to exactly one thread (the pusher hands it
// in, one popper takes it out, or the dropper drops it); no `&T` is ever handed out, so moving
// values across threads (`T: Send`) is all that sending the queue requires.
unsafe impl<T: Send> Send for MsQueue<T> {}
// SAFETY: through `&MsQueue<T>` threads only push and pop, which move values between threads as
// above; all shared state is atomics and epoch-protected nodes. `T: Sync` is not needed because no
// two threads ever access one value.
unsafe impl<T: Send> Sync for MsQueue<T> {}

impl<T> MsQueue<T> {
    /// Creates an empty queue whose nodes are reclaimed by crossbeam-epoch's global collector.
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

    /// Creates an empty queue whose nodes are reclaimed by `collector`. Plain
    /// [`push`](Self::push) and [`pop`](Self::pop) then register a fresh handle with it on every
    /// call, which is slow: pin a handle once per thread and use
    /// [`push_with_guard`](Self::push_with_guard) and [`pop_with_guard`](Self::pop_with_guard).
    ///
    /// # Examples
    ///
    /// ```
    /// use crossbeam_epoch::Collector;
    /// use latchless::queue::MsQueue;
    ///
    /// let collector = Collector::new();
    /// let q = MsQueue::with_collector(collector.clone());
    /// let handle = collector.register();
    /// let guard = handle.pin();
    /// q.push_with_guard(1, &guard);
    /// assert_eq!(q.pop_with_guard(&guard), Some(1));
    /// ```
    #[must_use]
    pub fn with_collector(collector: Collector) -> Self {
        Self::build(Some(collector))
    }

    fn build(collector: Option<Collector>) -> Self {
        // SAFETY: no other thread can see the queue yet, so nothing can race with this
        // conversion; the node stays reachable from `head` and `tail` until the queue drops.
        let sentinel = Owned::new(Node::empty()).into_shared(unsafe { epoch::unprotected() });
        Self {
            head: CachePadded::new(Atomic::from(sentinel)),
            tail: CachePadded::new(Atomic::from(sentinel)),
            free: CachePadded::new(Atomic::from(sentinel)),
            reusable: Arc::new(CachePadded::new(AtomicUsize::new(0))),
            reclaim: Reclaim::new(collector),
            _marker: PhantomData,
        }
    }

    #[inline]
    fn pin(&self) -> Guard {
        self.reclaim.pin()
    }

    #[inline]
    #[track_caller]
    fn check_guard(&self, guard: &Guard) {
        self.reclaim.check(
            guard,
            "MsQueue: the guard does not pin the queue's collector",
        );
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
        self.push_unchecked(value, &self.pin());
    }

    /// Pushes `value` at the back, under a guard the caller already holds. Lock-free.
    ///
    /// Holding one guard across many operations saves a pin per call; nodes retired meanwhile
    /// are not freed until it drops.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the queue's collector (the global one for [`MsQueue::new`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::queue::MsQueue;
    ///
    /// let q = MsQueue::new();
    /// let guard = crossbeam_epoch::pin();
    /// for i in 0..3 {
    ///     q.push_with_guard(i, &guard);
    /// }
    /// assert_eq!(q.len(), 3);
    /// ```
    #[track_caller]
    pub fn push_with_guard(&self, value: T, guard: &Guard) {
        self.check_guard(guard);
        self.push_unchecked(value, guard);
    }

    fn push_unchecked(&self, value: T, guard: &Guard) {
        let node = self
            .take_free(guard)
            .unwrap_or_else(|| Owned::new(Node::empty()).into_shared(guard));
        // SAFETY: `node` is this thread's alone: freshly allocated, or taken from the retired
        // prefix after a grace period (`take_free`); it stays allocated until it is retired again.
        let n = unsafe { node.deref() };
        // SAFETY: nobody reads a node's value before it is published, and a reused node's old
        // value was moved out when it became the sentinel: this write races with nothing and
        // overwrites nothing that needs dropping.
        n.value
            .with_mut(|p| unsafe { p.write(MaybeUninit::new(value)) });
        // Relaxed: published by the Release link below. A stale reader of `free` may read this
        // `next` (see `take_free`); it is an atomic for that reason.
        n.next.store(Shared::null(), Ordering::Relaxed);
        let backoff = Backoff::new();
        loop {
            // Acquire: pairs with the Release CASes that store into `tail`, so the node it
            // points to (its `next`, its `seq`) is fully visible before we read it.
            let tail = self.tail.load(Ordering::Acquire, guard);
            // SAFETY: `tail` was loaded under `guard`, so it is neither freed nor reused until
            // `guard` drops (it is never behind `head`, so it is retired only after this load);
            // it is never null (there is always a sentinel).
            let t = unsafe { tail.deref() };
            // Acquire: pairs with the Release CAS that linked `next`, for the same reason.
            let next = t.next.load(Ordering::Acquire, guard);
            if !next.is_null() {
                // `tail` lags behind a linked node: help swing it, then retry.
                self.advance_tail(tail, next, guard);
                continue;
            }
            // Relaxed: `seq` is published by the Release link below, and `t.seq` was published to
            // us by the Acquire load of `tail`.
            n.seq.store(
                t.seq.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
            // Release: publishes the node's value and fields; pairs with the Acquire loads of
            // `next` in `pop`, `push` and `len`. Relaxed on failure: we only retry, and the
            // retry reloads `tail` with Acquire.
            match t.next.compare_exchange(
                Shared::null(),
                node,
                Ordering::Release,
                Ordering::Relaxed,
                guard,
            ) {
                Ok(_) => {
                    // Best effort: if it fails, another thread already swung `tail` past.
                    self.advance_tail(tail, node, guard);
                    return;
                }
                Err(_) => backoff.spin(),
            }
        }
    }

    /// Takes the oldest retired node off the prefix if a grace period has passed since it was
    /// retired; the node is then the caller's alone.
    ///
    /// Why there is no ABA on `free`: between our load of `free` and our compare-and-swap, the
    /// node we saw may be taken by another thread and reused, but it cannot come back to the front
    /// of the prefix while we stay pinned. To get there it would be retired again, at a position
    /// past today's `tail`, and `free` would have to advance to it through its predecessor, whose
    /// position is then at least that of the tail we were pinned with. Only a reuse mark above it
    /// would let `free` pass it, and such a mark comes from a deferred function created after we
    /// pinned, which cannot run before we unpin. So a successful compare-and-swap means the node
    /// we checked is the one we took.
    fn take_free<'g>(&self, guard: &'g Guard) -> Option<Shared<'g, Node<T>>> {
        // Acquire: pairs with the Release `fetch_max` of the deferred marker, which ran after every
        // thread that could hold the nodes below the mark had unpinned; our writes to a taken
        // node therefore come after all of their reads.
        let mark = self.reusable.load(Ordering::Acquire);
        let backoff = Backoff::new();
        loop {
            // Acquire: pairs with the Release CAS below (and the link that published the node),
            // so the node's fields are visible.
            let free = self.free.load(Ordering::Acquire, guard);
            // SAFETY: `free` was loaded under `guard`: a node of the prefix is freed only through
            // the epoch (`trim`), so it stays allocated until `guard` drops; never null (it is at
            // worst `head`).
            let f = unsafe { free.deref() };
            // Relaxed: the position is only compared; if the node was reused meanwhile, it reads
            // larger, and we allocate instead (or our compare-and-swap fails).
            if f.seq.load(Ordering::Relaxed) >= mark {
                return None;
            }
            // Acquire: pairs with the Release link of the next node, whose fields the next taker
            // reads after loading `free`.
            let next = f.next.load(Ordering::Acquire, guard);
            if next.is_null() {
                // Taken and reset by another thread: `free` has moved on.
                backoff.spin();
                continue;
            }
            // Release: passes the next node's publication on to the next taker's Acquire load.
            // Relaxed on failure: we retry from a fresh Acquire load.
            match self.free.compare_exchange(
                free,
                next,
                Ordering::Release,
                Ordering::Relaxed,
                guard,
            ) {
                Ok(_) => return Some(free),
                Err(_) => backoff.spin(),
            }
        }
    }

    /// Hands the reuse marker for the nodes before position `mark` (all retired: `head` is at
    /// `mark`) to the epoch, and frees the prefix beyond `RETIRED_KEEP` nodes through it.
    #[cold]
    fn recycle(&self, mark: usize, guard: &Guard) {
        let reusable = Arc::clone(&self.reusable);
        // Release: pairs with the Acquire load in `take_free`; the epoch runs this only after
        // every thread pinned now has unpinned.
        guard.defer(move || reusable.fetch_max(mark, Ordering::Release));
        // Acquire: as in `take_free`.
        let free = self.free.load(Ordering::Acquire, guard);
        // SAFETY: as in `take_free`.
        let first = unsafe { free.deref() }.seq.load(Ordering::Relaxed);
        let mut excess = mark.saturating_sub(first).saturating_sub(RETIRED_KEEP);
        while excess > 0 {
            let Some(node) = self.take_free(guard) else {
                break;
            };
            // SAFETY: `take_free` made the node ours: it is unreachable from the queue, and
            // threads that read it from `free` before are pinned, so the epoch frees it only after
            // they unpin. Its value was moved out when it became a sentinel.
            unsafe { guard.defer_destroy(node) };
            excess -= 1;
        }
        // Seal this thread's epoch garbage now, so the marker does not wait in a thread-local
        // bag for 64 more deferred functions.
        guard.flush();
    }

    /// Swings `tail` from `from` to `to` if it still points at `from`.
    #[inline]
    fn advance_tail<'g>(
        &self,
        from: Shared<'g, Node<T>>,
        to: Shared<'g, Node<T>>,
        guard: &'g Guard,
    ) {
        // Release: the next thread to load `tail` (Acquire) dereferences `to`, whose contents
        // were published to us by our Acquire load of the `next` that pointed at it (or we wrote
        // them); Release passes that on. Relaxed on failure: a failure means `tail` moved on,
        // and nothing is read from it.
        let _ = self
            .tail
            .compare_exchange(from, to, Ordering::Release, Ordering::Relaxed, guard);
    }

    /// Pops the value at the front, or returns `None` if the queue is empty. Lock-free.
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
        self.pop_unchecked(&self.pin())
    }

    /// Pops the value at the front under a guard the caller already holds. Lock-free.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the queue's collector (the global one for [`MsQueue::new`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::queue::MsQueue;
    ///
    /// let q = MsQueue::new();
    /// q.push(1);
    /// let guard = crossbeam_epoch::pin();
    /// assert_eq!(q.pop_with_guard(&guard), Some(1));
    /// assert_eq!(q.pop_with_guard(&guard), None);
    /// ```
    #[track_caller]
    pub fn pop_with_guard(&self, guard: &Guard) -> Option<T> {
        self.check_guard(guard);
        self.pop_unchecked(guard)
    }

    fn pop_unchecked(&self, guard: &Guard) -> Option<T> {
        let backoff = Backoff::new();
        loop {
            // Acquire: pairs with the Release CAS in `pop` that stored this `head`, so the node
            // (initialised by its pusher, published to that popper) is visible to us.
            let head = self.head.load(Ordering::Acquire, guard);
            // SAFETY: loaded under `guard`: the epoch keeps the node allocated until `guard`
            // drops; never null (sentinel).
            let h = unsafe { head.deref() };
            // Acquire: pairs with the Release CAS in `push` that linked `next`, so its value is
            // initialised and visible before we move it out.
            let next = h.next.load(Ordering::Acquire, guard);
            // SAFETY: loaded under `guard`, as above; `as_ref` handles null.
            let n = unsafe { next.as_ref() }?;
            // `tail` may still point at the sentinel we are about to retire: swing it first, so
            // `tail` never points behind `head`. Relaxed: only compared, never dereferenced.
            let tail = self.tail.load(Ordering::Relaxed, guard);
            if tail == head {
                self.advance_tail(tail, next, guard);
            }
            // Release: publishes the new sentinel (as seen through our Acquire of `next`) to
            // the next popper's Acquire load of `head`. Relaxed on failure: we retry from a
            // fresh Acquire load.
            match self.head.compare_exchange(
                head,
                next,
                Ordering::Release,
                Ordering::Relaxed,
                guard,
            ) {
                Ok(_) => {
                    // SAFETY: winning the CAS made `n` the sentinel and gave this thread sole
                    // ownership of its value, which its pusher initialised and published (our
                    // Acquire load of `next`); no other pop can win the same swing, and the
                    // sentinel's value is never read again, so it is moved out exactly once.
                    let value = n.value.with(|p| unsafe { ptr::read(p.cast::<T>()) });
                    // The old sentinel stays in the retired prefix. Relaxed: published to us by
                    // the Acquire load of `next`.
                    let position = n.seq.load(Ordering::Relaxed);
                    if position % RECYCLE_BATCH == 0 {
                        self.recycle(position, guard);
                    }
                    return Some(value);
                }
                Err(_) => backoff.spin(),
            }
        }
    }

    /// Pops through exclusive access: no other thread can be inside an operation, so no pin is
    /// needed, and the retired prefix is freed at once instead of through the epoch.
    fn pop_exclusive(&mut self) -> Option<T> {
        // SAFETY: `&mut self`: no other thread can reach the queue, so no node of the list can be
        // freed or changed under us while we walk it.
        let guard = unsafe { epoch::unprotected() };
        // Relaxed (all loads and stores here): `&mut self` means every earlier operation on the
        // queue happens-before this one; no other thread observes these stores until it is
        // synchronised with us by whatever hands the queue over.
        let head = self.head.load(Ordering::Relaxed, guard);
        // SAFETY: the sentinel is never null and, with exclusive access, never freed by others.
        let h = unsafe { head.deref() };
        let next = h.next.load(Ordering::Relaxed, guard);
        // SAFETY: a linked node, allocated as long as it is in the list (`as_ref` handles null).
        let n = unsafe { next.as_ref() }?;
        // SAFETY: `n` follows the sentinel, so its value is initialised and no pop has taken it;
        // it becomes the sentinel below, whose value is never read again.
        let value = n.value.with(|p| unsafe { ptr::read(p.cast::<T>()) });
        self.head.store(next, Ordering::Relaxed);
        if self.tail.load(Ordering::Relaxed, guard) == head {
            self.tail.store(next, Ordering::Relaxed);
        }
        self.free_prefix_exclusive();
        Some(value)
    }

    /// Frees the retired prefix through exclusive access.
    fn free_prefix_exclusive(&mut self) {
        // SAFETY: `&mut self`, as in `pop_exclusive`.
        let guard = unsafe { epoch::unprotected() };
        // Relaxed: exclusive access, as in `pop_exclusive`.
        let head = self.head.load(Ordering::Relaxed, guard);
        let mut cur = self.free.load(Ordering::Relaxed, guard);
        while cur != head {
            // SAFETY: `cur` is a retired node before `head`: unreachable from `head` and `tail`,
            // taken by no push (it is still in the prefix), and no other thread can hold it: any
            // operation that loaded it has returned before `&mut self` was taken, and a guard held
            // by a thread that runs no queue operation does not dereference queue nodes. Its value
            // was moved out. Freed exactly once: `free` moves past it below.
            let node = unsafe { cur.into_owned() };
            cur = node.next.load(Ordering::Relaxed, guard);
            drop(node);
        }
        self.free.store(head, Ordering::Relaxed);
    }

    /// Returns `true` if the queue held no value at the moment of the check. Lock-free.
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
        let guard = self.pin();
        // Acquire: pairs with the Release CAS in `pop` that stored `head`, so its node is
        // initialised.
        let head = self.head.load(Ordering::Acquire, &guard);
        // SAFETY: loaded under `guard`, never null (sentinel).
        let h = unsafe { head.deref() };
        // Relaxed: only compared with null; nothing is read through it.
        h.next.load(Ordering::Relaxed, &guard).is_null()
    }

    /// Returns the number of values in the queue: a snapshot, exact when no other thread is
    /// pushing or popping, otherwise a value the queue held at some moment during the call (or
    /// close to it). O(1) and lock-free: every node stores its position, so the length is the
    /// distance from head to the last node.
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
        self.len_unchecked(&self.pin())
    }

    /// [`len`](Self::len) under a guard the caller already holds.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin the queue's collector (the global one for [`MsQueue::new`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::queue::MsQueue;
    ///
    /// let q = MsQueue::new();
    /// let guard = crossbeam_epoch::pin();
    /// q.push_with_guard('a', &guard);
    /// assert_eq!(q.len_with_guard(&guard), 1);
    /// ```
    #[track_caller]
    pub fn len_with_guard(&self, guard: &Guard) -> usize {
        self.check_guard(guard);
        self.len_unchecked(guard)
    }

    fn len_unchecked(&self, guard: &Guard) -> usize {
        // Acquire (both loads): pair with the Release CASes that stored these pointers, so the
        // nodes' `seq` fields are visible. `head` is read first: `tail` never falls behind
        // `head`, so the tail read afterwards is at or past it.
        let head = self.head.load(Ordering::Acquire, guard);
        let mut tail = self.tail.load(Ordering::Acquire, guard);
        loop {
            // SAFETY: loaded under `guard`: neither freed nor reused until it drops; never null.
            let t = unsafe { tail.deref() };
            // Acquire: pairs with the Release link in `push`, so the next node's `seq` is
            // visible. `tail` lags by at most one link per pusher in flight: this walk is short.
            let next = t.next.load(Ordering::Acquire, guard);
            if next.is_null() {
                break;
            }
            tail = next;
        }
        // SAFETY: loaded under `guard`: neither freed nor reused until it drops; never null.
        let t = unsafe { tail.deref() };
        // SAFETY: as for `t`.
        let h = unsafe { head.deref() };
        // Relaxed: both positions were published to us by the Acquire loads above.
        t.seq
            .load(Ordering::Relaxed)
            .wrapping_sub(h.seq.load(Ordering::Relaxed))
    }

    /// Pops every value, front to back, through a mutable borrow: no other thread can push
    /// meanwhile, so the drain ends exactly when the queue is empty. Exclusive access needs no
    /// epoch pin, and nodes are freed at once.
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
        self.free_prefix_exclusive();
        // SAFETY: `&mut self`: no other thread can reach the queue, so nothing races with this
        // walk and no thread can still be reading the nodes still linked.
        let guard = unsafe { epoch::unprotected() };
        // Relaxed: `&mut self` means we are synchronised with every past user of the queue.
        let mut cur = self.head.load(Ordering::Relaxed, guard);
        let mut is_sentinel = true;
        while !cur.is_null() {
            // SAFETY: `cur` is the sentinel or a node after it, owned by the queue alone (see
            // above) and freed exactly once, here; `next` is read before it is freed.
            let node = unsafe { cur.into_owned() };
            let next = node.next.load(Ordering::Relaxed, guard);
            if !is_sentinel {
                // SAFETY: every node after the sentinel holds an initialised value that no pop
                // took, and the node is about to be freed: the value is dropped exactly once.
                node.value
                    .with_mut(|p| unsafe { ptr::drop_in_place(p.cast::<T>()) });
            }
            is_sentinel = false;
            drop(node);
            cur = next;
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
        self.queue.pop_exclusive()
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
        self.queue.pop_exclusive()
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
