//! The lm_head fused with the cross-entropy loss, over chunks of rows (Unsloth's fused linear cross-entropy).
//!
//! The plain loss computes `logits = hidden · headᵀ` for every scored position, `[rows × vocab]` at once, upcasts
//! them to f32, and under autodiff keeps them (and the log-softmax) alive until the backward pass. With a 128k
//! vocabulary and 16k tokens per step that is 8 GiB of f32 per copy, usually the single largest activation of a
//! finetuning step. Here the rows are processed `chunk` at a time:
//!
//! - forward, per chunk: `logits = hidden_chunk · headᵀ` (f32), `lse = m + ln Σ exp(logits − m)` with `m` the
//!   row maximum, `loss_row = lse − logits[target]` (0 where the target is [`IGNORE_INDEX`]); the chunk's sum is
//!   added to the total. Only `lse` (one f32 per row) outlives the chunk.
//! - backward, per chunk, with `g` the incoming gradient of the summed loss: the logits are recomputed and
//!   `dlogits = (exp(logits − lse) − onehot(target)) · g` (zero rows for ignored targets), then
//!   `dhidden_chunk = dlogits · head` and `dhead += dlogitsᵀ · hidden_chunk`. The last product is skipped when
//!   the head is not tracked (LoRA/QLoRA: the tied or untied head is frozen), which also saves its `[vocab × h]`
//!   gradient buffer.
//!
//! So neither pass holds more than one `[chunk × vocab]` block of logits (plus its probabilities) at a time, and
//! the result is exact: the same sum of per-row cross-entropies, only with a different summation order. Chunks
//! whose targets are all ignored (prompt-only stretches under completion-only loss) are skipped in both passes.
//!
//! Logits, `lse` and the loss are f32 whatever the inputs' dtype (bf16/f16 inputs are cast up, as transformers
//! upcasts logits before the loss); each gradient is returned in its input's dtype.
//!
//! The op is [`Kernels::linear_cross_entropy`]: under `Autodiff` the node defined here, whose backward calls the
//! inner backend's [`Kernels::linear_cross_entropy_backward`]; the chunked versions below are the trait's
//! defaults. The model's causal-LM loss through it is `crate::model::fused_loss`.

use super::Kernels;
use super::custom_op::{float, primitive};
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};

use super::{float_dtype, to_dtype};

/// The label of a position that is not scored (transformers' and TRL's `-100`).
pub const IGNORE_INDEX: i64 = -100;

/// Summed cross-entropy of predicting `targets` from `hidden · headᵀ`, and the number of scored rows, without ever
/// keeping the [rows × vocab] logits: rows are processed `chunk` at a time. hidden: [rows, h] (any float dtype;
/// logits and log-sum-exp computed in f32), head: [vocab, h] (HF layout, may be frozen or trainable), targets: host
/// Vec<i64> of length rows where `IGNORE_INDEX` (-100, crate::data::IGNORE_INDEX) means not scored.
///
/// # Panics
/// If `chunk` is 0, the shapes disagree (`targets.len()` ≠ rows, or different hidden sizes), or a target is
/// neither [`IGNORE_INDEX`] nor a token id below the vocabulary size.
pub fn fused_linear_cross_entropy<B: Kernels>(
    hidden: Tensor<B, 2>,
    head: Tensor<B, 2>,
    targets: &[i64],
    chunk: usize,
) -> (Tensor<B, 1>, usize) {
    check_inputs(&hidden, &head, targets, chunk);
    let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    (B::linear_cross_entropy(hidden, head, targets, chunk), count)
}

fn check_inputs<B: Backend>(hidden: &Tensor<B, 2>, head: &Tensor<B, 2>, targets: &[i64], chunk: usize) {
    let [rows, h] = hidden.dims();
    let [vocab, head_h] = head.dims();
    assert!(chunk > 0, "fused loss: chunk size must be positive");
    assert_eq!(head_h, h, "fused loss: head [{vocab}, {head_h}] does not match hidden size {h}");
    assert_eq!(targets.len(), rows, "fused loss: {} targets for {rows} rows", targets.len());
    if let Some(bad) = targets.iter().find(|&&t| t != IGNORE_INDEX && !(0..vocab as i64).contains(&t)) {
        panic!("fused loss: label {bad} is outside the vocabulary (size {vocab}) and is not {IGNORE_INDEX}");
    }
}

