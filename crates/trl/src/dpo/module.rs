//! DPO as a [`LightningModule`]: the policy trains on batches of tokenized pairs while a frozen reference scores
//! the same sequences; the loss and TRL's metrics come from [`DpoLoss`]. Checkpoints and `final/` are HF model
//! directories with the tokenizer, like `llmtrain train`'s.

use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use llmtrain_core::hf::{self, HfConfig, SaveOptions};
use llmtrain_core::model::LlamaModel;
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_core::train::checkpoint::save_model_state;
use llmtrain_lightning::{LightningError, LightningModule, LossParts, StepContext, StepOutput};

use super::batch::{PairBatch, sequence_logps};
use super::data::TokenizedPair;
use super::loss::{DpoLoss, DpoMetrics, SequenceLogps};

/// The DPO objective over a frozen reference network.
pub struct Dpo<B: Backend> {
    pub loss: DpoLoss,
    /// The reference policy (no autodiff): a copy of the starting weights, or another checkpoint.
    pub reference: LlamaModel<B>,
    pub pad_id: u32,
    /// TRL's `max_length` (keep_start truncation of prompt + completion).
    pub max_length: Option<usize>,
    pub hf_config: HfConfig,
    pub tokenizer: TextTokenizer,
}

impl<B: Backend> Dpo<B> {
    /// The loss and metrics of one batch of pairs, given the policy's per-sequence log-probs on backend `C`.
    fn score<C: Backend>(&self, policy: Tensor<C, 1>, batch: &PairBatch, device: &C::Device) -> SequenceLogps<C>
    where
        B: Backend<Device = C::Device>,
    {
        let n = batch.pairs;
        let reference = sequence_logps(&self.reference, batch, device);
        let reference = Tensor::<C, 1>::from_data(reference.into_data(), device);
        let lengths = batch.completion_lengths();
        let column = |values: &[f32]| Tensor::<C, 1>::from_data(values, device);
        SequenceLogps {
            chosen: policy.clone().narrow(0, 0, n),
            rejected: policy.narrow(0, n, n),
            ref_chosen: reference.clone().narrow(0, 0, n),
            ref_rejected: reference.narrow(0, n, n),
            chosen_tokens: column(&lengths[..n]),
            rejected_tokens: column(&lengths[n..]),
        }
    }
}

impl<A: AutodiffBackend> LightningModule<A> for Dpo<A::InnerBackend> {
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
    ) -> llmtrain_lightning::Result<StepOutput<'n, A>> {
        let pairs = PairBatch::collate(batch, self.pad_id, self.max_length);
        let policy = sequence_logps(net, &pairs, ctx.device);
        let scored = self.score(policy, &pairs, ctx.device);
        // The engine divides by the step's pairs: a micro-batch contributes its mean times its pairs.
        let n = batch.len() as f64;
        let metrics = self.loss.metrics(&scored).named().map(|(name, value)| (name, value * n)).to_vec();
        Ok(StepOutput { loss: self.loss.loss(&scored) * n, metrics, deferred: None })
    }

    fn validation_step(
        &self,
        net: &LlamaModel<A::InnerBackend>,
        batch: &Vec<TokenizedPair>,
        device: &A::Device,
    ) -> llmtrain_lightning::Result<LossParts> {
        let pairs = PairBatch::collate(batch, self.pad_id, self.max_length);
        let scored = self.score(sequence_logps(net, &pairs, device), &pairs, device);
        let n = batch.len() as f64;
        Ok(LossParts { sum: f64::from(self.loss.loss(&scored).into_scalar().elem::<f32>()) * n, weight: n })
    }

    fn metric_names(&self) -> Vec<&'static str> {
        DpoMetrics::NAMES.to_vec()
    }

    fn save_checkpoint(&self, net: &LlamaModel<A>, dir: &Path) -> llmtrain_lightning::Result<()> {
        save_model_state(net, &self.hf_config, dir)?;
        Ok(self.tokenizer.save(dir)?)
    }

    fn load_checkpoint(&self, net: LlamaModel<A>, dir: &Path) -> llmtrain_lightning::Result<LlamaModel<A>> {
        let device = net.devices().into_iter().next().ok_or_else(|| LightningError::Invalid("no device".into()))?;
        Ok(hf::load_model::<A>(dir, &device)?.0)
    }

    fn save_final(&self, net: &LlamaModel<A>, dir: &Path) -> llmtrain_lightning::Result<()> {
        hf::save_model(&net.valid(), &self.hf_config, dir, &SaveOptions::default())?;
        Ok(self.tokenizer.save(dir)?)
    }
}
