//! The [`Trainer`]: runs any [`LightningModule`] on its [`DataModule`] as one rank of an [`Accelerator`]'s world,
//! with accumulation, clipping, the learning-rate schedule, validation, metrics, atomic checkpoints, exact resume
//! and a graceful stop on SIGINT/SIGTERM. Rank 0 alone writes metrics, checkpoints and `final/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use llmtrain_accel::{Accelerator, Gather, ReduceOp};
use llmtrain_core::CoreError;
use llmtrain_core::fsutil::write_dir_atomic;
use llmtrain_core::interrupt::GracefulStop;
use llmtrain_core::train::checkpoint::{ResumeFrom, TrainerState, latest_valid_checkpoint, verify_checkpoint};
use llmtrain_core::train::metrics::METRICS_FILE;
use llmtrain_core::train::param_paths::trainable_paths;
use llmtrain_core::train::plot::{LOSS_CURVE_FILE, write_loss_curve};
use llmtrain_core::train::{AdamW, AdamWConfig, Schedule, clear_previous_run, earlier_run_contents, set_aside_after};
use serde_json::{Map, Value, json};

use crate::callbacks::{Callback, Control, ModelCheckpoint, ModelCheckpointSection, ProgressBar};
use crate::data::DataModule;
use crate::error::{LightningError, Result};
use crate::loggers::{LoggerKind, Loggers, RUN_OUTPUTS, csv::CSV_FILE};
use crate::module::{LightningModule, LossParts, Recompute};
use crate::step::{StepOptions, optimizer_step};
use crate::window::Window;

/// How the trainer runs (Lightning's `Trainer` arguments, with transformers' names where llmtrain's config
/// uses them). Accumulation and precision are the [`Accelerator`]'s.
#[derive(Debug, Clone)]
pub struct TrainerSettings {
    /// Where metrics, checkpoints and `final/` go.
    pub default_root_dir: PathBuf,
    pub max_steps: u64,
    /// Also stop once the data module has served this many epochs (it must tell where epochs end).
    pub max_epochs: Option<u64>,
    /// At most this many training batches an epoch.
    pub limit_train_batches: Option<u64>,
    /// A smoke test of the module: this many steps and validation batches (0: off), writing nothing.
    pub fast_dev_run: u64,
    /// Validation batches run before the first step to catch a broken `validation_step` early (not logged).
    pub num_sanity_val_steps: usize,
    /// How the ranks train: data parallel over the Accelerator's world, or one device only.
    pub strategy: Strategy,
    pub optimizer: AdamWConfig,
    pub schedule: Schedule,
    /// Global-norm gradient clipping.
    pub gradient_clip_val: Option<f64>,
    pub log_every_n_steps: u64,
    /// Validate every this many steps (0: only at the end).
    pub val_check_interval: u64,
    pub limit_val_batches: usize,
    /// When to checkpoint and which checkpoints to keep (Lightning's `ModelCheckpoint`).
    pub model_checkpoint: ModelCheckpointSection,
    pub gradient_checkpointing: Option<Recompute>,
    pub seed: u64,
    /// Rows of one micro-batch on one rank, when known: recorded in checkpoints (times the ranks), so that a run
    /// with another number of ranks reading as many rows in all can resume from them.
    pub batch_size: Option<usize>,
    /// Continue from a checkpoint: the newest intact one, the best by the monitored metric, or a directory
    /// (Lightning's `ckpt_path`); none there is an error.
    pub resume: Option<ResumeFrom>,
    /// Delete an earlier run's checkpoints, `final/` and metrics and start over.
    pub overwrite: bool,
    /// Where metric records go besides `metrics.jsonl` (Lightning's loggers).
    pub loggers: Vec<LoggerKind>,
    /// The run's configuration, for the loggers that record it (CSV's `hparams.yaml`).
    pub hparams: Value,
    /// Show a [`ProgressBar`] (rank 0).
    pub enable_progress_bar: bool,
}

impl TrainerSettings {
    /// A fast dev run: nothing is written into the output directory.
    pub fn writes_nothing(&self) -> bool {
        self.fast_dev_run > 0
    }

