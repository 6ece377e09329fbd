//! What an objective says about one step: the [`LightningModule`] trait. The module computes; the
//! [`Trainer`](crate::Trainer) owns devices, precision, accumulation, clipping, checkpoints, logging, validation
//! and resume.

use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use llmtrain_accel::{Accelerator, ReduceOp};
use llmtrain_core::model::DeferredBackward;
use serde_json::{Map, Value};

use crate::error::{LightningError, Result};

/// The inference (no autodiff) version of a module's network.
pub type InnerNet<A, M> = <<M as LightningModule<A>>::Net as AutodiffModule<A>>::InnerModule;

/// An objective: the network it trains, the batches it reads, and what one micro-batch computes.
///
/// A step's loss is Σ summed losses / Σ [`batch_weight`](Self::batch_weight)s over all its micro-batches on all
/// ranks, so token-weighted (or example-weighted) means stay exact however the batch is split into micro-batches
/// and ranks.
pub trait LightningModule<A: AutodiffBackend> {
    /// The network the optimizer trains: any burn module; its trainable parameters are found by path.
    type Net: AutodiffModule<A>;
    /// What one micro-batch holds.
    type Batch;

    /// This batch's share of the step's normaliser: scored tokens for a token-level loss, examples for a
    /// sequence-level one.
    fn batch_weight(&self, batch: &Self::Batch) -> f64;

