//! The serving engine: bad input answered with errors, sessions continued and guarded, and
//! many client threads served through the batcher, every request answered once.

use std::sync::Arc;

use latchless::batch::{BatchConfig, Batcher};
use latchless_showcase::lstm::{LstmConfig, LstmLm};
use latchless_showcase::model::{generate, Job, LanguageModel};
use latchless_showcase::serve::{Engine, Request, ServeError};
use latchless_showcase::transformer::{TransformerConfig, TransformerLm};

fn lstm_engine(session_bytes: u64) -> Engine<LstmLm> {
    Engine::new(
        Arc::new(LstmLm::new(LstmConfig::tiny(), 5).unwrap()),
        session_bytes,
    )
    .unwrap()
}

fn req(session: u64, prompt: &[u8], max_new: usize) -> Request {
    Request {
        session,
        prompt: prompt.to_vec(),
        max_new,
    }
}

#[test]
fn bad_requests_get_errors_and_the_rest_of_the_batch_is_served() {
    let engine = lstm_engine(1 << 20);
    let limit = engine.model().max_request_tokens();
    let replies = engine.serve(vec![
        req(1, b"", 4),
        req(2, b"fine", 3),
        req(3, &vec![b'a'; limit], 1),
        req(4, b"x", usize::MAX),
    ]);
    assert_eq!(replies[0], Err(ServeError::EmptyPrompt));
    assert_eq!(replies[1].as_ref().unwrap().text.len(), 3);
    assert_eq!(
        replies[2],
        Err(ServeError::TooLong {
            requested: limit + 1,
            limit
        })
    );
    assert!(matches!(replies[3], Err(ServeError::TooLong { .. })));
    // Nothing was stored for the refused sessions.
    assert!(!engine.sessions().contains_key(&1));
    assert!(engine.sessions().contains_key(&2));
}

#[test]
fn a_session_continues_where_it_stopped() {
    let engine = lstm_engine(1 << 20);
    let first = engine
        .serve(vec![req(7, b"hello ", 5)])
        .pop()
        .unwrap()
        .unwrap();
    assert!(!first.resumed);
    let second = engine
        .serve(vec![req(7, b"again", 6)])
        .pop()
        .unwrap()
        .unwrap();
    assert!(second.resumed);
    // The same as one sequence run straight through: first prompt, first reply, second prompt.
    let model = engine.model();
    let mut whole: Vec<u32> = b"hello ".iter().map(|&b| u32::from(b)).collect();
    whole.extend(first.text.iter().map(|&b| u32::from(b)));
    whole.extend(b"again".iter().map(|&b| u32::from(b)));
    let mut job = vec![Job::new(model.fresh_state(), whole, 6)];
    generate(model, &mut job).unwrap();
    let expected: Vec<u8> = job[0].output.iter().map(|&t| t as u8).collect();
    assert_eq!(second.text, expected);
}

#[test]
fn the_same_session_twice_in_a_batch_loses_the_second_time() {
    let engine = lstm_engine(1 << 20);
    let replies = engine.serve(vec![req(1, b"a", 2), req(1, b"b", 2), req(2, b"c", 2)]);
    assert!(replies[0].is_ok());
    assert_eq!(replies[1], Err(ServeError::SessionBusy { session: 1 }));
    assert!(replies[2].is_ok());
    // The winner's state is the one kept: the session continues from "a" and its reply.
    let version = engine.sessions().peek(&1).unwrap().version();
    let again = engine.serve(vec![req(1, b"d", 1)]).pop().unwrap().unwrap();
    assert!(again.resumed);
    assert_ne!(engine.sessions().peek(&1).unwrap().version(), version);
}

#[test]
fn a_state_heavier_than_the_cache_is_not_kept() {
    // The tiny LSTM's state is 2 layers x (h, c) x 32 floats = 512 bytes.
    let engine = lstm_engine(100);
    assert!(engine.serve(vec![req(1, b"abc", 2)])[0].is_ok());
    let again = engine
        .serve(vec![req(1, b"abc", 2)])
        .pop()
        .unwrap()
        .unwrap();
    assert!(!again.resumed);
    assert_eq!(engine.sessions().len(), 0);
}

