//! Memory per device before a run starts: model states by DeepSpeed's ZeRO accounting (weights, gradients,
//! optimizer state, each sharded over the data-parallel ranks by the stage), activations for a given batch shape,
//! and the peak resident memory of one training step of this crate's CPU trainer ([`CpuPeak`]).
//!
//! - here: what goes in ([`EstimateInput`]) and comes out ([`MemoryEstimate`]), the model states ([`estimate`])
//!   and the parameter counts ([`count_params`], [`lora_params`], [`parse_param_count`]);
//! - `known_shapes`: the published shapes of common families ([`KNOWN_SHAPES`], [`Family`], [`standard_shape`]),
//!   which a bare parameter count (`--params 7B`) stands for;
//! - `activations`: the tensors burn's autodiff keeps for backward, op by op ([`activation_bytes`], [`StepKind`]),
//!   with the plain loss over full logits or the head fused with it (`[memopt] fused_cross_entropy`);
//! - `cpu_peak`: the CPU trainer's peak resident set per step ([`cpu_peak()`], [`CpuPeak`], [`PeakMoment`]):
//!   the process baseline, states, saved tensors, the running op's transient and what the allocator keeps.

mod activations;
mod cpu_peak;
mod known_shapes;

pub use activations::{StepKind, activation_bytes};
pub use cpu_peak::{
    CpuPeak, MMAP_THRESHOLD_MAX, PROCESS_BASELINE, PeakMoment, RankStates, allocator_retention, cpu_peak,
};
pub use known_shapes::{Family, KNOWN_SHAPES, KnownShape, NoSuchShape, known_sizes, standard_shape};

pub use llmtrain_core::config::{AttentionImpl, MixedPrecision};
use llmtrain_core::model::ModelConfig;

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every parameter.
    Full,
    /// A low-rank adapter on every linear layer; the base is frozen (no gradients, no optimizer state).
    Lora,
    /// LoRA over a base stored in NF4 with double quantization.
    Qlora,
}

/// How weights, gradients and optimizer state are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 everything: 4 + 4 bytes, Adam's m and v 8 bytes per parameter.
    Fp32,
    /// fp16/bf16 compute copy and gradients (2 + 2 bytes) with an f32 master copy, m and v (K = 12), as ZeRO's paper
    /// counts mixed precision.
    Mixed,
    /// bf16 weights, gradients and Adam state, no f32 master (Lightning's "bf16-true"): 2 + 2 + 4 bytes.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Mixed => "mixed",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Bytes per parameter of (compute weights, gradients, optimizer state).
fn bytes_per_param(precision: Precision) -> (f64, f64, f64) {
    match precision {
        Precision::Fp32 => (4.0, 4.0, 8.0),
        Precision::Mixed => (2.0, 2.0, 12.0),
        Precision::Bf16 => (2.0, 2.0, 4.0),
    }
}

/// NF4 with double quantization: 4 bits per weight, one 8-bit absmax per 64 weights, one f32 scale per 256
/// absmax values (4 + 8/64 + 32/(64·256) ≈ 4.127 bits).
pub const NF4_DOUBLE_QUANT_BITS: f64 = 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0);

/// Where ZeRO-Offload keeps the model states a rank does not need on its device (DeepSpeed's `offload_optimizer`
/// and `offload_param`, device `cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offload {
    /// Everything on the device.
    #[default]
    None,
    /// ZeRO-Offload: the optimizer state (with the f32 master weights) and the gradient partition in host memory;
    /// the update runs on the CPU. Stages 1–3.
    Optimizer,
    /// ZeRO-Infinity's CPU form: the parameters' partitions too; the device holds only the layers being computed.
    /// Stage 3.
    OptimizerAndParams,
}

impl Offload {
    /// The name `recommend --json` and the tables print: `none`, `optimizer`, `optimizer+params`.
    pub fn name(self) -> &'static str {
        match self {
            Offload::None => "none",
            Offload::Optimizer => "optimizer",
            Offload::OptimizerAndParams => "optimizer+params",
        }
    }
}

