//! `llmtrain convert --model DIR --out DIR [--dtype bf16] [--max-shard-size 5GB]`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use llmtrain_core::fsutil::{OutputKind, check_replaceable_dir, refuse_output_is_input, write_dir_atomic};
use llmtrain_core::hf::{self, SaveOptions, StorageDtype};

/// Files besides the weights that travel with a checkpoint.
const COMPANION_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"];

/// `--out DIR [--overwrite]`: the HF checkpoint directory a command writes.
#[derive(clap::Args)]
pub struct OutDir {
    /// The checkpoint directory to write (replaced atomically; must be new, empty or a checkpoint unless
    /// --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even if it holds other files than a model checkpoint's, or is an input directory.
    #[arg(long)]
    pub overwrite: bool,
}

impl OutDir {
    /// Before any (possibly long) load: refuses a directory that cannot be replaced, or that is one of `inputs`
    /// (flag, path).
    pub fn check(&self, inputs: &[(&str, &std::path::Path)]) -> Result<()> {
        check_replaceable_dir(&self.out, "--out", OutputKind::Model, self.overwrite)?;
        refuse_output_is_input(&self.out, "--out", inputs, self.overwrite)?;
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The HF checkpoint directory to read.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub output: OutDir,
    /// float32, bfloat16 or float16 (default: the dtype config.json names).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Largest shard, e.g. 5GB, 500MB, or bytes.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
}

pub fn parse_size(text: &str) -> Result<u64> {
    let upper = text.trim().to_ascii_uppercase();
    let (digits, unit) = match upper.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => upper.split_at(i),
        None => (upper.as_str(), ""),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("--max-shard-size `{text}`: expected a number with an optional unit"))?;
    let scale = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        other => bail!("--max-shard-size `{text}`: unknown unit `{other}` (use B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    Ok(n * scale)
}

/// The `--dtype` flag: a storage dtype, or `None` to keep the checkpoint's.
pub fn parse_dtype(flag: Option<&str>) -> Result<Option<StorageDtype>> {
    flag.map(|name| {
        StorageDtype::parse(name).with_context(|| format!("--dtype `{name}`: expected float32, bfloat16 or float16"))
    })
    .transpose()
}

pub fn run<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let dtype = parse_dtype(args.dtype.as_deref())?;
    let options = SaveOptions { dtype, max_shard_bytes: parse_size(&args.max_shard_size)? };
    args.output.check(&[("--model", &args.model)])?;
    let (model, config) = hf::load_model::<B>(&args.model, device)?;
    write_checkpoint(&model, &config, &args.model, &args.output.out, &options)?;
    println!("wrote {}", args.output.out.display());
    Ok(())
}

/// Writes `model` as an HF checkpoint directory `out` (replaced atomically), with the tokenizer and chat template
/// files of `source` beside it.
pub fn write_checkpoint<B: Backend>(
    model: &llmtrain_core::model::LlamaModel<B>,
    config: &hf::HfConfig,
    source: &std::path::Path,
    out: &std::path::Path,
    options: &SaveOptions,
) -> Result<()> {
    write_dir_atomic(out, |dir| {
        hf::save_model(model, config, dir, options)?;
        for name in COMPANION_FILES {
            let from = source.join(name);
            if from.is_file() {
                std::fs::copy(&from, dir.join(name))
                    .map_err(|e| llmtrain_core::CoreError::Io { path: from, source: e })?;
            }
        }
        Ok(())
    })?;
    Ok(())
}
