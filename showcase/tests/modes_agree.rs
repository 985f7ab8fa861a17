//! Greedy outputs do not depend on how requests are served: sessions of several turns, served
//! one at a time, by the whole-request batcher and by the continuous batcher (two workers,
//! requests joining running batches), give the bytes a reference run picks, wherever the
//! reference's top two logits differ by more than `TIE` (batched sums are not bit-exact, so a
//! near-tie may flip). Once a near-tie flips, the rest of that session is skipped, and counted.

use std::sync::Arc;

use latchless::batch::{Batcher, JoinPolicy, Streamed};
use latchless_showcase::continuous::Continuous;
use latchless_showcase::lstm::{LstmConfig, LstmLm};
use latchless_showcase::model::{generate, Job, LanguageModel};
use latchless_showcase::serve::{Engine, Request};
use latchless_showcase::transformer::{TransformerConfig, TransformerLm};

/// Top-two logit margins below this are near-ties.
const TIE: f32 = 1e-3;
const SESSIONS: u64 = 12;
const TURNS: usize = 3;

/// The requests of turn `turn`, one per session: lengths vary so that sequences finish at
/// different steps and late joiners meet running ones.
fn turn_requests(turn: usize) -> Vec<Request> {
    (0..SESSIONS)
        .map(|s| {
            let i = s as usize;
            let prompt = format!("s{s} t{turn} {}", "xyz".repeat((i + turn) % 4));
            Request {
                session: s,
                prompt: prompt.into_bytes(),
                max_new: 1 + (i * 3 + turn * 5) % 9,
            }
        })
        .collect()
}

/// What the reference run picked for one request, and each pick's top-two margin.
struct Reference {
    output: Vec<u8>,
    margins: Vec<f32>,
}