/// The activations' type `--precision` implies: f32 for fp32, bf16 for mixed (16-bit compute over f32 master
/// weights) and for bf16 (bf16 everything). fp16 is the other 16-bit choice under mixed; it takes the same bytes.
pub fn compute_for(precision: Precision) -> MixedPrecision {
    match precision {
        Precision::Fp32 => MixedPrecision::No,
        Precision::Mixed | Precision::Bf16 => MixedPrecision::Bf16,
    }
}

/// The batch whose activations are counted: rows per device (one micro-batch) of `seq` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    pub batch: usize,
    pub seq: usize,
}

/// Everything the estimate depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct EstimateInput {
    /// Parameters of the model.
    pub params: u64,
    /// The model's shape, when known (needed for LoRA's adapter size and for activations).
    pub model: Option<ModelConfig>,
    pub method: Method,
    /// LoRA rank (adapters on q, k, v, o, gate, up, down of every layer).
    pub lora_rank: usize,
    /// How model states are stored (ZeRO's accounting).
    pub precision: Precision,
    /// The activations' float type: f32 with [`Precision::Fp32`], 16-bit with `Mixed` and `Bf16`
    /// ([`compute_for`] gives the usual one).
    pub compute: MixedPrecision,
    pub attention: AttentionImpl,
    /// ZeRO stage 0 (plain data parallel) to 3.
    pub zero_stage: u8,
    /// Data-parallel ranks the states are sharded over.
    pub gpus: usize,
    /// What ZeRO-Offload moves to host memory.
    pub offload: Offload,
    /// Rows per device; `None` counts model states only.
    pub batch: Option<BatchShape>,
    pub gradient_checkpointing: bool,
    /// The head fused with cross-entropy (`[memopt] fused_cross_entropy`), this many rows at a time
    /// (`cross_entropy_chunk`): no `[tokens × vocab]` logits are kept. `None`: the plain loss over full logits.
    pub fused_loss_chunk: Option<usize>,
}

/// Bytes per device, by kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
    /// The most bytes autodiff keeps for backward at once: the whole forward's saved tensors, or with
    /// checkpointing the layer inputs plus one layer's recomputed graph (or the head's, if larger). None when no
    /// batch shape (or no model shape) was given.
    pub activations: Option<f64>,
    /// Stage 3's working set on the device: the largest layer's 16-bit parameters and gradients gathered whole
    /// (DeepSpeed's `4 · largest_layer_params`); 0 below stage 3 or without the model's shape.
    pub gathered: f64,
    /// The model states ZeRO-Offload keeps in host memory for this rank (not part of [`MemoryEstimate::total`]).
    pub host: f64,
    /// The CPU trainer's peak resident memory per rank for this batch (None without a batch shape).
    pub cpu_peak: Option<CpuPeak>,
}

impl MemoryEstimate {
    /// Bytes on the device: the model states it keeps, stage 3's gathered layer and the activations.
    pub fn total(&self) -> f64 {
        self.weights + self.gradients + self.optimizer + self.gathered + self.activations.unwrap_or(0.0)
    }

    /// Model states only (what ZeRO's formulas give).
    pub fn model_states(&self) -> f64 {
        self.weights + self.gradients + self.optimizer
    }
}

/// Why an estimate cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EstimateError {
    #[error("--zero-stage must be 0, 1, 2 or 3, got {0}")]
    ZeroStage(u8),
    #[error("--gpus must be at least 1")]
    NoGpus,
    #[error("{0} needs the model's shape: give --model DIR, or --params with a standard size ({sizes})", sizes = known_sizes(None))]
    NeedsShape(&'static str),
    #[error(
        "--compute-dtype {compute} does not go with --precision {precision} (fp32 computes in f32, mixed and bf16 in 16 bits)"
    )]
    MixedPrecision { precision: &'static str, compute: &'static str },
    #[error("--batch and --seq must be at least 1")]
    EmptyBatch,
    #[error("--cross-entropy-chunk must be at least 1")]
    EmptyLossChunk,
    #[error("offloading the {offload} needs ZeRO stage {needs} or above, got stage {stage}")]
    OffloadStage { offload: &'static str, needs: u8, stage: u8 },
}

