//! The CPU backend's ([`Flex`]) attention kernel: causal softmax attention with an optional extra mask, forward
//! and backward, over f32 buffers with one GEMM call per tile.
//!
//! The composed tiled version ([`super::flash_attention`]) is correct on any backend, but on the CPU each of its
//! tiles is a dozen tensor ops (slices, casts, masks built per tile, online-softmax rescales), each a pass over
//! memory with its own allocation. Here one rayon task owns one (batch, query tile) for every head (forward) or
//! one (batch, key/value head) with its group of query heads (backward) and:
//!
//! - reads q, k, v and the output gradient in place through their strides (the model's head-split views need no
//!   copy), calling the `gemm` crate (the one burn's Flex matmul uses) on strided matrices;
//! - holds the scores of a whole query tile against every key it may see (`block × k_len` floats), so the softmax
//!   of each row is exact in one pass: no running maximum, no rescaling. Memory stays O(block · k_len) per thread,
//!   never `[q_len, k_len]` per head, and nothing but the output and the row log-sum-exp is kept for backward;
//! - skips keys in the causal future of the tile's last query;
//! - reads grouped-query key/value heads as they are (never repeated), and writes the output heads-last.
//!
//! The backward recomputes `P = exp(S − lse)` per tile and forms `dV += Pᵀ dO`, `dP = dO Vᵀ`,
//! `dS = P ∘ (dP − D) · scale` with `D = rowsum(dO ∘ O)`, `dQ = dS K`, `dK += dSᵀ Q`, as the tiled version does.
//! Results differ from it only by summation order.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Bool, Tensor};
use rayon::prelude::*;

use super::cpu::{flex, tensor};
use super::cpu_gemm::{Mat, Threads, matmul, readable};
use super::vector_math::{exp_shifted, max, sum, with_simd};

/// The score given to blocked (query, key) pairs, as in the tiled version: `exp(MASKED − max)` is exactly 0.
const MASKED: f32 = -1.0e30;

/// A `[batch, heads, len, d]` f32 tensor read in place when its strides are non-negative, else copied.
struct Heads {
    tensor: FlexTensor,
    start: usize,
    strides: [usize; 4],
}

impl Heads {
    fn of(t: &Tensor<Flex, 4>) -> Self {
        let tensor = readable(flex(t.clone()));
        let s = tensor.layout().strides();
        let strides = [s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize];
        Self { start: tensor.layout().start_offset(), strides, tensor }
    }

    /// Head `h` of batch `b` as a `[len, d]` matrix.
    fn head(&self, b: usize, h: usize) -> Mat<'_> {
        let [sb, sh, rs, cs] = self.strides;
        Mat { data: self.tensor.storage(), offset: self.start + b * sb + h * sh, rs, cs }
    }
}

/// The extra mask `[batch or 1, 1, q_len, k_len]` (`true` = blocked) as contiguous bytes.
struct Blocked {
    tensor: FlexTensor,
    per_batch: bool,
    q_len: usize,
    k_len: usize,
}

impl Blocked {
    fn of(mask: &Tensor<Flex, 4, Bool>) -> Self {
        let [mb, _, q_len, k_len] = mask.dims();
        let tensor = mask.clone().into_primitive().to_contiguous();
        Self { tensor, per_batch: mb > 1, q_len, k_len }
    }

    /// Query `i`'s row for batch `b`: nonzero where a key is blocked.
    fn row(&self, b: usize, i: usize) -> &[u8] {
        let (start, _) = self.tensor.layout().contiguous_offsets().expect("a contiguous mask");
        let row = (if self.per_batch { b } else { 0 } * self.q_len + i) * self.k_len;
        &self.tensor.storage::<u8>()[start + row..][..self.k_len]
    }
}

/// Scales row `s` (the keys up to `visible`) and blocks what the mask blocks, in place.
#[inline(always)]
fn scale_and_mask(s: &mut [f32], blocked: Option<&[u8]>, scale: f32) {
    match blocked {
        Some(blocked) => {
            for (s, &b) in s.iter_mut().zip(blocked) {
                *s = if b != 0 { MASKED } else { *s * scale };
            }
        }
        None => s.iter_mut().for_each(|s| *s *= scale),
    }
}

/// The queries' visible key count: query `i` sees keys `0..=i + offset`.
fn visible(i: usize, offset: usize, k_len: usize) -> usize {
    (i + offset + 1).min(k_len)
}

