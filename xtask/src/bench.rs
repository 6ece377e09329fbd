//! `cargo xtask bench`: training-step throughput and peak memory per case, side by side with PyTorch.
//!
//! Each case runs in a child process (`xtask bench-case NAME`) so its peak RSS is its own. Results go to
//! `target/bench/report.json` (keyed by case) and `target/bench/report.md`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use llmtrain_accel::{Accelerator, AcceleratorConfig, FullFinetune, HeldBytes, run_in_process};
use llmtrain_core::config::MixedPrecision;
use llmtrain_core::data::{Batch, Content};
use llmtrain_core::device::CpuBackend;
use llmtrain_core::dist::Communicator;
use llmtrain_core::model::compute::precision_dtype;
use llmtrain_core::model::{AttentionKernel, LlamaModel, ModelConfig, SequenceClassifier};
use llmtrain_core::train::{AdamW, AdamWConfig};
use llmtrain_fastlora::{LoraConfig, TargetModules, attach};
use llmtrain_lightning::{CausalLm, LightningModule, Recompute, StepOptions, optimizer_step};
use llmtrain_memopt::estimate::{
    AttentionImpl, BatchShape, EstimateInput, Method, Precision, count_params, estimate, fp32_model_states,
};
use llmtrain_trl::dpo::{Dpo, DpoLoss, LossType, TokenizedPair};
use llmtrain_trl::online::rollout::{Prompt, Slot};
use llmtrain_trl::online::{Online, OnlineSection};
use llmtrain_trl::policy::PolicyModule;
use llmtrain_trl::reference::Reference;
use llmtrain_zero::{OffloadDevice, ZeroSection};
use serde_json::{Value, json};

use crate::backends::full_tiny;

#[derive(clap::Args)]
pub struct Args {
    /// Only these cases (default: all).
    #[arg(long)]
    pub case: Vec<String>,
    /// Timed steps per case, after 2 warm-up steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Skip the PyTorch side even when python3 with torch is installed.
    #[arg(long)]
    pub no_torch: bool,
}

/// A benchmark case: a model shape, a global batch, and the data-parallel ranks (threads) sharing it.
pub struct Case {
    pub name: &'static str,
    pub model: ModelConfig,
    pub batch: usize,
    pub seq: usize,
    pub ranks: usize,
    /// Recompute each decoder layer in backward (llmtrain-memopt).
    pub checkpointing: bool,
    /// The compute precision (f32 master weights either way).
    pub precision: MixedPrecision,
    /// Tiled attention with a recomputing backward instead of eager attention.
    pub flash: bool,
    /// LoRA of this rank on every linear layer (alpha = 2·r, PEFT's defaults otherwise); the base frozen.
    pub lora_rank: Option<usize>,
    /// The head fused with cross-entropy over chunks of rows (no `[tokens × vocab]` logits kept).
    pub fused_loss: bool,
    /// RMSNorm, SwiGLU and RoPE as single nodes (`[memopt] fused_kernels`): the backend's kernels.
    pub fused_kernels: bool,
    /// QLoRA: the decoder's linear weights stored in NF4 with double quantization (needs `lora_rank`).
    pub quantized: bool,
    /// A DPO step (llmtrain-trl) instead of a causal-LM one: `batch / 2` pairs, each a prompt of `seq / 2`
    /// tokens with two completions of `seq / 2`; the reference a frozen copy of the weights, or under LoRA the
    /// policy with its adapters disabled.
    pub dpo: bool,
    /// A GRPO step (llmtrain-trl's online objective) instead: `batch / GRPO_GENERATIONS` prompts of `seq / 2`
    /// tokens, each sampled `GRPO_GENERATIONS` times for `seq / 2` new tokens with the KV cache (no stop token),
    /// scored by a reward model of the policy's shape, then one update; the step time is split into
    /// generation, scoring and update.
    pub grpo: bool,
    /// ZeRO stage of the ranks (llmtrain-zero; 0 is plain data parallelism), and whether the optimizer's share is
    /// offloaded to host memory.
    pub zero_stage: u8,
    pub offload_optimizer: bool,
}

