//! What the two models share: a byte vocabulary, per-sequence state, and batched generation.

use candle_core::{Result, Tensor};

/// Both models read and write bytes: 256 tokens.
pub const VOCAB: usize = 256;

/// A byte-level language model that runs many sequences at once, each from its own state.
///
/// The contract that makes batching invisible to a request: a row's logits and state depend
/// only on its own state and tokens, never on the other rows of its batch or on how long they
/// are (up to floating-point rounding in the kernels).
pub trait LanguageModel: Send + Sync + 'static {
    /// One sequence's state: everything needed to continue it.
    type State: Clone + Send + Sync + 'static;

    /// Sequences being generated together, between [`prefill`](Self::prefill) and their last
    /// [`decode`](Self::decode) step.
    type Batch: Send;

    /// The model's name on the command line and in reports.
    fn name(&self) -> &'static str;

    /// The most tokens one request may feed and generate together.
    fn max_request_tokens(&self) -> usize;

    /// The state of a sequence that has seen nothing.
    fn fresh_state(&self) -> Self::State;

    /// How many bytes the state's tensors hold (the session cache's weight).
    fn state_bytes(&self, state: &Self::State) -> u64;

    /// The most bytes of state a row holds while it serves a request that continues `state`
    /// (`None`: a fresh sequence), feeds `prompt` tokens and generates `max_new`: what the row
    /// brings to a continuous batch's working set, which every step reads whole. A
    /// transformer's keys and values grow with every token (up to its context); an LSTM's
    /// state does not grow.
    fn row_bytes(&self, state: Option<&Self::State>, prompt: usize, max_new: usize) -> u64;

    /// Makes room for a request that feeds `prompt` and generates `max_new` tokens: returns the
    /// state to start from and the tokens to feed. A model with a bounded context may start
    /// over from the most recent part of the sequence here.
    fn fit(&self, state: Self::State, prompt: &[u32], max_new: usize) -> (Self::State, Vec<u32>);

    /// Starts a batch: feeds `tokens[i]` (non-empty) to sequence `i`, which starts from
    /// `states[i]`; returns the batch and the logits after each sequence's last token,
    /// `[rows, VOCAB]`. `steps` is how many [`decode`](Self::decode) steps are to come at
    /// most, so that the batch can reserve room for them.
    ///
    /// # Errors
    ///
    /// A candle error, an empty token list, or a sequence longer than the model's context.
    fn prefill(
        &self,
        states: Vec<Self::State>,
        tokens: &[&[u32]],
        steps: usize,
    ) -> Result<(Self::Batch, Tensor)>;

    /// Feeds one token to each sequence of the batch; returns the logits, `[rows, VOCAB]`.
    ///
    /// # Errors
    ///
    /// A candle error, a token count other than the batch's rows, or a sequence running past
    /// the model's context.
    fn decode(&self, batch: &mut Self::Batch, tokens: &[u32]) -> Result<Tensor>;

    /// Keeps only the batch's rows `keep` (distinct indices, in any order), in that order.
    ///
    /// # Errors
    ///
    /// A candle error, or an index out of the batch.
    fn retain(&self, batch: &mut Self::Batch, keep: &[usize]) -> Result<()>;

    /// Appends `other`'s rows after `batch`'s, in order: continuous batching joins new
    /// sequences into a running batch so.
    ///
    /// # Errors
    ///
    /// A candle error.
    fn append(&self, batch: &mut Self::Batch, other: Self::Batch) -> Result<()>;

    /// A batch of sequences that start from `states` and have been fed nothing yet (at least
    /// one state).
    ///
    /// # Errors
    ///
    /// A candle error, or no state.
    fn batch_of(&self, states: Vec<Self::State>) -> Result<Self::Batch>;

    /// Feeds `tokens[i]` (non-empty; rows may feed different numbers of tokens) to row `i` of
    /// the batch; returns the logits after each row's last token, `[rows, VOCAB]`. A
    /// continuous batch feeds the rows still reading their prompt a part of it and the others
    /// their last pick, all in one call.
    ///
    /// # Errors
    ///
    /// A candle error, a token list count other than the batch's rows, an empty list, or a
    /// sequence running past the model's context.
    fn feed(&self, batch: &mut Self::Batch, tokens: &[&[u32]]) -> Result<Tensor>;

    /// The most prompt tokens a row feeds in one step of a continuous batch of `rows` rows.
    /// Small for a model that reads a token at a time anyway, while the batch is wide (a step
    /// then costs every row the same); more for a model whose prompt tokens run side by side
    /// in one product, or when the batch is so narrow that a step's fixed cost outweighs what
    /// a long step makes the other rows wait.
    fn prompt_chunk(&self, rows: usize) -> usize;

    /// Row `row`'s state, in storage of its own (a batch's tensors are shared by all its
    /// rows, and must not be kept alive by a cached session).
    ///
    /// # Errors
    ///
    /// A candle error.
    fn state_of(&self, batch: &Self::Batch, row: usize) -> Result<Self::State>;

    /// Row `row`'s state, as [`state_of`](Self::state_of) gives it, for a row that has finished:
    /// the row must not be fed again, and the next [`retain`](Self::retain) drops it. A model
    /// whose rows own their state moves it out instead of copying it; the default copies.
    ///
    /// # Errors
    ///
    /// A candle error.
    fn take_state(&self, batch: &mut Self::Batch, row: usize) -> Result<Self::State> {
        self.state_of(batch, row)
    }
}

