//! The training loop: config in, trained HF checkpoint out, resumable at any checkpoint.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::checkpoint::{TrainerState, latest_valid_checkpoint, list_checkpoints, load_optimizer, save_checkpoint};
use super::loss::causal_lm_loss_parts;
use super::metrics::{METRICS_FILE, MetricsLog};
use super::optim::{AdamW, AdamWConfig, GradientBuffer, clip_grad_norm};
use super::schedule::Schedule;
use crate::config::RunConfig;
use crate::data::{Batch, DataLoader, DataOptions, Split};
use crate::error::{CoreError, Result};
use crate::fsutil::write_dir_atomic;
use crate::generate::{SamplingConfig, generate};
use crate::hf::{self, HfConfig, SaveOptions};
use crate::model::{LlamaModel, PositionIds};
use crate::tokenizer::{BpeTrainingOptions, TextTokenizer, train_bpe_to_dir};

/// Command-line overrides of the config (`llmtrain train --model --max-steps --output-dir --resume`).
#[derive(Debug, Clone, Default)]
pub struct TrainOverrides {
    pub model: Option<PathBuf>,
    pub max_steps: Option<u64>,
    pub output_dir: Option<PathBuf>,
    pub resume: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
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
    pub sample: Option<String>,
    pub final_dir: PathBuf,
    pub elapsed_secs: f64,
}

