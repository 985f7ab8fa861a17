//! A small byte-level decoder-only transformer: learned positions, causal multi-head attention
//! with a per-sequence key/value cache, a ReLU MLP, pre-layer norms.

use candle_core::{Device, IndexOp, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, Module};

use crate::model::{index_tensor, LanguageModel, VOCAB};
use crate::weights::SeededWeights;

/// Added to the attention score of a key a query must not see. Large and finite: with `-inf`,
/// a row that sees no key at all (a padded query) would turn into NaN.
const MASKED: f32 = -1.0e9;

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

/// A sequence's transformer state: the tokens it has seen and each block's keys and values
/// for them, `[heads, tokens, head_dim]`.
#[derive(Debug, Clone)]
pub struct TransformerSeqState {
    tokens: Vec<u32>,
    kv: Vec<(Tensor, Tensor)>,
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
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
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
    head: Linear,
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
                    qkv: candle_nn::linear(d, 3 * d, vb.pp("qkv"))?,
                    proj: candle_nn::linear(d, d, vb.pp("proj"))?,
                    ln2: candle_nn::layer_norm(d, 1e-5, vb.pp("ln2"))?,
                    fc1: candle_nn::linear(d, 4 * d, vb.pp("fc1"))?,
                    fc2: candle_nn::linear(4 * d, d, vb.pp("fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: c,
            tok: candle_nn::embedding(VOCAB, d, vb.pp("tok"))?,
            pos: candle_nn::embedding(c.context, d, vb.pp("pos"))?,
            blocks,
            ln_f: candle_nn::layer_norm(d, 1e-5, vb.pp("ln_f"))?,
            head: candle_nn::linear(d, VOCAB, vb.pp("head"))?,
        })
    }

    /// The model's sizes.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }
}

/// Transformer sequences being generated together.
///
/// Each block's keys and values are `[rows, heads, columns, head_dim]`. A row's keys after
/// prefill are right-aligned to end in the same column for every row; each decode step then
/// writes one column for all rows. Columns before a row's first key are padding, columns after
/// the last step are reserved; both are masked out.
#[derive(Debug)]
pub struct TransformerBatch {
    kv: Vec<(Tensor, Tensor)>,
    /// `[rows, columns]`: 0 where the row has a key, [`MASKED`] elsewhere.
    mask: Tensor,
    /// The column the next decode step writes; the ones after it are reserved.
    next_column: usize,
    /// Per row: the columns holding its keys, in the order of their positions.
    columns: Vec<Vec<u32>>,
    /// Per row: every token the sequence has seen.
    tokens: Vec<Vec<u32>>,
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
        let kv: usize = state
            .kv
            .iter()
            .map(|(k, v)| k.elem_count() + v.elem_count())
            .sum();
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
        let rows = states.len();
        if rows == 0 || rows != tokens.len() || tokens.iter().any(|t| t.is_empty()) {
            candle_core::bail!("prefill needs one non-empty token list per state");
        }
        let c = self.config;
        let (heads, head_dim) = (c.heads, c.d_model / c.heads);
        let dev = &Device::Cpu;
        let past: Vec<usize> = states.iter().map(TransformerSeqState::len).collect();
        let new: Vec<usize> = tokens.iter().map(|t| t.len()).collect();
        let total: Vec<usize> = past.iter().zip(&new).map(|(p, n)| p + n).collect();
        if let Some(t) = total.iter().find(|&&t| t > c.context) {
            candle_core::bail!(
                "a sequence of {t} tokens exceeds the context of {}",
                c.context
            );
        }
        // The batch's key columns: each row's keys right-aligned to end at `end`, then columns
        // reserved (zero, masked) for every decode step to come, so that a step writes its
        // keys in place instead of copying the whole cache.
        let end = total.iter().copied().max().unwrap_or(0);
        let reserve = steps.min(c.context);
        let cols = end + reserve;

