//! The training loop: config in, trained HF checkpoint out, resumable at any checkpoint, on one rank or many.
//! Every rank runs this function with its own [`Accelerator`]; rank 0 alone writes metrics, checkpoints and
//! the final model.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use llmtrain_core::config::RunConfig;
use llmtrain_core::data::{Batch, DataLoader, Split};
use llmtrain_core::error::CoreError;
use llmtrain_core::fsutil::write_dir_atomic;
use llmtrain_core::hf::{self, HfConfig, SaveOptions};
use llmtrain_core::interrupt::{self, GracefulStop, SIGINT, SIGTERM};
use llmtrain_core::model::lora::{mix_seed, set_dropout_seed};
use llmtrain_core::model::{Compute, LlamaModel};
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_core::train::accuracy::{accuracy_examples, completion_accuracy};
use llmtrain_core::train::checkpoint::{TrainerState, latest_valid_checkpoint};
use llmtrain_core::train::metrics::MetricsLog;
use llmtrain_core::train::plot::{LOSS_CURVE_FILE, write_loss_curve};
use llmtrain_core::train::{
    AdamW, AdamWConfig, Schedule, TrainOverrides, TrainSummary, batch_loss, build_model, clear_previous_run,
    data_options, earlier_run_contents, eval_mean, evaluate_parts, resolve_tokenizer, sample_text, unigram_entropy,
};
use serde_json::json;

use llmtrain_memopt::checkpoint::backward_by_layers;

use crate::accelerator::{Accelerator, ReduceOp};
use crate::error::{AccelError, Result};
use crate::finetune::Finetune;

/// What one optimizer step measured (identical on every rank).
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Token-weighted mean loss over the step's micro-batches on all ranks.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// SIGINT or SIGTERM, if any rank had been asked to stop by the end of the step (SIGINT when any rank got
    /// one): every rank sees the same answer, so all stop after the same step.
    pub stop_signal: Option<i32>,
}

/// How one optimizer step runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepOptions {
    pub lr: f64,
    /// Global-norm clipping threshold.
    pub max_grad_norm: Option<f64>,
    /// Recompute each decoder layer in backward instead of keeping its activations (llmtrain-memopt).
    pub gradient_checkpointing: bool,
    /// With checkpointing, keep the layer inputs in host memory.
    pub checkpoint_offload: bool,
    /// What this step's dropout masks derive from (with the rank and micro-batch): the run's seed and the step,
    /// so masks do not depend on thread timing and a resumed run draws the same ones.
    pub dropout_seed: u64,
}

/// One optimizer step over this rank's `micro` batches: forward, backward and gradient sum per micro-batch,
/// all-reduce on the last, global-norm clipping, then AdamW.
///
/// The loss of every micro-batch on every rank is its summed cross-entropy over the step's total scored-token
/// count (all ranks, all micro-batches), so the step's gradient equals that of one large batch: N ranks with
/// micro-batch b train exactly like one rank with batch N·b. As transformers' Trainer does with
/// `num_items_in_batch`, the loss is scaled up by ranks × accumulation steps to undo the averaging over ranks and
/// the division in [`Accelerator::backward`].
pub fn train_step<A: AutodiffBackend>(
    accelerator: &mut Accelerator<A>,
    model: &mut LlamaModel<A>,
    optimizer: &mut AdamW<A::InnerBackend>,
    micro: &[Batch],
    options: StepOptions,
    device: &A::Device,
) -> Result<StepStats> {
    let local_scored = micro.iter().map(Batch::scored_tokens).sum::<usize>() as f64;
    let scored = accelerator.reduce(local_scored, ReduceOp::Sum)?.max(1.0);
    let undo_averaging = (accelerator.world_size() * accelerator.config().gradient_accumulation_steps) as f64;
    // Applied to each micro-batch's summed loss; backward divides by the accumulation steps on top.
    let scale = undo_averaging / scored;
    let mut local_loss = 0.0;
    for (index, batch) in micro.iter().enumerate() {
        set_dropout_seed(mix_seed(&[options.dropout_seed, accelerator.rank() as u64, index as u64]));
        accelerator.accumulate();
        let loss_sum = if options.gradient_checkpointing {
            accelerator.backward_with(|grads, divisor| {
                backward_by_layers(model, batch, scale / divisor, options.checkpoint_offload, grads, device)
            })?
        } else {
            let (sum, _) = batch_loss(model, batch, device);
            let value = sum.clone().into_scalar().elem::<f64>();
            accelerator.backward(model, sum.mul_scalar(scale))?;
            value
        };
        local_loss += loss_sum / scored;
    }
    if !accelerator.sync_gradients() {
        return Err(AccelError::Config(format!(
            "a step got {} micro-batch(es) but gradient_accumulation_steps is {}",
            micro.len(),
            accelerator.config().gradient_accumulation_steps
        )));
    }
    // The stop flags ride on the loss's collective: a signal costs the step no extra all-reduce.
    let signal = interrupt::stop_requested();
    let flags = [signal == Some(SIGINT), signal.is_some_and(|s| s != SIGINT)].map(|f| f64::from(u8::from(f)));
    let reduced = accelerator.reduce_many(&[local_loss, flags[0], flags[1]], ReduceOp::Sum)?;
    let stop_signal = match (reduced[1] > 0.0, reduced[2] > 0.0) {
        (true, _) => Some(SIGINT),
        (false, true) => Some(SIGTERM),
        (false, false) => None,
    };
    let grad_norm = accelerator.clip_grad_norm(options.max_grad_norm);
    accelerator.step(model, optimizer, options.lr)?;
    Ok(StepStats { loss: reduced[0], grad_norm, stop_signal })
}

