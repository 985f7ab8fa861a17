//! A lock-free histogram of durations, for the server's own overhead: recorded on the runtime's
//! threads by every request, so recording is three relaxed atomic adds and never waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: a value is kept to within 1/64 (1.6%) of itself.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this are kept exactly, one bucket each.
const LINEAR: u64 = 2 * SUB;
/// The largest value kept, in nanoseconds (2^37 - 1, about 137 s); longer ones count as it.
const MAX_NANOS: u64 = (1 << 37) - 1;
/// Buckets: the linear ones, then `SUB` per power of two from 2^7 to 2^36.
const BUCKETS: usize = (LINEAR + (37 - (SUB_BITS as u64 + 1)) * SUB) as usize;

/// Durations recorded in nanoseconds into log-linear buckets (exact below 128 ns, then within
/// 1.6%), readable as quantiles, a count and a sum while recording goes on.
pub(crate) struct DurationHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl std::fmt::Debug for DurationHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurationHistogram")
            .field("count", &self.count())
            .field("p50", &self.quantile(0.5))
            .finish()
    }
}

impl DurationHistogram {
    pub(crate) fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub(crate) fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos())
            .unwrap_or(u64::MAX)
            .min(MAX_NANOS);
        // Relaxed: counts only, read as a snapshot; nothing else is published through them.
        self.buckets[index(nanos)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Durations recorded.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Their sum (each value capped at about 137 s).
    pub(crate) fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed))
    }

    /// The duration below which a fraction `q` (clamped to 0 to 1) of the recorded ones lie: the
    /// middle of its bucket, so within 1% of a recorded value; zero if nothing was recorded.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        // The rank of the wanted value, 1-based: at least the first, at most the last.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bounds(i);
                return Duration::from_nanos(low + width / 2);
            }
        }
        Duration::from_nanos(MAX_NANOS)
    }
}

/// The bucket of `nanos` (at most [`MAX_NANOS`]).
fn index(nanos: u64) -> usize {
    if nanos < LINEAR {
        return nanos as usize;
    }
    // The power of two below `nanos` is 2^e, e >= 7; the next SUB_BITS bits pick the sub-bucket.
    let e = 63 - u64::from(nanos.leading_zeros());
    let sub = (nanos >> (e - u64::from(SUB_BITS))) - SUB;
    (LINEAR + (e - u64::from(SUB_BITS) - 1) * SUB + sub) as usize
}

/// The lowest value of bucket `i` and how many values it holds.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        return (i, 1);
    }
    let e = (i - LINEAR) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (i - LINEAR) % SUB;
    let width = 1 << (e - u64::from(SUB_BITS));
    ((SUB + sub) * width, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_the_bucket_that_holds_it() {
        let mut last = None;
        for nanos in (0..5000)
            .chain((13..37).map(|e| (1u64 << e) - 1))
            .chain([MAX_NANOS])
        {
            let i = index(nanos);
            assert!(i < BUCKETS, "{nanos} -> {i}");
            let (low, width) = bounds(i);
            assert!(
                low <= nanos && nanos < low + width,
                "{nanos} in {low}+{width}"
            );
            assert!(
                width <= 1.max(low / SUB),
                "bucket {i} too wide: {width} at {low}"
            );
            if let Some(prev) = last {
                assert!(i >= prev, "buckets out of order at {nanos}");
            }
            last = Some(i);
        }
        assert_eq!(index(MAX_NANOS), BUCKETS - 1);
    }

    #[test]
    fn quantiles_count_and_sum() {
        let h = DurationHistogram::new();
        assert_eq!((h.count(), h.quantile(0.5)), (0, Duration::ZERO));
        // 1..=1000 microseconds: the median is 500 us, the p99 990 us.
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let near = |got: Duration, want_us: f64| {
            let got = got.as_secs_f64() * 1e6;
            assert!(
                (got - want_us).abs() <= want_us * 0.02,
                "{got} us, not {want_us}"
            );
        };
        near(h.quantile(0.5), 500.0);
        near(h.quantile(0.99), 990.0);
        near(h.quantile(0.0), 1.0);
        near(h.quantile(1.0), 1000.0);
        assert_eq!(h.count(), 1000);
        assert_eq!(h.sum(), Duration::from_micros(500_500));
        // A duration past the range counts as the largest kept.
        h.record(Duration::from_secs(1_000));
        assert!(h.quantile(1.0) >= Duration::from_secs(130));
    }
}
