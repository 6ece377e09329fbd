//! Memory per device before a run starts: model states by DeepSpeed's ZeRO accounting (weights, gradients,
//! optimizer state, each sharded over the data-parallel ranks by the stage), activations for a given batch shape,
//! and the peak resident memory of one training step of this crate's CPU trainer ([`CpuPeak`]).
//!
//! # Activations: what autodiff keeps
//!
//! The activation count is not a rule of thumb but the tensors burn 0.21's autodiff really saves for backward
//! when our decoder runs (`llmtrain_core::model`), read off the ops it uses. Per op: a matmul or linear keeps
//! both inputs (a weight is the parameter itself, or in mixed precision its 16-bit cast); `a * b` keeps both
//! factors when both are tracked, only the tracked side's partner otherwise (so `q * cos` keeps nothing big);
//! `exp`, `sigmoid`, `powi`, `sqrt`, `recip`, `log` keep their *input*; add, sub, scalar ops, casts, reshapes,
//! slices, `cat`, sums and means keep shapes only; `mask_fill` keeps its (broadcast view of the) mask; `gather`
//! its indices. Flex writes an op's result into its input's buffer when nothing else holds that buffer, so a
//! saved tensor costs one buffer however many ops keep it. Per decoder layer, with `T` tokens, `e` bytes per
//! activation (4, or 2 in 16-bit compute) and `Sc = batch·heads·seq²` score elements:
//!
//! - each RMSNorm: its input and `x·rsqrt(mean x²)` (f32: `2·T·h·4`; 16-bit: the f32 upcast of the input and the
//!   16-bit normalised value, `T·h·(4+2)`), and its output, which the next linears keep (`T·h·e`);
//! - attention: rotated q, the KV heads repeated to every head (k and v), and the output copy `o_proj` keeps
//!   (`4·T·q·e`, q = heads·head_dim); eager adds, from burn's `softmax` as autodiff decomposes it
//!   (`exp(x − max) / sum`): the shifted scores (kept by `exp`), `exp` (kept by the
//!   division) and the probabilities (kept by the matmul with v) — `3·Sc·4` in f32; in 16-bit the softmax still
//!   runs in f32 and the probabilities are cast back: `Sc·(4+4+2)` — and the causal mask (`seq²` bytes). Flash
//!   keeps, instead of any `[seq × seq]` tensor, its own output and an f32 log-sum-exp per row
//!   (`5·T·q·e + batch·heads·seq·4` in all);
//! - SwiGLU: gate, `sigmoid(gate)`, `silu(gate)`, up and their product (`5·T·i·e`).
//!
//! The head keeps the final norm's tensors and, from the f32 `log_softmax` over `[tokens, vocab]`, the shifted
//! logits (`T'·V·4`, `T' = batch·(seq−1)` scored positions). In mixed precision every linear weight (and the tied
//! or untied head) is cast to 16-bit at use, and the matmul keeps that cast: 2 bytes per linear parameter.
//!
//! Checked with a counting global allocator in the bench process (bytes alive at the end of the forward less
//! those before it): full-tiny 418.3 MiB measured vs 417.6 counted in f32, 306.1 vs 305.4 in bf16, and at one
//! sequence of 2048 tokens 1778.6 vs 1777.5 eager, 234.6 vs 233.7 flash.
//!
//! # The CPU peak
//!
//! [`CpuPeak`] is the largest resident set one training step of `llmtrain_accel::train_step` reaches on the CPU
//! backend: the process baseline, the states held at that moment, the saved activations still alive, the buffers
//! of the op running then (its transient), and what glibc's allocator keeps. It is the maximum over the moments
//! where the step can peak (see [`PeakMoment`]); each moment's transient is derived from the op's code (see
//! [`cpu_peak`]). Checked against `cargo xtask bench`, whose report holds the prediction beside the measured
//! `VmHWM` for every case.

use llmtrain_core::config::{AttentionImpl, MixedPrecision};
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

/// The float type activations are computed in (`[memopt] mixed_precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl ComputeDtype {
    /// What `--precision` implies: f32 for fp32, bf16 for mixed (16-bit compute over f32 master weights) and for
    /// bf16 (bf16 everything). fp16 is the other 16-bit choice under mixed; it takes the same bytes.
    pub fn for_precision(precision: Precision) -> Self {
        match precision {
            Precision::Fp32 => ComputeDtype::F32,
            Precision::Mixed | Precision::Bf16 => ComputeDtype::Bf16,
        }
    }

    /// Bytes per activation element.
    pub fn bytes(self) -> f64 {
        if self.is_half() { 2.0 } else { 4.0 }
    }

    pub fn is_half(self) -> bool {
        self != ComputeDtype::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::F32 => "f32",
            ComputeDtype::Bf16 => "bf16",
            ComputeDtype::F16 => "fp16",
        }
    }
}

