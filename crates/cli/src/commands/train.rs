//! `llmtrain train --config FILE [--model DIR] [--max-steps N] [--output-dir DIR] [--resume [last|best|DIR]]`.
//!
//! One process is a world of one rank; under `mpirun`/`srun` (built with `mpi`) each process is one rank of
//! the MPI world; `llmtrain launch` runs it as several in-process ranks through [`run_rank`].

use std::path::PathBuf;

use anyhow::Result;
use burn::backend::Autodiff;
use llmtrain_accel::{Accelerator, AcceleratorConfig, Finetune, FullFinetune, MixedPrecision};

use llmtrain_core::config::RunConfig;
use llmtrain_core::dist::{Communicator, InProcess};
use llmtrain_core::kernels::Kernels;
use llmtrain_core::setup::TrainOverrides;
use llmtrain_core::train::LossScaleConfig;
use llmtrain_core::train::checkpoint::ResumeFrom;
use llmtrain_fastlora::{LoraMethod, LoraSection};
use llmtrain_memopt::MemoptSection;
use llmtrain_zero::ZeroSection;

/// The run-config sections the role crates of this build own (each crate parses and checks its own); any other
/// section is refused when the config loads.
pub const ROLE_SECTIONS: &[&str] = &[
    <MemoptSection as llmtrain_core::config::ConfigSection>::NAME,
    <LoraSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_lightning::LoggingSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_lightning::EarlyStoppingSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_lightning::ModelCheckpointSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_lightning::TrainerSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_trl::sft::SftSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_trl::dpo::DpoSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_trl::orpo::OrpoSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_trl::kto::KtoSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_trl::reward::RewardSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_trl::online::GrpoSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_trl::online::RlooSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_trl::ppo::PpoSection as llmtrain_core::config::ConfigSection>::NAME,
    <ZeroSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_raytrain::ScalingSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_raytrain::RunSection as llmtrain_core::config::ConfigSection>::NAME,
    <llmtrain_raytrain::FailureSection as llmtrain_core::config::ConfigSection>::NAME,
];

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The run's TOML config (see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Start from this HF checkpoint directory instead of the config's model.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Optimizer steps to train in all; overrides `[training] max_steps`.
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,
    /// Where metrics, checkpoints and final/ go; overrides `[output] dir`.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Continue from a checkpoint: `last` (the bare flag: the newest intact one in the output directory), `best`
    /// (the best by `[model_checkpoint] monitor`), or a checkpoint directory. Checkpoints written after the one
    /// resumed move to the output directory's `superseded-<time>/`.
    #[arg(long, value_name = "last|best|DIR", num_args = 0..=1, default_missing_value = "last", conflicts_with = "overwrite")]
    pub resume: Option<ResumeFrom>,
    /// Delete an earlier run's checkpoints, final/ and metrics in the output directory and start over.
    #[arg(long)]
    pub overwrite: bool,
    /// Compute precision: no (fp32), fp16 or bf16; overrides `[memopt] mixed_precision` (`llmtrain launch
    /// --mixed-precision` sets it for every rank).
    #[arg(long)]
    pub mixed_precision: Option<MixedPrecision>,
    /// A DeepSpeed config (ds_config.json) whose batch, precision, optimizer, scheduler and ZeRO settings the run
    /// takes; overrides `[training] deepspeed`.
    #[arg(long, value_name = "FILE")]
    pub deepspeed: Option<PathBuf>,
    /// Micro-batches per optimizer step on each rank; overrides `[training] gradient_accumulation_steps`.
    #[arg(long, value_name = "N")]
    pub gradient_accumulation_steps: Option<usize>,
    /// Run as a worker of a `[scaling]` driver (which passes it): train, rather than start a driver.
    #[arg(long, hide = true)]
    pub raytrain_worker: bool,
}