        // Token-wise work (embeddings, projections, MLP) runs on the real tokens only, packed
        // one row after another, as one matrix: that is where batching pays. Attention runs
        // row by row, so a long prompt costs no padding work in the other rows.
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut start = Vec::with_capacity(rows);
        for (i, t) in tokens.iter().enumerate() {
            start.push(ids.len());
            ids.extend_from_slice(t);
            pos.extend((0..t.len()).map(|j| (past[i] + j) as u32));
        }
        // Causal masks, `[new, total]`, for rows feeding more than one token.
        let causal: Vec<Option<Tensor>> = (0..rows)
            .map(|i| {
                if new[i] == 1 {
                    return Ok(None);
                }
                let (p, t) = (past[i], total[i]);
                let m: Vec<f32> = (0..new[i])
                    .flat_map(|j| (0..t).map(move |k| if k <= p + j { 0.0 } else { MASKED }))
                    .collect();
                Tensor::from_vec(m, (new[i], total[i]), dev).map(Some)
            })
            .collect::<Result<_>>()?;
        let packed = pos.len();
        let ids = Tensor::from_vec(ids, packed, dev)?;
        let pos = Tensor::from_vec(pos, packed, dev)?;
        let mut x = (self.tok.forward(&ids)? + self.pos.forward(&pos)?)?; // [packed, d_model]
        let scale = 1.0 / (head_dim as f64).sqrt();

