//! Memory-efficient ("flash") causal attention for training, with its own backward.
//!
//! Plain attention materialises the `[q_len, k_len]` score and probability matrices per head, and under autodiff
//! keeps them alive until the backward pass: O(n²) activation memory per layer, which dominates at long context.
//! Here the forward walks query tiles × key tiles and keeps, per query row, a running maximum `m`, a running sum
//! `l` of `exp(s − m)` and an accumulator of `exp(s − m) · v` that is rescaled by `exp(m_old − m_new)` whenever the
//! maximum grows (the online softmax). At the end `out = acc / l`, and only the per-row log-sum-exp
//! `lse = m + ln l` is kept besides the output. Key tiles that lie wholly in the causal future of a query tile are
//! skipped, which halves the work for self-attention.
//!
//! Under autodiff the whole op is a single graph node that saves q, k, v, the output, `lse` (and the mask). The
//! backward recomputes each probability tile as `P = exp(S − lse)` (exact, no renormalisation needed) and forms
//! the gradients tile by tile with `D = rowsum(dO ∘ O)`:
//! `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ∘ (dP − D)`, `dQ += dS K · scale`, `dK += dSᵀ Q · scale`.
//! So neither pass holds more than one `[block, block]` score tile per (batch, head) at a time.
//!
//! Masked scores are set to a large finite negative rather than `-inf`: a tile whose row is fully masked then
//! gives `exp(0)` terms that the next rescale multiplies by `exp(MASKED − m) = 0`, instead of `exp(-inf + inf)` =
//! NaN. Every row sees at least its diagonal key, so the final result is exact.
//!
//! Statistics and accumulators are f32 whatever the input dtype (bf16/f16 tiles are cast up); the output has q's
//! dtype and each gradient its input's dtype.
//!
//! The op is [`Kernels::flash_attention`]: under `Autodiff` the node defined here, whose backward calls the inner
//! backend's [`Kernels::flash_attention_backward`]; the tiled versions below are the trait's defaults.

use super::Kernels;
use super::custom_op::{float, primitive};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, FloatDType, Tensor};

/// The score given to blocked (query, key) pairs: finite so that fully masked tiles never produce NaN.
const MASKED: f32 = -1.0e30;

/// softmax(q kᵀ · scale + mask) v with causal masking always applied (queries and keys aligned at the end,
/// i.e. key j visible to query i iff j <= i + (k_len - q_len)), plus an optional extra `true`=blocked mask
/// `[batch, 1, q_len, k_len]` (packed sequences; it is always a subset-compatible causal mask, i.e. every row keeps
/// at least its diagonal key visible). q: [batch, heads, q_len, d]; k, v: [batch, kv_heads, k_len, d] with
/// `kv_heads` dividing `heads` (grouped-query attention: query head h reads key/value head h / (heads / kv_heads);
/// the gradients of k and v have their shape). `block` is the tile size (rows of queries and of keys), e.g. 128.
pub fn flash_attention<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<&Tensor<B, 4, Bool>>,
    scale: f64,
    block: usize,
) -> Tensor<B, 4> {
    check_shapes(&q, &k, &v, mask, block);
    B::flash_attention(q, k, v, mask, scale, block)
}

fn check_shapes<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: Option<&Tensor<B, 4, Bool>>,
    block: usize,
) {
    let [batch, heads, q_len, d] = q.dims();
    let [kb, kh, k_len, kd] = k.dims();
    assert!(block > 0, "flash attention: block size must be positive");
    assert!(
        kb == batch && kd == d && kh > 0 && heads % kh == 0,
        "flash attention: k must be [batch, kv_heads, k_len, head_dim] with kv_heads dividing q's heads"
    );
    assert_eq!(v.dims(), k.dims(), "flash attention: v must have k's shape");
    assert!(k_len >= q_len, "flash attention: queries are aligned at the end of the keys, so k_len >= q_len");
    if let Some(m) = mask {
        let [mb, mh, mq, mk] = m.dims();
        assert!(
            (mb == batch || mb == 1) && mh == 1 && [mq, mk] == [q_len, k_len],
            "flash attention: mask must be [batch or 1, 1, q_len, k_len], got {:?}",
            m.dims()
        );
    }
}

