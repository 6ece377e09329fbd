//! DPO as a [`LightningModule`]: the policy trains on batches of tokenized pairs while a frozen reference scores
//! the same sequences; the loss and TRL's metrics come from [`DpoLoss`]. The policy's files (checkpoints,
//! `final/`, LoRA adapters) and its compute settings are the causal-LM objective's, [`CausalLm`], which this
//! module holds rather than repeats.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use llmtrain_core::model::LlamaModel;
use llmtrain_lightning::{CausalLm, LightningError, LightningModule, LossParts, Result, StepContext, StepOutput};

use super::batch::{PairBatch, TokenStats, sequence_logps, sequence_logps_with_stats};
use super::data::TokenizedPair;
use super::loss::{DpoLoss, DpoMetrics, SequenceLogps};

/// Where the reference log-probs come from.
pub enum Reference<B: Backend> {
    /// A frozen network: a copy of the starting weights, or another checkpoint (`ref_model`).
    Model(Box<LlamaModel<B>>),
    /// The policy with its LoRA adapters left out (PEFT's `disable_adapter`): the frozen base is the reference,
    /// and no second copy of it is held.
    PolicyWithoutAdapters,
    /// Computed once before training and carried by each pair (`precompute_ref_log_probs`).
    Precomputed,
}

/// The DPO objective.
pub struct Dpo<'a, A: AutodiffBackend> {
    loss: DpoLoss,
    reference: Reference<A::InnerBackend>,
    pad_id: u32,
    /// TRL's `max_length` (keep_start truncation of prompt + completion).
    max_length: Option<usize>,
    policy: CausalLm<'a, A>,
}

impl<'a, A: AutodiffBackend> Dpo<'a, A> {
    /// DPO with `loss` against `reference`; `policy` saves and configures the trained network.
    pub fn new(
        loss: DpoLoss,
        reference: Reference<A::InnerBackend>,
        pad_id: u32,
        max_length: Option<usize>,
        policy: CausalLm<'a, A>,
    ) -> Self {
        Self { loss, reference, pad_id, max_length, policy }
    }

    /// The reference's per-sequence log-probs of `batch` (chosen rows, then rejected); `policy` is the trained
    /// network without autodiff, for [`Reference::PolicyWithoutAdapters`].
    fn reference_logps(
        &self,
        policy: impl FnOnce() -> LlamaModel<A::InnerBackend>,
        pairs: &[TokenizedPair],
        batch: &PairBatch,
        device: &A::Device,
    ) -> Result<Tensor<A::InnerBackend, 1>> {
        Ok(match &self.reference {
            Reference::Model(reference) => sequence_logps(reference, batch, device),
            Reference::PolicyWithoutAdapters => {
                let mut base = policy();
                for (_, linear) in base.decoder_linears_mut() {
                    linear.adapter = None;
                }
                sequence_logps(&base, batch, device)
            }
            Reference::Precomputed => {
                let logps =
                    pairs.iter().map(|pair| pair.reference_logps).collect::<Option<Vec<[f32; 2]>>>().ok_or_else(
                        || LightningError::Invalid("a pair has no precomputed reference log-probs".into()),
                    )?;
                let column: Vec<f32> = logps.iter().map(|l| l[0]).chain(logps.iter().map(|l| l[1])).collect();
                Tensor::from_data(column.as_slice(), device)
            }
        })
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

impl<A: AutodiffBackend> LightningModule<A> for Dpo<'_, A> {
    type Net = LlamaModel<A>;
    type Batch = Vec<TokenizedPair>;

    fn batch_weight(&self, batch: &Vec<TokenizedPair>) -> f64 {
        batch.len() as f64
    }

    fn training_step<'n>(
        &self,
        net: &'n LlamaModel<A>,
        batch: &Vec<TokenizedPair>,
        ctx: &StepContext<'_, A>,
    ) -> Result<StepOutput<'n, A>> {
        let pairs = PairBatch::collate(batch, self.pad_id, self.max_length);
        let (policy, stats) = sequence_logps_with_stats(net, &pairs, ctx.device);
        let reference = self.reference_logps(|| net.valid(), batch, &pairs, ctx.device)?;
        let scored = scored(policy, Tensor::from_inner(reference), &pairs);
        // The engine divides by the step's pairs: a micro-batch contributes its mean times its pairs.
        let n = batch.len() as f64;
        let metrics = self.loss.metrics(&scored).named().map(|(name, value)| (name, value * n)).to_vec();
        let ratios = stats.ratios().to_vec();
        Ok(StepOutput { loss: self.loss.loss(&scored) * n, metrics, ratios, deferred: None })
    }

    fn validation_step(
        &self,
        net: &LlamaModel<A::InnerBackend>,
        batch: &Vec<TokenizedPair>,
        device: &A::Device,
    ) -> Result<LossParts> {
        let pairs = PairBatch::collate(batch, self.pad_id, self.max_length);
        let reference = self.reference_logps(|| net.clone(), batch, &pairs, device)?;
        let scored = scored(sequence_logps(net, &pairs, device), reference, &pairs);
        let n = batch.len() as f64;
        Ok(LossParts { sum: self.loss.loss(&scored).into_scalar().elem::<f64>() * n, weight: n })
    }

    fn metric_names(&self) -> Vec<&'static str> {
        let ratios = TokenStats::default().ratios().map(|(name, _, _)| name);
        DpoMetrics::NAMES.iter().copied().chain(ratios).collect()
    }

    fn configure_net(&self, net: LlamaModel<A>) -> LlamaModel<A> {
        self.policy.configure_net(net)
    }

    fn lr_scale(&self, path: &str) -> f64 {
        LightningModule::<A>::lr_scale(&self.policy, path)
    }

    fn save_checkpoint(&self, net: &LlamaModel<A>, dir: &Path) -> Result<()> {
        self.policy.save_checkpoint(net, dir)
    }

    fn load_checkpoint(&self, net: LlamaModel<A>, dir: &Path) -> Result<LlamaModel<A>> {
        self.policy.load_checkpoint(net, dir)
    }

    fn save_final(&self, net: &LlamaModel<A>, dir: &Path) -> Result<()> {
        self.policy.save_final(net, dir)
    }
}