impl From<MixedPrecision> for ComputeDtype {
    fn from(precision: MixedPrecision) -> Self {
        match precision {
            MixedPrecision::No => ComputeDtype::F32,
            MixedPrecision::Bf16 => ComputeDtype::Bf16,
            MixedPrecision::Fp16 => ComputeDtype::F16,
        }
    }
}

/// The attention kernel (`[memopt] attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKind {
    /// Scores and probabilities materialised; autodiff keeps three `[seq × seq]` tensors per head and layer.
    #[default]
    Eager,
    /// Tiled online softmax with a recomputing backward (`llmtrain_core::model::flash_attention`).
    Flash,
}

impl From<AttentionImpl> for AttentionKind {
    fn from(kind: AttentionImpl) -> Self {
        match kind {
            AttentionImpl::Eager => AttentionKind::Eager,
            AttentionImpl::Flash => AttentionKind::Flash,
        }
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
    /// ([`ComputeDtype::for_precision`] gives the usual one).
    pub compute: ComputeDtype,
    pub attention: AttentionKind,
    /// ZeRO stage 0 (plain data parallel) to 3.
    pub zero_stage: u8,
    /// Data-parallel ranks the states are sharded over.
    pub gpus: usize,
    /// Rows per device; `None` counts model states only.
    pub batch: Option<BatchShape>,
    pub gradient_checkpointing: bool,
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
    /// The CPU trainer's peak resident memory per rank for this batch (None without a batch shape).
    pub cpu_peak: Option<CpuPeak>,
}

impl MemoryEstimate {
    pub fn total(&self) -> f64 {
        self.weights + self.gradients + self.optimizer + self.activations.unwrap_or(0.0)
    }

    /// Model states only (what ZeRO's formulas give).
    pub fn model_states(&self) -> f64 {
        self.weights + self.gradients + self.optimizer
    }
}

/// Where in a training step the resident set peaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakMoment {
    /// The loss in the forward pass: the logits and the first `[tokens, vocab]` temporaries of the f32
    /// `log_softmax` (in 16-bit compute, the upcast of the logits through Flex's f64 intermediate).
    LossForward,
    /// The first backward ops, through `log_softmax` and the gather of the labels.
    LossBackward,
    /// The head's weight gradient (one `[hidden, vocab]` product per batch row before the sum over rows).
    HeadWeightGradient,
    /// The last layer's MLP backward.
    MlpBackward,
    /// The last layer's eager attention backward: the probabilities' gradient beside the saved scores.
    AttentionBackward,
    /// After backward: burn's gradients and the step's gradient buffer (plus the all-reduce's buckets).
    Gradients,
    /// Checkpointing: the graph-free forward that keeps each layer's input.
    CheckpointForward,
    /// Checkpointing: the head and loss, run as one graph on top of the kept layer inputs.
    CheckpointHead,
    /// Checkpointing: the last layer recomputed with its graph, during its MLP backward.
    CheckpointLayerMlp,
    /// Checkpointing: the last layer recomputed with its graph, during its attention backward.
    CheckpointLayerAttention,
}

impl PeakMoment {
    pub fn describe(self) -> &'static str {
        match self {
            PeakMoment::LossForward => "the loss in the forward pass",
            PeakMoment::LossBackward => "the loss backward",
            PeakMoment::HeadWeightGradient => "the head's weight gradient",
            PeakMoment::MlpBackward => "the last layer's MLP backward",
            PeakMoment::AttentionBackward => "the last layer's attention backward",
            PeakMoment::Gradients => "the gradients after backward",
            PeakMoment::CheckpointForward => "the checkpointed forward",
            PeakMoment::CheckpointHead => "the head's graph (checkpointing)",
            PeakMoment::CheckpointLayerMlp => "the recomputed last layer's MLP backward",
            PeakMoment::CheckpointLayerAttention => "the recomputed last layer's attention backward",
        }
    }
}

/// The peak resident memory of one training step of this crate's CPU trainer (burn 0.21's Flex backend under
/// `Autodiff`, glibc malloc), per rank, split by what holds it at the peak. With several ranks as threads of one
/// process, the process holds `ranks × total() − (ranks − 1) × baseline`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuPeak {
    pub moment: PeakMoment,
    /// The process itself: [`PROCESS_BASELINE`].
    pub baseline: f64,
    /// Parameters and optimizer state (f32 master weights, Adam's m and v), plus the gradients that exist at the
    /// peak moment.
    pub states: f64,
    /// Tensors autodiff keeps for backward that are still alive at the peak moment.
    pub saved: f64,
    /// Buffers of the op running at the peak moment (gradients in flight, casts, temporaries).
    pub transient: f64,
    /// Freed memory glibc's arena keeps resident: [`allocator_retention`].
    pub allocator: f64,
}

