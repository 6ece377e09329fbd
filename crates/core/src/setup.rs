//! What a run is built from: the config with the command line's overrides, the tokenizer (loaded, or trained
//! and cached), the data options and the model (loaded, or initialised from the run's seed).

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;

use crate::config::RunConfig;
use crate::data::DataOptions;
use crate::error::{CoreError, Result};
use crate::hf::{self, HfConfig};
use crate::model::LlamaModel;
use crate::tokenizer::{BpeTrainingOptions, TextTokenizer, train_bpe_to_dir};

/// Command-line overrides of the config (`llmtrain train --model --max-steps --output-dir --resume`).
#[derive(Debug, Clone, Default)]
pub struct TrainOverrides {
    pub model: Option<PathBuf>,
    pub max_steps: Option<u64>,
    pub output_dir: Option<PathBuf>,
    /// Continue from a checkpoint (the newest intact one of the output directory, the best, or a directory).
    pub resume: Option<crate::train::checkpoint::ResumeFrom>,
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
