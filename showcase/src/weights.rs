//! Seeded random weights: the models need no download and are the same on every run.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};

/// A candle [`VarBuilder`] backend that makes every tensor it is asked for from a seed and the
/// tensor's name, following candle's initialisation hint for it (Kaiming for weights, constants
/// for layer norms, and so on).
///
/// Each tensor's values depend only on the seed and its full name, not on the order in which the
/// model asks for them, so adding a layer does not change the others.
#[derive(Debug, Clone, Copy)]
pub struct SeededWeights {
    seed: u64,
}

impl SeededWeights {
    /// A [`VarBuilder`] of `f32` tensors on the CPU, drawn from `seed`.
    ///
    /// # Examples
    ///
    /// ```
    /// use latchless_showcase::weights::SeededWeights;
    ///
    /// let vb = SeededWeights::var_builder(7);
    /// let a = candle_nn::linear(4, 3, vb.pp("proj")).unwrap();
    /// let b = candle_nn::linear(4, 3, SeededWeights::var_builder(7).pp("proj")).unwrap();
    /// let (wa, wb) = (a.weight().to_vec2::<f32>().unwrap(), b.weight().to_vec2::<f32>().unwrap());
    /// assert_eq!(wa, wb);
    /// ```
    pub fn var_builder(seed: u64) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(SeededWeights { seed }), DType::F32, Device::Cpu)
    }

    fn rng_for(&self, name: &str) -> Xoshiro256PlusPlus {
        // FNV-1a over the name: stable across runs and Rust releases, unlike `DefaultHasher`.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Xoshiro256PlusPlus::seed_from_u64(self.seed ^ h)
    }
}

impl SimpleBackend for SeededWeights {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let n = s.elem_count();
        let mut rng = self.rng_for(name);
        let uniform = |rng: &mut Xoshiro256PlusPlus, lo: f64, up: f64| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(lo..up) as f32).collect()
        };
        let normal = |rng: &mut Xoshiro256PlusPlus, mean: f64, std: f64| -> Result<Vec<f32>> {
            let d = Normal::new(mean, std).map_err(candle_core::Error::wrap)?;
            Ok((0..n).map(|_| d.sample(rng) as f32).collect())
        };
        let values = match h {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
            Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev)?,
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let fan = fan.for_shape(&s).max(1);
                let std = non_linearity.gain() / (fan as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        uniform(&mut rng, -bound, bound)
                    }
                    NormalOrUniform::Normal => normal(&mut rng, 0.0, std)?,
                }
            }
        };
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "seeded weights need a shape for `{name}`"
        )))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}