/// The forward on the inner backend, registered as one node whose backward is [`tiled_backward`].
pub(super) fn autodiff_flash<I: Kernels, C: CheckpointStrategy>(
    q: Tensor<Autodiff<I, C>, 4>,
    k: Tensor<Autodiff<I, C>, 4>,
    v: Tensor<Autodiff<I, C>, 4>,
    mask: Option<&Tensor<Autodiff<I, C>, 4, Bool>>,
    scale: f64,
    block: usize,
) -> Tensor<Autodiff<I, C>, 4> {
    let (q, k, v) = (q.into_primitive().tensor(), k.into_primitive().tensor(), v.into_primitive().tensor());
    // Bool tensors are not tracked: Autodiff's bool primitive is the inner backend's.
    let mask: Option<Tensor<I, 4, Bool>> = mask.map(|m| Tensor::from_primitive(m.clone().into_primitive()));
    let (iq, ik, iv) =
        (float::<I, 4>(q.primitive.clone()), float::<I, 4>(k.primitive.clone()), float(v.primitive.clone()));
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let out = match <FlashBackward as Backward<I, 3>>::prepare::<C>(FlashBackward, nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (out, lse) = I::flash_attention_forward(&iq, &ik, &iv, mask.as_ref(), scale, block);
            let state = FlashState::<I> {
                q: q.primitive,
                k: k.primitive,
                v: v.primitive,
                out: primitive(out.clone()),
                lse: primitive(lse),
                mask: mask.map(|m| m.into_primitive()),
                scale,
                block,
            };
            prep.finish(state, primitive(out))
        }
        OpsKind::UnTracked(prep) => prep.finish(primitive(I::flash_attention(iq, ik, iv, mask.as_ref(), scale, block))),
    };
    float(out)
}

#[derive(Debug)]
struct FlashBackward;

/// What the node keeps for its backward: inputs, output and row log-sum-exp, never a score matrix.
#[derive(Debug, Clone)]
struct FlashState<B: Backend> {
    q: B::FloatTensorPrimitive,
    k: B::FloatTensorPrimitive,
    v: B::FloatTensorPrimitive,
    out: B::FloatTensorPrimitive,
    /// `[batch, heads, q_len]`, f32.
    lse: B::FloatTensorPrimitive,
    mask: Option<B::BoolTensorPrimitive>,
    scale: f64,
    block: usize,
}

impl<B: Kernels> Backward<B, 3> for FlashBackward {
    type State = FlashState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_out = float::<B, 4>(grads.consume::<B>(&ops.node));
        let s = ops.state;
        let mask = s.mask.map(Tensor::<B, 4, Bool>::from_primitive);
        let (dq, dk, dv) = B::flash_attention_backward(
            &float(s.q),
            &float(s.k),
            &float(s.v),
            &float(s.out),
            &float(s.lse),
            grad_out,
            mask.as_ref(),
            s.scale,
            s.block,
        );
        let [parent_q, parent_k, parent_v] = ops.parents;
        for (parent, grad) in [(parent_q, dq), (parent_k, dk), (parent_v, dv)] {
            if let Some(node) = parent {
                grads.register::<B>(node.id, primitive(grad));
            }
        }
    }
}

/// Tile bounds `start..end` over `len` rows.
fn tiles(len: usize, block: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len).step_by(block).map(move |start| (start, (start + block).min(len)))
}

fn rows<B: Backend>(t: &Tensor<B, 4>, start: usize, end: usize) -> Tensor<B, 4> {
    let [batch, heads, _, d] = t.dims();
    t.clone().slice([0..batch, 0..heads, start..end, 0..d])
}

fn f32_rows<B: Backend>(t: &Tensor<B, 4>, start: usize, end: usize) -> Tensor<B, 4> {
    rows(t, start, end).cast(FloatDType::F32)
}