/// A one-rank f32 case with every memory technique off.
fn case(name: &'static str, model: ModelConfig, batch: usize, seq: usize) -> Case {
    Case {
        name,
        model,
        batch,
        seq,
        ranks: 1,
        checkpointing: false,
        precision: MixedPrecision::No,
        flash: false,
        lora_rank: None,
        fused_loss: false,
        fused_kernels: false,
        quantized: false,
        dpo: false,
        grpo: false,
        zero_stage: 0,
        offload_optimizer: false,
    }
}

/// `case` through every kernel: fused RMSNorm/SwiGLU/RoPE, the head fused with the loss, flash attention.
fn fast(case: Case) -> Case {
    Case { fused_kernels: true, fused_loss: true, flash: true, ..case }
}

pub fn cases() -> Vec<Case> {
    let mut quickstart = ModelConfig::tiny_llama(2048, 128, 4, 4, 2);
    quickstart.intermediate_size = 352;
    quickstart.tie_word_embeddings = true;
    vec![
        case("full-tiny", full_tiny(), 8, 256),
        // full-tiny through the backend's kernels (RMSNorm, SwiGLU, RoPE), and with every kernel: the fused head +
        // loss and flash attention too (PyTorch's SDPA, which the reference runs, is its own flash kernel).
        Case { fused_kernels: true, ..case("full-tiny-kernels", full_tiny(), 8, 256) },
        fast(case("full-tiny-fast", full_tiny(), 8, 256)),
        case("quickstart", quickstart.clone(), 16, 128),
        fast(case("quickstart-fast", quickstart, 16, 128)),
        // full-tiny's global batch over 2 in-process ranks: the cost of data parallelism's communication.
        Case { ranks: 2, ..case("ddp-2", full_tiny(), 8, 256) },
        // Gradient checkpointing on full-tiny's shape, and on the same tokens as 2 sequences of 1024, where
        // attention's activations dominate; each beside the same shape without it.
        Case { checkpointing: true, ..case("full-tiny-ckpt", full_tiny(), 8, 256) },
        case("full-tiny-seq1024", full_tiny(), 2, 1024),
        fast(case("full-tiny-seq1024-fast", full_tiny(), 2, 1024)),
        Case { checkpointing: true, ..case("full-tiny-seq1024-ckpt", full_tiny(), 2, 1024) },
        // Mixed precision on full-tiny's shape (compare with full-tiny).
        Case { precision: MixedPrecision::Bf16, ..case("full-tiny-bf16", full_tiny(), 8, 256) },
        Case { precision: MixedPrecision::Fp16, ..case("full-tiny-fp16", full_tiny(), 8, 256) },
        // One sequence of 2048 tokens on full-tiny's shape: eager attention keeps 8 heads × 2048² scores and
        // probabilities per layer for backward, flash attention keeps none.
        case("attention-naive-2048", full_tiny(), 1, 2048),
        Case { flash: true, ..case("attention-flash-2048", full_tiny(), 1, 2048) },
        // LoRA r=8 on every linear layer of full-tiny, autodiff through everything (PEFT's setup in
        // torch_llama.py --mode lora).
        Case { lora_rank: Some(8), ..case("lora-tiny-plain", full_tiny(), 8, 256) },
        // The same with llmtrain's fast path: the head fused with the loss, RMSNorm, SwiGLU and RoPE as fused nodes,
        // flash attention.
        Case { lora_rank: Some(8), ..fast(case("lora-tiny", full_tiny(), 8, 256)) },
        // lora-tiny with gradient checkpointing, as Unsloth runs by default (`use_gradient_checkpointing`).
        Case { lora_rank: Some(8), checkpointing: true, ..fast(case("lora-tiny-ckpt", full_tiny(), 8, 256)) },
        // A shape where the weights dominate memory (31.5M parameters, 2 × 128 tokens): full finetuning keeps
        // 16 bytes a parameter (weights, gradients, AdamW's two moments), QLoRA ~0.5 for the decoder's linear
        // weights (NF4) plus the dense embeddings and head, and states for its r=8 adapters only.
        // DPO on full-tiny's shape (4 pairs: 8 sequences of 256 tokens a step): with a frozen copy as the
        // reference, and with LoRA r=8 and the reference the policy without its adapters (no second copy).
        Case { dpo: true, ..case("dpo-tiny", full_tiny(), 8, 256) },
        Case { dpo: true, lora_rank: Some(8), ..case("dpo-tiny-lora", full_tiny(), 8, 256) },
        // GRPO on full-tiny's shape: 8 prompts of 64 tokens × 4 completions of 64 new tokens a step.
        Case { grpo: true, ..case("grpo-tiny", full_tiny(), 32, 128) },
        case("full-small", small(), 2, 128),
        Case {
            lora_rank: Some(8),
            fused_loss: true,
            fused_kernels: true,
            quantized: true,
            ..case("qlora-small", small(), 2, 128)
        },
        // full-small's global batch over 2 ranks with each ZeRO stage: the model states dominate, so what a rank
        // keeps falls from 16 bytes a parameter (stage 0) to 4 + 4 + 8/2 (stage 1), 4 + (4 + 8)/2 (stage 2) and
        // 16/2 (stage 3, which gathers each decoder layer for its forward and again for its recompute: it runs
        // with gradient checkpointing, as its estimate does; zero-0-2-ckpt is its baseline with the same activations).
        Case { ranks: 2, ..case("zero-0-2", small(), 2, 128) },
        Case { ranks: 2, zero_stage: 1, ..case("zero-1-2", small(), 2, 128) },
        Case { ranks: 2, zero_stage: 2, ..case("zero-2-2", small(), 2, 128) },
        Case { ranks: 2, zero_stage: 2, offload_optimizer: true, ..case("zero-2-2-offload", small(), 2, 128) },
        Case { ranks: 2, checkpointing: true, ..case("zero-0-2-ckpt", small(), 2, 128) },
        Case { ranks: 2, zero_stage: 3, checkpointing: true, ..case("zero-3-2", small(), 2, 128) },
    ]
}

