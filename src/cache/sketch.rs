//! TinyLFU's frequency sketch: Gil Einziger, Roy Friedman and Ben Manes, "TinyLFU: A Highly
//! Efficient Cache Admission Policy" (ACM Transactions on Storage, 2017), laid out as Caffeine
//! lays it out: a count-min sketch of 4-bit counters, a key's four counters all in one 64-byte
//! block, and every counter halved once the sketch has counted ten times the expected entries,
//! so that old popularity fades.
//!
//! It estimates how often a key was asked for over a horizon longer than the cache holds it: the
//! eviction policy reads it to decide which new keys start in the main FIFO (see `policy`).
//!
//! Lock-free: an increment is a compare-and-swap per counter, retried only when another thread
//! changed the same 64-bit word meanwhile; the halving is one read-modify-write per word, run by
//! the one thread whose increment brought the count of additions to the sample size. A counter
//! never overflows into its neighbour (each increment checks the nibble under its own
//! compare-and-swap), and an increment racing the halving is kept, halved or not, never lost:
//! both are read-modify-writes of the same word.
//!
//! Under loom a key has one counter instead of four (`SKETCH_DEPTH` in `sync`): the protocol per
//! counter is the same, and four multiplied the cache models' states.

use crate::sync::{AtomicU64, CachePadded, Ordering, SKETCH_DEPTH};

/// Sixteen 4-bit counters per word, eight words per block: one cache line.
#[repr(align(64))]
struct Block([AtomicU64; 8]);

/// Halves every nibble of a word at once: the shift moves each nibble's low bit into its
/// neighbour's high bit, which the mask clears.
const HALVE_MASK: u64 = 0x7777_7777_7777_7777;

/// A counter's largest value.
const MAX: u64 = 15;

/// How many additions, per expected entry, between two halvings (Caffeine's and the paper's 10).
const SAMPLE_PER_ENTRY: u64 = 10;

/// A count-min sketch of 4-bit counters with periodic halving.
///
/// Only for latchless's loom models (hence hidden): the sketch is the cache's own.
#[doc(hidden)]
pub struct Sketch {
    blocks: Box<[Block]>,
    /// Increments that changed at least one counter since the last halving (less the half taken
    /// off by each halving).
    additions: CachePadded<AtomicU64>,
    /// Additions between two halvings.
    sample: u64,
}

impl Sketch {
    /// A sketch for a cache of about `entries` entries: one word (sixteen counters) per entry,
    /// rounded up to a power of two of whole blocks, halved every ten additions per entry.
    pub(crate) fn for_entries(entries: usize) -> Self {
        let entries = entries.max(1);
        let sample = u64::try_from(entries)
            .unwrap_or(u64::MAX)
            .saturating_mul(SAMPLE_PER_ENTRY);
        Self::new(entries, sample)
    }