/// The blocked pairs of one `[qs..qe] × [ks..ke]` tile (causal and extra mask), expanded to `[batch, heads, ..]`,
/// or `None` when the tile is fully visible.
fn tile_mask<B: Backend>(
    (batch, heads): (usize, usize),
    (qs, qe): (usize, usize),
    (ks, ke): (usize, usize),
    offset: usize,
    mask: Option<&Tensor<B, 4, Bool>>,
    device: &B::Device,
) -> Option<Tensor<B, 4, Bool>> {
    let shape = [batch, heads, qe - qs, ke - ks];
    // Key ks + j is in the future of query qs + i iff j > i + (qs + offset - ks); only diagonal tiles have any.
    let causal = (ke - 1 > qs + offset).then(|| {
        let diag = (qs + offset) as i64 - ks as i64;
        Tensor::<B, 2, Bool>::tril_mask([qe - qs, ke - ks], diag, device).unsqueeze::<4>().expand(shape)
    });
    let extra = mask.map(|m| {
        let mb = m.dims()[0];
        m.clone().slice([0..mb, 0..1, qs..qe, ks..ke]).expand(shape)
    });
    match (causal, extra) {
        (Some(c), Some(e)) => Some(c.bool_or(e)),
        (c, e) => c.or(e),
    }
}

/// Scaled, masked f32 scores of one tile.
fn tile_scores<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    scale: f64,
    blocked: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    let s = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    match blocked {
        Some(b) => s.mask_fill(b, MASKED),
        None => s,
    }
}

/// The tiled online-softmax forward on any backend (no graph is recorded when `B` has no autodiff): the
/// [`Kernels::flash_attention_forward`] default, public so that tests can hold a backend's kernel against it.
/// Returns the output in q's dtype and the row log-sum-exp `[batch, heads, q_len]` in f32.
pub fn tiled_forward<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: Option<&Tensor<B, 4, Bool>>,
    scale: f64,
    block: usize,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let [batch, heads, q_len, d] = q.dims();
    let k_len = k.dims()[2];
    let offset = k_len - q_len;
    let (k, v) = (&repeat_kv(k, heads), &repeat_kv(v, heads));
    let device = q.device();
    let out_dtype = FloatDType::from(q.dtype());
    let f32_opts = (&device, DType::F32);
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for (qs, qe) in tiles(q_len, block) {
        let bq = qe - qs;
        let qt = f32_rows(q, qs, qe);
        let mut m = Tensor::<B, 4>::full([batch, heads, bq, 1], MASKED, f32_opts);
        let mut l = Tensor::<B, 4>::zeros([batch, heads, bq, 1], f32_opts);
        let mut acc = Tensor::<B, 4>::zeros([batch, heads, bq, d], f32_opts);
        // The tile's last query sees keys up to qe - 1 + offset; later key tiles are all future.
        for (ks, ke) in tiles(qe + offset, block) {
            let blocked = tile_mask((batch, heads), (qs, qe), (ks, ke), offset, mask, &device);
            let s = tile_scores(qt.clone(), f32_rows(k, ks, ke), scale, blocked);
            let m_new = m.clone().max_pair(s.clone().max_dim(3));
            let p = (s - m_new.clone()).exp();
            let alpha = (m - m_new.clone()).exp();
            l = l * alpha.clone() + p.clone().sum_dim(3);
            acc = acc * alpha + p.matmul(f32_rows(v, ks, ke));
            m = m_new;
        }
        outs.push((acc / l.clone()).cast(out_dtype));
        lses.push((m + l.log()).squeeze_dim::<3>(3));
    }
    (Tensor::cat(outs, 2), Tensor::cat(lses, 2))
}