/// One sequence's part in a call to [`generate`].
#[derive(Debug, Clone)]
pub struct Job<S> {
    /// In: the state to continue from. Out: the state after the prompt and every generated token
    /// (a fresh state if [`generate`] failed).
    pub state: S,
    /// The tokens to feed first. Must not be empty.
    pub prompt: Vec<u32>,
    /// How many tokens to generate.
    pub max_new: usize,
    /// If set, these tokens are fed back instead of the model's greedy picks (and reported as
    /// the output), so that logits can be compared across runs whatever near-ties do.
    pub forced: Option<Vec<u32>>,
    /// Out: the generated tokens.
    pub output: Vec<u32>,
    /// Out, if set to `Some` beforehand: the logits each output token was picked from.
    pub logits: Option<Vec<Vec<f32>>>,
}

impl<S> Job<S> {
    /// A job that continues `state` with `prompt` and generates `max_new` tokens greedily.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless_showcase::model::{generate, Job, LanguageModel};
    /// use latchless_showcase::lstm::{LstmConfig, LstmLm};
    ///
    /// let model = LstmLm::new(LstmConfig::tiny(), 1).unwrap();
    /// let mut jobs = vec![Job::new(model.fresh_state(), vec![104, 105], 3)];
    /// generate(&model, &mut jobs).unwrap();
    /// assert_eq!(jobs[0].output.len(), 3);
    /// ```
    pub fn new(state: S, prompt: Vec<u32>, max_new: usize) -> Self {
        Self {
            state,
            prompt,
            max_new,
            forced: None,
            output: Vec::new(),
            logits: None,
        }
    }
}

/// Runs every job together: one prefill of all prompts, then decode steps for all sequences at
/// once; a sequence that has produced its tokens stops taking part. Each generated token is
/// fed back, so a job's final state covers its prompt and its whole output.
///
/// # Errors
///
/// A candle error, or a job with an empty prompt (checked before any work). After an error the
/// jobs' states are fresh ones: their states moved into the batch that failed.
pub fn generate<M: LanguageModel + ?Sized>(model: &M, jobs: &mut [Job<M::State>]) -> Result<()> {
    if jobs.iter().any(|j| j.prompt.is_empty()) {
        candle_core::bail!("a job has an empty prompt");
    }
    if jobs.is_empty() {
        return Ok(());
    }
    // Moved into the batch, not copied (a transformer's state is its keys and values): each
    // job gets its final state back from the batch when its last token is fed.
    let states = jobs
        .iter_mut()
        .map(|j| std::mem::replace(&mut j.state, model.fresh_state()))
        .collect();
    let prompts: Vec<&[u32]> = jobs.iter().map(|j| j.prompt.as_slice()).collect();
    let steps = jobs.iter().map(|j| j.max_new).max().unwrap_or(0);
    let (mut batch, logits) = model.prefill(states, &prompts, steps)?;
    let mut logits = logits.to_vec2::<f32>()?;
    // The job of each batch row.
    let mut rows: Vec<usize> = (0..jobs.len()).collect();
    loop {
        let mut keep = Vec::with_capacity(rows.len());
        let mut next = Vec::with_capacity(rows.len());
        for (r, (&i, row)) in rows.iter().zip(logits).enumerate() {
            let job = &mut jobs[i];
            if job.output.len() == job.max_new {
                // Its last token has been fed: done.
                job.state = model.take_state(&mut batch, r)?;
                continue;
            }
            let picked = match &job.forced {
                Some(forced) => forced.get(job.output.len()).copied().unwrap_or(0),
                None => argmax(&row),
            };
            if let Some(l) = job.logits.as_mut() {
                l.push(row);
            }
            job.output.push(picked);
            keep.push(r);
            next.push(picked);
        }
        if keep.is_empty() {
            return Ok(());
        }
        if keep.len() < rows.len() {
            model.retain(&mut batch, &keep)?;
            rows = keep.iter().map(|&r| rows[r]).collect();
        }
        logits = model.decode(&mut batch, &next)?.to_vec2::<f32>()?;
    }
}

