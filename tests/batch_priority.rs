//! Behaviour tests of a [`Batcher`]'s priority classes, each written to fail if the batcher
//! breaks its contract:
//!
//! - strict priority: with aging off, every waiting request of a more urgent class is computed
//!   before any of a less urgent one;
//! - aging: a class passed over `aging` batches in a row leads the next one (the documented bound
//!   `aging + classes - 1`, met exactly here);
//! - a class's own bound refuses (`Overloaded`, handed back) while the batcher has room, and its
//!   default timeout expires its requests (an explicit deadline overrides it);
//! - `NoSuchClass` hands the request back; zero-bound classes and more than 64 classes are
//!   configuration errors;
//! - per-class histograms count each class's requests.
//!
//! The worker is parked inside the handler on a gate request, so that requests pile up in a
//! known order before it picks among them. Every timeout is a hang guard, never an assertion
//! about speed.
//!
//! ```text
//! cargo test --test batch_priority
//! ```

use latchless::batch::{
    BatchError, Batcher, ConfigError, Pending, PriorityClass, SpawnError, SubmitError,
};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long anything may take before the test calls it a hang.
const GUARD: Duration = Duration::from_secs(60);

/// The request that parks the worker until the test opens the gate.
const GATE: u32 = u32::MAX;

/// `p`'s answer, or a panic if it takes longer than [`GUARD`] (a hang).
fn answer(p: Pending<u32>) -> Result<u32, BatchError> {
    match p.wait_timeout(GUARD) {
        Ok(answer) => answer,
        Err(_) => panic!("hung"),
    }
}

/// A batcher with one request per batch whose handler logs every request it computes and parks
/// on [`GATE`] until [`Rig::open`].
struct Rig {
    b: Batcher<u32, u32>,
    log: Arc<Mutex<Vec<u32>>>,
    entered: Receiver<()>,
    open: Sender<()>,
}

impl Rig {
    fn new(classes: Vec<PriorityClass>, aging: u32) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = mpsc::channel();
        let (open, open_rx) = mpsc::channel::<()>();
        let mut builder = Batcher::builder().max_batch_size(1).aging(aging);
        for c in classes {
            builder = builder.class(c);
        }
        let handler_log = Arc::clone(&log);
        let b = builder
            .spawn(move |xs: Vec<u32>| {
                for &x in &xs {
                    handler_log.lock().unwrap().push(x);
                    if x == GATE {
                        entered_tx.send(()).unwrap();
                        open_rx.recv_timeout(GUARD).expect("the gate never opened");
                    }
                }
                xs
            })
            .unwrap();
        Self {
            b,
            log,
            entered,
            open,
        }
    }

    /// Submits the gate to `class` and waits until the worker is parked on it.
    fn close(&self, class: usize) -> Pending<u32> {
        let p = self.b.submit_to(GATE, class).unwrap();
        self.entered
            .recv_timeout(GUARD)
            .expect("the gate batch never ran");
        p
    }

    fn open(&self) {
        self.open.send(()).unwrap();
    }

    /// What the handler computed, in order, once everything submitted is answered.
    fn finish(self) -> Vec<u32> {
        self.b.shutdown();
        let log = self.log.lock().unwrap().clone();
        log
    }
}

#[test]
fn without_aging_the_urgent_class_goes_first() {
    let rig = Rig::new(vec![PriorityClass::new(), PriorityClass::new()], u32::MAX);
    let gate = rig.close(0);
    let low: Vec<_> = (100..105).map(|x| rig.b.submit_to(x, 1).unwrap()).collect();
    let high: Vec<_> = (0..5).map(|x| rig.b.submit_to(x, 0).unwrap()).collect();
    rig.open();
    for p in high.into_iter().chain(low).chain([gate]) {
        answer(p).unwrap();
    }
    let log = rig.finish();
    assert_eq!(log, [GATE, 0, 1, 2, 3, 4, 100, 101, 102, 103, 104]);
}

#[test]
fn a_passed_over_class_leads_after_aging_batches() {
    let rig = Rig::new(vec![PriorityClass::new(), PriorityClass::new()], 2);
    let gate = rig.close(0);
    let low = rig.b.submit_to(100, 1).unwrap();
    let high: Vec<_> = (0..6).map(|x| rig.b.submit_to(x, 0).unwrap()).collect();
    rig.open();
    for p in high.into_iter().chain([low, gate]) {
        answer(p).unwrap();
    }
    let log = rig.finish();
    // Passed over twice (batches of 0 and 1), then it leads: the bound aging + classes - 1 = 3.
    assert_eq!(log, [GATE, 0, 1, 100, 2, 3, 4, 5]);
}

