//! A byte-level LSTM language model: embedding, stacked LSTM layers, linear head.

use candle_core::{Result, Tensor};
use candle_nn::rnn::{LSTMConfig, LSTMState};
use candle_nn::{Embedding, Module, VarBuilder};

use crate::model::{index_tensor, Dense, LanguageModel, VOCAB};
use crate::weights::SeededWeights;

/// The LSTM's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LstmConfig {
    /// Width of the byte embedding.
    pub embed: usize,
    /// Width of each layer's hidden and cell state.
    pub hidden: usize,
    /// How many LSTM layers are stacked.
    pub layers: usize,
    /// The most tokens one request may feed and generate together.
    pub max_request_tokens: usize,
}

impl LstmConfig {
    /// The showcase's LSTM: 64-wide embedding, two layers of 256.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless_showcase::lstm::LstmConfig;
    ///
    /// assert_eq!(LstmConfig::showcase().layers, 2);
    /// ```
    pub fn showcase() -> Self {
        Self {
            embed: 64,
            hidden: 256,
            layers: 2,
            max_request_tokens: 512,
        }
    }

    /// A small LSTM for tests and examples.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless_showcase::lstm::LstmConfig;
    ///
    /// assert!(LstmConfig::tiny().hidden < LstmConfig::showcase().hidden);
    /// ```
    pub fn tiny() -> Self {
        Self {
            embed: 16,
            hidden: 32,
            layers: 2,
            max_request_tokens: 128,
        }
    }
}

/// A sequence's LSTM state: `h` and `c` of each layer, each `[1, hidden]`.
#[derive(Debug, Clone)]
pub struct LstmSeqState {
    layers: Vec<LSTMState>,
}

/// The LSTM language model, on the CPU, with seeded random weights.
#[derive(Debug)]
pub struct LstmLm {
    config: LstmConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    head: Dense,
}

/// One LSTM layer, with the weights of candle's `LSTM` under the same names, laid out for one
/// product per step.
///
/// candle's `LSTM::step` runs two products, two bias additions, a sum, four slices, three
/// sigmoids, two tanh and four element-wise products and sums: a dozen tensor operations, each
/// allocating its output, which cost more than the products themselves at the showcase's
/// widths. Here a step is one product of the input and hidden state side by side against both
/// weight matrices stacked (the crate's packed [`Dense`] kernel, with both biases summed), then
/// one pass in plain Rust over the gates: the same arithmetic (the unit test below checks it
/// against candle's `LSTM` to 1e-5).
#[derive(Debug)]
struct Layer {
    /// `[input + hidden] -> [4 * hidden]`: the input weights and the hidden weights side by
    /// side, both biases summed; the gates come out in candle's order, input, forget, cell,
    /// output.
    gates: Dense,
    hidden: usize,
}

impl Layer {
    /// The layer under `vb`'s prefix, with candle's default LSTM initialisation: the same
    /// weights as `candle_nn::lstm(input, hidden, LSTMConfig::default(), vb)`.
    fn new(input: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let config = LSTMConfig::default();
        let w_ih = vb.get_with_hints((4 * hidden, input), "weight_ih_l0", config.w_ih_init)?;
        let w_hh = vb.get_with_hints((4 * hidden, hidden), "weight_hh_l0", config.w_hh_init)?;
        let mut bias = vec![0.0f32; 4 * hidden];
        for (name, init) in [
            ("bias_ih_l0", config.b_ih_init),
            ("bias_hh_l0", config.b_hh_init),
        ] {
            if let Some(init) = init {
                let b = vb
                    .get_with_hints(4 * hidden, name, init)?
                    .to_vec1::<f32>()?;
                bias.iter_mut().zip(b).for_each(|(sum, b)| *sum += b);
            }
        }
        let gates = Dense::from_parts(&Tensor::cat(&[&w_ih, &w_hh], 1)?, bias)?;
        Ok(Self { gates, hidden })
    }

