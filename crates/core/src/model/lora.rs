//! A low-rank adapter on a linear layer, as PEFT's LoRA computes it (llmtrain-fastlora attaches, trains, saves
//! and merges adapters; the model only needs to run them).
//!
//! `y = x Wᵀ + b + s · (drop(x) Aᵀ) Bᵀ` with `A` `[r, in]`, `B` `[out, r]` and `s = alpha / r` (rsLoRA:
//! `alpha / √r`). The low-rank path is applied as two thin matmuls, never forming `B A`. DoRA rescales each output
//! row: with `n = ‖W + s B A‖` per row (treated as a constant in backward, as the DoRA paper and PEFT do) and the
//! trained magnitude `m`, `y = x Wᵀ + b + (m/n − 1) · drop(x) Wᵀ + (m/n) · s · (drop(x) Aᵀ) Bᵀ`.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use super::compute::to_dtype;

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
        let low_rank = burn::tensor::module::linear(
            burn::tensor::module::linear(x.clone(), a.clone().transpose(), None),
            b.clone().transpose(),
            None,
        )
        .mul_scalar(self.scaling);
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
        let mask = Tensor::<B, D>::random(x.shape(), Distribution::Bernoulli(keep), &x.device());
        let mask = to_dtype(mask, super::compute::float_dtype(&x));
        x * mask.div_scalar(keep)
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