const MIB: f64 = 1024.0 * 1024.0;

/// The per-device model states (f32 weights, gradients and Adam's moments, full finetuning) of `params` trained
/// parameters under ZeRO stage `zero_stage` over `gpus` ranks: what a ZeRO run counts beside the formula.
pub fn fp32_model_states(params: u64, zero_stage: u8, gpus: usize) -> Result<MemoryEstimate, EstimateError> {
    estimate(&EstimateInput {
        params,
        model: None,
        method: Method::Full,
        lora_rank: 0,
        precision: Precision::Fp32,
        compute: MixedPrecision::No,
        attention: AttentionImpl::Eager,
        zero_stage,
        gpus,
        offload: Offload::None,
        batch: None,
        gradient_checkpointing: false,
        fused_loss_chunk: None,
    })
}

/// The estimate per device.
pub fn estimate(input: &EstimateInput) -> Result<MemoryEstimate, EstimateError> {
    if input.zero_stage > 3 {
        return Err(EstimateError::ZeroStage(input.zero_stage));
    }
    if input.gpus == 0 {
        return Err(EstimateError::NoGpus);
    }
    if input.compute.is_half() == (input.precision == Precision::Fp32) {
        return Err(EstimateError::MixedPrecision {
            precision: input.precision.name(),
            compute: input.compute.dtype_name(),
        });
    }
    if input.fused_loss_chunk == Some(0) {
        return Err(EstimateError::EmptyLossChunk);
    }
    match (input.offload, input.zero_stage) {
        (Offload::Optimizer, 0) => {
            return Err(EstimateError::OffloadStage { offload: "optimizer", needs: 1, stage: 0 });
        }
        (Offload::OptimizerAndParams, stage) if stage < 3 => {
            return Err(EstimateError::OffloadStage { offload: "parameters", needs: 3, stage });
        }
        _ => {}
    }
    let (weight_bytes, gradient_bytes, optimizer_bytes) = bytes_per_param(input.precision);
    // ZeRO's Ψ.
    let params = input.params as f64;
    let ranks = input.gpus as f64;
    let shard = |stage_shards_it: bool, bytes: f64| if stage_shards_it { bytes / ranks } else { bytes };
    let stage = input.zero_stage;
    let (weights, trainable) = match input.method {
        Method::Full => (params * weight_bytes, params),
        Method::Lora | Method::Qlora => {
            let model = input.model.as_ref().ok_or(EstimateError::NeedsShape("--method lora/qlora"))?;
            let adapter = lora_params(model, input.lora_rank) as f64;
            let base = if input.method == Method::Qlora {
                // The decoder's linear weights in NF4; embeddings, head and norms stay as stored (bitsandbytes
                // quantizes only the decoder's nn.Linear layers).
                let linear = model.num_hidden_layers as f64 * linear_weights_per_layer(model);
                linear * NF4_DOUBLE_QUANT_BITS / 8.0 + (params - linear) * weight_bytes
            } else {
                params * weight_bytes
            };
            (base + adapter * weight_bytes, adapter)
        }
    };
    let weights = shard(stage >= 3, weights);
    let gradients = shard(stage >= 2, trainable * gradient_bytes);
    let optimizer = shard(stage >= 1, trainable * optimizer_bytes);
    // ZeRO-Offload moves the optimizer's partition and the gradients reduced into it to host memory, where the
    // update runs (DeepSpeed's estimators then count only the 16-bit parameters on the device); parameter offload
    // moves the parameters' partitions too.
    let (device_weights, device_gradients, device_optimizer, host) = match input.offload {
        Offload::None => (weights, gradients, optimizer, 0.0),
        Offload::Optimizer => (weights, 0.0, 0.0, shard(true, trainable * gradient_bytes) + optimizer),
        Offload::OptimizerAndParams => (0.0, 0.0, 0.0, weights + shard(true, trainable * gradient_bytes) + optimizer),
    };
    let gathered = match &input.model {
        Some(model) if stage >= 3 => largest_layer_params(model) as f64 * (weight_bytes + gradient_bytes),
        _ => 0.0,
    };
    let (activations, cpu_peak) = match (input.batch, &input.model) {
        (Some(shape), _) if shape.batch == 0 || shape.seq == 0 => return Err(EstimateError::EmptyBatch),
        (Some(shape), Some(model)) => {
            let kind = StepKind {
                compute: input.compute,
                attention: input.attention,
                // Mixed precision keeps f32 master weights and casts them at use; bf16 weights need no cast.
                weight_casts: input.precision == Precision::Mixed,
                dequantized_base: input.method == Method::Qlora,
                lora_rank: if input.method == Method::Full { 0 } else { input.lora_rank },
                frozen_base: input.method != Method::Full,
                half_weights: input.precision == Precision::Bf16,
                fused_loss_chunk: input.fused_loss_chunk,
            };
            let checkpointing = input.gradient_checkpointing;
            // The trainer's gradients have the parameters' type: f32 unless the weights are bf16.
            let trainer_gradient_bytes = if input.precision == Precision::Bf16 { 2.0 } else { 4.0 };
            let full = input.method == Method::Full;
            let linear_weights = model.num_hidden_layers as f64 * linear_weights_per_layer(model);
            let head_weights = (model.vocab_size * model.hidden_size) as f64;
            // The last layer's MLP and `o_proj` weights, whose gradients exist when its attention backward starts.
            let top_layer_mlp_and_o_proj_weights =
                (model.hidden_size * (3 * model.intermediate_size + model.num_attention_heads * model.head_dim)) as f64;
            // In mixed precision the trained parameters are the f32 master copy, which ZeRO counts in the
            // optimizer's 12 bytes; their 16-bit copies exist only as the casts autodiff keeps. Frozen base weights
            // stay as stored.
            let compute_copies =
                if input.precision == Precision::Mixed { shard(stage >= 3, trainable * weight_bytes) } else { 0.0 };
            // The fused loss returns the head's gradient contiguous (its own `[vocab, h]` accumulator), so the
            // step's buffer shares it instead of copying a transposed one.
            let transposed_head = if input.fused_loss_chunk.is_some() { 0.0 } else { head_weights };
            let states = RankStates {
                persistent: weights - compute_copies + optimizer,
                gradients: shard(stage >= 2, trainable * trainer_gradient_bytes),
                copied_gradients: if full {
                    shard(stage >= 2, (linear_weights + transposed_head) * trainer_gradient_bytes)
                } else {
                    0.0
                },
                head_gradient: if full { head_weights * trainer_gradient_bytes } else { 0.0 },
                top_layer_gradients: if full { top_layer_mlp_and_o_proj_weights * trainer_gradient_bytes } else { 0.0 },
                all_reduce: input.gpus > 1,
            };
            let peak = cpu_peak(model, shape, kind, checkpointing, states);
            (Some(activation_bytes(model, shape, kind, checkpointing)), Some(peak))
        }
        (Some(_), None) => return Err(EstimateError::NeedsShape("activations (--batch/--seq)")),
        (None, _) => (None, None),
    };
    Ok(MemoryEstimate {
        weights: device_weights,
        gradients: device_gradients,
        optimizer: device_optimizer,
        activations,
        gathered,
        host,
        cpu_peak,
    })
}

