//! `llmtrain train` for a config with a trainer section of this crate: the objective is chosen by the section,
//! and the rest of the run (the Trainer's settings, callbacks, compute, tokenizer and model, LoRA/QLoRA through
//! the finetuning method, data parallelism) is built by llmtrain-lightning's [`run`] as for causal-LM training.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use llmtrain_accel::{Accelerator, Finetune};
use llmtrain_core::config::{ConfigSection, RunConfig};
use llmtrain_core::hf;
use llmtrain_core::model::ModelConfig;
use llmtrain_core::setup::{TrainOverrides, expand_files};
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_lightning::{CausalLm, Datasets, FitSummary, Trainer, run};
use llmtrain_memopt::MemoptSection;

use crate::dpo::{Dpo, DpoSection, Reference, TokenizedPair, pair_from_row, precompute_reference_logps};
use crate::error::{Result, TrlError};
use crate::rows::read_items;

/// The run-config sections that select one of this crate's trainers.
pub const TRAINER_SECTIONS: &[&str] = &[DpoSection::NAME];

/// The trainer section `config` selects, if any; two of them are refused.
pub fn trainer_section(config: &RunConfig) -> Result<Option<&'static str>> {
    let present: Vec<&'static str> = TRAINER_SECTIONS.iter().copied().filter(|name| config.has_section(name)).collect();
    match present.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(TrlError::Invalid(format!(
            "the config has {} trainer sections ([{}]): a run trains one objective, keep one",
            many.len(),
            many.join("], [")
        ))),
    }
}

/// What a finished preference run reports.
#[derive(Debug, Clone, Default)]
pub struct TrlSummary {
    /// The trainer section that ran (`dpo`).
    pub trainer: &'static str,
    pub fit: FitSummary,
    /// Items trained on and held out (this rank holds all of them), rows skipped as malformed, rows dropped.
    pub train_items: usize,
    pub eval_items: usize,
    pub skipped_rows: u64,
    pub dropped_rows: u64,
    /// Where the reference came from, in words.
    pub reference: String,
}

/// Runs the trainer `config`'s section selects on backend `A` as one rank of `accelerator`'s world; `method` is
/// the finetuning method (full, or llmtrain-fastlora's LoRA), as for [`llmtrain_lightning::train`].
pub fn train<A: AutodiffBackend>(
    config: &RunConfig,
    memopt: &MemoptSection,
    overrides: &TrainOverrides,
    accelerator: &mut Accelerator<A>,
    method: &dyn Finetune<A>,
    device: &A::Device,
) -> Result<TrlSummary> {
    match trainer_section(config)? {
        Some(DpoSection::NAME) => train_dpo(config, memopt, overrides, accelerator, method, device),
        other => Err(TrlError::Invalid(format!("no trl trainer section to run (found {other:?})"))),
    }
}

