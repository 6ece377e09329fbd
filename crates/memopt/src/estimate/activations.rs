//! Activations: what autodiff keeps.
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
//!   16-bit normalised value, `T·h·(4+2)`), and its output, which the next linears keep (`T·h·e`). With a frozen
//!   base (LoRA, QLoRA) the norm weight is not tracked, so its product keeps only the weight: the normalised value
//!   is not kept (`T·h·(4+e)`); and the first layer's first norm, whose input (the frozen embedding's output) is
//!   not tracked, keeps only its output, which the adapters' `A` matmuls keep;
//! - attention: rotated q, the KV heads repeated to every head (k and v), and the output copy `o_proj` keeps
//!   (`4·T·q·e`, q = heads·head_dim); eager adds, from burn's `softmax` as autodiff decomposes it
//!   (`exp(x − max) / sum`): the shifted scores (kept by `exp`), `exp` (kept by the
//!   division) and the probabilities (kept by the matmul with v) — `3·Sc·4` in f32; in 16-bit the softmax still
//!   runs in f32 and the probabilities are cast back: `Sc·(4+4+2)` — and the causal mask (`seq²` bytes). Flash
//!   keeps, instead of any `[seq × seq]` tensor, its own output and an f32 log-sum-exp per row
//!   (`5·T·q·e + batch·heads·seq·4` in all);
//! - SwiGLU: gate, `sigmoid(gate)`, `silu(gate)`, up and their product (`5·T·i·e`).
//!
//! The head keeps the final norm's tensors (its output only when the head is trained: a frozen head's matmul keeps
//! the weight alone) and, from the f32 `log_softmax` over `[tokens, vocab]`, the shifted logits (`T'·V·4`,
//! `T' = batch·(seq−1)` scored positions). In mixed precision every linear weight (and the tied or untied head) is
//! cast to 16-bit at use, and the matmul keeps that cast: 2 bytes per linear parameter.
//!
//! The head fused with the loss (`llmtrain_core::model::fused_loss`, one custom-backward node) keeps its inputs —
//! the final norm's output, trained head or not, and the head itself, a parameter — and an f32 log-sum-exp per
//! row (`T·4`): no logits. It reads the stored head and computes in f32, so in mixed precision no head cast is
//! kept either.
//!
//! Checked with a counting global allocator in the bench process (bytes alive at the end of the forward less
//! those before it): full-tiny 418.3 MiB measured vs 417.6 counted in f32, 306.1 vs 305.4 in bf16, and at one
//! sequence of 2048 tokens 1778.6 vs 1777.5 eager, 234.6 vs 233.7 flash.

use llmtrain_core::model::ModelConfig;

use super::{AttentionImpl, BatchShape, MixedPrecision, linear_weights_per_layer};

/// How the step computes, for the activation count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepKind {
    pub compute: MixedPrecision,
    pub attention: AttentionImpl,
    /// Linear weights are cast to the compute type at use (f32 master weights with 16-bit compute), so the
    /// matmuls keep the casts.
    pub weight_casts: bool,
    /// Base weights are NF4 and dequantized at use (QLoRA): each matmul is one node that dequantizes again in
    /// backward, so no dequantized copy is kept, but one layer's is a transient of forward and backward.
    pub dequantized_base: bool,
    /// LoRA rank on every linear layer (0: none); each adapter keeps its `[tokens, r]` intermediate.
    pub lora_rank: usize,
    /// The base model is frozen (LoRA, QLoRA): embedding, norms and head are not tracked.
    pub frozen_base: bool,
    /// Parameters are stored in 16 bits (no f32 master copy): the fused loss casts the head up to f32.
    pub half_weights: bool,
    /// The head fused with cross-entropy, this many rows at a time (`None`: full logits).
    pub fused_loss_chunk: Option<usize>,
}

impl StepKind {
    /// Plain full training in `compute` with eager attention (f32 master weights).
    pub fn plain(compute: MixedPrecision) -> Self {
        Self {
            compute,
            attention: AttentionImpl::Eager,
            weight_casts: compute.is_half(),
            dequantized_base: false,
            lora_rank: 0,
            frozen_base: false,
            half_weights: false,
            fused_loss_chunk: None,
        }
    }
}

