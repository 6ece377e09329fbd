//! `llmtrain merge --base DIR --adapter DIR --out DIR [--dtype bf16]`: folds a PEFT adapter into its base and
//! writes a plain HF checkpoint (PEFT's `merge_and_unload` + `save_pretrained`).

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::Backend;
use llmtrain_core::fsutil::{OutputKind, check_replaceable_dir, refuse_output_is_input};
use llmtrain_core::hf::{self, SaveOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The base model's HF checkpoint directory.
    #[arg(long)]
    pub base: PathBuf,
    /// The PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The checkpoint directory to write (replaced atomically; must be new, empty or a checkpoint unless
    /// --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even if it holds other files than a model checkpoint's, or is an input directory.
    #[arg(long)]
    pub overwrite: bool,
    /// float32, bfloat16 or float16 (default: the base's dtype).
    #[arg(long)]
    pub dtype: Option<String>,
}

pub fn run<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let dtype = super::convert::parse_dtype(args.dtype.as_deref())?;
    check_replaceable_dir(&args.out, "--out", OutputKind::Model, args.overwrite)?;
    let inputs = [("--base", args.base.as_path()), ("--adapter", args.adapter.as_path())];
    refuse_output_is_input(&args.out, "--out", &inputs, args.overwrite)?;
    let (mut model, config) = hf::load_model::<B>(&args.base, device)?;
    llmtrain_fastlora::load_adapter(&mut model, &args.adapter, device)?;
    let merged = llmtrain_fastlora::merge(&mut model)?;
    let options = SaveOptions { dtype, ..SaveOptions::default() };
    super::convert::write_checkpoint(&model, &config, &args.base, &args.out, &options)?;
    println!("merged {merged} adapted layer(s) into {}", args.out.display());
    Ok(())
}