fn train_dpo<A: AutodiffBackend>(
    config: &RunConfig,
    memopt: &MemoptSection,
    overrides: &TrainOverrides,
    accelerator: &mut Accelerator<A>,
    method: &dyn Finetune<A>,
    device: &A::Device,
) -> Result<TrlSummary> {
    let config = overrides.apply(config);
    let section = config.section::<DpoSection>()?.unwrap_or_default();
    let loss = section.loss().map_err(|e| TrlError::Invalid(format!("[dpo] {}: {}", e.key, e.message)))?;
    let (mut settings, logging) = run::trainer_settings(&config, memopt, overrides)?;
    if let (serde_json::Value::Object(all), Ok(dpo)) = (&mut settings.hparams, serde_json::to_value(&section)) {
        all.insert(DpoSection::NAME.into(), dpo);
    }
    let mixed_precision = accelerator.config().mixed_precision;
    let trainer = Trainer::new(settings, accelerator)?;
    let mut summary = TrlSummary { trainer: DpoSection::NAME, ..Default::default() };
    if let Some(fit) = trainer.finished() {
        return Ok(TrlSummary { fit, ..summary });
    }
    let (tokenizer, model, hf_config) = run::tokenizer_and_model(&config, method, trainer.accelerator(), device)?;
    let pad_id = pad_id(&tokenizer)?;
    let files = expand_files(&config.data.files)?;
    let mut items = read_items(&files, config.data.eval_fraction, config.data.skip_malformed, |row| {
        pair_from_row(&tokenizer, row, section.max_length)
    })?;
    let compute = run::compute(memopt, mixed_precision);
    let adapted = model.decoder_linears().iter().any(|linear| linear.adapter.is_some());
    let mut reference = match &section.ref_model {
        Some(dir) => {
            let dir = config.resolve_path(dir);
            let (mut reference, _) = hf::load_model::<A::InnerBackend>(&dir, device)?;
            check_reference(&model.config, &reference.config, &dir)?;
            reference.compute = compute;
            summary.reference = format!("the checkpoint {}", dir.display());
            Reference::Model(Box::new(reference))
        }
        None if adapted => {
            summary.reference = "the policy with its adapters disabled".into();
            Reference::PolicyWithoutAdapters
        }
        None => {
            let mut copy = model.valid();
            copy.compute = compute;
            summary.reference = "a frozen copy of the starting weights".into();
            Reference::Model(Box::new(copy))
        }
    };
    let max_length = Some(section.max_length);
    if section.precompute_ref_log_probs {
        let network = match reference {
            Reference::Model(network) => *network,
            _ => {
                let mut base = model.valid();
                for (_, linear) in base.decoder_linears_mut() {
                    linear.adapter = None;
                }
                base.compute = compute;
                base
            }
        };
        let batch = config.data.batch_size;
        for pairs in [&mut items.train, &mut items.eval] {
            precompute_reference_logps(&network, pairs, batch, pad_id, max_length, device);
        }
        summary.reference = format!("log-probs precomputed once by {}", summary.reference);
        reference = Reference::Precomputed;
    }

    let (rank, world) = (trainer.accelerator().rank(), trainer.accelerator().world_size());
    let callbacks = run::callbacks(&config, &logging, &model.config, section.max_length, world)?;
    let mut trainer = trainer.with_callbacks(callbacks);
    let policy = CausalLm::new(method, compute, device.clone()).with_files(hf_config, tokenizer.clone());
    let mut module = Dpo::new(loss, reference, pad_id, max_length, policy);
    (summary.train_items, summary.eval_items) = (items.train.len(), items.eval.len());
    (summary.skipped_rows, summary.dropped_rows) = (items.skipped, items.dropped);
    let mut data = Datasets::new(items.train, items.eval, config.data.batch_size)?;
    if config.data.shuffle {
        data = data.shuffled(config.training.seed);
    }
    let mut data = data.sharded(rank, world).counting_tokens(TokenizedPair::tokens);
    let (fit, _) = trainer.fit(&mut module, model, &mut data, device)?;
    Ok(TrlSummary { fit, ..summary })
}

/// The id sequences are padded with: the tokenizer's pad token, else its EOS (padding is never scored).
fn pad_id(tokenizer: &TextTokenizer) -> Result<u32> {
    tokenizer
        .pad_token
        .as_deref()
        .and_then(|t| tokenizer.token_id(t))
        .or_else(|| tokenizer.eos_token_id())
        .ok_or_else(|| TrlError::Invalid("the tokenizer has neither a pad_token nor an eos_token to pad with".into()))
}

/// A reference must read the policy's tokens the same way and be the same kind of decoder.
fn check_reference(policy: &ModelConfig, reference: &ModelConfig, dir: &std::path::Path) -> Result<()> {
    let config = dir.join("config.json");
    if reference.vocab_size != policy.vocab_size {
        return Err(TrlError::Invalid(format!(
            "{}: vocab_size {} but the policy's is {}: [dpo] ref_model must share the policy's vocabulary",
            config.display(),
            reference.vocab_size,
            policy.vocab_size
        )));
    }
    if reference.architecture != policy.architecture {
        return Err(TrlError::Invalid(format!(
            "{}: a {:?} model but the policy is a {:?}: [dpo] ref_model must have the policy's architecture",
            config.display(),
            reference.architecture,
            policy.architecture
        )));
    }
    Ok(())
}
