//! The checker's self-tests: hand-written histories with known violations are rejected, known-good
//! ones with overlapping operations accepted, for the queue's model and the map's.

use crate::checker::{check, History, Operation};
use crate::map::{MapModel, MapOp, MapRet};
use crate::queue::{QueueModel, QueueOp, QueueRet};
use std::collections::{BTreeMap, VecDeque};

/// A hand-written history from `(thread, call, returned, op, response)` rows.
fn history<Op, Ret>(rows: Vec<(usize, u64, u64, Op, Ret)>) -> History<Op, Ret> {
    History::new(
        rows.into_iter()
            .map(|(thread, call, returned, op, ret)| Operation {
                thread,
                op,
                ret,
                call,
                returned,
            })
            .collect(),
    )
}

use QueueOp::{Pop, Push};
use QueueRet::{Popped, Pushed};

#[test]
fn queue_checker_rejects_known_bad_histories() {
    let bad = [
        (
            "LIFO order: push(1) then push(2), sequentially, pop 2 then 1",
            history(vec![
                (0, 0, 1, Push(1), Pushed),
                (0, 2, 3, Push(2), Pushed),
                (1, 4, 5, Pop, Popped(Some(2))),
                (1, 6, 7, Pop, Popped(Some(1))),
            ]),
        ),
        (
            "push(1) finished before push(2) began, but pop(2) finished before pop(1) began \
             (the pop of 2 overlaps its push)",
            history(vec![
                (0, 0, 1, Push(1), Pushed),
                (0, 2, 5, Push(2), Pushed),
                (1, 3, 6, Pop, Popped(Some(2))),
                (2, 7, 8, Pop, Popped(Some(1))),
            ]),
        ),
        (
            "a value popped that was never pushed",
            history(vec![
                (0, 0, 1, Push(1), Pushed),
                (1, 2, 3, Pop, Popped(Some(7))),
            ]),
        ),
        (
            "a value popped before its push began",
            history(vec![
                (1, 0, 1, Pop, Popped(Some(1))),
                (0, 2, 3, Push(1), Pushed),
            ]),
        ),
        (
            "a value popped twice (concurrent pops)",
            history(vec![
                (0, 0, 1, Push(1), Pushed),
                (1, 2, 5, Pop, Popped(Some(1))),
                (2, 3, 4, Pop, Popped(Some(1))),
            ]),
        ),
        (
            "an empty pop while a value was inside the whole time",
            history(vec![
                (0, 0, 1, Push(1), Pushed),
                (1, 2, 3, Pop, Popped(None)),
                (0, 4, 5, Pop, Popped(Some(1))),
            ]),
        ),
    ];
    for (what, h) in bad {
        match check(&QueueModel::default(), &h) {
            Ok(lin) => panic!("accepted a bad history ({what}), as {:?}:\n{h}", lin.order),
            Err(v) => println!("rejected, as it should be: {what}\n{v}"),
        }
    }
}

#[test]
fn queue_checker_accepts_known_good_histories() {
    // Overlapping pushes may take effect in either order: push(1) overlaps push(2), so popping 2
    // before 1 is fine.
    let h = history(vec![
        (0, 0, 5, Push(1), Pushed),
        (1, 1, 2, Push(2), Pushed),
        (1, 6, 7, Pop, Popped(Some(2))),
        (0, 8, 9, Pop, Popped(Some(1))),
        (1, 10, 11, Pop, Popped(None)),
    ]);
    let lin = check(&QueueModel::default(), &h).expect("a valid history");
    // History indices are by invocation: push(1) is #0, push(2) #1.
    assert_eq!(lin.order, [1, 0, 2, 3, 4]);

    // A pop that overlaps a push may return its value, and an empty pop overlapping a push may
    // take effect before it.
    let h = history(vec![
        (0, 0, 10, Push(1), Pushed),
        (1, 1, 2, Pop, Popped(None)),
        (2, 3, 4, Pop, Popped(Some(1))),
    ]);
    let lin = check(&QueueModel::default(), &h).expect("a valid history");
    assert_eq!(lin.order, [1, 0, 2]);

    // Starting from a non-empty state.
    let h = history(vec![(0, 0, 1, Pop, Popped(Some(9)))]);
    check(&QueueModel(VecDeque::from([9])), &h).expect("a valid history");
}

