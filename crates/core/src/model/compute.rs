//! How the model computes, apart from its weights: the activations' float type (mixed precision) and the
//! attention kernel.
//!
//! Weights stay in the type they are stored in (f32 master weights when training) and are cast where they are
//! used, so autodiff returns their gradients in f32 (burn's cast passes the gradient back through a cast).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor};

use crate::config::{AttentionImpl, MixedPrecision};

/// The compute settings a [`super::LlamaModel`] runs with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compute {
    /// The float type of activations and of the weights as the matmuls see them.
    pub dtype: FloatDType,
    pub attention: AttentionKernel,
    /// Rows per chunk of the head fused with cross-entropy in training losses (the `[tokens × vocab]` logits are
    /// never kept); `None` computes full logits.
    pub loss_chunk: Option<usize>,
    /// RMSNorm, SwiGLU and RoPE as single autodiff nodes that keep only their inputs (`super::fused_ops`).
    pub fused_kernels: bool,
}

impl Default for Compute {
    fn default() -> Self {
        Self { dtype: FloatDType::F32, attention: AttentionKernel::Eager, loss_chunk: None, fused_kernels: false }
    }
}

impl Compute {
    /// From the `[memopt]` choices (the fused loss is set separately).
    pub fn new(precision: MixedPrecision, attention: AttentionImpl, flash_block: usize) -> Self {
        let dtype = precision_dtype(precision);
        let attention = match attention {
            AttentionImpl::Eager => AttentionKernel::Eager,
            AttentionImpl::Flash => AttentionKernel::Flash { block: flash_block },
        };
        Self { dtype, attention, loss_chunk: None, fused_kernels: false }
    }
}

/// The activations' float type for a precision choice.
pub fn precision_dtype(precision: MixedPrecision) -> FloatDType {
    match precision {
        MixedPrecision::No => FloatDType::F32,
        MixedPrecision::Bf16 => FloatDType::BF16,
        MixedPrecision::Fp16 => FloatDType::F16,
    }
}

/// Which attention computation the decoder layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// Scores and probabilities materialised (and kept by autodiff for backward).
    Eager,
    /// Tiled online softmax; backward recomputes each tile (see [`super::flash_attention`]).
    Flash { block: usize },
}

/// `x` in `dtype`, without a cast node when it already is.
pub fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: FloatDType) -> Tensor<B, D> {
    if x.dtype() == DType::from(dtype) { x } else { x.cast(dtype) }
}

/// The float type a tensor holds, as a [`FloatDType`] (f32 for anything that is not a float type).
pub fn float_dtype<B: Backend, const D: usize>(x: &Tensor<B, D>) -> FloatDType {
    match x.dtype() {
        DType::F64 => FloatDType::F64,
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        _ => FloatDType::F32,
    }
}
