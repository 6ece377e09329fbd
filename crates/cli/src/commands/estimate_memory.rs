//! `llmtrain estimate-memory (--model DIR | --params 7B) [--method full|lora|qlora] [--precision fp32|mixed|bf16]
//! [--zero-stage 0..3] [--gpus G] [--batch B --seq T] [--grad-checkpointing]`: memory per device, like
//! `accelerate estimate-memory`, with DeepSpeed's ZeRO accounting.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use llmtrain_core::hf::HfConfig;
use llmtrain_memopt::estimate::{BatchShape, EstimateInput, Method, Precision, count_params, estimate};

#[derive(clap::Args)]
pub struct Args {
    /// An HF checkpoint directory (its config.json gives the shape and parameter count).
    #[arg(long, conflicts_with = "params", required_unless_present = "params")]
    pub model: Option<PathBuf>,
    /// A parameter count instead of a model: 7B, 7.5B, 350M, ...
    #[arg(long)]
    pub params: Option<String>,
    /// full, lora or qlora.
    #[arg(long, default_value = "full", value_parser = ["full", "lora", "qlora"])]
    pub method: String,
    /// LoRA rank (adapters on every linear layer).
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    /// fp32, mixed (16-bit compute with f32 master weights) or bf16 (bf16 everything).
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "mixed", "bf16"])]
    pub precision: String,
    /// ZeRO stage 0-3 (default: a row for each).
    #[arg(long)]
    pub zero_stage: Option<u8>,
    /// Data-parallel ranks the states are sharded over.
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    #[arg(long, requires = "seq")]
    pub batch: Option<usize>,
    #[arg(long, requires = "batch")]
    pub seq: Option<usize>,
    #[arg(long)]
    pub grad_checkpointing: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let (params, model) = match (&args.model, &args.params) {
        (Some(dir), _) => {
            let config = HfConfig::load(dir)?;
            (count_params(&config.model), Some(config.model))
        }
        (None, Some(text)) => {
            let count = llmtrain_memopt::estimate::parse_param_count(text)
                .ok_or_else(|| anyhow!("--params {text}: expected a count such as 7B, 7.5B, 350M or 125000"))?;
            (count, None)
        }
        (None, None) => bail!("give --model DIR or --params N"),
    };
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
    let batch = args.batch.zip(args.seq).map(|(batch, seq)| BatchShape { batch, seq });
    let stages: Vec<u8> = match args.zero_stage {
        Some(stage) => vec![stage],
        None => (0..=3).collect(),
    };
    let mut rows = Vec::with_capacity(stages.len());
    for zero_stage in stages {
        let input = EstimateInput {
            params,
            model: model.clone(),
            method,
            lora_rank: args.lora_rank,
            precision,
            zero_stage,
            gpus: args.gpus,
            batch,
            gradient_checkpointing: args.grad_checkpointing,
        };
        rows.push((zero_stage, estimate(&input)?));
    }
    // GB (10^9 bytes, as DeepSpeed and Accelerate print) unless everything is smaller than that.
    let largest = rows.iter().map(|(_, e)| e.total()).fold(0.0, f64::max);
    let (unit, scale) = if largest >= 1e9 { ("GB", 1e9) } else { ("MB", 1e6) };
    let count = if params >= 1_000_000_000 {
        format!("{:.2} B", params as f64 / 1e9)
    } else {
        format!("{:.2} M", params as f64 / 1e6)
    };
    let shape = match batch {
        Some(b) => {
            let ckpt = if args.grad_checkpointing { ", gradient checkpointing" } else { "" };
            format!(", batch {} x {} tokens{ckpt}", b.batch, b.seq)
        }
        None => String::new(),
    };
    println!("{count} parameters, {} finetune, {} precision, {} GPU(s){shape}", args.method, args.precision, args.gpus);
    println!(
        "| ZeRO stage | weights {unit} | gradients {unit} | optimizer {unit} | activations {unit} | total {unit} per device |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let fmt = |bytes: f64| format!("{:.1}", bytes / scale);
    for (stage, e) in rows {
        println!(
            "| {stage} | {} | {} | {} | {} | {} |",
            fmt(e.weights),
            fmt(e.gradients),
            fmt(e.optimizer),
            e.activations.map_or("-".to_string(), fmt),
            fmt(e.total())
        );
    }
    Ok(())
}