impl CpuPeak {
    pub fn total(&self) -> f64 {
        self.baseline + self.states + self.saved + self.transient + self.allocator
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Resident memory of a training process besides its tensors, measured on the bench: about 5 MiB before the
/// first step (the binary, libc and the Rust runtime, rayon's worker stacks), plus about 4 MiB the first step
/// leaves allocated for good (gemm's per-thread packing buffers, one per rayon worker).
pub const PROCESS_BASELINE: f64 = 9.0 * MIB;

/// glibc's largest dynamic mmap threshold on 64-bit (`DEFAULT_MMAP_THRESHOLD_MAX`, 32 MiB).
pub const MMAP_THRESHOLD_MAX: f64 = 32.0 * MIB;

/// Freed memory glibc keeps resident at the peak, per rank: three times the step's largest buffer, up to 32 MiB.
///
/// glibc serves a large allocation with its own mmap and unmaps it on free, but freeing such a block raises
/// the mmap threshold to its size (up to `DEFAULT_MMAP_THRESHOLD_MAX`), so from the second step on every buffer
/// below 32 MiB comes from the rank thread's arena, whose freed interior chunks stay resident. The holes the
/// step's largest heap buffers leave (the `[tokens, vocab]` logits and their gradients, which differ by one row
/// per sequence; every Flex output is first allocated as a zeroed byte vector and then copied to an aligned
/// one) cannot hold the next large request, so the arena grows past the bytes in use. With
/// `MALLOC_MMAP_THRESHOLD_=131072` (a fixed threshold) the excess vanishes (full-tiny: 651 → 551 MiB, the count
/// without this term being 548). Buffers of 32 MiB and more are always mmapped and leave nothing behind, hence
/// the cap. The factor 3 is the one measured constant of the model besides the baseline, not derived: over the
/// bench's cases the excess is 2.5–3.9 times the largest buffer for every full-tiny shape, 1.5 for the smaller
/// quickstart (whose largest buffer is 16 MiB).
pub fn allocator_retention(largest_buffer: f64) -> f64 {
    3.0 * largest_buffer.min(MMAP_THRESHOLD_MAX)
}

/// Why an estimate cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EstimateError {
    #[error("--zero-stage must be 0, 1, 2 or 3, got {0}")]
    ZeroStage(u8),
    #[error("--gpus must be at least 1")]
    NoGpus,
    #[error("{0} needs the model's shape: give --model DIR instead of --params")]
    NeedsShape(&'static str),
    #[error(
        "--compute-dtype {compute} does not go with --precision {precision} (fp32 computes in f32, mixed and bf16 in 16 bits)"
    )]
    ComputeDtype { precision: &'static str, compute: &'static str },
    #[error("--batch and --seq must be at least 1")]
    EmptyBatch,
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

/// How the step computes, for the activation count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepKind {
    pub compute: ComputeDtype,
    pub attention: AttentionKind,
    /// Linear weights are cast to the compute type at use (f32 master weights with 16-bit compute), so the
    /// matmuls keep the casts.
    pub weight_casts: bool,
    /// Base weights are NF4 and dequantized at use (QLoRA): the matmuls keep the dequantized copies.
    pub dequantized_base: bool,
    /// LoRA rank on every linear layer (0: none); each adapter keeps its `[tokens, r]` intermediate.
    pub lora_rank: usize,
}

impl StepKind {
    /// Plain full training in `compute` with eager attention (f32 master weights).
    pub fn plain(compute: ComputeDtype) -> Self {
        Self {
            compute,
            attention: AttentionKind::Eager,
            weight_casts: compute.is_half(),
            dequantized_base: false,
            lora_rank: 0,
        }
    }
}

/// The sizes (in bytes) the activation count and the peak are made of, for one rank's micro-batch.
struct Graph {
    /// Activation bytes.
    e: f64,
    half: bool,
    flash: bool,
    rows: f64,
    tokens: f64,
    /// Positions the loss scores: rows × (seq − 1).
    scored: f64,
    hidden: f64,
    q: f64,
    inter: f64,
    vocab: f64,
    layers: f64,
    /// Attention score elements of one layer: rows × heads × seq².
    scores: f64,
    /// Saved by one RMSNorm, its output included.
    norm: f64,
    /// Saved by one attention block (the `o_proj` input included).
    attention: f64,
    /// Saved by one SwiGLU MLP.
    mlp: f64,
    /// Weight casts (or dequantized weights) one layer's matmuls keep.
    layer_casts: f64,
    /// The head weight's cast kept by the logits matmul.
    head_casts: f64,
}

