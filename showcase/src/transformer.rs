//! A small byte-level decoder-only transformer: learned positions, causal multi-head attention
//! with a per-sequence key/value cache, a ReLU MLP, pre-layer norms.

use candle_core::{Device, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Module};

use crate::model::{index_tensor, Dense, LanguageModel, VOCAB};
use crate::weights::SeededWeights;

/// The transformer's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads; must divide `d_model`.
    pub heads: usize,
    /// Decoder blocks.
    pub layers: usize,
    /// The most positions a sequence may span (the learned position table's length).
    pub context: usize,
}

impl TransformerConfig {
    /// The showcase's transformer: width 128, 4 heads, 2 blocks, 256 positions.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless_showcase::transformer::TransformerConfig;
    ///
    /// assert_eq!(TransformerConfig::showcase().context, 256);
    /// ```
    pub fn showcase() -> Self {
        Self {
            d_model: 128,
            heads: 4,
            layers: 2,
            context: 256,
        }
    }

    /// A small transformer for tests and examples.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless_showcase::transformer::TransformerConfig;
    ///
    /// assert!(TransformerConfig::tiny().d_model < TransformerConfig::showcase().d_model);
    /// ```
    pub fn tiny() -> Self {
        Self {
            d_model: 32,
            heads: 2,
            layers: 2,
            context: 64,
        }
    }
}

/// A sequence's transformer state: the tokens it has seen and, per block, their keys and
/// values.
#[derive(Debug, Clone, Default)]
pub struct TransformerSeqState {
    tokens: Vec<u32>,
    /// One per block once the sequence has seen a token (empty before).
    kv: Vec<LayerKv>,
}

/// One block's keys and values of a sequence: `[tokens, d_model]` each, a token's heads side by
/// side, the layout the block's query-key-value projection produces, so a new token's keys and
/// values are appended as they come out of it.
#[derive(Debug, Clone, Default)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl TransformerSeqState {
    /// How many tokens the sequence has seen (the key/value cache's length).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the sequence has seen nothing yet.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[derive(Debug)]
struct Block {
    ln1: LayerNorm,
    qkv: Dense,
    proj: Dense,
    ln2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
}

/// The transformer language model, on the CPU, with seeded random weights.
///
/// A session that would outgrow [`TransformerConfig::context`] keeps its most recent tokens (a
/// sliding window): [`fit`](LanguageModel::fit) restarts it from its most recent tokens (half
/// the context, or less if the request needs the room), recomputing their keys and values from
/// position 0. Positions are learned, so a window cannot simply drop its oldest keys.
#[derive(Debug)]
pub struct TransformerLm {
    config: TransformerConfig,
    tok: Embedding,
    pos: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Dense,
}

