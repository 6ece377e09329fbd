//! RMSNorm, SwiGLU and RoPE as single autodiff nodes with their own backward (Unsloth's exact fast-path kernels).
//!
//! Composed from burn ops, both are chains of element-wise nodes, and autodiff keeps alive until the backward pass
//! whatever a later node's backward reads:
//!
//! - plain RMSNorm (`x²`, row mean, `+ eps`, sqrt, reciprocal, `x · r`, `· w`) keeps the per-row statistics (mean,
//!   square root, inverse RMS) and the normalised `x · r` for the weight's gradient, one activation-sized tensor
//!   besides its input and output; in 16-bit compute it also keeps the f32 copy of `x` (read by the `x²` and
//!   `x · r` backwards) and the 16-bit cast of `x · r` (`x²` itself is freed once its mean is taken);
//! - plain SwiGLU (`silu(gate) · up`, with `silu(g) = g · sigmoid(g)`) keeps `sigmoid(gate)` and `silu(gate)`
//!   besides `gate` and `up`: two more tensors of the widest activation of a decoder layer
//!   (`[tokens × intermediate]`).
//!
//! Measured with a counting allocator (`tests/fused_ops.rs`, `[4, 256, 1024]`, output included): f32 RMSNorm 8 MiB
//! plain vs 4 MiB fused, bf16 8 vs 2; f32 SwiGLU 12 vs 4, bf16 6 vs 2. Here each op is one node whose saved state
//! is only its inputs (alive anyway) plus, for RMSNorm, one f32 per row:
//!
//! - [`rms_norm`]: `y = x · r · w` with `r = rsqrt(mean(x², last dim) + eps)`, computed exactly as
//!   [`crate::model::RmsNorm::forward`] does (f32 statistics and normalisation; in 16-bit compute the normalised value is
//!   cast back to x's dtype before the weight, cast to that dtype, multiplies it). Saved: `x`, `w` and `r` (f32,
//!   `[.., 1]`). Backward recomputes `n = x · r` and, with `g = dy ∘ w`:
//!   `dw = Σ_rows(dy ∘ n)`, `dx = r · (g − n · mean(g ∘ n, last dim))`.
//! - [`swiglu`]: `y = silu(gate) · up`, the plain op. Saved: `gate` and `up`. Backward recomputes
//!   `s = sigmoid(gate)`: `dgate = dy · up · s · (1 + gate · (1 − s))`, `dup = dy · gate · s`.
//! - [`rope`]: `y = x · cos + rotate_half(x) · sin`, the plain op. Saved: the cos/sin tables only (shared by every
//!   layer). Backward is the inverse rotation, `dx = dy · cos − rotate_half(dy · sin)`, in x's dtype.
//!
//! RMSNorm's and SwiGLU's backward arithmetic runs in f32 whatever the inputs' dtype; each gradient is returned in
//! its input's dtype, and only the tracked inputs get one (a frozen norm weight under LoRA costs no `dw`
//! reduction).
//!
//! Each op is a [`Kernels`] method: under `Autodiff` the node defined here, whose backward calls the inner
//! backend's `*_backward` kernel; on a backend without autodiff its forward. The composed versions below are the
//! trait's defaults.

use super::Kernels;
use super::custom_op::{float, primitive};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

use super::{float_dtype, to_dtype};

/// `x · rsqrt(mean(x², last dim) + eps) · weight`, the same values as [`crate::model::RmsNorm::forward`], as one autodiff
/// node that saves `x`, `weight` and the f32 inverse RMS per row. x: `[.., hidden]` (any float dtype; the output has
/// its dtype), weight: `[hidden]` (trainable or frozen).
///
/// # Panics
/// If weight's length is not x's last dimension.
pub fn rms_norm<B: Kernels, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let (h, [w]) = (x.dims()[D - 1], weight.dims());
    assert_eq!(w, h, "rms_norm: weight [{w}] does not match the last dimension of x {:?}", x.dims());
    B::rms_norm(x, weight, eps)
}