    /// The summed (not averaged) loss of one micro-batch, with named metrics summed the same way.
    fn training_step<'n>(
        &self,
        net: &'n Self::Net,
        batch: &Self::Batch,
        ctx: &StepContext<'_, A>,
    ) -> Result<StepOutput<'n, A>>;

    /// Before a step's micro-batches run, on every rank, with the network as the step starts: a module that makes
    /// its own training data makes it here (an online RL objective samples its rollouts from the policy, scores
    /// them and computes their advantages over the whole step on every rank) and fills it into this rank's
    /// `micro` batches; their [`batch_weight`](Self::batch_weight)s are read after. `ctx.seed` is the step's
    /// seed, the same on every rank, and [`StepContext::sum_over_ranks`] is a collective every rank calls equally
    /// often. By default the batches run as drawn.
    fn prepare_step(&mut self, _net: &Self::Net, _micro: &mut [Self::Batch], _ctx: &StepContext<'_, A>) -> Result<()> {
        Ok(())
    }

    /// The summed loss and weight of one validation batch (no autodiff).
    fn validation_step(&self, net: &InnerNet<A, Self>, batch: &Self::Batch, device: &A::Device) -> Result<LossParts>;

    /// Whether [`training_step`](Self::training_step) runs the decoder through
    /// [`StepContext::layer_source`] when there is one, and [`save_checkpoint`](Self::save_checkpoint) and
    /// [`save_final`](Self::save_final) write the layers through the source
    /// [`gather_layers_from`](Self::gather_layers_from) hands them, so that the network can train with its
    /// parameters released between uses (ZeRO stage 3). Those that don't are refused under stage 3.
    fn walks_sharded_layers(&self) -> bool {
        false
    }

    /// Under ZeRO stage 3, on rank 0: where [`save_checkpoint`](Self::save_checkpoint) and
    /// [`save_final`](Self::save_final) get the decoder layers, which the network they are handed holds released
    /// (one gathered at a time while the other ranks serve). Only a module that
    /// [`walks_sharded_layers`](Self::walks_sharded_layers) is handed one.
    fn gather_layers_from(&mut self, _layers: Option<std::sync::Arc<dyn llmtrain_core::model::LayerSource>>) {}

    /// Settings of the network that are not parameters (compute type, kernels), applied after it is built,
    /// broadcast or restored from a checkpoint.
    fn configure_net(&self, net: Self::Net) -> Self::Net {
        net
    }

    /// The names of the metrics `training_step` returns, so a callback's monitor can be checked before step 1.
    fn metric_names(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// The optimizer and learning-rate schedule (Lightning's `configure_optimizers`); `None`, the default, takes
    /// the Trainer's settings (`optimizer`, `schedule`).
    fn configure_optimizers(&self) -> Option<Optimizers> {
        None
    }

    /// The learning-rate multiplier of the parameter at `path` (LoRA+ raises the B matrices').
    fn lr_scale(&self, _path: &str) -> f64 {
        1.0
    }

    /// Writes what a checkpoint needs besides the optimizer and trainer state into `dir`: the weights that
    /// train (a model, an adapter) and whatever a resumed run reads (a tokenizer). By default the whole network
    /// as burn's record, [`NET_FILE`] (f32, so a resumed run continues bit for bit).
    fn save_checkpoint(&self, net: &Self::Net, dir: &Path) -> Result<()> {
        save_net(net, dir)
    }

    /// Restores what [`save_checkpoint`](Self::save_checkpoint) wrote, onto the network the run built (under ZeRO
    /// stage 3, with its parameters released: a module that [`walks_sharded_layers`](Self::walks_sharded_layers)
    /// loads them whole from `dir`).
    fn load_checkpoint(&self, net: Self::Net, dir: &Path) -> Result<Self::Net> {
        load_net(net, dir)
    }

    /// Writes the trained result into `final/` (rank 0); by default as a checkpoint holds it.
    fn save_final(&self, net: &Self::Net, dir: &Path) -> Result<()> {
        save_net(net, dir)
    }

    /// Whether [`on_fit_start`](Self::on_fit_start) and [`on_fit_end`](Self::on_fit_end) compute anything on rank 0
    /// (the Trainer asks every rank and gathers the network for them if any says yes): under ZeRO stage 3 the whole
    /// network is gathered for them, so a module that logs no such figures says so.
    fn has_fit_figures(&self) -> bool {
        true
    }

    /// Figures to log before the first step of a fresh run (rank 0), such as a held-out accuracy.
    fn on_fit_start(&self, _net: &InnerNet<A, Self>) -> Result<Map<String, Value>> {
        Ok(Map::new())
    }

    /// Figures to log after the last step (rank 0).
    fn on_fit_end(&self, _net: &InnerNet<A, Self>) -> Result<Map<String, Value>> {
        Ok(Map::new())
    }

    /// After the gradients of a step are summed over micro-batches and ranks and clipped, before the optimizer
    /// applies them (every rank), with their global norm before clipping.
    fn on_before_optimizer_step(&mut self, _step: u64, _grad_norm: f64) -> Result<()> {
        Ok(())
    }

    /// After every optimizer step (every rank): `step` steps are done, the last at this mean loss.
    fn on_train_batch_end(&mut self, _step: u64, _loss: f64) -> Result<()> {
        Ok(())
    }

    /// After a validation pass (every rank), with its mean loss: figures to add to the validation's record.
    fn on_validation_epoch_end(&mut self, _step: u64, _val_loss: f64) -> Result<Map<String, Value>> {
        Ok(Map::new())
    }

    /// The module's own state besides its network's weights, saved in every checkpoint's `trainer_state.json`
    /// (Lightning's `on_save_checkpoint`); `Null` saves nothing.
    fn on_save_checkpoint(&self) -> Value {
        Value::Null
    }

    /// Restores what [`on_save_checkpoint`](Self::on_save_checkpoint) saved, when a run resumes.
    fn on_load_checkpoint(&mut self, _state: &Value) -> Result<()> {
        Ok(())
    }
}

/// What [`LightningModule::configure_optimizers`] returns: AdamW's settings and the learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Optimizers {
    pub optimizer: llmtrain_core::train::AdamWConfig,
    pub schedule: llmtrain_core::train::Schedule,
}

/// The network's file in a checkpoint and in `final/` when the module keeps the default
/// [`save_checkpoint`](LightningModule::save_checkpoint): burn's named MessagePack record in f32.
pub const NET_FILE: &str = "model.mpk";

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// Writes `net` into `dir` as [`NET_FILE`].
pub fn save_net<B: Backend, N: Module<B>>(net: &N, dir: &Path) -> Result<()> {
    let path = dir.join(NET_FILE);
    net.clone()
        .save_file(&path, &recorder())
        .map_err(|err| LightningError::Invalid(format!("{}: cannot write the network: {err}", path.display())))
}

