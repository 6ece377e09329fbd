//! The causal-LM loss through the head fused with cross-entropy ([`crate::kernels::cross_entropy`]): the
//! `[batch, seq, vocab]` logits never exist.

use burn::tensor::{Int, Tensor, TensorData};

use super::LlamaModel;
use crate::data::IGNORE_INDEX;
use crate::kernels::Kernels;
use crate::kernels::cross_entropy::fused_linear_cross_entropy;

/// The causal-LM loss through the fused head: the summed cross-entropy and the number of scored positions, equal
/// to [`super::loss::causal_lm_loss_parts`]`(model.logits(hidden), labels)` without the `[batch, seq, vocab]`
/// logits. `hidden` is the final normed hidden states `[batch, seq, h]` ([`LlamaModel::hidden_states`]), `labels`
/// the host labels `[batch · seq]` row-major. Shifted as transformers does: position `t` predicts label `t + 1`,
/// and the last position of each row is not scored. The head is the untied `lm_head.weight` or the tied
/// `embed_tokens`; an untied head with a bias or an adapter (which the fused op does not model) goes through the
/// plain logits instead.
///
/// # Panics
/// If `labels.len()` ≠ batch · seq, `chunk` is 0, or a label is neither [`IGNORE_INDEX`] nor a token id.
pub fn fused_causal_lm_loss<B: Kernels>(
    model: &LlamaModel<B>,
    hidden: Tensor<B, 3>,
    labels: &[i64],
    chunk: usize,
) -> (Tensor<B, 1>, usize) {
    let [batch, seq, h] = hidden.dims();
    assert_eq!(labels.len(), batch * seq, "fused loss: {} labels for a [{batch}, {seq}] batch", labels.len());
    let targets: Vec<i64> =
        (0..batch * seq).map(|i| if (i + 1) % seq == 0 { IGNORE_INDEX } else { labels[i + 1] }).collect();
    let head = match &model.lm_head {
        None => model.embed_tokens.val(),
        Some(linear) if linear.bias.is_none() && linear.adapter.is_none() => linear.weight_value(),
        Some(_) => {
            let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
            let device = hidden.device();
            let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels.to_vec(), [batch, seq]), &device);
            return (super::loss::causal_lm_loss_parts(model.logits(hidden), labels).0, count);
        }
    };
    fused_linear_cross_entropy(hidden.reshape([batch * seq, h]), head, &targets, chunk)
}