/// The forward on the inner backend, registered as one node whose backward is [`chunked_backward`].
pub(super) fn autodiff_fused<I: Kernels, C: CheckpointStrategy>(
    hidden: Tensor<Autodiff<I, C>, 2>,
    head: Tensor<Autodiff<I, C>, 2>,
    targets: &[i64],
    chunk: usize,
) -> Tensor<Autodiff<I, C>, 1> {
    let (hidden, head) = (hidden.into_primitive().tensor(), head.into_primitive().tensor());
    let (ih, iw) = (float::<I, 2>(hidden.primitive.clone()), float::<I, 2>(head.primitive.clone()));
    let nodes = [hidden.node.clone(), head.node.clone()];
    let loss = match <FusedBackward as Backward<I, 2>>::prepare::<C>(FusedBackward, nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (loss, lse) = I::linear_cross_entropy_forward(&ih, &iw, targets, chunk);
            let state = FusedState::<I> {
                hidden: hidden.primitive,
                head: head.primitive,
                lse: primitive(lse),
                targets: Arc::from(targets),
                chunk,
            };
            prep.finish(state, primitive(loss))
        }
        OpsKind::UnTracked(prep) => prep.finish(primitive(I::linear_cross_entropy(ih, iw, targets, chunk))),
    };
    float(loss)
}

#[derive(Debug)]
struct FusedBackward;

/// What the node keeps for its backward: the inputs (alive anyway), one f32 log-sum-exp per row and the host
/// targets; never a block of logits.
#[derive(Debug, Clone)]
struct FusedState<B: Backend> {
    hidden: B::FloatTensorPrimitive,
    head: B::FloatTensorPrimitive,
    /// `[rows]`, f32 (0 for rows of skipped chunks).
    lse: B::FloatTensorPrimitive,
    targets: Arc<[i64]>,
    chunk: usize,
}

impl<B: Kernels> Backward<B, 2> for FusedBackward {
    type State = FusedState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_loss = float::<B, 1>(grads.consume::<B>(&ops.node));
        let s = ops.state;
        let [parent_hidden, parent_head] = ops.parents;
        let (dhidden, dhead) = B::linear_cross_entropy_backward(
            &float(s.hidden),
            &float(s.head),
            &float(s.lse),
            &s.targets,
            s.chunk,
            grad_loss,
            (parent_hidden.is_some(), parent_head.is_some()),
        );
        for (parent, grad) in [(parent_hidden, dhidden), (parent_head, dhead)] {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<B>(node.id, primitive(grad));
            }
        }
    }
}

/// One chunk of rows: its bounds, its targets as `[c, 1]` indices (ignored rows point at token 0) and its
/// `[c, 1]` f32 mask of scored rows; `None` for the indices and mask when no row of the chunk is scored.
struct Chunk<B: Backend> {
    start: usize,
    end: usize,
    scored: Option<(Tensor<B, 2, Int>, Tensor<B, 2>)>,
}

fn chunks<'a, B: Backend>(
    targets: &'a [i64],
    chunk: usize,
    device: &'a B::Device,
) -> impl Iterator<Item = Chunk<B>> + 'a {
    (0..targets.len()).step_by(chunk).map(move |start| {
        let end = (start + chunk).min(targets.len());
        let part = &targets[start..end];
        let scored = part.iter().any(|&t| t != IGNORE_INDEX).then(|| {
            let index: Vec<i64> = part.iter().map(|&t| if t == IGNORE_INDEX { 0 } else { t }).collect();
            let keep: Vec<f32> = part.iter().map(|&t| if t == IGNORE_INDEX { 0.0 } else { 1.0 }).collect();
            let c = end - start;
            (
                Tensor::<B, 2, Int>::from_data(TensorData::new(index, [c, 1]), device),
                Tensor::<B, 2>::from_data(TensorData::new(keep, [c, 1]), (device, DType::F32)),
            )
        });
        Chunk { start, end, scored }
    })
}

fn f32_rows<B: Backend>(t: &Tensor<B, 2>, start: usize, end: usize) -> Tensor<B, 2> {
    to_dtype(t.clone().narrow(0, start, end - start), FloatDType::F32)
}