/// Gradients of q, k, v (each in its input's dtype), recomputing the probabilities tile by tile from `lse`: the
/// [`Kernels::flash_attention_backward`] default.
#[allow(clippy::too_many_arguments)]
pub fn tiled_backward<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    out: &Tensor<B, 4>,
    lse: &Tensor<B, 3>,
    grad_out: Tensor<B, 4>,
    mask: Option<&Tensor<B, 4, Bool>>,
    scale: f64,
    block: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [batch, heads, q_len, d] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    let offset = k_len - q_len;
    let (k, v) = (&repeat_kv(k, heads), &repeat_kv(v, heads));
    let device = q.device();
    let grad_out = grad_out.cast(FloatDType::F32);
    // D_i = Σ_j P_ij dP_ij = rowsum(dO ∘ O): the softmax-Jacobian term, computed once per row.
    let delta = (grad_out.clone() * out.clone().cast(FloatDType::F32)).sum_dim(3);
    let lse = lse.clone().cast(FloatDType::F32).unsqueeze_dim::<4>(3);
    let zeros = |rows: usize| Tensor::<B, 4>::zeros([batch, heads, rows, d], (&device, DType::F32));
    let mut dq: Vec<Tensor<B, 4>> = tiles(q_len, block).map(|(qs, qe)| zeros(qe - qs)).collect();
    let mut dk = Vec::new();
    let mut dv = Vec::new();
    for (ks, ke) in tiles(k_len, block) {
        let kt = f32_rows(k, ks, ke);
        let vt = f32_rows(v, ks, ke);
        let mut dk_j = zeros(ke - ks);
        let mut dv_j = zeros(ke - ks);
        // Queries before ks - offset cannot see this key tile.
        let first = ks.saturating_sub(offset) / block;
        for (i, (qs, qe)) in tiles(q_len, block).enumerate().skip(first) {
            let qt = f32_rows(q, qs, qe);
            let dot = rows(&grad_out, qs, qe);
            let blocked = tile_mask((batch, heads), (qs, qe), (ks, ke), offset, mask, &device);
            let s = tile_scores(qt.clone(), kt.clone(), scale, blocked);
            let p = (s - rows(&lse, qs, qe)).exp();
            dv_j = dv_j + p.clone().swap_dims(2, 3).matmul(dot.clone());
            let dp = dot.matmul(vt.clone().swap_dims(2, 3));
            let ds = p * (dp - rows(&delta, qs, qe));
            dq[i] = dq[i].clone() + ds.clone().matmul(kt.clone()).mul_scalar(scale);
            dk_j = dk_j + ds.swap_dims(2, 3).matmul(qt).mul_scalar(scale);
        }
        dk.push(dk_j);
        dv.push(dv_j);
    }
    (
        Tensor::cat(dq, 2).cast(FloatDType::from(q.dtype())),
        sum_groups(Tensor::cat(dk, 2), kv_heads).cast(FloatDType::from(k.dtype())),
        sum_groups(Tensor::cat(dv, 2), kv_heads).cast(FloatDType::from(v.dtype())),
    )
}

/// Key/value heads `[batch, kv_heads, len, d]` repeated to `heads` (each `heads / kv_heads` times, adjacent), so
/// that grouped-query attention can run as plain multi-head attention.
pub fn repeat_kv<B: Backend>(x: &Tensor<B, 4>, heads: usize) -> Tensor<B, 4> {
    let [batch, kv_heads, len, d] = x.dims();
    if kv_heads == heads {
        return x.clone();
    }
    let groups = heads / kv_heads;
    x.clone().unsqueeze_dim::<5>(2).expand([batch, kv_heads, groups, len, d]).reshape([batch, heads, len, d])
}

/// The gradient of [`repeat_kv`]: `[batch, heads, len, d]` summed over each group back to `kv_heads`.
fn sum_groups<B: Backend>(grad: Tensor<B, 4>, kv_heads: usize) -> Tensor<B, 4> {
    let [batch, heads, len, d] = grad.dims();
    if kv_heads == heads {
        return grad;
    }
    grad.reshape([batch, kv_heads, heads / kv_heads, len, d]).sum_dim(2).reshape([batch, kv_heads, len, d])
}