use MapOp::{Cas, Get, Insert, Remove};
use MapRet::{Exchanged, Value};

#[test]
fn map_checker_rejects_known_bad_histories() {
    let bad = [
        (
            "a stale read: get misses a key whose insert completed before it began",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (1, 2, 3, Get(0), Value(None)),
            ]),
        ),
        (
            "a stale read of an overwritten value",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (0, 2, 3, Insert(0, 2), Value(Some(1))),
                (1, 4, 5, Get(0), Value(Some(1))),
            ]),
        ),
        (
            "two successful concurrent exchanges from the same value",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (
                    1,
                    2,
                    5,
                    Cas {
                        key: 0,
                        current: 1,
                        new: 2,
                    },
                    Exchanged(Ok(())),
                ),
                (
                    2,
                    3,
                    6,
                    Cas {
                        key: 0,
                        current: 1,
                        new: 3,
                    },
                    Exchanged(Ok(())),
                ),
            ]),
        ),
        (
            "insert reports no replaced value although the key was present",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (1, 2, 3, Insert(0, 2), Value(None)),
            ]),
        ),
        (
            "two concurrent removes both return the value",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (1, 2, 5, Remove(0), Value(Some(1))),
                (2, 3, 6, Remove(0), Value(Some(1))),
            ]),
        ),
        (
            "a failed exchange that saw the expected value",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (
                    1,
                    2,
                    3,
                    Cas {
                        key: 0,
                        current: 1,
                        new: 2,
                    },
                    Exchanged(Err(Some(1))),
                ),
            ]),
        ),
        (
            "a write to one key shows up under another",
            history(vec![
                (0, 0, 1, Insert(0, 1), Value(None)),
                (1, 2, 3, Get(1), Value(Some(1))),
            ]),
        ),
    ];
    for (what, h) in bad {
        match check(&MapModel::default(), &h) {
            Ok(lin) => panic!("accepted a bad history ({what}), as {:?}:\n{h}", lin.order),
            Err(v) => println!("rejected, as it should be: {what}\n{v}"),
        }
    }
}

#[test]
fn map_checker_accepts_known_good_histories() {
    // Two racing exchanges from one value: one wins, the other sees the winner's value.
    let h = history(vec![
        (0, 0, 1, Insert(0, 1), Value(None)),
        (
            1,
            2,
            6,
            Cas {
                key: 0,
                current: 1,
                new: 2,
            },
            Exchanged(Ok(())),
        ),
        (
            2,
            3,
            5,
            Cas {
                key: 0,
                current: 1,
                new: 3,
            },
            Exchanged(Err(Some(2))),
        ),
        (0, 7, 8, Get(0), Value(Some(2))),
    ]);
    let lin = check(&MapModel::default(), &h).expect("a valid history");
    assert_eq!(lin.order, [0, 1, 2, 3]);

    // A get overlapping an insert may see either the old or the new value, and the insert's
    // replaced value must be consistent with where the get is placed.
    for seen in [None, Some(5)] {
        let h = history(vec![
            (0, 0, 10, Insert(1, 5), Value(None)),
            (1, 1, 2, Get(1), Value(seen)),
            (1, 3, 4, Remove(1), Value(Some(5))),
            (1, 5, 6, Get(1), Value(None)),
        ]);
        check(&MapModel::default(), &h).expect("a valid history");
    }

    // From a non-empty state: the remove and the failed exchange overlap, and the exchange saw
    // the key absent, so the remove goes first.
    let init = MapModel(BTreeMap::from([(2, 3)]));
    let h = history(vec![
        (
            0,
            0,
            3,
            Cas {
                key: 2,
                current: 3,
                new: 0,
            },
            Exchanged(Err(None)),
        ),
        (1, 1, 2, Remove(2), Value(Some(3))),
    ]);
    let lin = check(&init, &h).expect("a valid history");
    assert_eq!(lin.order, [1, 0]);
}
