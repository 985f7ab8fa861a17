//! The workload driver's accounting of refusals: dropped and counted in the open loop, retried
//! in the closed loop, and never mixed into the answered requests' figures; and the continuous
//! batch's state budget.

use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use latchless::batch::{BatchConfig, JoinPolicy};
use latchless_showcase::lstm::{LstmConfig, LstmLm};
use latchless_showcase::serve::{Engine, Request};
use latchless_showcase::workload::{run, Arrivals, Mode, Serving, Workload};

fn workload() -> Workload {
    Workload {
        clients: 8,
        requests: 64,
        sessions_per_client: 1,
        prompt_len: 4..=8,
        max_new: 4..=8,
        long_share: 0.0,
        long_factor: 1,
        seed: 7,
    }
}

fn serving(arrivals: Arrivals) -> Serving {
    let mut batch = BatchConfig::default();
    // One request at a time may wait or run: with every request arriving at once, most of them
    // find the batcher full.
    batch.max_queue = 1;
    batch.max_batch_size = 1;
    batch.max_wait = Duration::ZERO;
    Serving {
        batch,
        join: JoinPolicy::default(),
        workers: 1,
        arrivals,
        high_share: 0.0,
        state_budget: u64::MAX,
    }
}

fn engine() -> Arc<Engine<LstmLm>> {
    let model = Arc::new(LstmLm::new(LstmConfig::tiny(), 3).unwrap());
    Arc::new(Engine::new(model, 1).unwrap())
}

#[test]
fn the_open_loop_drops_and_counts_refused_requests() {
    let work = workload();
    let requests = work.requests();
    let total: usize = requests.iter().map(Vec::len).sum();
    // A million arrivals a second: all 64 come within a fraction of a millisecond.
    let open = Arrivals::Open { rate: 1e6, seed: 1 };
    for mode in [Mode::Batcher, Mode::Continuous, Mode::ContinuousWhole] {
        let outcome = run(
            mode,
            engine(),
            &requests,
            &serving(open),
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert!(outcome.errors.is_empty(), "{mode:?}: {:?}", outcome.errors);
        assert!(outcome.refusals > 0, "{mode:?}: nothing refused");
        assert!(outcome.ok > 0, "{mode:?}: nothing served");
        // Each request is either answered or refused, once.
        assert_eq!(outcome.ok + outcome.refusals, total as u64, "{mode:?}");
        assert_eq!(outcome.latency.len(), outcome.ok, "{mode:?}");
    }
}

#[test]
fn the_closed_loop_retries_refused_requests_until_served() {
    let work = workload();
    let requests = work.requests();
    let total: usize = requests.iter().map(Vec::len).sum();
    for mode in [Mode::Batcher, Mode::Continuous, Mode::ContinuousWhole] {
        let outcome = run(
            mode,
            engine(),
            &requests,
            &serving(Arrivals::Closed),
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert!(outcome.errors.is_empty(), "{mode:?}: {:?}", outcome.errors);
        assert_eq!(outcome.ok, total as u64, "{mode:?}");
        assert!(
            outcome.refusals > 0,
            "{mode:?}: eight clients never found the batcher full"
        );
    }
}

#[test]
fn the_state_budget_bounds_the_rows_of_a_continuous_step() {
    let work = workload();
    let requests = work.requests();
    let engine = engine();
    // An LSTM row holds the same state whatever it reads: a budget of two rows' worth.
    let row = engine.row_bytes(&Request {
        session: 0,
        prompt: b"x".to_vec(),
        max_new: 1,
    });
    let widest = |budget: u64| {
        let mut serving = serving(Arrivals::Closed);
        serving.batch.max_queue = 64;
        serving.batch.max_batch_size = 8;
        serving.state_budget = budget;
        let outcome = run(
            Mode::Continuous,
            Arc::clone(&engine),
            &requests,
            &serving,
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
        assert_eq!(
            outcome.ok,
            requests.iter().map(Vec::len).sum::<usize>() as u64
        );
        outcome
            .histograms
            .expect("the batcher's histograms")
            .batch_size
            .max()
    };
    let bounded = widest(2 * row);
    assert!(bounded <= 2, "{bounded} rows in a step with room for 2");
    // Without the budget the same eight clients fill wider steps: the bound is what held.
    let free = widest(u64::MAX);
    assert!(free > 2, "only {free} rows in a step without a budget");
}
