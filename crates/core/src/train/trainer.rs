//! What every training loop shares: resolving the tokenizer, data and model from a config, the batch loss,
//! evaluation, and the run's summary. The loop itself (single process or data parallel) is llmtrain-accel's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use super::checkpoint::list_checkpoints;
use super::loss::causal_lm_loss_parts;
use super::metrics::METRICS_FILE;
use crate::config::RunConfig;
use crate::data::{Batch, DataLoader, DataOptions, Split};
use crate::error::{CoreError, Result};
use crate::generate::{SamplingConfig, generate};
use crate::hf::{self, HfConfig};
use crate::model::{LlamaModel, PositionIds};
use crate::tokenizer::{BpeTrainingOptions, TextTokenizer, train_bpe_to_dir};

/// Command-line overrides of the config (`llmtrain train --model --max-steps --output-dir --resume`).
#[derive(Debug, Clone, Default)]
pub struct TrainOverrides {
    pub model: Option<PathBuf>,
    pub max_steps: Option<u64>,
    pub output_dir: Option<PathBuf>,
    /// Continue from the newest intact checkpoint of the output directory (an error if there is none).
    pub resume: bool,
    /// Delete an earlier run in the output directory and start over (without it, such a run is refused).
    pub overwrite: bool,
}

impl TrainOverrides {
    /// `config` with these overrides applied.
    pub fn apply(&self, config: &RunConfig) -> RunConfig {
        let mut config = config.clone();
        if let Some(model) = &self.model {
            config.model = crate::config::ModelSection { path: Some(model.clone()), ..Default::default() };
        }
        if let Some(steps) = self.max_steps {
            config.training.max_steps = steps;
        }
        if let Some(dir) = &self.output_dir {
            config.output.dir = dir.clone();
        }
        config
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct TrainSummary {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub final_train_loss: f64,
    pub final_eval_loss: Option<f64>,
    /// Unigram entropy (nats/token) of the training data under the run's tokenizer: the loss of the best model
    /// that ignores context.
    pub unigram_entropy: f64,
    pub tokens_per_sec: f64,
    pub skipped_rows: u64,
    /// fp16: optimizer steps skipped because the gradients overflowed, and the loss scale at the end.
    pub skipped_steps: u64,
    pub loss_scale: Option<f64>,
    /// Held-out exact-match accuracy before training (fresh runs only) and at the end, with `accuracy_file`.
    pub accuracy_before: Option<crate::train::accuracy::Accuracy>,
    pub accuracy_after: Option<crate::train::accuracy::Accuracy>,
    pub sample: Option<String>,
    pub final_dir: PathBuf,
    pub elapsed_secs: f64,
    /// The run had already reached `max_steps` when asked to resume: nothing was trained or written.
    pub already_finished: bool,
    /// The signal (SIGINT/SIGTERM) that stopped the run after step `steps`, whose checkpoint was written.
    pub interrupted_by: Option<i32>,
}

/// What an earlier run left in `out` (checkpoints, `final/`, metrics, loss curve), by name: a run started over it
/// without `--resume` must not delete them unasked.
pub fn earlier_run_contents(out: &Path) -> Result<Vec<String>> {
    let mut found: Vec<String> =
        list_checkpoints(out)?.into_iter().rev().map(|(step, _)| format!("checkpoint-{step}/")).collect();
    if out.join("final").exists() {
        found.push("final/".into());
    }
    for file in [METRICS_FILE, super::plot::LOSS_CURVE_FILE] {
        // A run that failed before its first record leaves an empty metrics file: nothing to lose.
        if out.join(file).metadata().is_ok_and(|m| m.len() > 0) {
            found.push(file.into());
        }
    }
    Ok(found)
}

/// Deletes what [`earlier_run_contents`] finds (for `--overwrite`); other files in `out` are left alone.
pub fn clear_previous_run(out: &Path) -> Result<()> {
    for (_, dir) in list_checkpoints(out)? {
        std::fs::remove_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
    }
    for stale in [out.join("final"), out.join(METRICS_FILE), out.join(super::plot::LOSS_CURVE_FILE)] {
        if stale.is_dir() {
            std::fs::remove_dir_all(&stale).map_err(|e| CoreError::io(&stale, e))?;
        } else if stale.exists() {
            std::fs::remove_file(&stale).map_err(|e| CoreError::io(&stale, e))?;
        }
    }
    Ok(())
}

/// The configured tokenizer: a directory, the model's own, or one trained on `train_files` (cached by content).
pub fn resolve_tokenizer(config: &RunConfig) -> Result<TextTokenizer> {
    let t = &config.tokenizer;
    if let Some(path) = &t.path {
        return TextTokenizer::load(path);
    }
    if t.train_files.is_empty() {
        let model_dir =
            config.model.path.as_ref().ok_or_else(|| CoreError::Invalid("no tokenizer configured".into()))?;
        return TextTokenizer::load(model_dir);
    }
    let files = expand_files(&t.train_files)?;
    let vocab_size = t.vocab_size.unwrap_or(4096);
    let mut key = crc32fast::Hasher::new();
    key.update(format!("{vocab_size}/{}/{}", t.min_frequency, env!("CARGO_PKG_VERSION")).as_bytes());
    for file in &files {
        key.update(&std::fs::read(file).map_err(|e| CoreError::io(file, e))?);
    }
    let cache = cache_dir().join(format!("tokenizer-{:08x}", key.finalize()));
    if cache.join("tokenizer.json").exists() {
        return TextTokenizer::load(&cache);
    }
    eprintln!("training a {vocab_size}-token BPE tokenizer on {} file(s) (cached in {})", files.len(), cache.display());
    train_bpe_to_dir(&files, &BpeTrainingOptions { vocab_size, min_frequency: t.min_frequency }, &cache)
}

/// `$LLMTRAIN_CACHE`, else `$XDG_CACHE_HOME/llmtrain`, else `~/.cache/llmtrain`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLMTRAIN_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("llmtrain");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/llmtrain"))
        .unwrap_or_else(|| ".llmtrain-cache".into())
}

/// Files named directly, and the files inside named directories (sorted).
pub fn expand_files(entries: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(entry)
                .map_err(|e| CoreError::io(entry, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            inside.sort();
            files.extend(inside);
        } else if entry.is_file() {
            files.push(entry.clone());
        } else {
            return Err(crate::paths::not_found(entry, "data file"));
        }
    }
    Ok(files)
}

pub fn data_options(config: &RunConfig) -> Result<DataOptions> {
    let d = &config.data;
    Ok(DataOptions {
        files: expand_files(&d.files)?,
        seq_len: d.seq_len,
        batch_size: d.batch_size,
        packing: d.packing,
        shuffle: d.shuffle,
        seed: config.training.seed,
        loss_on: d.loss_on,
        skip_malformed: d.skip_malformed,
        eval_fraction: d.eval_fraction,
        rank: 0,
        world_size: 1,
    })
}

/// The model to train: loaded from `model.path`, or initialised from the config's shape with the run's seed;
/// with `[quantization] load_in_4bit` its decoder weights are stored in NF4 (quantized as they load).
pub fn build_model<A: AutodiffBackend>(
    config: &RunConfig,
    tokenizer: &TextTokenizer,
    device: &A::Device,
) -> Result<(LlamaModel<A>, HfConfig)> {
    // burn's generator is seeded on every path: the model draws from its own, but the method's new parameters
    // (LoRA's A matrices) are drawn from burn's next, and a run must be reproducible from its config.
    A::seed(device, config.training.seed);
    let (model, hf_config) = match &config.model.path {
        Some(dir) => hf::load_model_with::<A>(dir, device, config.quantization.nf4())?,
        None => {
            let mut shape = config.scratch_model(tokenizer.vocab_size());
            shape.bos_token_id = tokenizer.bos_token.as_deref().and_then(|t| tokenizer.token_id(t));
            shape.eos_token_ids = tokenizer.eos_token_id().into_iter().collect();
            shape.pad_token_id = tokenizer.pad_token.as_deref().and_then(|t| tokenizer.token_id(t));
            shape.validate().map_err(|m| CoreError::Invalid(format!("[model]: {m}")))?;
            let model = LlamaModel::<A>::init_with(&shape, device, config.quantization.nf4(), config.training.seed);
            (model, HfConfig::from_model(&shape))
        }
    };
    if tokenizer.vocab_size() > model.config.vocab_size {
        return Err(CoreError::Invalid(format!(
            "tokenizer has {} tokens but the model's vocab_size is {}: they do not belong together",
            tokenizer.vocab_size(),
            model.config.vocab_size
        )));
    }
    Ok((model, hf_config))
}

/// Summed loss and scored-token count of one batch.
pub fn batch_loss<B: Backend>(
    model: &LlamaModel<B>,
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let (tokens, labels, positions) = batch_tensors::<B>(batch, device);
    if let Some(chunk) = model.compute.loss_chunk {
        let hidden = model.hidden_states(tokens, positions.as_ref());
        let (sum, count) = crate::model::fused_loss::fused_causal_lm_loss(model, hidden, &batch.labels, chunk);
        return (sum, Tensor::from_floats([count as f32], device));
    }
    causal_lm_loss_parts(model.forward(tokens, positions.as_ref()), labels)
}

/// A batch as the model takes it: token ids and labels `[rows, seq]`, and position ids when rows are packed.
pub fn batch_tensors<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Option<PositionIds>) {
    let ids: Vec<i64> = batch.input_ids.iter().map(|&t| t as i64).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch.rows, batch.seq]), device);
    let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(batch.labels.clone(), [batch.rows, batch.seq]), device);
    let positions = batch.position_ids.as_ref().map(|ids| PositionIds::new(batch.rows, batch.seq, ids.clone()));
    (tokens, labels, positions)
}