/// 4 layers of hidden 768 (12 heads), intermediate 2048, vocabulary 2048, untied head.
fn small() -> ModelConfig {
    let mut m = ModelConfig::tiny_llama(2048, 768, 4, 12, 12);
    m.intermediate_size = 2048;
    m
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Step times (ms) and the all-reduce time within each step (ms), measured on rank 0, and under ZeRO the model
/// states rank 0 kept.
struct Timings {
    step_ms: Vec<f64>,
    comm_ms: Vec<f64>,
    held: Option<HeldBytes>,
    /// Per timed step, milliseconds spent sampling and scoring rollouts (online objectives).
    rollout_ms: Vec<(f64, f64)>,
}

/// Runs one case in this process (each rank a thread) and prints its JSON result on stdout.
pub fn run_case(name: &str, steps: usize) -> Result<()> {
    if name == NF4_CASE {
        return nf4_storage(steps);
    }
    let case = cases().into_iter().find(|c| c.name == name).with_context(|| format!("unknown case `{name}`"))?;
    if case.batch % case.ranks != 0 {
        bail!("case {name}: batch {} does not split over {} ranks", case.batch, case.ranks);
    }
    let ranks = run_in_process(case.ranks, |comm| bench_rank(&case, comm, steps))?;
    let Timings { step_ms: mut times, comm_ms, held, rollout_ms } = ranks.into_iter().next().context("no rank")?;
    let phases = rollout_phases(&times, &rollout_ms);
    let comm_share = comm_ms.iter().sum::<f64>() / times.iter().sum::<f64>();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let m = &case.model;
    let n = case.batch * case.seq;
    let mut result = json!({
        "tokens_per_sec": n as f64 / (median / 1e3),
        "step_ms_median": median,
        "step_ms_all": times,
        "peak_rss_mb": peak_rss_mb(),
        "shape": {
            "vocab": m.vocab_size, "hidden": m.hidden_size, "layers": m.num_hidden_layers,
            "heads": m.num_attention_heads, "kv_heads": m.num_key_value_heads, "ffn": m.intermediate_size,
            "batch": case.batch, "seq": case.seq, "dtype": "f32", "compute_dtype": compute_dtype(case.precision),
            "optimizer": "adamw",
            "threads": std::env::var("RAYON_NUM_THREADS").ok(),
            "tied": m.tie_word_embeddings,
            "ranks": case.ranks,
            "gradient_checkpointing": case.checkpointing,
            "attention": if case.flash { "flash" } else { "eager" },
            "lora_rank": case.lora_rank,
            "base_weights": if case.quantized { "nf4 (double quantization)" } else { "f32" },
            "fused_loss": case.fused_loss,
            "fused_kernels": case.fused_kernels,
        },
        "backend": "flex",
    });
    if let Some(phases) = phases {
        result["phases"] = phases;
    }
    if case.ranks > 1 {
        result["comm_share"] = json!(comm_share);
        result["comm_ms_per_step"] = json!(comm_ms.iter().sum::<f64>() / comm_ms.len() as f64);
        result["zero"] = model_states(&case, held)?;
    }
    println!("{result}");
    Ok(())
}

/// An online step's time split into generation, scoring and update (medians over the timed steps, and the
/// shares of the mean step they make).
fn rollout_phases(step_ms: &[f64], rollout_ms: &[(f64, f64)]) -> Option<Value> {
    if rollout_ms.is_empty() {
        return None;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let generation: Vec<f64> = rollout_ms.iter().map(|p| p.0).collect();
    let scoring: Vec<f64> = rollout_ms.iter().map(|p| p.1).collect();
    let update: Vec<f64> = step_ms.iter().zip(rollout_ms).map(|(s, p)| s - p.0 - p.1).collect();
    let total: f64 = step_ms.iter().sum();
    let share = |v: &[f64]| v.iter().sum::<f64>() / total;
    Some(json!({
        "generation_ms": median(generation.clone()), "scoring_ms": median(scoring.clone()),
        "update_ms": median(update.clone()),
        "generation_share": share(&generation), "scoring_share": share(&scoring), "update_share": share(&update),
    }))
}

/// Marsaglia's xorshift64: the same pseudo-random inputs on every run, without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The NF4 storage case: not a training step but QLoRA's weight format, so its figures are storage.
const NF4_CASE: &str = "nf4-storage";

/// A 4096 x 4096 weight (normal, std 0.02) quantized to NF4 with double quantization: bits per parameter,
/// and quantize / dequantize time (`tokens_per_sec` holds weights quantized per second here).
fn nf4_storage(steps: usize) -> Result<()> {
    use llmtrain_memopt::nf4::Nf4Tensor;
    let (rows, cols) = (4096usize, 4096usize);
    let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut uniform = move || (random.next() >> 11) as f64 / (1u64 << 53) as f64;
    // Box-Muller: normal weights like a trained layer's.
    let weight: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let (u, v) = (uniform().max(1e-12), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * 0.02) as f32
        })
        .collect();
    let mut quantize_ms = Vec::with_capacity(steps);
    let mut dequantize_ms = Vec::with_capacity(steps);
    let mut quantized = Nf4Tensor::quantize(&weight, true);
    for _ in 0..steps.max(1) {
        let start = Instant::now();
        quantized = Nf4Tensor::quantize(&weight, true);
        quantize_ms.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        let restored = quantized.dequantize();
        dequantize_ms.push(start.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(restored);
    }
    quantize_ms.sort_by(f64::total_cmp);
    dequantize_ms.sort_by(f64::total_cmp);
    let median = quantize_ms[quantize_ms.len() / 2];
    let plain = Nf4Tensor::quantize(&weight, false);
    println!(
        "{}",
        json!({
            "tokens_per_sec": (rows * cols) as f64 / (median / 1e3),
            "step_ms_median": median,
            "dequantize_ms_median": dequantize_ms[dequantize_ms.len() / 2],
            "peak_rss_mb": peak_rss_mb(),
            "bits_per_param": quantized.bits_per_value(),
            "bits_per_param_without_double_quant": plain.bits_per_value(),
            "bytes": quantized.storage_bytes(),
            "f32_bytes": rows * cols * 4,
            "shape": {"rows": rows, "cols": cols, "block": 64, "absmax_block": 256, "dtype": "nf4"},
            "note": "tokens_per_sec = weights quantized per second; step_ms_median = one quantization",
        })
    );
    Ok(())
}

/// One rank of a case: its share of the global batch, 2 warm-up steps, then `steps` timed ones.
fn bench_rank(case: &Case, comm: Box<dyn Communicator>, steps: usize) -> Result<Timings> {
    type A = Autodiff<CpuBackend>;
    let device = Default::default();
    let rank = comm.rank();
    let config = AcceleratorConfig { mixed_precision: case.precision, ..Default::default() };
    let mut accelerator = Accelerator::<A>::new(config, comm)?;
    let zero = ZeroSection {
        stage: case.zero_stage,
        reduce_bucket_size: ZERO_BUCKET_ELEMS as f64,
        offload_optimizer: if case.offload_optimizer { OffloadDevice::Cpu } else { OffloadDevice::None },
        ..Default::default()
    };
    if let Some(strategy) = zero.strategy() {
        accelerator = accelerator.with_strategy(Box::new(strategy));
    }
    // QLoRA's base is quantized layer by layer as it is drawn: the dense model never exists.
    let mut model = LlamaModel::<A>::init_with(&case.model, &device, case.quantized.then_some(true), 0);
    if let Some(r) = case.lora_rank {
        let config = LoraConfig::new(r, 2.0 * r as f64, TargetModules::Pattern("all-linear".into()));
        attach(&mut model, &config, &device)?;
    }
    let mut model = accelerator.prepare_model(model)?;
    model.compute.dtype = precision_dtype(case.precision);
    if case.flash {
        model.compute.attention = AttentionKernel::Flash { block: FLASH_BLOCK };
    }
    if case.fused_loss {
        model.compute.loss_chunk = Some(LOSS_CHUNK);
    }
    model.compute.fused_kernels = case.fused_kernels;
    let mut optimizer = AdamW::<CpuBackend>::new(AdamWConfig::default());
    let rows = case.batch / case.ranks;
    let mut random = XorShift(0x2545_F491_4F6C_DD1D);
    let mut draw =
        |n: usize| -> Vec<u32> { (0..n).map(|_| (random.next() % case.model.vocab_size as u64) as u32).collect() };
    if case.dpo {
        // Each rank's pairs: random prompts and completions of half a row each.
        let half = case.seq / 2;
        let pairs: Vec<TokenizedPair> = (0..rows / 2)
            .map(|_| TokenizedPair {
                prompt: draw(half),
                chosen: draw(half),
                rejected: draw(half),
                reference_logps: None,
            })
            .collect();
        let reference = match case.lora_rank {
            Some(_) => Reference::PolicyWithoutAdapters,
            None => Reference::Model(Box::new(model.valid())),
        };
        let loss = DpoLoss::new(0.1, vec![(LossType::Sigmoid, 1.0)], 0.0);
        let files = CausalLm::new(&FullFinetune, model.compute, device);
        let mut module = PolicyModule::new(Dpo::new(loss, reference, 0, None), files);
        return timed_steps(case, &mut accelerator, &mut module, model, &mut optimizer, &pairs, steps, &|_| None);
    }
    if case.grpo {
        let section = OnlineSection {
            num_generations: Some(GRPO_GENERATIONS),
            max_completion_length: Some(case.seq / 2),
            reward_model: Some("reward".into()),
            ..Default::default()
        };
        let settings = section.settings("grpo").map_err(|e| anyhow::anyhow!("{}: {}", e.key, e.message))?;
        let reward = SequenceClassifier::new_head(model.valid(), 0.02, &device);
        let online = Online::new(settings, None, 0, None, Some(reward));
        let files = CausalLm::new(&FullFinetune, model.compute, device);
        let mut module = PolicyModule::new(online, files);
        let slots: Vec<Slot> = (0..rows / GRPO_GENERATIONS)
            .flat_map(|group| {
                let prompt = Arc::new(Prompt {
                    ids: draw(case.seq / 2),
                    content: Content::Text(String::new()),
                    columns: Default::default(),
                });
                (0..GRPO_GENERATIONS).map(move |_| Slot { prompt: prompt.clone(), group: group as u64, rollout: None })
            })
            .collect();
        let phases = |m: &PolicyModule<'_, A, Online<CpuBackend>>| {
            let t = m.objective.timings();
            Some((t.generation.as_secs_f64() * 1e3, t.scoring.as_secs_f64() * 1e3))
        };
        return timed_steps(case, &mut accelerator, &mut module, model, &mut optimizer, &slots, steps, &phases);
    }
    // The objective `llmtrain train` runs, with the compute settings above.
    let mut module = CausalLm::new(&FullFinetune, model.compute, device);
    // Random tokens, as the PyTorch reference uses; labels = inputs. Each rank takes its rows of the batch.
    let all_ids = draw(case.batch * case.seq);
    let input_ids = all_ids[rank * rows * case.seq..(rank + 1) * rows * case.seq].to_vec();
    let labels = input_ids.iter().map(|&t| t as i64).collect();
    let batch = Batch { rows, seq: case.seq, input_ids, labels, position_ids: None };
    timed_steps(case, &mut accelerator, &mut module, model, &mut optimizer, &batch, steps, &|_| None)
}

