//! `llmtrain estimate-memory (--model DIR | --params 7B [--family llama2|llama3|mistral|qwen2])
//! [--method full|lora|qlora] [--precision fp32|mixed|bf16] [--compute-dtype f32|bf16|fp16] [--zero-stage 0..3]
//! [--gpus G] [--offload none|optimizer|optimizer+params] [--batch B --seq T] [--attention eager|flash] [--grad-checkpointing]
//! [--fused-cross-entropy [--cross-entropy-chunk N]]`: memory per device, like `accelerate estimate-memory`, with
//! DeepSpeed's ZeRO accounting; with a batch shape, also the activations autodiff keeps and the peak resident memory
//! of one training step of llmtrain's CPU trainer. A `--params` size with a standard shape (`KNOWN_SHAPES`: 7B is
//! Llama 2 7B unless `--family` picks another) stands for that model, and the line `assumed shape: ...` says which.

use anyhow::Result;
use llmtrain_memopt::estimate::{
    AttentionImpl, BatchShape, EstimateInput, Family, Method, MixedPrecision, Offload, Precision, compute_for, estimate,
};

use super::model_size::ModelSize;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub size: ModelSize,
    /// full, lora or qlora.
    #[arg(long, default_value = "full", value_parser = ["full", "lora", "qlora"])]
    pub method: String,
    /// LoRA rank (adapters on every linear layer).
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    /// fp32, mixed (16-bit compute with f32 master weights) or bf16 (bf16 everything).
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "mixed", "bf16"])]
    pub precision: String,
    /// The activations' type (`[memopt] mixed_precision`): f32 with fp32; bf16 (the default) or fp16 with mixed;
    /// bf16 with bf16.
    #[arg(long, value_parser = ["f32", "bf16", "fp16"])]
    pub compute_dtype: Option<String>,
    /// ZeRO stage 0-3 (default: a row for each).
    #[arg(long)]
    pub zero_stage: Option<u8>,
    /// Data-parallel ranks the states are sharded over.
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// ZeRO-Offload: the optimizer state and gradients (stage 1 and up), or the parameters too (stage 3), in host
    /// memory; the table's rows are then stages 1-3 or 3.
    #[arg(long, default_value = "none", value_parser = ["none", "optimizer", "optimizer+params"])]
    pub offload: String,
    /// Rows per device (one micro-batch).
    #[arg(long, requires = "seq")]
    pub batch: Option<usize>,
    /// Tokens per row.
    #[arg(long, requires = "batch")]
    pub seq: Option<usize>,
    /// The attention kernel (`[memopt] attention`): eager keeps the [seq x seq] scores for backward, flash none.
    #[arg(long, default_value = "eager", value_parser = ["eager", "flash"])]
    pub attention: String,
    /// Recompute each decoder layer in backward (`[memopt] gradient_checkpointing`).
    #[arg(long)]
    pub grad_checkpointing: bool,
    /// The head fused with cross-entropy over chunks of rows (`[memopt] fused_cross_entropy`): no
    /// [tokens x vocab] logits kept.
    #[arg(long)]
    pub fused_cross_entropy: bool,
    /// Rows per chunk of the fused loss (`[memopt] cross_entropy_chunk`).
    #[arg(long, default_value_t = 1024, requires = "fused_cross_entropy")]
    pub cross_entropy_chunk: usize,
}

