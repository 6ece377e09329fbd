//! llmtrain-fastlora — Unsloth's and PEFT's role: LoRA, rsLoRA and DoRA adapters on the decoder's linear layers,
//! read and written in PEFT's exact file format, trained with the base frozen, and merged back into the base.
//!
//! - [`LoraConfig`] / [`TargetModules`]: PEFT's `LoraConfig` (`adapter_config.json`), with list, regex and
//!   `"all-linear"` targets, excludes, rank/alpha patterns, rsLoRA, DoRA, dropout and PEFT's initialisations.
//! - [`attach`]: fresh adapters on the selected modules, everything else frozen (no gradients, so no gradient
//!   buffers and no optimizer state for the base).
//! - [`save_adapter`] / [`load_adapter`]: PEFT adapter directories, both ways.
//! - [`LoraMethod`]: the `[lora]` section as a finetuning method of llmtrain-accel's loop ([`llmtrain_accel::Finetune`]):
//!   adapters attached before training, checkpoints and `final/` holding the adapter alone, LoRA+'s learning rates.
//! - [`merge`]: folds adapters into the base weights (W + s·B·A; DoRA rescales rows), for a plain HF checkpoint.
//!
//! ```no_run
//! use llmtrain_core::device::CpuBackend;
//! use llmtrain_core::model::{LlamaModel, ModelConfig};
//! use llmtrain_fastlora::{LoraConfig, TargetModules, attach, merge, save_adapter};
//!
//! let device = Default::default();
//! let mut model = LlamaModel::<CpuBackend>::init(&ModelConfig::tiny_llama(256, 64, 2, 4, 2), &device, 0);
//! let config = LoraConfig::new(8, 16.0, TargetModules::Pattern("all-linear".into()));
//! let adapted = attach(&mut model, &config, &device)?;
//! assert_eq!(adapted.len(), 2 * 7);
//! save_adapter(&model, &config, std::path::Path::new("adapter"))?;
//! merge(&mut model)?;
//! # Ok::<(), llmtrain_fastlora::LoraError>(())
//! ```

pub mod adapt;
pub mod config;
pub mod error;
mod method;
pub mod peft;
mod section;

pub use adapt::{attach, freeze_base, merge, trainable_params};
pub use config::{InitLoraWeights, LoraConfig, TargetModules};
pub use error::{LoraError, Result};
pub use method::LoraMethod;
pub use peft::{load_adapter, save_adapter, write_adapter_files};
pub use section::LoraSection;
