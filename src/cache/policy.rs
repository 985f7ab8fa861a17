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
//! What we added: TinyLFU's frequency sketch (`sketch`) as a second way into main. It counts each
//! key when it is added and at its entry's first read since it was queued or passed over (its
//! access counter at 0), over a horizon of ten times the cache's entries, longer than the ghost list remembers. A new key that the sketch
//! counts often enough, and more often than the key last evicted from main, starts in main (see
//! `admit`); block I/O traces, where frequency matters most, gain from it.
//!
//! What we changed: the FIFOs are the crate's own lock-free `MsQueue`s, and they hold keys'
//! *handles*, not entries. A key gets a fresh handle when it is added, and every entry that
//! replaces the key's value inherits it (copied before the compare-and-swap that swaps the old
//! entry out, see `index`), so a replacement keeps its key's place and touches no FIFO. Whoever
//! pops a handle finds the key's current entry by scanning the bucket of the handle's hash for an
//! entry carrying it; a handle with no entry is stale (its key was removed or evicted) and is
//! dropped. The handle's lineage is unbroken: from its key's addition until its removal an entry
//! carrying it is in the index at every instant (a replacement swaps old for new in one
//! compare-and-swap of the bucket), and once none is, none can come back (a replacement copies the
//! handle of an entry that is in the index when its swap succeeds). So a handle found stale stays
//! stale, and every live key has exactly one handle queued, but while its inserter is about to
//! queue it or a popper holds it.
//!
//! Entries are owned by the index and retired by whoever unlinks them; removal and eviction leave
//! a stale handle behind, which the FIFOs drop lazily (and the cache sweeps under churn). The
//! ghost list is a fixed ring of atomic hashes with a direct-mapped table beside it for O(1)
//! membership. Eviction runs on the inserting thread, one victim at a time.

use super::index::{Entry, EntryPtr, Index, Moment};
use super::sketch::Sketch;
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

/// The least count in the frequency sketch for which a new key not in the ghost list starts in
/// the main FIFO (it must also beat the key last evicted from main).
///
/// Chosen by replaying every row of the hit-ratio table (BENCHMARKS.md) against the policy
/// without the sketch: with 3, P3 at 32,768 entries went from 17.57% (1.12 points behind moka)
/// to 18.79% (0.10 ahead), P6 at 32,768 from 27.51% to 28.00% (still 2.24 behind), and no row
/// lost more than 0.19 points. Without the comparison with main's last victim, 3 cost P6 at
/// 32,768 another 1.8 points (a loop longer than the cache counts every key of it often); 2
/// admitted too much (Zipf 0.7 at 1,000 entries 0.8 points behind), 4 too little (P3 at 32,768
/// 0.5 behind). The other places TinyLFU could decide, tried on every row and not kept: a
/// comparison at the small FIFO's exit (promoting unread keys that beat the victim, or holding
/// back read keys that do not), one at the ghost list's re-admission, and extra passes in main
/// for keys the sketch counts often: none did better on P6 at 32,768 without losing more than a
/// point on another row (a comparison at both the small FIFO's exit and the ghost list reached
/// 0.9 behind there, and lost 4.7 on P3 at 131,072).
const ADMIT_FREQUENCY: u64 = 3;

/// The least count in the frequency sketch for which a new key that does not beat main's last
/// victim still starts in main, once in [`LUCKY_ONE_IN`], at random: TinyLFU's defence against
/// hash flooding, as Caffeine's. An attacker who makes a victim's count look high (keys whose
/// counters collide with it) would otherwise keep every frequent key out of main's direct way
/// in; the randomness makes that a delay, not a wall. The numbers are Caffeine's.
const LUCKY_FREQUENCY: u64 = 6;

/// How rare the lucky admission is (a power of two).
const LUCKY_ONE_IN: u64 = 128;

/// SplitMix64's finaliser: every bit of `x` moves every bit of the result.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A key's place in a FIFO: its handle, the hash that finds its bucket, and the weight counted
/// for it in the small FIFO's total when it was queued.
#[derive(Clone, Copy, Debug)]
struct Queued {
    hash: u64,
    handle: u64,
    weight: u64,
}

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

/// A fixed ring of recently evicted key hashes, with a direct-mapped table for membership.
struct Ghost {
    ring: Box<[AtomicU64]>,
    table: Box<[AtomicU64]>,
    cursor: AtomicUsize,
}