/// Runs a whole training job on backend `A` as one rank of `accelerator`'s world; `finetune` is the method
/// ([`FullFinetune`](crate::FullFinetune), or llmtrain-fastlora's LoRA).
pub fn run_training<A: AutodiffBackend>(
    config: &RunConfig,
    overrides: &TrainOverrides,
    accelerator: &mut Accelerator<A>,
    finetune: &dyn Finetune<A>,
    device: &A::Device,
) -> Result<TrainSummary> {
    let started = Instant::now();
    let config = overrides.apply(config);
    let tr = config.training.clone();
    let out = config.output.dir.clone();
    let main = accelerator.is_main_process();
    // What happens to an earlier run is settled before anything is written.
    let checkpoint = if overrides.resume {
        Some(latest_valid_checkpoint(&out)?.ok_or_else(|| AccelError::Config(nothing_to_resume(&out)))?)
    } else {
        let earlier = earlier_run_contents(&out)?;
        if !earlier.is_empty() && !overrides.overwrite {
            return Err(AccelError::Config(format!(
                "{} holds an earlier run ({}): pass --resume to continue it, or --overwrite to delete it and start \
                 over",
                out.display(),
                llmtrain_core::fsutil::shorten(&earlier, 4)
            )));
        }
        None
    };
    // Finished means the last checkpoint reached max_steps and final/ was written after it (a run stopped
    // while writing final/ goes on and writes it).
    if let Some((_, state)) = &checkpoint
        && state.step >= tr.max_steps
        && out.join("final").is_dir()
    {
        return Ok(TrainSummary {
            steps: state.step,
            resumed_from: Some(state.step),
            final_dir: out.join("final"),
            already_finished: true,
            elapsed_secs: started.elapsed().as_secs_f64(),
            ..Default::default()
        });
    }
    // Ctrl-C / SIGTERM from here on (before anything is written) finish the current step and checkpoint it; a
    // second one stops at once.
    let _graceful = GracefulStop::enter();
    if main {
        std::fs::create_dir_all(&out).map_err(|e| CoreError::io(&out, e))?;
    }

    // Rank 0 goes first: it trains (and caches) the tokenizer if it has to, and initialises its model (adapters
    // included) alone, since burn's CPU backends seed one process-wide generator that in-process ranks would
    // otherwise draw from at once. The others then load the cached tokenizer and get rank 0's weights from
    // `prepare_model`.
    let first = if main { Some(tokenizer_and_model::<A>(&config, finetune, device)?) } else { None };
    accelerator.wait_for_everyone()?;
    let (tokenizer, model, hf_config) = match first {
        Some(built) => built,
        None => tokenizer_and_model::<A>(&config, finetune, device)?,
    };
    // Every rank has read the model (which may sit in the output directory) before rank 0 clears that directory.
    accelerator.wait_for_everyone()?;
    let mut model = accelerator.prepare_model(model)?;
    let memopt = &config.memopt;
    let attention = Compute::new(memopt.mixed_precision, memopt.attention, memopt.flash_block).attention;
    let loss_chunk = memopt.fused_cross_entropy.then_some(memopt.cross_entropy_chunk);
    model.compute.attention = attention;
    model.compute.loss_chunk = loss_chunk;
    model.compute.fused_kernels = memopt.fused_kernels;
    let single_options = data_options(&config)?;
    let options = accelerator.prepare_data(&single_options);
    let mut train_data = DataLoader::new(&options, &tokenizer, Split::Train)?;

    let adam =
        AdamWConfig { beta1: tr.adam_beta1, beta2: tr.adam_beta2, eps: tr.adam_epsilon, weight_decay: tr.weight_decay };
    let mut optimizer = AdamW::<A::InnerBackend>::new(adam);
    optimizer.lr_scale = lr_scales(&model, finetune);
    let mut resumed_from = None;
    if let Some((dir, _)) = checkpoint {
        let state = if finetune.saves_adapter_only() {
            // The base was rebuilt from the run config as the first run built it; only the adapter moves.
            let (loaded_optimizer, state) = accelerator.load_training_state(&dir, adam, device)?;
            optimizer = loaded_optimizer;
            state
        } else {
            let (loaded, loaded_optimizer, state) = accelerator.load_state(&dir, adam, device)?;
            (model, optimizer) = (loaded, loaded_optimizer);
            state
        };
        finetune.load(&mut model, &dir, device).map_err(AccelError::Finetune)?;
        optimizer.lr_scale = lr_scales(&model, finetune);
        model.compute.attention = attention;
        model.compute.loss_chunk = loss_chunk;
        model.compute.fused_kernels = memopt.fused_kernels;
        train_data.seek(state.data_position)?;
        resumed_from = Some(state.step);
        if main {
            eprintln!("resuming from {} (step {})", dir.display(), state.step);
        }
    } else if main {
        clear_previous_run(&out)?;
    }
    // Nobody reads the output directory before rank 0 has cleared it.
    accelerator.wait_for_everyone()?;
    let mut step = resumed_from.unwrap_or(0);
    let mut metrics = if main { Some(MetricsLog::open(&out, resumed_from)?) } else { None };
    let schedule = Schedule {
        kind: tr.lr_schedule,
        peak_lr: tr.learning_rate,
        warmup_steps: tr.warmup_steps,
        total_steps: tr.max_steps,
    };

    // Held-out task accuracy, measured on rank 0 before the first step of a fresh run and after the last.
    let accuracy_examples = match (&tr.accuracy_file, main) {
        (Some(file), true) => Some(accuracy_examples(file, &tokenizer, options.seq_len, tr.accuracy_samples)?),
        _ => None,
    };
    let accuracy = |model: &LlamaModel<A>| {
        accuracy_examples.as_ref().map(|examples| {
            // `Accelerator::unwrap_model`, without borrowing the accelerator the loop holds mutably.
            completion_accuracy(&model.valid(), examples, &tokenizer, device)
        })
    };
    let accuracy_before = if resumed_from.is_none() { accuracy(&model) } else { None };
    if let (Some(acc), Some(metrics)) = (accuracy_before, &mut metrics) {
        metrics.write(&json!({"step": step, "accuracy": acc.fraction(), "accuracy_correct": acc.correct,
                              "accuracy_total": acc.total}))?;
    }

    let progress = if main { progress_bar(tr.max_steps, step) } else { ProgressBar::hidden() };
    let mut window = Window::new(accelerator);
    let mut last_loss = f64::NAN;
    let mut last_eval = None;
    let evaluate = |model: &LlamaModel<A>, accelerator: &Accelerator<A>| -> Result<f64> {
        let inference = accelerator.unwrap_model(model);
        let (sum, count) = evaluate_parts(&inference, &options, &tokenizer, tr.eval_batches, device)?;
        let parts = accelerator.reduce_many(&[sum, count], ReduceOp::Sum)?;
        Ok(eval_mean(parts[0], parts[1])?)
    };
    let save = |accelerator: &Accelerator<A>,
                model: &LlamaModel<A>,
                optimizer: &AdamW<A::InnerBackend>,
                data: &DataLoader,
                step: u64|
     -> Result<()> {
        let state = trainer_state(step, data, tr.seed);
        let extra = |dir: &Path| finetune.save(model, dir).map_err(CoreError::Invalid);
        let with_model = (!finetune.saves_adapter_only()).then_some((model, &hf_config));
        accelerator.save_state_with(&out, with_model, optimizer, &tokenizer, state, tr.save_total_limit, extra)?;
        Ok(())
    };
    let mut interrupted_by = None;
    while step < tr.max_steps {
        let mut micro = Vec::with_capacity(tr.gradient_accumulation_steps);
        for _ in 0..tr.gradient_accumulation_steps {
            match train_data.next_batch()? {
                Some(batch) => micro.push(batch),
                None => return Err(CoreError::Invalid("the training data yielded no batch".into()).into()),
            }
        }
        let lr = schedule.lr(step);
        let max_norm = (tr.max_grad_norm > 0.0).then_some(tr.max_grad_norm);
        let step_options = StepOptions {
            lr,
            max_grad_norm: max_norm,
            gradient_checkpointing: config.memopt.gradient_checkpointing,
            checkpoint_offload: config.memopt.checkpoint_offload,
            dropout_seed: mix_seed(&[tr.seed, step]),
        };
        let stats = train_step(accelerator, &mut model, &mut optimizer, &micro, step_options, device)?;
        window.tokens += micro.iter().map(|b| b.rows * b.seq).sum::<usize>() * accelerator.world_size();
        step += 1;
        last_loss = stats.loss;
        progress.set_position(step);
        progress.set_message(bar_message(stats.loss, lr, last_eval, window.rate()));

        if step % tr.logging_steps == 0 || step == tr.max_steps {
            let mut record = json!({
                "step": step, "loss": stats.loss, "lr": lr, "grad_norm": stats.grad_norm,
                "tokens_per_sec": window.rate(), "epoch": train_data.position().epoch,
            });
            if accelerator.world_size() > 1 {
                record["comm_share"] = json!(window.comm_share(accelerator));
            }
            if let Some(scale) = accelerator.loss_scale() {
                record["loss_scale"] = json!(scale);
                record["skipped_steps"] = json!(accelerator.skipped_steps());
            }
            if let Some(metrics) = &mut metrics {
                metrics.write(&record)?;
                log_line(&progress, &record);
            }
            window = Window::new(accelerator);
        }
        let eval_due = tr.eval_steps > 0 && step % tr.eval_steps == 0 && step != tr.max_steps;
        if eval_due && options.eval_fraction > 0.0 {
            let eval_loss = evaluate(&model, accelerator)?;
            let record = json!({"step": step, "eval_loss": eval_loss, "eval_perplexity": eval_loss.exp()});
            if let Some(metrics) = &mut metrics {
                metrics.write(&record)?;
                log_line(&progress, &record);
            }
            last_eval = Some(eval_loss);
        }
        let saved = tr.save_steps > 0 && step % tr.save_steps == 0 && step != tr.max_steps;
        if saved {
            save(accelerator, &model, &optimizer, &train_data, step)?;
        }
        if let Some(signal) = stats.stop_signal.filter(|_| step < tr.max_steps) {
            if !saved {
                save(accelerator, &model, &optimizer, &train_data, step)?;
            }
            interrupted_by = Some(signal);
            break;
        }
    }
    progress.finish_and_clear();
    if let Some(signal) = interrupted_by {
        let summary = TrainSummary {
            steps: step,
            resumed_from,
            final_train_loss: last_loss,
            final_dir: out.join("final"),
            elapsed_secs: started.elapsed().as_secs_f64(),
            interrupted_by: Some(signal),
            ..Default::default()
        };
        return Ok(summary);
    }

    if options.eval_fraction > 0.0 {
        let eval_loss = evaluate(&model, accelerator)?;
        let record = json!({"step": step, "eval_loss": eval_loss, "eval_perplexity": eval_loss.exp()});
        if let Some(metrics) = &mut metrics {
            metrics.write(&record)?;
        }
        last_eval = Some(eval_loss);
    }
    let accuracy_after = accuracy(&model);
    if let (Some(acc), Some(metrics)) = (accuracy_after, &mut metrics) {
        metrics.write(&json!({"step": step, "accuracy": acc.fraction(), "accuracy_correct": acc.correct,
                              "accuracy_total": acc.total}))?;
    }
    // The last checkpoint and `final/` both hold the end state.
    save(accelerator, &model, &optimizer, &train_data, step)?;
    let final_dir = out.join("final");
    let inference = accelerator.unwrap_model(&model);
    let mut summary = TrainSummary {
        steps: step,
        resumed_from,
        final_train_loss: last_loss,
        final_eval_loss: last_eval,
        unigram_entropy: f64::NAN,
        tokens_per_sec: 0.0,
        skipped_rows: train_data.skipped_rows(),
        skipped_steps: accelerator.skipped_steps(),
        loss_scale: accelerator.loss_scale(),
        accuracy_before,
        accuracy_after,
        sample: None,
        final_dir: final_dir.clone(),
        ..Default::default()
    };
    if main {
        write_dir_atomic(&final_dir, |dir| {
            if !finetune.saves_adapter_only() {
                hf::save_model(&inference, &hf_config, dir, &SaveOptions::default())?;
            }
            finetune.save(&model, dir).map_err(CoreError::Invalid)?;
            tokenizer.save(dir)
        })?;
        if let Some(prompt) = &tr.sample_prompt {
            summary.sample = Some(sample_text(&inference, &tokenizer, prompt, tr.sample_max_new_tokens, device)?);
        }
        summary.unigram_entropy = unigram_entropy(&single_options, &tokenizer)?;
        if let Some(metrics) = &metrics {
            let records = metrics.read_all()?;
            // A figure is a convenience: failing to draw it does not fail a finished run.
            if let Err(err) = write_loss_curve(&records, &out.join(LOSS_CURVE_FILE)) {
                tracing::warn!("{err}");
            }
            let rates: Vec<f64> = records.iter().filter_map(|r| r["tokens_per_sec"].as_f64()).collect();
            summary.tokens_per_sec =
                if rates.is_empty() { 0.0 } else { rates.iter().sum::<f64>() / rates.len() as f64 };
        }
    }
    // No rank reports success before the final model is in place.
    accelerator.wait_for_everyone()?;
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Why `--resume` has nothing to continue from in `out`.
fn nothing_to_resume(out: &Path) -> String {
    if out.exists() {
        format!(
            "--resume: {} holds no intact checkpoint, so there is nothing to resume; run without --resume to start \
             over (with --overwrite if it holds an earlier run)",
            out.display()
        )
    } else {
        let missing = llmtrain_core::paths::not_found(out, "output directory");
        format!("--resume: {missing}, so there is nothing to resume; run without --resume to start a new run")
    }
}

/// The learning-rate multipliers the method asks for, by parameter name (only those other than 1).
fn lr_scales<A: AutodiffBackend>(model: &LlamaModel<A>, finetune: &dyn Finetune<A>) -> BTreeMap<String, f64> {
    model
        .named_params()
        .into_iter()
        .map(|(name, _)| {
            let scale = finetune.lr_scale(&name);
            (name, scale)
        })
        .filter(|(_, scale)| *scale != 1.0)
        .collect()
}

/// The tokenizer and the model as the finetuning method prepares it.
fn tokenizer_and_model<A: AutodiffBackend>(
    config: &RunConfig,
    finetune: &dyn Finetune<A>,
    device: &A::Device,
) -> Result<(TextTokenizer, LlamaModel<A>, HfConfig)> {
    let tokenizer = resolve_tokenizer(config)?;
    let (mut model, hf_config) = build_model::<A>(config, &tokenizer, device)?;
    finetune.prepare(&mut model, device).map_err(AccelError::Finetune)?;
    Ok((tokenizer, model, hf_config))
}

fn trainer_state(step: u64, data: &DataLoader, seed: u64) -> TrainerState {
    TrainerState {
        step,
        data_position: data.position(),
        seed,
        world_size: 1,
        loss_scaler: None,
        files: Default::default(),
    }
}

/// Tokens (all ranks) and communication time since the last log line, for throughput and the share of time
/// spent all-reducing.
struct Window {
    start: Instant,
    tokens: usize,
    comm_at_start: Duration,
}

impl Window {
    fn new<A: AutodiffBackend>(accelerator: &Accelerator<A>) -> Self {
        Self { start: Instant::now(), tokens: 0, comm_at_start: accelerator.communication_time() }
    }

    fn rate(&self) -> f64 {
        self.tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    fn comm_share<A: AutodiffBackend>(&self, accelerator: &Accelerator<A>) -> f64 {
        let comm = (accelerator.communication_time() - self.comm_at_start).as_secs_f64();
        comm / self.start.elapsed().as_secs_f64().max(1e-9)
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

/// The figures the progress bar shows on a terminal (where the JSON lines are not printed).
fn bar_message(loss: f64, lr: f64, eval_loss: Option<f64>, tokens_per_sec: f64) -> String {
    let eval = eval_loss.map(|e| format!(" eval {e:.4}")).unwrap_or_default();
    format!("loss {loss:.4}{eval} lr {lr:.2e} {tokens_per_sec:.0} tok/s")
}

/// One JSON line per logged step on stderr when it is not a terminal (a log file, a pipe, a scheduler's
/// output); on a terminal the progress bar shows the figures instead. `metrics.jsonl` holds every record either way.
fn log_line(bar: &ProgressBar, record: &serde_json::Value) {
    tracing::info!("{record}");
    if bar.is_hidden() {
        eprintln!("{record}");
    }
}
