//! The model's compute kernels as a backend extension: RMSNorm, SwiGLU, RoPE, flash attention, the head fused
//! with cross-entropy, and the NF4 matmul.
//!
//! [`Kernels`] is a trait on the backend (burn's backend-extension pattern). Every method has a default composed
//! from burn tensor ops, so any backend gets a correct implementation from an empty `impl`; a backend with a
//! faster kernel overrides the method. Two implementations matter:
//!
//! - `Autodiff<B, C>` (any inner backend, any checkpointing strategy) makes each op one graph node with its own
//!   backward, which calls the inner backend's `*_forward` and `*_backward` methods, so a kernel written for the
//!   inner backend serves training as well as inference;
//! - [`Flex`], the CPU backend, runs RMSNorm, SwiGLU and RoPE as single passes over f32 buffers (`cpu.rs`), flash
//!   attention as one GEMM-per-tile kernel (`cpu_attention.rs`) and the fused head + cross-entropy as one GEMM per
//!   chunk (`cpu_cross_entropy.rs`), with vectorised element-wise math (`vector_math.rs`).
//!
//! The model asks for `B: Kernels`; a backend a user adds needs `impl Kernels for MyBackend {}` to run it.
//! This layer depends on burn only (and on [`crate::nf4`]'s host-side code tables), never on the model.
//!
//! ```
//! use burn::tensor::Tensor;
//! use llmtrain_core::device::CpuBackend;
//! use llmtrain_core::kernels::Kernels;
//!
//! let device = Default::default();
//! let x = Tensor::<CpuBackend, 2>::from_floats([[3.0, 4.0]], &device);
//! let weight = Tensor::<CpuBackend, 1>::ones([2], &device);
//! // sqrt(mean(x²)) = sqrt(12.5): x / 3.5355...
//! let y = CpuBackend::rms_norm(x, weight, 0.0).into_data().to_vec::<f32>().unwrap();
//! assert!((y[0] - 0.848_528).abs() < 1e-5 && (y[1] - 1.131_371).abs() < 1e-5);
//! ```

mod autodiff;
mod cpu;
mod cpu_attention;
mod cpu_cross_entropy;
mod cpu_gemm;
pub mod cross_entropy;
mod custom_op;
pub mod flash_attention;
pub mod fused_ops;
mod nf4_weight;
mod vector_math;

pub use cross_entropy::IGNORE_INDEX;
pub use nf4_weight::{DoubleQuantScales, Nf4Scales, Nf4Weight};

use burn::backend::Flex;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, DType, FloatDType, Tensor};

/// A backend's implementations of the model's fused ops. Defaults are composed from burn tensor ops; see the
/// module documentation.
///
/// `*_backward` methods and the `*_forward` methods that also return saved statistics are what an autodiff node
/// calls on its inner backend; the model calls the plain-named ones. Each gradient comes back in its input's float
/// type, and `want` flags skip the gradients of inputs that are not tracked (frozen weights under LoRA).
#[allow(clippy::type_complexity)]
pub trait Kernels: Backend {
    /// `x · rsqrt(mean(x², last dim) + eps) · weight` (transformers' LlamaRMSNorm; f32 statistics under 16-bit
    /// compute).
    fn rms_norm<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, D> {
        Self::rms_norm_forward(x, weight, eps).0
    }