pub fn run(args: &Args) -> Result<()> {
    let sized = args.size.resolve()?;
    let (params, model, assumed) = (sized.params, sized.config, sized.assumed);
    let method = match args.method.as_str() {
        "lora" => Method::Lora,
        "qlora" => Method::Qlora,
        _ => Method::Full,
    };
    let precision = match args.precision.as_str() {
        "mixed" => Precision::Mixed,
        "bf16" => Precision::Bf16,
        _ => Precision::Fp32,
    };
    let compute = match args.compute_dtype.as_deref() {
        Some("f32") => MixedPrecision::No,
        Some("bf16") => MixedPrecision::Bf16,
        Some("fp16") => MixedPrecision::Fp16,
        _ => compute_for(precision),
    };
    let attention = if args.attention == "flash" { AttentionImpl::Flash } else { AttentionImpl::Eager };
    let batch = args.batch.zip(args.seq).map(|(batch, seq)| BatchShape { batch, seq });
    let fused_loss_chunk = args.fused_cross_entropy.then_some(args.cross_entropy_chunk);
    let offload = match args.offload.as_str() {
        "optimizer" => Offload::Optimizer,
        "optimizer+params" => Offload::OptimizerAndParams,
        _ => Offload::None,
    };
    // Without --zero-stage, a row for each stage the offload runs under.
    let lowest_stage = match offload {
        Offload::None => 0,
        Offload::Optimizer => 1,
        Offload::OptimizerAndParams => 3,
    };
    let stages: Vec<u8> = match args.zero_stage {
        Some(stage) => vec![stage],
        None => (lowest_stage..=3).collect(),
    };
    let mut rows = Vec::with_capacity(stages.len());
    for zero_stage in stages {
        let input = EstimateInput {
            params,
            model: model.clone(),
            method,
            lora_rank: args.lora_rank,
            precision,
            compute,
            attention,
            zero_stage,
            gpus: args.gpus,
            offload,
            batch,
            gradient_checkpointing: args.grad_checkpointing,
            fused_loss_chunk,
        };
        rows.push((zero_stage, estimate(&input)?));
    }
    // GB (10^9 bytes, as DeepSpeed and Accelerate print) unless everything is smaller than that.
    let largest = rows.iter().map(|(_, e)| e.total().max(e.cpu_peak.map_or(0.0, |p| p.total()))).fold(0.0, f64::max);
    let (unit, scale) = if largest >= 1e9 { ("GB", 1e9) } else { ("MB", 1e6) };
    let count = if params >= 1_000_000_000 {
        format!("{:.2} B", params as f64 / 1e9)
    } else {
        format!("{:.2} M", params as f64 / 1e6)
    };
    let shape = match batch {
        Some(b) => {
            let ckpt = if args.grad_checkpointing { ", gradient checkpointing" } else { "" };
            let loss = match fused_loss_chunk {
                Some(chunk) => format!(", fused cross-entropy ({chunk} rows a chunk)"),
                None => String::new(),
            };
            format!(
                ", batch {} x {} tokens, {} activations, {} attention{ckpt}{loss}",
                b.batch,
                b.seq,
                compute.dtype_name(),
                args.attention
            )
        }
        None => String::new(),
    };
    if let Some(shape) = assumed {
        let others: Vec<&str> = shape.other_families().into_iter().map(Family::name).collect();
        let hint = if others.is_empty() {
            String::new()
        } else {
            format!("; --family {} for another {} shape", others.join("|"), shape.size)
        };
        println!("assumed shape: {}{hint}", shape.describe());
    }
    println!("{count} parameters, {} finetune, {} precision, {} GPU(s){shape}", args.method, args.precision, args.gpus);
    let with_peak = rows.iter().any(|(_, e)| e.cpu_peak.is_some());
    let peak_header = if with_peak { format!(" CPU step peak {unit} |") } else { String::new() };
    println!(
        "| ZeRO stage | weights {unit} | gradients {unit} | optimizer {unit} | activations {unit} | total {unit} per device |{peak_header}"
    );
    println!("|---:|---:|---:|---:|---:|---:|{}", if with_peak { "---:|" } else { "" });
    let fmt = |bytes: f64| format!("{:.1}", bytes / scale);
    for (stage, e) in &rows {
        let peak = e.cpu_peak.map_or(String::new(), |p| format!(" {} |", fmt(p.total())));
        println!(
            "| {stage} | {} | {} | {} | {} | {} |{peak}",
            fmt(e.weights),
            fmt(e.gradients),
            fmt(e.optimizer),
            e.activations.map_or("-".to_string(), fmt),
            fmt(e.total())
        );
    }
    for (stage, e) in rows.iter().filter(|(_, e)| e.host > 0.0) {
        println!(
            "ZeRO stage {stage}, {} offloaded: {} {unit} of model states per rank in host memory; the total counts \
             {} {unit} of stage 3's gathered layer",
            offload.name(),
            fmt(e.host),
            fmt(e.gathered)
        );
    }
    // What the CPU peak is made of (the trainer on burn's Flex backend, one rank; ranks run as threads of one
    // process share its baseline).
    for (stage, e) in &rows {
        if let Some(p) = e.cpu_peak {
            println!(
                "CPU step peak, ZeRO stage {stage}: {} {unit} per rank at {} = {} process baseline + {} weights, \
                 optimizer state and gradients held + {} saved activations + {} in-flight buffers + {} freed memory \
                 glibc keeps",
                fmt(p.total()),
                p.moment.describe(),
                fmt(p.baseline),
                fmt(p.states),
                fmt(p.saved),
                fmt(p.transient),
                fmt(p.allocator)
            );
        }
    }
    Ok(())
}