/// Parses a parameter count such as `7B`, `7.5B`, `350M`, `125k` or `1234`.
pub fn parse_param_count(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last()? {
        (at, 'B' | 'b') => (&text[..at], 1e9),
        (at, 'M' | 'm') => (&text[..at], 1e6),
        (at, 'K' | 'k') => (&text[..at], 1e3),
        _ => (text, 1.0),
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value > 0.0).then(|| (value * scale).round() as u64)
}

/// Parameters of a Llama-family model of this shape (tied heads counted once).
pub fn count_params(m: &ModelConfig) -> u64 {
    let (h, i, v) = (m.hidden_size as u64, m.intermediate_size as u64, m.vocab_size as u64);
    let q = (m.num_attention_heads * m.head_dim) as u64;
    let kv = (m.num_key_value_heads * m.head_dim) as u64;
    let attention = h * q + 2 * h * kv + q * h + if m.qkv_bias { q + 2 * kv } else { 0 } + if m.o_bias { h } else { 0 };
    let mlp = 3 * h * i + if m.mlp_bias { 2 * i + h } else { 0 };
    let layer = attention + mlp + 2 * h;
    let head = if m.tie_word_embeddings { 0 } else { v * h };
    v * h + m.num_hidden_layers as u64 * layer + h + head
}

