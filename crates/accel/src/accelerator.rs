//! The [`Accelerator`]: one object that makes a training loop data parallel, with Accelerate's method names.
//! With a world of one rank every collective is skipped, so single-process training is the same code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use llmtrain_core::data::DataOptions;
use llmtrain_core::dist::{Communicator, InProcess, SharedComm};
use llmtrain_core::error::CoreError;
use llmtrain_core::hf::HostTensor;
use llmtrain_core::model::LayerSource;
use llmtrain_core::train::checkpoint::{
    SHARD_STAGING_PREFIX, SavePlan, TrainerState, save_checkpoint_with, verify_checkpoint,
};
use llmtrain_core::train::param_paths::{fill_params, map_floats, map_trainable, release_params, visit_trainable};
use llmtrain_core::train::{AdamW, AdamWConfig, GradientBuffer, LossScaleConfig, LossScaler, clip_coefficient};

use crate::error::{AccelError, Result};
use crate::launch_config::MixedPrecision;
use crate::strategy::{DataParallel, Gather, HeldBytes, Params, Strategy};

/// How the Accelerator trains: Accelerate's constructor arguments that llmtrain supports.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceleratorConfig {
    /// Micro-batches whose gradients are summed before one optimizer step.
    pub gradient_accumulation_steps: usize,
    /// bf16/fp16 compute (the model's activations; master weights, gradients and optimizer state stay f32).
    pub mixed_precision: MixedPrecision,
    /// fp16 only: DeepSpeed's loss scaling.
    pub loss_scale: LossScaleConfig,
    /// Gradients are all-reduced in flat buckets of about this many MiB (PyTorch DDP's `bucket_cap_mb`).
    pub bucket_cap_mb: f64,
}

impl Default for AcceleratorConfig {
    fn default() -> Self {
        Self {
            gradient_accumulation_steps: 1,
            mixed_precision: MixedPrecision::No,
            loss_scale: LossScaleConfig::default(),
            bucket_cap_mb: 25.0,
        }
    }
}

impl AcceleratorConfig {
    /// Refuses what the accelerator cannot honour (so a rank can check before handing over its communicator).
    pub fn validate(&self) -> Result<()> {
        if self.gradient_accumulation_steps == 0 {
            return Err(AccelError::Config("gradient_accumulation_steps must be at least 1".into()));
        }
        let ls = &self.loss_scale;
        if ls.loss_scale.is_nan() || ls.loss_scale < 0.0 || ls.min_scale.is_nan() || ls.min_scale <= 0.0 {
            return Err(AccelError::Config("loss_scale must be ≥ 0 and min_loss_scale positive".into()));
        }
        if ls.window == 0 || ls.hysteresis == 0 {
            return Err(AccelError::Config("loss_scale_window and hysteresis must be at least 1".into()));
        }
        if self.bucket_cap_mb.is_nan() || self.bucket_cap_mb <= 0.0 {
            return Err(AccelError::Config(format!("bucket_cap_mb must be positive, got {}", self.bucket_cap_mb)));
        }
        Ok(())
    }
}

/// How [`Accelerator::reduce`] combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Mean,
}

/// One rank's handle on data-parallel training: every rank reads its own share of the data; its [`Strategy`]
/// synchronises the gradients and steps the optimizer so that the ranks' models stay identical (plain data
/// parallelism by default: a full replica of the model and optimizer on every rank, gradients all-reduced on
/// synchronising steps).
pub struct Accelerator<A: AutodiffBackend> {
    config: AcceleratorConfig,
    /// Shared with a layer source a model's forward calls (ZeRO stage 3).
    comm: SharedComm,
    strategy: Box<dyn Strategy<A::InnerBackend>>,
    grads: GradientBuffer<A::InnerBackend>,
    /// Micro-batches seen so far (Accelerate's `GradientState.step`).
    micro_step: usize,
    sync_gradients: bool,
    /// Time spent communicating gradients and parameters (the strategy's collectives), for the share of step
    /// time that communication costs.
    comm_time: Duration,
    /// fp16 runs: scales the loss before backward and skips steps whose gradients overflow.
    scaler: Option<LossScaler>,
    /// This step's gradients held an inf or NaN (known once the norm was taken).
    found_overflow: Option<bool>,
    last_step_skipped: bool,
}