pub(crate) fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// A `u32` index tensor on the CPU, for `index_select`.
pub(crate) fn index_tensor(indices: &[usize]) -> Result<Tensor> {
    let v: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    Tensor::from_vec(v, indices.len(), &candle_core::Device::Cpu)
}

/// A linear layer, `y = x W^T + b`, with candle's `Linear` weights under the same names, run by
/// a small matrix kernel of its own.
///
/// The weights are packed once, at construction, into panels of [`PANEL`] output columns, each
/// panel `[in, PANEL]` row-major, so the kernel streams a panel front to back and keeps a block
/// of rows times a panel's columns in registers. candle's product packs the transposed weight
/// on every call, which at the showcase's sizes (a few dozen rows against 128 to 512 columns)
/// cost as much as the arithmetic, and it adds a broadcast bias one element at a time, with a
/// branch per element.
#[derive(Debug)]
pub(crate) struct Dense {
    input: usize,
    output: usize,
    /// `ceil(output / PANEL)` panels of `[input, PANEL]`, the last one padded with zeros.
    packed: Vec<f32>,
    bias: Vec<f32>,
}

/// Output columns per packed panel: two 8-lane vectors.
const PANEL: usize = 16;

/// Rows per register block.
const ROWS: usize = 4;

impl Dense {
    /// The layer that `candle_nn::linear(input, output, vb)` would make.
    pub(crate) fn new(input: usize, output: usize, vb: candle_nn::VarBuilder) -> Result<Self> {
        let linear = candle_nn::linear(input, output, vb)?;
        let bias = match linear.bias() {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; output],
        };
        Self::from_parts(linear.weight(), bias)
    }

    /// The layer of `weight`, `[out, in]` as candle's `Linear` keeps it, and `bias`, `[out]`.
    pub(crate) fn from_parts(weight: &Tensor, bias: Vec<f32>) -> Result<Self> {
        let (output, input) = weight.dims2()?;
        if bias.len() != output {
            candle_core::bail!("{} biases for {output} outputs", bias.len());
        }
        let weight = weight.to_vec2::<f32>()?;
        let panels = output.div_ceil(PANEL);
        let mut packed = vec![0.0; panels * input * PANEL];
        for (o, row) in weight.iter().enumerate() {
            let panel = &mut packed[(o / PANEL) * input * PANEL..][..input * PANEL];
            for (k, &w) in row.iter().enumerate() {
                panel[k * PANEL + o % PANEL] = w;
            }
        }
        Ok(Self {
            input,
            output,
            packed,
            bias,
        })
    }

    /// `x W^T + b` for `x`, `[rows, in]`, as a flat row-major `[rows, out]` vector, with `relu`
    /// applied if asked.
    pub(crate) fn forward_vec(&self, x: &Tensor, relu: bool) -> Result<Vec<f32>> {
        let x = x.flatten_all()?.to_vec1::<f32>()?;
        self.forward_slice(&x, relu)
    }

    /// As [`forward_vec`](Self::forward_vec), for `x` flat and row-major.
    pub(crate) fn forward_slice(&self, x: &[f32], relu: bool) -> Result<Vec<f32>> {
        if self.input == 0 || !x.len().is_multiple_of(self.input) {
            candle_core::bail!("{} inputs for rows of {}", x.len(), self.input);
        }
        let rows = x.len() / self.input;
        let mut y = vec![0.0; rows * self.output];
        product(x, self.input, &self.packed, &self.bias, relu, &mut y);
        Ok(y)
    }

    /// `x W^T + b` for `x`, `[rows, in]`, as a `[rows, out]` tensor, with `relu` applied if
    /// asked.
    pub(crate) fn forward(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let rows = x.dim(0)?;
        let y = self.forward_vec(x, relu)?;
        Tensor::from_vec(y, (rows, self.output), x.device())
    }
}

