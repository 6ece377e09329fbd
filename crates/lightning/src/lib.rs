//! llmtrain-lightning — PyTorch Lightning's role, and the engine every objective runs on: one [`Trainer`] (the
//! only training loop in the workspace) runs any [`LightningModule`] on any [`DataModule`] as one rank of an
//! [`Accelerator`](llmtrain_accel::Accelerator)'s world.
//!
//! - [`LightningModule`]: what an objective computes. Its network is any burn `AutodiffModule` (parameters are
//!   found by path); `training_step` returns the micro-batch's summed loss and metrics ([`StepOutput`]) and
//!   `batch_weight` its share of the step's normaliser, so weighted means stay exact across micro-batches and
//!   ranks; a checkpointed forward hands back the backward it deferred. Hooks save and restore the module's
//!   files (by default the network as burn's record, [`NET_FILE`]), write `final/` and log figures before and
//!   after.
//! - [`DataModule`]: training batches (possibly generated from the current network) whose position is part of
//!   every checkpoint, and validation passes; [`Datasets`] serves items held in memory, reshuffled each epoch.
//! - [`Trainer`]: accumulation, clipping, the schedule, validation, metrics, atomic checkpoints, exact resume
//!   (from the last or the best checkpoint, or a directory), graceful stop on SIGINT/SIGTERM; [`optimizer_step`]
//!   is one step of it. [`TrainerSettings::new`] holds Lightning's defaults.
//! - [`callbacks`]: [`EarlyStopping`] and [`ModelCheckpoint`] (top-k by a monitored metric) behind [`Callback`];
//!   [`loggers`]: `metrics.jsonl`, Lightning's CSV layout and TensorBoard event files.
//!
//! `examples/sine_regression.rs` is a whole module (an MLP on generated points) trained with early stopping,
//! top-k checkpoints and both file loggers.
//! - [`run`]: what every objective's run takes from a run config (Trainer settings, callbacks, compute, the
//!   tokenizer and model), shared by [`train`] and llmtrain-trl's trainers.
//! - [`causal_lm`]: `llmtrain train`'s causal-LM objective ([`CausalLm`]) on llmtrain's data loader
//!   ([`LoaderData`]), and [`train`], the job from a run config.
//!
//! ```
//! use burn::backend::Autodiff;
//! use burn::module::AutodiffModule;
//! use burn::tensor::backend::AutodiffBackend;
//! use llmtrain_core::device::CpuBackend;
//! use llmtrain_lightning::{LightningModule, LossParts, Result, StepContext, StepOutput};
//! use llmtrain_core::model::LlamaModel;
//!
//! /// An objective in a few lines: push the final norm's weights towards 1.
//! struct NormToOne;
//!
//! impl<A: AutodiffBackend> LightningModule<A> for NormToOne {
//!     type Net = LlamaModel<A>;
//!     type Batch = usize;
//!     fn batch_weight(&self, _: &usize) -> f64 { 1.0 }
//!     fn training_step<'n>(&self, net: &'n LlamaModel<A>, _: &usize, _: &StepContext<'_, A>) -> Result<StepOutput<'n, A>> {
//!         Ok(StepOutput::loss((net.norm.weight.val() - 1.0).powi_scalar(2).sum()))
//!     }
//!     fn validation_step(&self, _: &LlamaModel<A::InnerBackend>, _: &usize, _: &A::Device) -> Result<LossParts> {
//!         Ok(LossParts::default())
//!     }
//! }
//! # let _ = NormToOne;
//! # type _A = Autodiff<CpuBackend>;
//! ```

pub mod callbacks;
pub mod causal_lm;
mod data;
mod datasets;
mod error;
pub mod loggers;
mod module;
pub mod run;
mod step;
mod trainer;
mod trainer_section;
mod window;

pub use callbacks::{
    Callback, Control, EarlyStopping, EarlyStoppingSection, LearningRateMonitor, Mode, ModelCheckpoint,
    ModelCheckpointSection, ProgressBar, ThroughputMonitor,
};
pub use causal_lm::{CausalLm, LoaderData, TOKEN_METRICS, TrainSummary, train, train_with};
pub use data::DataModule;
pub use datasets::Datasets;
pub use error::{LightningError, Result};
pub use loggers::{Logger, LoggerKind, LoggingSection};
pub use module::{
    InnerNet, LightningModule, LossParts, NET_FILE, Optimizers, Recompute, StepContext, StepOutput, load_net, save_net,
};
pub use step::{StepOptions, StepStats, optimizer_step};
pub use trainer::{FitSummary, Strategy, Trainer, TrainerSettings};
pub use trainer_section::{FastDevRun, TrainerSection};
