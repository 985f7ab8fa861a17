//! S3-FIFO eviction: Juncheng Yang, Yazhuo Zhang, Ziyue Qiu, Yao Yue and Rashmi Vinayak, "FIFO
//! queues are all you need for cache eviction" (SOSP 2023).
//!
//! A small FIFO (3% of the capacity) takes new keys; a main FIFO takes the rest; a ghost
//! list remembers the hashes of keys recently evicted from the small FIFO. Each entry has a 2-bit
//! access counter bumped by reads. Evicting from the small FIFO promotes an entry that was read
//! since it arrived to the main FIFO, and evicts the others (remembering them in the ghost list);
//! evicting from the main FIFO gives a read entry another pass (its counter decremented) and evicts
//! the others. A key found in the ghost list when it is inserted again goes straight to main.
//! One-hit wonders thus leave through the small FIFO without disturbing the main one: the policy
//! resists scans.
//!
//! What we changed: the FIFOs are the crate's own lock-free `MsQueue`s of entry pointers, and each
//! FIFO owns its entries (an entry is retired to the epoch only when its FIFO pops it), so removal
//! and replacement only mark an entry dead and the FIFO skips it lazily. The ghost list is a fixed
//! ring of atomic hashes with a direct-mapped table beside it for O(1) membership. Eviction runs on
//! the inserting thread, one victim at a time.

use super::index::{Entry, EntryPtr, Index};
use crate::counter::ShardedCounter;
use crate::queue::MsQueue;
use crate::sync::{epoch::Guard, AtomicU64, AtomicUsize, Ordering};

/// How many retirements between two flushes of the retiring thread's epoch garbage.
const FLUSH_EVERY: u64 = 128;

/// The small FIFO's share of `capacity`: 3%, at least 1.
///
/// The S3-FIFO paper's 10% was the first choice. Replayed on every row of the hit-ratio table
/// (BENCHMARKS.md), 3% beats it on all six Zipf rows (by 0.1 to 0.6 points), on P3 at both
/// sizes (0.8 and 0.1) and on P6 at 32,768 entries (2.0); it loses 2.6 and 0.8 points on OLTP
/// (still ahead of every peer there) and 0.1 on P6 at 131,072 entries. 2% and 4% were within
/// 0.4 points of 3% on every row but OLTP at 1,000 entries, which grows with the share (36.5%,
/// 37.4%, 38.1%).
fn small_share(capacity: u64) -> u64 {
    // u128: `capacity * 3` must not overflow for weights near `u64::MAX`.
    let share = u128::from(capacity) * 3 / 100;
    u64::try_from(share).unwrap_or(u64::MAX).max(1)
}

/// An entry pointer held by a FIFO, which owns the entry.
pub(super) struct Queued<K, V>(EntryPtr<K, V>);

// SAFETY: the pointer is the FIFO's ownership of an `Entry<K, V>`; moving it between threads moves
// (and eventually drops) the entry there, and readers on other threads share `&K`/`&V`: sound when
// `K` and `V` are `Send + Sync`, which `Cache`'s own `Send`/`Sync` require.
unsafe impl<K: Send + Sync, V: Send + Sync> Send for Queued<K, V> {}

/// Where an entry sits, for the small FIFO's weight.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Fifo {
    Small,
    Main,
}

/// What `evict_one` did.
pub(super) enum Evicted<'g, K, V> {
    /// This entry was unlinked from the index by us: its weight and count are ours to release.
    Victim(&'g Entry<K, V>),
    /// This entry had expired, and was unlinked from the index by us: as for `Victim`, but its
    /// cause is `Expired`.
    Expired(&'g Entry<K, V>),
    /// Both FIFOs are empty.
    Nothing,
}

/// An entry this thread owns (newly admitted, or popped from a FIFO): its allocating pointer, to
/// queue or retire it, and a borrow of it.
pub(super) type Held<'g, K, V> = (EntryPtr<K, V>, &'g Entry<K, V>);

/// A fixed ring of recently evicted key hashes, with a direct-mapped table for membership.
struct Ghost {
    ring: Box<[AtomicU64]>,
    table: Box<[AtomicU64]>,
    cursor: AtomicUsize,
}