    /// One step for `x`, `[rows, input]`, from `state`.
    fn step(&self, x: &Tensor, state: &LSTMState) -> Result<LSTMState> {
        let (rows, input) = x.dims2()?;
        let h = self.hidden;
        let (x, hs) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            state.h.flatten_all()?.to_vec1::<f32>()?,
        );
        let mut joined = Vec::with_capacity(rows * (input + h));
        for (x, hs) in x.chunks_exact(input).zip(hs.chunks_exact(h)) {
            joined.extend_from_slice(x);
            joined.extend_from_slice(hs);
        }
        let gates = self.gates.forward_slice(&joined, false)?;
        let c = state.c.flatten_all()?.to_vec1::<f32>()?;
        let mut next_h = vec![0.0f32; rows * h];
        let mut next_c = vec![0.0f32; rows * h];
        for r in 0..rows {
            let g = &gates[r * 4 * h..(r + 1) * 4 * h];
            for j in 0..h {
                let input = sigmoid(g[j]);
                let forget = sigmoid(g[h + j]);
                let cell = tanh(g[2 * h + j]);
                let output = sigmoid(g[3 * h + j]);
                let c_next = forget * c[r * h + j] + input * cell;
                next_c[r * h + j] = c_next;
                next_h[r * h + j] = output * tanh(c_next);
            }
        }
        let dev = state.c.device();
        Ok(LSTMState::new(
            Tensor::from_vec(next_h, (rows, h), dev)?,
            Tensor::from_vec(next_c, (rows, h), dev)?,
        ))
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `tanh(x)` as `2 sigmoid(2x) - 1`: one `exp`. The C library's `tanhf` goes through `expm1f`
/// and took a third of a batched LSTM step; this is within 1e-7 of it (absolute), which the
/// unit test's comparison with candle's `LSTM` covers.
fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

impl LstmLm {
    /// Builds the model from `seed`: the same seed gives the same weights.
    ///
    /// # Errors
    ///
    /// A candle error, or a zero size in `config`.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless_showcase::lstm::{LstmConfig, LstmLm};
    /// use latchless_showcase::model::LanguageModel;
    ///
    /// let model = LstmLm::new(LstmConfig::tiny(), 42).unwrap();
    /// assert_eq!(model.name(), "lstm");
    /// ```
    pub fn new(config: LstmConfig, seed: u64) -> Result<Self> {
        if config.embed == 0 || config.hidden == 0 || config.layers == 0 {
            candle_core::bail!("LSTM sizes must be non-zero: {config:?}");
        }
        let vb = SeededWeights::var_builder(seed);
        let embed = candle_nn::embedding(VOCAB, config.embed, vb.pp("embed"))?;
        let layers = (0..config.layers)
            .map(|l| {
                let input = if l == 0 { config.embed } else { config.hidden };
                // Each layer under its own prefix, with candle's `LSTM` names inside it.
                Layer::new(input, config.hidden, vb.pp(format!("lstm{l}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let head = Dense::new(config.hidden, VOCAB, vb.pp("head"))?;
        Ok(Self {
            config,
            embed,
            layers,
            head,
        })
    }

    /// The model's sizes.
    pub fn config(&self) -> &LstmConfig {
        &self.config
    }
}

/// LSTM sequences being generated together: each layer's `h` and `c`, `[rows, hidden]`.
#[derive(Debug)]
pub struct LstmBatch {
    layers: Vec<LSTMState>,
}

impl LstmLm {
    /// One step of every layer for `x`, `[rows, embed]`, from `state`; returns the new state.
    fn step(&self, mut x: Tensor, state: &[LSTMState]) -> Result<Vec<LSTMState>> {
        let mut out = Vec::with_capacity(state.len());
        for (layer, s) in self.layers.iter().zip(state) {
            let next = layer.step(&x, s)?;
            x = next.h.clone();
            out.push(next);
        }
        Ok(out)
    }
}

impl LanguageModel for LstmLm {
    type State = LstmSeqState;
    type Batch = LstmBatch;

    fn name(&self) -> &'static str {
        "lstm"
    }

    fn max_request_tokens(&self) -> usize {
        self.config.max_request_tokens
    }

    fn fresh_state(&self) -> LstmSeqState {
        let zero = || {
            Tensor::zeros(
                (1, self.config.hidden),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .expect("a zero tensor on the CPU")
        };
        LstmSeqState {
            layers: (0..self.config.layers)
                .map(|_| LSTMState::new(zero(), zero()))
                .collect(),
        }
    }

    fn state_bytes(&self, state: &LstmSeqState) -> u64 {
        state
            .layers
            .iter()
            .map(|s| (s.h.elem_count() + s.c.elem_count()) as u64 * 4)
            .sum()
    }

    fn row_bytes(&self, _state: Option<&LstmSeqState>, _prompt: usize, _max_new: usize) -> u64 {
        // `h` and `c` of each layer, whatever the sequence's length.
        (self.config.layers * 2 * self.config.hidden * 4) as u64
    }

    fn fit(
        &self,
        state: LstmSeqState,
        prompt: &[u32],
        _max_new: usize,
    ) -> (LstmSeqState, Vec<u32>) {
        // An LSTM's state has a fixed size however long the sequence: nothing to trim.
        (state, prompt.to_vec())
    }

    fn prefill(
        &self,
        states: Vec<LstmSeqState>,
        tokens: &[&[u32]],
        _steps: usize,
    ) -> Result<(LstmBatch, Tensor)> {
        let rows = states.len();
        if rows == 0 || rows != tokens.len() || tokens.iter().any(|t| t.is_empty()) {
            candle_core::bail!("prefill needs one non-empty token list per state");
        }
        let dev = &candle_core::Device::Cpu;
        // Longest first: at step t the rows still feeding are a prefix of the batch, so only
        // real tokens are computed and no row's state is touched after its last token.
        let mut order: Vec<usize> = (0..rows).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i].len()));
        let longest = tokens[order[0]].len();
        let mut ids = Vec::with_capacity(rows * longest);
        for &i in &order {
            ids.extend_from_slice(tokens[i]);
            ids.extend(std::iter::repeat_n(0u32, longest - tokens[i].len()));
        }
        let embedded = self
            .embed
            .forward(&Tensor::from_vec(ids, (rows, longest), dev)?)?; // [rows, longest, embed]
        let mut state: Vec<LSTMState> = (0..self.config.layers)
            .map(|l| {
                let h: Vec<&Tensor> = order.iter().map(|&i| &states[i].layers[l].h).collect();
                let c: Vec<&Tensor> = order.iter().map(|&i| &states[i].layers[l].c).collect();
                Ok(LSTMState::new(Tensor::cat(&h, 0)?, Tensor::cat(&c, 0)?))
            })
            .collect::<Result<_>>()?;
        for t in 0..longest {
            let feeding = order.iter().take_while(|&&i| tokens[i].len() > t).count();
            let x = embedded
                .narrow(1, t, 1)?
                .squeeze(1)?
                .narrow(0, 0, feeding)?;
            if feeding == rows {
                state = self.step(x.contiguous()?, &state)?;
                continue;
            }
            let head: Vec<LSTMState> = state
                .iter()
                .map(|s| {
                    Ok(LSTMState::new(
                        s.h.narrow(0, 0, feeding)?,
                        s.c.narrow(0, 0, feeding)?,
                    ))
                })
                .collect::<Result<_>>()?;
            let next = self.step(x.contiguous()?, &head)?;
            state = next
                .into_iter()
                .zip(&state)
                .map(|(n, s)| {
                    let rest = rows - feeding;
                    Ok(LSTMState::new(
                        Tensor::cat(&[&n.h, &s.h.narrow(0, feeding, rest)?], 0)?,
                        Tensor::cat(&[&n.c, &s.c.narrow(0, feeding, rest)?], 0)?,
                    ))
                })
                .collect::<Result<_>>()?;
        }
        // Back to the callers' order.
        let mut inverse = vec![0; rows];
        for (at, &i) in order.iter().enumerate() {
            inverse[i] = at;
        }
        let back = index_tensor(&inverse)?;
        let layers = state
            .iter()
            .map(|s| {
                Ok(LSTMState::new(
                    s.h.index_select(&back, 0)?,
                    s.c.index_select(&back, 0)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let logits = self
            .head
            .forward(&layers[self.config.layers - 1].h, false)?;
        Ok((LstmBatch { layers }, logits))
    }

    fn decode(&self, batch: &mut LstmBatch, tokens: &[u32]) -> Result<Tensor> {
        let rows = batch.layers[0].h.dim(0)?;
        if tokens.len() != rows {
            candle_core::bail!("{} tokens for a batch of {rows}", tokens.len());
        }
        let ids = Tensor::from_vec(tokens.to_vec(), rows, &candle_core::Device::Cpu)?;
        batch.layers = self.step(self.embed.forward(&ids)?, &batch.layers)?;
        self.head
            .forward(&batch.layers[self.config.layers - 1].h, false)
    }

    fn retain(&self, batch: &mut LstmBatch, keep: &[usize]) -> Result<()> {
        let keep = index_tensor(keep)?;
        for s in &mut batch.layers {
            *s = LSTMState::new(s.h.index_select(&keep, 0)?, s.c.index_select(&keep, 0)?);
        }
        Ok(())
    }

    fn append(&self, batch: &mut LstmBatch, other: LstmBatch) -> Result<()> {
        for (s, o) in batch.layers.iter_mut().zip(other.layers) {
            *s = LSTMState::new(
                Tensor::cat(&[&s.h, &o.h], 0)?,
                Tensor::cat(&[&s.c, &o.c], 0)?,
            );
        }
        Ok(())
    }

    fn batch_of(&self, states: Vec<LstmSeqState>) -> Result<LstmBatch> {
        if states.is_empty() {
            candle_core::bail!("a batch needs at least one state");
        }
        let layers = (0..self.config.layers)
            .map(|l| {
                let h: Vec<&Tensor> = states.iter().map(|s| &s.layers[l].h).collect();
                let c: Vec<&Tensor> = states.iter().map(|s| &s.layers[l].c).collect();
                Ok(LSTMState::new(Tensor::cat(&h, 0)?, Tensor::cat(&c, 0)?))
            })
            .collect::<Result<_>>()?;
        Ok(LstmBatch { layers })
    }

    fn feed(&self, batch: &mut LstmBatch, tokens: &[&[u32]]) -> Result<Tensor> {
        if tokens.iter().all(|t| t.len() == 1) {
            let next: Vec<u32> = tokens.iter().map(|t| t[0]).collect();
            return self.decode(batch, &next);
        }
        // Rows of several tokens: the prefill's stepping, from the rows' current states.
        let rows = batch.layers[0].h.dim(0)?;
        if tokens.len() != rows {
            candle_core::bail!("{} token lists for a batch of {rows}", tokens.len());
        }
        let states = (0..rows)
            .map(|r| self.state_of(batch, r))
            .collect::<Result<Vec<_>>>()?;
        let (fed, logits) = self.prefill(states, tokens, 0)?;
        *batch = fed;
        Ok(logits)
    }

    fn prompt_chunk(&self, rows: usize) -> usize {
        // An LSTM reads one token per step whatever the batch: in a wide batch a prompt fed a
        // token per step keeps every step as wide as the batch. In a batch of one or two, a
        // step's fixed cost (a round of the batcher, the tensors' set-up) is most of it, so
        // the whole prompt goes in one step, as a request served alone reads it; the other row
        // waits that long for its next token.
        if rows <= 2 {
            self.config.max_request_tokens
        } else {
            1
        }
    }

    fn state_of(&self, batch: &LstmBatch, row: usize) -> Result<LstmSeqState> {
        Ok(LstmSeqState {
            layers: batch
                .layers
                .iter()
                .map(|s| {
                    Ok(LSTMState::new(
                        s.h.narrow(0, row, 1)?.copy()?,
                        s.c.narrow(0, row, 1)?.copy()?,
                    ))
                })
                .collect::<Result<_>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::rnn::RNN;

    /// The fused layer computes what candle's `LSTM` computes from the same weights, over
    /// several steps and rows.
    #[test]
    fn the_fused_layer_matches_candles_lstm() {
        let (input, hidden, rows) = (12, 20, 3);
        let vb = SeededWeights::var_builder(5);
        let fused = Layer::new(input, hidden, vb.pp("layer")).unwrap();
        let reference =
            candle_nn::lstm(input, hidden, LSTMConfig::default(), vb.pp("layer")).unwrap();
        let dev = &candle_core::Device::Cpu;
        let mut ours = reference.zero_state(rows).unwrap();
        let mut theirs = ours.clone();
        for step in 0..6u32 {
            let x = Tensor::arange(0u32, (rows * input) as u32, dev)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .affine(0.01 * f64::from(step + 1), -0.1)
                .unwrap()
                .reshape((rows, input))
                .unwrap();
            ours = fused.step(&x, &ours).unwrap();
            theirs = reference.step(&x, &theirs).unwrap();
            for (a, b) in [(&ours.h, &theirs.h), (&ours.c, &theirs.c)] {
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "step {step}: differs by {diff}");
            }
        }
        // The states moved: a comparison of zeros would prove nothing.
        let norm = ours
            .c
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.1, "{norm}");
    }
}