/// Token-weighted mean loss over at most `max_batches` batches of the eval split.
pub fn evaluate<B: Backend>(
    model: &LlamaModel<B>,
    options: &DataOptions,
    tokenizer: &TextTokenizer,
    max_batches: usize,
    device: &B::Device,
) -> Result<f64> {
    let (sum, count) = evaluate_parts(model, options, tokenizer, max_batches, device)?;
    eval_mean(sum, count)
}

/// `sum / count` of an evaluation, failing when nothing was scored.
pub fn eval_mean(sum: f64, count: f64) -> Result<f64> {
    if count == 0.0 {
        return Err(CoreError::Invalid("the eval split holds no scored token (raise data.eval_fraction)".into()));
    }
    Ok(sum / count)
}

/// Summed loss and scored-token count over at most `max_batches` of this rank's batches of the eval split
/// (data-parallel ranks add theirs up before dividing).
pub fn evaluate_parts<B: Backend>(
    model: &LlamaModel<B>,
    options: &DataOptions,
    tokenizer: &TextTokenizer,
    max_batches: usize,
    device: &B::Device,
) -> Result<(f64, f64)> {
    let mut eval = DataLoader::new(options, tokenizer, Split::Eval)?;
    let (mut sum, mut count) = (0.0f64, 0.0f64);
    let mut seen = 0;
    while seen < max_batches.max(1) {
        let Some(batch) = eval.next_batch()? else { break };
        let (s, c) = batch_loss(model, &batch, device);
        sum += s.into_scalar().elem::<f64>();
        count += c.into_scalar().elem::<f64>();
        seen += 1;
    }
    Ok((sum, count))
}

