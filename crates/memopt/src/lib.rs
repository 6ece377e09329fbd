//! llmtrain-memopt — the memory techniques and a memory estimator. Every technique is a `[memopt]` switch of the
//! run config. Those the model itself must run live in llmtrain-core (`model::Compute`: 16-bit compute,
//! `model::flash_attention`, `model::fused_loss`; `train::LossScaler` for fp16); the rest are here:
//!
//! - [`recompute`]: gradient checkpointing per decoder layer as a property of the forward
//!   (`LlamaModel::hidden_states_recomputed`, recompute in backward); it lives in llmtrain-core, re-exported
//!   here, because the model runs it.
//! - [`MemoptSection`]: the run config's `[memopt]` section, which this crate owns.
//! - [`estimate`]: memory per device before a run (`llmtrain estimate-memory`): weights, gradients and optimizer
//!   state by DeepSpeed's ZeRO accounting for each stage, full / LoRA / QLoRA, fp32 / mixed / bf16, plus, for a
//!   batch shape, the activations autodiff keeps (f32 or 16-bit compute, eager or flash attention, with or
//!   without checkpointing) and the CPU trainer's peak resident memory per step.
//! - [`nf4`]: NF4 4-bit quantization with double quantization, byte for byte as bitsandbytes on the CPU
//!   (quantize, pack, dequantize; ~4.127 bits per weight). It lives in llmtrain-core, re-exported here, because
//!   the model runs it: a QLoRA base layer is `model::LinearWeight::Nf4` (`model::Nf4Weight`, dequantized on
//!   the fly by tensor ops, with its own backward), and checkpoints are quantized as they load.
//!
//! ```
//! use llmtrain_memopt::estimate::{AttentionImpl, MixedPrecision, EstimateInput, Method, Offload, Precision, estimate};
//!
//! // The ZeRO paper's example: 7.5B parameters, 64 GPUs, mixed precision, stage 3.
//! let input = EstimateInput {
//!     params: 7_500_000_000, model: None, method: Method::Full, lora_rank: 16, precision: Precision::Mixed,
//!     compute: MixedPrecision::Bf16, attention: AttentionImpl::Eager, zero_stage: 3, gpus: 64, offload: Offload::None, batch: None,
//!     gradient_checkpointing: false, fused_loss_chunk: None,
//! };
//! let per_device = estimate(&input).unwrap();
//! assert_eq!((per_device.model_states() / 1e8).round() / 10.0, 1.9); // GB
//! ```

mod config;
pub mod estimate;
pub use config::MemoptSection;
pub use llmtrain_core::model::recompute;
pub use llmtrain_core::nf4;
