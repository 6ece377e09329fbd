//! llmtrain-zero — DeepSpeed's role: ZeRO's partitioned training states as a strategy of accel's `Accelerator`
//! (and so of the one Trainer), configured by a `[zero]` section.
//!
//! - [`ZeroSection`]: `[zero] stage, reduce_bucket_size, offload_optimizer, offload_param` (DeepSpeed's names);
//!   [`not_partitioned`]: what stage 3 cannot run yet.
//! - [`Zero`]: stages 1 (Adam's moments partitioned: each rank updates its share of the flattened parameters,
//!   then the shares are all-gathered), 2 (gradients reduce-scattered after every micro-batch too) and 3 (the
//!   parameters in shares as well: the model's forward gathers one decoder layer at a time, and again for its
//!   recompute in backward, through the [`LayerSource`](llmtrain_core::model::LayerSource) the strategy hands it;
//!   each layer's gradients are reduce-scattered as soon as its backward made them), over any `Communicator`
//!   (in-process ranks, MPI, NCCL); [`Zero::with_optimizer_offload`] keeps the share's optimizer state in host
//!   memory (ZeRO-Offload). In a checkpoint each rank writes its share of the optimizer state to a file of its
//!   own, with the layout beside them, so a run resumes on any number of ranks and stages; under stage 3 rank 0
//!   writes the model gathering one layer at a time while the other ranks serve the gathers.
//! - [`apply_ds_config`]: a DeepSpeed `ds_config.json` taken as is (`[training] deepspeed = "FILE"`): the batch
//!   triple, precision, optimizer, scheduler and `zero_optimization`, `"auto"` keeping the run's own values.
//! - [`Partition`]: which rank owns which elements (uniform windows for stages 1 and 2, one per layer for 3).
//!
//! Stage 3's shares always live in host memory here, where the collectives work: `offload_param = "cpu"` is what it
//! does (accepted), and keeping them in device memory is not built yet.
//!
//! ```
//! use burn::backend::Autodiff;
//! use llmtrain_accel::{Accelerator, AcceleratorConfig, run_in_process};
//! use llmtrain_core::device::CpuBackend;
//! use llmtrain_zero::{Zero, ZeroStage};
//!
//! let described = run_in_process(2, |comm| {
//!     let zero = Zero::<CpuBackend>::new(ZeroStage::Two, 1 << 20);
//!     let acc = Accelerator::<Autodiff<CpuBackend>>::new(AcceleratorConfig::default(), comm)?
//!         .with_strategy(Box::new(zero));
//!     Ok::<_, llmtrain_accel::AccelError>(acc.describe_strategy())
//! })
//! .unwrap();
//! assert!(described[0].starts_with("ZeRO stage 2"));
//! ```

mod ds_config;
mod partition;
mod section;
mod shards;
mod stage3;
mod strategy;

pub use ds_config::{DsConfigError, apply_ds_config};
pub use partition::{Partition, Segment};
pub use section::{OffloadDevice, ZeroSection, ZeroStage, not_partitioned};
pub use strategy::Zero;
