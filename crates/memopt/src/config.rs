//! `[memopt]`: the memory techniques, each off by default. llmtrain-memopt owns the section; the model runs
//! what it asks for (llmtrain-core's `model::Compute`, `LossScaler`).

use llmtrain_core::config::{AttentionImpl, ConfigSection, InvalidKey, MixedPrecision};
use llmtrain_core::train::LossScaleConfig;
use serde::{Deserialize, Serialize};

/// The memory techniques (llmtrain-memopt), each off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoptSection {
    /// Keep only each decoder layer's input in the forward pass and recompute the layer in backward.
    pub gradient_checkpointing: bool,
    /// With checkpointing, keep each layer's input in host memory instead of on the device (for GPUs).
    pub checkpoint_offload: bool,
    /// The forward and backward passes' float type; master weights and optimizer state stay f32.
    pub mixed_precision: MixedPrecision,
    /// `eager` (scores and probabilities kept for backward) or `flash` (tiled, recomputed in backward).
    pub attention: AttentionImpl,
    /// Rows of queries and keys per tile of flash attention.
    pub flash_block: usize,
    /// The head fused with cross-entropy over chunks of rows, so the `[tokens × vocab]` logits never exist.
    pub fused_cross_entropy: bool,
    /// Rows per chunk of the fused head and loss.
    pub cross_entropy_chunk: usize,
    /// RMSNorm, SwiGLU and RoPE as single autodiff nodes that keep only their inputs (Unsloth's kernels), run by
    /// the backend's kernels (`llmtrain_core::kernels::Kernels`). On by default: exact within each op's tolerance,
    /// less memory, and on the CPU a quarter off a step; `false` gives burn's composed ops.
    pub fused_kernels: bool,
    /// fp16 loss scaling, DeepSpeed's `fp16` section: `loss_scale` 0 means dynamic.
    pub loss_scale: f64,
    pub initial_scale_power: u32,
    pub loss_scale_window: u64,
    pub hysteresis: u32,
    pub min_loss_scale: f64,
}

impl Default for MemoptSection {
    fn default() -> Self {
        Self {
            gradient_checkpointing: false,
            checkpoint_offload: false,
            mixed_precision: MixedPrecision::No,
            attention: AttentionImpl::Eager,
            flash_block: 128,
            fused_cross_entropy: false,
            cross_entropy_chunk: 1024,
            fused_kernels: true,
            loss_scale: 0.0,
            initial_scale_power: 16,
            loss_scale_window: 1000,
            hysteresis: 2,
            min_loss_scale: 1.0,
        }
    }
}

impl ConfigSection for MemoptSection {
    const NAME: &'static str = "memopt";

    fn validate(&self) -> Result<(), InvalidKey> {
        let bad = |key: &str, message: &str| Err(InvalidKey::new(key, message));
        if self.cross_entropy_chunk == 0 {
            return bad("cross_entropy_chunk", "must be at least 1");
        }
        if self.flash_block == 0 {
            return bad("flash_block", "must be at least 1");
        }
        if self.checkpoint_offload && !self.gradient_checkpointing {
            return bad("checkpoint_offload", "needs `gradient_checkpointing = true`");
        }
        if self.loss_scale.is_nan() || self.loss_scale < 0.0 {
            return bad("loss_scale", "must be 0 (dynamic) or a positive static scale");
        }
        if self.min_loss_scale.is_nan() || self.min_loss_scale <= 0.0 {
            return bad("min_loss_scale", "must be positive");
        }
        if self.loss_scale_window == 0 {
            return bad("loss_scale_window", "must be at least 1");
        }
        if self.hysteresis == 0 {
            return bad("hysteresis", "must be at least 1");
        }
        Ok(())
    }
}

impl From<&MemoptSection> for LossScaleConfig {
    fn from(m: &MemoptSection) -> Self {
        Self {
            loss_scale: m.loss_scale,
            initial_scale_power: m.initial_scale_power,
            window: m.loss_scale_window,
            hysteresis: m.hysteresis,
            min_scale: m.min_loss_scale,
        }
    }
}
