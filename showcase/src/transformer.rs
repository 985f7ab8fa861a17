//! A small byte-level decoder-only transformer: learned positions, causal multi-head attention
//! with a per-sequence key/value cache, a ReLU MLP, pre-layer norms.

use candle_core::{Device, Result, Tensor};
use candle_nn::{Embedding, Module};

use crate::model::{index_tensor, Dense, LanguageModel, Norm, VOCAB};
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

/// One block's keys and values of a sequence.
///
/// Keys are kept in tiles of [`KEY_BLOCK`] tokens, each tile transposed, `[d_model, KEY_BLOCK]`:
/// a tile's row `j` holds component `j` of its tokens' keys, so a query's scores against a
/// tile's tokens are computed eight tokens to a vector, with no sum across a vector's lanes, and
/// a head's part of a tile is one contiguous stretch of memory. The columns of the last tile
/// past the tokens seen are zeros, so the score loop always runs whole tiles. Values stay
/// `[tokens, d_model]`, a token's heads side by side, the layout the block's query-key-value
/// projection produces.
#[derive(Debug, Clone, Default)]
struct LayerKv {
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// Tokens per key tile: eight 8-lane vectors of sums.
const KEY_BLOCK: usize = 64;

impl LayerKv {
    /// Appends token `at`'s key (`[d_model]`, `at` the number of keys already held) and value,
    /// with room reserved for `room` tokens from `at` on.
    fn push(&mut self, at: usize, key: &[f32], value: &[f32], room: usize) {
        let d = key.len();
        let tile = d * KEY_BLOCK;
        if at.is_multiple_of(KEY_BLOCK) {
            self.keys.reserve(room.max(1).div_ceil(KEY_BLOCK) * tile);
            self.keys.resize(self.keys.len() + tile, 0.0);
        }
        let tile = &mut self.keys[(at / KEY_BLOCK) * tile..][..tile];
        for (j, &k) in key.iter().enumerate() {
            tile[j * KEY_BLOCK + at % KEY_BLOCK] = k;
        }
        self.values.reserve(room.max(1) * d);
        self.values.extend_from_slice(value);
    }

    /// The bytes the keys and values hold.
    fn bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * 4
    }

    /// The bytes the keys and values of `tokens` tokens of width `d` hold: keys in whole tiles,
    /// values token by token, `f32`s.
    fn bytes_for(tokens: usize, d: usize) -> usize {
        (tokens.div_ceil(KEY_BLOCK) * KEY_BLOCK + tokens) * d * 4
    }
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
    ln1: Norm,
    qkv: Dense,
    proj: Dense,
    ln2: Norm,
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
    ln_f: Norm,
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
                    ln1: Norm::new(d, 1e-5, vb.pp("ln1"))?,
                    qkv: Dense::new(d, 3 * d, vb.pp("qkv"))?,
                    proj: Dense::new(d, d, vb.pp("proj"))?,
                    ln2: Norm::new(d, 1e-5, vb.pp("ln2"))?,
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
            ln_f: Norm::new(d, 1e-5, vb.pp("ln_f"))?,
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
        let kv: usize = state.kv.iter().map(LayerKv::bytes).sum();
        (kv + state.tokens.len() * 4) as u64
    }

    fn row_bytes(&self, state: Option<&TransformerSeqState>, prompt: usize, max_new: usize) -> u64 {
        let seen = state.map_or(0, TransformerSeqState::len);
        // The tokens held at the end: those seen that `fit` keeps, then the request's own.
        let end = self.kept(seen, prompt + max_new).unwrap_or(seen) + prompt + max_new;
        let per_block = LayerKv::bytes_for(end, self.config.d_model);
        (self.config.layers * per_block + end * 4) as u64
    }

    fn fit(
        &self,
        state: TransformerSeqState,
        prompt: &[u32],
        max_new: usize,
    ) -> (TransformerSeqState, Vec<u32>) {
        let Some(keep) = self.kept(state.len(), prompt.len() + max_new) else {
            return (state, prompt.to_vec());
        };
        // Slide the window: start over from the most recent `keep` tokens.
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

    fn take_state(&self, batch: &mut TransformerBatch, row: usize) -> Result<TransformerSeqState> {
        // Rows own their keys and values: the finished row's move out, leaving it empty until
        // the next `retain` drops it.
        let rows = batch.rows.len();
        match batch.rows.get_mut(row) {
            Some(state) => Ok(std::mem::take(state)),
            None => candle_core::bail!("row {row} of a batch of {rows}"),
        }
    }
}

