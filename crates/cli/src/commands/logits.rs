//! `llmtrain logits --model DIR [--adapter PEFT_DIR] [--load-in-4bit] --tokens 1,2,3 [--out FILE.safetensors]`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use llmtrain_core::hf;
use llmtrain_core::kernels::Kernels;
use llmtrain_core::model::tokens_tensor;

#[derive(clap::Args)]
pub struct Args {
    /// An HF checkpoint directory (config.json + model.safetensors or shards); no tokenizer needed.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA/DoRA adapter directory (adapter_config.json + adapter_model.safetensors) applied to the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Store the decoder's linear weights in NF4 as they load (a QLoRA base), as transformers'
    /// `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")` does.
    #[arg(long)]
    pub load_in_4bit: bool,
    /// With --load-in-4bit: keep one f32 scale per block of 64 instead of double-quantizing them.
    #[arg(long, requires = "load_in_4bit")]
    pub no_double_quant: bool,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long)]
    pub tokens: String,
    /// Write one f32 tensor `logits` [T, V] to this safetensors file (otherwise print a summary).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace --out even if it is not a logits file this command wrote.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn parse_tokens(text: &str) -> Result<Vec<u32>> {
    let tokens = text
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, t)| t.parse::<u32>().with_context(|| format!("--tokens: item {} (`{t}`) is not a token id", i + 1)))
        .collect::<Result<Vec<_>>>()?;
    if tokens.is_empty() {
        bail!("--tokens: give at least one token id");
    }
    Ok(tokens)
}

pub fn run<B: Kernels>(args: &Args, device: &B::Device) -> Result<()> {
    let tokens = parse_tokens(&args.tokens)?;
    if let Some(out) = &args.out {
        check_logits_out(out, args.overwrite)?;
    }
    let nf4 = args.load_in_4bit.then_some(!args.no_double_quant);
    let (mut model, _) = hf::load_model_with::<B>(&args.model, device, nf4)?;
    if let Some(adapter) = &args.adapter {
        llmtrain_fastlora::load_adapter(&mut model, adapter, device)?;
    }
    let vocab = model.config.vocab_size;
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        bail!(
            "--tokens: token id {bad} is out of range for {} (vocab_size {vocab})",
            args.model.join("config.json").display()
        );
    }
    let logits = model.forward(tokens_tensor::<B>(&tokens, 1, device), None);
    let values: Vec<f32> = logits.into_data().convert::<f32>().into_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    match &args.out {
        Some(out) => write_logits(out, &values, tokens.len(), vocab),
        None => {
            println!("logits shape [{}, {vocab}]", tokens.len());
            for (pos, row) in values.chunks(vocab).enumerate() {
                let best = llmtrain_core::generate::argmax(row);
                let head: Vec<String> = row.iter().take(4).map(|v| format!("{v:.6}")).collect();
                println!(
                    "{pos:>4} token {:>6}  argmax {best:>6} ({:.6})  [{} ...]",
                    tokens[pos],
                    row[best as usize],
                    head.join(", ")
                );
            }
            Ok(())
        }
    }
}

/// `--out` may replace a logits file this command wrote (a safetensors file holding only `logits`), not
/// anything else, unless `overwrite`.
fn check_logits_out(out: &std::path::Path, overwrite: bool) -> Result<()> {
    if overwrite || !out.exists() {
        return Ok(());
    }
    let ours = safetensors_tensor_names(out).is_some_and(|names| names == ["logits"]);
    if !ours {
        bail!("--out {}: exists and is not a logits file; pass --overwrite to replace it", out.display());
    }
    Ok(())
}

/// The tensor names in a safetensors file's header (read alone: the file may be large), if it is one.
fn safetensors_tensor_names(path: &std::path::Path) -> Option<Vec<String>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).ok()?;
    let length = usize::try_from(u64::from_le_bytes(length)).ok().filter(|&n| n <= 100 << 20)?;
    let mut header = vec![0u8; length];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
    Some(header.keys().filter(|k| *k != "__metadata__").cloned().collect())
}

fn write_logits(out: &std::path::Path, values: &[f32], rows: usize, vocab: usize) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, vocab], &bytes)?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let buffer = safetensors::serialize([("logits", view)], Some(metadata))?;
    llmtrain_core::fsutil::write_atomic(out, &buffer)?;
    Ok(())
}