        let mut kv = Vec::with_capacity(c.layers);
        for (l, b) in self.blocks.iter().enumerate() {
            let qkv = b.qkv.forward(&b.ln1.forward(&x)?)?; // [packed, 3 * d_model]
                                                           // The batch's keys and values, written row by row in place: each row's past, then
                                                           // its new ones, ending at column `end`.
            let k_all = Tensor::zeros((rows, heads, cols, head_dim), x.dtype(), dev)?;
            let v_all = Tensor::zeros((rows, heads, cols, head_dim), x.dtype(), dev)?;
            let mut ys = Vec::with_capacity(rows);
            for i in 0..rows {
                let r = qkv
                    .narrow(0, start[i], new[i])?
                    .reshape((new[i], 3, heads, head_dim))?
                    .permute((1, 2, 0, 3))?; // [3, heads, new, head_dim]
                let q = r.i(0)?.contiguous()?;
                let (k_row, v_row) = (k_all.narrow(0, i, 1)?, v_all.narrow(0, i, 1)?);
                let first = end - total[i];
                if let Some((pk, pv)) = states[i].kv.get(l) {
                    k_row.slice_set(&pk.unsqueeze(0)?, 2, first)?;
                    v_row.slice_set(&pv.unsqueeze(0)?, 2, first)?;
                }
                k_row.slice_set(&r.i(1)?.contiguous()?.unsqueeze(0)?, 2, first + past[i])?;
                v_row.slice_set(&r.i(2)?.contiguous()?.unsqueeze(0)?, 2, first + past[i])?;
                // The row's keys and values, [heads, total, head_dim], as views.
                let k = k_row.squeeze(0)?.narrow(1, first, total[i])?;
                let v = v_row.squeeze(0)?.narrow(1, first, total[i])?;
                let mut att = (q.matmul(&k.t()?)? * scale)?;
                if let Some(m) = &causal[i] {
                    att = att.broadcast_add(m)?;
                }
                let y = candle_nn::ops::softmax_last_dim(&att)?
                    .matmul(&v)?
                    .transpose(0, 1)?
                    .reshape((new[i], c.d_model))?;
                ys.push(y);
            }
            let y = Tensor::cat(&ys, 0)?;
            x = (x + b.proj.forward(&y)?)?;
            x = (&x
                + b.fc2
                    .forward(&b.fc1.forward(&b.ln2.forward(&x)?)?.relu()?)?)?;
            kv.push((k_all, v_all));
        }
        let last: Vec<usize> = (0..rows).map(|i| start[i] + new[i] - 1).collect();
        let last = x.index_select(&index_tensor(&last)?, 0)?;
        let logits = self.head.forward(&self.ln_f.forward(&last)?)?;
        let mut mask = Vec::with_capacity(rows * cols);
        let mut columns = Vec::with_capacity(rows);
        for &t in &total {
            let first = end - t;
            mask.extend((0..cols).map(|col| {
                if (first..end).contains(&col) {
                    0.0
                } else {
                    MASKED
                }
            }));
            columns.push((first as u32..end as u32).collect());
        }
        let batch = TransformerBatch {
            kv,
            next_column: end,
            mask: Tensor::from_vec(mask, (rows, cols), dev)?,
            columns,
            tokens: states
                .into_iter()
                .zip(tokens)
                .map(|(s, t)| {
                    let mut seen = s.tokens;
                    seen.extend_from_slice(t);
                    seen
                })
                .collect(),
        };
        Ok((batch, logits))
    }

    fn decode(&self, batch: &mut TransformerBatch, tokens: &[u32]) -> Result<Tensor> {
        let rows = batch.tokens.len();
        if tokens.len() != rows {
            candle_core::bail!("{} tokens for a batch of {rows}", tokens.len());
        }
        let c = self.config;
        let (heads, head_dim) = (c.heads, c.d_model / c.heads);
        let dev = &Device::Cpu;
        if let Some(seen) = batch.tokens.iter().map(Vec::len).find(|&n| n >= c.context) {
            candle_core::bail!(
                "a sequence of {} tokens exceeds the context of {}",
                seen + 1,
                c.context
            );
        }
        let pos: Vec<u32> = batch.tokens.iter().map(|t| t.len() as u32).collect();
        let ids = Tensor::from_vec(tokens.to_vec(), rows, dev)?;
        let pos = Tensor::from_vec(pos, rows, dev)?;
        let mut x = (self.tok.forward(&ids)? + self.pos.forward(&pos)?)?; // [rows, d_model]
        if batch.next_column == batch.mask.dim(1)? {
            // Out of reserved columns (more steps than announced): reserve some more.
            let more = 16;
            let z = Tensor::full(MASKED, (rows, more), dev)?;
            batch.mask = Tensor::cat(&[&batch.mask, &z], 1)?.contiguous()?;
            for (k, v) in &mut batch.kv {
                let z = Tensor::zeros((rows, heads, more, head_dim), x.dtype(), dev)?;
                *k = Tensor::cat(&[&*k, &z], 2)?.contiguous()?;
                *v = Tensor::cat(&[&*v, &z], 2)?.contiguous()?;
            }
        }
        let at = batch.next_column;
        // Every row's new key goes in the same new column, visible to the row.
        batch
            .mask
            .slice_set(&Tensor::zeros((rows, 1), x.dtype(), dev)?, 1, at)?;
        // Attention reads the columns written so far, not the reserved ones after them.
        let used = at + 1;
        let mask4 = batch
            .mask
            .narrow(1, 0, used)?
            .contiguous()?
            .reshape((rows, 1, 1, used))?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for (b, (k_all, v_all)) in self.blocks.iter().zip(batch.kv.iter_mut()) {
            let qkv = b
                .qkv
                .forward(&b.ln1.forward(&x)?)?
                .reshape((rows, 3, heads, head_dim))?
                .permute((1, 0, 2, 3))?; // [3, rows, heads, head_dim]
            let q = qkv.i(0)?.unsqueeze(2)?.contiguous()?; // [rows, heads, 1, head_dim]
            k_all.slice_set(&qkv.i(1)?.unsqueeze(2)?.contiguous()?, 2, at)?;
            v_all.slice_set(&qkv.i(2)?.unsqueeze(2)?.contiguous()?, 2, at)?;
            let (k, v) = (k_all.narrow(2, 0, used)?, v_all.narrow(2, 0, used)?);
            let y = attend(&q, &k, &v, &mask4, scale)?.reshape((rows, c.d_model))?;
            x = (x + b.proj.forward(&y)?)?;
            x = (&x
                + b.fc2
                    .forward(&b.fc1.forward(&b.ln2.forward(&x)?)?.relu()?)?)?;
        }
        batch.next_column += 1;
        for ((row_cols, seen), &t) in batch.columns.iter_mut().zip(&mut batch.tokens).zip(tokens) {
            row_cols.push(at as u32);
            seen.push(t);
        }
        self.head.forward(&self.ln_f.forward(&x)?)
    }

    fn retain(&self, batch: &mut TransformerBatch, keep: &[usize]) -> Result<()> {
        let idx = index_tensor(keep)?;
        for (k, v) in &mut batch.kv {
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        batch.mask = batch.mask.index_select(&idx, 0)?;
        batch.columns = keep
            .iter()
            .map(|&r| std::mem::take(&mut batch.columns[r]))
            .collect();
        batch.tokens = keep
            .iter()
            .map(|&r| std::mem::take(&mut batch.tokens[r]))
            .collect();
        Ok(())
    }

    fn state_of(&self, batch: &TransformerBatch, row: usize) -> Result<TransformerSeqState> {
        let cols = &batch.columns[row];
        let idx = Tensor::from_vec(cols.clone(), cols.len(), &Device::Cpu)?;
        Ok(TransformerSeqState {
            tokens: batch.tokens[row].clone(),
            kv: batch
                .kv
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.i(row)?.index_select(&idx, 1)?,
                        v.i(row)?.index_select(&idx, 1)?,
                    ))
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// Scaled dot-product attention with an additive mask: `softmax(q k^T * scale + mask) v`.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
    candle_nn::ops::softmax_last_dim(&att)?
        .matmul(v)?
        .transpose(1, 2)
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