/// Training FLOPs per token (forward and backward) of a model of this shape on sequences of `seq_len` tokens:
/// 6 per parameter (but the input embedding's, a lookup; a tied one is also the output head and counts) plus
/// attention's scores and mixing, 12 · layers · heads · head_dim · seq_len (PaLM, appendix B): the figure MFU is
/// measured against.
pub fn training_flops_per_token(m: &ModelConfig, seq_len: usize) -> f64 {
    let matmul_weights = count_params(m) - (m.vocab_size * m.hidden_size) as u64
        + if m.tie_word_embeddings { (m.vocab_size * m.hidden_size) as u64 } else { 0 };
    let attention = 12 * m.num_hidden_layers * m.num_attention_heads * m.head_dim * seq_len;
    6.0 * matmul_weights as f64 + attention as f64
}

/// Parameters of the largest single weight (the embedding, the head, or one projection): what ZeRO stage 3 gathers
/// whole at once at the least (DeepSpeed's `largest_layer_params`).
pub fn largest_layer_params(m: &ModelConfig) -> u64 {
    let q = (m.num_attention_heads * m.head_dim) as u64;
    let (h, i, v) = (m.hidden_size as u64, m.intermediate_size as u64, m.vocab_size as u64);
    (v * h).max(h * i).max(h * q)
}

/// Weights of one decoder layer's seven linear projections (no biases).
fn linear_weights_per_layer(m: &ModelConfig) -> f64 {
    let (h, i) = (m.hidden_size as f64, m.intermediate_size as f64);
    let q = (m.num_attention_heads * m.head_dim) as f64;
    let kv = (m.num_key_value_heads * m.head_dim) as f64;
    h * q + 2.0 * h * kv + q * h + 3.0 * h * i
}

/// Adapter parameters of rank `r` on every linear layer of every decoder layer (A: r × in, B: out × r).
pub fn lora_params(m: &ModelConfig, r: usize) -> u64 {
    let (h, i, r) = (m.hidden_size as u64, m.intermediate_size as u64, r as u64);
    let q = (m.num_attention_heads * m.head_dim) as u64;
    let kv = (m.num_key_value_heads * m.head_dim) as u64;
    let per_layer = r * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h));
    m.num_hidden_layers as u64 * per_layer
}

#[cfg(test)]
mod tests {
    //! The tests of the model states and the inputs, and the inputs the submodules' tests share.

    use super::*;

    /// The ZeRO paper's example: 7.5B parameters, 64 GPUs, mixed precision, at ZeRO `stage`.
    pub(super) fn zero_paper(stage: u8) -> EstimateInput {
        EstimateInput {
            params: 7_500_000_000,
            model: None,
            method: Method::Full,
            lora_rank: 16,
            precision: Precision::Mixed,
            compute: MixedPrecision::Bf16,
            attention: AttentionImpl::Eager,
            zero_stage: stage,
            gpus: 64,
            offload: Offload::None,
            batch: None,
            gradient_checkpointing: false,
            fused_loss_chunk: None,
        }
    }

    /// DESIGN.md's full-tiny shape.
    pub(super) fn full_tiny() -> ModelConfig {
        let mut m = ModelConfig::tiny_llama(4096, 256, 4, 8, 4);
        m.intermediate_size = 688;
        m
    }