    /// [`Kernels::rms_norm`] and the f32 inverse RMS per row `[.., 1]`.
    fn rms_norm_forward<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        eps: f64,
    ) -> (Tensor<Self, D>, Tensor<Self, D>) {
        fused_ops::rms_forward(x, weight, eps)
    }

    /// Gradients of x and weight from x, weight, the saved inverse RMS and the output's gradient.
    fn rms_norm_backward<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        inv_rms: Tensor<Self, D>,
        grad_out: Tensor<Self, D>,
        want: (bool, bool),
    ) -> (Option<Tensor<Self, D>>, Option<Tensor<Self, 1>>) {
        fused_ops::rms_backward(x, weight, inv_rms, grad_out, want)
    }

    /// `silu(gate) · up`, the Llama MLP's gate.
    fn swiglu<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        fused_ops::swiglu_forward(gate, up)
    }

    /// Gradients of gate and up.
    fn swiglu_backward<const D: usize>(
        gate: Tensor<Self, D>,
        up: Tensor<Self, D>,
        grad_out: Tensor<Self, D>,
        want: (bool, bool),
    ) -> (Option<Tensor<Self, D>>, Option<Tensor<Self, D>>) {
        fused_ops::swiglu_backward(gate, up, grad_out, want)
    }

    /// `x · cos + rotate_half(x) · sin` for x `[batch, heads, seq, head_dim]` and tables broadcastable to it.
    fn rope(x: Tensor<Self, 4>, cos: &Tensor<Self, 4>, sin: &Tensor<Self, 4>) -> Tensor<Self, 4> {
        fused_ops::apply_rotary(x, cos, sin)
    }

    /// The inverse rotation of the output's gradient: `dy · cos − rotate_half(dy · sin)`.
    fn rope_backward(grad_out: Tensor<Self, 4>, cos: &Tensor<Self, 4>, sin: &Tensor<Self, 4>) -> Tensor<Self, 4> {
        fused_ops::rope_backward(grad_out, cos, sin)
    }

    /// Causal attention by tiles with an online softmax ([`flash_attention::flash_attention`] checks the shapes).
    fn flash_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: Option<&Tensor<Self, 4, Bool>>,
        scale: f64,
        block: usize,
    ) -> Tensor<Self, 4> {
        Self::flash_attention_forward(&q, &k, &v, mask, scale, block).0
    }

    /// The output and the f32 row log-sum-exp `[batch, heads, q_len]`.
    fn flash_attention_forward(
        q: &Tensor<Self, 4>,
        k: &Tensor<Self, 4>,
        v: &Tensor<Self, 4>,
        mask: Option<&Tensor<Self, 4, Bool>>,
        scale: f64,
        block: usize,
    ) -> (Tensor<Self, 4>, Tensor<Self, 3>) {
        flash_attention::tiled_forward(q, k, v, mask, scale, block)
    }

    /// Gradients of q, k and v, recomputing the probabilities tile by tile from the log-sum-exp.
    #[allow(clippy::too_many_arguments)]
    fn flash_attention_backward(
        q: &Tensor<Self, 4>,
        k: &Tensor<Self, 4>,
        v: &Tensor<Self, 4>,
        out: &Tensor<Self, 4>,
        lse: &Tensor<Self, 3>,
        grad_out: Tensor<Self, 4>,
        mask: Option<&Tensor<Self, 4, Bool>>,
        scale: f64,
        block: usize,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        flash_attention::tiled_backward(q, k, v, out, lse, grad_out, mask, scale, block)
    }

    /// The summed cross-entropy of `hidden · headᵀ` against `targets`, `chunk` rows at a time
    /// ([`cross_entropy::fused_linear_cross_entropy`] checks the inputs).
    fn linear_cross_entropy(
        hidden: Tensor<Self, 2>,
        head: Tensor<Self, 2>,
        targets: &[i64],
        chunk: usize,
    ) -> Tensor<Self, 1> {
        Self::linear_cross_entropy_forward(&hidden, &head, targets, chunk).0
    }

    /// The summed loss `[1]` and the f32 row log-sum-exp `[rows]`.
    fn linear_cross_entropy_forward(
        hidden: &Tensor<Self, 2>,
        head: &Tensor<Self, 2>,
        targets: &[i64],
        chunk: usize,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        cross_entropy::chunked_forward(hidden, head, targets, chunk)
    }

    /// Gradients of hidden and head, recomputing each chunk's logits.
    #[allow(clippy::too_many_arguments)]
    fn linear_cross_entropy_backward(
        hidden: &Tensor<Self, 2>,
        head: &Tensor<Self, 2>,
        lse: &Tensor<Self, 1>,
        targets: &[i64],
        chunk: usize,
        grad_loss: Tensor<Self, 1>,
        want: (bool, bool),
    ) -> (Option<Tensor<Self, 2>>, Option<Tensor<Self, 2>>) {
        cross_entropy::chunked_backward(hidden, head, lse, targets, chunk, grad_loss, want)
    }

    /// `x · dequantize(W)ᵀ` in x's float type.
    fn nf4_linear<const D: usize>(x: Tensor<Self, D>, weight: &Nf4Weight<Self>) -> Tensor<Self, D> {
        nf4_weight::matmul_transposed(x, weight)
    }
}

/// An autodiff backend whose inner backend has kernels too: training runs the model on both (the inner one for
/// evaluation and generation, through `valid()`).
pub trait AutodiffKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B: AutodiffBackend<InnerBackend: Kernels> + Kernels> AutodiffKernels for B {}