/// `silu(gate) · up` (the SwiGLU gate of the Llama MLP), as one autodiff node that saves only `gate` and `up`.
/// Both `[.., intermediate]` of the same shape; the output has their dtype.
///
/// # Panics
/// If the shapes differ.
pub fn swiglu<B: Kernels, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    assert_eq!(gate.dims(), up.dims(), "swiglu: gate and up must have the same shape");
    B::swiglu(gate, up)
}

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------------------------------

/// The plain forward on any backend, in [`crate::model::RmsNorm::forward`]'s exact op order. Returns the output (x's
/// dtype) and the inverse RMS `[.., 1]` (f32).
pub(super) fn rms_forward<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let dtype = float_dtype(&x);
    let x32 = to_dtype(x, FloatDType::F32);
    let mean_square = x32.clone().powi_scalar(2).mean_dim(D - 1);
    let inv_rms = mean_square.add_scalar(eps).sqrt().recip();
    let y = if dtype == FloatDType::F32 {
        x32 * inv_rms.clone() * to_dtype(weight, dtype).unsqueeze()
    } else {
        to_dtype(x32 * inv_rms.clone(), dtype) * to_dtype(weight, dtype).unsqueeze()
    };
    (y, inv_rms)
}

/// The forward on the inner backend, registered as one node whose backward is [`rms_backward`].
pub(super) fn autodiff_rms<I: Kernels, C: CheckpointStrategy, const D: usize>(
    x: Tensor<Autodiff<I, C>, D>,
    weight: Tensor<Autodiff<I, C>, 1>,
    eps: f64,
) -> Tensor<Autodiff<I, C>, D> {
    let (x, weight) = (x.into_primitive().tensor(), weight.into_primitive().tensor());
    let (ix, iw) = (float::<I, D>(x.primitive.clone()), float::<I, 1>(weight.primitive.clone()));
    let nodes = [x.node.clone(), weight.node.clone()];
    let prep = <RmsNormBackward<D> as Backward<I, 2>>::prepare::<C>(RmsNormBackward, nodes);
    let y = match prep.compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (y, inv_rms) = I::rms_norm_forward(ix, iw, eps);
            let state = RmsNormState::<I> { x: x.primitive, weight: weight.primitive, inv_rms: primitive(inv_rms) };
            prep.finish(state, primitive(y))
        }
        OpsKind::UnTracked(prep) => prep.finish(primitive(I::rms_norm(ix, iw, eps))),
    };
    float(y)
}

/// The node's backward; `D` is x's rank.
#[derive(Debug)]
struct RmsNormBackward<const D: usize>;

/// What the node keeps for its backward: the inputs (alive anyway: the residual stream and the norm weight) and
/// one f32 inverse RMS per row; never `x²` or the normalised `x`.
#[derive(Debug, Clone)]
struct RmsNormState<B: Backend> {
    x: B::FloatTensorPrimitive,
    weight: B::FloatTensorPrimitive,
    /// `[.., 1]`, f32.
    inv_rms: B::FloatTensorPrimitive,
}

impl<B: Kernels, const D: usize> Backward<B, 2> for RmsNormBackward<D> {
    type State = RmsNormState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_out = float::<B, D>(grads.consume::<B>(&ops.node));
        let s = ops.state;
        let [parent_x, parent_weight] = ops.parents;
        let (dx, dweight) = B::rms_norm_backward(
            float::<B, D>(s.x),
            float(s.weight),
            float::<B, D>(s.inv_rms),
            grad_out,
            (parent_x.is_some(), parent_weight.is_some()),
        );
        if let (Some(node), Some(dx)) = (parent_x, dx) {
            grads.register::<B>(node.id, primitive(dx));
        }
        if let (Some(node), Some(dweight)) = (parent_weight, dweight) {
            grads.register::<B>(node.id, primitive(dweight));
        }
    }
}

