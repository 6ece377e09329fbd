//! `Autodiff<B, C>`'s kernels: each op is one graph node whose backward calls the inner backend's kernels, for
//! any inner backend and any checkpointing strategy.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::module::AutodiffModule;
use burn::tensor::{Bool, Tensor};

use super::{Kernels, Nf4Weight, cross_entropy, flash_attention, fused_ops, nf4_weight};

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn rms_norm<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, D> {
        fused_ops::autodiff_rms(x, weight, eps)
    }

    fn swiglu<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        fused_ops::autodiff_swiglu(gate, up)
    }

    fn rope(x: Tensor<Self, 4>, cos: &Tensor<Self, 4>, sin: &Tensor<Self, 4>) -> Tensor<Self, 4> {
        fused_ops::autodiff_rope(x, cos.clone(), sin.clone())
    }

    fn flash_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: Option<&Tensor<Self, 4, Bool>>,
        scale: f64,
        block: usize,
    ) -> Tensor<Self, 4> {
        flash_attention::autodiff_flash(q, k, v, mask, scale, block)
    }

    fn linear_cross_entropy(
        hidden: Tensor<Self, 2>,
        head: Tensor<Self, 2>,
        targets: &[i64],
        chunk: usize,
    ) -> Tensor<Self, 1> {
        cross_entropy::autodiff_fused(hidden, head, targets, chunk)
    }

    fn nf4_linear<const D: usize>(x: Tensor<Self, D>, weight: &Nf4Weight<Self>) -> Tensor<Self, D> {
        // The quantized weight is a constant: its inner-backend tensors are all the node needs.
        nf4_weight::autodiff_matmul(x, weight.valid())
    }
}
