//! Running the worker threads of one measured run: released together by a barrier, timed from
//! the first worker's start to the last one's end, with the CPU time each worker measured on its
//! own clock (`CLOCK_THREAD_CPUTIME_ID`), summed.

use std::ops::Range;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

/// The time of CPU clock `clock` (`clock_gettime`), or `None` if the call fails.
#[cfg(unix)]
fn cpu_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` only writes one `timespec` through the pointer, and `ts` is a live,
    // writable, properly aligned `timespec` owned by this frame for the whole call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

/// The calling thread's CPU time, or `None` where the platform has no per-thread CPU clock.
#[cfg(unix)]
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The calling thread's CPU time, or `None` where the platform has no per-thread CPU clock.
#[cfg(not(unix))]
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    None
}

/// The whole process's CPU time (every thread's, the spawner's included), or `None` where the
/// platform has none: for contenders that run threads of their own, which the workers' clocks
/// do not see.
#[cfg(unix)]
pub(crate) fn process_cpu_time() -> Option<Duration> {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// The whole process's CPU time, or `None` where the platform has no such clock.
#[cfg(not(unix))]
pub(crate) fn process_cpu_time() -> Option<Duration> {
    None
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// From the first worker's start to the last one's end.
    pub(crate) wall: Duration,
    /// CPU time of the worker threads, summed; `None` without a per-thread CPU clock.
    pub(crate) cpu: Option<Duration>,
}

/// A worker's body, boxed so that workers of different kinds (producers and consumers, say) can
/// run together; it returns what the worker reports (a checksum, counts, or nothing).
pub(crate) type Job<'env, T = ()> = Box<dyn FnOnce() -> T + Send + 'env>;

/// Runs `jobs` on one thread each, released together by a barrier, and returns what was
/// measured with each job's result, in order. A worker's panic is re-raised here.
///
/// Wall time runs from the first worker's start to the last worker's end, both read by the
/// workers themselves: with more threads than cores, the threads a barrier releases start one
/// after another, and some may even finish before the spawning thread is scheduled again.
pub(crate) fn run_workers<F, T>(jobs: Vec<F>) -> (Sample, Vec<T>)
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let barrier = Barrier::new(jobs.len());
    thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let cpu_start = thread_cpu_time();
                    let start = Instant::now();
                    let result = job();
                    let end = Instant::now();
                    let cpu = thread_cpu_time()
                        .zip(cpu_start)
                        .map(|(end, start)| end - start);
                    (start, end, cpu, result)
                })
            })
            .collect();
        let mut first_start: Option<Instant> = None;
        let mut last_end: Option<Instant> = None;
        let mut cpu = Some(Duration::ZERO);
        let mut results = Vec::with_capacity(handles.len());
        for h in handles {
            let (start, end, c, result) = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            first_start = Some(first_start.map_or(start, |f| f.min(start)));
            last_end = Some(last_end.map_or(end, |l| l.max(end)));
            cpu = cpu.zip(c).map(|(a, b)| a + b);
            results.push(result);
        }
        let wall = last_end
            .zip(first_start)
            .map_or(Duration::ZERO, |(end, start)| end - start);
        (Sample { wall, cpu }, results)
    })
}

/// The `i`-th of `parts` near-equal slices of `0..total`.
pub(crate) fn share(total: u64, parts: u64, i: u64) -> Range<u64> {
    total * i / parts..total * (i + 1) / parts
}

/// The length of [`share`]`(total, parts, i)`.
pub(crate) fn share_len(total: u64, parts: u64, i: u64) -> u64 {
    let r = share(total, parts, i);
    r.end - r.start
}