#[test]
fn a_class_bound_refuses_while_the_batcher_has_room() {
    let rig = Rig::new(
        vec![PriorityClass::new().max_queue(1), PriorityClass::new()],
        4,
    );
    let gate = rig.close(1);
    let first = rig.b.submit_to(1, 0).unwrap();
    match rig.b.submit_to(2, 0) {
        Err(SubmitError::Overloaded(back)) => assert_eq!(back, 2),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    // The other class, and the batcher, still have room.
    let other = rig.b.submit_to(3, 1).unwrap();
    rig.open();
    for p in [gate, first, other] {
        answer(p).unwrap();
    }
    // Answered: the class has room again.
    assert_eq!(rig.b.call_class(4, 0), 4);
    assert_eq!(rig.b.stats().refused_overloaded, 1);
    rig.finish();
}

/// `call` to a class, for the tests.
trait CallClass {
    fn call_class(&self, x: u32, class: usize) -> u32;
}

impl CallClass for Batcher<u32, u32> {
    fn call_class(&self, x: u32, class: usize) -> u32 {
        answer(self.submit_to(x, class).unwrap()).unwrap()
    }
}

#[test]
fn a_class_timeout_expires_its_requests_unless_a_deadline_is_given() {
    let rig = Rig::new(
        vec![
            PriorityClass::new().timeout(Duration::from_millis(1)),
            PriorityClass::new(),
        ],
        4,
    );
    let gate = rig.close(1);
    let defaulted = rig.b.submit_to(1, 0).unwrap();
    let explicit = rig
        .b
        .submit_to_before(2, 0, Instant::now() + GUARD)
        .unwrap();
    // The default timeout passes while the worker is parked on the gate.
    std::thread::sleep(Duration::from_millis(20));
    rig.open();
    answer(gate).unwrap();
    let defaulted = answer(defaulted);
    assert_eq!(defaulted, Err(BatchError::Expired));
    assert_eq!(answer(explicit), Ok(2));
    let log = rig.finish();
    assert!(
        !log.contains(&1),
        "an expired request was computed: {log:?}"
    );
}

#[test]
fn no_such_class_hands_the_request_back() {
    let b = Batcher::builder().spawn(|xs: Vec<u32>| xs).unwrap();
    assert_eq!(b.call_class(5, 0), 5);
    match b.submit_to(6, 1) {
        Err(SubmitError::NoSuchClass(back)) => assert_eq!(back, 6),
        other => panic!("expected NoSuchClass, got {other:?}"),
    }
    assert!(matches!(
        b.submit_to_before(7, 9, Instant::now()),
        Err(SubmitError::NoSuchClass(7))
    ));
}

#[test]
fn bad_classes_are_config_errors() {
    let err = Batcher::builder()
        .class(PriorityClass::new())
        .class(PriorityClass::new().max_queue(0))
        .spawn(|xs: Vec<u8>| xs)
        .unwrap_err();
    assert!(matches!(
        err,
        SpawnError::Config(ConfigError::ZeroClassQueue { class: 1 })
    ));
    assert_eq!(
        err.to_string(),
        "priority class 1: max_queue must be at least 1"
    );
    let mut many = Batcher::builder();
    for _ in 0..65 {
        many = many.class(PriorityClass::new());
    }
    assert!(matches!(
        many.spawn(|xs: Vec<u8>| xs).unwrap_err(),
        SpawnError::Config(ConfigError::TooManyClasses)
    ));
}

#[test]
fn histograms_are_kept_per_class() {
    let b = Batcher::builder()
        .class(PriorityClass::new())
        .class(PriorityClass::new())
        .class(PriorityClass::new())
        .spawn_pool(2, || |xs: Vec<u32>| xs)
        .unwrap();
    for i in 0..30 {
        assert_eq!(b.call_class(i, (i % 3) as usize), i);
    }
    assert_eq!(b.call(99).unwrap(), 99); // the last class
    b.shutdown();
    let h = b.histograms();
    let counts: Vec<u64> = h.classes.iter().map(|c| c.latency.len()).collect();
    assert_eq!(counts, [10, 10, 11]);
    assert_eq!(h.latency.len(), 31);
}