    /// Lightning's defaults where it has them, for a run writing into `default_root_dir`: 1000 steps of AdamW at a
    /// constant 1e-3, a log record every 50 steps, validation and a checkpoint only at the end (the newest kept),
    /// seed 0, `metrics.jsonl` only.
    pub fn new(default_root_dir: impl Into<PathBuf>) -> Self {
        Self {
            default_root_dir: default_root_dir.into(),
            max_steps: 1000,
            max_epochs: None,
            limit_train_batches: None,
            fast_dev_run: 0,
            num_sanity_val_steps: 2,
            strategy: Strategy::Auto,
            optimizer: AdamWConfig::default(),
            schedule: Schedule::constant(1e-3),
            gradient_clip_val: None,
            log_every_n_steps: 50,
            val_check_interval: 0,
            limit_val_batches: usize::MAX,
            model_checkpoint: ModelCheckpointSection::default(),
            gradient_checkpointing: None,
            seed: 0,
            batch_size: None,
            resume: None,
            overwrite: false,
            loggers: vec![LoggerKind::Jsonl],
            hparams: Value::Null,
            enable_progress_bar: true,
        }
    }
}

/// What a fit did (identical on every rank, except the figures rank 0 alone computes).
#[derive(Debug, Clone, Default)]
pub struct FitSummary {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub final_train_loss: f64,
    pub final_val_loss: Option<f64>,
    /// Mean of the logged throughputs (rank 0).
    pub tokens_per_sec: f64,
    /// fp16: optimizer steps skipped because the gradients overflowed, and the loss scale at the end.
    pub skipped_steps: u64,
    pub loss_scale: Option<f64>,
    /// What the module logged before the first step (fresh runs) and after the last (rank 0).
    pub start_metrics: Map<String, Value>,
    pub end_metrics: Map<String, Value>,
    pub final_dir: PathBuf,
    pub elapsed_secs: f64,
    /// The run had already reached `max_steps` when asked to resume: nothing was trained or written.
    pub already_finished: bool,
    /// The signal (SIGINT/SIGTERM) that stopped the run after step `steps`, whose checkpoint was written.
    pub interrupted_by: Option<i32>,
    /// Why a callback (early stopping) or `max_epochs` ended the run before `max_steps`; `final/` was written.
    pub stopped_early: Option<String>,
    /// A fast dev run: it trained and validated, and wrote nothing.
    pub fast_dev_run: bool,
    /// Under a strategy that counts them (ZeRO): the model states this rank kept between steps at the end.
    pub model_states: Option<llmtrain_accel::HeldBytes>,
}

/// How the ranks of a run train (Lightning's `strategy`; the ZeRO stages come with llmtrain-zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Data parallel over however many ranks the run was launched with.
    #[default]
    Auto,
    /// One rank only: a launch with several is refused.
    SingleDevice,
    /// Data parallel (DDP) through the Accelerator: gradients all-reduced every step.
    Ddp,
}

/// The metrics the Trainer itself logs (a module's own come from [`LightningModule::metric_names`]).
const TRAINER_METRICS: &[&str] = &[
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_sec",
    "epoch",
    "num_tokens",
    "comm_share",
    "loss_scale",
    "skipped_steps",
    "zero/params_bytes",
    "zero/grads_bytes",
    "zero/optimizer_bytes",
    "zero/offloaded_optimizer_bytes",
    "zero/transient_peak_bytes",
];
/// The metrics of a validation.
const VALIDATION_METRICS: &[&str] = &["eval_loss", "eval_perplexity"];

/// Runs modules as one rank of `accelerator`'s world.
pub struct Trainer<'a, A: AutodiffBackend> {
    settings: TrainerSettings,
    accelerator: &'a mut Accelerator<A>,
    /// The checkpoint a resumed run continues from.
    checkpoint: Option<(PathBuf, TrainerState)>,
    started: Instant,
    callbacks: Vec<Box<dyn Callback>>,
    /// Names and prunes the checkpoints (also a callback: its state is in every checkpoint).
    model_checkpoint: ModelCheckpoint,
    /// Rank 0's, unless turned off; called last, so it shows what the other callbacks added to a record.
    progress_bar: Option<ProgressBar>,
    _graceful: Option<GracefulStop>,
    /// Tokens trained on so far, all ranks (restored on resume).
    num_tokens: u64,
}

