//! `llmtrain zero-to-hf CHECKPOINT --out DIR`: DeepSpeed's `zero_to_fp32` for llmtrain checkpoints. A checkpoint
//! of a ZeRO run (any stage, any number of ranks) holds the whole model already, gathered from the ranks' shares
//! when it was written, beside each rank's share of the optimizer state; this verifies every file against the
//! checkpoint's digests and writes the model alone as a plain HF checkpoint directory (f32 unless `--dtype`),
//! with the tokenizer files, which transformers loads.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::Backend;
use llmtrain_core::hf::{self, SaveOptions, StorageDtype};
use llmtrain_core::train::checkpoint::verify_checkpoint;

#[derive(clap::Args)]
pub struct Args {
    /// A training checkpoint directory (`checkpoint-<step>`).
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub output: super::convert::OutDir,
    /// float32 (the default, as zero_to_fp32 writes), bfloat16 or float16.
    #[arg(long)]
    pub dtype: Option<String>,
}

pub fn run<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let dtype = super::convert::parse_dtype(args.dtype.as_deref())?.or(Some(StorageDtype::F32));
    args.output.check(&[("CHECKPOINT", &args.checkpoint)])?;
    // A damaged or incomplete checkpoint (a rank's share missing, a weight file cut short) is refused first.
    let state = verify_checkpoint(&args.checkpoint)?;
    let (model, config) = hf::load_model::<B>(&args.checkpoint, device)?;
    let options = SaveOptions { dtype, ..SaveOptions::default() };
    super::convert::write_checkpoint(&model, &config, &args.checkpoint, &args.output.out, &options)?;
    println!(
        "wrote {} (the model of step {}, from {})",
        args.output.out.display(),
        state.step,
        args.checkpoint.display()
    );
    Ok(())
}