impl Args {
    /// The flags that give these arguments to another `llmtrain train` (a driver's worker), paths made absolute
    /// so that a worker started in another directory finds them.
    pub fn to_command_line(&self) -> Vec<String> {
        let path = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string();
        let mut line = vec!["--config".to_string(), path(&self.config)];
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                line.extend([format!("--{name}"), value]);
            }
        };
        flag("model", self.model.as_ref().map(path));
        flag("max-steps", self.max_steps.map(|n| n.to_string()));
        flag("output-dir", self.output_dir.as_ref().map(path));
        flag("mixed-precision", self.mixed_precision.map(|p| p.to_string()));
        flag("deepspeed", self.deepspeed.as_ref().map(path));
        flag("gradient-accumulation-steps", self.gradient_accumulation_steps.map(|n| n.to_string()));
        flag(
            "resume",
            self.resume.as_ref().map(|from| match from {
                ResumeFrom::Last => "last".to_string(),
                ResumeFrom::Best => "best".to_string(),
                ResumeFrom::Dir(dir) => path(dir),
            }),
        );
        if self.overwrite {
            line.push("--overwrite".into());
        }
        if self.raytrain_worker {
            line.push("--raytrain-worker".into());
        }
        line
    }
}

/// `llmtrain train`: the run itself, or, for a config with `[scaling]`, the driver that runs it as worker groups
/// (not for a driver's worker, nor for a rank that mpirun/srun started).
pub fn start(args: &Args, device: llmtrain_core::device::DeviceKind) -> Result<()> {
    if !args.raytrain_worker && !launched_as_rank() {
        let config = RunConfig::load(&args.config, ROLE_SECTIONS)?;
        if let Some(scaling) = config.section::<llmtrain_raytrain::ScalingSection>()? {
            return super::driver::start(args, &config, scaling, device);
        }
    }
    crate::backend::dispatch!(device, train, args)
}

/// Whether this process is a rank mpirun or srun started.
fn launched_as_rank() -> bool {
    #[cfg(feature = "mpi")]
    if llmtrain_core::dist::launched_by_mpi() {
        return true;
    }
    false
}

pub fn run<B: Kernels>(args: &Args, device: &B::Device) -> Result<()> {
    #[cfg(feature = "mpi")]
    if llmtrain_core::dist::launched_by_mpi() {
        let comm = llmtrain_core::dist::Mpi::init()?;
        let rank = comm.rank();
        // Ranks of one machine take its devices in turn (GPU k for local rank k; the CPU is one device).
        let device = device_for_rank::<B>(device, llmtrain_raytrain::get_context().local_rank);
        // Every rank prints its own error: name the rank, as the in-process launcher does.
        let outcome =
            run_rank::<B>(args, &device, Box::new(comm)).map_err(|err| err.context(format!("rank {rank} failed")))?;
        return outcome.map_or(Ok(()), |stop| Err(stop.into()));
    }
    let single = InProcess::group(1).into_iter().next().ok_or_else(|| anyhow::anyhow!("no rank"))?;
    let outcome = run_rank::<B>(args, device, Box::new(single))?;
    outcome.map_or(Ok(()), |stop| Err(stop.into()))
}

/// A run stopped by SIGINT/SIGTERM after checkpointing its last step; the process exits with the signal's code.
#[derive(Debug, thiserror::Error)]
#[error("interrupted at step {step}: resume with --resume")]
pub struct Interrupted {
    pub step: u64,
    pub signal: i32,
    /// Whether this process says so (rank 0 only: the ranks of an MPI job are processes of their own).
    pub report: bool,
}

/// Runs `args` as `world` ranks on threads of this process (rank r on device r of `device`'s kind); a rank that
/// fails stops the others and is named. Every rank stops after the same step on a signal: the stop, once.
pub fn run_threads<B: Kernels>(
    args: &Args,
    world: usize,
    device: &B::Device,
) -> llmtrain_accel::Result<Option<Interrupted>> {
    let outcomes = llmtrain_accel::run_in_process(world, |comm| {
        let rank_device = device_for_rank::<B>(device, comm.rank());
        run_rank::<B>(args, &rank_device, comm)
    })?;
    Ok(outcomes.into_iter().flatten().next())
}

/// Device `index` of `device`'s kind (GPU `index`; backends with one device ignore it).
pub fn device_for_rank<B: Kernels>(device: &B::Device, index: usize) -> B::Device {
    use burn::tensor::backend::DeviceOps;
    let mut id = device.id();
    id.index_id = id.index_id.saturating_add(u16::try_from(index).unwrap_or(u16::MAX));
    <B::Device as burn::tensor::backend::Device>::from_id(id)
}