/// Entropy (nats) of the unigram distribution of the tokens the loss predicts, over the whole dataset (both
/// splits, one epoch).
pub fn unigram_entropy(options: &DataOptions, tokenizer: &TextTokenizer) -> Result<f64> {
    let mut counts: HashMap<u32, u64> = HashMap::new();
    let mut add = |batch: &Batch| {
        for row in 0..batch.rows {
            for t in 1..batch.seq {
                let i = row * batch.seq + t;
                if batch.labels[i] >= 0 {
                    *counts.entry(batch.labels[i] as u32).or_default() += 1;
                }
            }
        }
    };
    for split in [Split::Train, Split::Eval] {
        let mut loader = DataLoader::single_pass(options, tokenizer, split)?;
        while let Some(batch) = loader.next_batch()? {
            add(&batch);
        }
    }
    let total: u64 = counts.values().sum();
    Ok(counts.values().map(|&c| c as f64 / total as f64).map(|p| -p * p.ln()).sum())
}

pub fn sample_text<B: Backend>(
    model: &LlamaModel<B>,
    tokenizer: &TextTokenizer,
    prompt: &str,
    max_new_tokens: usize,
    device: &B::Device,
) -> Result<String> {
    let ids = tokenizer.encode(prompt)?;
    let config = SamplingConfig {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed: 0,
        max_new_tokens,
        stop_tokens: tokenizer.eos_token_id().into_iter().collect(),
    };
    let new_tokens = generate(model, &ids, &config, device);
    Ok(format!("{prompt}{}", tokenizer.decode(&new_tokens, true)?))
}
