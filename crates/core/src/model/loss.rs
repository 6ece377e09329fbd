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

/// TRL's SFT token statistics of one batch, from `logits` `[batch, seq, vocab]` predicting `labels[:, t + 1]` at
/// `logits[:, t]`, over the scored positions: how many are predicted right by the top logit, and the sum of the
/// predicted distributions' entropies (nats). Computed without gradients, in f32.
pub fn token_statistics<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [batch, seq, _] = logits.dims();
    let logits = super::compute::to_dtype(logits.detach().narrow(1, 0, seq - 1), burn::tensor::FloatDType::F32);
    let targets = labels.narrow(1, 1, seq - 1);
    let keep = targets.clone().not_equal_elem(IGNORE_INDEX).float();
    let top1 = logits.clone().argmax(2).reshape([batch, seq - 1]);
    let correct = top1.equal(targets).float() * keep.clone();
    let log_probs = log_softmax(logits, 2);
    let entropy = (log_probs.clone().exp() * log_probs).sum_dim(2).reshape([batch, seq - 1]).neg();
    (correct.sum(), (entropy * keep).sum())
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

    #[test]
    fn token_statistics_count_top1_hits_and_sum_entropies_over_scored_positions() {
        let device = Default::default();
        let logits = vec![2.0f32, 0.0, 0.0, 1.0, 5.0, 5.0];
        let logits = Tensor::<B, 3>::from_data(TensorData::new(logits, [1, 3, 2]), &device);
        // Position 0 predicts label 0 (hit), position 1 predicts label 0 (its top logit is 1: miss).
        let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![7i64, 0, 0], [1, 3]), &device);
        let (correct, entropy) = token_statistics(logits, labels);
        let binary = |z: f64| {
            let p = 1.0 / (1.0 + (-z).exp());
            -(p * p.ln() + (1.0 - p) * (1.0 - p).ln())
        };
        assert_eq!(correct.into_scalar(), 1.0);
        let expected = binary(2.0) + binary(1.0);
        assert!((f64::from(entropy.into_scalar()) - expected).abs() < 1e-6);
    }
}
