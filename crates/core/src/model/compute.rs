//! How the model computes, apart from its weights: the activations' float type (mixed precision) and the
//! attention kernel.
//!
//! Weights stay in the type they are stored in (f32 master weights when training) and are cast where they are
//! used, so autodiff returns their gradients in f32 (burn's cast passes the gradient back through a cast).

use burn::tensor::FloatDType;

use serde::{Deserialize, Serialize};

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

pub use crate::kernels::{float_dtype, to_dtype};

/// The precision of the forward and backward passes (Accelerate's `mixed_precision`); master weights stay f32.
/// Lightning's `precision` names are accepted too: `32-true`, `16-mixed`, `bf16-mixed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    #[default]
    #[serde(alias = "32-true")]
    No,
    #[serde(alias = "16-mixed")]
    Fp16,
    #[serde(alias = "bf16-mixed")]
    Bf16,
}

impl MixedPrecision {
    pub const ALL: &'static [Self] = &[Self::No, Self::Fp16, Self::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
        }
    }

    /// Lightning's name of this precision (`Trainer(precision=...)`).
    pub fn lightning_name(self) -> &'static str {
        match self {
            Self::No => "32-true",
            Self::Fp16 => "16-mixed",
            Self::Bf16 => "bf16-mixed",
        }
    }

    /// Whether activations are 16-bit.
    pub fn is_half(self) -> bool {
        self != Self::No
    }

    /// Bytes per activation element.
    pub fn activation_bytes(self) -> f64 {
        if self.is_half() { 2.0 } else { 4.0 }
    }

    /// The activations' float type as reports name it: `f32`, `bf16` or `fp16`.
    pub fn dtype_name(self) -> &'static str {
        match self {
            Self::No => "f32",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for MixedPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MixedPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let wanted = s.trim().to_lowercase();
        Self::ALL.iter().copied().find(|m| m.name() == wanted || m.lightning_name() == wanted).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().flat_map(|m| [m.name(), m.lightning_name()]).collect();
            format!("unknown mixed precision `{s}`; expected one of: {}", names.join(", "))
        })
    }
}

/// Which attention kernel training uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionImpl {
    #[default]
    Eager,
    Flash,
}