impl TransformerLm {
    /// How many of a sequence's `seen` tokens a request that feeds and generates `more` keeps:
    /// `None` if all of them fit in the context with it, else the most recent ones, at most half
    /// the context, so that the next few requests fit again without recomputing the window
    /// each time ([`LanguageModel::fit`] recomputes their keys and values).
    fn kept(&self, seen: usize, more: usize) -> Option<usize> {
        let c = self.config.context;
        (seen + more > c).then(|| (c / 2).min(c.saturating_sub(more)).min(seen))
    }

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
                for j in 0..new {
                    let t = &qkv[(start + j) * 3 * d..(start + j + 1) * 3 * d];
                    kv.push(past + j, &t[d..2 * d], &t[2 * d..], new - j + reserve);
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
///
/// Scores run over the transposed key tiles, [`KEY_BLOCK`] tokens at a time, each token's sum in a
/// lane of its own; the weighted sum of values runs over 16 components of a head at a time, four
/// tokens interleaved, so that eight independent sums are in flight either way. Compiled twice,
/// for the baseline target and for AVX2 with FMA, the version picked at run time.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn attend(
    q: &[f32],
    kv: &LayerKv,
    seen: usize,
    heads: usize,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let fused = multiversion::target::target_cfg_f!(target_feature = "fma");
    let madd = |a: f32, b: f32, c: f32| if fused { a.mul_add(b, c) } else { a * b + c };
    let d = q.len();
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    scratch.clear();
    scratch.resize(heads * seen, 0.0);
    for (h, scores) in scratch.chunks_exact_mut(seen).enumerate() {
        let tiles = kv.keys.chunks_exact(d * KEY_BLOCK);
        for (first, tile) in (0..seen).step_by(KEY_BLOCK).zip(tiles) {
            let mut sums = [0.0f32; KEY_BLOCK];
            let head = &tile[h * hd * KEY_BLOCK..(h + 1) * hd * KEY_BLOCK];
            for (&qj, keys) in q[h * hd..(h + 1) * hd]
                .iter()
                .zip(head.chunks_exact(KEY_BLOCK))
            {
                let qj = qj * scale;
                let keys: &[f32; KEY_BLOCK] = keys.try_into().expect("a tile row");
                for (s, &k) in sums.iter_mut().zip(keys) {
                    *s = madd(qj, k, *s);
                }
            }
            let n = KEY_BLOCK.min(seen - first);
            scores[first..first + n].copy_from_slice(&sums[..n]);
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in scores.iter_mut() {
            *x = exp(*x - max, madd);
        }
        // Eight running sums, so that the additions need not wait on each other.
        let mut lanes = [0.0f32; 8];
        let mut chunks = scores.chunks_exact(8);
        for chunk in chunks.by_ref() {
            for (l, &x) in lanes.iter_mut().zip(chunk) {
                *l += x;
            }
        }
        let sum = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
        let inv = 1.0 / sum;
        for x in scores.iter_mut() {
            *x *= inv;
        }
    }
    const LANES: usize = 16;
    const KEYS: usize = 4;
    let values = &kv.values[..seen * d];
    if !hd.is_multiple_of(LANES) {
        // A head narrower than a chunk (only odd test sizes): token by token.
        out.fill(0.0);
        for (t, value) in values.chunks_exact(d).enumerate() {
            for (j, (o, &v)) in out.iter_mut().zip(value).enumerate() {
                *o = madd(scratch[(j / hd) * seen + t], v, *o);
            }
        }
        return;
    }
    for (c, out) in out.chunks_exact_mut(LANES).enumerate() {
        let col = c * LANES;
        let p = &scratch[(col / hd) * seen..][..seen];
        let mut sums = [[0.0f32; LANES]; KEYS];
        let mut groups = p.chunks_exact(KEYS);
        let mut t = 0;
        for group in groups.by_ref() {
            for (u, (sums, &w)) in sums.iter_mut().zip(group).enumerate() {
                let value: &[f32; LANES] = values[(t + u) * d + col..][..LANES]
                    .try_into()
                    .expect("LANES components");
                for (s, &v) in sums.iter_mut().zip(value) {
                    *s = madd(w, v, *s);
                }
            }
            t += KEYS;
        }
        for (u, &w) in groups.remainder().iter().enumerate() {
            let value = &values[(t + u) * d + col..][..LANES];
            for (s, &v) in sums[u].iter_mut().zip(value) {
                *s = madd(w, v, *s);
            }
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = (sums[0][i] + sums[1][i]) + (sums[2][i] + sums[3][i]);
        }
    }
}

/// `e^x` for `x <= 0` (a softmax's shifted scores), to about one unit in the last place: `x`
/// split as `n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` by its Taylor polynomial to degree 6
/// (truncation error under `1.2e-7` relative), times `2^n` built in the exponent bits. Written
/// in plain arithmetic so that a loop of it compiles to vector instructions, where glibc's
/// `expf` is a call per element: the calls were about a third of a query's attention over 150
/// keys. Where the
/// result is below `f32`'s smallest normal (`x` under about `-87.3`) it is that small or
/// zero, which a softmax's sum, at least 1, absorbs.
#[inline(always)]
fn exp(x: f32, madd: impl Fn(f32, f32, f32) -> f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, the first exact in few bits, so that `x - n ln 2` loses nothing.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to an integer, in any vector width.
    const ROUND: f32 = 12_582_912.0;
    // At -88, n is -127 and 2^n below is zero; past it the exponent field would wrap.
    let x = x.max(-88.0);
    let rounded = x * LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = madd(-n, LN2_LO, madd(-n, LN2_HI, x));
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = madd(p, r, c);
    }
    // n is in [-127, 0], and `rounded`'s low bits hold it (ROUND's bits plus n): the exponent
    // field n + 127 makes 2^n, or zero at -127. Integer arithmetic on the bits, where a cast of
    // n would saturate element by element.
    let field = rounded
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    p * f32::from_bits(field << 23)
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

    /// `attend` over the transposed keys computes what the textbook loops compute over keys
    /// and values as they came, at lengths around the key block and for every head width path.
    #[test]
    fn attention_matches_the_textbook_loops() {
        let value = |i: usize| ((i * 7919 % 263) as f32 / 263.0) - 0.5;
        for (d, heads) in [(128, 4), (32, 2), (24, 3)] {
            let hd = d / heads;
            let mut kv = LayerKv::default();
            let (mut keys, mut values) = (Vec::new(), Vec::new());
            for t in 0..150 {
                let k: Vec<f32> = (0..d).map(|j| value(t * 3 * d + j)).collect();
                let v: Vec<f32> = (0..d).map(|j| value(t * 5 * d + j + 1)).collect();
                kv.push(t, &k, &v, 0);
                keys.push(k);
                values.push(v);
                let seen = t + 1;
                if ![1, 2, 5, 63, 64, 65, 127, 128, 150].contains(&seen) {
                    continue;
                }
                let q: Vec<f32> = (0..d).map(|j| value(seen * 11 + j) * 2.0).collect();
                let (mut got, mut scratch) = (vec![0.0; d], Vec::new());
                attend(&q, &kv, seen, heads, &mut got, &mut scratch);
                for h in 0..heads {
                    let head = h * hd..(h + 1) * hd;
                    let scores: Vec<f32> = keys
                        .iter()
                        .map(|k| {
                            let dot: f32 = q[head.clone()]
                                .iter()
                                .zip(&k[head.clone()])
                                .map(|(a, b)| a * b)
                                .sum();
                            dot / (hd as f32).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f32 = weights.iter().sum();
                    for j in head.clone() {
                        let want: f32 = weights
                            .iter()
                            .zip(&values)
                            .map(|(w, v)| w * v[j])
                            .sum::<f32>()
                            / total;
                        let g = got[j];
                        assert!(
                            (g - want).abs() < 1e-5,
                            "d {d}, seen {seen}, component {j}: {g} against {want}"
                        );
                    }
                }
            }
        }
    }

    /// The polynomial `exp` agrees with the standard library's to a few units in the last
    /// place over the whole range a softmax feeds it, and is exact at 0.
    #[test]
    fn exp_matches_the_standard_library() {
        let madd = |a: f32, b: f32, c: f32| a * b + c;
        assert_eq!(exp(0.0, madd), 1.0);
        let mut worst = 0.0f32;
        for i in 0..=200_000 {
            let x = -(i as f32) * 100.0 / 200_000.0;
            let (got, want) = (exp(x, madd), x.exp());
            if want >= f32::MIN_POSITIVE {
                worst = worst.max(((got - want) / want).abs());
            } else {
                assert!(got <= f32::MIN_POSITIVE, "exp({x}) = {got}, want {want}");
            }
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
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