impl TransformerLm {
    /// Builds the model from `seed`: the same seed gives the same weights.
    ///
    /// # Errors
    ///
    /// A candle error, a zero size, or `heads` not dividing `d_model`.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless_showcase::model::LanguageModel;
    /// use latchless_showcase::transformer::{TransformerConfig, TransformerLm};
    ///
    /// let model = TransformerLm::new(TransformerConfig::tiny(), 42).unwrap();
    /// assert_eq!(model.name(), "transformer");
    /// ```
    pub fn new(config: TransformerConfig, seed: u64) -> Result<Self> {
        let c = config;
        if c.d_model == 0 || c.heads == 0 || c.layers == 0 || c.context == 0 {
            candle_core::bail!("transformer sizes must be non-zero: {c:?}");
        }
        if !c.d_model.is_multiple_of(c.heads) {
            candle_core::bail!("{} heads do not divide width {}", c.heads, c.d_model);
        }
        let vb = SeededWeights::var_builder(seed);
        let d = c.d_model;
        let blocks = (0..c.layers)
            .map(|l| {
                let vb = vb.pp(format!("block{l}"));
                Ok(Block {
                    ln1: candle_nn::layer_norm(d, 1e-5, vb.pp("ln1"))?,
                    qkv: Dense::new(d, 3 * d, vb.pp("qkv"))?,
                    proj: Dense::new(d, d, vb.pp("proj"))?,
                    ln2: candle_nn::layer_norm(d, 1e-5, vb.pp("ln2"))?,
                    fc1: Dense::new(d, 4 * d, vb.pp("fc1"))?,
                    fc2: Dense::new(4 * d, d, vb.pp("fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: c,
            tok: candle_nn::embedding(VOCAB, d, vb.pp("tok"))?,
            pos: candle_nn::embedding(c.context, d, vb.pp("pos"))?,
            blocks,
            ln_f: candle_nn::layer_norm(d, 1e-5, vb.pp("ln_f"))?,
            head: Dense::new(d, VOCAB, vb.pp("head"))?,
        })
    }

    /// The model's sizes.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }
}

/// Transformer sequences being generated together: each row is a sequence's own state, its
/// keys and values growing in place as it decodes.
///
/// Token-wise work (embeddings, projections, the MLP) runs on every row's new tokens packed into
/// one matrix, which is where batching pays. Attention runs row by row over the row's own keys
/// only, so rows of different lengths cost no padding, a finished row leaves without copying the
/// others, and a row's attention is computed exactly as if it ran alone.
#[derive(Debug)]
pub struct TransformerBatch {
    rows: Vec<TransformerSeqState>,
}

impl LanguageModel for TransformerLm {
    type State = TransformerSeqState;
    type Batch = TransformerBatch;

    fn name(&self) -> &'static str {
        "transformer"
    }

    fn max_request_tokens(&self) -> usize {
        self.config.context
    }

    fn fresh_state(&self) -> TransformerSeqState {
        TransformerSeqState {
            tokens: Vec::new(),
            kv: Vec::new(),
        }
    }

    fn state_bytes(&self, state: &TransformerSeqState) -> u64 {
        let kv: usize = state.kv.iter().map(|l| l.k.len() + l.v.len()).sum();
        (kv + state.tokens.len()) as u64 * 4
    }

    fn fit(
        &self,
        state: TransformerSeqState,
        prompt: &[u32],
        max_new: usize,
    ) -> (TransformerSeqState, Vec<u32>) {
        if state.len() + prompt.len() + max_new <= self.config.context {
            return (state, prompt.to_vec());
        }
        // Slide the window: start over from the most recent tokens, at most half the context,
        // so that the next few requests fit again without recomputing the window each time.
        let keep = (self.config.context / 2)
            .min(self.config.context.saturating_sub(prompt.len() + max_new))
            .min(state.len());
        let mut tokens = state.tokens[state.len() - keep..].to_vec();
        tokens.extend_from_slice(prompt);
        (self.fresh_state(), tokens)
    }

    fn prefill(
        &self,
        states: Vec<TransformerSeqState>,
        tokens: &[&[u32]],
        steps: usize,
    ) -> Result<(TransformerBatch, Tensor)> {
        if states.is_empty() || states.len() != tokens.len() || tokens.iter().any(|t| t.is_empty())
        {
            candle_core::bail!("prefill needs one non-empty token list per state");
        }
        let mut rows = states;
        let logits = self.forward(&mut rows, tokens, steps)?;
        Ok((TransformerBatch { rows }, logits))
    }

    fn decode(&self, batch: &mut TransformerBatch, tokens: &[u32]) -> Result<Tensor> {
        let rows = batch.rows.len();
        if tokens.len() != rows {
            candle_core::bail!("{} tokens for a batch of {rows}", tokens.len());
        }
        let feed: Vec<&[u32]> = tokens.iter().map(core::slice::from_ref).collect();
        self.forward(&mut batch.rows, &feed, 0)
    }

    fn retain(&self, batch: &mut TransformerBatch, keep: &[usize]) -> Result<()> {
        if let Some(&r) = keep.iter().find(|&&r| r >= batch.rows.len()) {
            candle_core::bail!("row {r} of a batch of {}", batch.rows.len());
        }
        let mut seen = vec![false; batch.rows.len()];
        if let Some(&r) = keep
            .iter()
            .find(|&&r| std::mem::replace(&mut seen[r], true))
        {
            candle_core::bail!("row {r} kept twice");
        }
        batch.rows = keep
            .iter()
            .map(|&r| std::mem::take(&mut batch.rows[r]))
            .collect();
        Ok(())
    }

    fn append(&self, batch: &mut TransformerBatch, other: TransformerBatch) -> Result<()> {
        // Rows are independent: appending moves their states, no key or value is copied.
        batch.rows.extend(other.rows);
        Ok(())
    }

    fn batch_of(&self, states: Vec<TransformerSeqState>) -> Result<TransformerBatch> {
        if states.is_empty() {
            candle_core::bail!("a batch needs at least one state");
        }
        Ok(TransformerBatch { rows: states })
    }

    fn feed(&self, batch: &mut TransformerBatch, tokens: &[&[u32]]) -> Result<Tensor> {
        if tokens.len() != batch.rows.len() || tokens.iter().any(|t| t.is_empty()) {
            candle_core::bail!(
                "{} token lists for a batch of {}, each must be non-empty",
                tokens.len(),
                batch.rows.len()
            );
        }
        self.forward(&mut batch.rows, tokens, 0)
    }

    fn prompt_chunk(&self, _rows: usize) -> usize {
        // Prompt tokens run side by side in the token-wise products, packed with the running
        // rows' single tokens; a chunk of 64 bounds how long one long prompt holds up a step.
        64
    }

    fn state_of(&self, batch: &TransformerBatch, row: usize) -> Result<TransformerSeqState> {
        match batch.rows.get(row) {
            Some(state) => Ok(state.clone()),
            None => candle_core::bail!("row {row} of a batch of {}", batch.rows.len()),
        }
    }
}

impl TransformerLm {
    /// Feeds each row its `tokens` (at least one each), appending their keys and values to the
    /// row's state, with room for `reserve` more tokens; returns the logits after each row's last
    /// token, `[rows, VOCAB]`.
    fn forward(
        &self,
        rows: &mut [TransformerSeqState],
        tokens: &[&[u32]],
        reserve: usize,
    ) -> Result<Tensor> {
        let c = self.config;
        let d = c.d_model;
        let dev = &Device::Cpu;
        if let Some((row, t)) = rows
            .iter()
            .zip(tokens)
            .map(|(row, t)| (row, row.len() + t.len()))
            .find(|&(_, t)| t > c.context)
        {
            candle_core::bail!(
                "a sequence of {t} tokens ({} seen) exceeds the context of {}",
                row.len(),
                c.context
            );
        }
        // Every row's new tokens, packed one row after another.
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut spans = Vec::with_capacity(rows.len());
        for (row, t) in rows.iter().zip(tokens) {
            spans.push((ids.len(), t.len()));
            ids.extend_from_slice(t);
            pos.extend((0..t.len()).map(|j| (row.len() + j) as u32));
        }
        let packed = ids.len();
        let ids = Tensor::from_vec(ids, packed, dev)?;
        let pos = Tensor::from_vec(pos, packed, dev)?;
        let mut x = (self.tok.forward(&ids)? + self.pos.forward(&pos)?)?; // [packed, d_model]
        let mut scratch = Vec::new();
        for (l, b) in self.blocks.iter().enumerate() {
            // [packed, 3 * d_model]: each token's queries, then keys, then values.
            let qkv = b.qkv.forward_vec(&b.ln1.forward(&x)?, false)?;
            let mut y = vec![0.0f32; packed * d];
            for (row, &(start, new)) in rows.iter_mut().zip(&spans) {
                if row.kv.len() <= l {
                    row.kv.resize_with(l + 1, LayerKv::default);
                }
                let past = row.tokens.len();
                let kv = &mut row.kv[l];
                kv.k.reserve((new + reserve) * d);
                kv.v.reserve((new + reserve) * d);
                for j in start..start + new {
                    let t = &qkv[j * 3 * d..(j + 1) * 3 * d];
                    kv.k.extend_from_slice(&t[d..2 * d]);
                    kv.v.extend_from_slice(&t[2 * d..]);
                }
                for j in 0..new {
                    let at = start + j;
                    attend(
                        &qkv[at * 3 * d..at * 3 * d + d],
                        kv,
                        past + j + 1,
                        c.heads,
                        &mut y[at * d..(at + 1) * d],
                        &mut scratch,
                    );
                }
            }
            let y = Tensor::from_vec(y, (packed, d), dev)?;
            x = (x + b.proj.forward(&y, false)?)?;
            let hidden = b.fc1.forward(&b.ln2.forward(&x)?, true)?;
            x = (&x + b.fc2.forward(&hidden, false)?)?;
        }
        for (row, t) in rows.iter_mut().zip(tokens) {
            row.tokens.extend_from_slice(t);
        }
        let last: Vec<usize> = spans.iter().map(|&(start, new)| start + new - 1).collect();
        let last = x.index_select(&index_tensor(&last)?, 0)?;
        self.head.forward(&self.ln_f.forward(&last)?, false)
    }
}

/// One query's causal attention over a sequence's first `seen` keys and values:
/// `softmax(q k^T / sqrt(head_dim)) v`, head by head, into `out` (`[d_model]`, heads side by
/// side, as `q`).
///
/// Plain loops over the row's own keys: at decode a query is one vector per head, where a
/// batched matrix product would run one tiny product per row and head (and, over a padded
/// batch, over the longest row's keys). Every row computes exactly what it would alone.
/// Compiled twice, for the baseline target and for AVX2 with FMA, the version picked at run
/// time: the wider vectors take about a third off (measured on the default workload's
/// continuing sessions).
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn attend(
    q: &[f32],
    kv: &LayerKv,
    seen: usize,
    heads: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let d = q.len();
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    scores.clear();
    scores.resize(heads * seen, 0.0);
    // Scores, key by key: each key row is read once, contiguously, for every head.
    for (t, key) in kv.k[..seen * d].chunks_exact(d).enumerate() {
        for h in 0..heads {
            scores[h * seen + t] =
                dot(&q[h * hd..(h + 1) * hd], &key[h * hd..(h + 1) * hd]) * scale;
        }
    }
    for s in scores.chunks_exact_mut(seen) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in s.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        for x in s.iter_mut() {
            *x /= sum;
        }
    }
    out.fill(0.0);
    for (t, value) in kv.v[..seen * d].chunks_exact(d).enumerate() {
        for h in 0..heads {
            let p = scores[h * seen + t];
            for (o, &x) in out[h * hd..(h + 1) * hd]
                .iter_mut()
                .zip(&value[h * hd..(h + 1) * hd])
            {
                *o += p * x;
            }
        }
    }
}

/// A dot product in eight independent lanes, which the compiler keeps in vector registers (a
/// single running sum would serialise every addition).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding past the reserved columns grows the cache and gives the same logits as
    /// reserving them up front.
    #[test]
    fn decoding_beyond_the_reservation_matches_reserving() {
        let model = TransformerLm::new(TransformerConfig::tiny(), 9).unwrap();
        let run = |reserve: usize| -> Vec<Vec<f32>> {
            let states = vec![model.fresh_state(), model.fresh_state()];
            let (mut batch, first) = model.prefill(states, &[&[1, 2, 3], &[4]], reserve).unwrap();
            let mut out = first.to_vec2::<f32>().unwrap();
            for step in 0..20u32 {
                let logits = model.decode(&mut batch, &[step, step + 1]).unwrap();
                out.extend(logits.to_vec2::<f32>().unwrap());
            }
            out
        };
        let (reserved, grown) = (run(20), run(0));
        let diff = reserved
            .iter()
            .flatten()
            .zip(grown.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "logits differ by {diff}");
    }

    #[test]
    fn a_sequence_past_the_context_is_an_error() {
        let model = TransformerLm::new(TransformerConfig::tiny(), 9).unwrap();
        let long = vec![1; model.config().context + 1];
        assert!(model
            .prefill(vec![model.fresh_state()], &[&long], 0)
            .is_err());
        let full = vec![1; model.config().context];
        let (mut batch, _) = model
            .prefill(vec![model.fresh_state()], &[&full], 1)
            .unwrap();
        assert!(model.decode(&mut batch, &[1]).is_err());
    }
}
