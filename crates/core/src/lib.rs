//! llmtrain-core — the foundation every llmtrain role crate stands on.
//!
//! - [`model`]: the Llama-family decoder (Llama 2/3, Mistral, Qwen2, TinyLlama, SmolLM), generic over burn's
//!   `Backend`, with a packed-batch training forward and a KV-cached incremental forward; its compute settings
//!   (`model::Compute`: 16-bit activations, flash attention, the fused head + loss), LoRA/DoRA adapters on its
//!   linear layers (`model::LoraAdapter`, attached by llmtrain-fastlora), and the custom-backward kernels
//!   (`model::flash_attention`, `model::fused_loss`).
//! - [`train`]: the causal-LM loss, AdamW, schedules, clipping, checkpoints, metrics, fp16 loss scaling
//!   (`train::LossScaler`, DeepSpeed's semantics) and held-out completion accuracy; the loop itself is
//!   llmtrain-accel's.
//! - [`hf`]: Hugging Face checkpoint directories in and out (config.json in the 4.x and 5.x forms, single or
//!   sharded safetensors, f32/bf16/f16).
//! - [`tokenizer`] and [`chat`]: `tokenizer.json` via the `tokenizers` crate, byte-level BPE training, chat
//!   templates rendered like transformers' `apply_chat_template`.
//! - [`generate`]: greedy, temperature, top-k and top-p sampling with the KV cache.
//! - [`device`]: which backend runs.
//!
//! ```no_run
//! use llmtrain_core::{device::CpuBackend, generate::{SamplingConfig, generate}, hf};
//!
//! let device = Default::default();
//! let (model, _config) = hf::load_model::<CpuBackend>("path/to/checkpoint".as_ref(), &device)?;
//! let logits = model.forward(llmtrain_core::model::tokens_tensor(&[1, 2, 3], 1, &device), None);
//! assert_eq!(logits.dims(), [1, 3, model.config.vocab_size]);
//! let new_tokens = generate(&model, &[1, 2, 3], &SamplingConfig::default(), &device);
//! # Ok::<(), llmtrain_core::CoreError>(())
//! ```

pub mod chat;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod fsutil;
pub mod generate;
pub mod hf;
pub mod interrupt;
pub mod kernels;
pub mod model;
pub mod nf4;
pub mod paths;
pub mod setup;
pub mod tokenizer;
pub mod train;

pub use error::{CoreError, Result};