/// Trains as the rank `comm` stands for; rank 0 prints the summary. Any error, from the config on, aborts the
/// group first, so no other rank waits for this one. A run stopped by a signal returns how (every rank stops
/// after the same step).
pub fn run_rank<B: Kernels>(
    args: &Args,
    device: &B::Device,
    comm: Box<dyn Communicator>,
) -> Result<Option<Interrupted>> {
    let world = comm.world_size();
    let prepared = RunConfig::load(&args.config, ROLE_SECTIONS).map_err(anyhow::Error::from).and_then(|mut config| {
        if config.has_section("scaling") && !args.raytrain_worker {
            anyhow::bail!(
                "{}: [scaling] starts its own workers: run `llmtrain train --config {}` alone, not under launch, \
                 mpirun or srun",
                args.config.display(),
                args.config.display()
            );
        }
        if let Some(steps) = args.gradient_accumulation_steps {
            config.training.gradient_accumulation_steps = steps;
        }
        let mut memopt = config.section::<MemoptSection>()?.unwrap_or_default();
        let zero_section = config.section::<ZeroSection>()?;
        // A DeepSpeed config sets the batch, precision, optimizer, scheduler and ZeRO, as it does for DeepSpeed.
        let ds_config = args.deepspeed.clone().or_else(|| config.training.deepspeed.clone());
        let zero = match ds_config.clone() {
            Some(path) if zero_section.is_some() => {
                anyhow::bail!(
                    "{}: both [zero] and a DeepSpeed config ({}): keep one",
                    args.config.display(),
                    path.display()
                )
            }
            Some(path) => {
                let max_steps = args.max_steps.unwrap_or(config.training.max_steps);
                llmtrain_zero::apply_ds_config(&path, &mut config, &mut memopt, world, max_steps)?
            }
            None => zero_section.unwrap_or_default(),
        };
        let lora = config.section::<LoraSection>()?;
        let accel_config = AcceleratorConfig {
            gradient_accumulation_steps: config.training.gradient_accumulation_steps,
            mixed_precision: args.mixed_precision.unwrap_or(memopt.mixed_precision),
            loss_scale: LossScaleConfig::from(&memopt),
            ..Default::default()
        };
        accel_config.validate()?;
        let trl_trainer = llmtrain_trl::trainer_section(&config)?;
        if let (Some(what), 3) = (llmtrain_zero::not_partitioned(lora.is_some(), trl_trainer), zero.stage) {
            // Named where the stage was set: the DeepSpeed config's key, or the run config's.
            let (file, key) = match &ds_config {
                Some(path) => (path.clone(), "zero_optimization.stage"),
                None => (args.config.clone(), "zero.stage"),
            };
            anyhow::bail!(
                "{}: key `{key}`: ZeRO stage 3 trains the causal-LM objectives (pretrain, sft) with full finetuning \
                 for now, not {what}: use stage 1 or 2",
                file.display()
            );
        }
        Ok((config, memopt, lora, accel_config, trl_trainer, zero))
    });
    let (config, memopt, lora, accel_config, trl_trainer, zero) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => {
            if world > 1 {
                comm.abort(&err.to_string());
            }
            return Err(err);
        }
    };
    let mut accelerator = Accelerator::<Autodiff<B>>::new(accel_config, comm)?;
    if let Some(strategy) = zero.strategy() {
        accelerator = accelerator.with_strategy(Box::new(strategy));
    }
    let overrides = TrainOverrides {
        model: args.model.clone(),
        max_steps: args.max_steps,
        output_dir: args.output_dir.clone(),
        resume: args.resume.clone(),
        overwrite: args.overwrite,
    };
    let method: Box<dyn Finetune<Autodiff<B>>> = match &lora {
        Some(section) => Box::new(LoraMethod::new(section, overrides.apply(&config).model.path.as_deref())),
        None => Box::new(FullFinetune),
    };
    let trained = match trl_trainer {
        Some("sft") => {
            llmtrain_trl::sft::train(&config, &memopt, &overrides, &mut accelerator, method.as_ref(), device)
                .map(Summary::CausalLm)
                .map_err(anyhow::Error::from)
        }
        Some(_) => llmtrain_trl::train(&config, &memopt, &overrides, &mut accelerator, method.as_ref(), device)
            .map(Summary::Trl)
            .map_err(anyhow::Error::from),
        None => llmtrain_lightning::train(&config, &memopt, &overrides, &mut accelerator, method.as_ref(), device)
            .map(Summary::CausalLm)
            .map_err(anyhow::Error::from),
    };
    let summary = match trained {
        Ok(summary) => summary,
        Err(err) => {
            // The other ranks must not wait for this one (under MPI this ends the job, naming this rank).
            if world > 1 {
                accelerator.abort(&err.to_string());
            }
            return Err(err);
        }
    };
    let fit = summary.fit();
    if let Some(signal) = fit.interrupted_by {
        return Ok(Some(Interrupted { step: fit.steps, signal, report: accelerator.is_main_process() }));
    }
    if !accelerator.is_main_process() {
        return Ok(None);
    }
    if fit.already_finished {
        let applied = overrides.apply(&config);
        let ended = match &fit.stopped_early {
            Some(reason) => format!("stopped early at step {} ({reason})", fit.steps),
            None => format!("already reached step {} (max_steps {})", fit.steps, applied.training.max_steps),
        };
        let (output, model) = (applied.output.dir.display(), fit.final_dir.display());
        println!("nothing to resume: the run in {output} {ended}; its model is {model}");
        return Ok(None);
    }
    if world > 1 {
        println!("ranks: {world}");
    }
    if zero.zero_stage().is_some() {
        println!("strategy: {}", accelerator.describe_strategy());
    }
    match (&lora, config.quantization.nf4()) {
        (Some(lora), Some(double_quant)) => {
            let scales = if double_quant { "double-quantized scales" } else { "f32 scales" };
            println!("method: QLoRA, rank-{} adapters on a frozen 4-bit NF4 base ({scales})", lora.r)
        }
        (Some(lora), None) => println!("method: LoRA, rank-{} adapters on a frozen base", lora.r),
        (None, _) if overrides.apply(&config).model.path.is_some() => println!("method: full finetuning"),
        (None, _) => println!("method: pretraining from scratch"),
    }
    if let Some(reason) = &fit.stopped_early {
        println!("stopped early at step {}: {reason}", fit.steps);
    }
    if fit.fast_dev_run {
        println!("fast_dev_run: {} step(s) and a validation ran; nothing was written", fit.steps);
    }
    println!("steps: {}  ({:.1} s, {:.0} tokens/s)", fit.steps, fit.elapsed_secs, fit.tokens_per_sec);
    println!("final train loss: {:.4}", fit.final_train_loss);
    match &summary {
        Summary::CausalLm(summary) => report_causal_lm(summary, &config),
        Summary::Trl(summary) => report_trl(summary),
    }
    if let Some(scale) = fit.loss_scale {
        println!("fp16: {} step(s) skipped for gradient overflow, final loss scale {scale}", fit.skipped_steps);
    }
    if let Some(held) = fit.model_states {
        println!("{}", model_states_line(&held, zero.stage, world)?);
    }
    if !fit.fast_dev_run {
        println!("model: {}", fit.final_dir.display());
    }
    Ok(None)
}

