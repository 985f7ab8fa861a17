//! Hit ratio: [`latchless::cache::Cache`] (S3-FIFO) must do at least as well as an exact LRU of
//! the same capacity (`lru::LruCache`) on
//!
//! - a Zipf(0.99) stream over 100,000 keys, at capacities 1,000 and 10,000 (1% and 10%), and
//! - the OLTP trace of the ARC paper (`../shared/traces/OLTP.lis.zst`) at 1,000 entries, when
//!   the traces' directory is there (otherwise the test prints why it skipped it).
//!
//! Both caches see the same requests on one thread, in order: `get(k)`, and on a miss
//! `insert(k, v)`; hit ratio = hits / requests, cold misses included. Everything is
//! deterministic: a fixed seed for the stream, and `BuildHasherDefault<DefaultHasher>` for the
//! latchless cache, so a failure reproduces. Each hit's value is checked, and so are the cache's
//! own `stats()` against the replay's counts.
//!
//! Sized for a debug build: 300,000 Zipf requests (over 80,000 misses even at 10,000 entries, so
//! the cache turns over several times) and the whole OLTP trace (914,145 requests).

// `lru`, `rand`, `rand_distr` and `zstd` are dev-dependencies only outside loom builds.
#![cfg(not(loom))]

use latchless::cache::Cache;
use rand::rngs::Xoshiro256PlusPlus;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use std::fs::File;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::io::{self, BufRead, BufReader};
use std::num::NonZeroUsize;
use std::path::Path;

/// Keys of the Zipf stream: `0..ZIPF_KEYS`.
const ZIPF_KEYS: u64 = 100_000;
/// Requests of the Zipf stream.
const ZIPF_REQUESTS: usize = if cfg!(miri) { 2_000 } else { 300_000 };
/// The stream's seed.
const SEED: u64 = 0x5EED_0001;

/// Fixed-key SipHash-1-3: reproducible eviction.
type FixedState = BuildHasherDefault<DefaultHasher>;

/// The value stored for `key`, so that a hit can be checked.
fn value_of(key: u64) -> u64 {
    key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555
}

/// `len` keys from Zipf(0.99) over `0..ZIPF_KEYS`.
fn zipf_keys(len: usize, seed: u64) -> Vec<u64> {
    let zipf = Zipf::new(ZIPF_KEYS as f64, 0.99).expect("valid Zipf parameters");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    // The sample is an integer-valued float in `1..=ZIPF_KEYS`.
    (0..len).map(|_| zipf.sample(&mut rng) as u64 - 1).collect()
}

/// Reads a zstd-compressed ARC trace: one request per line, `start n ignored request_no`, each
/// expanded into the `n` keys `start..start + n`.
fn load_trace(path: &Path) -> io::Result<Vec<u64>> {
    let reader = BufReader::new(zstd::stream::read::Decoder::new(File::open(path)?)?);
    let mut keys = Vec::new();
    for (line_no, line) in reader.lines().enumerate() {
        let line = line?;
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        let (start, n) = match (fields.next(), fields.next()) {
            (None, _) => continue, // a blank line
            (Some(Ok(start)), Some(Ok(n))) => (start, n),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}:{}: {line:?}", path.display(), line_no + 1),
                ))
            }
        };
        keys.extend(start..start + n);
    }
    Ok(keys)
}

/// Hits of the latchless cache of `capacity` entries over `keys`.
fn latchless_hits(capacity: u64, keys: &[u64]) -> u64 {
    let cache = Cache::builder(capacity)
        .hasher(FixedState::default())
        .count_lookups(true)
        .build();
    let mut hits = 0;
    for &k in keys {
        match cache.get(&k) {
            Some(v) => {
                assert_eq!(v, value_of(k), "wrong value for key {k}");
                hits += 1;
            }
            None => {
                cache.insert(k, value_of(k));
            }
        }
        assert!(
            cache.len() as u64 <= capacity,
            "{} entries in a cache of {capacity}",
            cache.len()
        );
    }
    let s = cache.stats();
    assert_eq!(s.hits, hits, "stats().hits disagrees with the replay");
    assert_eq!(
        s.misses,
        keys.len() as u64 - hits,
        "stats().misses disagrees with the replay"
    );
    hits
}

/// Hits of an exact LRU of `capacity` entries over `keys`.
fn lru_hits(capacity: u64, keys: &[u64]) -> u64 {
    let cap = NonZeroUsize::new(capacity as usize).expect("a positive capacity");
    let mut cache = lru::LruCache::with_hasher(cap, FixedState::default());
    let mut hits = 0;
    for &k in keys {
        if cache.get(&k).is_some() {
            hits += 1;
        } else {
            cache.put(k, value_of(k));
        }
    }
    hits
}

/// Asserts that latchless hits at least as often as exact LRU on `keys` at `capacity`; returns
/// exact LRU's hits.
fn at_least_lru(workload: &str, capacity: u64, keys: &[u64]) -> u64 {
    let ours = latchless_hits(capacity, keys);
    let lru = lru_hits(capacity, keys);
    let pct = |hits: u64| 100.0 * hits as f64 / keys.len() as f64;
    println!(
        "{workload} @ {capacity}: latchless {:.2}%, exact LRU {:.2}% ({} requests)",
        pct(ours),
        pct(lru),
        keys.len()
    );
    assert!(
        ours >= lru,
        "{workload} @ {capacity}: latchless hit ratio {:.2}% is below exact LRU's {:.2}% \
         ({ours} vs {lru} hits of {} requests)",
        pct(ours),
        pct(lru),
        keys.len()
    );
    lru
}

#[test]
fn zipf_at_1_percent() {
    at_least_lru("Zipf(0.99)", 1_000, &zipf_keys(ZIPF_REQUESTS, SEED));
}

#[test]
fn zipf_at_10_percent() {
    at_least_lru("Zipf(0.99)", 10_000, &zipf_keys(ZIPF_REQUESTS, SEED));
}

#[test]
fn oltp_at_1000() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/traces"));
    if cfg!(miri) {
        println!("skipped: too large for Miri");
        return;
    }
    if !dir.is_dir() {
        println!(
            "skipped: {} is not a directory (scripts/fetch_traces.sh fetches the traces)",
            dir.display()
        );
        return;
    }
    let keys = load_trace(&dir.join("OLTP.lis.zst")).expect("the OLTP trace reads");
    // Table III of the ARC paper: 914,145 requests. A short read would make the test vacuous.
    assert_eq!(keys.len(), 914_145, "OLTP: unexpected request count");
    let lru = at_least_lru("OLTP", 1_000, &keys);
    // The traces' README: exact LRU of 1,000 entries hits 32.83% of OLTP. A check on the loader
    // and the replay, without which the comparison means little.
    let lru_basis_points = (lru * 10_000 + keys.len() as u64 / 2) / keys.len() as u64;
    assert_eq!(
        lru_basis_points, 3283,
        "exact LRU on OLTP @ 1000 should hit 32.83%"
    );
}