impl<'a, A: AutodiffBackend> Trainer<'a, A> {
    /// Settles what happens to an earlier run in the output directory before anything is written: refused
    /// without `resume`/`overwrite`; with `resume`, the checkpoint to continue from is found and verified (an
    /// error if none). Unless the run turns out finished, SIGINT/SIGTERM from here on finish the current step and
    /// checkpoint it (a second one stops at once), and rank 0 creates the output directory.
    pub fn new(settings: TrainerSettings, accelerator: &'a mut Accelerator<A>) -> Result<Self> {
        let out = &settings.default_root_dir;
        if settings.strategy == Strategy::SingleDevice && accelerator.world_size() > 1 {
            return Err(LightningError::Invalid(format!(
                "strategy = \"single_device\" but this run has {} ranks: use \"ddp\" (or \"auto\") to train them \
                 data parallel",
                accelerator.world_size()
            )));
        }
        // A fast dev run writes nothing, so it may run beside an earlier run.
        let dry = settings.writes_nothing();
        let nothing = || LightningError::Invalid(nothing_to_resume(out));
        let checkpoint = match &settings.resume {
            None if dry => None,
            None => {
                refuse_earlier_run(
                    out,
                    settings.overwrite,
                    "pass --resume to continue it, or --overwrite to delete it and start over",
                )?;
                None
            }
            Some(ResumeFrom::Last) => Some(latest_valid_checkpoint(out)?.ok_or_else(nothing)?),
            Some(ResumeFrom::Best) => Some(ModelCheckpoint::best_checkpoint(out)?.ok_or_else(nothing)?),
            Some(ResumeFrom::Dir(dir)) => {
                let state = verify_checkpoint(dir).map_err(|err| {
                    LightningError::Invalid(format!("--resume {}: not an intact checkpoint: {err}", dir.display()))
                })?;
                if !is_checkpoint_of(dir, out) && !dry {
                    // Another run's checkpoint continues into this output directory, which must hold no run.
                    refuse_earlier_run(out, settings.overwrite, "pass another --output-dir for the continued run")?;
                }
                Some((dir.clone(), state))
            }
        };
        let model_checkpoint = ModelCheckpoint::new(settings.model_checkpoint.clone());
        let progress_bar = (settings.enable_progress_bar && accelerator.is_main_process()).then(ProgressBar::new);
        let mut trainer = Self {
            settings,
            accelerator,
            checkpoint,
            started: Instant::now(),
            callbacks: Vec::new(),
            model_checkpoint,
            progress_bar,
            _graceful: None,
            num_tokens: 0,
        };
        if trainer.finished().is_none() {
            trainer._graceful = Some(GracefulStop::enter());
            if trainer.accelerator.is_main_process() && !dry {
                let out = &trainer.settings.default_root_dir;
                std::fs::create_dir_all(out).map_err(|e| CoreError::io(out, e))?;
            }
        }
        Ok(trainer)
    }

    /// The callbacks the fit calls (Lightning's `Trainer(callbacks=[...])`).
    pub fn with_callbacks(mut self, callbacks: Vec<Box<dyn Callback>>) -> Self {
        self.callbacks = callbacks;
        self
    }

    /// A resumed run that had already finished (its last checkpoint reached `max_steps`, or a callback stopped
    /// it, and `final/` was written after it; a run stopped while writing `final/` goes on and writes it):
    /// nothing to do.
    pub fn finished(&self) -> Option<FitSummary> {
        let (_, state) = self.checkpoint.as_ref()?;
        let final_dir = self.settings.default_root_dir.join("final");
        let ended = state.step >= self.settings.max_steps || state.stopped_early.is_some();
        (ended && final_dir.is_dir()).then(|| FitSummary {
            steps: state.step,
            resumed_from: Some(state.step),
            final_dir,
            already_finished: true,
            stopped_early: state.stopped_early.clone(),
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            ..Default::default()
        })
    }

    pub fn settings(&self) -> &TrainerSettings {
        &self.settings
    }

    pub fn accelerator(&self) -> &Accelerator<A> {
        self.accelerator
    }

