//! Replays the fuzz targets on stable, without libFuzzer: every file of the committed seed
//! corpus (`corpus/<target>/`), then seeded pseudo-random inputs, through the same functions the
//! fuzz targets call.
//!
//! ```text
//! cargo test --manifest-path fuzz/Cargo.toml
//! LATCHLESS_FUZZ_INPUTS=20000 cargo test --release --manifest-path fuzz/Cargo.toml  # longer
//! ```
//!
//! A failing input is written to `artifacts/<target>/replay-*`, where
//! `cargo +nightly fuzz run <target> <file>` reproduces it under libFuzzer. An input still
//! running after [`HANG`] is saved the same way and the test binary exits at once (a hang cannot
//! be unwound), as libFuzzer's `-timeout` would.

use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, PoisonError};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

/// Pseudo-random inputs per target, unless `LATCHLESS_FUZZ_INPUTS` says otherwise.
const INPUTS: u64 = 1_000;

/// How long one input may run (they take milliseconds) before the watchdog calls it a hang.
const HANG: Duration = Duration::from_secs(60);

/// SplitMix64 (Steele, Lea and Flood, 2014): a seeded, portable generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The `i`-th pseudo-random input of `target`: lengths spread up to 8 KiB on a log scale (mostly
/// above the few bytes a configuration takes), and a quarter of the inputs drawn from few byte
/// values (small numbers decode to short bursts, small keys and the first enum variants).
fn input(target: &str, i: u64) -> Vec<u8> {
    let salt = target
        .bytes()
        .fold(0u64, |h, b| h.rotate_left(8) ^ u64::from(b));
    let mut rng = SplitMix64(salt ^ i.wrapping_mul(0xA076_1D64_78BD_642F));
    let len = (rng.next() % (1 << (4 + rng.next() % 10))) as usize;
    let narrow = rng.next().is_multiple_of(4);
    (0..len)
        .map(|_| {
            let x = rng.next();
            if narrow {
                (x % 8) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A target's body: runs one input, returns the number of steps it ran.
type Run = fn(&[u8]) -> usize;

/// Saves a failing input where cargo-fuzz keeps its artifacts; returns what to tell the user.
fn save(target: &str, name: &str, data: &[u8], what: &str) -> String {
    let dir = manifest_dir().join("artifacts").join(target);
    let file = dir.join(format!("replay-{name}"));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, data)) {
        Ok(()) => format!(
            "{target}: input {name} ({} bytes) {what}; saved as {path}\n  \
             reproduce: cargo +nightly fuzz run {target} {path}",
            data.len(),
            path = file.display(),
        ),
        Err(e) => format!("{target}: input {name} {what}; could not save it: {e}"),
    }
}

/// An input being replayed, for the watchdog.
struct Running {
    thread: ThreadId,
    target: String,
    name: String,
    data: Vec<u8>,
    since: Instant,
}

/// The inputs being replayed, at most one per test thread.
static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());

/// Starts (once) a thread that saves the input and exits the process when an input has run
/// longer than `HANG`.
fn start_watchdog() {
    static START: Once = Once::new();
    START.call_once(|| {
        thread::spawn(|| loop {
            thread::sleep(Duration::from_secs(1));
            let running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(r) = running.iter().find(|r| r.since.elapsed() > HANG) {
                let what = format!("still runs after {HANG:?} (a hang)");
                let message = save(&r.target, &r.name, &r.data, &what);
                // Straight to stderr: `eprintln!` would go to the test's captured output, which
                // is lost when the process exits.
                let _ = writeln!(std::io::stderr(), "{message}");
                std::process::exit(1);
            }
        });
    });
}

/// Runs `run` on `data` and returns its step count; on a panic (or a hang, see
/// [`start_watchdog`]), saves the input for libFuzzer and names it, then fails.
fn replay(target: &str, name: &str, data: &[u8], run: Run) -> usize {
    start_watchdog();
    let me = thread::current().id();
    RUNNING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Running {
            thread: me,
            target: target.to_owned(),
            name: name.to_owned(),
            data: data.to_vec(),
            since: Instant::now(),
        });
    let result = panic::catch_unwind(AssertUnwindSafe(|| run(data)));
    RUNNING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|r| r.thread != me);
    match result {
        Ok(steps) => steps,
        Err(panic) => {
            eprintln!("{}", save(target, name, data, "failed"));
            panic::resume_unwind(panic)
        }
    }
}

/// Replays every file under `corpus/<target>/`, which must hold some.
fn corpus(target: &str, run: Run) {
    let dir = manifest_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seed input", dir.display());
    let mut steps = 0;
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        steps += replay(target, &file_name(file), &data, run);
    }
    println!(
        "{target}: {} corpus inputs replayed, {steps} steps",
        files.len()
    );
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// Runs the seeded pseudo-random inputs of `target`.
fn random(target: &str, run: Run) {
    let n = std::env::var("LATCHLESS_FUZZ_INPUTS").map_or(INPUTS, |s| {
        s.trim()
            .parse()
            .unwrap_or_else(|e| panic!("LATCHLESS_FUZZ_INPUTS={s:?}: {e}"))
    });
    let mut steps = 0;
    for i in 0..n {
        steps += replay(target, &format!("random-{i}"), &input(target, i), run);
    }
    println!("{target}: {n} pseudo-random inputs replayed, {steps} steps");
    // The generator must keep producing inputs that decode to real work.
    assert!(
        n < 100 || steps >= 10 * n as usize,
        "{target}: only {steps} steps in {n} inputs"
    );
}

macro_rules! target_tests {
    ($($target:ident => $run:path),* $(,)?) => {
        mod corpus {
            $(
                #[test]
                fn $target() {
                    super::corpus(stringify!($target), $run);
                }
            )*
        }
        mod random {
            $(
                #[test]
                fn $target() {
                    super::random(stringify!($target), $run);
                }
            )*
        }
    };
}

target_tests! {
    batch => latchless_fuzz::run_batch,
    batch_stream => latchless_fuzz::run_batch_stream,
    cache => latchless_fuzz::run_cache,
    counter => latchless_fuzz::run_counter,
    queue => latchless_fuzz::run_queue,
}
