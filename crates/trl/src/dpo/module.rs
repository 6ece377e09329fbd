//! DPO as an [`Objective`]: the policy trains on batches of tokenized pairs while a frozen reference scores the
//! same sequences; the loss and TRL's metrics come from [`DpoLoss`].

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use llmtrain_core::kernels::{AutodiffKernels, Kernels};
use llmtrain_core::model::LlamaModel;
use llmtrain_lightning::{Result, StepContext};

use super::batch::{PAIR_TOKEN_METRICS, PairBatch, pair_token_ratios, sequence_logps, sequence_logps_with_stats};
use super::data::TokenizedPair;
use super::loss::{DpoLoss, DpoMetrics, SequenceLogps};
use crate::policy::{Objective, Scored};
use crate::reference::{Reference, stored};
use serde_json::{Map, Value, json};

/// The DPO objective.
pub struct Dpo<B: Kernels> {
    loss: DpoLoss,
    reference: Reference<B>,
    pad_id: u32,
    /// TRL's `max_length` (keep_start truncation of prompt + completion).
    max_length: Option<usize>,
}

impl<B: Kernels> Dpo<B> {
    /// DPO with `loss` against `reference`, padding with `pad_id`.
    pub fn new(loss: DpoLoss, reference: Reference<B>, pad_id: u32, max_length: Option<usize>) -> Self {
        Self { loss, reference, pad_id, max_length }
    }

    /// The reference's per-sequence log-probs of `batch` (chosen rows, then rejected).
    fn reference_logps(
        &self,
        policy: impl FnOnce() -> LlamaModel<B>,
        pairs: &[TokenizedPair],
        batch: &PairBatch,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>> {
        let precomputed = || stored(pairs.iter().map(|item| item.reference_logps));
        self.reference.logps(policy, precomputed, batch, device)
    }
}

/// The four log-prob columns and the completion lengths of one batch, on backend `C`.
fn scored<C: Backend>(policy: Tensor<C, 1>, reference: Tensor<C, 1>, batch: &PairBatch) -> SequenceLogps<C> {
    let n = batch.pairs;
    let device = policy.device();
    let lengths = batch.completion_lengths();
    let column = |values: &[f32]| Tensor::<C, 1>::from_data(values, &device);
    SequenceLogps {
        chosen: policy.clone().narrow(0, 0, n),
        rejected: policy.narrow(0, n, n),
        ref_chosen: reference.clone().narrow(0, 0, n),
        ref_rejected: reference.narrow(0, n, n),
        chosen_tokens: column(&lengths[..n]),
        rejected_tokens: column(&lengths[n..]),
    }
}

impl<A: AutodiffKernels> Objective<A> for Dpo<A::InnerBackend> {
    type Item = TokenizedPair;

    fn train(&self, net: &LlamaModel<A>, batch: &[TokenizedPair], ctx: &StepContext<'_, A>) -> Result<Scored<A>> {
        let device = ctx.device;
        let pairs = PairBatch::collate(batch, self.pad_id, self.max_length);
        let (policy, stats) = sequence_logps_with_stats(net, &pairs, device);
        let reference = self.reference_logps(|| net.valid(), batch, &pairs, device)?;
        let scored = scored(policy, Tensor::from_inner(reference), &pairs);
        Ok(Scored {
            loss: self.loss.loss(&scored),
            metrics: self.loss.metrics(&scored).named().to_vec(),
            ratios: pair_token_ratios(&stats, pairs.pairs).to_vec(),
        })
    }

    fn validate(&self, net: &LlamaModel<A::InnerBackend>, batch: &[TokenizedPair], device: &A::Device) -> Result<f64> {
        let pairs = PairBatch::collate(batch, self.pad_id, self.max_length);
        let reference = self.reference_logps(|| net.clone(), batch, &pairs, device)?;
        let scored = scored(sequence_logps(net, &pairs, device), reference, &pairs);
        Ok(self.loss.loss(&scored).into_scalar().elem::<f64>())
    }

    fn metric_names(&self) -> Vec<&'static str> {
        DpoMetrics::NAMES.iter().copied().chain(PAIR_TOKEN_METRICS).collect()
    }

    /// How often the policy gives the chosen completion more log-probability than the rejected one
    /// (`preference_accuracy`), and how often its implicit reward ranks them so (`rewards/accuracies`, TRL's
    /// figure: 0 while the policy equals the reference), over the held-out pairs.
    fn held_out(
        &self,
        net: &LlamaModel<A::InnerBackend>,
        items: &[TokenizedPair],
        device: &A::Device,
    ) -> Result<Map<String, Value>> {
        let (mut prefers, mut ranks) = (0usize, 0usize);
        for chunk in items.chunks(16) {
            let pairs = PairBatch::collate(chunk, self.pad_id, self.max_length);
            let policy = sequence_logps(net, &pairs, device);
            let reference = self.reference_logps(|| net.clone(), chunk, &pairs, device)?;
            let host =
                |t: Tensor<A::InnerBackend, 1>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
            let (policy, reference) = (host(policy), host(reference));
            let n = chunk.len();
            for i in 0..n.min(policy.len() / 2).min(reference.len() / 2) {
                prefers += usize::from(policy[i] > policy[n + i]);
                ranks += usize::from(policy[i] - reference[i] > policy[n + i] - reference[n + i]);
            }
        }
        let total = items.len() as f64;
        let mut figures = Map::new();
        figures.insert("preference_accuracy".into(), json!(prefers as f64 / total));
        figures.insert("rewards/accuracies".into(), json!(ranks as f64 / total));
        figures.insert("held_out_pairs".into(), json!(items.len()));
        Ok(figures)
    }
}