    /// A sketch of at least `words` words (one block at least), halved every `sample`
    /// additions (at least 2).
    pub fn new(words: usize, sample: u64) -> Self {
        let blocks = words.div_ceil(8).max(1).next_power_of_two();
        Self {
            blocks: (0..blocks)
                .map(|_| Block(core::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            additions: CachePadded::new(AtomicU64::new(0)),
            sample: sample.max(2),
        }
    }

    /// The block of a hash, and its four counters there as (word, bit offset), each in a
    /// different pair of words. The block comes from the hash's top bits, mixed, and the
    /// counters from a second mix of the whole hash; the index and the ghost list use other bits.
    #[inline]
    fn counters(&self, hash: u64) -> (&Block, [(usize, u32); 4]) {
        let block = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        // Truncation intended: the mask keeps bits the block count can use.
        let block = &self.blocks[block as usize & (self.blocks.len() - 1)];
        let spread = (hash ^ (hash >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let mut at = [(0, 0); 4];
        for (i, slot) in at.iter_mut().enumerate() {
            // One byte of the spread per counter: its low bit picks one of the counter's two
            // words, the next four bits the nibble.
            let byte = (spread >> (i * 8)) as u32;
            *slot = (i * 2 + (byte & 1) as usize, ((byte >> 1) & 15) * 4);
        }
        (block, at)
    }

    /// The estimated count of `hash`: the least of its four counters (0 to 15).
    ///
    /// Relaxed here and in every method: the sketch publishes no memory, its counts are
    /// estimates by design, and each read-modify-write acts on its own word whatever the order.
    pub fn frequency(&self, hash: u64) -> u64 {
        let (block, at) = self.counters(hash);
        at[..SKETCH_DEPTH]
            .iter()
            .map(|&(w, shift)| (block.0[w].load(Ordering::Relaxed) >> shift) & MAX)
            .min()
            .unwrap_or(0)
    }

    /// Counts one request for `hash`: each of its counters below 15 goes up by one. When the
    /// additions since the last halving reach the sample size, the thread that got there halves
    /// every counter.
    ///
    /// Returns the estimate from just before this request ([`frequency`](Self::frequency) as
    /// the increments found it), so that a caller wanting both reads the counters once.
    pub fn increment(&self, hash: u64) -> u64 {
        let (block, at) = self.counters(hash);
        let mut added = false;
        let mut before = MAX;
        for &(w, shift) in &at[..SKETCH_DEPTH] {
            let word = &block.0[w];
            // Relaxed: see `frequency`.
            let bumped = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                ((v >> shift) & MAX < MAX).then(|| v + (1 << shift))
            });
            added |= bumped.is_ok();
            // Both arms hold the word as the update found it.
            let (Ok(v) | Err(v)) = bumped;
            before = before.min((v >> shift) & MAX);
        }
        // Each addition returns a distinct previous count, so exactly one thread sees
        // `sample - 1` each time the count climbs to the sample size.
        if added && self.additions.fetch_add(1, Ordering::Relaxed) == self.sample - 1 {
            self.halve();
        }
        before
    }

    /// Halves every counter, then takes half the sample off the additions (those made meanwhile
    /// stay counted).
    fn halve(&self) {
        for block in self.blocks.iter() {
            for word in &block.0 {
                // Relaxed: see `frequency`. A read-modify-write, so an increment racing it lands
                // before or after the halving, never in between.
                let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some((v >> 1) & HALVE_MASK)
                });
            }
        }
        self.additions.fetch_sub(self.sample / 2, Ordering::Relaxed);
    }
}

impl core::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sketch")
            .field("words", &(self.blocks.len() * 8))
            .field("sample", &self.sample)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::Sketch;

    #[test]
    fn counts_up_to_fifteen() {
        let sketch = Sketch::new(64, u64::MAX);
        for n in 1..=20 {
            let before = sketch.increment(42);
            assert_eq!(before, (n - 1).min(15), "estimate before increment {n}");
            assert_eq!(sketch.frequency(42), n.min(15), "after {n} increments");
        }
    }

    #[test]
    fn a_keys_counters_are_its_own() {
        // Enough words that 100 keys rarely share all four counters: each key's estimate is at
        // least its true count (count-min never undercounts) and most are exact.
        let sketch = Sketch::new(4096, u64::MAX);
        let hash = |k: u64| k.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (k << 40);
        for k in 0..100u64 {
            for _ in 0..k % 8 {
                sketch.increment(hash(k));
            }
        }
        let exact = (0..100u64)
            .filter(|&k| {
                let f = sketch.frequency(hash(k));
                assert!(f >= k % 8, "key {k} undercounted: {f}");
                f == k % 8
            })
            .count();
        assert!(exact >= 90, "only {exact} of 100 estimates exact");
    }

    #[test]
    fn the_sample_size_halves_every_counter() {
        let sketch = Sketch::new(8, 10);
        for _ in 0..9 {
            sketch.increment(7);
        }
        assert_eq!(sketch.frequency(7), 9);
        // The tenth addition reaches the sample size: 10 halves to 5.
        sketch.increment(7);
        assert_eq!(sketch.frequency(7), 5);
        // Half the sample stays counted: five more additions halve again.
        for _ in 0..4 {
            sketch.increment(7);
        }
        assert_eq!(sketch.frequency(7), 9);
        sketch.increment(7);
        assert_eq!(sketch.frequency(7), 5);
    }

    #[test]
    fn a_saturated_counter_adds_nothing() {
        let sketch = Sketch::new(8, 20);
        for _ in 0..19 {
            sketch.increment(3);
        }
        // 15 real additions; the four after saturation changed no counter and did not count.
        assert_eq!(sketch.frequency(3), 15);
        for _ in 0..5 {
            sketch.increment(3);
        }
        assert_eq!(
            sketch.frequency(3),
            15,
            "no halving: only 15 additions so far"
        );
    }
}