/// Softmax of one query row's scores `p` (all `k_len`-or-fewer keys the tile computed) in place, seeing the first
/// `seen` keys minus what `blocked` blocks; returns the row's log-sum-exp.
#[inline(always)]
fn softmax_row(p: &mut [f32], seen: usize, blocked: Option<&[u8]>, scale: f32) -> f32 {
    let (p, future) = p.split_at_mut(seen);
    future.fill(0.0);
    scale_and_mask(p, blocked.map(|m| &m[..seen]), scale);
    let max = max(p);
    exp_shifted(p, max);
    let sum = sum(p);
    let inv = 1.0 / sum;
    p.iter_mut().for_each(|p| *p *= inv);
    max + sum.ln()
}

/// The output `[batch, heads, q_len, d]` and the row log-sum-exp `[batch, heads, q_len]`. k and v may have fewer
/// heads than q (grouped-query attention: query head `h` reads key/value head `h / (heads / kv_heads)`), so they
/// are never repeated. Shapes are checked by [`super::flash_attention::flash_attention`].
///
/// The output is written in `[batch, q_len, heads, d]` order and returned as a view with heads and positions
/// swapped: the attention layer's next step (`swap_dims(1, 2)` then merging the heads) is then free.
pub(super) fn forward(
    q: &Tensor<Flex, 4>,
    k: &Tensor<Flex, 4>,
    v: &Tensor<Flex, 4>,
    mask: Option<&Tensor<Flex, 4, Bool>>,
    scale: f64,
    block: usize,
) -> (Tensor<Flex, 4>, Tensor<Flex, 3>) {
    let [batch, heads, q_len, d] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    let (groups, offset) = (heads / kv_heads, k_len - q_len);
    let (qh, kh, vh) = (Heads::of(q), Heads::of(k), Heads::of(v));
    let blocked = mask.map(Blocked::of);
    let scale = scale as f32;
    let mut out = vec![0.0f32; batch * q_len * heads * d];
    let mut lse = vec![0.0f32; batch * q_len * heads];
    let row = heads * d;
    if row > 0 && q_len > 0 {
        // One task per (batch, query tile), every head: its rows of the [batch, q_len, heads, d] output (and of the
        // [batch, q_len, heads] log-sum-exp) are one contiguous block.
        let batches = out.par_chunks_mut(q_len * row).zip(lse.par_chunks_mut(q_len * heads)).enumerate();
        let tiles = batches.flat_map(|(b, (out, lse))| {
            out.par_chunks_mut(block * row).zip(lse.par_chunks_mut(block * heads)).enumerate().map(move |t| (b, t))
        });
        tiles.for_each(|(b, (tile, (out, lse)))| {
            let (qs, rows) = (tile * block, lse.len() / heads);
            let keys = visible(qs + rows - 1, offset, k_len);
            let mut p = vec![0.0f32; rows * keys];
            for h in 0..heads {
                let kv = h / groups;
                matmul(
                    &mut p,
                    keys,
                    (rows, keys, d),
                    qh.head(b, h).rows_from(qs),
                    kh.head(b, kv).transposed(),
                    false,
                    Threads::Caller,
                );
                with_simd(
                    #[inline(always)]
                    || {
                        for (i, p) in p.chunks_mut(keys).enumerate() {
                            let mask_row = blocked.as_ref().map(|m| m.row(b, qs + i));
                            lse[i * heads + h] = softmax_row(p, visible(qs + i, offset, k_len), mask_row, scale);
                        }
                    },
                );
                matmul(
                    &mut out[h * d..],
                    row,
                    (rows, d, keys),
                    Mat::dense(&p, keys),
                    vh.head(b, kv),
                    false,
                    Threads::Caller,
                );
            }
        });
    }
    let out = tensor(out, [batch, q_len, heads, d]).swap_dims(1, 2);
    (out, tensor(lse, [batch, q_len, heads]).swap_dims(1, 2))
}