impl Graph {
    fn new(m: &ModelConfig, shape: BatchShape, kind: StepKind) -> Self {
        let e = kind.compute.bytes();
        let half = kind.compute.is_half();
        let flash = kind.attention == AttentionKind::Flash;
        let (rows, seq) = (shape.batch as f64, shape.seq as f64);
        let tokens = rows * seq;
        let hidden = m.hidden_size as f64;
        let heads = m.num_attention_heads as f64;
        let q = heads * m.head_dim as f64;
        let inter = m.intermediate_size as f64;
        let scores = rows * heads * seq * seq;
        // f32: the input and x·rsqrt(mean x²), both f32; 16-bit: the input's f32 upcast and the 16-bit
        // normalised value. Plus the output, which the following linears keep.
        let norm = if half { tokens * hidden * (4.0 + 2.0 + 2.0) } else { tokens * hidden * 12.0 };
        // Rotated q, k and v repeated to every head, the output copy `o_proj` keeps.
        let projections = 4.0 * tokens * q * e;
        let attention = if flash {
            // The flash node keeps q, k, v (already counted), its own output and an f32 log-sum-exp per row.
            projections + tokens * q * e + rows * heads * seq * 4.0
        } else {
            // Shifted scores and exp(shifted) in f32, the probabilities (f32, or their 16-bit cast), the mask.
            let probabilities = if half { 2.0 } else { 4.0 };
            projections + scores * (4.0 + 4.0 + probabilities) + seq * seq
        };
        let adapters = if kind.lora_rank > 0 { 7.0 * tokens * kind.lora_rank as f64 * e } else { 0.0 };
        let mlp = 5.0 * tokens * inter * e + adapters;
        let linear = linear_weights_per_layer(m);
        let vocab = m.vocab_size as f64;
        let layer_casts = if kind.dequantized_base {
            linear * e
        } else if kind.weight_casts {
            linear * 2.0
        } else {
            0.0
        };
        let head_casts = if kind.weight_casts { vocab * hidden * 2.0 } else { 0.0 };
        Graph {
            e,
            half,
            flash,
            rows,
            tokens,
            scored: rows * (seq - 1.0).max(0.0),
            hidden,
            q,
            inter,
            vocab,
            layers: m.num_hidden_layers as f64,
            scores,
            norm,
            attention,
            mlp,
            layer_casts,
            head_casts,
        }
    }

    /// Saved by one decoder layer.
    fn layer(&self) -> f64 {
        2.0 * self.norm + self.attention + self.mlp
    }

    /// Saved by the head: the final norm and the f32 shifted logits of `log_softmax`.
    fn head(&self) -> f64 {
        self.norm + self.shifted()
    }

    /// The f32 `[scored, vocab]` buffer: logits minus their row maximum (kept by `exp`), and every f32
    /// gradient of the same shape in the loss backward.
    fn shifted(&self) -> f64 {
        self.scored * self.vocab * 4.0
    }

    /// Saved by the whole forward pass (no checkpointing).
    fn forward(&self) -> f64 {
        self.layers * (self.layer() + self.layer_casts) + self.head() + self.head_casts
    }

    /// The loss in the forward pass, beyond what is saved by then (the shifted logits included).
    /// f32: the logits are alive while `logits − max` is written. 16-bit: Flex's cast goes through an f64 vector,
    /// after a contiguous copy of the `[rows, seq − 1, vocab]` slice when there are several rows, while the 16-bit
    /// logits are alive; the f32 result becomes the shifted logits in place.
    fn loss_forward(&self) -> f64 {
        let logits = self.tokens * self.vocab * self.e;
        if self.half {
            let copy = if self.rows > 1.0 { 2.0 } else { 0.0 };
            logits + self.scored * self.vocab * (8.0 + copy)
        } else {
            logits
        }
    }

    /// The loss backward. f32: `scatter_add` writes the labels' gradient into a fresh zeros tensor, two f32
    /// `[scored, vocab]` buffers beside the saved shifted logits (`sub`'s and `exp`'s backward hold two again).
    /// 16-bit (the shifted logits consumed by then): the cast of the f32 gradient back to 16 bits, through Flex's
    /// f64 intermediate.
    fn loss_backward(&self) -> f64 {
        if self.half { self.scored * self.vocab * (4.0 + 8.0 + 2.0) } else { 2.0 * self.shifted() }
    }

    /// The head's linear backward (the shifted logits consumed by then): the logits' gradient padded back to
    /// every position, and burn's weight gradient formed as one `[hidden, vocab]` product per row before the
    /// sum over rows.
    fn head_weight_gradient(&self) -> f64 {
        (self.tokens * self.vocab + self.rows * self.hidden * self.vocab) * self.e
    }