/// A layer norm over each row's last dimension, `(x - mean) / sqrt(var + eps) * weight + bias`,
/// with candle's `LayerNorm` weights under the same names, in a plain loop over the rows.
///
/// candle's layer norm splits its rows over the current rayon pool; this one runs on the
/// calling thread, so a model built of it and [`Dense`] computes wholly on the thread that calls
/// it, and a batcher worker can run it without handing each step to a pool's thread.
#[derive(Debug)]
pub(crate) struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Norm {
    /// The layer that `candle_nn::layer_norm(size, eps, vb)` would make.
    pub(crate) fn new(size: usize, eps: f64, vb: candle_nn::VarBuilder) -> Result<Self> {
        let norm = candle_nn::layer_norm(size, eps, vb)?;
        let weight = norm.weight().to_vec1::<f32>()?;
        let bias = match norm.bias() {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; size],
        };
        Ok(Self {
            weight,
            bias,
            eps: eps as f32,
        })
    }

    /// The norm of every row of `x`, `[rows, size]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let size = self.weight.len();
        let rows = x.dim(0)?;
        let mut y = x.flatten_all()?.to_vec1::<f32>()?;
        if y.len() != rows * size {
            candle_core::bail!("rows of {} for a norm over {size}", y.len() / rows.max(1));
        }
        for row in y.chunks_exact_mut(size) {
            let mean = row.iter().sum::<f32>() / size as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / size as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, &w), &b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = (*v - mean) * inv * w + b;
            }
        }
        Tensor::from_vec(y, (rows, size), x.device())
    }
}

/// `y = x W^T + b` (then ReLU if asked) over `W` packed as [`Dense`] keeps it: `x` is
/// `[rows, input]`, `y` `[rows, bias.len()]`, both row-major.
///
/// Compiled twice, for the baseline target and for AVX2 with FMA, picked at run time: in the
/// latter a multiply-add is one fused instruction. Every element is the same sequence of
/// operations (`k = 0, 1, ...`, then the bias) whichever block its row falls in, so a row's
/// result does not depend on the rows around it.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn product(x: &[f32], input: usize, packed: &[f32], bias: &[f32], relu: bool, y: &mut [f32]) {
    let fused = multiversion::target::target_cfg_f!(target_feature = "fma");
    let output = bias.len();
    // Whole blocks of rows, interleaved once for all panels (`[block][input][ROWS]`), so that
    // the kernel reads its rows' inputs as one stream beside the panel's.
    let blocks = x.len() / (ROWS * input);
    let mut interleaved = vec![0.0f32; blocks * ROWS * input];
    for (dst, src) in interleaved
        .chunks_exact_mut(ROWS * input)
        .zip(x.chunks_exact(ROWS * input))
    {
        for (r, row) in src.chunks_exact(input).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                dst[k * ROWS + r] = v;
            }
        }
    }
    let rest = &x[blocks * ROWS * input..];
    for (p, panel) in packed.chunks_exact(input * PANEL).enumerate() {
        let cols = PANEL.min(output - p * PANEL);
        let bias = &bias[p * PANEL..p * PANEL + cols];
        for (b, block) in interleaved.chunks_exact(ROWS * input).enumerate() {
            let acc = interleaved_block(block, panel, fused);
            let y = &mut y[b * ROWS * output + p * PANEL..];
            store(&acc, bias, relu, y, output);
        }
        // The last one to three rows as one block, so that none streams the panel alone.
        if rest.is_empty() {
            continue;
        }
        let y = &mut y[blocks * ROWS * output + p * PANEL..];
        match rest.len() / input {
            1 => store(&panel_block::<1>(rest, panel, fused), bias, relu, y, output),
            2 => store(&panel_block::<2>(rest, panel, fused), bias, relu, y, output),
            _ => store(&panel_block::<3>(rest, panel, fused), bias, relu, y, output),
        }
    }
}

/// [`ROWS`] rows of `x`, interleaved (`[input][ROWS]`), against one packed panel
/// (`[input, PANEL]`), accumulated in registers in the order `k = 0, 1, ...` for every element.
#[inline(always)]
fn interleaved_block(x: &[f32], panel: &[f32], fused: bool) -> [[f32; PANEL]; ROWS] {
    let mut acc = [[0.0f32; PANEL]; ROWS];
    for (w, a) in panel.chunks_exact(PANEL).zip(x.chunks_exact(ROWS)) {
        let w: &[f32; PANEL] = w.try_into().expect("a panel row is PANEL wide");
        for (acc, &a) in acc.iter_mut().zip(a) {
            for (s, &w) in acc.iter_mut().zip(w) {
                *s = if fused { a.mul_add(w, *s) } else { a * w + *s };
            }
        }
    }
    acc
}

