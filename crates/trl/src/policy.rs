//! What every offline preference trainer shares: a policy network trained on batches of items by an
//! [`Objective`] (DPO, ORPO, ...), saved and configured as the causal-LM objective saves it ([`CausalLm`]:
//! HF checkpoints, `final/`, LoRA adapters, compute settings). [`PolicyModule`] is the [`LightningModule`] the
//! Trainer runs.

use std::path::Path;

use burn::tensor::Tensor;
use llmtrain_core::kernels::AutodiffKernels;
use llmtrain_core::model::LlamaModel;
use llmtrain_lightning::{CausalLm, LightningModule, LossParts, Result, StepContext, StepOutput};
use serde_json::{Map, Value};

/// One batch's loss (the mean over the batch's [`Objective::batch_weight`], with gradients), metrics (means
/// likewise) and ratios (numerator and denominator sums, for figures averaged over something else, e.g. tokens).
pub struct Scored<A: AutodiffKernels> {
    pub loss: Tensor<A, 1>,
    pub metrics: Vec<(&'static str, f64)>,
    pub ratios: Vec<(&'static str, f64, f64)>,
}

/// A preference objective over batches of `Item`s.
pub trait Objective<A: AutodiffKernels> {
    type Item: Clone;

    /// The training loss and metrics of one batch under the policy `net` (`ctx.device`; `ctx` also reduces
    /// figures the loss needs over all ranks).
    fn train(&self, net: &LlamaModel<A>, batch: &[Self::Item], ctx: &StepContext<'_, A>) -> Result<Scored<A>>;

    /// The mean loss of one held-out batch.
    fn validate(&self, net: &LlamaModel<A::InnerBackend>, batch: &[Self::Item], device: &A::Device) -> Result<f64>;

    /// The names [`Objective::train`] logs (metrics and ratios).
    fn metric_names(&self) -> Vec<&'static str>;

    /// A batch's share of the step's normaliser: by default its items (the loss is a mean over items).
    fn batch_weight(&self, batch: &[Self::Item]) -> f64 {
        batch.len() as f64
    }

    /// Before a step runs, with the policy as it stands: an objective that makes its own items (rollouts)
    /// completes this rank's micro-batches here (see [`LightningModule::prepare_step`]). Nothing by default.
    fn prepare_step(
        &mut self,
        _net: &LlamaModel<A>,
        _micro: &mut [Vec<Self::Item>],
        _ctx: &StepContext<'_, A>,
    ) -> Result<()> {
        Ok(())
    }

    /// Figures over held-out items, reported before the first step and after the last (say, how often the
    /// policy prefers the chosen completion); none by default.
    fn held_out(
        &self,
        _net: &LlamaModel<A::InnerBackend>,
        _items: &[Self::Item],
        _device: &A::Device,
    ) -> Result<Map<String, Value>> {
        Ok(Map::new())
    }
}

/// An [`Objective`] on a policy whose files are [`CausalLm`]'s.
pub struct PolicyModule<'a, A: AutodiffKernels, O: Objective<A>> {
    pub objective: O,
    files: CausalLm<'a, A>,
    held_out: Vec<O::Item>,
}

impl<'a, A: AutodiffKernels, O: Objective<A>> PolicyModule<'a, A, O> {
    pub fn new(objective: O, files: CausalLm<'a, A>) -> Self {
        Self { objective, files, held_out: Vec::new() }
    }

    /// Reports [`Objective::held_out`]'s figures over `items` before the first step and after the last.
    pub fn with_held_out(mut self, items: Vec<O::Item>) -> Self {
        self.held_out = items;
        self
    }

    fn held_out_figures(&self, net: &LlamaModel<A::InnerBackend>) -> Result<Map<String, Value>> {
        if self.held_out.is_empty() {
            return Ok(Map::new());
        }
        self.objective.held_out(net, &self.held_out, &net.embed_tokens.val().device())
    }
}

impl<A: AutodiffKernels, O: Objective<A>> LightningModule<A> for PolicyModule<'_, A, O> {
    type Net = LlamaModel<A>;
    type Batch = Vec<O::Item>;

    fn batch_weight(&self, batch: &Vec<O::Item>) -> f64 {
        self.objective.batch_weight(batch)
    }

    fn prepare_step(
        &mut self,
        net: &LlamaModel<A>,
        micro: &mut [Vec<O::Item>],
        ctx: &StepContext<'_, A>,
    ) -> Result<()> {
        self.objective.prepare_step(net, micro, ctx)
    }

    fn training_step<'n>(
        &self,
        net: &'n LlamaModel<A>,
        batch: &Vec<O::Item>,
        ctx: &StepContext<'_, A>,
    ) -> Result<StepOutput<'n, A>> {
        let Scored { loss, metrics, ratios } = self.objective.train(net, batch, ctx)?;
        // The engine divides by the step's weight: a micro-batch contributes its means times its weight.
        let n = self.objective.batch_weight(batch);
        let metrics = metrics.into_iter().map(|(name, value)| (name, value * n)).collect();
        Ok(StepOutput { loss: loss * n, metrics, ratios, deferred: None })
    }

    fn validation_step(
        &self,
        net: &LlamaModel<A::InnerBackend>,
        batch: &Vec<O::Item>,
        device: &A::Device,
    ) -> Result<LossParts> {
        let n = batch.len() as f64;
        Ok(LossParts { sum: self.objective.validate(net, batch, device)? * n, weight: n })
    }

    fn metric_names(&self) -> Vec<&'static str> {
        self.objective.metric_names()
    }

    fn configure_net(&self, net: LlamaModel<A>) -> LlamaModel<A> {
        self.files.configure_net(net)
    }

    fn lr_scale(&self, path: &str) -> f64 {
        LightningModule::<A>::lr_scale(&self.files, path)
    }

    fn save_checkpoint(&self, net: &LlamaModel<A>, dir: &Path) -> Result<()> {
        self.files.save_checkpoint(net, dir)
    }

    fn load_checkpoint(&self, net: LlamaModel<A>, dir: &Path) -> Result<LlamaModel<A>> {
        self.files.load_checkpoint(net, dir)
    }

    fn save_final(&self, net: &LlamaModel<A>, dir: &Path) -> Result<()> {
        self.files.save_final(net, dir)
    }

    fn on_fit_start(&self, net: &LlamaModel<A::InnerBackend>) -> Result<Map<String, Value>> {
        self.held_out_figures(net)
    }

    fn on_fit_end(&self, net: &LlamaModel<A::InnerBackend>) -> Result<Map<String, Value>> {
        self.held_out_figures(net)
    }
}