    /// Trains `net` with `module` on `data` up to `max_steps` (from the resumed checkpoint's step, if any),
    /// validates, checkpoints, and writes `final/`; returns the summary and the trained network.
    pub fn fit<M, D>(
        &mut self,
        module: &mut M,
        net: M::Net,
        data: &mut D,
        device: &A::Device,
    ) -> Result<(FitSummary, M::Net)>
    where
        M: LightningModule<A>,
        D: DataModule<M::Net, Batch = M::Batch>,
    {
        if let Some(done) = self.finished() {
            return Ok((done, net));
        }
        self.check_monitors(module, data)?;
        let mut s = self.settings.clone();
        if let Some(chosen) = module.configure_optimizers() {
            (s.optimizer, s.schedule) = (chosen.optimizer, chosen.schedule);
        }
        let dry = s.writes_nothing();
        if let Some(batches) = s.limit_train_batches {
            data.limit_train_batches(batches)?;
        }
        let out = s.default_root_dir.clone();
        let main = self.accelerator.is_main_process();
        // Every rank has read what it builds from (which may sit in the output directory) before rank 0 clears it.
        self.accelerator.wait_for_everyone()?;
        if self.accelerator.releases_params() && !module.walks_sharded_layers() {
            return Err(LightningError::Invalid(
                "ZeRO stage 3 trains the causal-LM objectives (pretrain, sft) with full finetuning for now: use \
                 stage 1 or 2 for this objective or method"
                    .into(),
            ));
        }
        let mut net = module.configure_net(self.accelerator.prepare_model(net)?);
        if main {
            // Under ZeRO stage 3 rank 0 writes checkpoints and `final/` gathering one layer at a time.
            module.gather_layers_from(self.accelerator.driven_layer_source());
        }
        let mut optimizer = AdamW::<A::InnerBackend>::new(s.optimizer);
        let paths = trainable_paths(&net);
        let mut resumed_from = None;
        let resumed_dir = self.checkpoint.as_ref().map(|(dir, _)| dir.clone());
        if let Some(dir) = &resumed_dir {
            let (loaded, state) = self.accelerator.load_state(dir, s.optimizer, device, self.global_batch())?;
            optimizer = loaded;
            // Under ZeRO stage 3 the loaded weights are whole for the moment: each rank takes its shares of them.
            net = module.configure_net(self.accelerator.shard_model(module.load_checkpoint(net, dir)?)?);
            check_optimizer_names(&optimizer, &paths, dir)?;
            // An elastic restart may read the same global batch with fewer ranks and more accumulation.
            let position = match (state.global_batch, self.global_batch()) {
                (Some(saved), Some(rows)) if saved != rows && state.world_size != self.accelerator.world_size() => data
                    .rescale_position(&state.data_position, saved, rows)
                    .map_err(|err| LightningError::Invalid(format!("--resume {}: {err}", dir.display())))?,
                _ => state.data_position.clone(),
            };
            data.seek(&position)?;
            module.on_load_checkpoint(&state.module)?;
            for callback in self.callbacks_mut() {
                if let Some(saved) = state.callbacks.get(callback.name()) {
                    callback.load_state_dict(saved)?;
                }
            }
            resumed_from = Some(state.step);
            self.num_tokens = state.num_tokens;
            if main {
                eprintln!("resuming from {} (step {})", dir.display(), state.step);
            }
        }
        if s.max_epochs.is_some() && data.epochs_completed()?.is_none() {
            return Err(LightningError::Invalid(
                "max_epochs: this run's data module cannot tell where an epoch ends; set max_steps instead".into(),
            ));
        }
        // Everything is checked: only now does rank 0 touch the output directory.
        match (&resumed_dir, resumed_from) {
            _ if !main || dry => {}
            (Some(dir), Some(step)) if is_checkpoint_of(dir, &out) => {
                // What came after this checkpoint is another history: kept aside, not mixed with this one.
                if let Some((aside, moved)) = set_aside_after(&out, step, dir, &[METRICS_FILE, CSV_FILE])? {
                    let (moved, aside) = (moved.join(", "), aside.display());
                    eprintln!("moved what the run wrote after step {step} ({moved}) to {aside}; nothing was deleted");
                }
            }
            (Some(_), _) if !s.overwrite => {}
            _ => clear_previous_run(&out, RUN_OUTPUTS)?,
        }
        optimizer.lr_scale =
            paths.iter().map(|path| (path.clone(), module.lr_scale(path))).filter(|(_, scale)| *scale != 1.0).collect();
        // Nobody reads the output directory before rank 0 has cleared it.
        self.accelerator.wait_for_everyone()?;
        let mut step = resumed_from.unwrap_or(0);
        if dry {
            (s.max_steps, s.val_check_interval, s.limit_val_batches) =
                (step + s.fast_dev_run, 0, s.fast_dev_run as usize);
            s.num_sanity_val_steps = 0;
        }
        let mut metrics =
            if main && !dry { Some(Loggers::open(&out, &s.loggers, resumed_from, &s.hparams)?) } else { None };
        let mut summary = FitSummary { resumed_from, final_dir: out.join("final"), ..Default::default() };
        // The latest value of every metric logged (what callbacks see), and why a callback stopped the run.
        let mut latest = Map::new();
        let mut stopped_early: Option<String> = None;
        // Whether the module logs start and end figures, agreed by the ranks (a module may know only on rank 0):
        // under ZeRO stage 3 every rank takes part in gathering the network for them.
        let fit_figures = self.accelerator.reduce(f64::from(u8::from(module.has_fit_figures())), ReduceOp::Sum)? > 0.0;
        if resumed_from.is_none() && fit_figures {
            // Gathered on every rank (a collective under ZeRO stage 3), used by rank 0.
            let whole = self.accelerator.unwrap_model(&net)?;
            if main {
                summary.start_metrics = module.on_fit_start(&whole)?;
            }
        }
        if main && !summary.start_metrics.is_empty() {
            self.log(metrics.as_mut(), with_step(step, &summary.start_metrics), &mut latest)?;
        }

        if s.num_sanity_val_steps > 0 && data.has_validation() {
            // Lightning's sanity check: a broken validation fails now, not after the first interval.
            self.validate_batches(module, &net, data, device, s.num_sanity_val_steps)?;
        }
        for callback in self.callbacks_mut() {
            callback.on_train_start(step, s.max_steps)?;
        }
        // Why the data ended the run before max_steps (max_epochs).
        let mut epochs_done = None;
        let mut window = Window::new(self.accelerator);
        let (mut last_val, mut validated_at) = (None, None);
        let accumulation = self.accelerator.config().gradient_accumulation_steps;
        let mut micro = Vec::with_capacity(accumulation);
        while step < s.max_steps {
            if let Some(max) = s.max_epochs
                && data.epochs_completed()?.is_some_and(|done| done >= max)
            {
                epochs_done = Some(format!("max_epochs = {max} reached"));
                break;
            }
            micro.clear();
            for _ in 0..accumulation {
                micro.push(data.train_batch(&net)?);
            }
            let lr = s.schedule.lr(step);
            let options = StepOptions {
                lr,
                max_grad_norm: s.gradient_clip_val,
                gradient_checkpointing: s.gradient_checkpointing,
                step,
                seed: s.seed,
                tokens: micro.iter().map(|b| data.batch_tokens(b)).sum::<usize>() as f64,
            };
            let stats;
            (net, stats) = optimizer_step(self.accelerator, module, net, &mut optimizer, &mut micro, &options, device)?;
            window.tokens += stats.tokens as usize;
            self.num_tokens += stats.tokens as u64;
            step += 1;
            summary.final_train_loss = stats.loss;
            module.on_train_batch_end(step, stats.loss)?;
            for callback in self.callbacks_mut() {
                callback.on_train_batch_end(step, stats.loss, lr)?;
            }

            if step % s.log_every_n_steps == 0 || step == s.max_steps {
                let mut record = json!({
                    "step": step, "loss": stats.loss, "lr": lr, "grad_norm": stats.grad_norm,
                    "tokens_per_sec": window.rate(), "epoch": data.epoch(), "num_tokens": self.num_tokens,
                });
                for (name, value) in &stats.metrics {
                    record[*name] = json!(value);
                }
                if self.accelerator.world_size() > 1 {
                    record["comm_share"] = json!(window.comm_share(self.accelerator));
                }
                if let Some(scale) = self.accelerator.loss_scale() {
                    record["loss_scale"] = json!(scale);
                    record["skipped_steps"] = json!(self.accelerator.skipped_steps());
                }
                // Rank 0 owns the largest share of a ZeRO partition, so its counts are the largest over ranks.
                if let Some(held) = self.accelerator.held_bytes(&optimizer) {
                    record["zero/params_bytes"] = json!(held.params);
                    record["zero/grads_bytes"] = json!(held.grads);
                    record["zero/optimizer_bytes"] = json!(held.optimizer);
                    if held.offloaded_optimizer > 0 {
                        record["zero/offloaded_optimizer_bytes"] = json!(held.offloaded_optimizer);
                    }
                    record["zero/transient_peak_bytes"] = json!(held.transient_peak);
                }
                self.log(metrics.as_mut(), record, &mut latest)?;
                window = Window::new(self.accelerator);
            }
            let val_due = s.val_check_interval > 0 && step % s.val_check_interval == 0 && step != s.max_steps;
            if val_due && data.has_validation() {
                let val_loss;
                (val_loss, stopped_early) = self.fit_validation(
                    module,
                    &net,
                    data,
                    device,
                    (step, s.limit_val_batches),
                    metrics.as_mut(),
                    &mut latest,
                )?;
                (last_val, validated_at) = (Some(val_loss), Some(step));
            }
            let every = self.model_checkpoint.every_n_train_steps();
            let saved = every > 0 && step % every == 0 && step != s.max_steps;
            if stopped_early.is_some() {
                // The end of the fit below writes the checkpoint and `final/`.
                break;
            }
            let signal = stats.stop_signal.filter(|_| step < s.max_steps);
            if (saved || signal.is_some()) && !dry {
                let at = Snapshot { step, stopped_early: &stopped_early, interrupted: signal.is_some() };
                // Under ZeRO stage 3: the parameters outside the layers whole on every rank (a collective); rank 0
                // gathers the layers one at a time as it writes them.
                let saved = self.accelerator.gather_model(net.clone(), Gather::Step)?;
                self.save(module, &saved, &optimizer, data, at)?;
            }
            if let Some(signal) = signal {
                self.end_callbacks()?;
                summary.steps = step;
                summary.interrupted_by = Some(signal);
                summary.elapsed_secs = self.started.elapsed().as_secs_f64();
                return Ok((summary, self.accelerator.gather_model(net, Gather::All)?));
            }
        }
        // A run a callback stopped (or max_epochs ended right after a validation) has just validated at this step.
        if data.has_validation() && validated_at != Some(step) {
            // The callbacks see the last validation too, so their saved state is the run's whole history.
            let at = (step, s.limit_val_batches);
            let (val_loss, _) = self.fit_validation(module, &net, data, device, at, metrics.as_mut(), &mut latest)?;
            last_val = Some(val_loss);
        }
        self.end_callbacks()?;
        // The trained network whole, on every rank (gathered under ZeRO stage 3), for the end figures.
        if fit_figures {
            let whole = self.accelerator.unwrap_model(&net)?;
            if main {
                summary.end_metrics = module.on_fit_end(&whole)?;
            }
        }
        if main && !summary.end_metrics.is_empty() {
            self.log(metrics.as_mut(), with_step(step, &summary.end_metrics), &mut latest)?;
        }
        // A run the data ended (max_epochs) is finished too: a resume has nothing left to do.
        let stopped_early = stopped_early.or(epochs_done);
        summary.fast_dev_run = dry;
        // The last checkpoint and `final/` both hold the end state.
        let at = Snapshot { step, stopped_early: &stopped_early, interrupted: false };
        // Under ZeRO stage 3, as for every checkpoint: the parameters outside the layers whole, the layers gathered
        // one at a time as rank 0 writes them.
        let net = self.accelerator.gather_model(net, Gather::Step)?;
        if !dry {
            self.save(module, &net, &optimizer, data, at)?;
        }
        summary.steps = step;
        summary.stopped_early = stopped_early;
        summary.final_val_loss = last_val;
        summary.skipped_steps = self.accelerator.skipped_steps();
        summary.loss_scale = self.accelerator.loss_scale();
        summary.model_states = self.accelerator.held_bytes(&optimizer);
        if !dry {
            let written = self.accelerator.on_main_with_layers(|| {
                write_dir_atomic(&summary.final_dir, |dir| {
                    module.save_final(&net, dir).map_err(|err| CoreError::Invalid(err.to_string()))
                })
            })?;
            written.transpose()?;
        }
        if main
            && !dry
            && let Some(metrics) = &metrics
        {
            let records = metrics.read_all()?;
            // A figure is a convenience: failing to draw it does not fail a finished run.
            if let Err(err) = write_loss_curve(&records, &out.join(LOSS_CURVE_FILE)) {
                tracing::warn!("{err}");
            }
            let rates: Vec<f64> = records.iter().filter_map(|r| r["tokens_per_sec"].as_f64()).collect();
            summary.tokens_per_sec =
                if rates.is_empty() { 0.0 } else { rates.iter().sum::<f64>() / rates.len() as f64 };
        }
        // No rank reports success before the final model is in place.
        self.accelerator.wait_for_everyone()?;
        summary.elapsed_secs = self.started.elapsed().as_secs_f64();
        Ok((summary, self.accelerator.gather_model(net, Gather::All)?))
    }