    /// One CPU rank training `m` in f32 (or 16-bit) on `batch` rows of `seq` tokens.
    pub(super) fn cpu_rank(m: &ModelConfig, batch: usize, seq: usize, compute: MixedPrecision) -> EstimateInput {
        EstimateInput {
            params: count_params(m),
            model: Some(m.clone()),
            precision: if compute.is_half() { Precision::Mixed } else { Precision::Fp32 },
            compute,
            gpus: 1,
            zero_stage: 0,
            batch: Some(BatchShape { batch, seq }),
            ..zero_paper(0)
        }
    }

    #[test]
    fn zero_paper_figures_for_7_5b_on_64_gpus() {
        // ZeRO paper, Figure 1: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB per device.
        let gb: Vec<f64> = (0..=3).map(|s| estimate(&zero_paper(s)).unwrap().model_states() / 1e9).collect();
        let rounded: Vec<f64> = gb.iter().map(|g| (g * 10.0).round() / 10.0).collect();
        assert_eq!(rounded, vec![120.0, 31.4, 16.6, 1.9]);
    }

    #[test]
    fn parameter_counts_match_the_shapes() {
        // TinyLlama-1.1B's published shape and count: 1,100,048,384 parameters.
        let mut m = ModelConfig::tiny_llama(32000, 2048, 22, 32, 4);
        m.intermediate_size = 5632;
        m.tie_word_embeddings = false;
        assert_eq!(count_params(&m), 1_100_048_384);
        // Llama-2-7B: 6,738,415,616.
        let mut m = ModelConfig::tiny_llama(32000, 4096, 32, 32, 32);
        m.intermediate_size = 11008;
        m.tie_word_embeddings = false;
        assert_eq!(count_params(&m), 6_738_415_616);
    }

    #[test]
    fn training_flops_per_token_of_llama_2_7b() {
        let mut m = ModelConfig::tiny_llama(32000, 4096, 32, 32, 32);
        m.intermediate_size = 11008;
        m.tie_word_embeddings = false;
        // 6 × (6,738,415,616 − 32000 × 4096 embedding weights) + 12 × 32 layers × 4096 × 4096 tokens.
        assert_eq!(training_flops_per_token(&m, 4096), 6.0 * 6_607_343_616.0 + 6_442_450_944.0);
    }

    #[test]
    fn lora_and_qlora_keep_states_only_for_the_adapter() {
        let mut m = ModelConfig::tiny_llama(32000, 4096, 32, 32, 32);
        m.intermediate_size = 11008;
        m.tie_word_embeddings = false;
        let params = count_params(&m);
        let input = EstimateInput {
            params,
            model: Some(m.clone()),
            method: Method::Lora,
            gpus: 1,
            zero_stage: 0,
            ..zero_paper(0)
        };
        let lora = estimate(&input).unwrap();
        let adapter = lora_params(&m, 16) as f64;
        // Llama-2-7B with r = 16 on all linear layers: 39,976,960 adapter parameters (PEFT's count).
        assert_eq!(adapter, 39_976_960.0);
        assert_eq!(lora.gradients, adapter * 2.0);
        assert_eq!(lora.optimizer, adapter * 12.0);
        let qlora = estimate(&EstimateInput { method: Method::Qlora, ..input }).unwrap();
        // bitsandbytes quantizes the decoder's linear layers only; embeddings, head and norms stay 16-bit.
        let linear = 32.0 * linear_weights_per_layer(&m);
        assert_eq!(linear, 6_476_005_376.0);
        let dense = (params as f64 - linear) * 2.0;
        let base_bits = (qlora.weights - adapter * 2.0 - dense) * 8.0 / linear;
        assert!((base_bits - 4.127).abs() < 0.001, "{base_bits}");
        assert_eq!((qlora.weights / 1e8).round() / 10.0, 3.9, "GB of weights for a 7B QLoRA");
    }