/// Completions per prompt in the GRPO case.
const GRPO_GENERATIONS: usize = 4;

/// 2 warm-up steps of `module` on one micro-batch (a fresh copy each step), then `steps` timed ones; `phases`
/// reads how long an online module spent sampling and scoring in the step.
#[allow(clippy::too_many_arguments)]
fn timed_steps<M: LightningModule<Autodiff<CpuBackend>>>(
    case: &Case,
    accelerator: &mut Accelerator<Autodiff<CpuBackend>>,
    module: &mut M,
    mut model: M::Net,
    optimizer: &mut AdamW<CpuBackend>,
    batch: &M::Batch,
    steps: usize,
    phases: &dyn Fn(&M) -> Option<(f64, f64)>,
) -> Result<Timings>
where
    M::Batch: Clone,
{
    let device = Default::default();
    let mut timings = Timings {
        step_ms: Vec::with_capacity(steps),
        comm_ms: Vec::with_capacity(steps),
        held: None,
        rollout_ms: Vec::new(),
    };
    for step in 0..steps + 2 {
        let start = Instant::now();
        let comm_before = accelerator.communication_time();
        let options = StepOptions {
            lr: 1e-4,
            max_grad_norm: Some(1.0),
            gradient_checkpointing: case.checkpointing.then_some(Recompute { offload: false }),
            ..Default::default()
        };
        let mut micro = vec![batch.clone()];
        model = optimizer_step(accelerator, module, model, optimizer, &mut micro, &options, &device)?.0;
        if step >= 2 {
            timings.step_ms.push(start.elapsed().as_secs_f64() * 1e3);
            timings.comm_ms.push((accelerator.communication_time() - comm_before).as_secs_f64() * 1e3);
            timings.rollout_ms.extend(phases(module));
        }
    }
    // Plain data parallelism does not count: every rank holds the parameters and a gradient for each whole, and the
    // optimizer's moments as counted here.
    let whole = 4 * count_params(&case.model);
    timings.held = accelerator.held_bytes(optimizer).or(Some(HeldBytes {
        params: whole,
        grads: whole,
        optimizer: optimizer.state_bytes(),
        ..Default::default()
    }));
    Ok(timings)
}