#[test]
fn a_transformer_session_slides_its_window_instead_of_failing() {
    let model = Arc::new(TransformerLm::new(TransformerConfig::tiny(), 3).unwrap());
    let context = model.config().context;
    let engine = Engine::new(Arc::clone(&model), 1 << 24).unwrap();
    for turn in 0..8 {
        let reply = engine.serve(vec![req(1, &[b'q'; 12], 6)]).pop().unwrap();
        let reply = reply.unwrap_or_else(|e| panic!("turn {turn}: {e}"));
        assert_eq!(reply.text.len(), 6);
        let seen = engine.sessions().peek(&1).unwrap().state().len();
        assert!(
            seen <= context,
            "turn {turn}: {seen} tokens in a context of {context}"
        );
        assert!(seen >= 18, "turn {turn}: the request's own tokens are kept");
    }
}

#[test]
fn a_rows_bytes_are_the_state_its_request_leaves() {
    // The continuous batcher's budget counts each row at `row_bytes`, computed before the
    // request runs: for a transformer, exactly the keys and values its session holds after it,
    // before and after the window slides.
    let model = Arc::new(TransformerLm::new(TransformerConfig::tiny(), 3).unwrap());
    let engine = Engine::new(Arc::clone(&model), 1 << 24).unwrap();
    let mut sizes = Vec::new();
    for turn in 0..8 {
        let r = req(1, &[b'q'; 12], 6);
        let bytes = engine.row_bytes(&r);
        engine.serve(vec![r]).pop().unwrap().unwrap();
        let stored = engine.sessions().peek(&1).unwrap();
        assert_eq!(
            model.state_bytes(stored.state()),
            bytes,
            "turn {turn}: {} tokens",
            stored.state().len()
        );
        sizes.push(bytes);
    }
    assert!(
        sizes.windows(2).any(|w| w[1] > w[0]),
        "{sizes:?}: never grew"
    );
    assert!(
        sizes.windows(2).any(|w| w[1] < w[0]),
        "{sizes:?}: never slid"
    );
    // An LSTM's rows hold the same whatever they read.
    let lstm = lstm_engine(1 << 20);
    assert_eq!(
        lstm.row_bytes(&req(1, b"a", 1)),
        lstm.row_bytes(&req(2, &[b'a'; 40], 20))
    );
}

#[test]
fn many_clients_through_the_batcher_each_get_their_own_replies() {
    const CLIENTS: u64 = 8;
    const TURNS: usize = 12;
    let engine = Arc::new(lstm_engine(1 << 24));
    let handler_engine = Arc::clone(&engine);
    let mut config = BatchConfig::default();
    config.max_batch_size = 6;
    config.max_batch_cost = 200;
    let batcher = Batcher::spawn_with_cost(config, Request::cost, move |reqs| {
        handler_engine.serve(reqs)
    })
    .unwrap();
    std::thread::scope(|s| {
        for client in 0..CLIENTS {
            let batcher = batcher.clone();
            s.spawn(move || {
                for turn in 0..TURNS {
                    let max_new = 1 + (turn + client as usize) % 5;
                    let prompt = format!("client {client} turn {turn}");
                    let reply = batcher
                        .call(req(client, prompt.as_bytes(), max_new))
                        .unwrap()
                        .unwrap();
                    assert_eq!(reply.text.len(), max_new);
                    assert_eq!(reply.resumed, turn > 0, "client {client} turn {turn}");
                    assert!(reply.batch_size >= 1 && reply.batch_size <= 6);
                }
            });
        }
    });
    batcher.shutdown();
    let stats = batcher.stats();
    assert_eq!(stats.completed, CLIENTS * TURNS as u64);
    assert_eq!(engine.sessions().len(), CLIENTS as usize);
    // Batching happened: fewer batches than requests.
    assert!(stats.batches < stats.completed, "{stats:?}");
}

