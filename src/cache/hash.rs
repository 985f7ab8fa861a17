//! The cache's default hasher.

use core::fmt;
use core::hash::{BuildHasher, Hasher};

/// The cache's default [`BuildHasher`]: fast and randomly seeded.
///
/// Inside is [foldhash](https://docs.rs/foldhash)'s `fast` hasher, as quick_cache and hashbrown
/// use: a few cycles for an integer key where std's SipHash-1-3 takes tens. The crate owns this
/// type so that the algorithm inside can change without a breaking change.
///
/// **Hash flooding.** Each builder is seeded from the process's address-space layout, the clock
/// and a per-thread counter, so keys that collide for one process are unlikely to collide for
/// another. That stops casual collisions, not a determined attacker who can observe timings: it
/// is not a keyed cryptographic hash. A collision costs the cache lookup time in one bucket, not
/// correctness or memory. Caches whose keys an adversary picks (user-chosen session ids, say)
/// can pass std's `RandomState` to [`CacheBuilder::hasher`](super::CacheBuilder::hasher) or
/// [`Cache::with_hasher`](super::Cache::with_hasher).
///
/// # Examples
///
/// ```
/// use latchless::cache::{Cache, DefaultHashBuilder};
/// use std::hash::BuildHasher;
///
/// let hasher = DefaultHashBuilder::default();
/// assert_eq!(hasher.hash_one(7u64), hasher.clone().hash_one(7u64));
/// let cache = Cache::with_hasher(8, hasher);
/// cache.insert(7u64, "seven");
/// assert_eq!(cache.get(&7), Some("seven"));
/// ```
#[derive(Clone, Default)]
pub struct DefaultHashBuilder(foldhash::fast::RandomState);

impl fmt::Debug for DefaultHashBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The seed stays private: printing it would hand out what makes collisions hard to find.
        f.debug_struct("DefaultHashBuilder").finish_non_exhaustive()
    }
}

impl BuildHasher for DefaultHashBuilder {
    type Hasher = DefaultHasher;

    #[inline]
    fn build_hasher(&self) -> DefaultHasher {
        DefaultHasher(self.0.build_hasher())
    }
}

/// The [`Hasher`] a [`DefaultHashBuilder`] builds.
///
/// # Examples
///
/// ```
/// use latchless::cache::DefaultHashBuilder;
/// use std::hash::{BuildHasher, Hasher};
///
/// let builder = DefaultHashBuilder::default();
/// let mut a = builder.build_hasher();
/// let mut b = builder.build_hasher();
/// a.write_u64(1);
/// b.write_u64(1);
/// assert_eq!(a.finish(), b.finish());
/// ```
#[derive(Clone)]
pub struct DefaultHasher(foldhash::fast::FoldHasher<'static>);

impl fmt::Debug for DefaultHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultHasher").finish_non_exhaustive()
    }
}

impl Hasher for DefaultHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0.finish()
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0.write_u8(i);
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.0.write_u16(i);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.0.write_u32(i);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0.write_u64(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.0.write_u128(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0.write_usize(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_are_seeded_apart_and_clones_agree() {
        let a = DefaultHashBuilder::default();
        let b = DefaultHashBuilder::default();
        // Clones hash alike: a cache hashes every key through one builder.
        assert_eq!(a.hash_one("key"), a.clone().hash_one("key"));
        // Two builders almost surely differ somewhere over a few keys.
        assert!((0u64..8).any(|k| a.hash_one(k) != b.hash_one(k)));
    }

    #[test]
    fn every_write_width_reaches_the_hash() {
        let s = DefaultHashBuilder::default();
        let one = |f: &dyn Fn(&mut DefaultHasher)| {
            let mut h = s.build_hasher();
            f(&mut h);
            h.finish()
        };
        let base = one(&|_| {});
        for h in [
            one(&|h| h.write(&[1])),
            one(&|h| h.write_u8(1)),
            one(&|h| h.write_u16(1)),
            one(&|h| h.write_u32(1)),
            one(&|h| h.write_u64(1)),
            one(&|h| h.write_u128(1)),
            one(&|h| h.write_usize(1)),
        ] {
            assert_ne!(h, base);
        }
    }
}