    /// Writes the checkpoint of `at.step` (rank 0) of `net` (under ZeRO stage 3 with the parameters outside the
    /// layers gathered and the layers released: rank 0's module gathers them one at a time while the others serve),
    /// named and pruned as the [`ModelCheckpoint`] says, with every callback's state.
    fn save<M, D>(
        &mut self,
        module: &M,
        net: &M::Net,
        optimizer: &AdamW<A::InnerBackend>,
        data: &D,
        at: Snapshot<'_>,
    ) -> Result<()>
    where
        M: LightningModule<A>,
        D: DataModule<M::Net, Batch = M::Batch>,
    {
        let plan = self.model_checkpoint.plan(at.step, at.interrupted);
        let callbacks = self.callbacks();
        let state = TrainerState {
            step: at.step,
            data_position: data.position(),
            seed: self.settings.seed,
            world_size: 1,
            global_batch: self.global_batch(),
            gradient_accumulation_steps: Some(self.accelerator.config().gradient_accumulation_steps),
            loss_scaler: None,
            files: Default::default(),
            callbacks: callbacks
                .map(|c| (c.name().to_string(), c.state_dict()))
                .filter(|(_, state)| !state.is_null())
                .collect(),
            stopped_early: at.stopped_early.clone(),
            module: module.on_save_checkpoint(),
            num_tokens: self.num_tokens,
        };
        let mut failed = None;
        let out = &self.settings.default_root_dir;
        let written = self.accelerator.save_state(out, optimizer, state, &plan, |dir| {
            module.save_checkpoint(net, dir).map_err(|err| {
                let message = err.to_string();
                failed = Some(err);
                CoreError::Invalid(message)
            })
        });
        match (written, failed) {
            (_, Some(err)) => Err(err),
            (Err(err), None) => Err(err.into()),
            (Ok(_), None) => Ok(()),
        }
    }

