//! The causal-LM objective's batch computations: a batch as tensors, its summed loss (from the model or from
//! hidden states, fused or not), the mean of an evaluation, the corpus's unigram entropy, and a sample.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::{Batch, DataLoader, DataOptions, Split};
use crate::error::{CoreError, Result};
use crate::generate::{SamplingConfig, generate};
use crate::kernels::Kernels;
use crate::model::loss::causal_lm_loss_parts;
use crate::model::{LlamaModel, PositionIds};
use crate::tokenizer::TextTokenizer;

/// Summed loss and scored-token count of one batch.
pub fn batch_loss<B: Kernels>(
    model: &LlamaModel<B>,
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let (tokens, labels, positions) = batch_tensors::<B>(batch, device);
    loss_from_hidden(model, model.hidden_states(tokens, positions.as_ref()), batch, labels)
}

/// Summed loss and scored-token count of one batch from the final hidden states `[rows, seq, hidden]` (of
/// [`LlamaModel::hidden_states`], or of the checkpointed forward): through the head and the cross-entropy, or
/// with `compute.loss_chunk` the fused version that never holds the whole logits.
pub fn loss_from_hidden<B: Kernels>(
    model: &LlamaModel<B>,
    hidden: Tensor<B, 3>,
    batch: &Batch,
    labels: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    if let Some(chunk) = model.compute.loss_chunk {
        let (sum, count) = crate::model::fused_loss::fused_causal_lm_loss(model, hidden, &batch.labels, chunk);
        return (sum, Tensor::from_floats([count as f32], &labels.device()));
    }
    causal_lm_loss_parts(model.logits(hidden), labels)
}

/// A batch as the model takes it: token ids and labels `[rows, seq]`, and position ids when rows are packed.
pub fn batch_tensors<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Option<PositionIds>) {
    let ids: Vec<i64> = batch.input_ids.iter().map(|&t| t as i64).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch.rows, batch.seq]), device);
    let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(batch.labels.clone(), [batch.rows, batch.seq]), device);
    let positions = batch.position_ids.as_ref().map(|ids| PositionIds::new(batch.rows, batch.seq, ids.clone()));
    (tokens, labels, positions)
}

/// `sum / count` of an evaluation, failing when nothing was scored.
pub fn eval_mean(sum: f64, count: f64) -> Result<f64> {
    if count == 0.0 {
        return Err(CoreError::Invalid("the eval split holds no scored token (raise data.eval_fraction)".into()));
    }
    Ok(sum / count)
}

/// Entropy (nats) of the unigram distribution of the tokens the loss predicts, over the whole dataset (both
/// splits, one epoch).
pub fn unigram_entropy(options: &DataOptions, tokenizer: &TextTokenizer) -> Result<f64> {
    let mut counts: HashMap<u32, u64> = HashMap::new();
    let mut add = |batch: &Batch| {
        for row in 0..batch.rows {
            for t in 1..batch.seq {
                let i = row * batch.seq + t;
                if batch.labels[i] >= 0 {
                    *counts.entry(batch.labels[i] as u32).or_default() += 1;
                }
            }
        }
    };
    for split in [Split::Train, Split::Eval] {
        DataLoader::visit_one_pass(options, tokenizer, split, usize::MAX, |batch| {
            add(batch);
            Ok::<(), CoreError>(())
        })?;
    }
    let total: u64 = counts.values().sum();
    Ok(counts.values().map(|&c| c as f64 / total as f64).map(|p| -p * p.ln()).sum())
}

pub fn sample_text<B: Kernels>(
    model: &LlamaModel<B>,
    tokenizer: &TextTokenizer,
    prompt: &str,
    max_new_tokens: usize,
    device: &B::Device,
) -> Result<String> {
    let ids = tokenizer.encode(prompt)?;
    let config = SamplingConfig {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed: 0,
        max_new_tokens,
        stop_tokens: tokenizer.eos_token_id().into_iter().collect(),
    };
    let new_tokens = generate(model, &ids, &config, device);
    Ok(format!("{prompt}{}", tokenizer.decode(&new_tokens, true)?))
}
