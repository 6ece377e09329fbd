//! Where a distributed strategy plugs into the [`Accelerator`](crate::Accelerator) (as Accelerate takes a
//! DeepSpeed plugin): what happens to the gradients after each backward, how their norm is taken, how the
//! optimizer steps, and what of the optimizer a checkpoint holds. [`DataParallel`] is plain data parallelism
//! (every rank a full replica); llmtrain-zero's ZeRO stages are the others.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use llmtrain_core::dist::{Communicator, SharedComm};
use llmtrain_core::hf::HostTensor;
use llmtrain_core::model::LayerSource;
use llmtrain_core::train::checkpoint::load_optimizer;
use llmtrain_core::train::{AdamW, AdamWConfig, GradientBuffer};

use crate::buckets::all_reduce_mean;
use crate::error::Result;

/// A model's trainable parameters by path: each value flattened, and whether it is a matrix (weight decay
/// applies to matrices only).
pub type Params<B> = BTreeMap<String, (Tensor<B, 1>, bool)>;

/// What a strategy keeps between steps on this rank, in bytes (DeepSpeed's model states).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldBytes {
    /// Trainable parameters kept whole on this rank.
    pub params: u64,
    /// Gradients of one step.
    pub grads: u64,
    /// Optimizer state (Adam's moments) on the training device.
    pub optimizer: u64,
    /// Optimizer state kept in host memory instead (ZeRO-Offload).
    pub offloaded_optimizer: u64,
    /// The largest temporary buffer of a step (a gathered bucket of parameters or gradients).
    pub transient_peak: u64,
}

/// Which of the parameters a strategy keeps in shares (ZeRO stage 3) are asked for whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gather {
    /// Those a training step needs whole throughout (outside the decoder layers, which the model's layer walk
    /// gathers one at a time).
    Step,
    /// Every one (validation, checkpoints, the final model).
    All,
}

/// How gradients are synchronised and parameters updated across ranks. Every method that takes the
/// communicator is a collective: all ranks call it in the same order.
pub trait Strategy<B: Backend>: Send {
    /// One line for the run summary.
    fn describe(&self) -> String;

    /// Told the trainable parameters (path and elements, in path order) and their device when the model is
    /// prepared, before any step or checkpoint load.
    fn prepare(&mut self, _sizes: &[(String, usize)], _device: &B::Device, _comm: &dyn Communicator) -> Result<()> {
        Ok(())
    }

    /// Time spent in the strategy's own collectives (those of [`step`](Self::step), say) since last asked; the
    /// Accelerator times [`reduce_gradients`](Self::reduce_gradients) itself.
    fn take_communication_time(&mut self) -> Duration {
        Duration::ZERO
    }

    /// After each micro-batch's backward has added its gradients to `grads` (summed over the step's micro-batches
    /// so far); `sync` on the step's last micro-batch. `bucket_elems`: values per collective.
    fn reduce_gradients(
        &mut self,
        grads: &mut GradientBuffer<B>,
        comm: &dyn Communicator,
        sync: bool,
        bucket_elems: usize,
    ) -> Result<()>;

    /// The global L2 norm of the step's synchronised gradients.
    fn grad_norm(&self, grads: &GradientBuffer<B>, comm: &dyn Communicator) -> Result<f64>;

    /// Multiplies the step's gradients by `factor` (clipping; the fp16 loss scale's undoing).
    fn scale_gradients(&mut self, grads: &mut GradientBuffer<B>, factor: f64);

    /// Drops the step's gradients (an fp16 step skipped for an overflow).
    fn clear_gradients(&mut self, grads: &mut GradientBuffer<B>);

    /// One optimizer update at learning rate `lr`: the new values of the trainable parameters (every one in
    /// `params` that had a gradient), the same on every rank. The step's gradients are consumed.
    fn step(
        &mut self,
        params: Params<B>,
        grads: &mut GradientBuffer<B>,
        optimizer: &mut AdamW<B>,
        lr: f64,
        comm: &dyn Communicator,
    ) -> Result<BTreeMap<String, Tensor<B, 1>>>;

    /// The files a checkpoint of `world` ranks holds the optimizer state in, when the ranks write their parts
    /// themselves; none (the default) when every rank's optimizer is whole, so that rank 0 writes it as one file.
    fn optimizer_files(&self, _world: usize) -> Vec<String> {
        Vec::new()
    }