/// Loads [`NET_FILE`] of `dir` into `net` (on the device `net` is on).
pub fn load_net<B: Backend, N: Module<B>>(net: N, dir: &Path) -> Result<N> {
    let path = dir.join(NET_FILE);
    let Some(device) = net.devices().into_iter().next() else {
        return Ok(net);
    };
    if !path.is_file() {
        return Err(LightningError::Invalid(format!(
            "{}: no such file: the checkpoint was not written by this module",
            path.display()
        )));
    }
    net.load_file(&path, &recorder(), &device)
        .map_err(|err| LightningError::Invalid(format!("{}: not a checkpoint of this network: {err}", path.display())))
}

/// What the trainer tells a step.
pub struct StepContext<'a, A: AutodiffBackend> {
    pub device: &'a A::Device,
    /// Optimizer steps done before this one.
    pub step: u64,
    /// This micro-batch's index within the step.
    pub micro_batch: usize,
    pub rank: usize,
    /// A seed for this micro-batch's randomness, from (run seed, step, rank, micro-batch): a resumed run and
    /// any thread timing draw the same. (Dropout in the model already draws from it.)
    pub seed: u64,
    /// Recompute the decoder's layers in backward instead of keeping their activations (the forward should
    /// return its [`DeferredBackward`]), with the saved inputs in host memory when `offload`.
    pub gradient_checkpointing: Option<Recompute>,
    pub(crate) accelerator: &'a Accelerator<A>,
}

impl<A: AutodiffBackend> StepContext<'_, A> {
    /// `values` summed over the ranks, the same on every rank (TRL's `gather_for_metrics(x).sum()`), for what a
    /// loss or a figure needs from this micro-batch on every device, such as KTO's KL estimate. A collective:
    /// every rank calls it equally often in each micro-batch.
    pub fn sum_over_ranks(&self, values: &[f64]) -> Result<Vec<f64>> {
        Ok(self.accelerator.reduce_many(values, ReduceOp::Sum)?)
    }

    /// How many ranks train.
    pub fn world_size(&self) -> usize {
        self.accelerator.world_size()
    }

    /// Under ZeRO stage 3, where the network's released decoder layers are gathered from, one at a time, by the
    /// forward ([`LlamaModel::hidden_states_sharded`](llmtrain_core::model::LlamaModel::hidden_states_sharded)).
    /// `None` when the network holds its parameters whole.
    pub fn layer_source(&self) -> Option<std::sync::Arc<dyn llmtrain_core::model::LayerSource>> {
        self.accelerator.layer_source()
    }
}

/// How a checkpointed forward keeps its saved layer inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recompute {
    pub offload: bool,
}

/// One micro-batch's forward: its summed loss and metrics, and the backward it deferred, if any.
pub struct StepOutput<'n, A: AutodiffBackend> {
    /// Summed loss: the trainer divides by the step's total weight.
    pub loss: Tensor<A, 1>,
    /// Named figures summed over the batch; logged divided by the step's total weight, like the loss.
    pub metrics: Vec<(&'static str, f64)>,
    /// Named ratios with a denominator of their own (say, per token where the weight counts pairs): logged as
    /// TRL logs its figures, the ranks' summed numerators over their summed denominators per micro-batch, then
    /// the mean of that over the step's micro-batches (those with a denominator).
    pub ratios: Vec<(&'static str, f64, f64)>,
    /// A checkpointed forward's layers, backpropagated after the loss.
    pub deferred: Option<Box<dyn DeferredBackward<A> + 'n>>,
}

impl<'n, A: AutodiffBackend> StepOutput<'n, A> {
    pub fn loss(loss: Tensor<A, 1>) -> Self {
        Self { loss, metrics: Vec::new(), ratios: Vec::new(), deferred: None }
    }
}

/// A summed loss and the weight it is divided by (validation, or a step's parts before reduction).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossParts {
    pub sum: f64,
    pub weight: f64,
}