/// The model states rank 0 kept (the largest share of a ZeRO partition) beside what `estimate-memory` predicts
/// for the same trainable parameters, stage and ranks (f32 states).
fn model_states_line(held: &llmtrain_accel::HeldBytes, stage: u8, world: usize) -> Result<String> {
    let predicted = llmtrain_memopt::estimate::fp32_model_states(held.params / 4, stage, world)?;
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    Ok(format!(
        "model states on rank 0: params {:.2} MiB, gradients {:.2} MiB, optimizer {:.2} MiB (estimate-memory \
         --zero-stage {stage} --gpus {world}: {:.2}, {:.2}, {:.2} MiB); largest transient buffer {:.2} MiB{}",
        mib(held.params as f64),
        mib(held.grads as f64),
        mib(held.optimizer as f64),
        mib(predicted.weights),
        mib(predicted.gradients),
        mib(predicted.optimizer),
        mib(held.transient_peak as f64),
        match held.offloaded_optimizer {
            0 => String::new(),
            bytes => format!("; optimizer offloaded to host memory: {:.2} MiB", mib(bytes as f64)),
        },
    ))
}

/// What a run trained, by objective.
enum Summary {
    CausalLm(llmtrain_lightning::TrainSummary),
    Trl(llmtrain_trl::TrlSummary),
}

