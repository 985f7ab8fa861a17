//! The models' raw throughput at batch 1, 4, 16 and 64, without any serving around them: what
//! batching alone can gain on this machine, next to the showcase's served figures.
//!
//! Groups `models/{lstm,transformer}/{prefill,decode}/{1,4,16,64}`:
//! - `prefill`: `batch` fresh sequences each fed a 32-byte prompt in one prefill call;
//! - `decode`: one decode step for `batch` sequences that have each seen 32 tokens (the prefill
//!   is set-up, not timed).
//!
//! Throughput is in tokens (`Throughput::Elements`), so the per-token time at batch 64 over
//! batch 1 is the batching gain.
//!
//! Group `models/{lstm,transformer}/continuing/{alone,together}/32`: 32 requests continuing
//! sessions of mixed lengths, as in the showcase's default workload (40-219 tokens seen, a
//! prompt of 8-48 tokens, 8-24 tokens generated), generated one at a time (`alone`) or all
//! together (`together`), each with its whole decode loop. Throughput is in requests, so
//! `together` over `alone` is the raw gain of batching continuing sessions. Everything runs inside a one-thread rayon pool, as in the
//! showcase (candle's CPU kernels run on the current rayon pool).
//!
//! ```text
//! cargo bench -p latchless-showcase --bench models
//! ```

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use latchless_showcase::lstm::{LstmConfig, LstmLm};
use latchless_showcase::model::{generate, Job, LanguageModel};
use latchless_showcase::transformer::{TransformerConfig, TransformerLm};

const PROMPT: usize = 32;
const BATCHES: [usize; 4] = [1, 4, 16, 64];

fn prompts(batch: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|i| {
            (0..PROMPT)
                .map(|t| ((i * 7 + t * 13) % 95 + 32) as u32)
                .collect()
        })
        .collect()
}

fn bench_model<M: LanguageModel>(c: &mut Criterion, model: &M, pool: &rayon::ThreadPool) {
    let mut group = c.benchmark_group(format!("models/{}", model.name()));
    group.sample_size(20);
    for batch in BATCHES {
        let prompts = prompts(batch);
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let fresh = || (0..batch).map(|_| model.fresh_state()).collect::<Vec<_>>();
        group.throughput(Throughput::Elements((batch * PROMPT) as u64));
        group.bench_function(format!("prefill/{batch}"), |b| {
            b.iter_batched(
                fresh,
                |states| pool.install(|| model.prefill(states, &refs, 0).unwrap()),
                BatchSize::SmallInput,
            )
        });
        group.throughput(Throughput::Elements(batch as u64));
        let next: Vec<u32> = (0..batch as u32).map(|i| 32 + i % 95).collect();
        group.bench_function(format!("decode/{batch}"), |b| {
            b.iter_batched(
                || pool.install(|| model.prefill(fresh(), &refs, 1).unwrap().0),
                |mut running| pool.install(|| model.decode(&mut running, &next).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    let jobs = pool.install(|| continuing_jobs(model, CONTINUING));
    group.throughput(Throughput::Elements(CONTINUING as u64));
    group.bench_function(format!("continuing/alone/{CONTINUING}"), |b| {
        b.iter(|| {
            pool.install(|| {
                for job in &jobs {
                    generate(model, &mut [job.clone()]).unwrap();
                }
            })
        })
    });
    group.bench_function(format!("continuing/together/{CONTINUING}"), |b| {
        b.iter_batched(
            || jobs.clone(),
            |mut all| pool.install(|| generate(model, &mut all).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Requests in the continuing-sessions case.
const CONTINUING: usize = 32;

/// `n` requests continuing sessions of mixed lengths: each session has seen 40-219 tokens, and
/// the request brings a prompt of 8-48 tokens and asks for 8-24 more (fixed by a seed).
fn continuing_jobs<M: LanguageModel>(model: &M, n: usize) -> Vec<Job<M::State>> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut below = move |n: u64| {
        // xorshift64: enough to spread lengths and bytes.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    (0..n)
        .map(|_| {
            let seen: Vec<u32> = (0..40 + below(180))
                .map(|_| 32 + below(95) as u32)
                .collect();
            let (batch, _) = model
                .prefill(vec![model.fresh_state()], &[&seen], 0)
                .unwrap();
            let state = model.state_of(&batch, 0).unwrap();
            let prompt: Vec<u32> = (0..8 + below(41)).map(|_| 32 + below(95) as u32).collect();
            let max_new = 8 + below(17) as usize;
            let (state, feed) = model.fit(state, &prompt, max_new);
            Job::new(state, feed, max_new)
        })
        .collect()
}

fn models(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let lstm = LstmLm::new(LstmConfig::showcase(), 1).expect("the LSTM builds");
    bench_model(c, &lstm, &pool);
    let transformer =
        TransformerLm::new(TransformerConfig::showcase(), 1).expect("the transformer builds");
    bench_model(c, &transformer, &pool);
}

criterion_group!(benches, models);
criterion_main!(benches);