    /// Bytes of a norm's saved input that are the layer input's own buffer (f32; in 16 bits the norm keeps an
    /// upcast copy instead). With checkpointing the layer inputs are counted once, as kept inputs.
    fn shared_input(&self) -> f64 {
        if self.half { 0.0 } else { self.tokens * self.hidden * 4.0 }
    }

    /// The last layer's MLP backward: the incoming gradient, `down_proj`'s input gradient and its per-row weight
    /// gradients.
    fn mlp_backward(&self) -> f64 {
        (self.tokens * self.hidden + self.tokens * self.inter + self.rows * self.inter * self.hidden) * self.e
    }

    /// What the attention backward has freed of its layer by the time it reaches the scores: the MLP, the second
    /// norm, and `o_proj`'s input.
    fn freed_before_scores(&self) -> f64 {
        self.mlp + self.norm + self.tokens * self.q * self.e
    }

    /// Eager attention backward at the probabilities' matmul: their gradient (f32), beside the kept scores.
    /// 16-bit: the 16-bit gradient then its cast to f32 through Flex's f64 intermediate, the 16-bit
    /// probabilities already freed.
    fn attention_backward(&self) -> f64 {
        if self.half { self.scores * (2.0 + 8.0 + 4.0 - 2.0) } else { self.scores * 4.0 }
    }

    /// Graph-free forward of one layer (checkpointing): scores, their masked copy and the mask, or in 16 bits the
    /// scores, the f64 intermediate and the f32 upcast.
    fn inference_layer(&self) -> f64 {
        if self.flash {
            0.0
        } else if self.half {
            self.scores * (2.0 + 8.0 + 4.0)
        } else {
            self.scores * (4.0 + 4.0 + 1.0)
        }
    }

    /// The largest single buffer of the step (for the allocator's retention): the f32 logits, the head's per-row
    /// weight gradients, the f32 scores, the MLP's activations, and in 16 bits Flex's f64 cast intermediates.
    fn largest_buffer(&self) -> f64 {
        let logits = self.tokens * self.vocab * 4.0;
        let head_grad = self.rows * self.hidden * self.vocab * self.e;
        let scores = if self.flash { 0.0 } else { self.scores * 4.0 };
        let casts = if self.half { (self.scored * self.vocab * 8.0).max(scores * 2.0) } else { 0.0 };
        logits.max(head_grad).max(scores).max(self.tokens * self.inter * self.e).max(casts)
    }
}

/// Activation bytes kept for backward, per device: the tensors burn's autodiff saves when our decoder runs (see
/// the module documentation), at their largest — the whole forward's, or with checkpointing the layer inputs
/// plus one layer's recomputed graph (or the head's graph, if larger).
pub fn activation_bytes(m: &ModelConfig, shape: BatchShape, kind: StepKind, checkpointing: bool) -> f64 {
    let g = Graph::new(m, shape, kind);
    if checkpointing {
        let inputs = (g.layers + 1.0) * g.tokens * g.hidden * g.e;
        let layer = g.layer() - g.shared_input() + g.layer_casts;
        let head = g.head() - g.shared_input() + g.head_casts;
        inputs + layer.max(head)
    } else {
        g.forward()
    }
}

/// Per-rank figures the CPU peak needs besides the graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankStates {
    /// Bytes held for the whole step: parameters (the f32 master copy in mixed precision) and optimizer state.
    pub persistent: f64,
    /// Bytes of one full set of gradients as the trainer keeps them (f32 for f32 parameters).
    pub gradients: f64,
    /// Bytes of the gradients the step's buffer copies instead of sharing burn's tensor: the linear weights',
    /// which burn returns transposed (non-contiguous), so flattening them copies.
    pub copied_gradients: f64,
    /// Bytes of the head weight's gradient (0 when the head is frozen).
    pub head_gradient: f64,
    /// Bytes of the last layer's gradients that exist when its attention backward starts (MLP and `o_proj`
    /// weights; 0 when they are frozen).
    pub top_layer_gradients: f64,
    /// Ranks all-reduce gradients (a flat bucket and its reduced copy exist after backward).
    pub all_reduce: bool,
}

