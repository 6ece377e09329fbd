//! `llmtrain score --model DIR --data FILE [--out FILE.jsonl] [--overwrite]`: each row's reward under a reward
//! model (a transformers `*ForSequenceClassification` with one label, as `[reward]` training writes it).

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::module::Param;
use llmtrain_core::hf;
use llmtrain_core::kernels::Kernels;
use llmtrain_core::model::SequenceClassifier;
use llmtrain_core::tokenizer::TextTokenizer;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// A reward model directory (config.json, weights and the tokenizer), e.g. a `[reward]` run's final/.
    #[arg(long)]
    pub model: PathBuf,
    /// Rows in TRL's formats (JSONL or Parquet): a preference row gets two rewards (chosen, rejected); a
    /// prompt/completion, text or messages row one.
    #[arg(long)]
    pub data: PathBuf,
    /// Write the JSONL here instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long)]
    pub overwrite: bool,
    /// Sequences scored per forward.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

pub fn run<B: Kernels>(args: &Args, device: &B::Device) -> Result<()> {
    if let Some(out) = &args.out
        && out.exists()
        && !args.overwrite
    {
        bail!("{}: exists; pass --overwrite to replace it", out.display());
    }
    let (model, score, _) = hf::load_sequence_classifier::<B>(&args.model, device)?;
    let tokenizer = TextTokenizer::load(&args.model)?;
    // The id transformers reads the score before (the config's, which `[reward]` training writes), else the one
    // training padded with.
    let pad_id = match model.config.pad_token_id {
        Some(id) => id,
        None => llmtrain_trl::pad_id(&tokenizer)?,
    };
    let net = SequenceClassifier { model, score: Param::from_tensor(score) };
    let rows = llmtrain_trl::reward::score_file(&net, &tokenizer, &args.data, pad_id, args.batch_size, device)?;
    let mut text = String::new();
    for row in rows {
        let place = row.location.line.or(row.location.row);
        let line = match row.rewards.as_slice() {
            [reward] => json!({"row": place, "reward": reward}),
            [chosen, rejected] => json!({"row": place, "chosen": chosen, "rejected": rejected}),
            other => json!({"row": place, "rewards": other}),
        };
        text.push_str(&line.to_string());
        text.push('\n');
    }
    match &args.out {
        Some(out) => llmtrain_core::fsutil::write_atomic(out, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(())
}