    #[test]
    fn offload_follows_deepspeeds_zero_3_estimator() {
        // DeepSpeed's estimate_zero3_model_states_mem_needs (mixed precision, zero_init=1) per GPU: 4·LL + 18P/G
        // without offload (ZeRO's paper counts 16P/G, as here), 4·LL + 2P/G with the optimizer offloaded and 4·LL
        // with the parameters too. Llama 2 7B (P = 6,738,415,616; the largest layer is the 32000 × 4096 embedding)
        // on 8 GPUs: 0.49 GiB + 1.57 GiB, and 0.49 GiB.
        let mut m = ModelConfig::tiny_llama(32000, 4096, 32, 32, 32);
        m.intermediate_size = 11008;
        m.tie_word_embeddings = false;
        let params = count_params(&m);
        let input = EstimateInput { params, model: Some(m.clone()), gpus: 8, ..zero_paper(3) };
        let largest = 4.0 * 32000.0 * 4096.0;
        assert_eq!(largest_layer_params(&m), 32000 * 4096);
        let plain = estimate(&input).unwrap();
        assert_eq!(plain.total(), largest + 16.0 * params as f64 / 8.0);
        assert_eq!(plain.host, 0.0);
        let optimizer = estimate(&EstimateInput { offload: Offload::Optimizer, ..input.clone() }).unwrap();
        assert_eq!(optimizer.total(), largest + 2.0 * params as f64 / 8.0);
        assert_eq!(optimizer.host, 14.0 * params as f64 / 8.0);
        let gib = |bytes: f64| (bytes / (1u64 << 30) as f64 * 100.0).round() / 100.0;
        assert_eq!((gib(largest), gib(optimizer.total() - largest)), (0.49, 1.57));
        let params_too = estimate(&EstimateInput { offload: Offload::OptimizerAndParams, ..input.clone() }).unwrap();
        assert_eq!(params_too.total(), largest);
        assert_eq!(params_too.host, 16.0 * params as f64 / 8.0);
        // ZeRO-Offload under stage 2 (DeepSpeed's estimate_zero2: 2P on the GPU).
        let stage2 = estimate(&EstimateInput { offload: Offload::Optimizer, zero_stage: 2, ..input }).unwrap();
        assert_eq!(stage2.total(), 2.0 * params as f64);
    }

    #[test]
    fn bad_inputs_are_named() {
        assert_eq!(
            estimate(&EstimateInput { offload: Offload::OptimizerAndParams, ..zero_paper(2) }),
            Err(EstimateError::OffloadStage { offload: "parameters", needs: 3, stage: 2 })
        );
        assert_eq!(
            estimate(&EstimateInput { offload: Offload::Optimizer, ..zero_paper(0) }),
            Err(EstimateError::OffloadStage { offload: "optimizer", needs: 1, stage: 0 })
        );
        assert_eq!(estimate(&zero_paper(4)), Err(EstimateError::ZeroStage(4)));
        assert_eq!(estimate(&EstimateInput { gpus: 0, ..zero_paper(0) }), Err(EstimateError::NoGpus));
        assert!(matches!(
            estimate(&EstimateInput { method: Method::Lora, ..zero_paper(0) }),
            Err(EstimateError::NeedsShape(_))
        ));
        assert_eq!(
            estimate(&EstimateInput { compute: MixedPrecision::No, ..zero_paper(0) }),
            Err(EstimateError::MixedPrecision { precision: "mixed", compute: "f32" })
        );
        let empty = EstimateInput {
            batch: Some(BatchShape { batch: 0, seq: 8 }),
            ..cpu_rank(&full_tiny(), 1, 1, MixedPrecision::No)
        };
        assert_eq!(estimate(&empty), Err(EstimateError::EmptyBatch));
        let no_rows = EstimateInput { fused_loss_chunk: Some(0), ..cpu_rank(&full_tiny(), 1, 8, MixedPrecision::No) };
        assert_eq!(estimate(&no_rows), Err(EstimateError::EmptyLossChunk));
        assert_eq!(parse_param_count("7.5B"), Some(7_500_000_000));
        assert_eq!(parse_param_count("350M"), Some(350_000_000));
        assert_eq!(parse_param_count("12"), Some(12));
        assert_eq!(parse_param_count("seven"), None);
        assert_eq!(parse_param_count("-1B"), None);
    }
}
