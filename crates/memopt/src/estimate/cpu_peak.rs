//! The CPU peak.
//!
//! [`CpuPeak`] is the largest resident set one training step of `llmtrain_lightning::optimizer_step` reaches on the CPU
//! backend: the process baseline, the states held at that moment, the saved activations still alive, the buffers
//! of the op running then (its transient), and what glibc's allocator keeps. It is the maximum over the moments
//! where the step can peak (see [`PeakMoment`]); each moment's transient is derived from the op's code (see
//! [`cpu_peak`]). Checked against `cargo xtask bench`, whose report holds the prediction beside the measured
//! `VmHWM` for every case.

use llmtrain_core::model::ModelConfig;

use super::activations::{StepKind, StepSizes};
use super::{BatchShape, MIB};

/// Where in a training step the resident set peaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakMoment {
    /// The loss in the forward pass: the logits and the first `[tokens, vocab]` temporaries of the f32
    /// `log_softmax` (in 16-bit compute, the upcast of the logits through Flex's f64 intermediate); with the fused
    /// loss, one block of rows' logits and their shifted copy.
    LossForward,
    /// The first backward ops, through `log_softmax` and the gather of the labels; with the fused loss, one block's
    /// recomputed logits turned into their gradient and the copy adding the labels' term makes.
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
/// quickstart (whose largest buffer is 16 MiB), and 0.7 for lora-tiny (the fused loss: 11 MiB over 16 MiB blocks of
/// one size, 433 → 444 MiB), where the factor overestimates by 37 MiB.
pub fn allocator_retention(largest_buffer: f64) -> f64 {
    3.0 * largest_buffer.min(MMAP_THRESHOLD_MAX)
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

/// The transients: the buffers of the op running at each peak moment, beyond what is saved by then.
impl StepSizes {
    /// The loss in the forward pass, beyond what is saved by then (the shifted logits included).
    /// f32: the logits are alive while `logits − max` is written. 16-bit: Flex's cast goes through an f64 vector,
    /// after a contiguous copy of the `[rows, seq − 1, vocab]` slice when there are several rows, while the 16-bit
    /// logits are alive; the f32 result becomes the shifted logits in place.
    fn loss_forward(&self) -> f64 {
        let logits = self.tokens * self.vocab * self.elem_bytes;
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
        if self.half { self.scored * self.vocab * (4.0 + 8.0 + 2.0) } else { 2.0 * self.shifted_logits() }
    }

    /// The head's linear backward (the shifted logits consumed by then): the logits' gradient padded back to
    /// every position, and for a trained head burn's weight gradient formed as one `[hidden, vocab]` product per
    /// row before the sum over rows.
    fn head_weight_gradient(&self) -> f64 {
        let per_row = if self.frozen_base { 0.0 } else { self.rows * self.hidden * self.vocab };
        (self.tokens * self.vocab + per_row) * self.elem_bytes
    }

    /// The fused loss's forward (`chunked_forward`), at a block of `block_rows` rows: the f32 logits
    /// `hidden_block · headᵀ` are alive while `logits − max` is written to a second block (`exp` then runs in place
    /// and is summed away). A head stored in 16 bits is cast up to f32 first, through Flex's f64 intermediate, and
    /// the f32 copy stays for the whole pass.
    fn fused_loss_forward(&self, block_rows: f64) -> f64 {
        let blocks = 2.0 * block_rows * self.vocab * 4.0;
        (3.0 * self.head_upcast).max(self.head_upcast + blocks)
    }

    /// The fused loss's backward (`chunked_backward`), at a block: the recomputed logits become their gradient in
    /// place (`exp(logits − lse) · g`), and adding the labels' `−g` (`scatter` with `Add`) copies the block, so two
    /// blocks are alive. Beside them: the hidden gradient of the blocks done (at most `tokens − block_rows` rows),
    /// in 16-bit compute the block's f32 hidden rows, and for a trained head the f32 `[vocab, h]` accumulator, which
    /// then adds `dlogitsᵀ · hidden_block`, a second `[vocab, h]` product beside one block.
    fn fused_loss_backward(&self, block_rows: f64) -> f64 {
        let block = block_rows * self.vocab * 4.0;
        let head = if self.frozen_base { 0.0 } else { self.vocab * self.hidden * 4.0 };
        let hidden_rows = if self.half { block_rows * self.hidden * 4.0 } else { 0.0 };
        let hidden_gradient = (self.tokens - block_rows) * self.hidden * self.elem_bytes;
        let per_block = self.head_upcast + hidden_rows + hidden_gradient + (2.0 * block + head).max(block + 2.0 * head);
        per_block.max(3.0 * self.head_upcast)
    }

    /// The last layer's MLP backward: the incoming gradient, `down_proj`'s input gradient and, when it is trained,
    /// its per-row weight gradients (a frozen base's adapters have rank-thin ones).
    fn mlp_backward(&self) -> f64 {
        let per_row = if self.frozen_base { 0.0 } else { self.rows * self.intermediate * self.hidden };
        (self.tokens * self.hidden + self.tokens * self.intermediate + per_row) * self.elem_bytes
            + self.dequantized_weight
    }

    /// What the attention backward has freed of its layer by the time it reaches the scores: the MLP, the second
    /// norm, and `o_proj`'s input.
    fn freed_before_scores(&self) -> f64 {
        self.mlp_saved + self.norm_saved + self.tokens * self.q_width * self.elem_bytes
    }

    /// Eager attention backward at the probabilities' matmul: their gradient (f32), beside the kept scores.
    /// 16-bit: the 16-bit gradient then its cast to f32 through Flex's f64 intermediate, the 16-bit
    /// probabilities already freed.
    fn attention_backward(&self) -> f64 {
        if self.half { self.score_elements * (2.0 + 8.0 + 4.0 - 2.0) } else { self.score_elements * 4.0 }
    }

    /// Graph-free forward of one layer (checkpointing): scores, their masked copy and the mask, or in 16 bits the
    /// scores, the f64 intermediate and the f32 upcast.
    fn inference_layer(&self) -> f64 {
        if self.flash {
            0.0
        } else if self.half {
            self.score_elements * (2.0 + 8.0 + 4.0)
        } else {
            self.score_elements * (4.0 + 4.0 + 1.0)
        }
    }

    /// The largest single buffer of the step (for the allocator's retention): the f32 logits (with the fused loss,
    /// one block of them), a trained head's per-row weight gradients (plain loss only), the f32 scores, the MLP's
    /// activations, and Flex's f64 cast intermediates (in 16 bits; and a 16-bit head's for the fused loss).
    fn largest_buffer(&self) -> f64 {
        let fused = self.loss_block_rows.is_some();
        let logits = self.loss_block_rows.unwrap_or(self.tokens) * self.vocab * 4.0;
        let head_grad =
            if self.frozen_base || fused { 0.0 } else { self.rows * self.hidden * self.vocab * self.elem_bytes };
        let scores = if self.flash { 0.0 } else { self.score_elements * 4.0 };
        let logit_cast = if fused { 2.0 * self.head_upcast } else { self.scored * self.vocab * 8.0 };
        let casts = if self.half { logit_cast.max(scores * 2.0) } else { 0.0 };
        logits.max(head_grad).max(scores).max(self.tokens * self.intermediate * self.elem_bytes).max(casts)
    }
}

/// One moment where the step can peak, and the bytes it holds there besides the persistent states.
struct PeakCandidate {
    moment: PeakMoment,
    /// Gradients that exist by then.
    gradients_held: f64,
    /// Saved tensors still alive.
    saved: f64,
    /// Buffers of the running op.
    transient: f64,
}

impl PeakCandidate {
    fn bytes(&self) -> f64 {
        self.gradients_held + self.saved + self.transient
    }
}

/// The peak resident memory of one CPU training step per rank: the largest of the moments where it can peak.
///
/// Every moment holds `baseline + persistent states + saved + transient + allocator`; they differ in the
/// gradients that exist by then, in what is still saved (the forward's tensors, less what the backward has
/// consumed) and in the running op's buffers:
///
/// - loss forward: all saved tensors + [`loss_forward`](StepSizes::loss_forward);
/// - loss backward: all saved + two f32 `[scored, vocab]` gradients (16-bit: the cast back, 14 bytes a logit);
/// - head weight gradient: the padded logits' gradient + one `[hidden, vocab]` product per row (trained head);
/// - with the head fused with the loss, these three are the fused node's two passes, each at one block of rows:
///   all saved (no logits among them) + two f32 `[block, vocab]` buffers, in backward beside the hidden
///   gradient's finished blocks and a trained head's `[vocab, h]` accumulator;
/// - last layer's MLP backward: the head's tensors freed, its gradient kept, `down_proj`'s gradients in flight;
/// - last layer's attention backward (eager): its MLP freed, the probabilities' gradient beside the three saved
///   score tensors (the peak at long sequences, where the scores dominate);
/// - gradients after backward: burn's gradients, the buffer's copies of the transposed ones, and with several
///   ranks the flat all-reduce bucket and its reduced copy;
/// - with checkpointing (`LlamaModel::hidden_states_recomputed`) the layer inputs stay (one per layer and the
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
    let sizes = StepSizes::new(m, shape, kind);
    let mut candidates: Vec<PeakCandidate> = Vec::new();
    let mut at = |moment, gradients_held, saved, transient| {
        candidates.push(PeakCandidate { moment, gradients_held, saved, transient })
    };
    if checkpointing {
        // The layer inputs, one per layer and the top's, all alive until the last layer's recompute is done.
        let kept_inputs = sizes.kept_layer_inputs();
        at(PeakMoment::CheckpointForward, 0.0, kept_inputs, sizes.inference_layer());
        let saved_with_head = kept_inputs + sizes.head_casts + sizes.head_norm_saved() - sizes.shared_input();
        if let Some(block) = sizes.loss_block_rows {
            let saved = saved_with_head + sizes.loss_saved();
            at(PeakMoment::CheckpointHead, 0.0, saved, sizes.fused_loss_forward(block));
            at(PeakMoment::CheckpointHead, 0.0, saved, sizes.fused_loss_backward(block));
        } else {
            at(PeakMoment::CheckpointHead, 0.0, saved_with_head, sizes.loss_forward() + sizes.shifted_logits());
            let loss_backward =
                if sizes.half { sizes.loss_backward() } else { sizes.loss_backward() + sizes.shifted_logits() };
            at(PeakMoment::CheckpointHead, 0.0, saved_with_head, loss_backward);
            at(PeakMoment::CheckpointHead, 0.0, saved_with_head, sizes.head_weight_gradient());
        }
        // The head's step gradients stay alive through the layers beside the buffer's copy of the (transposed)
        // head weight gradient (the fused loss's is contiguous and shared); the gradient of the layer's output
        // flows in.
        let head_copies = if sizes.loss_block_rows.is_some() { 1.0 } else { 2.0 };
        let head_gradients_held = head_copies * states.head_gradient;
        let upstream_gradient = sizes.tokens * sizes.hidden * sizes.elem_bytes;
        let saved_with_layer = kept_inputs + sizes.layer_saved() - sizes.shared_input() + sizes.layer_casts;
        let transient = upstream_gradient + sizes.mlp_backward();
        at(PeakMoment::CheckpointLayerMlp, head_gradients_held, saved_with_layer, transient);
        if !sizes.flash {
            let saved = saved_with_layer - sizes.freed_before_scores();
            let gradients_held = head_gradients_held + states.top_layer_gradients;
            let transient = upstream_gradient + sizes.attention_backward();
            at(PeakMoment::CheckpointLayerAttention, gradients_held, saved, transient);
        }
    } else {
        let forward_saved = sizes.forward_saved();
        if let Some(block) = sizes.loss_block_rows {
            // The fused node is the first backward op; every saved tensor is alive through it.
            at(PeakMoment::LossForward, 0.0, forward_saved, sizes.fused_loss_forward(block));
            at(PeakMoment::LossBackward, 0.0, forward_saved, sizes.fused_loss_backward(block));
        } else {
            at(PeakMoment::LossForward, 0.0, forward_saved, sizes.loss_forward());
            let saved_after_loss = forward_saved - sizes.shifted_logits();
            let saved_in_loss_backward = if sizes.half { saved_after_loss } else { forward_saved };
            at(PeakMoment::LossBackward, 0.0, saved_in_loss_backward, sizes.loss_backward());
            at(PeakMoment::HeadWeightGradient, 0.0, saved_after_loss, sizes.head_weight_gradient());
        }
        let layers_saved = forward_saved - sizes.head_saved() - sizes.head_casts;
        at(PeakMoment::MlpBackward, states.head_gradient, layers_saved, sizes.mlp_backward());
        if !sizes.flash {
            let saved = layers_saved - sizes.freed_before_scores();
            let gradients_held = states.head_gradient + states.top_layer_gradients;
            at(PeakMoment::AttentionBackward, gradients_held, saved, sizes.attention_backward());
        }
    }
    let all_reduce_buckets = if states.all_reduce { 2.0 * states.gradients } else { 0.0 };
    let gradients_held = states.gradients + states.copied_gradients + all_reduce_buckets;
    at(PeakMoment::Gradients, gradients_held, 0.0, 0.0);
    let peak = candidates.iter().max_by(|a, b| a.bytes().total_cmp(&b.bytes())).expect("at least one moment");
    CpuPeak {
        moment: peak.moment,
        baseline: PROCESS_BASELINE,
        states: states.persistent + peak.gradients_held,
        saved: peak.saved,
        transient: peak.transient,
        allocator: allocator_retention(sizes.largest_buffer()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cpu_rank, full_tiny};
    use super::super::{AttentionImpl, EstimateInput, MIB, MixedPrecision, estimate};
    use super::*;

    #[test]
    fn cpu_peak_of_full_tiny_is_the_loss_backward() {
        // `cargo xtask bench --case full-tiny`: VmHWM 651-659 MiB; 551 MiB with glibc's mmap threshold fixed
        // (MALLOC_MMAP_THRESHOLD_=131072), i.e. without the allocator's retention.
        let peak = estimate(&cpu_rank(&full_tiny(), 8, 256, MixedPrecision::No)).unwrap().cpu_peak.unwrap();
        assert_eq!(peak.moment, PeakMoment::LossBackward);
        let total = peak.total() / MIB;
        assert!((total - 653.0).abs() / 653.0 < 0.05, "{total:.1} MiB");
        let without_retention = (peak.total() - peak.allocator) / MIB;
        assert!((without_retention - 551.0).abs() / 551.0 < 0.03, "{without_retention:.1} MiB");
    }

    /// The bench's LoRA cases: r = 8 on every linear layer of full-tiny, 8 × 256 tokens, f32, with the head fused
    /// with the loss in chunks of `chunk` rows or not.
    fn lora_tiny(chunk: Option<usize>) -> EstimateInput {
        EstimateInput {
            method: super::super::Method::Lora,
            lora_rank: 8,
            fused_loss_chunk: chunk,
            ..cpu_rank(&full_tiny(), 8, 256, MixedPrecision::No)
        }
    }

    #[test]
    fn the_fused_loss_keeps_no_logits_and_peaks_in_its_backward() {
        // `cargo xtask bench --case lora-tiny --case lora-tiny-plain`: VmHWM 443-444 MiB fused, 566-569 MiB plain;
        // 433 and 494 MiB with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_=131072), without the
        // allocator's retention.
        for (chunk, measured, without_retention) in [(Some(1024), 443.0, 433.0), (None, 568.0, 494.0)] {
            let e = estimate(&lora_tiny(chunk)).unwrap();
            let peak = e.cpu_peak.unwrap();
            assert_eq!(peak.moment, PeakMoment::LossBackward, "{chunk:?}");
            let total = peak.total() / MIB;
            assert!((total - measured).abs() / measured < 0.15, "{chunk:?}: {total:.1} MiB vs {measured}");
            let counted = (peak.total() - peak.allocator) / MIB;
            let error = (counted - without_retention).abs() / without_retention;
            assert!(error < 0.03, "{chunk:?}: {counted:.1} MiB vs {without_retention}");
        }
        let (fused, plain) = (estimate(&lora_tiny(Some(1024))).unwrap(), estimate(&lora_tiny(None)).unwrap());
        // The shifted logits (2040 × 4096 f32) give way to one f32 log-sum-exp per token; the frozen head keeps no
        // input, the fused node keeps the final norm's output.
        let tokens_x_hidden = 2048.0 * 256.0 * 4.0;
        let saved_difference = plain.activations.unwrap() - fused.activations.unwrap();
        assert_eq!(saved_difference, 2040.0 * 4096.0 * 4.0 - 2048.0 * 4.0 - tokens_x_hidden);
        // Smaller chunks, smaller blocks.
        let small = estimate(&lora_tiny(Some(256))).unwrap().cpu_peak.unwrap();
        assert!(small.total() < fused.cpu_peak.unwrap().total());
    }

    #[test]
    fn mixed_precision_peaks_at_the_f32_loss_and_flash_drops_the_scores() {
        let m = full_tiny();
        let bf16 = estimate(&cpu_rank(&m, 8, 256, MixedPrecision::Bf16)).unwrap();
        let f32 = estimate(&cpu_rank(&m, 8, 256, MixedPrecision::No)).unwrap();
        assert_eq!(bf16.cpu_peak.unwrap().moment, PeakMoment::LossForward);
        assert!(bf16.activations.unwrap() < f32.activations.unwrap() * 0.8);
        let eager = estimate(&cpu_rank(&m, 1, 2048, MixedPrecision::No)).unwrap();
        let flash =
            estimate(&EstimateInput { attention: AttentionImpl::Flash, ..cpu_rank(&m, 1, 2048, MixedPrecision::No) })
                .unwrap();
        assert_eq!(eager.cpu_peak.unwrap().moment, PeakMoment::LossBackward);
        assert!(flash.activations.unwrap() < eager.activations.unwrap() / 5.0);
    }
}
