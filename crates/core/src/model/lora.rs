//! A low-rank adapter on a linear layer, as PEFT's LoRA computes it (llmtrain-fastlora attaches, trains, saves
//! and merges adapters; the model only needs to run them).
//!
//! `y = x Wᵀ + b + s · (drop(x) Aᵀ) Bᵀ` with `A` `[r, in]`, `B` `[out, r]` and `s = alpha / r` (rsLoRA:
//! `alpha / √r`). The low-rank path is applied as two thin matmuls, never forming `B A`. DoRA rescales each output
//! row: with `n = ‖W + s B A‖` per row (treated as a constant in backward, as the DoRA paper and PEFT do) and the
//! trained magnitude `m`, `y = x Wᵀ + b + (m/n − 1) · drop(x) Wᵀ + (m/n) · s · (drop(x) Aᵀ) Bᵀ`.

use std::cell::Cell;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};

use super::compute::to_dtype;

thread_local! {
    /// The seed of this thread's dropout masks (see [`set_dropout_seed`]).
    static DROPOUT_SEED: Cell<u64> = const { Cell::new(0) };
}

/// Sets the seed every adapter's dropout mask derives from on this thread, until the next call. The trainer
/// sets it from (run seed, rank, step, micro-batch) before each forward: masks then depend on nothing another
/// thread does (in-process ranks are threads), a resumed run draws the masks the uninterrupted one drew, and a
/// recomputed forward (gradient checkpointing) draws the same masks as the first.
pub fn set_dropout_seed(seed: u64) {
    DROPOUT_SEED.with(|cell| cell.set(seed));
}

/// One well-mixed 64-bit seed from several numbers (SplitMix64's finaliser over each in turn).
pub fn mix_seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9e37_79b9_7f4a_7c15, |acc, &part| {
        let mut z = acc ^ part.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// The dropout stream of the adapter on module `name` (`model.layers.0.self_attn.q_proj`): FNV-1a of the name,
/// so each adapter draws its own masks.
pub fn dropout_stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// The adapter of one linear layer.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[r, in]` (PEFT's `lora_A.weight`).
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[out, r]` (PEFT's `lora_B.weight`).
    pub lora_b: Param<Tensor<B, 2>>,
    /// DoRA's magnitude `[out]` (PEFT's `lora_magnitude_vector`); `None` for plain LoRA.
    pub magnitude: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub scaling: f64,
    /// Dropout probability on the adapter's input, applied only while training (autodiff backends).
    #[module(skip)]
    pub dropout: f64,
    /// Which stream of masks this adapter draws ([`dropout_stream`] of its module's name).
    #[module(skip)]
    pub dropout_stream: u64,
}

impl<B: Backend> LoraAdapter<B> {
    /// The layer's output with the adapter: `base` is `x Wᵀ + b` already computed from the same `x`; `weight`
    /// gives the base weight `[out, in]` (read by DoRA only) and `bias` is the bias, both in `x`'s float type.
    pub fn apply<const D: usize>(
        &self,
        x: Tensor<B, D>,
        base: Tensor<B, D>,
        weight: impl FnOnce() -> Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
    ) -> Tensor<B, D> {
        let dtype = super::compute::float_dtype(&x);
        let a = to_dtype(self.lora_a.val(), dtype);
        let b = to_dtype(self.lora_b.val(), dtype);
        let x = self.drop(x);
        // The scaling multiplies the rank-r intermediate, not the [.., out] product (PEFT scales the product): the
        // same value up to rounding, and a pass over r columns instead of `out` in forward and in backward.
        let down = burn::tensor::module::linear(x.clone(), a.clone().transpose(), None).mul_scalar(self.scaling);
        let low_rank = burn::tensor::module::linear(down, b.clone().transpose(), None);
        let Some(magnitude) = &self.magnitude else {
            return base + low_rank;
        };
        // DoRA: the row norms of the adapted weight, detached so no gradient flows through them.
        let weight = weight();
        let adapted = weight.clone() + b.matmul(a).mul_scalar(self.scaling);
        let out = adapted.dims()[0];
        let norm = adapted.powi_scalar(2).sum_dim(1).sqrt().detach().reshape([out]);
        let ratio: Tensor<B, 1> = to_dtype(magnitude.val(), dtype) / norm;
        let ratio_minus_one = ratio.clone().sub_scalar(1.0);
        // With dropout the base term is recomputed on the dropped input, as PEFT does.
        let base_term = match (self.dropout > 0.0 && B::ad_enabled(&x.device()), bias) {
            (true, _) => burn::tensor::module::linear(x, weight.transpose(), None),
            (false, Some(bias)) => base.clone() - bias.unsqueeze(),
            (false, None) => base.clone(),
        };
        base + base_term * ratio_minus_one.unsqueeze() + low_rank * ratio.unsqueeze()
    }

    /// Inverted dropout on the adapter's input while training.
    fn drop<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if self.dropout <= 0.0 || !B::ad_enabled(&x.device()) {
            return x;
        }
        let keep = 1.0 - self.dropout;
        // Drawn on the host from a seed of its own, not burn's process-wide generator (see set_dropout_seed).
        let seed = mix_seed(&[DROPOUT_SEED.with(Cell::get), self.dropout_stream]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let scale = (1.0 / keep) as f32;
        let shape = x.shape();
        let mask: Vec<f32> =
            (0..shape.num_elements()).map(|_| if rng.random::<f64>() < keep { scale } else { 0.0 }).collect();
        let mask = Tensor::<B, D>::from_data(TensorData::new(mask, shape), &x.device());
        let dtype = super::compute::float_dtype(&x);
        x * to_dtype(mask, dtype)
    }

    /// `s · B A` `[out, in]`, what merging adds to the base weight (before DoRA's rescaling).
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_b.val().matmul(self.lora_a.val()).mul_scalar(self.scaling)
    }

    /// The adapter's rank.
    pub fn rank(&self) -> usize {
        self.lora_a.val().dims()[0]
    }
}
