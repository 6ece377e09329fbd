//! `llmtrain train --config FILE [--model DIR] [--max-steps N] [--output-dir DIR] [--resume]`.

use std::path::PathBuf;

use anyhow::Result;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use llmtrain_core::config::RunConfig;
use llmtrain_core::train::{TrainOverrides, run_training};

#[derive(clap::Args)]
pub struct Args {
    /// The run's TOML config (see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Start from this HF checkpoint directory instead of the config's model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub max_steps: Option<u64>,
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Continue from the latest complete checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,
}

pub fn run<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let config = RunConfig::load(&args.config)?;
    let overrides = TrainOverrides {
        model: args.model.clone(),
        max_steps: args.max_steps,
        output_dir: args.output_dir.clone(),
        resume: args.resume,
    };
    let summary = run_training::<Autodiff<B>>(&config, &overrides, device)?;
    println!("steps: {}  ({:.1} s, {:.0} tokens/s)", summary.steps, summary.elapsed_secs, summary.tokens_per_sec);
    println!("final train loss: {:.4}", summary.final_train_loss);
    if let Some(eval) = summary.final_eval_loss {
        let verdict = if eval < summary.unigram_entropy { "below" } else { "NOT below" };
        println!(
            "final eval loss: {eval:.4} nats/token (perplexity {:.1}), {verdict} the corpus's unigram entropy {:.4}",
            eval.exp(),
            summary.unigram_entropy
        );
    } else {
        println!("corpus unigram entropy: {:.4} nats/token", summary.unigram_entropy);
    }
    if summary.skipped_rows > 0 {
        println!("skipped malformed rows: {}", summary.skipped_rows);
    }
    if let Some(sample) = &summary.sample {
        println!("sample:\n{sample}");
    }
    println!("model: {}", summary.final_dir.display());
    Ok(())
}
