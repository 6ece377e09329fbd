//! The CPU backend's ([`Flex`]) head fused with cross-entropy, forward and backward, over f32 buffers.
//!
//! The same chunked algorithm as the composed default ([`super::cross_entropy`]): `chunk` rows at a time, the
//! logits `hidden · headᵀ` of one chunk exist at once, only the row log-sum-exp outlives it. Composed, each chunk
//! is a dozen tensor ops (a cast, max, subtract, libm `exp` per logit, sum, log, gather, scatter, ...), each a pass
//! over the `[chunk × vocab]` block with its own allocation. Here each chunk is one GEMM for the logits (gemm
//! splits it over the threads), one pass per row over them (vectorised exponential, [`super::vector_math`]), and
//! in backward the two GEMMs of the gradients, reading hidden and head where they lie. One logits buffer serves
//! every chunk.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::cpu::{contiguous, flex, tensor, values};
use super::cpu_gemm::{Mat, Threads, matmul, matrix, readable};
use super::cross_entropy::IGNORE_INDEX;
use super::vector_math::{exp_shifted, max, sum, with_simd};

/// Rows of one chunk handed to a rayon task for the per-row passes.
const ROWS_PER_TASK: usize = 8;

fn flex2(t: &Tensor<Flex, 2>) -> FlexTensor {
    readable(flex(t.clone()))
}

/// The chunks of `rows`: `start..end` and whether any of its targets is scored.
fn chunks(targets: &[i64], chunk: usize) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
    (0..targets.len()).step_by(chunk).map(move |start| {
        let end = (start + chunk).min(targets.len());
        (start, end, targets[start..end].iter().any(|&t| t != IGNORE_INDEX))
    })
}

/// The summed loss `[1]` and the row log-sum-exp `[rows]` (0 for ignored rows); f32 inputs, checked by
/// [`super::cross_entropy::fused_linear_cross_entropy`].
pub(super) fn forward(
    hidden: &Tensor<Flex, 2>,
    head: &Tensor<Flex, 2>,
    targets: &[i64],
    chunk: usize,
) -> (Tensor<Flex, 1>, Tensor<Flex, 1>) {
    let ([rows, h], [vocab, _]) = (hidden.dims(), head.dims());
    let (hidden, head) = (flex2(hidden), flex2(head));
    let (hm, wm) = (matrix(&hidden), matrix(&head));
    let mut lse = vec![0.0f32; rows];
    let mut loss = 0.0f64;
    let mut logits = vec![0.0f32; chunk.min(rows) * vocab];
    for (start, end, scored) in chunks(targets, chunk) {
        if !scored {
            continue;
        }
        let (c, logits) = (end - start, &mut logits[..(end - start) * vocab]);
        matmul(logits, vocab, (c, vocab, h), hm.rows_from(start), wm.transposed(), false, Threads::All);
        let per_row = logits.par_chunks_mut(vocab).zip(lse[start..end].par_iter_mut()).zip(&targets[start..end]);
        loss += per_row
            .with_min_len(ROWS_PER_TASK)
            .map(|((logits, lse), &target)| {
                if target == IGNORE_INDEX {
                    return 0.0;
                }
                let picked = logits[target as usize];
                *lse = with_simd(
                    #[inline(always)]
                    || {
                        let max = max(logits);
                        exp_shifted(logits, max);
                        max + sum(logits).ln()
                    },
                );
                f64::from(*lse - picked)
            })
            .sum::<f64>();
    }
    (tensor(vec![loss as f32], [1]), tensor(lse, [rows]))
}

/// Gradients of hidden and head (`None` where `want` says the input is not tracked), recomputing each chunk's
/// logits: `dlogits = (softmax − onehot(target)) · g` on scored rows, `dhidden = dlogits · head`,
/// `dhead += dlogitsᵀ · hidden`.
#[allow(clippy::type_complexity)]
pub(super) fn backward(
    hidden: &Tensor<Flex, 2>,
    head: &Tensor<Flex, 2>,
    lse: &Tensor<Flex, 1>,
    targets: &[i64],
    chunk: usize,
    grad_loss: &Tensor<Flex, 1>,
    (want_hidden, want_head): (bool, bool),
) -> (Option<Tensor<Flex, 2>>, Option<Tensor<Flex, 2>>) {
    let ([rows, h], [vocab, _]) = (hidden.dims(), head.dims());
    let (hidden, head) = (flex2(hidden), flex2(head));
    let (hm, wm) = (matrix(&hidden), matrix(&head));
    let (lse, grad_loss) = (contiguous(&flex(lse.clone())), contiguous(&flex(grad_loss.clone())));
    let (lse, g) = (values(&lse), values(&grad_loss)[0]);
    let mut dhidden = if want_hidden { vec![0.0f32; rows * h] } else { Vec::new() };
    let mut dhead = if want_head { vec![0.0f32; vocab * h] } else { Vec::new() };
    let mut dlogits = vec![0.0f32; chunk.min(rows) * vocab];
    for (start, end, scored) in chunks(targets, chunk) {
        if !scored {
            continue;
        }
        let (c, dlogits) = (end - start, &mut dlogits[..(end - start) * vocab]);
        matmul(dlogits, vocab, (c, vocab, h), hm.rows_from(start), wm.transposed(), false, Threads::All);
        let per_row = dlogits.par_chunks_mut(vocab).zip(&lse[start..end]).zip(&targets[start..end]);
        per_row.with_min_len(ROWS_PER_TASK).for_each(|((dlogits, &lse), &target)| {
            if target == IGNORE_INDEX {
                dlogits.fill(0.0);
                return;
            }
            with_simd(
                #[inline(always)]
                || {
                    exp_shifted(dlogits, lse);
                    dlogits.iter_mut().for_each(|p| *p *= g);
                },
            );
            dlogits[target as usize] -= g;
        });
        let dl = Mat::dense(dlogits, vocab);
        if want_hidden {
            matmul(&mut dhidden[start * h..], h, (c, h, vocab), dl, wm, false, Threads::All);
        }
        if want_head {
            matmul(&mut dhead, h, (vocab, h, c), dl.transposed(), hm.rows_from(start), true, Threads::All);
        }
    }
    (want_hidden.then(|| tensor(dhidden, [rows, h])), want_head.then(|| tensor(dhead, [vocab, h])))
}