/// The peak resident memory of one CPU training step per rank: the largest of the moments where it can peak.
///
/// Every moment holds `baseline + persistent states + saved + transient + allocator`; they differ in the
/// gradients that exist by then, in what is still saved (the forward's tensors, less what the backward has
/// consumed) and in the running op's buffers:
///
/// - loss forward: all saved tensors + [`loss_forward`](Graph::loss_forward);
/// - loss backward: all saved + two f32 `[scored, vocab]` gradients (16-bit: the cast back, 14 bytes a logit);
/// - head weight gradient: the padded logits' gradient + one `[hidden, vocab]` product per row;
/// - last layer's MLP backward: the head's tensors freed, its gradient kept, `down_proj`'s gradients in flight;
/// - last layer's attention backward (eager): its MLP freed, the probabilities' gradient beside the three saved
///   score tensors (the peak at long sequences, where the scores dominate);
/// - gradients after backward: burn's gradients, the buffer's copies of the transposed ones, and with several
///   ranks the flat all-reduce bucket and its reduced copy;
/// - with checkpointing (`memopt::checkpoint::backward_by_layers`) the layer inputs stay (one per layer and the
///   top's) and the graph is at most the head's or one layer's: the graph-free forward, the head's graph, and the
///   last layer's recompute (MLP or attention backward), while the head's gradients live in both burn's
///   container and the step's buffer.
pub fn cpu_peak(
    m: &ModelConfig,
    shape: BatchShape,
    kind: StepKind,
    checkpointing: bool,
    states: RankStates,
) -> CpuPeak {
    let g = Graph::new(m, shape, kind);
    // (moment, gradients held, saved, transient)
    let mut moments: Vec<(PeakMoment, f64, f64, f64)> = Vec::new();
    if checkpointing {
        // The layer inputs, one per layer and the top's, all alive until the last layer's recompute is done.
        let inputs = (g.layers + 1.0) * g.tokens * g.hidden * g.e;
        moments.push((PeakMoment::CheckpointForward, 0.0, inputs, g.inference_layer()));
        let head = inputs + g.head_casts + g.norm - g.shared_input();
        moments.push((PeakMoment::CheckpointHead, 0.0, head, g.loss_forward() + g.shifted()));
        let loss_backward = if g.half { g.loss_backward() } else { g.loss_backward() + g.shifted() };
        moments.push((PeakMoment::CheckpointHead, 0.0, head, loss_backward));
        moments.push((PeakMoment::CheckpointHead, 0.0, head, g.head_weight_gradient()));
        // The head's step gradients stay alive through the layers beside the buffer's copy of the (transposed)
        // head weight gradient; the gradient of the layer's output flows in.
        let held = 2.0 * states.head_gradient;
        let upstream = g.tokens * g.hidden * g.e;
        let layer = inputs + g.layer() - g.shared_input() + g.layer_casts;
        moments.push((PeakMoment::CheckpointLayerMlp, held, layer, upstream + g.mlp_backward()));
        if !g.flash {
            let saved = layer - g.freed_before_scores();
            let held = held + states.top_layer_gradients;
            moments.push((PeakMoment::CheckpointLayerAttention, held, saved, upstream + g.attention_backward()));
        }
    } else {
        let all = g.forward();
        moments.push((PeakMoment::LossForward, 0.0, all, g.loss_forward()));
        let after_loss = all - g.shifted();
        moments.push((PeakMoment::LossBackward, 0.0, if g.half { after_loss } else { all }, g.loss_backward()));
        moments.push((PeakMoment::HeadWeightGradient, 0.0, after_loss, g.head_weight_gradient()));
        let layers = all - g.head() - g.head_casts;
        moments.push((PeakMoment::MlpBackward, states.head_gradient, layers, g.mlp_backward()));
        if !g.flash {
            let saved = layers - g.freed_before_scores();
            let held = states.head_gradient + states.top_layer_gradients;
            moments.push((PeakMoment::AttentionBackward, held, saved, g.attention_backward()));
        }
    }
    let buckets = if states.all_reduce { 2.0 * states.gradients } else { 0.0 };
    moments.push((PeakMoment::Gradients, states.gradients + states.copied_gradients + buckets, 0.0, 0.0));
    let total = |&(_, held, saved, transient): &(PeakMoment, f64, f64, f64)| held + saved + transient;
    let &(moment, held, saved, transient) =
        moments.iter().max_by(|a, b| total(a).total_cmp(&total(b))).expect("at least one moment");
    CpuPeak {
        moment,
        baseline: PROCESS_BASELINE,
        states: states.persistent + held,
        saved,
        transient,
        allocator: allocator_retention(g.largest_buffer()),
    }
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
        return Err(EstimateError::ComputeDtype { precision: input.precision.name(), compute: input.compute.name() });
    }
    let (w, g, o) = bytes_per_param(input.precision);
    let psi = input.params as f64;
    let shards = input.gpus as f64;
    let shard = |stage_shards_it: bool, bytes: f64| if stage_shards_it { bytes / shards } else { bytes };
    let stage = input.zero_stage;
    let (weights, trainable) = match input.method {
        Method::Full => (psi * w, psi),
        Method::Lora | Method::Qlora => {
            let model = input.model.as_ref().ok_or(EstimateError::NeedsShape("--method lora/qlora"))?;
            let adapter = lora_params(model, input.lora_rank) as f64;
            let base = if input.method == Method::Qlora { psi * NF4_DOUBLE_QUANT_BITS / 8.0 } else { psi * w };
            (base + adapter * w, adapter)
        }
    };
    let weights = shard(stage >= 3, weights);
    let gradients = shard(stage >= 2, trainable * g);
    let optimizer = shard(stage >= 1, trainable * o);
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
            };
            let checkpointing = input.gradient_checkpointing;
            // The trainer's gradients have the parameters' type: f32 unless the weights are bf16.
            let grad_bytes = if input.precision == Precision::Bf16 { 2.0 } else { 4.0 };
            let full = input.method == Method::Full;
            let linear = model.num_hidden_layers as f64 * linear_weights_per_layer(model);
            let head = (model.vocab_size * model.hidden_size) as f64;
            let top_layer =
                (model.hidden_size * (3 * model.intermediate_size + model.num_attention_heads * model.head_dim)) as f64;
            // In mixed precision the trained parameters are the f32 master copy, which ZeRO counts in the
            // optimizer's 12 bytes; their 16-bit copies exist only as the casts autodiff keeps. Frozen base weights
            // stay as stored.
            let compute_copies =
                if input.precision == Precision::Mixed { shard(stage >= 3, trainable * w) } else { 0.0 };
            let states = RankStates {
                persistent: weights - compute_copies + optimizer,
                gradients: shard(stage >= 2, trainable * grad_bytes),
                copied_gradients: if full { shard(stage >= 2, (linear + head) * grad_bytes) } else { 0.0 },
                head_gradient: if full { head * grad_bytes } else { 0.0 },
                top_layer_gradients: if full { top_layer * grad_bytes } else { 0.0 },
                all_reduce: input.gpus > 1,
            };
            let peak = cpu_peak(model, shape, kind, checkpointing, states);
            (Some(activation_bytes(model, shape, kind, checkpointing)), Some(peak))
        }
        (Some(_), None) => return Err(EstimateError::NeedsShape("activations (--batch/--seq)")),
        (None, _) => (None, None),
    };
    Ok(MemoryEstimate { weights, gradients, optimizer, activations, cpu_peak })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn zero(stage: u8) -> EstimateInput {
        EstimateInput {
            params: 7_500_000_000,
            model: None,
            method: Method::Full,
            lora_rank: 16,
            precision: Precision::Mixed,
            compute: ComputeDtype::Bf16,
            attention: AttentionKind::Eager,
            zero_stage: stage,
            gpus: 64,
            batch: None,
            gradient_checkpointing: false,
        }
    }

    /// DESIGN.md's full-tiny shape.
    fn full_tiny() -> ModelConfig {
        let mut m = ModelConfig::tiny_llama(4096, 256, 4, 8, 4);
        m.intermediate_size = 688;
        m
    }

    /// One CPU rank training `m` in f32 (or 16-bit) on `batch` rows of `seq` tokens.
    fn cpu(m: &ModelConfig, batch: usize, seq: usize, compute: ComputeDtype) -> EstimateInput {
        EstimateInput {
            params: count_params(m),
            model: Some(m.clone()),
            precision: if compute.is_half() { Precision::Mixed } else { Precision::Fp32 },
            compute,
            gpus: 1,
            zero_stage: 0,
            batch: Some(BatchShape { batch, seq }),
            ..zero(0)
        }
    }

    #[test]
    fn zero_paper_figures_for_7_5b_on_64_gpus() {
        // ZeRO paper, Figure 1: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB per device.
        let gb: Vec<f64> = (0..=3).map(|s| estimate(&zero(s)).unwrap().model_states() / 1e9).collect();
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
    fn lora_and_qlora_keep_states_only_for_the_adapter() {
        let mut m = ModelConfig::tiny_llama(32000, 4096, 32, 32, 32);
        m.intermediate_size = 11008;
        m.tie_word_embeddings = false;
        let params = count_params(&m);
        let input =
            EstimateInput { params, model: Some(m.clone()), method: Method::Lora, gpus: 1, zero_stage: 0, ..zero(0) };
        let lora = estimate(&input).unwrap();
        let adapter = lora_params(&m, 16) as f64;
        // Llama-2-7B with r = 16 on all linear layers: 39,976,960 adapter parameters (PEFT's count).
        assert_eq!(adapter, 39_976_960.0);
        assert_eq!(lora.gradients, adapter * 2.0);
        assert_eq!(lora.optimizer, adapter * 12.0);
        let qlora = estimate(&EstimateInput { method: Method::Qlora, ..input }).unwrap();
        let base_bits = (qlora.weights - adapter * 2.0) * 8.0 / params as f64;
        assert!((base_bits - 4.127).abs() < 0.001, "{base_bits}");
    }

    #[test]
    fn checkpointing_keeps_fewer_activations() {
        let m = ModelConfig::tiny_llama(4096, 256, 4, 8, 4);
        let shape = BatchShape { batch: 8, seq: 256 };
        let kind = StepKind::plain(ComputeDtype::F32);
        let plain = activation_bytes(&m, shape, kind, false);
        let ckpt = activation_bytes(&m, shape, kind, true);
        assert!(ckpt < plain * 0.6, "{ckpt} vs {plain}");
    }

    #[test]
    fn saved_tensors_match_what_autodiff_held_on_the_bench() {
        // Bytes alive at the end of full-tiny's forward less those before it, counted by a counting global
        // allocator in the bench process: f32 eager 418.3 MiB, bf16 306.1 MiB, flash at 1 × 2048 234.6 MiB,
        // eager at 1 × 2048 1778.6 MiB.
        let m = full_tiny();
        let shape = |batch, seq| BatchShape { batch, seq };
        let f32_kind = StepKind::plain(ComputeDtype::F32);
        let flash = StepKind { attention: AttentionKind::Flash, ..f32_kind };
        let cases = [
            (activation_bytes(&m, shape(8, 256), f32_kind, false), 418.3),
            (activation_bytes(&m, shape(8, 256), StepKind::plain(ComputeDtype::Bf16), false), 306.1),
            (activation_bytes(&m, shape(1, 2048), flash, false), 234.6),
            (activation_bytes(&m, shape(1, 2048), f32_kind, false), 1778.6),
        ];
        for (bytes, measured) in cases {
            let mib = bytes / MIB;
            assert!((mib - measured).abs() / measured < 0.01, "{mib:.1} MiB vs {measured} MiB measured");
        }
    }

    #[test]
    fn cpu_peak_of_full_tiny_is_the_loss_backward() {
        // `cargo xtask bench --case full-tiny`: VmHWM 651-659 MiB; 551 MiB with glibc's mmap threshold fixed
        // (MALLOC_MMAP_THRESHOLD_=131072), i.e. without the allocator's retention.
        let peak = estimate(&cpu(&full_tiny(), 8, 256, ComputeDtype::F32)).unwrap().cpu_peak.unwrap();
        assert_eq!(peak.moment, PeakMoment::LossBackward);
        let total = peak.total() / MIB;
        assert!((total - 653.0).abs() / 653.0 < 0.05, "{total:.1} MiB");
        let without_retention = (peak.total() - peak.allocator) / MIB;
        assert!((without_retention - 551.0).abs() / 551.0 < 0.03, "{without_retention:.1} MiB");
    }

    #[test]
    fn mixed_precision_peaks_at_the_f32_loss_and_flash_drops_the_scores() {
        let m = full_tiny();
        let bf16 = estimate(&cpu(&m, 8, 256, ComputeDtype::Bf16)).unwrap();
        let f32 = estimate(&cpu(&m, 8, 256, ComputeDtype::F32)).unwrap();
        assert_eq!(bf16.cpu_peak.unwrap().moment, PeakMoment::LossForward);
        assert!(bf16.activations.unwrap() < f32.activations.unwrap() * 0.8);
        let eager = estimate(&cpu(&m, 1, 2048, ComputeDtype::F32)).unwrap();
        let flash = estimate(&EstimateInput { attention: AttentionKind::Flash, ..cpu(&m, 1, 2048, ComputeDtype::F32) })
            .unwrap();
        assert_eq!(eager.cpu_peak.unwrap().moment, PeakMoment::LossBackward);
        assert!(flash.activations.unwrap() < eager.activations.unwrap() / 5.0);
    }

    #[test]
    fn bad_inputs_are_named() {
        assert_eq!(estimate(&zero(4)), Err(EstimateError::ZeroStage(4)));
        assert_eq!(estimate(&EstimateInput { gpus: 0, ..zero(0) }), Err(EstimateError::NoGpus));
        assert!(matches!(
            estimate(&EstimateInput { method: Method::Lora, ..zero(0) }),
            Err(EstimateError::NeedsShape(_))
        ));
        assert_eq!(
            estimate(&EstimateInput { compute: ComputeDtype::F32, ..zero(0) }),
            Err(EstimateError::ComputeDtype { precision: "mixed", compute: "f32" })
        );
        let empty = EstimateInput {
            batch: Some(BatchShape { batch: 0, seq: 8 }),
            ..cpu(&full_tiny(), 1, 1, ComputeDtype::F32)
        };
        assert_eq!(estimate(&empty), Err(EstimateError::EmptyBatch));
        assert_eq!(parse_param_count("7.5B"), Some(7_500_000_000));
        assert_eq!(parse_param_count("350M"), Some(350_000_000));
        assert_eq!(parse_param_count("12"), Some(12));
        assert_eq!(parse_param_count("seven"), None);
        assert_eq!(parse_param_count("-1B"), None);
    }
}