/// Gradients of q (`[batch, heads, q_len, d]`), k and v (`[batch, kv_heads, k_len, d]`), recomputing the
/// probabilities tile by tile; f32 inputs in any layout, contiguous outputs.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    q: &Tensor<Flex, 4>,
    k: &Tensor<Flex, 4>,
    v: &Tensor<Flex, 4>,
    out: &Tensor<Flex, 4>,
    lse: &Tensor<Flex, 3>,
    grad_out: &Tensor<Flex, 4>,
    mask: Option<&Tensor<Flex, 4, Bool>>,
    scale: f64,
    block: usize,
) -> (Tensor<Flex, 4>, Tensor<Flex, 4>, Tensor<Flex, 4>) {
    let [batch, heads, q_len, d] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    let (groups, offset) = (heads / kv_heads, k_len - q_len);
    let (qh, kh, vh, oh, doh) = (Heads::of(q), Heads::of(k), Heads::of(v), Heads::of(out), Heads::of(grad_out));
    // The log-sum-exp as a [batch · heads, q_len] matrix, read where it lies.
    let lse = Heads::of(&lse.clone().unsqueeze_dim::<4>(3));
    let blocked = mask.map(Blocked::of);
    let scale = scale as f32;
    let mut dq = vec![0.0f32; batch * heads * q_len * d];
    let mut dk = vec![0.0f32; batch * kv_heads * k_len * d];
    let mut dv = vec![0.0f32; batch * kv_heads * k_len * d];
    if q_len * d > 0 {
        // One task per (batch, key/value head): it owns that head's dK and dV, which every query tile of its group's
        // query heads adds into, and the group's dQ (adjacent heads, so one contiguous block).
        let groups_of_heads =
            dq.par_chunks_mut(groups * q_len * d).zip(dk.par_chunks_mut(k_len * d)).zip(dv.par_chunks_mut(k_len * d));
        groups_of_heads.enumerate().for_each(|(task, ((dq, dk), dv))| {
            // One probability tile and one score-gradient tile, reused by every query tile of the task.
            let tile = block.min(q_len) * k_len;
            let (mut p_tile, mut ds_tile) = (vec![0.0f32; tile], vec![0.0f32; tile]);
            let (b, kv) = (task / kv_heads, task % kv_heads);
            let (km, vm) = (kh.head(b, kv), vh.head(b, kv));
            for (g, dq) in dq.chunks_mut(q_len * d).enumerate() {
                let h = kv * groups + g;
                let (qm, om, dom, lse) = (qh.head(b, h), oh.head(b, h), doh.head(b, h), lse.head(b, h));
                for qs in (0..q_len).step_by(block) {
                    let rows = block.min(q_len - qs);
                    let keys = visible(qs + rows - 1, offset, k_len);
                    let (qt, dot) = (qm.rows_from(qs), dom.rows_from(qs));
                    let p = &mut p_tile[..rows * keys];
                    matmul(p, keys, (rows, keys, d), qt, km.transposed(), false, Threads::Caller);
                    with_simd(
                        #[inline(always)]
                        || {
                            for (i, p) in p.chunks_mut(keys).enumerate() {
                                let seen = visible(qs + i, offset, k_len);
                                let (p, future) = p.split_at_mut(seen);
                                future.fill(0.0);
                                scale_and_mask(p, blocked.as_ref().map(|m| &m.row(b, qs + i)[..seen]), scale);
                                exp_shifted(p, lse.at(qs + i, 0));
                            }
                        },
                    );
                    matmul(dv, d, (keys, d, rows), Mat::dense(p, keys).transposed(), dot, true, Threads::Caller);
                    let ds = &mut ds_tile[..rows * keys];
                    matmul(ds, keys, (rows, keys, d), dot, vm.transposed(), false, Threads::Caller);
                    with_simd(
                        #[inline(always)]
                        || {
                            for (i, (ds, p)) in ds.chunks_mut(keys).zip(p.chunks(keys)).enumerate() {
                                // D_i = Σ_j P_ij dP_ij = dO_i · O_i: the softmax Jacobian's row term.
                                let delta: f32 = dom.row(qs + i, d).zip(om.row(qs + i, d)).map(|(g, o)| g * o).sum();
                                for (ds, &p) in ds.iter_mut().zip(p) {
                                    *ds = p * (*ds - delta) * scale;
                                }
                            }
                        },
                    );
                    matmul(&mut dq[qs * d..], d, (rows, d, keys), Mat::dense(ds, keys), km, false, Threads::Caller);
                    matmul(dk, d, (keys, d, rows), Mat::dense(ds, keys).transposed(), qt, true, Threads::Caller);
                }
            }
        });
    }
    let (q_shape, k_shape) = ([batch, heads, q_len, d], [batch, kv_heads, k_len, d]);
    (tensor(dq, q_shape), tensor(dk, k_shape), tensor(dv, k_shape))
}