/// ZeRO's collective windows in the bench: 25 MiB of f32, the size of data parallelism's all-reduce buckets
/// (`bucket_cap_mb`), so both strategies hold transients of one size. (DeepSpeed's default, 5e8 elements, is one
/// window for this model: every rank would hold a host copy of all its gradients at once.)
const ZERO_BUCKET_ELEMS: usize = 25 * 1024 * 1024 / 4;

/// The tile of flash attention in the bench (the `[memopt] flash_block` default).
const FLASH_BLOCK: usize = 128;

/// Rows per chunk of the fused head and loss (the `[memopt] cross_entropy_chunk` default).
const LOSS_CHUNK: usize = 1024;

/// The report's name for the activations' type.
fn compute_dtype(precision: MixedPrecision) -> &'static str {
    match precision {
        MixedPrecision::No => "f32",
        MixedPrecision::Bf16 => "bf16",
        MixedPrecision::Fp16 => "f16",
    }
}

/// The estimator's peak RSS for a case in MiB (`llmtrain_memopt::estimate`, fed the case's shape, precision,
/// attention, checkpointing, LoRA, fused loss and rows per rank). The ranks are threads of one process, so it holds
/// every rank's peak and one process baseline.
fn predicted_peak_mb(case: &Case) -> Result<f64> {
    let compute = case.precision;
    let input = EstimateInput {
        params: count_params(&case.model),
        model: Some(case.model.clone()),
        method: match (case.lora_rank, case.quantized) {
            (Some(_), true) => Method::Qlora,
            (Some(_), false) => Method::Lora,
            (None, _) => Method::Full,
        },
        lora_rank: case.lora_rank.unwrap_or(0),
        // 16-bit compute over f32 master weights is the ZeRO accounting's mixed precision.
        precision: if compute.is_half() { Precision::Mixed } else { Precision::Fp32 },
        compute,
        attention: if case.flash { AttentionImpl::Flash } else { AttentionImpl::Eager },
        zero_stage: case.zero_stage,
        gpus: case.ranks,
        offload: llmtrain_memopt::estimate::Offload::None,
        batch: Some(BatchShape { batch: case.batch / case.ranks, seq: case.seq }),
        gradient_checkpointing: case.checkpointing,
        fused_loss_chunk: case.fused_loss.then_some(LOSS_CHUNK),
    };
    let peak = estimate(&input)?.cpu_peak.context("a batch shape gives a CPU peak")?;
    let ranks = case.ranks as f64;
    // DPO's frozen reference is a second f32 copy of the weights (none when it is the policy without adapters).
    // GRPO's reward model is another decoder of the policy's shape (without the head when tied).
    let reference =
        if (case.dpo && case.lora_rank.is_none()) || case.grpo { count_params(&case.model) as f64 * 4.0 } else { 0.0 };
    Ok((ranks * (peak.total() + reference) - (ranks - 1.0) * peak.baseline) / (1024.0 * 1024.0))
}