/// The CPU backend: RMSNorm, SwiGLU and RoPE run as single passes over f32 buffers, flash attention as one GEMM
/// call per tile, the fused head + loss as one GEMM per chunk; other float types and the NF4 matmul take the
/// composed defaults.
impl Kernels for Flex {
    fn rms_norm_forward<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        eps: f64,
    ) -> (Tensor<Self, D>, Tensor<Self, D>) {
        if cpu::takes(&[x.dtype(), weight.dtype()]) {
            cpu::rms_norm_forward(x, weight, eps)
        } else {
            fused_ops::rms_forward(x, weight, eps)
        }
    }

    fn rms_norm_backward<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        inv_rms: Tensor<Self, D>,
        grad_out: Tensor<Self, D>,
        want: (bool, bool),
    ) -> (Option<Tensor<Self, D>>, Option<Tensor<Self, 1>>) {
        if cpu::takes(&[x.dtype(), weight.dtype(), inv_rms.dtype(), grad_out.dtype()]) {
            cpu::rms_norm_backward(x, weight, inv_rms, grad_out, want)
        } else {
            fused_ops::rms_backward(x, weight, inv_rms, grad_out, want)
        }
    }

    fn swiglu<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        if cpu::takes(&[gate.dtype(), up.dtype()]) {
            cpu::swiglu(gate, up)
        } else {
            fused_ops::swiglu_forward(gate, up)
        }
    }

    fn swiglu_backward<const D: usize>(
        gate: Tensor<Self, D>,
        up: Tensor<Self, D>,
        grad_out: Tensor<Self, D>,
        want: (bool, bool),
    ) -> (Option<Tensor<Self, D>>, Option<Tensor<Self, D>>) {
        if cpu::takes(&[gate.dtype(), up.dtype(), grad_out.dtype()]) {
            cpu::swiglu_backward(gate, up, grad_out, want)
        } else {
            fused_ops::swiglu_backward(gate, up, grad_out, want)
        }
    }

    fn rope(x: Tensor<Self, 4>, cos: &Tensor<Self, 4>, sin: &Tensor<Self, 4>) -> Tensor<Self, 4> {
        if cpu::rope_takes(&x, cos, sin) { cpu::rope(x, cos, sin) } else { fused_ops::apply_rotary(x, cos, sin) }
    }

    fn rope_backward(grad_out: Tensor<Self, 4>, cos: &Tensor<Self, 4>, sin: &Tensor<Self, 4>) -> Tensor<Self, 4> {
        if cpu::rope_takes(&grad_out, cos, sin) {
            cpu::rope_backward(grad_out, cos, sin)
        } else {
            fused_ops::rope_backward(grad_out, cos, sin)
        }
    }

    fn flash_attention_forward(
        q: &Tensor<Self, 4>,
        k: &Tensor<Self, 4>,
        v: &Tensor<Self, 4>,
        mask: Option<&Tensor<Self, 4, Bool>>,
        scale: f64,
        block: usize,
    ) -> (Tensor<Self, 4>, Tensor<Self, 3>) {
        if cpu::takes(&[q.dtype(), k.dtype(), v.dtype()]) {
            cpu_attention::forward(q, k, v, mask, scale, block)
        } else {
            flash_attention::tiled_forward(q, k, v, mask, scale, block)
        }
    }

    fn flash_attention_backward(
        q: &Tensor<Self, 4>,
        k: &Tensor<Self, 4>,
        v: &Tensor<Self, 4>,
        out: &Tensor<Self, 4>,
        lse: &Tensor<Self, 3>,
        grad_out: Tensor<Self, 4>,
        mask: Option<&Tensor<Self, 4, Bool>>,
        scale: f64,
        block: usize,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        if cpu::takes(&[q.dtype(), k.dtype(), v.dtype(), out.dtype(), lse.dtype(), grad_out.dtype()]) {
            cpu_attention::backward(q, k, v, out, lse, &grad_out, mask, scale, block)
        } else {
            flash_attention::tiled_backward(q, k, v, out, lse, grad_out, mask, scale, block)
        }
    }

    fn linear_cross_entropy_forward(
        hidden: &Tensor<Self, 2>,
        head: &Tensor<Self, 2>,
        targets: &[i64],
        chunk: usize,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        if cpu::takes(&[hidden.dtype(), head.dtype()]) {
            cpu_cross_entropy::forward(hidden, head, targets, chunk)
        } else {
            cross_entropy::chunked_forward(hidden, head, targets, chunk)
        }
    }

    fn linear_cross_entropy_backward(
        hidden: &Tensor<Self, 2>,
        head: &Tensor<Self, 2>,
        lse: &Tensor<Self, 1>,
        targets: &[i64],
        chunk: usize,
        grad_loss: Tensor<Self, 1>,
        want: (bool, bool),
    ) -> (Option<Tensor<Self, 2>>, Option<Tensor<Self, 2>>) {
        if cpu::takes(&[hidden.dtype(), head.dtype(), lse.dtype(), grad_loss.dtype()]) {
            cpu_cross_entropy::backward(hidden, head, lse, targets, chunk, &grad_loss, want)
        } else {
            cross_entropy::chunked_backward(hidden, head, lse, targets, chunk, grad_loss, want)
        }
    }
}

/// burn's NdArray (kept for backend comparisons): the composed ops.
#[cfg(feature = "ndarray")]
impl Kernels for crate::device::NdArrayBackend {}

/// CUDA: the composed ops (CubeCL fuses chains of element-wise ops itself).
#[cfg(feature = "cuda")]
impl Kernels for crate::device::CudaBackend {}

/// wgpu: the composed ops.
#[cfg(feature = "wgpu")]
impl Kernels for crate::device::WgpuBackend {}

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