impl Ghost {
    fn new(entries: usize) -> Self {
        let ring = entries.max(1).next_power_of_two();
        Self {
            ring: (0..ring).map(|_| AtomicU64::new(0)).collect(),
            table: (0..ring * 2).map(|_| AtomicU64::new(0)).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The table slot of a hash, from bits the index does not use for its bucket.
    #[inline]
    fn slot(&self, tag: u64) -> &AtomicU64 {
        &self.table[(tag.rotate_right(32) as usize) & (self.table.len() - 1)]
    }

    /// Never 0, which marks an empty slot.
    #[inline]
    fn tag(hash: u64) -> u64 {
        hash | 1
    }

    // Relaxed throughout: the ghost list is an approximate set of hints; no memory is published
    // through it, and a lost or stale hint only changes which FIFO a key starts in.

    fn insert(&self, hash: u64) {
        let tag = Self::tag(hash);
        let pos = self.cursor.fetch_add(1, Ordering::Relaxed) & (self.ring.len() - 1);
        let old = self.ring[pos].swap(tag, Ordering::Relaxed);
        if old != 0 {
            // The oldest hash leaves the ghost list, unless its slot was taken over since.
            let _ = self
                .slot(old)
                .compare_exchange(old, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        self.slot(tag).store(tag, Ordering::Relaxed);
    }

    fn contains(&self, hash: u64) -> bool {
        let tag = Self::tag(hash);
        self.slot(tag).load(Ordering::Relaxed) == tag
    }
}

/// The two FIFOs and the ghost list.
pub(super) struct Policy<K, V> {
    small: MsQueue<Queued<K, V>>,
    main: MsQueue<Queued<K, V>>,
    /// Total weight of the entries in the small FIFO (dead ones included until popped).
    small_weight: AtomicU64,
    /// Entries retired so far, per thread, to pace `retire`'s flushes: striped, so that the
    /// count adds no shared read-modify-write to every eviction.
    retired: ShardedCounter,
    /// The small FIFO's share of the capacity.
    small_target: u64,
    ghost: Ghost,
}

impl<K, V> Policy<K, V> {
    pub(super) fn new(
        capacity: u64,
        entries: usize,
        collector: &crate::sync::epoch::Collector,
    ) -> Self {
        Self {
            small: MsQueue::with_collector(collector.clone()),
            main: MsQueue::with_collector(collector.clone()),
            small_weight: AtomicU64::new(0),
            retired: ShardedCounter::for_stats(),
            small_target: small_share(capacity),
            ghost: Ghost::new(entries),
        }
    }

    /// Takes ownership of a newly published entry: `p` is the pointer its inserter allocated,
    /// `e` a borrow of it. Into main if its key was recently evicted from small (or `to_main` says
    /// it earned main, e.g. it replaced a value), else into small.
    pub(super) fn admit(&self, (p, e): Held<'_, K, V>, to_main: bool)
    where
        K: Send + Sync,
        V: Send + Sync,
    {
        let fifo = if to_main || self.ghost.contains(e.hash) {
            Fifo::Main
        } else {
            Fifo::Small
        };
        self.push(fifo, (p, e));
    }

    /// Queues an entry this thread owns: newly admitted, or popped by this thread.
    fn push(&self, fifo: Fifo, (p, e): Held<'_, K, V>)
    where
        K: Send + Sync,
        V: Send + Sync,
    {
        debug_assert!(
            core::ptr::eq(p, e),
            "an entry's pointer and its borrow differ"
        );
        match fifo {
            Fifo::Small => {
                // Relaxed: a sizing statistic; no memory is published through it.
                self.small_weight.fetch_add(e.weight, Ordering::Relaxed);
                self.small.push(Queued(p));
            }
            Fifo::Main => self.main.push(Queued(p)),
        }
    }

    /// Pops an entry, which this thread then owns: its pointer (to push again or retire) and a
    /// reference to it for `guard`'s life (the guard only bounds the borrow: the queue itself does
    /// not need it).
    fn pop<'g>(&self, fifo: Fifo, _guard: &'g Guard) -> Option<Held<'g, K, V>> {
        let q = match fifo {
            Fifo::Small => &self.small,
            Fifo::Main => &self.main,
        };
        let Queued(p) = q.pop()?;
        // SAFETY: a FIFO owns its entries: the entry is retired only by whoever pops it, which is
        // now this thread, so it is allocated; it lives at least until this thread retires it
        // under `guard`.
        let e = unsafe { &*p };
        if fifo == Fifo::Small {
            // Relaxed: as in `push`.
            self.small_weight.fetch_sub(e.weight, Ordering::Relaxed);
        }
        Some((p, e))
    }

    /// Retires an entry this thread popped and will not push again. Every `FLUSH_EVERY`-th
    /// retirement counted in this thread's cell also flushes the thread's epoch garbage and collects: a caller that holds one
    /// guard across many operations (the `*_with_guard` methods, re-pinned) never pins afresh, and
    /// only a fresh pin collects on its own, so without this its retired entries would pile up
    /// until it dropped the guard.
    fn retire(&self, p: EntryPtr<K, V>, guard: &Guard) {
        if self.retired.add_to_cell(1) % FLUSH_EVERY == FLUSH_EVERY - 1 {
            guard.flush();
        }
        // SAFETY: the entry was popped from its FIFO by this thread, so no FIFO holds it any more;
        // it has left the index (dead, or unlinked by us), so no new reader can find it; readers
        // that found it earlier are pinned, and the epoch drops it only after they unpin. Popping
        // happens once per entry, so it is retired once. `p` is the allocating pointer, so the
        // epoch frees it with the allocation's own permission.
        unsafe { guard.defer_destroy(crate::sync::epoch::Shared::from(p)) };
    }

    /// Evicts one entry: pops from the small FIFO while it holds more than its share (or main is
    /// empty), else from main, promoting or re-queuing read entries as S3-FIFO does, until one
    /// entry is unlinked from `index`. Dead entries met on the way are retired. An entry expired
    /// at `now` is evicted as if unread, whatever its access counter (0 for a cache without
    /// expiry: nothing is then expired).
    pub(super) fn evict_one<'g>(
        &self,
        index: &Index<K, V>,
        now: u64,
        guard: &'g Guard,
    ) -> Evicted<'g, K, V>
    where
        K: Send + Sync,
        V: Send + Sync,
    {
        loop {
            // Relaxed: as in `push`.
            let small_over = self.small_weight.load(Ordering::Relaxed) > self.small_target;
            let order = if small_over {
                [Fifo::Small, Fifo::Main]
            } else {
                [Fifo::Main, Fifo::Small]
            };
            let Some((fifo, (p, e))) = order
                .into_iter()
                .find_map(|f| self.pop(f, guard).map(|popped| (f, popped)))
            else {
                return Evicted::Nothing;
            };
            // Acquire: pairs with the Release store of whoever unlinked it, so that its unlink
            // (and bookkeeping) is done before we retire it.
            if e.dead.load(Ordering::Acquire) {
                self.retire(p, guard);
                continue;
            }
            // Relaxed: a hint, as in `Entry::touch`.
            let f = e.freq.load(Ordering::Relaxed);
            let expired = e.expired_at(now);
            if f > 0 && !expired {
                let (to, freq) = match fifo {
                    // Read while in small: promoted to main, counting afresh.
                    Fifo::Small => (Fifo::Main, 0),
                    // Read while in main: one more pass.
                    Fifo::Main => (Fifo::Main, f - 1),
                };
                e.freq.store(freq, Ordering::Relaxed);
                self.push(to, (p, e));
                continue;
            }
            if index.replace(e, None, guard) {
                // Release: pairs with the Acquire load above in whichever thread pops it next
                // (none: we retire it now) and documents that the entry left the index.
                e.dead.store(true, Ordering::Release);
                if expired {
                    // Not evicted for room: the ghost list does not remember it.
                    self.retire(p, guard);
                    return Evicted::Expired(e);
                }
                if fifo == Fifo::Small {
                    self.ghost.insert(e.hash);
                }
                self.retire(p, guard);
                return Evicted::Victim(e);
            }
            // Unlinked by a concurrent remove or replace, which owns its bookkeeping.
            self.retire(p, guard);
        }
    }

    /// The number of entries queued in both FIFOs, dead ones included.
    pub(super) fn queued(&self) -> usize {
        self.small.len() + self.main.len()
    }

    /// Pops one entry from the front of each FIFO and retires it if dead, or puts it back at the
    /// back of the same FIFO otherwise. Keeps the FIFOs' length bounded under insert/remove churn
    /// that evicts nothing, wherever the dead entries sit. A live entry is out of its FIFO for a
    /// moment: the caller evicts afterwards if the cache is over capacity, in case a concurrent
    /// inserter found nothing to evict meanwhile.
    ///
    /// A live entry expired at `now` is unlinked from `index` and retired instead, and returned
    /// (at most one per FIFO): its weight, count and listener are the caller's to settle.
    pub(super) fn sweep_one<'g>(
        &self,
        index: &Index<K, V>,
        now: u64,
        guard: &'g Guard,
    ) -> [Option<&'g Entry<K, V>>; 2]
    where
        K: Send + Sync,
        V: Send + Sync,
    {
        let mut expired = [None, None];
        for (fifo, out) in [Fifo::Small, Fifo::Main].into_iter().zip(&mut expired) {
            if let Some((p, e)) = self.pop(fifo, guard) {
                // Acquire: as in `evict_one`.
                if e.dead.load(Ordering::Acquire) {
                    self.retire(p, guard);
                } else if e.expired_at(now) {
                    if index.replace(e, None, guard) {
                        // Release: as in `evict_one`.
                        e.dead.store(true, Ordering::Release);
                        *out = Some(e);
                    }
                    // Else unlinked by a concurrent remove or replace, which owns its
                    // bookkeeping; either way no index holds it and we popped it: ours to retire.
                    self.retire(p, guard);
                } else {
                    self.push(fifo, (p, e));
                }
            }
        }
        expired
    }

    /// Drops every entry still queued, through exclusive access.
    pub(super) fn drop_all(&mut self) {
        for q in [&mut self.small, &mut self.main] {
            for Queued(p) in q.drain() {
                // SAFETY: `&mut self`: no other thread can reach the cache, so no reader holds the
                // entry; the FIFO owned it, and it is popped (so dropped) exactly once. `p` is the
                // pointer `Entry::allocate` returned.
                drop(unsafe { Entry::reclaim(p) });
            }
        }
    }
}
