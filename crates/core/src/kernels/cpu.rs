//! The CPU backend's ([`Flex`]) kernels: RMSNorm, SwiGLU and RoPE, forward and backward, as single passes over f32
//! buffers split by rows over rayon's threads.
//!
//! Composed from burn ops each of these is a chain of element-wise tensor ops, each one a full pass over memory
//! with its own output allocation, and RoPE's reads of a head-split (strided) input and broadcast tables go
//! through burn's strided iterator. Here each is one pass that reads its inputs where they lie (RoPE reads the
//! `[batch, seq, heads, head_dim]` projection through its strides) and writes one contiguous output.
//!
//! Only f32 takes these paths; other float types (mixed precision) keep the composed ops, which cast exactly as
//! transformers does. Reductions run in f32 in row order, so results differ from the composed ops only by
//! summation order (within each op's test tolerance).

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use super::vector_math::{sigmoid, with_simd};

/// Rows handed to one rayon task at a time: big enough that scheduling is noise next to the arithmetic.
const MIN_ROWS_PER_TASK: usize = 16;

/// A float tensor's primitive.
pub(super) fn flex<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

/// A float tensor from a contiguous f32 buffer.
pub(super) fn tensor<const D: usize>(values: Vec<f32>, shape: impl Into<Shape>) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(TensorData::new(values, shape.into()))))
}

/// Whether the kernels take tensors of these types: f32 only.
pub(super) fn takes(dtypes: &[DType]) -> bool {
    dtypes.iter().all(|d| *d == DType::F32)
}

/// The tensor in row-major order: shared when already contiguous, copied otherwise.
pub(super) fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// A contiguous f32 tensor's values.
pub(super) fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------------------------------

/// `(x · r · w, r)` with `r = 1 / sqrt(mean(x², last dim) + eps)` per row (f32 tensors: [`takes`]).
pub(super) fn rms_norm_forward<const D: usize>(
    x: Tensor<Flex, D>,
    weight: Tensor<Flex, 1>,
    eps: f64,
) -> (Tensor<Flex, D>, Tensor<Flex, D>) {
    let dims = x.dims();
    let h = dims[D - 1];
    let (x, w) = (contiguous(&flex(x)), contiguous(&flex(weight)));
    let (xs, ws) = (values(&x), values(&w));
    let rows = xs.len() / h.max(1);
    let mut y = vec![0.0f32; xs.len()];
    let mut inv = vec![0.0f32; rows];
    let (eps, n) = (eps as f32, h as f32);
    y.par_chunks_mut(h).zip(inv.par_iter_mut()).zip(xs.par_chunks(h)).with_min_len(MIN_ROWS_PER_TASK).for_each(
        |((y, inv), x)| {
            with_simd(
                #[inline(always)]
                || {
                    // Squares summed in f64, then rounded once: closer to the exact mean than any f32 order, so the
                    // result stays within an ulp or two of burn's SIMD-ordered f32 sum whatever the row length.
                    let mean_square = (x.iter().map(|&v| f64::from(v * v)).sum::<f64>() as f32) / n;
                    let r = 1.0 / (mean_square + eps).sqrt();
                    *inv = r;
                    for ((y, &x), &w) in y.iter_mut().zip(x).zip(ws) {
                        *y = x * r * w;
                    }
                },
            )
        },
    );
    let mut inv_dims = dims;
    inv_dims[D - 1] = 1;
    (tensor(y, Shape::from(dims.to_vec())), tensor(inv, Shape::from(inv_dims.to_vec())))
}

/// `dx = r · (g − n · mean(g ∘ n))` and `dw = Σ_rows dy ∘ n`, with `n = x · r` and `g = dy ∘ w`; each only when
/// wanted (f32 tensors: [`takes`]).
#[allow(clippy::type_complexity)]
pub(super) fn rms_norm_backward<const D: usize>(
    x: Tensor<Flex, D>,
    weight: Tensor<Flex, 1>,
    inv_rms: Tensor<Flex, D>,
    grad_out: Tensor<Flex, D>,
    (want_x, want_weight): (bool, bool),
) -> (Option<Tensor<Flex, D>>, Option<Tensor<Flex, 1>>) {
    let dims = x.dims();
    let h = dims[D - 1];
    let (x, w, inv, dy) =
        (contiguous(&flex(x)), contiguous(&flex(weight)), contiguous(&flex(inv_rms)), contiguous(&flex(grad_out)));
    let (xs, ws, invs, dys) = (values(&x), values(&w), values(&inv), values(&dy));
    let dx = want_x.then(|| {
        let mut dx = vec![0.0f32; xs.len()];
        dx.par_chunks_mut(h)
            .zip(xs.par_chunks(h).zip(dys.par_chunks(h)).zip(invs.par_iter()))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(dx, ((x, dy), &r))| {
                with_simd(
                    #[inline(always)]
                    || {
                        let proj =
                            x.iter().zip(dy).zip(ws).map(|((x, dy), w)| dy * w * (x * r)).sum::<f32>() / h as f32;
                        for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(ws) {
                            *dx = (dy * w - x * r * proj) * r;
                        }
                    },
                )
            });
        tensor::<D>(dx, Shape::from(dims.to_vec()))
    });
    let dw = want_weight.then(|| {
        // Per-task partial sums over rows, then one sum of the partials.
        let partial = xs
            .par_chunks(h * MIN_ROWS_PER_TASK)
            .zip(dys.par_chunks(h * MIN_ROWS_PER_TASK))
            .zip(invs.par_chunks(MIN_ROWS_PER_TASK))
            .fold(
                || vec![0.0f32; h],
                |mut acc, ((x, dy), inv)| {
                    for ((x, dy), &r) in x.chunks(h).zip(dy.chunks(h)).zip(inv) {
                        for ((acc, &x), &dy) in acc.iter_mut().zip(x).zip(dy) {
                            *acc += dy * (x * r);
                        }
                    }
                    acc
                },
            )
            .reduce(
                || vec![0.0f32; h],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        tensor::<1>(partial, Shape::from(vec![h]))
    });
    (dx, dw)
}