impl Summary {
    fn fit(&self) -> &llmtrain_lightning::FitSummary {
        match self {
            Summary::CausalLm(summary) => &summary.fit,
            Summary::Trl(summary) => &summary.fit,
        }
    }
}

/// The causal-LM figures: the eval loss against the corpus's unigram entropy, held-out accuracy, a sample.
fn report_causal_lm(summary: &llmtrain_lightning::TrainSummary, config: &RunConfig) {
    let fit = &summary.fit;
    // The unigram entropy is a bar for losses over every token; a completion-only loss is not comparable to it.
    let scores_everything = config.data.loss_on == llmtrain_core::data::LossOn::All;
    if let (Some(eval), false) = (fit.final_val_loss, scores_everything) {
        println!("final eval loss: {eval:.4} nats/token (perplexity {:.1}) on the scored tokens", eval.exp());
    } else if let Some(eval) = fit.final_val_loss {
        let verdict = if eval < summary.unigram_entropy { "below" } else { "NOT below" };
        println!(
            "final eval loss: {eval:.4} nats/token (perplexity {:.1}), {verdict} the corpus's unigram entropy {:.4}",
            eval.exp(),
            summary.unigram_entropy
        );
    } else {
        println!("corpus unigram entropy: {:.4} nats/token", summary.unigram_entropy);
    }
    let show = |a: &llmtrain_core::train::accuracy::Accuracy| {
        format!("{}/{} ({:.1}%)", a.correct, a.total, 100.0 * a.fraction())
    };
    match (&summary.accuracy_before, &summary.accuracy_after) {
        (Some(before), Some(after)) => println!("held-out accuracy: {} before, {} after", show(before), show(after)),
        (None, Some(after)) => println!("held-out accuracy: {}", show(after)),
        _ => {}
    }
    if summary.skipped_rows > 0 {
        println!("skipped malformed rows: {}", summary.skipped_rows);
    }
    if let Some(sample) = &summary.sample {
        println!("sample:\n{sample}");
    }
}

/// A TRL trainer's figures: its data, its reference, the held-out loss and the held-out figures before and after.
fn report_trl(summary: &llmtrain_trl::TrlSummary) {
    println!("trainer: [{}], reference: {}", summary.trainer, summary.reference);
    let items = if summary.items.is_empty() { "pairs" } else { summary.items };
    println!("{items}: {} training, {} held out", summary.train_items, summary.eval_items);
    if let Some(eval) = summary.fit.final_val_loss {
        println!("final eval loss: {eval:.4}");
    }
    let (start, end) = (&summary.fit.start_metrics, &summary.fit.end_metrics);
    // The count the figures are over is logged as `held_out_<what>` (held_out_pairs, held_out_prompts).
    let counted = end.iter().find(|(name, _)| name.starts_with("held_out_"));
    let over = counted.map(|(name, n)| format!(" ({} {})", n.as_u64().unwrap_or(0), &name["held_out_".len()..]));
    let over = over.unwrap_or_default();
    for (name, after) in end.iter().filter(|(name, _)| !name.starts_with("held_out_")) {
        let after = after.as_f64().unwrap_or(f64::NAN);
        match start.get(name).and_then(serde_json::Value::as_f64) {
            Some(before) => println!("held-out {name}{over}: {before:.3} before, {after:.3} after"),
            None => println!("held-out {name}{over}: {after:.3}"),
        }
    }
    if summary.dropped_rows > 0 {
        println!("dropped rows (prompt alone fills max_length): {}", summary.dropped_rows);
    }
    if summary.skipped_rows > 0 {
        println!("skipped malformed rows: {}", summary.skipped_rows);
    }
}