/// One block of `R` rows of `x` (`[R, input]`) against one packed panel (`[input, PANEL]`),
/// accumulated in registers in the order `k = 0, 1, ...` for every element.
#[inline(always)]
fn panel_block<const R: usize>(x: &[f32], panel: &[f32], fused: bool) -> [[f32; PANEL]; R] {
    let input = x.len() / R;
    let mut acc = [[0.0f32; PANEL]; R];
    for (k, w) in panel.chunks_exact(PANEL).enumerate().take(input) {
        let w: &[f32; PANEL] = w.try_into().expect("a panel row is PANEL wide");
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = x[r * input + k];
            for (s, &w) in acc.iter_mut().zip(w) {
                *s = if fused { a.mul_add(w, *s) } else { a * w + *s };
            }
        }
    }
    acc
}

/// Adds the bias to a block's sums, applies ReLU if asked, and writes the block's first
/// `bias.len()` columns into `y`, whose rows are `stride` apart.
#[inline(always)]
fn store<const R: usize>(
    acc: &[[f32; PANEL]; R],
    bias: &[f32],
    relu: bool,
    y: &mut [f32],
    stride: usize,
) {
    for (r, acc) in acc.iter().enumerate() {
        let out = &mut y[r * stride..r * stride + bias.len()];
        for ((o, &s), &b) in out.iter_mut().zip(acc).zip(bias) {
            let v = s + b;
            *o = if relu { v.max(0.0) } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::SeededWeights;
    use candle_nn::Module;

    /// `Norm` computes what candle's `LayerNorm` computes from the same weights.
    #[test]
    fn norm_matches_candles_layer_norm() {
        let vb = SeededWeights::var_builder(4);
        let ours = Norm::new(24, 1e-5, vb.pp("norm")).unwrap();
        let theirs = candle_nn::layer_norm(24, 1e-5, vb.pp("norm")).unwrap();
        let x: Vec<f32> = (0..5 * 24)
            .map(|i| ((i * 7919 % 211) as f32 / 50.0) - 2.0)
            .collect();
        let x = Tensor::from_vec(x, (5, 24), &candle_core::Device::Cpu).unwrap();
        let diff = (ours.forward(&x).unwrap() - theirs.forward(&x).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "differs by {diff}");
    }

    /// At sizes that leave partial row blocks and a partial panel, `Dense` still computes
    /// candle's product, and a row's result does not depend on the rows around it.
    #[test]
    fn dense_matches_candle_at_ragged_sizes() {
        let vb = SeededWeights::var_builder(5);
        let (input, output) = (37, 45);
        let ours = Dense::new(input, output, vb.pp("ragged")).unwrap();
        let theirs = candle_nn::linear(input, output, vb.pp("ragged")).unwrap();
        for rows in [1, 3, 4, 7, 9] {
            let x: Vec<f32> = (0..rows * input)
                .map(|i| ((i * 7919 % 211) as f32 / 211.0) - 0.5)
                .collect();
            let xt = Tensor::from_vec(x.clone(), (rows, input), &candle_core::Device::Cpu).unwrap();
            let want = theirs.forward(&xt).unwrap().to_vec2::<f32>().unwrap();
            let got = ours.forward_slice(&x, false).unwrap();
            for (r, want) in want.iter().enumerate() {
                for (c, &w) in want.iter().enumerate() {
                    let g = got[r * output + c];
                    assert!(
                        (g - w).abs() < 1e-5,
                        "rows {rows}: [{r}][{c}] {g} against {w}"
                    );
                }
                // The same row alone gives the same numbers, bit for bit.
                let alone = ours
                    .forward_slice(&x[r * input..(r + 1) * input], false)
                    .unwrap();
                assert_eq!(
                    alone,
                    got[r * output..(r + 1) * output],
                    "rows {rows}: row {r}"
                );
            }
        }
        assert!(ours.forward_slice(&[0.0; 36], false).is_err());
    }

    /// `Dense` computes what candle's `Linear` (and its `relu`) computes from the same weights.
    #[test]
    fn dense_matches_candles_linear() {
        let vb = SeededWeights::var_builder(3);
        let ours = Dense::new(6, 5, vb.pp("layer")).unwrap();
        let theirs = candle_nn::linear(6, 5, vb.pp("layer")).unwrap();
        let x = Tensor::arange(0u32, 24, &candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .affine(0.1, -1.0)
            .unwrap()
            .reshape((4, 6))
            .unwrap();
        let want = theirs.forward(&x).unwrap();
        for relu in [false, true] {
            let want = if relu {
                want.relu().unwrap()
            } else {
                want.clone()
            };
            let diff = (ours.forward(&x, relu).unwrap() - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "relu {relu}: differs by {diff}");
        }
        // Some outputs are negative, so the relu case tests something.
        let negative = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(negative.iter().any(|&v| v < 0.0) && negative.iter().any(|&v| v > 0.0));
    }
}