/// Gradients of x and weight (each in its input's dtype; `None` where `want` says the input is not tracked),
/// from the recomputed `n = x · r`, in f32.
pub(super) fn rms_backward<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    inv_rms: Tensor<B, D>,
    grad_out: Tensor<B, D>,
    (want_x, want_weight): (bool, bool),
) -> (Option<Tensor<B, D>>, Option<Tensor<B, 1>>) {
    let (x_dtype, weight_dtype) = (float_dtype(&x), float_dtype(&weight));
    let h = x.dims()[D - 1];
    let dy = to_dtype(grad_out, FloatDType::F32);
    let n = to_dtype(x, FloatDType::F32) * inv_rms.clone();
    let dweight = want_weight.then(|| {
        let rows = dy.shape().num_elements() / h.max(1);
        let dw = (dy.clone() * n.clone()).reshape([rows, h]).sum_dim(0).reshape([h]);
        to_dtype(dw, weight_dtype)
    });
    let dx = want_x.then(|| {
        // The weight as the forward multiplied by it (cast to x's dtype in 16-bit compute).
        let w = to_dtype(to_dtype(weight, x_dtype), FloatDType::F32);
        let g = dy * w.unsqueeze();
        let proj = (g.clone() * n.clone()).mean_dim(D - 1);
        to_dtype((g - n * proj) * inv_rms, x_dtype)
    });
    (dx, dweight)
}

// ---------------------------------------------------------------------------------------------------------------
// SwiGLU
// ---------------------------------------------------------------------------------------------------------------

/// The plain forward on any backend (the Llama MLP's `silu(gate) · up`, in the inputs' dtype).
pub(super) fn swiglu_forward<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    silu(gate) * up
}

/// The forward on the inner backend, registered as one node whose backward is [`swiglu_backward`].
pub(super) fn autodiff_swiglu<I: Kernels, C: CheckpointStrategy, const D: usize>(
    gate: Tensor<Autodiff<I, C>, D>,
    up: Tensor<Autodiff<I, C>, D>,
) -> Tensor<Autodiff<I, C>, D> {
    let (gate, up) = (gate.into_primitive().tensor(), up.into_primitive().tensor());
    let (ig, iu) = (float::<I, D>(gate.primitive.clone()), float::<I, D>(up.primitive.clone()));
    let nodes = [gate.node.clone(), up.node.clone()];
    let prep = <SwigluBackward<D> as Backward<I, 2>>::prepare::<C>(SwigluBackward, nodes);
    let y = match prep.compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y = I::swiglu(ig, iu);
            prep.finish(SwigluState::<I> { gate: gate.primitive, up: up.primitive }, primitive(y))
        }
        OpsKind::UnTracked(prep) => prep.finish(primitive(I::swiglu(ig, iu))),
    };
    float(y)
}

/// The node's backward; `D` is the inputs' rank.
#[derive(Debug)]
struct SwigluBackward<const D: usize>;

/// What the node keeps for its backward: the two inputs only; never `sigmoid(gate)` or `silu(gate)`.
#[derive(Debug, Clone)]
struct SwigluState<B: Backend> {
    gate: B::FloatTensorPrimitive,
    up: B::FloatTensorPrimitive,
}

impl<B: Kernels, const D: usize> Backward<B, 2> for SwigluBackward<D> {
    type State = SwigluState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_out = float::<B, D>(grads.consume::<B>(&ops.node));
        let s = ops.state;
        let [parent_gate, parent_up] = ops.parents;
        let (dgate, dup) = B::swiglu_backward(
            float::<B, D>(s.gate),
            float::<B, D>(s.up),
            grad_out,
            (parent_gate.is_some(), parent_up.is_some()),
        );
        for (parent, grad) in [(parent_gate, dgate), (parent_up, dup)] {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<B>(node.id, primitive(grad));
            }
        }
    }
}

/// Gradients of gate and up (each in its input's dtype; `None` where `want` says the input is not tracked),
/// from the recomputed `s = sigmoid(gate)`, in f32.
pub(super) fn swiglu_backward<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
    grad_out: Tensor<B, D>,
    (want_gate, want_up): (bool, bool),
) -> (Option<Tensor<B, D>>, Option<Tensor<B, D>>) {
    let (gate_dtype, up_dtype) = (float_dtype(&gate), float_dtype(&up));
    let dy = to_dtype(grad_out, FloatDType::F32);
    let g = to_dtype(gate, FloatDType::F32);
    let s = sigmoid(g.clone());
    let dgate = want_gate.then(|| {
        // silu'(g) = s + g · s · (1 − s) = s · (1 + g · (1 − s)).
        let u = to_dtype(up, FloatDType::F32);
        let dsilu = s.clone() * (g.clone() * s.clone().neg().add_scalar(1.0)).add_scalar(1.0);
        to_dtype(dy.clone() * u * dsilu, gate_dtype)
    });
    let dup = want_up.then(|| to_dtype(dy * g * s, up_dtype));
    (dgate, dup)
}