impl<A: AutodiffBackend> Accelerator<A> {
    /// An accelerator for the rank `comm` stands for.
    pub fn new(config: AcceleratorConfig, comm: Box<dyn Communicator>) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            comm: SharedComm::new(comm),
            strategy: Box::new(DataParallel),
            grads: GradientBuffer::default(),
            micro_step: 0,
            sync_gradients: true,
            comm_time: Duration::ZERO,
            scaler: (config.mixed_precision == MixedPrecision::Fp16).then(|| LossScaler::new(config.loss_scale)),
            found_overflow: None,
            last_step_skipped: false,
            config,
        })
    }

    /// A world of one rank: plain single-process training.
    pub fn single(config: AcceleratorConfig) -> Result<Self> {
        let comm = InProcess::group(1).pop().ok_or_else(|| AccelError::Config("empty group".into()))?;
        Self::new(config, Box::new(comm))
    }

    /// Synchronises gradients and steps the optimizer with `strategy` instead of plain data parallelism (say, a
    /// ZeRO stage of llmtrain-zero).
    pub fn with_strategy(mut self, strategy: Box<dyn Strategy<A::InnerBackend>>) -> Self {
        self.strategy = strategy;
        self
    }

    /// The strategy's one-line description, for the run summary.
    pub fn describe_strategy(&self) -> String {
        self.strategy.describe()
    }

    pub fn config(&self) -> &AcceleratorConfig {
        &self.config
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Rank 0 alone writes metrics, checkpoints and the final model.
    pub fn is_main_process(&self) -> bool {
        self.rank() == 0
    }

    /// Prints a line once (on the main process).
    pub fn print(&self, line: impl std::fmt::Display) {
        if self.is_main_process() {
            println!("{line}");
        }
    }

    /// Makes every replica start from rank 0's weights (DDP's broadcast at wrap time): every float parameter of
    /// any module, trainable or frozen, by path order. The strategy learns the trainable parameters here.
    pub fn prepare_model<M: AutodiffModule<A>>(&mut self, model: M) -> Result<M> {
        let mut sizes: Vec<(String, usize)> = Vec::new();
        let mut device = None;
        visit_trainable(&model, |path, value: Tensor<A, 1>, _| {
            device.get_or_insert_with(|| value.device());
            sizes.push((path.to_string(), value.dims()[0]));
        });
        sizes.sort();
        self.strategy.prepare(&sizes, &device.unwrap_or_default(), &self.comm)?;
        let model = self.broadcast_model(model)?;
        self.shard_model(model)
    }

    /// Rank 0's float parameters on every rank.
    fn broadcast_model<M: AutodiffModule<A>>(&self, model: M) -> Result<M> {
        if self.world_size() == 1 {
            return Ok(model);
        }
        let mut failed = None;
        let model = map_floats(model, |value: Tensor<A, 1>| {
            if failed.is_some() {
                return value;
            }
            match broadcast(&self.comm, value.clone().inner()) {
                Ok(inner) => Tensor::from_inner(inner),
                Err(err) => {
                    failed = Some(err);
                    value
                }
            }
        });
        failed.map_or(Ok(model), Err)
    }

    /// Under a strategy that keeps the parameters in shares (ZeRO stage 3): this rank keeps its shares of the
    /// model's trainable parameters (whole here, as prepared or as a checkpoint loaded them), and the returned
    /// model holds them released. Any other strategy returns the model as it is.
    pub fn shard_model<M: AutodiffModule<A>>(&mut self, model: M) -> Result<M> {
        if !self.strategy.releases_params() {
            return Ok(model);
        }
        let mut whole = BTreeMap::new();
        let mut failed = None;
        visit_trainable(&model, |path, value: Tensor<A, 1>, _| {
            match value.inner().into_data().convert::<f32>().into_vec() {
                Ok(values) => {
                    whole.insert(path.to_string(), HostTensor { shape: Vec::new(), values });
                }
                Err(e) => failed = Some(AccelError::Tensor(format!("{path}: {e:?}"))),
            }
        });
        if let Some(err) = failed {
            return Err(err);
        }
        let (model, shapes) = release_params(model, |_| true);
        for (path, shape) in shapes {
            if let Some(tensor) = whole.get_mut(&path) {
                tensor.shape = shape;
            }
        }
        self.strategy.keep_shares(whole)?;
        Ok(model)
    }

    /// `model` with the released parameters `scope` asks for put back whole (a collective; the model as it is
    /// under any strategy that releases none).
    pub fn gather_model<M: Module<A>>(&self, model: M, scope: Gather) -> Result<M> {
        if !self.strategy.releases_params() {
            return Ok(model);
        }
        let mut values = self.strategy.gather(scope, &self.comm)?;
        Ok(fill_params(model, &mut values))
    }

    /// Where a model's layer walk gets its released layers from (ZeRO stage 3; `None` otherwise).
    pub fn layer_source(&self) -> Option<Arc<dyn LayerSource>> {
        self.strategy.layer_source(self.comm.clone())
    }

    /// Where rank 0 gets the released layers while it writes a model inside [`on_main_with_layers`]
    /// (Self::on_main_with_layers) (ZeRO stage 3; `None` otherwise).
    pub fn driven_layer_source(&self) -> Option<Arc<dyn LayerSource>> {
        self.strategy.driven_layer_source(self.comm.clone())
    }

    /// Runs `write` on rank 0 (returning what it returns) while the other ranks take part in the layer gathers
    /// its [`driven_layer_source`](Self::driven_layer_source) asks for; without released parameters the other
    /// ranks just return `None`. A collective.
    pub fn on_main_with_layers<T>(&self, write: impl FnOnce() -> T) -> Result<Option<T>> {
        if !self.is_main_process() {
            self.strategy.serve_layers(&self.comm)?;
            return Ok(None);
        }
        let written = write();
        // Whatever `write` did, the serving ranks are released.
        self.strategy.end_serving(&self.comm)?;
        Ok(Some(written))
    }

    /// Whether the strategy keeps the trainable parameters in shares between uses (ZeRO stage 3).
    pub fn releases_params(&self) -> bool {
        self.strategy.releases_params()
    }

    /// The data options for this rank's shard: each rank takes its `batch_size` rows of every global batch.
    pub fn prepare_data(&self, options: &DataOptions) -> DataOptions {
        DataOptions { rank: self.rank(), world_size: self.world_size(), ..options.clone() }
    }

    /// Starts a micro-batch (Accelerate's `with accelerator.accumulate(model)`): returns whether its backward
    /// completes an optimizer step, and so synchronises gradients across ranks.
    pub fn accumulate(&mut self) -> bool {
        self.micro_step += 1;
        self.sync_gradients = self.micro_step.is_multiple_of(self.config.gradient_accumulation_steps);
        self.sync_gradients
    }

    /// Whether the current micro-batch completes an optimizer step.
    pub fn sync_gradients(&self) -> bool {
        self.sync_gradients
    }

    /// Backward of `loss` divided by the accumulation steps (and multiplied by the loss scale in fp16); its
    /// gradients are added to this rank's sum and handed to the strategy (plain data parallelism averages them
    /// over ranks on a synchronising micro-batch: a bucketed all-reduce), then unscaled.
    pub fn backward<M: Module<A>>(&mut self, model: &M, loss: Tensor<A, 1>) -> Result<()> {
        self.backward_with(|grads, divisor| grads.accumulate(model, &loss.div_scalar(divisor).backward()))
    }

    /// [`backward`](Self::backward) for gradients the caller computes itself (a checkpointed forward adds them
    /// layer by layer): `compute(buffer, divisor)` adds to `buffer` the gradients of its loss divided by
    /// `divisor` (the accumulation steps over the loss scale); the synchronisation follows as for `backward`.
    pub fn backward_with<T>(
        &mut self,
        compute: impl FnOnce(&mut GradientBuffer<A::InnerBackend>, f64) -> T,
    ) -> Result<T> {
        let divisor = self.config.gradient_accumulation_steps as f64 / self.loss_scale().unwrap_or(1.0);
        let out = compute(&mut self.grads, divisor);
        self.synchronise()?;
        if self.sync_gradients
            && let Some(scale) = self.loss_scale()
        {
            self.strategy.scale_gradients(&mut self.grads, 1.0 / scale);
            self.found_overflow = None;
        }
        Ok(out)
    }

    /// Hands the micro-batch's gradients to the strategy (plain data parallelism averages them over ranks on a
    /// synchronising micro-batch).
    fn synchronise(&mut self) -> Result<()> {
        // The strategy's own collectives since last asked (ZeRO stage 3's gathers in the forward and backward).
        self.comm_time += self.strategy.take_communication_time();
        let started = Instant::now();
        let bucket_elems = ((self.config.bucket_cap_mb * 1024.0 * 1024.0 / 4.0) as usize).max(1);
        self.strategy.reduce_gradients(&mut self.grads, &self.comm, self.sync_gradients, bucket_elems)?;
        if self.world_size() > 1 {
            // The strategy's collectives, with the host copies around them (as the bucketed all-reduce's).
            self.comm_time += started.elapsed();
            self.strategy.take_communication_time();
        }
        Ok(())
    }

    /// Clips the summed gradients to a global L2 norm (PyTorch's `clip_grad_norm_`: scaled by
    /// max_norm / (norm + 1e-6) when that is below 1) and returns the norm before clipping, the same on every
    /// rank (a collective under a strategy whose ranks hold parts of the gradients).
    ///
    /// In fp16 a non-finite norm marks the step as overflowed: nothing is clipped and [`step`](Self::step) skips.
    pub fn clip_grad_norm(&mut self, max_norm: Option<f64>) -> Result<f64> {
        let norm = self.strategy.grad_norm(&self.grads, &self.comm)?;
        // Clipping an overflowed step's gradients is harmless: `step` drops them.
        if let Some(coef) = clip_coefficient(norm, max_norm) {
            self.strategy.scale_gradients(&mut self.grads, coef);
        }
        if self.scaler.is_some() {
            self.found_overflow = Some(!norm.is_finite());
        }
        Ok(norm)
    }

    /// Applies the optimizer on a synchronising micro-batch (a no-op otherwise, as Accelerate's wrapped
    /// optimizer) and returns the model, updated or not ([`optimizer_step_was_skipped`](Self::optimizer_step_was_skipped)
    /// tells). In fp16 a step whose gradients overflowed is skipped (its gradients dropped) and the loss scale
    /// updated, as DeepSpeed does; every rank holds the same reduced gradients, so all ranks decide alike. Fails
    /// when the scale is already at its floor and still overflows.
    pub fn step<M: Module<A>>(&mut self, model: M, optimizer: &mut AdamW<A::InnerBackend>, lr: f64) -> Result<M> {
        if !self.sync_gradients {
            return Ok(model);
        }
        self.last_step_skipped = false;
        if self.scaler.is_some() {
            let overflow = match self.found_overflow.take() {
                Some(overflow) => overflow,
                None => !self.strategy.grad_norm(&self.grads, &self.comm)?.is_finite(),
            };
            if let Some(scaler) = self.scaler.as_mut() {
                scaler.update(overflow).map_err(|e| AccelError::Config(e.to_string()))?;
            }
            if overflow {
                self.strategy.clear_gradients(&mut self.grads);
                self.last_step_skipped = true;
                return Ok(self.release(model));
            }
        }
        let mut params: Params<A::InnerBackend> = Params::new();
        visit_trainable(&model, |path, value: Tensor<A, 1>, matrix| {
            params.insert(path.to_string(), (value.inner(), matrix));
        });
        let mut updated = self.strategy.step(params, &mut self.grads, optimizer, lr, &self.comm)?;
        self.comm_time += self.strategy.take_communication_time();
        if self.strategy.releases_params() {
            // The updated shares stay with the strategy.
            return Ok(self.release(model));
        }
        Ok(map_trainable(model, |path, _, _| updated.remove(path).map(Tensor::from_inner)))
    }

    /// Under a strategy that keeps the parameters in shares: the model with what a step had gathered released
    /// again (the model as it is otherwise).
    fn release<M: Module<A>>(&self, model: M) -> M {
        if self.strategy.releases_params() { release_params(model, |_| true).0 } else { model }
    }

    /// What the strategy keeps on this rank between steps, when it counts (ZeRO).
    pub fn held_bytes(&self, optimizer: &AdamW<A::InnerBackend>) -> Option<HeldBytes> {
        self.strategy.held_bytes(&self.grads, optimizer)
    }

    /// Whether the last synchronising step was skipped for an fp16 overflow (Accelerate's
    /// `optimizer_step_was_skipped`).
    pub fn optimizer_step_was_skipped(&self) -> bool {
        self.last_step_skipped
    }

    /// The current fp16 loss scale (`None` unless fp16).
    pub fn loss_scale(&self) -> Option<f64> {
        self.scaler.as_ref().map(|s| s.scale)
    }

    /// Steps skipped for fp16 overflows so far.
    pub fn skipped_steps(&self) -> u64 {
        self.scaler.as_ref().map_or(0, |s| s.skipped_steps)
    }

    /// Every rank's `values` (of equal length), concatenated in rank order.
    pub fn gather(&self, values: &[f32]) -> Result<Vec<f32>> {
        if self.world_size() == 1 {
            return Ok(values.to_vec());
        }
        Ok(self.comm.all_gather(values)?)
    }

    /// [`gather`](Self::gather) for evaluation: when the last batch was filled up with repeated samples so that
    /// every rank had one, only the first `samples_left` gathered values are real and the rest is dropped.
    /// (llmtrain's own eval split is not padded: ranks may hold different numbers of batches, so the trainer sums
    /// locally and reduces once after the pass; gather per batch only from loaders that give every rank equal
    /// batches.)
    pub fn gather_for_metrics(&self, values: &[f32], samples_left: usize) -> Result<Vec<f32>> {
        let mut all = self.gather(values)?;
        all.truncate(samples_left);
        Ok(all)
    }

    /// `value` combined over ranks (identical on every rank).
    pub fn reduce(&self, value: f64, op: ReduceOp) -> Result<f64> {
        self.reduce_many(&[value], op).map(|v| v[0])
    }

    /// Several values combined over ranks in one collective, in f64 (token counts and loss sums keep their
    /// precision) and added in rank order.
    pub fn reduce_many(&self, values: &[f64], op: ReduceOp) -> Result<Vec<f64>> {
        let mut values = values.to_vec();
        if self.world_size() == 1 {
            return Ok(values);
        }
        self.comm.all_reduce_sum_f64(&mut values)?;
        if op == ReduceOp::Mean {
            let world = self.world_size() as f64;
            values.iter_mut().for_each(|v| *v /= world);
        }
        Ok(values)
    }

    /// Returns once every rank got here.
    pub fn wait_for_everyone(&self) -> Result<()> {
        Ok(self.comm.barrier()?)
    }

    /// Saves the training state as `output_dir/checkpoint-<step>/` (named and pruned as `plan` says): `write_files`
    /// writes the trained module's files (a model, an adapter, a tokenizer), then the optimizer and the trainer
    /// state with this run's world size and rows per micro-batch. Written by rank 0, atomically, then every rank
    /// waits for it: the ranks' models and data position are the same, so one copy is every rank's. The optimizer
    /// is rank 0's whole one, or, under a strategy whose ranks hold parts of it, each rank's part (written by the
    /// ranks into a staging directory that rank 0 moves into the checkpoint).
    pub fn save_state(
        &self,
        output_dir: &Path,
        optimizer: &AdamW<A::InnerBackend>,
        mut state: TrainerState,
        plan: &SavePlan,
        write_files: impl FnOnce(&Path) -> llmtrain_core::Result<()>,
    ) -> Result<Option<PathBuf>> {
        state.world_size = self.world_size();
        state.loss_scaler = self.scaler.clone();
        // A strategy whose ranks hold parts of the optimizer has each rank write its part into a staging directory
        // (emptied first: a save that did not finish may have left one); rank 0 moves the parts into the
        // checkpoint, where the state's digests cover them.
        let staging = output_dir.join(format!("{SHARD_STAGING_PREFIX}{}", state.step));
        let parts = self.strategy.optimizer_files(self.world_size());
        if !parts.is_empty() {
            if self.is_main_process() && staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(|e| CoreError::io(&staging, e))?;
            }
            self.wait_for_everyone()?;
            self.strategy.write_optimizer_shard(optimizer, &staging, &self.comm)?;
            self.wait_for_everyone()?;
        }
        // Rank 0 writes; under ZeRO stage 3 the others serve the layer gathers of its model files meanwhile.
        let whole = parts.is_empty().then_some(optimizer);
        let written = self
            .on_main_with_layers(|| {
                save_checkpoint_with(output_dir, whole, state, plan, |dir| {
                    write_files(dir)?;
                    if !parts.is_empty() {
                        move_parts(&staging, &parts, dir)?;
                    }
                    Ok(())
                })
            })?
            .transpose()?;
        self.wait_for_everyone()?;
        Ok(written)
    }

    /// Loads the optimizer and trainer state of a checkpoint written by [`save_state`](Self::save_state)
    /// (the module restores its own files; the strategy reads its optimizer, whole or in parts, from the
    /// checkpoint's files). A checkpoint of another number of ranks is refused unless it read as many rows per micro-batch
    /// over all ranks as this run reads (`global_batch`): its data position counts those. An fp16 run continues
    /// with the saved loss scale.
    pub fn load_state(
        &mut self,
        dir: &Path,
        optimizer: AdamWConfig,
        device: &A::Device,
        global_batch: Option<u64>,
    ) -> Result<(AdamW<A::InnerBackend>, TrainerState)> {
        let state = verify_checkpoint(dir)?;
        // Rows per optimizer step over all ranks: the same with fewer ranks accumulating more micro-batches. A
        // checkpoint that does not record its accumulation is held to the rows per micro-batch alone.
        let per_step = |rows: Option<u64>, accumulation: Option<usize>| rows?.checked_mul(accumulation? as u64);
        let saved_step = per_step(state.global_batch, state.gradient_accumulation_steps);
        let same_step =
            saved_step.is_some() && saved_step == per_step(global_batch, Some(self.config.gradient_accumulation_steps));
        let same_batch = global_batch.is_some() && (state.global_batch == global_batch || same_step);
        if state.world_size != self.world_size() && !same_batch {
            let (dir, saved, current) = (dir.to_path_buf(), state.world_size, self.world_size());
            return Err(match (state.global_batch, global_batch) {
                (Some(saved_rows), Some(current_rows)) => {
                    AccelError::GlobalBatchMismatch { dir, saved, saved_rows, current, current_rows }
                }
                _ => AccelError::WorldSizeMismatch { dir, saved, current },
            });
        }
        if let (Some(scaler), Some(saved)) = (self.scaler.as_mut(), state.loss_scaler.as_ref()) {
            *scaler = saved.clone();
        }
        let optimizer = self.strategy.load_optimizer(dir, optimizer, device, &self.comm)?;
        Ok((optimizer, state))
    }

    /// The bare model for inference and saving: without the autodiff graph, and whole (under ZeRO stage 3 the
    /// released parameters are gathered: a collective).
    pub fn unwrap_model<M: AutodiffModule<A>>(&self, model: &M) -> Result<M::InnerModule> {
        Ok(self.gather_model(model.clone(), Gather::All)?.valid())
    }

    /// Tells the other ranks this one failed, so none waits forever.
    pub fn abort(&self, reason: &str) {
        self.comm.abort(reason);
    }

    /// Wall time spent communicating gradients and parameters so far.
    pub fn communication_time(&self) -> Duration {
        self.comm_time
    }
}

/// Moves the optimizer `parts` the ranks wrote into `staging` into the checkpoint directory `to`, then removes
/// `staging`. A part not there means a rank wrote elsewhere: its own machine's disk.
fn move_parts(staging: &Path, parts: &[String], to: &Path) -> llmtrain_core::Result<()> {
    for name in parts {
        let from = staging.join(name);
        if !from.is_file() {
            return Err(CoreError::key(
                staging,
                name,
                "this part of the optimizer state was not written here: every rank must write checkpoints to one \
                 shared file system (the output directory at the same path on every machine)",
            ));
        }
        std::fs::rename(&from, to.join(name)).map_err(|e| CoreError::io(&from, e))?;
    }
    std::fs::remove_dir_all(staging).map_err(|e| CoreError::io(staging, e))
}

/// Rank 0's value of one tensor, on every rank.
fn broadcast<B: burn::tensor::backend::Backend>(comm: &dyn Communicator, value: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
    let device = value.device();
    let mut host: Vec<f32> = value.into_data().convert::<f32>().into_vec().map_err(AccelError::tensor)?;
    comm.broadcast(&mut host, 0)?;
    let n = host.len();
    Ok(Tensor::from_data(TensorData::new(host, [n]), &device))
}
