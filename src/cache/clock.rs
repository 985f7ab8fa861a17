//! The clock a [`Cache`](super::Cache) reads its expiry against: [`Clock`], the [`SystemClock`]
//! every cache uses by default and the [`ManualClock`] that tests drive.
//!
//! Time is a `u64` of nanoseconds since an origin fixed by the clock: monotonic, so that a
//! deadline once passed stays passed. A cache reads its clock only for entries that carry a
//! deadline (see [`CacheBuilder::time_to_live`](super::CacheBuilder::time_to_live)) and, with a
//! time-to-idle ([`CacheBuilder::time_to_idle`](super::CacheBuilder::time_to_idle)), on every
//! hit and insert: a cache with neither never calls it.

use crate::sync::{Arc, AtomicU64, Ordering};
use core::time::Duration;

/// A source of monotonic time for a [`Cache`](super::Cache)'s expiry: nanoseconds since an origin
/// of the clock's choosing.
///
/// [`now`](Clock::now) must never go backwards (two calls, the second happening after the first,
/// return non-decreasing values), and must be cheap: a cache with a time-to-live calls it on
/// every lookup of an entry that has a deadline, and one with a time-to-idle on every lookup.
///
/// # Examples
///
/// ```
/// use latchless::cache::{Cache, Clock};
/// use std::time::Duration;
///
/// /// A clock that stands at one instant forever.
/// struct Frozen;
/// impl Clock for Frozen {
///     fn now(&self) -> u64 {
///         1_000
///     }
/// }
///
/// let cache = Cache::builder(10)
///     .time_to_live(Duration::from_secs(1))
///     .clock(Frozen)
///     .build();
/// cache.insert(1, "a");
/// assert_eq!(cache.get(&1), Some("a")); // time never passes
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The current time, in nanoseconds since this clock's origin.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Clock, SystemClock};
    ///
    /// let clock = SystemClock;
    /// let a = clock.now();
    /// assert!(clock.now() >= a);
    /// ```
    fn now(&self) -> u64;
}

/// The system's monotonic clock (the one [`std::time::Instant`] reads), in nanoseconds since an
/// origin fixed by the system: the default clock of every cache.
///
/// On Linux it reads `CLOCK_MONOTONIC` itself (nanoseconds since boot), about 6 ns a read
/// cheaper than taking an `Instant` and measuring it from an origin, which is what it does
/// elsewhere (from the first call in the process). Under the model checkers it stands still, so
/// that a model never depends on real time.
///
/// # Examples
///
/// ```
/// use latchless::cache::{Clock, SystemClock};
///
/// let t0 = SystemClock.now();
/// std::thread::sleep(std::time::Duration::from_millis(1));
/// assert!(SystemClock.now() >= t0 + 1_000_000);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// Nanoseconds since the clock's origin: boot on Linux, the first call in this process
    /// elsewhere (saturating after 584 years).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Clock, SystemClock};
    ///
    /// assert!(SystemClock.now() < u64::MAX);
    /// ```
    #[inline]
    fn now(&self) -> u64 {
        os::monotonic().unwrap_or_else(instant_nanos)
    }
}

/// [`SystemClock`]'s reading where the system's own is not used: nanoseconds since the first call.
fn instant_nanos() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // The shim's instant: the system's, except under the model checkers, whose clock stands
    // still (so a model never depends on real time).
    let now = crate::sync::now();
    let origin = *ORIGIN.get_or_init(|| now);
    u64::try_from(now.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// The system's monotonic clock read coarsely: about a quarter of [`SystemClock`]'s cost a read,
/// for a resolution of one kernel tick (1 to 10 ms, 4 ms on most Linux systems).
///
/// A cache with an expiry reads its clock on every lookup of an entry that can expire, and with
/// the [`SystemClock`] that read is most of such a hit's cost (measured on one thread, 10,000
/// entries, Zipf 0.99: a hit about 20-25 ns without expiry, 50-65 ns with a time-to-live on the
/// `SystemClock`, about 40 ns on this one). This clock makes it cheaper where expiry times are
/// far longer than a kernel tick, as a session cache's are: entries then expire up to one tick
/// early or late by the wall, though exactly on time by this clock, which is monotonic like the
/// other. Its origin is not the `SystemClock`'s: give one cache one clock.
///
/// On Linux it reads `CLOCK_MONOTONIC_COARSE` (the time of the last tick, kept by the vDSO: no
/// system call), in nanoseconds since boot. Elsewhere, or if the kernel refuses that clock, it
/// reads what [`SystemClock`] reads. Under the model checkers, as the `SystemClock`, it stands
/// still.
///
/// # Examples
///
/// ```
/// use latchless::cache::{Cache, CoarseClock};
/// use std::time::Duration;
///
/// let cache = Cache::builder(1_000)
///     .time_to_idle(Duration::from_secs(600))
///     .clock(CoarseClock)
///     .build();
/// cache.insert("session", 1);
/// assert_eq!(cache.get("session"), Some(1));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseClock;

impl Clock for CoarseClock {
    /// Nanoseconds since boot, as of the kernel's last tick (or [`SystemClock::now`] where the
    /// coarse clock is missing).
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Clock, CoarseClock};
    ///
    /// let clock = CoarseClock;
    /// let a = clock.now();
    /// assert!(clock.now() >= a);
    /// ```
    #[inline]
    fn now(&self) -> u64 {
        os::coarse().unwrap_or_else(|| SystemClock.now())
    }
}

