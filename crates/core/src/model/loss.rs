//! The causal language-modelling loss, as transformers' `ForCausalLMLoss` computes it.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::data::IGNORE_INDEX;

/// Summed cross-entropy over scored positions and the number of scored positions, as scalar tensors (for
/// token-weighted means across micro-batches and evaluation batches).
pub fn causal_lm_loss_parts<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [batch, seq, _] = logits.dims();
    // Scored in f32 whatever the compute type, as transformers upcasts logits before the loss.
    let logits = super::compute::to_dtype(logits.narrow(1, 0, seq - 1), burn::tensor::FloatDType::F32);
    let targets = labels.narrow(1, 1, seq - 1);
    let keep = targets.clone().not_equal_elem(IGNORE_INDEX);
    // Ignored positions gather class 0 and are then zeroed, so no index is out of range.
    let safe_targets = targets.mask_fill(keep.clone().bool_not(), 0);
    let log_probs = log_softmax(logits, 2);
    let picked = log_probs.gather(2, safe_targets.reshape([batch, seq - 1, 1])).reshape([batch, seq - 1]);
    let keep = keep.float();
    ((picked * keep.clone()).sum().neg(), keep.sum())
}

/// Mean cross-entropy of predicting `labels[:, t + 1]` from `logits[:, t]` over positions whose label is not
/// [`IGNORE_INDEX`]. `logits` `[batch, seq, vocab]`, `labels` `[batch, seq]`.
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let (sum, count) = causal_lm_loss_parts(logits, labels);
    sum / count.clamp_min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuBackend as B;
    use burn::tensor::TensorData;

    #[test]
    fn uniform_logits_give_log_vocab_and_ignored_positions_do_not_count() {
        let device = Default::default();
        let logits = Tensor::<B, 3>::zeros([1, 4, 8], &device);
        let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 2, -100, 3], [1, 4]), &device);
        let loss: f32 = causal_lm_loss(logits, labels).into_scalar();
        assert!((loss - 8f32.ln()).abs() < 1e-6, "{loss}");
    }
}