/// The sizes the activation count and the CPU peak are made of, for one rank's micro-batch: the step's
/// dimensions (element counts) and the bytes each block saves. The transients of the peak moments are computed
/// from them in `cpu_peak`.
pub(super) struct StepSizes {
    /// Bytes per activation element.
    pub(super) elem_bytes: f64,
    /// 16-bit compute.
    pub(super) half: bool,
    /// Flash attention.
    pub(super) flash: bool,
    /// Embedding, norms and head frozen (LoRA, QLoRA).
    pub(super) frozen_base: bool,
    /// Rows of one block of the fused loss (the chunk, at most every token); `None`: the plain loss.
    pub(super) loss_block_rows: Option<f64>,
    /// The f32 copy of a 16-bit stored head the fused loss works from (0 when the head is stored in f32).
    pub(super) head_upcast: f64,
    /// Rows of the micro-batch.
    pub(super) rows: f64,
    /// rows × seq.
    pub(super) tokens: f64,
    /// Positions the loss scores: rows × (seq − 1).
    pub(super) scored: f64,
    pub(super) hidden: f64,
    /// Width of q and of the attention output: heads × head_dim.
    pub(super) q_width: f64,
    pub(super) intermediate: f64,
    pub(super) vocab: f64,
    pub(super) layers: f64,
    /// Attention score elements of one layer: rows × heads × seq².
    pub(super) score_elements: f64,
    /// Saved by one RMSNorm, its output included.
    pub(super) norm_saved: f64,
    /// Saved by one attention block (the `o_proj` input included).
    pub(super) attention_saved: f64,
    /// Saved by one SwiGLU MLP.
    pub(super) mlp_saved: f64,
    /// Weight casts (or dequantized weights) one layer's matmuls keep.
    pub(super) layer_casts: f64,
    /// The head weight's cast kept by the logits matmul.
    pub(super) head_casts: f64,
    /// QLoRA: the largest base weight dequantized (its f32 levels, their scaled values, and the compute-dtype
    /// cast in 16-bit compute), alive while its matmul runs.
    pub(super) dequantized_weight: f64,
}

impl StepSizes {
    pub(super) fn new(m: &ModelConfig, shape: BatchShape, kind: StepKind) -> Self {
        let e = kind.compute.activation_bytes();
        let half = kind.compute.is_half();
        let flash = kind.attention == AttentionImpl::Flash;
        let (rows, seq) = (shape.batch as f64, shape.seq as f64);
        let tokens = rows * seq;
        let hidden = m.hidden_size as f64;
        let heads = m.num_attention_heads as f64;
        let q_width = heads * m.head_dim as f64;
        let intermediate = m.intermediate_size as f64;
        let score_elements = rows * heads * seq * seq;
        // f32: the input and x·rsqrt(mean x²), both f32; 16-bit: the input's f32 upcast and the 16-bit
        // normalised value, which only a tracked norm weight's product keeps. Plus the output, which the following
        // linears keep.
        let normalised = if kind.frozen_base { 0.0 } else { e };
        let norm_saved = tokens * hidden * (4.0 + normalised + e);
        // Rotated q, k and v repeated to every head, the output copy `o_proj` keeps.
        let projections = 4.0 * tokens * q_width * e;
        let attention_saved = if flash {
            // The flash node keeps the rotated q, k and v with k and v never repeated (grouped-query heads read as
            // they are), its own output, which o_proj keeps as its input (the CPU kernel writes it heads-last, so
            // merging the heads is a view; the composed default on other backends adds a copy of q's width), and
            // an f32 log-sum-exp per row.
            let kv_width = m.num_key_value_heads as f64 * m.head_dim as f64;
            tokens * (2.0 * q_width + 2.0 * kv_width) * e + rows * heads * seq * 4.0
        } else {
            // Shifted scores and exp(shifted) in f32, the probabilities (f32, or their 16-bit cast), the mask.
            let probabilities = if half { 2.0 } else { 4.0 };
            projections + score_elements * (4.0 + 4.0 + probabilities) + seq * seq
        };
        let adapters = if kind.lora_rank > 0 { 7.0 * tokens * kind.lora_rank as f64 * e } else { 0.0 };
        let mlp_saved = 5.0 * tokens * intermediate * e + adapters;
        let linear_weights = linear_weights_per_layer(m);
        let vocab = m.vocab_size as f64;
        let layer_casts = if kind.dequantized_base {
            0.0
        } else if kind.weight_casts {
            linear_weights * 2.0
        } else {
            0.0
        };
        let fused = kind.fused_loss_chunk.is_some();
        // The fused loss uses the stored head as it is (cast up to f32 only when stored in 16 bits).
        let head_casts = if kind.weight_casts && !fused { vocab * hidden * 2.0 } else { 0.0 };
        let head_upcast = if kind.half_weights && fused { vocab * hidden * 4.0 } else { 0.0 };
        StepSizes {
            elem_bytes: e,
            half,
            flash,
            frozen_base: kind.frozen_base,
            loss_block_rows: kind.fused_loss_chunk.map(|chunk| (chunk as f64).min(tokens)),
            head_upcast,
            rows,
            tokens,
            scored: rows * (seq - 1.0).max(0.0),
            hidden,
            q_width,
            intermediate,
            vocab,
            layers: m.num_hidden_layers as f64,
            score_elements,
            norm_saved,
            attention_saved,
            mlp_saved,
            layer_casts,
            head_casts,
            dequantized_weight: if kind.dequantized_base {
                intermediate * hidden * (8.0 + if half { 2.0 } else { 0.0 })
            } else {
                0.0
            },
        }
    }

    /// Saved by one decoder layer.
    pub(super) fn layer_saved(&self) -> f64 {
        2.0 * self.norm_saved + self.attention_saved + self.mlp_saved
    }

    /// Saved by the head: the final norm's tensors and the loss's.
    pub(super) fn head_saved(&self) -> f64 {
        self.head_norm_saved() + self.loss_saved()
    }