impl Ghost {
    fn new(entries: usize) -> Self {
        let ring = ghost_ring_len(entries);
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

/// The ghost ring's length for a cache of `entries` expected entries: the power of two nearest
/// to `entries` (the larger on a tie), so that the ghost list remembers about as many keys as the
/// cache holds, as S3-FIFO sizes it.
///
/// The next power of two up was the first choice; it remembered up to twice as many keys (16,384
/// at 10,000 entries), and a ghost list that long sends too many returning keys straight to main.
/// Replayed on every row of the hit-ratio table (BENCHMARKS.md), the nearest power of two changes
/// only the 10,000-entry rows, where the two differ: Zipf 0.99 77.14% -> 77.40%, Zipf 0.7
/// 43.46% -> 44.24%, Zipf 1.2 92.73% -> 92.77%, OLTP 61.85% -> 61.53% (still ahead of every
/// peer). The ghost list's length matters most on P6 at 32,768 entries (27.51% with 32,768
/// remembered): half as many lost 5.9 points there, a quarter 10.7, twice as many 4.7 and four
/// times 14.1.
fn ghost_ring_len(entries: usize) -> usize {
    let entries = entries.max(1);
    let up = entries.next_power_of_two();
    let down = up / 2;
    if down > 0 && entries - down < up - entries {
        down
    } else {
        up
    }
}

/// The two FIFOs and the ghost list.
pub(super) struct Policy<K, V> {
    small: MsQueue<Queued>,
    main: MsQueue<Queued>,
    /// Total weight of the handles in the small FIFO, as queued (stale ones included until
    /// popped).
    small_weight: AtomicU64,
    /// The next fresh handle.
    next_handle: AtomicU64,
    /// Entries retired so far, per thread, to pace `retire`'s flushes: striped, so that the
    /// count adds no shared read-modify-write to every eviction.
    retired: ShardedCounter,
    /// The small FIFO's share of the capacity.
    small_target: u64,
    ghost: Ghost,
    /// How often each key was asked for, over about ten times the cache's entries: counted when
    /// a key is added and at its entry's first read (see `record_read`).
    sketch: Sketch,
    /// The sketch's estimate for the key last evicted from the main FIFO: what a new key must
    /// beat to start in main (see `admit`).
    victim_frequency: AtomicU64,
    /// Candidates that could have been admitted by luck so far: with the key's hash, the noise
    /// that draws the lucky ones (see `lucky`).
    draws: AtomicU64,
    _entries: core::marker::PhantomData<EntryPtr<K, V>>,
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
            next_handle: AtomicU64::new(0),
            retired: ShardedCounter::for_stats(),
            small_target: small_share(capacity),
            ghost: Ghost::new(entries),
            sketch: Sketch::for_entries(entries),
            victim_frequency: AtomicU64::new(0),
            draws: AtomicU64::new(0),
            _entries: core::marker::PhantomData,
        }
    }