    /// For a checkpoint: writes this rank's part of the optimizer state into the directory `staging` (every rank
    /// does, before rank 0 moves [`optimizer_files`](Self::optimizer_files) into the checkpoint).
    fn write_optimizer_shard(&self, _optimizer: &AdamW<B>, _staging: &Path, _comm: &dyn Communicator) -> Result<()> {
        Ok(())
    }

    /// This rank's optimizer from checkpoint `dir` (whatever number of ranks wrote it, as one file or in shards).
    fn load_optimizer(
        &mut self,
        dir: &Path,
        config: AdamWConfig,
        device: &B::Device,
        _comm: &dyn Communicator,
    ) -> Result<AdamW<B>> {
        Ok(load_optimizer(dir, config, device)?)
    }

    /// Whether the trainable parameters live in shares between uses (ZeRO stage 3): the model then holds them
    /// released, and [`gather`](Self::gather) puts them together.
    fn releases_params(&self) -> bool {
        false
    }

    /// Takes this rank's shares of the trainable parameters from their whole values (by path, each with its
    /// shape), before the model releases them: when the model is prepared and after a checkpoint is loaded.
    fn keep_shares(&mut self, _whole: BTreeMap<String, HostTensor>) -> Result<()> {
        Ok(())
    }

    /// The released parameters `scope` asks for, whole, by path (a collective).
    fn gather(&self, _scope: Gather, _comm: &dyn Communicator) -> Result<BTreeMap<String, HostTensor>> {
        Ok(BTreeMap::new())
    }

    /// Where a model's layer walk gets its released layers and sends their gradients, over `comm`.
    fn layer_source(&self, _comm: SharedComm) -> Option<Arc<dyn LayerSource>> {
        None
    }

    /// For rank 0 alone (writing a checkpoint or `final/`): a layer source whose every gather first tells the
    /// other ranks, which [`serve_layers`](Self::serve_layers) meanwhile, which layer to gather.
    fn driven_layer_source(&self, _comm: SharedComm) -> Option<Arc<dyn LayerSource>> {
        None
    }

    /// On every rank but 0: takes part in each gather rank 0's driven source asks for, until rank 0 calls
    /// [`end_serving`](Self::end_serving).
    fn serve_layers(&self, _comm: &dyn Communicator) -> Result<()> {
        Ok(())
    }

    /// On rank 0: tells the serving ranks that no more gathers follow.
    fn end_serving(&self, _comm: &dyn Communicator) -> Result<()> {
        Ok(())
    }

    /// What this rank keeps between steps; `None` when the strategy does not count (plain data parallelism).
    fn held_bytes(&self, _grads: &GradientBuffer<B>, _optimizer: &AdamW<B>) -> Option<HeldBytes> {
        None
    }
}

/// Plain data parallelism (PyTorch DDP): gradients averaged over ranks in buckets on the step's last
/// micro-batch, then every rank applies the same update to its full replica.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataParallel;

impl<B: Backend> Strategy<B> for DataParallel {
    fn describe(&self) -> String {
        "data parallel (every rank a full replica)".into()
    }

    fn reduce_gradients(
        &mut self,
        grads: &mut GradientBuffer<B>,
        comm: &dyn Communicator,
        sync: bool,
        bucket_elems: usize,
    ) -> Result<()> {
        if sync && comm.world_size() > 1 {
            all_reduce_mean(grads, comm, bucket_elems)?;
        }
        Ok(())
    }

    fn grad_norm(&self, grads: &GradientBuffer<B>, _comm: &dyn Communicator) -> Result<f64> {
        // Every rank holds the same reduced gradients: the norm is global without communication.
        Ok(grads.global_norm())
    }

    fn scale_gradients(&mut self, grads: &mut GradientBuffer<B>, factor: f64) {
        grads.scale(factor);
    }

    fn clear_gradients(&mut self, grads: &mut GradientBuffer<B>) {
        grads.clear();
    }

    fn step(
        &mut self,
        params: Params<B>,
        grads: &mut GradientBuffer<B>,
        optimizer: &mut AdamW<B>,
        lr: f64,
        _comm: &dyn Communicator,
    ) -> Result<BTreeMap<String, Tensor<B, 1>>> {
        Ok(optimizer.step_params(params, grads, lr))
    }
}
