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
//!   counted pointers and a free list: a popped sentinel is retired to the epoch and freed once
//!   no pinned thread can still hold it, so there is no ABA and no type-stable memory;
//! - each node carries its position in the queue (`seq`), written before the node is published,
//!   which gives [`MsQueue::len`] in O(1) without a shared length counter on the hot path;
//! - `head` and `tail` sit on separate cache lines, and failed compare-and-swaps back off.

use crate::sync::{epoch, Backoff, CachePadded, Ordering, Track, UnsafeCell};
use core::{fmt, iter::FusedIterator, marker::PhantomData, mem::MaybeUninit, ptr};
use epoch::{Atomic, Collector, Guard, Owned, Shared};

/// One link of the list. The sentinel's `value` is uninitialised (it was moved out by the pop
/// that made this node the sentinel, or never set for the first one); every node after the
/// sentinel holds an initialised value.
struct Node<T> {
    /// Written once by the pusher before the node is published; moved out once by the pop that
    /// swings `head` onto this node.
    value: UnsafeCell<MaybeUninit<T>>,
    /// Null while this node is the last one.
    next: Atomic<Node<T>>,
    /// This node's position: one more than its predecessor's. Written before publication,
    /// immutable after.
    seq: usize,
    /// Under loom, reports a node that was never freed when a model ends.
    _track: Track<()>,
}

impl<T> Node<T> {
    fn sentinel() -> Self {
        Self {
            value: UnsafeCell::new(MaybeUninit::uninit()),
            next: Atomic::null(),
            seq: 0,
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
/// One heap node per value. A popped node is retired to the queue's epoch [`Collector`] and freed
/// once every thread pinned at the time has unpinned. [`MsQueue::new`] uses crossbeam-epoch's
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
    /// `None`: crossbeam-epoch's global collector, pinned through `epoch::pin`.
    collector: Option<Collector>,
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
        let sentinel = Owned::new(Node::sentinel()).into_shared(unsafe { epoch::unprotected() });
        Self {
            head: CachePadded::new(Atomic::from(sentinel)),
            tail: CachePadded::new(Atomic::from(sentinel)),
            collector,
            _marker: PhantomData,
        }
    }

    /// Pins the current thread in the queue's collector.
    #[inline]
    fn pin(&self) -> Guard {
        match &self.collector {
            None => epoch::pin(),
            // A guard outlives the handle it came from: the participant stays registered until
            // both are gone.
            Some(c) => c.register().pin(),
        }
    }

    /// Panics unless `guard` pins the queue's collector.
    #[inline]
    #[track_caller]
    fn check_guard(&self, guard: &Guard) {
        let ours = match &self.collector {
            None => epoch::default_collector(),
            Some(c) => c,
        };
        assert!(
            guard.collector() == Some(ours),
            "MsQueue: the guard does not pin the queue's collector"
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
        let mut node = Owned::new(Node {
            value: UnsafeCell::new(MaybeUninit::new(value)),
            next: Atomic::null(),
            seq: 0,
            _track: Track::new(()),
        });
        let backoff = Backoff::new();
        loop {
            // Acquire: pairs with the Release CASes that store into `tail`, so the node it
            // points to (its `next`, its `seq`) is fully visible before we read it.
            let tail = self.tail.load(Ordering::Acquire, guard);
            // SAFETY: `tail` was loaded under `guard`, so the epoch keeps its node allocated
            // until `guard` drops; it is never null (there is always a sentinel).
            let t = unsafe { tail.deref() };
            // Acquire: pairs with the Release CAS that linked `next`, for the same reason.
            let next = t.next.load(Ordering::Acquire, guard);
            if !next.is_null() {
                // `tail` lags behind a linked node: help swing it, then retry.
                self.advance_tail(tail, next, guard);
                continue;
            }
            // The node is still ours alone: a plain write before publication.
            node.seq = t.seq.wrapping_add(1);
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
                Ok(linked) => {
                    // Best effort: if it fails, another thread already swung `tail` past.
                    self.advance_tail(tail, linked, guard);
                    return;
                }
                Err(e) => {
                    node = e.new;
                    backoff.spin();
                }
            }
        }
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
                    // SAFETY: `head` is now unreachable from the queue (`head` moved past it and
                    // `tail` was swung past it above), so no thread can load it anew; threads
                    // that loaded it earlier are pinned, and the epoch frees it only after they
                    // unpin. Its value was moved out when it became the sentinel.
                    unsafe { guard.defer_destroy(head) };
                    return Some(value);
                }
                Err(_) => backoff.spin(),
            }
        }
    }

    /// Pops through exclusive access: no other thread can be inside an operation, so no pin is
    /// needed and the old sentinel is freed at once instead of being retired to the epoch.
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
        // SAFETY: the old sentinel is now unreachable from the queue, and no other thread can
        // hold a reference to it: any operation that loaded it has returned before `&mut self`
        // was taken, and a guard held by a thread that no longer runs a queue operation does not
        // dereference queue nodes. Its value was moved out when it became the sentinel.
        drop(unsafe { head.into_owned() });
        Some(value)
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
        let guard = self.pin();
        // Acquire (both loads): pair with the Release CASes that stored these pointers, so the
        // nodes' `seq` fields are visible. `head` is read first: `tail` never falls behind
        // `head`, so the tail read afterwards is at or past it.
        let head = self.head.load(Ordering::Acquire, &guard);
        let mut tail = self.tail.load(Ordering::Acquire, &guard);
        loop {
            // SAFETY: loaded under `guard`: allocated until it drops; never null.
            let t = unsafe { tail.deref() };
            // Acquire: pairs with the Release link in `push`, so the next node's `seq` is
            // visible. `tail` lags by at most one link per pusher in flight: this walk is short.
            let next = t.next.load(Ordering::Acquire, &guard);
            if next.is_null() {
                break;
            }
            tail = next;
        }
        // SAFETY: loaded under `guard`: allocated until it drops; never null.
        let t = unsafe { tail.deref() };
        // SAFETY: as for `t`.
        let h = unsafe { head.deref() };
        t.seq.wrapping_sub(h.seq)
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
        // SAFETY: `&mut self`: no other thread can reach the queue, so nothing races with this
        // walk and no thread can still be reading the nodes still linked (popped nodes were
        // retired to the epoch and are not in the list any more).
        let guard = unsafe { epoch::unprotected() };
        // Relaxed: `&mut self` means we are synchronised with every past user of the queue.
        let mut cur = self.head.load(Ordering::Relaxed, guard);
        let mut is_sentinel = true;
        while !cur.is_null() {
            // SAFETY: `cur` is a node of the list, owned by the queue alone (see above) and
            // freed exactly once, here; `next` is read before it is freed.
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