fn margin(row: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in row {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// Each session's turns run alone, in order, as the engine runs them (fit, then generate, the
/// state carried to the next turn), recording the logits of every pick.
fn reference<M: LanguageModel>(model: &M) -> Vec<Vec<Reference>> {
    let mut states: Vec<M::State> = (0..SESSIONS).map(|_| model.fresh_state()).collect();
    let mut out: Vec<Vec<Reference>> = (0..SESSIONS).map(|_| Vec::new()).collect();
    for turn in 0..TURNS {
        for req in turn_requests(turn) {
            let s = req.session as usize;
            let prompt: Vec<u32> = req.prompt.iter().map(|&b| u32::from(b)).collect();
            let (state, feed) = model.fit(states[s].clone(), &prompt, req.max_new);
            let mut job = Job::new(state, feed, req.max_new);
            job.logits = Some(Vec::new());
            let mut jobs = vec![job];
            generate(model, &mut jobs).unwrap();
            let job = jobs.pop().unwrap();
            out[s].push(Reference {
                output: job.output.iter().map(|&t| t as u8).collect(),
                margins: job.logits.unwrap().iter().map(|r| margin(r)).collect(),
            });
            states[s] = job.state;
        }
    }
    out
}

/// Compares one mode's outputs (per session, per turn) with the reference; returns the
/// positions compared and skipped. Panics on a mismatch at a clear pick.
fn compare(mode: &str, got: &[Vec<Vec<u8>>], want: &[Vec<Reference>]) -> (usize, usize) {
    let (mut compared, mut skipped) = (0, 0);
    for (s, (got, want)) in got.iter().zip(want).enumerate() {
        let mut flipped = false;
        for (turn, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.len(), w.output.len(), "{mode}: session {s} turn {turn}");
            for (i, (&gb, &wb)) in g.iter().zip(&w.output).enumerate() {
                if flipped {
                    skipped += 1;
                    continue;
                }
                if gb != wb {
                    assert!(
                        w.margins[i] <= TIE,
                        "{mode}: session {s} turn {turn} byte {i}: {gb} where the reference \
                         picked {wb} by a margin of {}",
                        w.margins[i]
                    );
                    // A near-tie flipped: the session's states differ from here on.
                    flipped = true;
                    skipped += 1;
                    continue;
                }
                compared += 1;
            }
        }
    }
    (compared, skipped)
}

fn one_at_a_time<M: LanguageModel>(engine: &Engine<M>) -> Vec<Vec<Vec<u8>>> {
    let mut out = vec![Vec::new(); SESSIONS as usize];
    for turn in 0..TURNS {
        for req in turn_requests(turn) {
            let s = req.session as usize;
            let reply = engine.serve(vec![req]).pop().unwrap().unwrap();
            assert_eq!(reply.resumed, turn > 0);
            out[s].push(reply.text);
        }
    }
    out
}

fn whole_request_batcher<M: LanguageModel>(engine: Arc<Engine<M>>) -> Vec<Vec<Vec<u8>>> {
    let handler = Arc::clone(&engine);
    let batcher = Batcher::builder()
        .max_batch_size(5)
        .cost(Request::cost)
        .spawn(move |reqs| handler.serve(reqs))
        .unwrap();
    let mut out = vec![Vec::new(); SESSIONS as usize];
    for turn in 0..TURNS {
        let pending: Vec<_> = turn_requests(turn)
            .into_iter()
            .map(|r| (r.session, batcher.submit(r).unwrap()))
            .collect();
        for (s, p) in pending {
            out[s as usize].push(p.wait().unwrap().unwrap().text);
        }
    }
    batcher.shutdown();
    out
}

fn continuous<M: LanguageModel>(engine: Arc<Engine<M>>) -> Vec<Vec<Vec<u8>>> {
    let factory_engine = Arc::clone(&engine);
    let batcher = Batcher::builder()
        .max_batch_size(5)
        .cost(Request::cost)
        .join_policy(JoinPolicy::eager())
        .spawn_steps_pool(2, move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            Continuous::new(Arc::clone(&factory_engine), Some(pool))
        })
        .unwrap();
    let mut out = vec![Vec::new(); SESSIONS as usize];
    for turn in 0..TURNS {
        let streams: Vec<_> = turn_requests(turn)
            .into_iter()
            .map(|r| (r.session, r.max_new, batcher.submit(r).unwrap()))
            .collect();
        for (s, max_new, stream) in streams {
            let items: Vec<_> = stream.collect();
            let (last, chunks) = items.split_last().unwrap();
            let Streamed::Done(Ok(Ok(reply))) = last else {
                panic!("session {s} turn {turn}: {last:?}");
            };
            // Every byte was streamed, in order, before the reply.
            let streamed: Vec<u8> = chunks
                .iter()
                .map(|c| match c {
                    Streamed::Chunk(b) => *b,
                    Streamed::Done(_) => unreachable!(),
                })
                .collect();
            assert_eq!(streamed.len(), max_new);
            assert_eq!(streamed, reply.text);
            assert_eq!(reply.resumed, turn > 0);
            out[s as usize].push(reply.text.clone());
        }
    }
    batcher.shutdown();
    out
}

fn check<M: LanguageModel>(model: M) {
    let model = Arc::new(model);
    let want = reference(&*model);
    let engine = || Arc::new(Engine::new(Arc::clone(&model), 1 << 24).unwrap());
    let runs = [
        ("one at a time", one_at_a_time(&engine())),
        ("whole-request batcher", whole_request_batcher(engine())),
        ("continuous batcher", continuous(engine())),
    ];
    for (mode, got) in &runs {
        let (compared, skipped) = compare(mode, got, &want);
        println!(
            "{}: {mode}: {compared} bytes compared, {skipped} skipped after a near-tie",
            model.name()
        );
        // Ties are rare with random weights: nearly every byte is checked.
        assert!(
            compared >= 9 * (compared + skipped) / 10,
            "{mode}: {skipped} skipped"
        );
    }
}

#[test]
fn lstm_greedy_outputs_agree_across_modes() {
    check(LstmLm::new(LstmConfig::tiny(), 11).unwrap());
}

#[test]
fn transformer_greedy_outputs_agree_across_modes() {
    check(TransformerLm::new(TransformerConfig::tiny(), 11).unwrap());
}