/// A step handler that runs each step only when the test hands it a permit.
struct Gated<H> {
    inner: H,
    permits: std::sync::mpsc::Receiver<()>,
}

impl<H: latchless::batch::StepHandler> latchless::batch::StepHandler for Gated<H> {
    type Req = H::Req;
    type State = H::State;
    type Chunk = H::Chunk;
    type Out = H::Out;

    fn join(&mut self, reqs: Vec<H::Req>) -> Vec<latchless::batch::Joined<H::State, H::Out>> {
        self.inner.join(reqs)
    }

    fn step(&mut self, items: &mut [H::State]) -> Vec<latchless::batch::Step<H::Chunk, H::Out>> {
        self.permits.recv().expect("the test hands out permits");
        self.inner.step(items)
    }
}

#[test]
fn a_cancelled_stream_leaves_the_continuous_batch_and_the_others_are_unchanged() {
    use latchless::batch::Streamed;
    use latchless_showcase::continuous::Continuous;

    let reqs: Vec<Request> = (0..4)
        .map(|s| req(s, format!("prompt {s}").as_bytes(), 20))
        .collect();
    // What each request gives alone.
    let alone: Vec<Vec<u8>> = reqs
        .iter()
        .map(|r| {
            let engine = lstm_engine(1 << 20);
            engine.serve(vec![r.clone()]).pop().unwrap().unwrap().text
        })
        .collect();
    let engine = Arc::new(lstm_engine(1 << 20));
    // A rendezvous: a send returns once the worker has started a step, so after the send of
    // step k + 1 the chunks of step k are in their streams.
    let (permit_tx, permits) = std::sync::mpsc::sync_channel(0);
    let batcher = Batcher::builder()
        .max_batch_size(4)
        .spawn_steps(Gated {
            inner: Continuous::new(Arc::clone(&engine), None),
            permits,
        })
        .unwrap();
    // Bound after the batcher, so dropped before it if an assertion fails: the gated worker
    // then fails its step instead of waiting for a permit while the batcher's drop drains it.
    let permit = permit_tx;
    let mut streams: Vec<_> = reqs
        .iter()
        .map(|r| batcher.submit(r.clone()).unwrap())
        .collect();
    // Step by step until every request has streamed a byte: the LSTM reads its prompt a token
    // per step, and the requests may join over a few joins.
    let mut steps = 0;
    let mut started = [false; 4];
    while !started.iter().all(|&s| s) {
        permit.send(()).unwrap();
        steps += 1;
        for (s, stream) in started.iter_mut().zip(&mut streams) {
            if !*s {
                *s = matches!(stream.try_next(), Some(Streamed::Chunk(_)));
            }
        }
    }
    let longest = reqs.iter().map(|r| r.prompt.len()).max().unwrap();
    assert!(steps <= longest + 4, "{steps} steps to start four requests");
    // Session 1's client hangs up, well before its twentieth byte: the worker sees it before
    // the step after the one running now.
    drop(streams.remove(1));
    // Steps from now on as fast as the worker asks; the handler's end (at shutdown) ends this.
    let feeder = std::thread::spawn(move || while permit.send(()).is_ok() {});
    for (stream, want) in streams.into_iter().zip([&alone[0], &alone[2], &alone[3]]) {
        let Some(Streamed::Done(Ok(Ok(reply)))) = stream.last() else {
            panic!("no reply");
        };
        assert_eq!(&reply.text, want);
    }
    batcher.shutdown();
    drop(batcher);
    feeder.join().unwrap();
    // The cancelled request stored nothing; the others stored their sessions.
    assert!(!engine.sessions().contains_key(&1));
    for s in [0, 2, 3] {
        assert!(engine.sessions().contains_key(&s));
    }
}
