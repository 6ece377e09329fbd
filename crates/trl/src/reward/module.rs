//! The reward model as a [`LightningModule`]: each batch of pairs is scored as one `[2·pairs, len]` batch
//! (chosen rows, then rejected, right-padded), the loss and metrics are [`RewardLoss`]'s, and checkpoints and
//! `final/` are transformers `*ForSequenceClassification` directories with the tokenizer.

use std::path::Path;

use burn::module::{AutodiffModule, Param};
use burn::tensor::{ElementConversion, Tensor};
use llmtrain_core::hf::{self, HfConfig, SaveOptions};
use llmtrain_core::kernels::{AutodiffKernels, Kernels};
use llmtrain_core::model::{Compute, SequenceClassifier};
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_lightning::{LightningModule, LossParts, Result, StepContext, StepOutput};
use serde_json::{Map, Value, json};

use super::data::RewardPair;
use super::loss::{RewardLoss, RewardMetrics};

/// The reward-modelling objective.
pub struct RewardModule {
    loss: RewardLoss,
    pad_id: u32,
    compute: Compute,
    hf_config: HfConfig,
    tokenizer: TextTokenizer,
    held_out: Vec<RewardPair>,
}

impl RewardModule {
    pub fn new(loss: RewardLoss, pad_id: u32, compute: Compute, hf_config: HfConfig, tokenizer: TextTokenizer) -> Self {
        Self { loss, pad_id, compute, hf_config, tokenizer, held_out: Vec::new() }
    }

    /// Reports the share of `pairs` whose chosen completion scores higher (`accuracy`) before the first step
    /// and after the last.
    pub fn with_held_out(mut self, pairs: Vec<RewardPair>) -> Self {
        self.held_out = pairs;
        self
    }

    fn held_out_figures<B: Kernels>(&self, net: &SequenceClassifier<B>) -> Map<String, Value> {
        let mut figures = Map::new();
        if self.held_out.is_empty() {
            return figures;
        }
        let device = net.score.val().device();
        let mut correct = 0usize;
        for chunk in self.held_out.chunks(16) {
            let (chosen, rejected, _) = self.rewards(net, chunk, &device);
            let wins = chosen.greater(rejected).int().sum().into_scalar().elem::<i64>();
            correct += usize::try_from(wins).unwrap_or(0);
        }
        figures.insert("accuracy".into(), json!(correct as f64 / self.held_out.len() as f64));
        figures.insert("held_out_pairs".into(), json!(self.held_out.len()));
        figures
    }

    /// The chosen and rejected rewards `[pairs]` under `net`, and the margins.
    fn rewards<B: Kernels>(
        &self,
        net: &SequenceClassifier<B>,
        pairs: &[RewardPair],
        device: &B::Device,
    ) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
        let n = pairs.len();
        let sequences: Vec<&[u32]> =
            pairs.iter().map(|p| p.chosen.as_slice()).chain(pairs.iter().map(|p| p.rejected.as_slice())).collect();
        let rewards = net.score_sequences(&sequences, self.pad_id, device);
        let margins: Vec<f32> = pairs.iter().map(|p| p.margin).collect();
        (rewards.clone().narrow(0, 0, n), rewards.narrow(0, n, n), Tensor::from_data(margins.as_slice(), device))
    }
}

impl<A: AutodiffKernels> LightningModule<A> for RewardModule {
    type Net = SequenceClassifier<A>;
    type Batch = Vec<RewardPair>;

    fn batch_weight(&self, batch: &Vec<RewardPair>) -> f64 {
        batch.len() as f64
    }

    fn training_step<'n>(
        &self,
        net: &'n SequenceClassifier<A>,
        batch: &Vec<RewardPair>,
        ctx: &StepContext<'_, A>,
    ) -> Result<StepOutput<'n, A>> {
        let (chosen, rejected, margins) = self.rewards(net, batch, ctx.device);
        // The engine divides by the step's pairs: a micro-batch contributes its means times its pairs.
        let n = batch.len() as f64;
        let metrics = self.loss.metrics(chosen.clone(), rejected.clone()).named().map(|(k, v)| (k, v * n)).to_vec();
        let loss = self.loss.loss(chosen, rejected, margins) * n;
        Ok(StepOutput { loss, metrics, ratios: Vec::new(), deferred: None })
    }

    fn validation_step(
        &self,
        net: &SequenceClassifier<A::InnerBackend>,
        batch: &Vec<RewardPair>,
        device: &A::Device,
    ) -> Result<LossParts> {
        let (chosen, rejected, margins) = self.rewards(net, batch, device);
        let n = batch.len() as f64;
        Ok(LossParts { sum: self.loss.loss(chosen, rejected, margins).into_scalar().elem::<f64>() * n, weight: n })
    }

    fn metric_names(&self) -> Vec<&'static str> {
        RewardMetrics::NAMES.to_vec()
    }

    fn configure_net(&self, mut net: SequenceClassifier<A>) -> SequenceClassifier<A> {
        net.model.compute = self.compute;
        net
    }

    fn save_checkpoint(&self, net: &SequenceClassifier<A>, dir: &Path) -> Result<()> {
        self.save_final(net, dir)
    }

    fn load_checkpoint(&self, net: SequenceClassifier<A>, dir: &Path) -> Result<SequenceClassifier<A>> {
        let device = net.score.val().device();
        let (mut model, score, _) = hf::load_sequence_classifier::<A>(dir, &device)?;
        model.compute = self.compute;
        Ok(SequenceClassifier { model, score: Param::from_tensor(score) })
    }

    fn on_fit_start(&self, net: &SequenceClassifier<A::InnerBackend>) -> Result<Map<String, Value>> {
        Ok(self.held_out_figures(net))
    }

    fn on_fit_end(&self, net: &SequenceClassifier<A::InnerBackend>) -> Result<Map<String, Value>> {
        Ok(self.held_out_figures(net))
    }

    fn save_final(&self, net: &SequenceClassifier<A>, dir: &Path) -> Result<()> {
        let net = net.valid();
        hf::save_sequence_classifier(&net.model, net.score.val(), &self.hf_config, dir, &SaveOptions::default())?;
        Ok(self.tokenizer.save(dir)?)
    }
}