    /// Rows of one micro-batch over all ranks, when the per-rank batch is known.
    fn global_batch(&self) -> Option<u64> {
        self.settings.batch_size.map(|b| (b * self.accelerator.world_size()) as u64)
    }

    /// The user's callbacks, then the checkpointing and the progress bar.
    fn callbacks(&self) -> impl Iterator<Item = &(dyn Callback + 'static)> + '_ {
        let model_checkpoint: &dyn Callback = &self.model_checkpoint;
        let progress_bar = self.progress_bar.as_ref().map(|bar| bar as &dyn Callback);
        self.callbacks.iter().map(|c| c.as_ref()).chain([model_checkpoint]).chain(progress_bar)
    }

    /// Every callback's `on_train_end` (a fit that finished, stopped early or was interrupted).
    fn end_callbacks(&mut self) -> Result<()> {
        self.callbacks_mut().try_for_each(|callback| callback.on_train_end())
    }

    /// [`callbacks`](Self::callbacks), mutably.
    fn callbacks_mut(&mut self) -> impl Iterator<Item = &mut (dyn Callback + 'static)> + '_ {
        let model_checkpoint: &mut dyn Callback = &mut self.model_checkpoint;
        let progress_bar = self.progress_bar.as_mut().map(|bar| bar as &mut dyn Callback);
        self.callbacks.iter_mut().map(|c| c.as_mut()).chain([model_checkpoint]).chain(progress_bar)
    }

    /// Logs one record (a JSON object with its `step`): the callbacks may add metrics to it, then rank 0's
    /// loggers write it, and it holds the latest value of each of its metrics.
    fn log(&mut self, loggers: Option<&mut Loggers>, record: Value, latest: &mut Map<String, Value>) -> Result<()> {
        let Value::Object(mut fields) = record else {
            return Err(LightningError::Invalid(format!("a metric record must be a JSON object: {record}")));
        };
        for callback in self.callbacks_mut() {
            callback.on_log(&mut fields)?;
        }
        latest.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(loggers) = loggers {
            loggers.log(&Value::Object(fields))?;
        }
        Ok(())
    }

    /// Refuses, before step 1, two callbacks of one name, and a callback watching a metric this run never logs,
    /// naming the ones it does.
    fn check_monitors<M, D>(&self, module: &M, data: &D) -> Result<()>
    where
        M: LightningModule<A>,
        D: DataModule<M::Net, Batch = M::Batch>,
    {
        let validation: &[&str] = if data.has_validation() { VALIDATION_METRICS } else { &[] };
        let callbacks: Vec<&dyn Callback> = self.callbacks().collect();
        for (i, callback) in callbacks.iter().enumerate() {
            if callbacks[..i].iter().any(|earlier| earlier.name() == callback.name()) {
                return Err(LightningError::Invalid(format!(
                    "two callbacks are named `{}`: their states would share one key in trainer_state.json",
                    callback.name()
                )));
            }
        }
        let added = callbacks.iter().flat_map(|c| c.metric_names());
        let logged: Vec<&str> =
            TRAINER_METRICS.iter().chain(validation).copied().chain(module.metric_names()).chain(added).collect();
        for callback in callbacks {
            if let Some(monitor) = callback.monitor().filter(|m| !logged.contains(m)) {
                let hint = if VALIDATION_METRICS.contains(&monitor) { " (it needs validation data)" } else { "" };
                return Err(LightningError::Invalid(format!(
                    "{}.monitor: `{monitor}` is not a metric this run logs{hint}; it logs {}",
                    callback.name(),
                    logged.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// A validation during a fit: the mean loss, logged by rank 0, then every callback's `on_validation_end` with
    /// the latest metrics. Returns the loss and the first stop a callback asked for; every rank computes the same,
    /// so all stop after the same step.
    #[allow(clippy::too_many_arguments)]
    fn fit_validation<M, D>(
        &mut self,
        module: &mut M,
        net: &M::Net,
        data: &D,
        device: &A::Device,
        (step, limit_val_batches): (u64, usize),
        loggers: Option<&mut Loggers>,
        latest: &mut Map<String, Value>,
    ) -> Result<(f64, Option<String>)>
    where
        M: LightningModule<A>,
        D: DataModule<M::Net, Batch = M::Batch>,
    {
        let val_loss = self.validate_batches(module, net, data, device, limit_val_batches)?;
        let mut record = json!({"step": step, "eval_loss": val_loss, "eval_perplexity": val_loss.exp()});
        for (name, value) in module.on_validation_epoch_end(step, val_loss)? {
            record[name] = value;
        }
        self.log(loggers, record, latest)?;
        let mut stop = None;
        for callback in self.callbacks_mut() {
            if let Control::Stop(reason) = callback.on_validation_end(step, latest)? {
                stop.get_or_insert(reason);
            }
        }
        // A callback may watch a figure of this rank alone (its throughput): the ranks agree to stop together.
        let stops = self.accelerator.reduce(f64::from(u8::from(stop.is_some())), ReduceOp::Sum)?;
        if stops > 0.0 && stop.is_none() {
            stop = Some("a callback of another rank stopped the run".into());
        }
        Ok((val_loss, stop))
    }

    /// The weighted mean validation loss over every rank's batches (Lightning's `validate`).
    pub fn validate<M, D>(&self, module: &M, net: &M::Net, data: &D, device: &A::Device) -> Result<f64>
    where
        M: LightningModule<A>,
        D: DataModule<M::Net, Batch = M::Batch>,
    {
        self.validate_batches(module, net, data, device, self.settings.limit_val_batches)
    }

    /// [`validate`](Self::validate) over at most `limit` batches per rank.
    fn validate_batches<M, D>(
        &self,
        module: &M,
        net: &M::Net,
        data: &D,
        device: &A::Device,
        limit: usize,
    ) -> Result<f64>
    where
        M: LightningModule<A>,
        D: DataModule<M::Net, Batch = M::Batch>,
    {
        let inner = self.accelerator.unwrap_model(net)?;
        let mut total = LossParts::default();
        data.validation_pass(limit.max(1), &mut |batch| {
            let parts = module.validation_step(&inner, batch, device)?;
            total.sum += parts.sum;
            total.weight += parts.weight;
            Ok(())
        })?;
        // Ranks may hold different numbers of batches: each sums locally, then one reduction.
        let reduced = self.accelerator.reduce_many(&[total.sum, total.weight], ReduceOp::Sum)?;
        Ok(llmtrain_core::train::eval_mean(reduced[0], reduced[1])?)
    }
}

/// A resumed optimizer must hold moments only for parameters this network trains: a checkpoint from another
/// model or method (or from before parameters were named by path) would otherwise restart their moments silently.
fn check_optimizer_names<B: burn::tensor::backend::Backend>(
    optimizer: &AdamW<B>,
    paths: &[String],
    dir: &Path,
) -> Result<()> {
    if let Some(stray) = optimizer.moments.keys().find(|name| !paths.contains(name)) {
        return Err(LightningError::Invalid(format!(
            "{}: its optimizer state holds `{stray}`, which this run does not train: the checkpoint was written \
             by another model, method or llmtrain version and cannot be resumed here",
            dir.display()
        )));
    }
    Ok(())
}

/// Where a fit stands when it checkpoints.
struct Snapshot<'s> {
    step: u64,
    /// Why a callback ended the run, if one did.
    stopped_early: &'s Option<String>,
    /// A signal stops the run after this checkpoint: it is kept whatever it scores.
    interrupted: bool,
}

/// Whether `dir` is a checkpoint directory of the run in `out` (not another run's).
fn is_checkpoint_of(dir: &Path, out: &Path) -> bool {
    let parent = dir
        .parent()
        .and_then(|p| std::fs::canonicalize(if p.as_os_str().is_empty() { Path::new(".") } else { p }).ok());
    parent.is_some() && parent == std::fs::canonicalize(out).ok()
}

/// Refuses to start over an earlier run in `out` unless `overwrite`; `remedy` says what to do instead.
fn refuse_earlier_run(out: &Path, overwrite: bool, remedy: &str) -> Result<()> {
    let earlier = earlier_run_contents(out, RUN_OUTPUTS)?;
    if earlier.is_empty() || overwrite {
        return Ok(());
    }
    Err(LightningError::Invalid(format!(
        "{} holds an earlier run ({}): {remedy}",
        out.display(),
        llmtrain_core::fsutil::shorten(&earlier, 4)
    )))
}

fn with_step(step: u64, figures: &Map<String, Value>) -> Value {
    let mut record = Map::new();
    record.insert("step".into(), json!(step));
    record.extend(figures.clone());
    Value::Object(record)
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