/// The system's clocks, where they are read directly: on Linux, but not under the model
/// checkers, whose time stands still (the shim's `now`, through `instant_nanos`).
#[cfg(target_os = "linux")]
mod os {
    use crate::sync::UNDER_MODEL_CHECKER;
    use std::sync::OnceLock;

    /// `CLOCK_MONOTONIC`, if the kernel has it (std's `Instant` relies on it).
    #[inline]
    pub(super) fn monotonic() -> Option<u64> {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        available(&AVAILABLE, libc::CLOCK_MONOTONIC)
    }

    /// `CLOCK_MONOTONIC_COARSE`, if the kernel has it (since Linux 2.6.32).
    #[inline]
    pub(super) fn coarse() -> Option<u64> {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        available(&AVAILABLE, libc::CLOCK_MONOTONIC_COARSE)
    }

    /// Reads `clock` if it answered its first read: whether it does is asked once, so that a
    /// process never mixes one clock's readings (since boot) with the fallback's (since first
    /// use). Never under the model checkers (a constant: the branch compiles away).
    #[inline]
    fn available(known: &OnceLock<bool>, clock: libc::clockid_t) -> Option<u64> {
        if UNDER_MODEL_CHECKER {
            return None;
        }
        if !*known.get_or_init(|| read(clock).is_some()) {
            return None;
        }
        read(clock)
    }

    #[inline]
    fn read(clock: libc::clockid_t) -> Option<u64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock_gettime` writes one `timespec` through the pointer, which points to a
        // live, writable, properly aligned local that nothing else borrows, and keeps nothing.
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        if rc != 0 {
            return None;
        }
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u64::try_from(ts.tv_nsec).ok()?;
        Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
    }
}

/// No clock read directly: [`SystemClock`] and [`CoarseClock`] take an `Instant` (the shim's,
/// which stands still under the model checkers).
#[cfg(not(target_os = "linux"))]
mod os {
    #[inline]
    pub(super) fn monotonic() -> Option<u64> {
        None
    }

    #[inline]
    pub(super) fn coarse() -> Option<u64> {
        None
    }
}

/// A clock that moves only when told to: clones share one time, so a test keeps a handle and
/// gives the cache another. Starts at 0.
///
/// Built on the crate's own atomics, so under loom or shuttle the checker schedules around its
/// reads and advances like any other shared state.
///
/// # Examples
///
/// ```
/// use latchless::cache::{Cache, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let cache = Cache::builder(10)
///     .time_to_live(Duration::from_secs(60))
///     .clock(clock.clone())
///     .build();
/// cache.insert("session", 1);
/// clock.advance(Duration::from_secs(59));
/// assert_eq!(cache.get(&"session"), Some(1));
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(cache.get(&"session"), None); // expired, and removed
/// assert!(cache.is_empty());
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Clock, ManualClock};
    ///
    /// assert_eq!(ManualClock::new().now(), 0);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self {
            nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the clock (and every clone of it) forward by `by`, saturating at `u64::MAX`
    /// nanoseconds.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Clock, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let handle = clock.clone();
    /// handle.advance(Duration::from_nanos(5));
    /// assert_eq!(clock.now(), 5);
    /// ```
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // SeqCst: a test's advance and its later lookups are then ordered as written in every
        // thread's view, which is what a test of expiry reasons with.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Sets the clock to `since_origin` (saturating at `u64::MAX` nanoseconds). The clock must
    /// stay monotonic: a time earlier than the current one is ignored.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Clock, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// clock.set(Duration::from_secs(2));
    /// clock.set(Duration::from_secs(1)); // backwards: ignored
    /// assert_eq!(clock.now(), 2_000_000_000);
    /// ```
    pub fn set(&self, since_origin: Duration) {
        let t = u64::try_from(since_origin.as_nanos()).unwrap_or(u64::MAX);
        // SeqCst: as in `advance`.
        self.nanos.fetch_max(t, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    /// The time the clock was last set or advanced to.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless::cache::{Clock, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// clock.advance(Duration::from_micros(3));
    /// assert_eq!(clock.now(), 3_000);
    /// ```
    fn now(&self) -> u64 {
        // SeqCst: as in `advance`.
        self.nanos.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::{Clock, CoarseClock};
    use std::time::{Duration, Instant};

    #[test]
    fn the_coarse_clock_is_monotonic_and_follows_real_time_to_a_tick() {
        let clock = CoarseClock;
        let mut last = clock.now();
        for _ in 0..10_000 {
            let now = clock.now();
            assert!(now >= last, "went back from {last} to {now}");
            last = now;
        }
        // Over 50 ms of real time it moves 50 ms, give or take a tick at each end (at most
        // 10 ms each; a sleep may overshoot, so only the lower bound is firm).
        let (a, start) = (clock.now(), Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (b, real) = (clock.now(), start.elapsed());
        let moved = Duration::from_nanos(b - a);
        assert!(
            moved >= Duration::from_millis(30),
            "moved {moved:?} in {real:?}"
        );
        assert!(
            moved <= real + Duration::from_millis(20),
            "moved {moved:?} in {real:?}"
        );
    }
}