// ---------------------------------------------------------------------------------------------------------------
// SwiGLU
// ---------------------------------------------------------------------------------------------------------------

/// `silu(gate) · up` (f32 tensors: [`takes`]).
pub(super) fn swiglu<const D: usize>(gate: Tensor<Flex, D>, up: Tensor<Flex, D>) -> Tensor<Flex, D> {
    let dims = gate.dims();
    let (g, u) = (contiguous(&flex(gate)), contiguous(&flex(up)));
    let (gs, us) = (values(&g), values(&u));
    let mut y = vec![0.0f32; gs.len()];
    let chunk = dims[D - 1].max(1) * MIN_ROWS_PER_TASK;
    y.par_chunks_mut(chunk).zip(gs.par_chunks(chunk).zip(us.par_chunks(chunk))).for_each(|(y, (g, u))| {
        with_simd(
            #[inline(always)]
            || {
                for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                    *y = g * sigmoid(g) * u;
                }
            },
        )
    });
    tensor(y, Shape::from(dims.to_vec()))
}

/// `dgate = dy · up · s · (1 + gate · (1 − s))` and `dup = dy · gate · s` with `s = sigmoid(gate)`, each only when
/// wanted (f32 tensors: [`takes`]).
#[allow(clippy::type_complexity)]
pub(super) fn swiglu_backward<const D: usize>(
    gate: Tensor<Flex, D>,
    up: Tensor<Flex, D>,
    grad_out: Tensor<Flex, D>,
    (want_gate, want_up): (bool, bool),
) -> (Option<Tensor<Flex, D>>, Option<Tensor<Flex, D>>) {
    let dims = gate.dims();
    let (g, u, dy) = (contiguous(&flex(gate)), contiguous(&flex(up)), contiguous(&flex(grad_out)));
    let (gs, us, dys) = (values(&g), values(&u), values(&dy));
    let len = gs.len();
    let mut dgate = if want_gate { vec![0.0f32; len] } else { Vec::new() };
    let mut dup = if want_up { vec![0.0f32; len] } else { Vec::new() };
    let chunk = dims[D - 1].max(1) * MIN_ROWS_PER_TASK;
    let inputs = gs.par_chunks(chunk).zip(us.par_chunks(chunk)).zip(dys.par_chunks(chunk));
    // An unwanted gradient's buffer is empty: its chunks are empty slices, which the zips below stop at, so the
    // loops run over the wanted one's chunks only.
    let per_chunk = |(dgate, dup): (&mut [f32], &mut [f32]), ((g, u), dy): ((&[f32], &[f32]), &[f32])| {
        // Branch-free loops, one per wanted gradient, so each vectorises.
        with_simd(
            #[inline(always)]
            || {
                for (((d, &g), &u), &dy) in dgate.iter_mut().zip(g).zip(u).zip(dy) {
                    let s = sigmoid(g);
                    *d = dy * u * (s * (1.0 + g * (1.0 - s)));
                }
                for ((d, &g), &dy) in dup.iter_mut().zip(g).zip(dy) {
                    *d = dy * g * sigmoid(g);
                }
            },
        )
    };
    match (want_gate, want_up) {
        (true, true) => dgate
            .par_chunks_mut(chunk)
            .zip(dup.par_chunks_mut(chunk))
            .zip(inputs)
            .for_each(|((a, b), inputs)| per_chunk((a, b), inputs)),
        (true, false) => {
            dgate.par_chunks_mut(chunk).zip(inputs).for_each(|(a, inputs)| per_chunk((a, &mut []), inputs))
        }
        (false, true) => dup.par_chunks_mut(chunk).zip(inputs).for_each(|(b, inputs)| per_chunk((&mut [], b), inputs)),
        (false, false) => {}
    }
    let shape = || Shape::from(dims.to_vec());
    (want_gate.then(|| tensor(dgate, shape())), want_up.then(|| tensor(dup, shape())))
}

// ---------------------------------------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------------------------------------