    /// A handle no key has had.
    pub(super) fn fresh_handle(&self) -> u64 {
        // Relaxed: only uniqueness matters, which the read-modify-write gives in any order.
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues the handle of a key just added to the index (`e`, its entry): into main if the key
    /// was recently evicted from small, or if the sketch counts it asked for at least
    /// [`ADMIT_FREQUENCY`] times and more often than the last key evicted from main; else into
    /// small. Counts the request in the sketch, which reports the count from before it. A key
    /// counted often that does not beat the victim may still start in main, by luck (see
    /// [`LUCKY_FREQUENCY`]).
    pub(super) fn admit(&self, e: &Entry<K, V>) {
        let frequency = self.sketch.increment(e.hash);
        // Relaxed: a hint, as the ghost list is.
        let to_beat = self.victim_frequency.load(Ordering::Relaxed);
        let fifo = if self.ghost.contains(e.hash)
            || (frequency >= ADMIT_FREQUENCY
                && (frequency > to_beat || self.lucky(frequency, e.hash)))
        {
            Fifo::Main
        } else {
            Fifo::Small
        };
        self.push(fifo, e);
    }

    /// Whether a candidate counted `frequency` times, with hash `hash`, that lost to main's last
    /// victim starts in main anyway: once in [`LUCKY_ONE_IN`] if `frequency` reaches
    /// [`LUCKY_FREQUENCY`]. The draw mixes the key's hash with a count of the draws so far, so
    /// it is as hard to predict as the hasher's seed (random by default), a key that lost once
    /// may win the next time, and a fixed hasher replays the same draws. Out of line: a shared
    /// read-modify-write, on the rare path only.
    #[cold]
    #[inline(never)]
    fn lucky(&self, frequency: u64, hash: u64) -> bool {
        if frequency < LUCKY_FREQUENCY {
            return false;
        }
        // Relaxed: noise; no memory is published through it.
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        mix(hash ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).is_multiple_of(LUCKY_ONE_IN)
    }

    /// Counts the first read of `e` since it was queued or last passed over by the eviction:
    /// later reads write nothing shared, so a hot entry's hits stay read-only. Counting every
    /// read that raised the access counter (up to three per pass) cost get-only a fifth of its
    /// throughput in the cache benchmark, where an entry's first reads are a large share of the
    /// hits, each a miss in the sketch's table; counting the first read moved no row by more than
    /// 0.35 points. Cold and out of line, to keep the hit path's code small.
    #[cold]
    #[inline(never)]
    pub(super) fn record_read(&self, e: &Entry<K, V>) {
        let _ = self.sketch.increment(e.hash);
    }

    /// Queues the handle of `e`'s key: newly admitted, or popped by this thread.
    fn push(&self, fifo: Fifo, e: &Entry<K, V>) {
        let q = Queued {
            hash: e.hash,
            handle: e.handle(),
            weight: e.weight,
        };
        match fifo {
            Fifo::Small => {
                // Relaxed: a sizing statistic; no memory is published through it.
                self.small_weight.fetch_add(q.weight, Ordering::Relaxed);
                self.small.push(q);
            }
            Fifo::Main => self.main.push(q),
        }
    }

    /// Pops a handle, which this thread then holds: it pushes it again or drops it.
    fn pop(&self, fifo: Fifo) -> Option<Queued> {
        match fifo {
            Fifo::Small => {
                let q = self.small.pop()?;
                // Relaxed: as in `push`.
                self.small_weight.fetch_sub(q.weight, Ordering::Relaxed);
                Some(q)
            }
            Fifo::Main => self.main.pop(),
        }
    }

    /// Retires an entry this thread unlinked from the index. Every `FLUSH_EVERY`-th retirement
    /// counted in this thread's cell also flushes the thread's epoch garbage and collects: a
    /// caller that holds one guard across many operations (the `*_with_guard` methods,
    /// re-pinned) never pins afresh, and only a fresh pin collects on its own, so without this
    /// its retired entries would pile up until it dropped the guard.
    ///
    /// # Safety
    ///
    /// `p` is the allocating pointer of an entry that this thread's own compare-and-swap just
    /// swung out of the index (as [`Index::replace`], [`Index::publish`] and
    /// [`Index::take_all`] report), and this is its one retirement.
    pub(super) unsafe fn retire(&self, p: EntryPtr<K, V>, guard: &Guard) {
        if self.retired.add_to_cell(1) % FLUSH_EVERY == FLUSH_EVERY - 1 {
            guard.flush();
        }
        // SAFETY: the entry has left the index, so no new reader can find it (no FIFO holds
        // entries); readers that found it earlier are pinned, and the epoch drops it only after
        // they unpin. An entry leaves the index once, by one thread's swap, whose thread retires
        // it once (the caller's contract). `p` is the allocating pointer, so the epoch frees it
        // with the allocation's own permission.
        unsafe { guard.defer_destroy(crate::sync::epoch::Shared::from(p)) };
    }

    /// Evicts one entry: pops from the small FIFO while it holds more than its share (or main is
    /// empty), else from main, promoting or re-queuing the handles of read entries as S3-FIFO
    /// does, until one entry is unlinked from `index` (and retired: the caller may read it while
    /// `guard` lives). Stale handles met on the way are dropped. An entry expired at `now` is
    /// evicted as if unread, whatever its access counter (a time of 0 and no time-to-idle for a
    /// cache without expiry: nothing is then expired).
    pub(super) fn evict_one<'g>(
        &self,
        index: &Index<K, V>,
        now: Moment,
        guard: &'g Guard,
    ) -> Evicted<'g, K, V> {
        loop {
            // Relaxed: as in `push`.
            let small_over = self.small_weight.load(Ordering::Relaxed) > self.small_target;
            let order = if small_over {
                [Fifo::Small, Fifo::Main]
            } else {
                [Fifo::Main, Fifo::Small]
            };
            let Some((fifo, q)) = order.into_iter().find_map(|f| self.pop(f).map(|q| (f, q)))
            else {
                return Evicted::Nothing;
            };
            // The key's entry now; again after a failed unlink, since a replacement may have
            // swapped in another entry carrying the handle.
            while let Some(e) = index.find_handle(q.hash, q.handle, guard) {
                let f = e.freq();
                let expired = e.expired_at(now);
                if f > 0 && !expired {
                    let (to, freq) = match fifo {
                        // Read while in small: promoted to main, counting afresh.
                        Fifo::Small => (Fifo::Main, 0),
                        // Read while in main: one more pass.
                        Fifo::Main => (Fifo::Main, f - 1),
                    };
                    // With a time-to-idle, the counter's store keeps a racing hit's access tick.
                    e.set_freq(freq, now.idle.is_some());
                    self.push(to, e);
                    break;
                }
                if let Some(p) = index.replace(e, None, guard) {
                    // SAFETY: unlinked by our own swap just now; retired once, here.
                    unsafe { self.retire(p, guard) };
                    if expired {
                        // Not evicted for room: the ghost list does not remember it.
                        return Evicted::Expired(e);
                    }
                    match fifo {
                        Fifo::Small => self.ghost.insert(e.hash),
                        // Relaxed: as in `admit`.
                        Fifo::Main => self
                            .victim_frequency
                            .store(self.sketch.frequency(e.hash), Ordering::Relaxed),
                    }
                    return Evicted::Victim(e);
                }
            }
            // Stale (its key left the index, and its remover settled it), or re-queued.
        }
    }

    /// Checks, in a quiescent cache, that every key in `index` has exactly one handle queued,
    /// and returns how many live handles there are; panics on a key queued twice. Pops and
    /// pushes back every handle, in order.
    pub(super) fn check_handles(&self, index: &Index<K, V>, guard: &Guard) -> usize {
        let mut live = Vec::new();
        for q in [&self.small, &self.main] {
            for _ in 0..q.len() {
                let item = q.pop().expect("a quiescent FIFO shrank");
                if index.find_handle(item.hash, item.handle, guard).is_some() {
                    assert!(
                        !live.contains(&item.handle),
                        "handle {} queued twice",
                        item.handle
                    );
                    live.push(item.handle);
                }
                q.push(item);
            }
        }
        live.len()
    }

    /// The number of handles queued in both FIFOs, stale ones included.
    pub(super) fn queued(&self) -> usize {
        self.small.len() + self.main.len()
    }

    /// Pops one handle from the front of each FIFO and drops it if stale, or puts it back at the
    /// back of the same FIFO otherwise. Keeps the FIFOs' length bounded under insert/remove
    /// churn that evicts nothing, wherever the stale handles sit. A live key's handle is out of
    /// its FIFO for a moment: the caller evicts afterwards if the cache is over capacity, in case
    /// a concurrent inserter found nothing to evict meanwhile.
    ///
    /// A live entry expired at `now` is unlinked from `index` and retired instead, and returned
    /// (at most one per FIFO): its weight, count and listener are the caller's to settle.
    pub(super) fn sweep_one<'g>(
        &self,
        index: &Index<K, V>,
        now: Moment,
        guard: &'g Guard,
    ) -> [Option<&'g Entry<K, V>>; 2] {
        let mut expired = [None, None];
        for (fifo, out) in [Fifo::Small, Fifo::Main].into_iter().zip(&mut expired) {
            let Some(q) = self.pop(fifo) else { continue };
            // As in `evict_one`: look again after a failed unlink.
            while let Some(e) = index.find_handle(q.hash, q.handle, guard) {
                if !e.expired_at(now) {
                    self.push(fifo, e);
                    break;
                }
                if let Some(p) = index.replace(e, None, guard) {
                    // SAFETY: unlinked by our own swap just now; retired once, here.
                    unsafe { self.retire(p, guard) };
                    *out = Some(e);
                    break;
                }
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::{ghost_ring_len, Policy, LUCKY_FREQUENCY, LUCKY_ONE_IN};
    use crate::sync::epoch::Collector;

    #[test]
    fn about_one_frequent_loser_in_128_is_lucky_and_no_infrequent_one() {
        let policy: Policy<u64, u64> = Policy::new(1_000, 1_000, &Collector::new());
        const DRAWS: u64 = 128_000;
        let lucky = |frequency, hash: fn(u64) -> u64| {
            (0..DRAWS)
                .filter(|&i| policy.lucky(frequency, hash(i)))
                .count() as u64
        };
        assert_eq!(lucky(LUCKY_FREQUENCY - 1, |i| i), 0);
        // Distinct keys, and one key again and again (the draw count varies the noise).
        for (what, hash) in [
            ("distinct keys", (|i| i) as fn(u64) -> u64),
            ("one key", |_| 42),
        ] {
            let won = lucky(LUCKY_FREQUENCY, hash);
            let expected = DRAWS / LUCKY_ONE_IN;
            assert!(
                (expected * 8 / 10..=expected * 12 / 10).contains(&won),
                "{what}: {won} lucky of {DRAWS}, expected about {expected}"
            );
        }
    }

    #[test]
    fn the_ghost_ring_is_the_nearest_power_of_two() {
        for (entries, ring) in [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 4),
            (5, 4),
            (6, 8),
            (1_000, 1_024),
            (10_000, 8_192),
            (12_288, 16_384),
            (32_768, 32_768),
            (131_072, 131_072),
        ] {
            assert_eq!(ghost_ring_len(entries), ring, "{entries} entries");
        }
    }
}