    /// Saved by the final norm: all of a norm's tensors, less its output when nothing keeps it (a frozen head's
    /// matmul keeps only the weight; the fused loss keeps its input either way).
    pub(super) fn head_norm_saved(&self) -> f64 {
        let output_unkept = self.frozen_base && self.loss_block_rows.is_none();
        self.norm_saved - if output_unkept { self.tokens * self.hidden * self.elem_bytes } else { 0.0 }
    }

    /// Saved by the loss: the f32 shifted logits of `log_softmax`, or the fused loss's f32 log-sum-exp per row.
    pub(super) fn loss_saved(&self) -> f64 {
        if self.loss_block_rows.is_some() { self.tokens * 4.0 } else { self.shifted_logits() }
    }

    /// What the first layer's first norm does not keep when the base is frozen: its input, the embedding's
    /// output, is not tracked, so it keeps only its output (for the adapters).
    fn untracked_first_norm(&self) -> f64 {
        if self.frozen_base && self.layers > 0.0 {
            self.norm_saved - self.tokens * self.hidden * self.elem_bytes
        } else {
            0.0
        }
    }

    /// The f32 `[scored, vocab]` buffer: logits minus their row maximum (kept by `exp`), and every f32
    /// gradient of the same shape in the loss backward.
    pub(super) fn shifted_logits(&self) -> f64 {
        self.scored * self.vocab * 4.0
    }

    /// Saved by the whole forward pass (no checkpointing).
    pub(super) fn forward_saved(&self) -> f64 {
        self.layers * (self.layer_saved() + self.layer_casts) - self.untracked_first_norm()
            + self.head_saved()
            + self.head_casts
    }

    /// Bytes of a norm's saved input that are the layer input's own buffer (f32; in 16 bits the norm keeps an
    /// upcast copy instead). With checkpointing the layer inputs are counted once, as kept inputs.
    pub(super) fn shared_input(&self) -> f64 {
        if self.half { 0.0 } else { self.tokens * self.hidden * 4.0 }
    }

    /// The layer inputs checkpointing keeps, one per layer and the top's.
    pub(super) fn kept_layer_inputs(&self) -> f64 {
        (self.layers + 1.0) * self.tokens * self.hidden * self.elem_bytes
    }
}

/// Activation bytes kept for backward, per device: the tensors burn's autodiff saves when our decoder runs (see
/// the module documentation), at their largest — the whole forward's, or with checkpointing the layer inputs
/// plus one layer's recomputed graph (or the head's graph, if larger).
pub fn activation_bytes(m: &ModelConfig, shape: BatchShape, kind: StepKind, checkpointing: bool) -> f64 {
    let sizes = StepSizes::new(m, shape, kind);
    if checkpointing {
        let layer_graph = sizes.layer_saved() - sizes.shared_input() + sizes.layer_casts;
        let head_graph = sizes.head_saved() - sizes.shared_input() + sizes.head_casts;
        sizes.kept_layer_inputs() + layer_graph.max(head_graph)
    } else {
        sizes.forward_saved()
    }
}

#[cfg(test)]
mod tests {
    use super::super::MIB;
    use super::super::tests::full_tiny;
    use super::*;

    #[test]
    fn checkpointing_keeps_fewer_activations() {
        let m = ModelConfig::tiny_llama(4096, 256, 4, 8, 4);
        let shape = BatchShape { batch: 8, seq: 256 };
        let kind = StepKind::plain(MixedPrecision::No);
        let plain = activation_bytes(&m, shape, kind, false);
        let ckpt = activation_bytes(&m, shape, kind, true);
        assert!(ckpt < plain * 0.6, "{ckpt} vs {plain}");
    }

    #[test]
    fn saved_tensors_match_what_autodiff_held_on_the_bench() {
        // Bytes alive at the end of full-tiny's forward less those before it, counted by a counting global
        // allocator in the bench process: f32 eager 418.3 MiB, bf16 306.1 MiB, eager at 1 × 2048 1778.6 MiB.
        // Flash at 1 × 2048, since the CPU kernel reads grouped k/v unrepeated and writes its output heads-last:
        // 220.6 MiB counted the same way around `LlamaModel::forward` in a test binary, which counted 0.9% more
        // than the bench process for the eager cases (422.2 vs 418.3, 1794.6 vs 1778.6): 218.6 on their scale.
        let m = full_tiny();
        let shape = |batch, seq| BatchShape { batch, seq };
        let f32_kind = StepKind::plain(MixedPrecision::No);
        let flash = StepKind { attention: AttentionImpl::Flash, ..f32_kind };
        let cases = [
            (activation_bytes(&m, shape(8, 256), f32_kind, false), 418.3),
            (activation_bytes(&m, shape(8, 256), StepKind::plain(MixedPrecision::Bf16), false), 306.1),
            (activation_bytes(&m, shape(1, 2048), flash, false), 218.6),
            (activation_bytes(&m, shape(1, 2048), f32_kind, false), 1778.6),
        ];
        for (bytes, measured) in cases {
            let mib = bytes / MIB;
            assert!((mib - measured).abs() / measured < 0.01, "{mib:.1} MiB vs {measured} MiB measured");
        }
    }
}