/// Element offsets of a 4-d tensor's rows (its last dimension), if that dimension is contiguous: `offset(i, j, k)`
/// is where row `[i, j, k, ..]` starts in the storage.
struct Rows4 {
    start: usize,
    strides: [isize; 3],
}

impl Rows4 {
    fn of(t: &FlexTensor) -> Option<Self> {
        let layout = t.layout();
        let s = layout.strides();
        (s.len() == 4 && (s[3] == 1 || layout.shape()[3] == 1) && s[..3].iter().all(|&s| s >= 0))
            .then(|| Self { start: layout.start_offset(), strides: [s[0], s[1], s[2]] })
    }

    fn offset(&self, i: usize, j: usize, k: usize) -> usize {
        let [a, b, c] = self.strides;
        (self.start as isize + i as isize * a + j as isize * b + k as isize * c) as usize
    }
}

/// Which rotation a pass applies: the forward one, or its inverse (the backward's).
#[derive(Clone, Copy)]
enum Rotation {
    Forward,
    Inverse,
}

/// The rotation of `x` `[batch, heads, seq, head_dim]` by tables `[batch or 1, 1, seq, head_dim]` (rotate-half
/// layout), written contiguous. Forward: `y₁ = x₁c₁ − x₂s₁`, `y₂ = x₂c₂ + x₁s₂`; inverse (`dx` from `dy`):
/// `x₁ = y₁c₁ + y₂s₂`, `x₂ = y₂c₂ − y₁s₁`. For f32 tensors ([`takes`]) whose shapes [`rope_takes`] accepts.
fn rotate(x: Tensor<Flex, 4>, cos: &Tensor<Flex, 4>, sin: &Tensor<Flex, 4>, rotation: Rotation) -> Tensor<Flex, 4> {
    let [batch, heads, seq, d] = x.dims();
    let tb = cos.dims()[0];
    let x = flex(x);
    let (x, rows) = match Rows4::of(&x) {
        Some(rows) => (x, rows),
        None => {
            let x = contiguous(&x);
            let rows = Rows4::of(&x).expect("a contiguous tensor has contiguous rows");
            (x, rows)
        }
    };
    let xs: &[f32] = x.storage();
    let (cos, sin) = (contiguous(&flex(cos.clone())), contiguous(&flex(sin.clone())));
    let (cs, ss) = (values(&cos), values(&sin));
    let half = d / 2;
    let mut y = vec![0.0f32; batch * heads * seq * d];
    y.par_chunks_mut(d).enumerate().with_min_len(MIN_ROWS_PER_TASK * 4).for_each(|(row, y)| {
        let (k, j, i) = (row % seq, (row / seq) % heads, row / (seq * heads));
        let x = &xs[rows.offset(i, j, k)..][..d];
        let table = (if tb == 1 { 0 } else { i } * seq + k) * d;
        let (c, s) = (&cs[table..table + d], &ss[table..table + d]);
        let (x1, x2) = x.split_at(half);
        let (y1, y2) = y.split_at_mut(half);
        match rotation {
            Rotation::Forward => {
                for t in 0..half {
                    y1[t] = x1[t] * c[t] - x2[t] * s[t];
                    y2[t] = x2[t] * c[half + t] + x1[t] * s[half + t];
                }
            }
            Rotation::Inverse => {
                for t in 0..half {
                    y1[t] = x1[t] * c[t] + x2[t] * s[half + t];
                    y2[t] = x2[t] * c[half + t] - x1[t] * s[t];
                }
            }
        }
    });
    tensor(y, Shape::from(vec![batch, heads, seq, d]))
}

/// Whether the rotation kernels take x `[batch, heads, seq, head_dim]` with these tables: f32, tables
/// `[batch or 1, 1, seq, head_dim]`, an even head dimension.
pub(super) fn rope_takes(x: &Tensor<Flex, 4>, cos: &Tensor<Flex, 4>, sin: &Tensor<Flex, 4>) -> bool {
    let [batch, _, seq, d] = x.dims();
    let [tb, th, ts, td] = cos.dims();
    let tables_fit = (tb == batch || tb == 1) && th == 1 && ts == seq && td == d && sin.dims() == cos.dims();
    tables_fit && d % 2 == 0 && takes(&[x.dtype(), cos.dtype(), sin.dtype()])
}

/// `x · cos + rotate_half(x) · sin` ([`rope_takes`]).
pub(super) fn rope(x: Tensor<Flex, 4>, cos: &Tensor<Flex, 4>, sin: &Tensor<Flex, 4>) -> Tensor<Flex, 4> {
    rotate(x, cos, sin, Rotation::Forward)
}

/// `dy · cos − rotate_half(dy · sin)`, the inverse rotation ([`rope_takes`]).
pub(super) fn rope_backward(
    grad_out: Tensor<Flex, 4>,
    cos: &Tensor<Flex, 4>,
    sin: &Tensor<Flex, 4>,
) -> Tensor<Flex, 4> {
    rotate(grad_out, cos, sin, Rotation::Inverse)
}