// ---------------------------------------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------------------------------------

/// The rotary embedding (`x · cos + rotate_half(x) · sin`, transformers' `apply_rotary_pos_emb`) as
/// one autodiff node that keeps only the cos and sin tables (shared by every layer) and none of `x`'s copies:
/// composed from burn ops it is six nodes (two slices, a negation, a concatenation, two products and a sum), whose
/// backward pads, slices and adds full-size gradients. The rotation is orthogonal, so the backward is the
/// inverse rotation of the incoming gradient: `dx = dy · cos − rotate_half(dy · sin)`, in x's dtype as the plain
/// ops compute it. x: `[batch, heads, seq, head_dim]`; cos, sin: broadcastable to it, in x's dtype.
pub fn rope<B: Kernels>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    B::rope(x, cos, sin)
}

/// The composed rotation: `x · cos + rotate_half(x) · sin` (transformers' `apply_rotary_pos_emb`).
pub fn apply_rotary<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    x.clone() * cos.clone() + rotate_half(x) * sin.clone()
}

/// The composed inverse rotation: `dx = dy·cos + rotate_halfᵀ(dy·sin)`, and `rotate_halfᵀ = −rotate_half`.
pub(super) fn rope_backward<B: Backend>(
    grad_out: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    grad_out.clone() * cos.clone() - rotate_half(grad_out * sin.clone())
}

/// transformers' `rotate_half`: `[x1, x2] → [−x2, x1]` over the last dimension's halves.
fn rotate_half<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    let first = x.clone().narrow(3, 0, half);
    let second = x.narrow(3, half, half);
    Tensor::cat(vec![second.neg(), first], 3)
}

/// The forward on the inner backend, registered as one node whose backward is [`RopeBackward`]. The tables are
/// constants: only x is a parent.
pub(super) fn autodiff_rope<I: Kernels, C: CheckpointStrategy>(
    x: Tensor<Autodiff<I, C>, 4>,
    cos: Tensor<Autodiff<I, C>, 4>,
    sin: Tensor<Autodiff<I, C>, 4>,
) -> Tensor<Autodiff<I, C>, 4> {
    let x = x.into_primitive().tensor();
    let (cos, sin) = (cos.into_primitive().tensor().primitive, sin.into_primitive().tensor().primitive);
    let ix = float::<I, 4>(x.primitive.clone());
    let (icos, isin) = (float::<I, 4>(cos.clone()), float::<I, 4>(sin.clone()));
    let prep = <RopeBackward as Backward<I, 1>>::prepare::<C>(RopeBackward, [x.node.clone()]);
    let y = match prep.compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y = I::rope(ix, &icos, &isin);
            prep.finish(RopeState::<I> { cos, sin }, primitive(y))
        }
        OpsKind::UnTracked(prep) => prep.finish(primitive(I::rope(ix, &icos, &isin))),
    };
    float(y)
}

#[derive(Debug)]
struct RopeBackward;

/// What the node keeps: the tables (alive anyway for the other layers); never x.
#[derive(Debug, Clone)]
struct RopeState<B: Backend> {
    cos: B::FloatTensorPrimitive,
    sin: B::FloatTensorPrimitive,
}

impl<B: Kernels> Backward<B, 1> for RopeBackward {
    type State = RopeState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_out = float::<B, 4>(grads.consume::<B>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let (cos, sin) = (float::<B, 4>(ops.state.cos), float::<B, 4>(ops.state.sin));
            let dx = B::rope_backward(grad_out, &cos, &sin);
            grads.register::<B>(node.id, primitive(dx));
        }
    }
}