/// What rank 0 kept between steps beside the ZeRO formula's per-rank model states (MiB), for a data-parallel
/// case: counted from the tensors under ZeRO; under plain data parallelism the optimizer's moments counted and
/// the whole parameters and gradients by size.
fn model_states(case: &Case, held: Option<HeldBytes>) -> Result<Value> {
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    let predicted = fp32_model_states(count_params(&case.model), case.zero_stage, case.ranks)?;
    let h = held.unwrap_or_default();
    Ok(json!({
        "stage": case.zero_stage,
        "offload_optimizer": case.offload_optimizer,
        "model_states_mb": mib((h.params + h.grads + h.optimizer) as f64),
        "params_mb": mib(h.params as f64),
        "grads_mb": mib(h.grads as f64),
        "optimizer_mb": mib(h.optimizer as f64),
        "offloaded_optimizer_mb": mib(h.offloaded_optimizer as f64),
        "transient_peak_mb": mib(h.transient_peak as f64),
        "predicted_model_states_mb": mib(predicted.model_states()),
    }))
}

/// The PyTorch reference on the same shape, when python3 with torch is available.
fn torch_reference(case: &Case, steps: usize) -> Option<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/torch_llama.py");
    if !script.exists() {
        return None;
    }
    let probe = Command::new("python3").args(["-c", "import torch, transformers"]).output().ok()?;
    if !probe.status.success() {
        return None;
    }
    // The reference trains plain f32 data parallelism-free steps only; the fused head + loss, the fused
    // RMSNorm/SwiGLU/RoPE and flash attention compute the same step (PyTorch runs its eager ops and SDPA, which
    // on the CPU is its own flash kernel, for every case).
    let plain =
        !case.checkpointing && !case.dpo && !case.grpo && !case.quantized && case.precision == MixedPrecision::No;
    if case.ranks > 1 || !plain {
        return None;
    }
    let mode = match case.lora_rank {
        Some(r) => vec!["--mode".to_string(), "lora".into(), "--lora-r".into(), r.to_string()],
        None => vec![],
    };
    let m = &case.model;
    let out = Command::new("python3")
        .arg(&script)
        .args(["--vocab", &m.vocab_size.to_string(), "--hidden", &m.hidden_size.to_string()])
        .args(["--layers", &m.num_hidden_layers.to_string(), "--heads", &m.num_attention_heads.to_string()])
        .args(["--kv-heads", &m.num_key_value_heads.to_string(), "--ffn", &m.intermediate_size.to_string()])
        .args(["--batch", &case.batch.to_string(), "--seq", &case.seq.to_string()])
        .args(["--steps", &steps.to_string(), "--threads", "2"])
        .args(&mode)
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).lines().last()?.to_string();
    serde_json::from_str(&line).ok()
}