/// Runs a whole training job on backend `A`.
pub fn run_training<A: AutodiffBackend>(
    config: &RunConfig,
    overrides: &TrainOverrides,
    device: &A::Device,
) -> Result<TrainSummary> {
    let started = Instant::now();
    let mut config = config.clone();
    if let Some(model) = &overrides.model {
        config.model = crate::config::ModelSection { path: Some(model.clone()), ..Default::default() };
    }
    if let Some(steps) = overrides.max_steps {
        config.training.max_steps = steps;
    }
    if let Some(dir) = &overrides.output_dir {
        config.output.dir = dir.clone();
    }
    let tr = config.training.clone();
    let out = config.output.dir.clone();
    std::fs::create_dir_all(&out).map_err(|e| CoreError::io(&out, e))?;

    let tokenizer = resolve_tokenizer(&config)?;
    let (mut model, hf_config) = build_model::<A>(&config, &tokenizer, device)?;
    let options = data_options(&config)?;
    let mut train_data = DataLoader::new(&options, &tokenizer, Split::Train)?;

    let adam =
        AdamWConfig { beta1: tr.adam_beta1, beta2: tr.adam_beta2, eps: tr.adam_epsilon, weight_decay: tr.weight_decay };
    let mut optimizer = AdamW::<A::InnerBackend>::new(adam);
    let mut resumed_from = None;
    if overrides.resume {
        if let Some((dir, state)) = latest_valid_checkpoint(&out)? {
            model = hf::load_model::<A>(&dir, device)?.0;
            optimizer = load_optimizer(&dir, adam, device)?;
            train_data.seek(state.data_position)?;
            resumed_from = Some(state.step);
            eprintln!("resuming from {} (step {})", dir.display(), state.step);
        } else {
            eprintln!("no complete checkpoint in {}: starting from the beginning", out.display());
        }
    } else {
        clear_previous_run(&out)?;
    }
    let mut step = resumed_from.unwrap_or(0);
    let mut metrics = MetricsLog::open(&out, resumed_from)?;
    let schedule = Schedule {
        kind: tr.lr_schedule,
        peak_lr: tr.learning_rate,
        warmup_steps: tr.warmup_steps,
        total_steps: tr.max_steps,
    };

    let progress = progress_bar(tr.max_steps, step);
    let mut window = Window::new();
    let mut last_loss = f64::NAN;
    let mut last_eval = None;
    let mut grads = GradientBuffer::<A::InnerBackend>::default();
    while step < tr.max_steps {
        let mut micro = Vec::with_capacity(tr.gradient_accumulation_steps);
        for _ in 0..tr.gradient_accumulation_steps {
            match train_data.next_batch()? {
                Some(batch) => micro.push(batch),
                None => return Err(CoreError::Invalid("the training data yielded no batch".into())),
            }
        }
        let lr = schedule.lr(step);
        let max_norm = (tr.max_grad_norm > 0.0).then_some(tr.max_grad_norm);
        let stats = train_step(&mut model, &mut optimizer, &mut grads, &micro, lr, max_norm, device);
        window.tokens += micro.iter().map(|b| b.rows * b.seq).sum::<usize>();
        let (step_loss, grad_norm) = (stats.loss, stats.grad_norm);
        step += 1;
        last_loss = step_loss;
        progress.set_position(step);
        progress.set_message(format!("loss {step_loss:.4} lr {lr:.2e}"));

        if step % tr.logging_steps == 0 || step == tr.max_steps {
            let record = json!({
                "step": step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_sec": window.rate(), "epoch": train_data.position().epoch,
            });
            metrics.write(&record)?;
            log_line(&progress, &record);
            window = Window::new();
        }
        let eval_due = tr.eval_steps > 0 && step % tr.eval_steps == 0 && step != tr.max_steps;
        if eval_due && options.eval_fraction > 0.0 {
            let eval_loss = evaluate(&model.valid(), &options, &tokenizer, tr.eval_batches, device)?;
            let record = json!({"step": step, "eval_loss": eval_loss, "eval_perplexity": eval_loss.exp()});
            metrics.write(&record)?;
            log_line(&progress, &record);
            last_eval = Some(eval_loss);
        }
        if tr.save_steps > 0 && step % tr.save_steps == 0 && step != tr.max_steps {
            let state =
                TrainerState { step, data_position: train_data.position(), seed: tr.seed, files: Default::default() };
            save_checkpoint(&out, &model, &hf_config, &optimizer, &tokenizer, state, tr.save_total_limit)?;
        }
    }
    progress.finish_and_clear();

    let inference = model.valid();
    if options.eval_fraction > 0.0 {
        let eval_loss = evaluate(&inference, &options, &tokenizer, tr.eval_batches, device)?;
        let record = json!({"step": step, "eval_loss": eval_loss, "eval_perplexity": eval_loss.exp()});
        metrics.write(&record)?;
        last_eval = Some(eval_loss);
    }
    // The last checkpoint and `final/` both hold the end state.
    let state = TrainerState { step, data_position: train_data.position(), seed: tr.seed, files: Default::default() };
    save_checkpoint(&out, &model, &hf_config, &optimizer, &tokenizer, state, tr.save_total_limit)?;
    let final_dir = out.join("final");
    write_dir_atomic(&final_dir, |dir| {
        hf::save_model(&inference, &hf_config, dir, &SaveOptions::default())?;
        tokenizer.save(dir)
    })?;
    let sample = match &tr.sample_prompt {
        Some(prompt) => Some(sample_text(&inference, &tokenizer, prompt, tr.sample_max_new_tokens, device)?),
        None => None,
    };
    let entropy = unigram_entropy(&options, &tokenizer)?;
    let records = metrics.read_all()?;
    // A figure is a convenience: failing to draw it does not fail a finished run.
    if let Err(err) = super::plot::write_loss_curve(&records, &out.join(super::plot::LOSS_CURVE_FILE)) {
        tracing::warn!("{err}");
    }
    let rates: Vec<f64> = records.iter().filter_map(|r| r["tokens_per_sec"].as_f64()).collect();
    Ok(TrainSummary {
        steps: step,
        resumed_from,
        final_train_loss: last_loss,
        final_eval_loss: last_eval,
        unigram_entropy: entropy,
        tokens_per_sec: if rates.is_empty() { 0.0 } else { rates.iter().sum::<f64>() / rates.len() as f64 },
        skipped_rows: train_data.skipped_rows(),
        sample,
        final_dir,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Token-weighted mean loss over the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One optimizer step over `micro` batches (gradient accumulation): forward, backward and gradient sum per
/// micro-batch, global-norm clipping, then AdamW at `lr`.
///
/// Every micro-batch's summed loss is divided by the step's total scored-token count, so the accumulated
/// gradient equals that of one large batch.
pub fn train_step<A: AutodiffBackend>(
    model: &mut LlamaModel<A>,
    optimizer: &mut AdamW<A::InnerBackend>,
    grads: &mut GradientBuffer<A::InnerBackend>,
    micro: &[Batch],
    lr: f64,
    max_grad_norm: Option<f64>,
    device: &A::Device,
) -> StepStats {
    let scored: usize = micro.iter().map(Batch::scored_tokens).sum();
    let denominator = scored.max(1) as f64;
    let mut loss_value = 0.0;
    for batch in micro {
        let (sum, _) = batch_loss(model, batch, device);
        let loss = sum.div_scalar(denominator);
        loss_value += loss.clone().into_scalar().elem::<f64>();
        grads.accumulate(model, &loss.backward());
    }
    let grad_norm = clip_grad_norm(grads, max_grad_norm);
    optimizer.step(model, grads, lr);
    StepStats { loss: loss_value, grad_norm }
}

/// Tokens processed since the last log line, for throughput.
struct Window {
    start: Instant,
    tokens: usize,
}

impl Window {
    fn new() -> Self {
        Self { start: Instant::now(), tokens: 0 }
    }

    fn rate(&self) -> f64 {
        self.tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }
}

fn progress_bar(total: u64, position: u64) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(position);
    bar
}

/// One log line per logged step: above the progress bar on a terminal, on stderr otherwise.
fn log_line(bar: &ProgressBar, record: &serde_json::Value) {
    tracing::info!("{record}");
    if bar.is_hidden() {
        eprintln!("{record}");
    } else {
        bar.println(record.to_string());
    }
}

/// A fresh (non-resumed) run starts from an empty slate: earlier checkpoints and results are removed.
fn clear_previous_run(out: &Path) -> Result<()> {
    let previous = list_checkpoints(out)?;
    if !previous.is_empty() {
        tracing::warn!(
            "{}: removing {} checkpoint(s) of an earlier run (use --resume to continue it)",
            out.display(),
            previous.len()
        );
    }
    for (_, dir) in previous {
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
            return Err(CoreError::Io { path: entry.clone(), source: std::io::ErrorKind::NotFound.into() });
        }
    }
    Ok(files)
}

fn data_options(config: &RunConfig) -> Result<DataOptions> {
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

/// The model to train: loaded from `model.path`, or initialised from the config's shape with the run's seed.
fn build_model<A: AutodiffBackend>(
    config: &RunConfig,
    tokenizer: &TextTokenizer,
    device: &A::Device,
) -> Result<(LlamaModel<A>, HfConfig)> {
    let (model, hf_config) = match &config.model.path {
        Some(dir) => hf::load_model::<A>(dir, device)?,
        None => {
            let mut shape = config.scratch_model(tokenizer.vocab_size());
            shape.bos_token_id = tokenizer.bos_token.as_deref().and_then(|t| tokenizer.token_id(t));
            shape.eos_token_ids = tokenizer.eos_token_id().into_iter().collect();
            shape.pad_token_id = tokenizer.pad_token.as_deref().and_then(|t| tokenizer.token_id(t));
            shape.validate().map_err(|m| CoreError::Invalid(format!("[model]: {m}")))?;
            A::seed(device, config.training.seed);
            (LlamaModel::<A>::init(&shape, device), HfConfig::from_model(&shape))
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
fn batch_loss<B: Backend>(model: &LlamaModel<B>, batch: &Batch, device: &B::Device) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let ids: Vec<i64> = batch.input_ids.iter().map(|&t| t as i64).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch.rows, batch.seq]), device);
    let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(batch.labels.clone(), [batch.rows, batch.seq]), device);
    let positions = batch.position_ids.as_ref().map(|ids| PositionIds::new(batch.rows, batch.seq, ids.clone()));
    causal_lm_loss_parts(model.forward(tokens, positions.as_ref()), labels)
}

/// Token-weighted mean loss over at most `max_batches` batches of the eval split.
pub fn evaluate<B: Backend>(
    model: &LlamaModel<B>,
    options: &DataOptions,
    tokenizer: &TextTokenizer,
    max_batches: usize,
    device: &B::Device,
) -> Result<f64> {
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
    if count == 0.0 {
        return Err(CoreError::Invalid("the eval split holds no scored token (raise data.eval_fraction)".into()));
    }
    Ok(sum / count)
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

fn sample_text<B: Backend>(
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
