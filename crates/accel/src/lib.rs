//! llmtrain-accel — Accelerate's role: one [`Accelerator`] that runs the same training loop on one CPU, on several
//! devices of one process, or on several processes and machines (data parallel), plus the launcher and the launch
//! config behind `llmtrain launch` and `llmtrain config`.
//!
//! - [`Accelerator`]: `prepare_model` (rank 0's weights everywhere), `prepare_data` (this rank's shard),
//!   `accumulate` / `sync_gradients`, `backward` (the strategy's gradient synchronisation),
//!   `clip_grad_norm`, `step`, `gather` / `gather_for_metrics` / `reduce`, `wait_for_everyone`,
//!   `save_state` / `load_state`, `unwrap_model`, `is_main_process` / `print`.
//! - [`Strategy`]: where a distributed strategy plugs in ([`DataParallel`] by default; llmtrain-zero's ZeRO
//!   stages through [`Accelerator::with_strategy`]); it owns gradient synchronisation and the optimizer step.
//! - [`Finetune`]: where a finetuning method such as LoRA plugs in ([`FullFinetune`] trains everything); the
//!   training loop that drives the Accelerator is llmtrain-lightning's `Trainer`.
//! - [`run_in_process`]: ranks as threads of this process; [`process_launch_command`]: the `mpirun` / `srun` line.
//! - [`LaunchConfig`]: the launch config file `llmtrain config` writes and `llmtrain launch` reads.
//!
//! ```
//! use burn::backend::Autodiff;
//! use llmtrain_accel::{Accelerator, AcceleratorConfig, ReduceOp, run_in_process};
//! use llmtrain_core::device::CpuBackend;
//!
//! // Two ranks as threads; each contributes its rank + 1 and sees the sum.
//! let sums = run_in_process(2, |comm| {
//!     let acc = Accelerator::<Autodiff<CpuBackend>>::new(AcceleratorConfig::default(), comm)?;
//!     acc.reduce(acc.rank() as f64 + 1.0, ReduceOp::Sum)
//! })
//! .unwrap();
//! assert_eq!(sums, vec![3.0, 3.0]);
//! ```

mod accelerator;
mod buckets;
mod error;
mod finetune;
mod launch;
pub mod launch_config;
mod strategy;

pub use accelerator::{Accelerator, AcceleratorConfig, ReduceOp};
pub use error::{AccelError, Result};
pub use finetune::{Finetune, FullFinetune};
pub use launch::{process_launch_command, run_in_process};
pub use launch_config::ParseChoiceError;
pub use launch_config::{DistributedType, LaunchConfig, LaunchConfigError, Launcher, MixedPrecision};
pub use strategy::{DataParallel, Gather, HeldBytes, Params, Strategy};
