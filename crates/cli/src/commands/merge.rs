//! `llmtrain merge --base DIR --adapter DIR --out DIR [--dtype bf16]`: folds a PEFT adapter into its base and
//! writes a plain HF checkpoint (PEFT's `merge_and_unload` + `save_pretrained`).

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::Backend;
use llmtrain_core::hf::{self, SaveOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The base model's HF checkpoint directory.
    #[arg(long)]
    pub base: PathBuf,
    /// The PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    #[command(flatten)]
    pub output: super::convert::OutDir,
    /// float32, bfloat16 or float16 (default: the base's dtype).
    #[arg(long)]
    pub dtype: Option<String>,
}

pub fn run<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let dtype = super::convert::parse_dtype(args.dtype.as_deref())?;
    args.output.check(&[("--base", args.base.as_path()), ("--adapter", args.adapter.as_path())])?;
    let (mut model, config) = hf::load_model::<B>(&args.base, device)?;
    llmtrain_fastlora::load_adapter(&mut model, &args.adapter, device)?;
    let merged = llmtrain_fastlora::merge(&mut model)?;
    let options = SaveOptions { dtype, ..SaveOptions::default() };
    super::convert::write_checkpoint(&model, &config, &args.base, &args.output.out, &options)?;
    println!("merged {merged} adapted layer(s) into {}", args.output.out.display());
    Ok(())
}
