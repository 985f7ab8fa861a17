//! The cache, as a map: `Cache<u8, u8>` without eviction against a `BTreeMap` model, and a map
//! whose compare-and-exchange is a separate read and write, which the checker must reject.

use crate::checker::Model;
use crate::rounds::{jitter, run_rounds, Report, BROKEN_ROUNDS, ROUNDS};
use latchless::cache::{Cache, CompareExchangeFailure};
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;
use std::thread;

/// Keys of the map tests: 0..KEYS.
const KEYS: u8 = 3;
/// Values come from 0..VALUES, so that compare-and-exchange often finds its expected value.
const VALUES: u8 = 4;

/// A map from `u8` to `u8`, as the sequential model sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct MapModel(pub(crate) BTreeMap<u8, u8>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapOp {
    Get(u8),
    Insert(u8, u8),
    Remove(u8),
    Cas { key: u8, current: u8, new: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapRet {
    /// `get` (the value), `insert` (the replaced value), `remove` (the removed value).
    Value(Option<u8>),
    /// `compare_exchange`: `Ok`, or `Err` with the value held when it failed.
    Exchanged(Result<(), Option<u8>>),
}

impl Model for MapModel {
    type Op = MapOp;
    type Ret = MapRet;

    fn apply(&mut self, op: &MapOp) -> MapRet {
        match *op {
            MapOp::Get(k) => MapRet::Value(self.0.get(&k).copied()),
            MapOp::Insert(k, v) => MapRet::Value(self.0.insert(k, v)),
            MapOp::Remove(k) => MapRet::Value(self.0.remove(&k)),
            MapOp::Cas { key, current, new } => match self.0.get(&key) {
                Some(&v) if v == current => {
                    self.0.insert(key, new);
                    MapRet::Exchanged(Ok(()))
                }
                other => MapRet::Exchanged(Err(other.copied())),
            },
        }
    }
}

/// A concurrent map under test.
trait TestMap: Sync {
    fn run(&self, op: &MapOp) -> MapRet;
    /// The value of `key`, read while no other thread runs (not recorded).
    fn quiescent_get(&self, key: u8) -> Option<u8>;
}

type FixedHasher = BuildHasherDefault<DefaultHasher>;

impl TestMap for Cache<u8, u8, FixedHasher> {
    fn run(&self, op: &MapOp) -> MapRet {
        match *op {
            MapOp::Get(k) => MapRet::Value(self.get(&k)),
            MapOp::Insert(k, v) => MapRet::Value(self.insert(k, v)),
            MapOp::Remove(k) => MapRet::Value(self.remove(&k)),
            MapOp::Cas { key, current, new } => match self.compare_exchange(&key, &current, new) {
                Ok(()) => MapRet::Exchanged(Ok(())),
                Err(e) => {
                    assert_eq!(e.failure, CompareExchangeFailure::Mismatch, "{op:?}");
                    assert_eq!(e.new, new, "{op:?} handed back another value");
                    MapRet::Exchanged(Err(e.current))
                }
            },
        }
    }

    fn quiescent_get(&self, key: u8) -> Option<u8> {
        self.peek(&key)
    }
}

/// A deliberately broken map: every operation is atomic except compare-and-exchange, which reads
/// under the lock, lets go, and writes under the lock again if the value matched.
struct RacyMap(Mutex<BTreeMap<u8, u8>>);

impl TestMap for RacyMap {
    fn run(&self, op: &MapOp) -> MapRet {
        match *op {
            MapOp::Cas { key, current, new } => {
                let found = self.0.lock().unwrap().get(&key).copied();
                if found != Some(current) {
                    return MapRet::Exchanged(Err(found));
                }
                thread::yield_now();
                self.0.lock().unwrap().insert(key, new);
                MapRet::Exchanged(Ok(()))
            }
            _ => MapModel::apply_to(&mut self.0.lock().unwrap(), op),
        }
    }

    fn quiescent_get(&self, key: u8) -> Option<u8> {
        self.0.lock().unwrap().get(&key).copied()
    }
}

impl MapModel {
    /// Applies `op` to a bare map (the atomic operations of `RacyMap`).
    fn apply_to(map: &mut BTreeMap<u8, u8>, op: &MapOp) -> MapRet {
        let mut model = MapModel(std::mem::take(map));
        let ret = model.apply(op);
        *map = model.0;
        ret
    }
}

/// Runs map rounds. Each thread draws `get`, `insert`, `remove` and `compare_exchange` over
/// `KEYS` keys; an exchange expects, three times in four, the last value this thread saw for
/// the key. The main thread then reads every key, and the quiescent state (also read by
/// `quiescent_get`) seeds the next round's model. `cas_share` is the share of exchanges in
/// sixteenths.
fn map_rounds<T: TestMap>(
    map: &T,
    rounds: usize,
    seed: u64,
    stop_early: bool,
    cas_share: u64,
) -> Report {
    run_rounds(
        map,
        rounds,
        seed,
        stop_early,
        |m| {
            MapModel(
                (0..KEYS)
                    .filter_map(|k| Some((k, m.quiescent_get(k)?)))
                    .collect(),
            )
        },
        |m, rec, rng, _who, ops| {
            let mut seen = [None; KEYS as usize];
            for _ in 0..ops {
                jitter(rng);
                let key = rng.below(u64::from(KEYS)) as u8;
                let value = rng.below(u64::from(VALUES)) as u8;
                let r = rng.below(16);
                let op = if r < cas_share {
                    let current = match seen[key as usize] {
                        Some(v) if rng.below(4) != 0 => v,
                        _ => rng.below(u64::from(VALUES)) as u8,
                    };
                    MapOp::Cas {
                        key,
                        current,
                        new: value,
                    }
                } else {
                    match r % 4 {
                        0 | 1 => MapOp::Get(key),
                        2 => MapOp::Insert(key, value),
                        _ => MapOp::Remove(key),
                    }
                };
                let ret = rec.call(op, |op| m.run(op));
                seen[key as usize] = match (op, ret) {
                    (MapOp::Get(_), MapRet::Value(v)) => v,
                    (MapOp::Insert(_, v), _) => Some(v),
                    (MapOp::Remove(_), _) => None,
                    (MapOp::Cas { new, .. }, MapRet::Exchanged(Ok(()))) => Some(new),
                    (MapOp::Cas { .. }, MapRet::Exchanged(Err(v))) => v,
                    (MapOp::Get(_) | MapOp::Cas { .. }, _) => {
                        unreachable!("{op:?} got {ret:?}")
                    }
                };
            }
        },
        |m, rec| {
            for k in 0..KEYS {
                rec.call(MapOp::Get(k), |op| m.run(op));
            }
        },
    )
}

/// A cache of capacity 64 (far more than `KEYS`: nothing is ever evicted) on a fixed hasher.
fn test_cache(index_buckets: Option<usize>) -> Cache<u8, u8, FixedHasher> {
    let builder = Cache::builder(64).hasher(FixedHasher::default());
    match index_buckets {
        Some(n) => builder.index_buckets(n).build(),
        None => builder.build(),
    }
}

#[test]
fn cache_histories_are_linearizable() {
    // One bucket for all keys, so every write contends with every other.
    let one_bucket = test_cache(Some(1));
    let sized = test_cache(None);
    let half = ROUNDS / 2;
    let a = map_rounds(&one_bucket, half, 0xCAC4_E001, false, 6);
    a.assert_linearizable("Cache (one bucket)");
    let b = map_rounds(&sized, ROUNDS - half, 0xCAC4_E002, false, 6);
    b.assert_linearizable("Cache (256 buckets)");
    for cache in [&one_bucket, &sized] {
        let present = (0..KEYS).filter(|k| cache.contains_key(k)).count();
        assert_eq!(
            cache.len(),
            present,
            "len() disagrees with the keys present"
        );
        assert_eq!(
            cache.stats().evictions,
            0,
            "the cache evicted below its capacity"
        );
    }
}

#[test]
// Checks the checker against a mutex-guarded map, no latchless code: in `BROKEN_ROUNDS` rounds,
// Miri's scheduler seldom preempts inside the broken exchange's window.
#[cfg_attr(miri, ignore = "a self-test of the checker: too few rounds under Miri")]
fn racy_map_histories_are_rejected() {
    // Mostly exchanges (12 in 16), so that two of them often expect the same value at once; the
    // yield inside the broken exchange widens its window.
    let map = RacyMap(Mutex::new(BTreeMap::new()));
    let report = map_rounds(&map, BROKEN_ROUNDS, 0x2ACE, true, 12);
    report.print("map with a non-atomic compare-and-exchange");
    let v = report
        .violations
        .first()
        .expect("the checker accepted every history of a non-atomic compare-and-exchange");
    println!("first rejected history:\n{v}");
}