/// The chunked forward on any backend (differentiable by burn itself when `B` is an autodiff backend, which then
/// keeps every chunk's logits): the [`Kernels::linear_cross_entropy_forward`] default, public so that tests can
/// hold a backend's kernel against it. Returns the summed loss `[1]` and the row log-sum-exp `[rows]`, both f32.
pub fn chunked_forward<B: Backend>(
    hidden: &Tensor<B, 2>,
    head: &Tensor<B, 2>,
    targets: &[i64],
    chunk: usize,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [rows, _] = hidden.dims();
    let device = hidden.device();
    let f32_opts = (&device, DType::F32);
    let head_t = to_dtype(head.clone(), FloatDType::F32).transpose();
    let mut loss = Tensor::<B, 1>::zeros([1], f32_opts);
    let mut lses = Vec::new();
    for Chunk { start, end, scored } in chunks::<B>(targets, chunk, &device) {
        let Some((index, keep)) = scored else {
            lses.push(Tensor::zeros([end - start], f32_opts));
            continue;
        };
        let logits = f32_rows(hidden, start, end).matmul(head_t.clone());
        // The shift by the row maximum only guards exp against overflow; it cancels exactly, so it needs no
        // gradient.
        let max = logits.clone().max_dim(1).detach();
        let lse = max.clone() + (logits.clone() - max).exp().sum_dim(1).log();
        let picked = logits.gather(1, index);
        loss = loss + ((lse.clone() - picked) * keep).sum();
        lses.push(lse.squeeze_dim::<1>(1));
    }
    let lse = if rows == 0 { Tensor::zeros([0], f32_opts) } else { Tensor::cat(lses, 0) };
    (loss, lse)
}

/// Gradients of hidden and head (each in its input's dtype; `None` where `want` says the input is not tracked),
/// recomputing each chunk's logits and using `lse` for the softmax: the
/// [`Kernels::linear_cross_entropy_backward`] default.
pub fn chunked_backward<B: Backend>(
    hidden: &Tensor<B, 2>,
    head: &Tensor<B, 2>,
    lse: &Tensor<B, 1>,
    targets: &[i64],
    chunk: usize,
    grad_loss: Tensor<B, 1>,
    (want_hidden, want_head): (bool, bool),
) -> (Option<Tensor<B, 2>>, Option<Tensor<B, 2>>) {
    let [rows, h] = hidden.dims();
    let [vocab, _] = head.dims();
    let device = hidden.device();
    let hidden_dtype = float_dtype(hidden);
    let g = to_dtype(grad_loss, FloatDType::F32).reshape([1, 1]);
    let head_f32 = to_dtype(head.clone(), FloatDType::F32);
    let head_t = head_f32.clone().transpose();
    let mut dhidden = Vec::new();
    let mut dhead = want_head.then(|| Tensor::<B, 2>::zeros([vocab, h], (&device, DType::F32)));
    for Chunk { start, end, scored } in chunks::<B>(targets, chunk, &device) {
        let Some((index, keep)) = scored else {
            if want_hidden {
                dhidden.push(Tensor::zeros([end - start, h], (&device, DType::from(hidden_dtype))));
            }
            continue;
        };
        let hc = f32_rows(hidden, start, end);
        let logits = hc.clone().matmul(head_t.clone());
        let lse_c = lse.clone().narrow(0, start, end - start).unsqueeze_dim::<2>(1);
        // d loss / d logits = (softmax − onehot) · g on scored rows, written over the probabilities.
        let gk = keep * g.clone();
        let dlogits = (logits - lse_c).exp() * gk.clone();
        let dlogits = dlogits.scatter(1, index, gk.neg(), IndexingUpdateOp::Add);
        if want_hidden {
            dhidden.push(to_dtype(dlogits.clone().matmul(head_f32.clone()), hidden_dtype));
        }
        if let Some(acc) = dhead.take() {
            dhead = Some(acc + dlogits.transpose().matmul(hc));
        }
    }
    let dhidden = want_hidden.then(|| {
        if rows == 0 { Tensor::zeros([0, h], (&device, DType::from(hidden_dtype))) } else { Tensor::cat(dhidden, 0) }
    });
    (dhidden, dhead.map(|d| to_dtype(d, float_dtype(head))))
}