pub fn run(args: &Args) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut report = serde_json::Map::new();
    let mut states = String::from(
        "\n| case | ZeRO stage | model states on rank 0, MiB (counted) | formula, MiB | optimizer on the device | \
         offloaded to the host |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut table = String::from(
        "| case | tokens/s | ms/step (median) | peak RSS MB | predicted MB | comm share | PyTorch tokens/s | ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for case in cases() {
        if !args.case.is_empty() && !args.case.iter().any(|c| c == case.name) {
            continue;
        }
        eprintln!("bench {} ...", case.name);
        let out = Command::new(&exe)
            .args(["bench-case", case.name, "--steps", &args.steps.to_string()])
            .env("RAYON_NUM_THREADS", "2")
            .output()?;
        if !out.status.success() {
            bail!("case {} failed: {}", case.name, String::from_utf8_lossy(&out.stderr));
        }
        let mut result: Value = serde_json::from_slice(&out.stdout).context("case output is JSON")?;
        let predicted = predicted_peak_mb(&case)?;
        let measured = result["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
        let error = (predicted - measured) / measured;
        result["predicted_peak_mb"] = json!(predicted);
        result["prediction_error"] = json!(error);
        let torch = if args.no_torch { None } else { torch_reference(&case, args.steps) };
        let (torch_rate, ratio) = match &torch {
            Some(t) => {
                let rate = t["tokens_per_sec"].as_f64().unwrap_or(f64::NAN);
                (format!("{rate:.0}"), format!("{:.2}x", result["tokens_per_sec"].as_f64().unwrap_or(0.0) / rate))
            }
            None => ("-".into(), "-".into()),
        };
        if let Some(t) = torch {
            result["torch"] = t.clone();
            result["ratio_vs_torch"] = json!(
                result["tokens_per_sec"].as_f64().unwrap_or(0.0) / t["tokens_per_sec"].as_f64().unwrap_or(f64::NAN)
            );
        }
        table.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.0} | {predicted:.0} ({:+.1}%) | {} | {torch_rate} | {ratio} |\n",
            case.name,
            result["tokens_per_sec"].as_f64().unwrap_or(0.0),
            result["step_ms_median"].as_f64().unwrap_or(0.0),
            result["peak_rss_mb"].as_f64().unwrap_or(0.0),
            error * 100.0,
            result["comm_share"].as_f64().map_or("-".to_string(), |s| format!("{:.1}%", s * 100.0)),
        ));
        if let Some(zero) = result.get("zero") {
            let mb = |key: &str| zero[key].as_f64().unwrap_or(f64::NAN);
            states.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                case.name,
                case.zero_stage,
                mb("model_states_mb"),
                mb("predicted_model_states_mb"),
                mb("optimizer_mb"),
                mb("offloaded_optimizer_mb"),
            ));
        }
        report.insert(case.name.to_string(), result);
    }
    if states.lines().count() > 3 {
        table.push_str(&states);
    }
    if args.case.is_empty() || args.case.iter().any(|c| c == NF4_CASE) {
        eprintln!("bench {NF4_CASE} ...");
        let out = Command::new(&exe).args(["bench-case", NF4_CASE, "--steps", &args.steps.to_string()]).output()?;
        if !out.status.success() {
            bail!("case {NF4_CASE} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let result: Value = serde_json::from_slice(&out.stdout).context("case output is JSON")?;
        table.push_str(&format!(
            "\n{NF4_CASE}: {:.3} bits per parameter with double quantization ({:.3} without), {:.0} ms to quantize \
             a 4096 x 4096 weight\n",
            result["bits_per_param"].as_f64().unwrap_or(f64::NAN),
            result["bits_per_param_without_double_quant"].as_f64().unwrap_or(f64::NAN),
            result["step_ms_median"].as_f64().unwrap_or(f64::NAN),
        ));
        report.insert(NF4_CASE.to_string(), result);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&Value::Object(report))? + "\n")?;
    std::fs::write(dir.join("report.md"), &table)?;
    print!("{table}");
    println!("wrote {}", dir.join("report.json").display());
    Ok(())
}
