//! What every `llmtrain train` objective takes from a run config the same way: the [`TrainerSettings`]
//! (`[training]`, `[trainer]`, `[logging]`, `[model_checkpoint]`, `[memopt]`), the callbacks the config asks for,
//! the compute settings, and the tokenizer with the model as the finetuning method prepares it. The causal-LM
//! job ([`crate::train`]) and the preference trainers of llmtrain-trl build their runs from these, so a config
//! key means one thing whatever the objective.

use burn::tensor::backend::AutodiffBackend;
use llmtrain_accel::{Accelerator, Finetune, MixedPrecision};
use llmtrain_core::config::RunConfig;
use llmtrain_core::hf::HfConfig;
use llmtrain_core::model::compute::precision_dtype;
use llmtrain_core::model::{Compute, LlamaModel, ModelConfig};
use llmtrain_core::setup::{TrainOverrides, build_model, resolve_tokenizer};
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_core::train::{AdamWConfig, Schedule};
use llmtrain_memopt::MemoptSection;
use llmtrain_memopt::estimate::training_flops_per_token;
use serde_json::Value;

use crate::callbacks::{
    Callback, EarlyStopping, EarlyStoppingSection, LearningRateMonitor, ModelCheckpointSection, ThroughputMonitor,
};
use crate::error::{LightningError, Result};
use crate::loggers::LoggingSection;
use crate::module::Recompute;
use crate::trainer::TrainerSettings;
use crate::trainer_section::TrainerSection;

/// The Trainer's settings for `config` (already overridden by the command line's `overrides`), with the run's
/// `[logging]` section for [`callbacks`].
pub fn trainer_settings(
    config: &RunConfig,
    memopt: &MemoptSection,
    overrides: &TrainOverrides,
) -> Result<(TrainerSettings, LoggingSection)> {
    let tr = &config.training;
    let logging = config.section::<LoggingSection>()?.unwrap_or_default();
    let lightning = config.section::<TrainerSection>()?.unwrap_or_default();
    let settings = TrainerSettings {
        default_root_dir: config.output.dir.clone(),
        max_steps: tr.max_steps,
        max_epochs: lightning.max_epochs,
        limit_train_batches: lightning.limit_train_batches,
        fast_dev_run: lightning.fast_dev_run.batches(),
        num_sanity_val_steps: lightning.num_sanity_val_steps,
        strategy: lightning.strategy,
        optimizer: AdamWConfig {
            beta1: tr.adam_beta1,
            beta2: tr.adam_beta2,
            eps: tr.adam_epsilon,
            weight_decay: tr.weight_decay,
        },
        schedule: Schedule {
            kind: tr.lr_schedule,
            peak_lr: tr.learning_rate,
            warmup_steps: tr.warmup_steps,
            total_steps: tr.max_steps,
            warmup_type: tr.warmup_type,
        },
        gradient_clip_val: (tr.max_grad_norm > 0.0).then_some(tr.max_grad_norm),
        log_every_n_steps: tr.logging_steps,
        val_check_interval: tr.eval_steps,
        limit_val_batches: tr.eval_batches,
        model_checkpoint: match config.section::<ModelCheckpointSection>()? {
            Some(section) => ModelCheckpointSection {
                every_n_train_steps: section.every_n_train_steps.or(Some(tr.save_steps)),
                ..section
            },
            None => ModelCheckpointSection::newest(tr.save_total_limit, tr.save_steps),
        },
        gradient_checkpointing: memopt
            .gradient_checkpointing
            .then_some(Recompute { offload: memopt.checkpoint_offload }),
        seed: tr.seed,
        batch_size: Some(config.data.batch_size),
        resume: overrides.resume.clone(),
        overwrite: overrides.overwrite,
        loggers: logging.loggers.clone(),
        enable_progress_bar: true,
        hparams: hparams(config, memopt),
    };
    Ok((settings, logging))
}

/// The callbacks `config` asks for: `[early_stopping]`, and `[logging]`'s learning-rate and throughput monitors
/// (the latter counting the FLOPs of `model` on `seq_len`-token rows over `devices` ranks).
pub fn callbacks(
    config: &RunConfig,
    logging: &LoggingSection,
    model: &ModelConfig,
    seq_len: usize,
    devices: usize,
) -> Result<Vec<Box<dyn Callback>>> {
    let mut callbacks: Vec<Box<dyn Callback>> = Vec::new();
    if let Some(early_stopping) = config.section::<EarlyStoppingSection>()? {
        callbacks.push(Box::new(EarlyStopping::new(early_stopping)));
    }
    if logging.learning_rate_monitor {
        callbacks.push(Box::new(LearningRateMonitor));
    }
    if logging.throughput_monitor {
        let flops = training_flops_per_token(model, seq_len);
        callbacks.push(Box::new(ThroughputMonitor::new(flops, logging.peak_flops, devices)));
    }
    Ok(callbacks)
}

/// How the model computes under `[memopt]` and the run's precision.
pub fn compute(memopt: &MemoptSection, mixed_precision: MixedPrecision) -> Compute {
    let mut compute = Compute::new(mixed_precision, memopt.attention, memopt.flash_block);
    compute.dtype = precision_dtype(mixed_precision);
    compute.loss_chunk = memopt.fused_cross_entropy.then_some(memopt.cross_entropy_chunk);
    compute.fused_kernels = memopt.fused_kernels;
    compute
}

/// The tokenizer and the model as `method` prepares it. Rank 0 goes first: it trains (and caches) the tokenizer
/// if it has to, and builds its model (adapters included) alone. The others then load the cached tokenizer, and
/// get rank 0's weights when the trainer prepares the model.
pub fn tokenizer_and_model<A: AutodiffBackend>(
    config: &RunConfig,
    method: &dyn Finetune<A>,
    accelerator: &Accelerator<A>,
    device: &A::Device,
) -> Result<(TextTokenizer, LlamaModel<A>, HfConfig)> {
    let build = || -> Result<(TextTokenizer, LlamaModel<A>, HfConfig)> {
        let tokenizer = resolve_tokenizer(config)?;
        let (mut model, hf_config) = build_model::<A>(config, &tokenizer, device)?;
        method.prepare(&mut model, device).map_err(LightningError::Invalid)?;
        Ok((tokenizer, model, hf_config))
    };
    let first = if accelerator.is_main_process() { Some(build()?) } else { None };
    accelerator.wait_for_everyone()?;
    match first {
        Some(built) => Ok(built),
        None => build(),
    }
}

/// The run's configuration as the loggers record it: core's sections (as overridden) and `[memopt]`; an
/// objective adds its own section.
fn hparams(config: &RunConfig, memopt: &MemoptSection) -> Value {
    let mut all = serde_json::to_value(config).unwrap_or(Value::Null);
    if let (Value::Object(all), Ok(memopt)) = (&mut all, serde_json::to_value(memopt)) {
        all.insert("memopt".into(), memopt);
    }
    all
}
