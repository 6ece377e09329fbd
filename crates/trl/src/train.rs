//! `llmtrain train` for a config with a trainer section of this crate: the objective is chosen by the section,
//! and the rest of the run (the Trainer's settings, callbacks, compute, tokenizer and model, LoRA/QLoRA through
//! the finetuning method, data parallelism) is built by llmtrain-lightning's [`run`] as for causal-LM training.

use std::path::Path;
use std::sync::Arc;

use burn::module::AutodiffModule;
use llmtrain_accel::{Accelerator, Finetune};
use llmtrain_core::config::{ConfigSection, RunConfig};
use llmtrain_core::data::Row;
use llmtrain_core::hf::{self, Head, HfConfig};
use llmtrain_core::kernels::AutodiffKernels;
use llmtrain_core::model::{Compute, LlamaModel, ModelConfig, SequenceClassifier};
use llmtrain_core::setup::{TrainOverrides, expand_files};
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_lightning::{CausalLm, Datasets, FitSummary, LightningModule, LoggingSection, Trainer, run};
use llmtrain_memopt::MemoptSection;

use crate::dpo::{Dpo, DpoSection, PairBatch, TokenizedPair, pair_from_row};
use crate::error::{Result, TrlError};
use crate::kto::{Kto, KtoItem, KtoLoss, KtoLossType, KtoSection, assign_kl_completions, kto_item_from_row};
use crate::online::rollout::{Prompt, Slot, prompt_from_row};
use crate::online::{GrpoSection, Online, OnlineSection, RlooSection};
use crate::orpo::{Orpo, OrpoLoss, OrpoPair, OrpoSection, orpo_pair_from_row};
use crate::policy::{Objective, PolicyModule};
use crate::ppo::{Ppo, PpoRollout, PpoSection};
use crate::reference::{self, Reference, without_adapters};
use crate::reward::{RewardLoss, RewardModule, RewardPair, RewardSection, reward_pair_from_row};
use crate::rows::{Converted, SplitItems, read_items};
use crate::sft::SftSection;

/// The run-config sections that select one of this crate's trainers.
pub const TRAINER_SECTIONS: &[&str] = &[
    SftSection::NAME,
    DpoSection::NAME,
    OrpoSection::NAME,
    KtoSection::NAME,
    RewardSection::NAME,
    GrpoSection::NAME,
    RlooSection::NAME,
    PpoSection::NAME,
];

/// The trainer section `config` selects, if any; two of them are refused.
pub fn trainer_section(config: &RunConfig) -> Result<Option<&'static str>> {
    let present: Vec<&'static str> = TRAINER_SECTIONS.iter().copied().filter(|name| config.has_section(name)).collect();
    match present.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(TrlError::Invalid(format!(
            "{}: {} trainer sections ([{}]): a run trains one objective, keep one",
            config.path().display(),
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
    /// What an item is, in words (empty: a preference pair).
    pub items: &'static str,
}

/// Runs the trainer `config`'s section selects on backend `A` as one rank of `accelerator`'s world; `method` is
/// the finetuning method (full, or llmtrain-fastlora's LoRA), as for [`llmtrain_lightning::train`].
pub fn train<A: AutodiffKernels>(
    config: &RunConfig,
    memopt: &MemoptSection,
    overrides: &TrainOverrides,
    accelerator: &mut Accelerator<A>,
    method: &dyn Finetune<A>,
    device: &A::Device,
) -> Result<TrlSummary> {
    let run = Run { config: overrides.apply(config), memopt, overrides, method, device };
    match trainer_section(config)? {
        Some(DpoSection::NAME) => run.fit(accelerator, dpo),
        Some(OrpoSection::NAME) => run.fit(accelerator, orpo),
        Some(KtoSection::NAME) => run.fit(accelerator, kto),
        Some(RewardSection::NAME) => run.fit_reward(accelerator),
        Some(GrpoSection::NAME) => run.fit(accelerator, |s: GrpoSection, setup| online(s.0, GrpoSection::NAME, setup)),
        Some(RlooSection::NAME) => run.fit(accelerator, |s: RlooSection, setup| online(s.0, RlooSection::NAME, setup)),
        Some(PpoSection::NAME) => run.fit_ppo(accelerator),
        // `[sft]` is the causal-LM job: crate::sft::train runs it.
        other => Err(TrlError::Invalid(format!("no preference trainer section to run (found {other:?})"))),
    }
}

/// A run's inputs, the config already overridden by the command line.
struct Run<'r, A: AutodiffKernels> {
    config: RunConfig,
    memopt: &'r MemoptSection,
    overrides: &'r TrainOverrides,
    method: &'r dyn Finetune<A>,
    device: &'r A::Device,
}

/// What a trainer's builder gets once the run's tokenizer and starting model exist.
struct Setup<'s, A: AutodiffKernels> {
    config: &'s RunConfig,
    tokenizer: &'s TextTokenizer,
    model: &'s LlamaModel<A>,
    compute: Compute,
    pad_id: u32,
    /// Ranks and gradient accumulation steps: a step draws `batch_size` items per micro-batch from each.
    world: usize,
    accumulation: usize,
    device: &'s A::Device,
}

impl<'s, A: AutodiffKernels> Setup<'s, A> {
    fn new(
        config: &'s RunConfig,
        accelerator: &Accelerator<A>,
        tokenizer: &'s TextTokenizer,
        model: &'s LlamaModel<A>,
        compute: Compute,
        device: &'s A::Device,
    ) -> Result<Self> {
        Ok(Self {
            config,
            tokenizer,
            model,
            compute,
            pad_id: pad_id(tokenizer)?,
            world: accelerator.world_size(),
            accumulation: accelerator.config().gradient_accumulation_steps,
            device,
        })
    }

    /// `[data] files` converted by `convert` and split.
    fn items<T>(&self, convert: impl FnMut(&Row) -> Converted<T>) -> Result<SplitItems<T>> {
        let data = &self.config.data;
        read_items(&expand_files(&data.files)?, data.eval_fraction, data.skip_malformed, convert)
    }

    /// The reference: the checkpoint `ref_model` names, else the policy without its adapters when the method
    /// attached some, else a frozen copy of the starting weights; with where it came from, in words.
    fn reference(&self, ref_model: Option<&Path>) -> Result<(Reference<A::InnerBackend>, String)> {
        let model = self.model;
        if let Some(dir) = ref_model {
            let dir = self.config.resolve_path(dir);
            let (mut reference, _) = hf::load_model::<A::InnerBackend>(&dir, self.device)?;
            check_reference(&model.config, &reference.config, &dir)?;
            reference.compute = self.compute;
            return Ok((Reference::Model(Box::new(reference)), format!("the checkpoint {}", dir.display())));
        }
        if model.decoder_linears().iter().any(|linear| linear.adapter.is_some()) {
            return Ok((Reference::PolicyWithoutAdapters, "the policy with its adapters disabled".into()));
        }
        let mut copy = model.valid();
        copy.compute = self.compute;
        Ok((Reference::Model(Box::new(copy)), "a frozen copy of the starting weights".into()))
    }

    /// Scores every item (training and held out) with `reference` once and keeps the log-probs in the items
    /// (`precompute_ref_log_probs`); the reference network is dropped after.
    fn precompute<T>(
        &self,
        reference: Reference<A::InnerBackend>,
        described: String,
        items: &mut SplitItems<T>,
        collate: impl Fn(&[T]) -> PairBatch,
        store: impl Fn(&mut T, [f32; 2]),
    ) -> (Reference<A::InnerBackend>, String) {
        let mut network = match reference {
            Reference::Model(network) => *network,
            _ => without_adapters(self.model.valid()),
        };
        network.compute = self.compute;
        let batch = self.config.data.batch_size;
        for part in [&mut items.train, &mut items.eval] {
            reference::precompute(&network, part, batch, &collate, &store, self.device);
        }
        (Reference::Precomputed, format!("log-probs precomputed once by {described}"))
    }
}

/// What a trainer section builds: its objective, its items, the tokens an item holds (for throughput), the
/// longest sequence it may feed the model (for FLOPs), and where its reference comes from, in words.
struct Built<O, T> {
    objective: O,
    items: SplitItems<T>,
    item_tokens: fn(&T) -> usize,
    max_length: usize,
    reference: String,
    /// Whether to reshuffle the items every epoch (`[data] shuffle`; KTO keeps its order).
    shuffle: bool,
    /// Whether the held-out items also make a validation loss (the online trainers only score them at the
    /// start and end of fit).
    validation: bool,
}

/// A Trainer ready for a section's objective, with what building it needs.
struct Started<'t, A: AutodiffKernels, S> {
    trainer: Trainer<'t, A>,
    section: S,
    logging: LoggingSection,
    compute: Compute,
}

/// What fitting a module on a list of items needs besides them.
struct Fitting<T> {
    items: SplitItems<T>,
    item_tokens: fn(&T) -> usize,
    shuffle: bool,
    /// The longest sequence fed to the model, for the throughput monitor's FLOPs.
    max_length: usize,
    summary: TrlSummary,
    validation: bool,
}

impl<A: AutodiffKernels> Run<'_, A> {
    /// The Trainer for the section `S`'s run (its section recorded with the hparams), or the summary of a run that
    /// had already finished.
    fn start<'t, S>(
        &self,
        accelerator: &'t mut Accelerator<A>,
    ) -> Result<std::result::Result<Started<'t, A, S>, TrlSummary>>
    where
        S: ConfigSection + Default + serde::Serialize,
    {
        let config = &self.config;
        let section = config.section::<S>()?.unwrap_or_default();
        let (mut settings, logging) = run::trainer_settings(config, self.memopt, self.overrides)?;
        if let (serde_json::Value::Object(all), Ok(value)) = (&mut settings.hparams, serde_json::to_value(&section)) {
            all.insert(S::NAME.into(), value);
        }
        let compute = run::compute(self.memopt, accelerator.config().mixed_precision);
        let trainer = Trainer::new(settings, accelerator)?;
        if let Some(fit) = trainer.finished() {
            return Ok(Err(TrlSummary { trainer: S::NAME, fit, ..Default::default() }));
        }
        Ok(Ok(Started { trainer, section, logging, compute }))
    }

    /// Fits `module` on `net` over the items (shuffled if asked, sharded over the ranks), with the callbacks the
    /// config asks for.
    fn fit_items<M, T>(
        &self,
        started: (Trainer<'_, A>, &LoggingSection),
        module: &mut M,
        net: M::Net,
        model: &ModelConfig,
        fitting: Fitting<T>,
    ) -> Result<TrlSummary>
    where
        M: LightningModule<A, Batch = Vec<T>>,
        T: Clone,
    {
        let (trainer, logging) = started;
        let Fitting { items, item_tokens, shuffle, max_length, summary, validation } = fitting;
        let config = &self.config;
        let (rank, world) = (trainer.accelerator().rank(), trainer.accelerator().world_size());
        let callbacks = run::callbacks(config, logging, model, max_length, world)?;
        let mut trainer = trainer.with_callbacks(callbacks);
        let summary = TrlSummary {
            train_items: items.train.len(),
            eval_items: items.eval.len(),
            skipped_rows: items.skipped,
            dropped_rows: items.dropped,
            ..summary
        };
        let val = if validation { items.eval } else { Vec::new() };
        let mut data = Datasets::new(items.train, val, config.data.batch_size)?;
        if shuffle {
            data = data.shuffled(config.training.seed);
        }
        let mut data = data.sharded(rank, world).counting_tokens(item_tokens);
        let (fit, _) = trainer.fit(module, net, &mut data, self.device)?;
        Ok(TrlSummary { fit, ..summary })
    }

    /// A policy objective: the tokenizer and model as the method prepares them, then the objective `S`'s section
    /// describes, built by `build`.
    fn fit<S, O>(
        self,
        accelerator: &mut Accelerator<A>,
        build: impl FnOnce(S, &Setup<'_, A>) -> Result<Built<O, O::Item>>,
    ) -> Result<TrlSummary>
    where
        S: ConfigSection + Default + serde::Serialize,
        O: Objective<A>,
    {
        let Started { trainer, section, logging, compute } = match self.start::<S>(accelerator)? {
            Ok(started) => started,
            Err(finished) => return Ok(finished),
        };
        let config = &self.config;
        let (tokenizer, model, hf_config) =
            run::tokenizer_and_model(config, self.method, trainer.accelerator(), self.device)?;
        let setup = Setup::new(config, trainer.accelerator(), &tokenizer, &model, compute, self.device)?;
        let Built { objective, items, item_tokens, max_length, reference, shuffle, validation } =
            build(section, &setup)?;
        let files = CausalLm::new(self.method, compute, self.device.clone()).with_files(hf_config, tokenizer.clone());
        // Rank 0 reports the held-out figures.
        let held_out = if trainer.accelerator().is_main_process() { items.eval.clone() } else { Vec::new() };
        let mut module = PolicyModule::new(objective, files).with_held_out(held_out);
        let noun = match S::NAME {
            KtoSection::NAME => "rows",
            GrpoSection::NAME | RlooSection::NAME => "completion slots (prompts × num_generations × num_iterations)",
            _ => "pairs",
        };
        let summary = TrlSummary { trainer: S::NAME, reference, items: noun, ..Default::default() };
        let model_config = model.config.clone();
        let fitting = Fitting { items, item_tokens, shuffle, max_length, summary, validation };
        self.fit_items((trainer, &logging), &mut module, model, &model_config, fitting)
    }

    /// `[reward]`: a sequence classifier, from a `*ForSequenceClassification` checkpoint or from a causal LM (or
    /// the config's shape) with a new seeded head, trained on preference pairs.
    fn fit_reward(self, accelerator: &mut Accelerator<A>) -> Result<TrlSummary> {
        if self.method.saves_adapter_only() {
            return Err(TrlError::Invalid(format!(
                "{}: [reward] with [lora] is not supported yet: reward models train in full",
                self.config.path().display()
            )));
        }
        let Started { trainer, section, logging, compute } = match self.start::<RewardSection>(accelerator)? {
            Ok(started) => started,
            Err(finished) => return Ok(finished),
        };
        let config = &self.config;
        let classifier = config.model.path.as_deref().map(HfConfig::load).transpose()?;
        let (tokenizer, mut net, hf_config, origin) = match classifier {
            Some(hf) if hf.head != Head::CausalLm => {
                let dir = config.model.path.as_deref().unwrap_or(Path::new("."));
                let tokenizer = llmtrain_core::setup::resolve_tokenizer(config)?;
                let (model, score, hf_config) = hf::load_sequence_classifier::<A>(dir, self.device)?;
                let net = SequenceClassifier { model, score: burn::module::Param::from_tensor(score) };
                (tokenizer, net, hf_config, format!("the reward model {}", dir.display()))
            }
            _ => {
                let (tokenizer, model, hf_config) =
                    run::tokenizer_and_model(config, self.method, trainer.accelerator(), self.device)?;
                let std = hf_config.raw.get("initializer_range").and_then(serde_json::Value::as_f64).unwrap_or(0.02);
                // Seeded after the model, so every rank draws the same head.
                A::seed(self.device, config.training.seed.wrapping_add(1));
                let net = SequenceClassifier::new_head(model, std, self.device);
                (tokenizer, net, hf_config, format!("a new score head (N(0, {std}²)) on the causal LM"))
            }
        };
        net.model.compute = compute;
        let pad_id = pad_id(&tokenizer)?;
        // The score is read before the first pad id: the written config names the id, as RewardTrainer sets it.
        net.model.config.pad_token_id = Some(pad_id);
        let max_length = section.max_length;
        let setup_items = |row: &Row| reward_pair_from_row(&tokenizer, row, max_length);
        let data = &config.data;
        let items = read_items(&expand_files(&data.files)?, data.eval_fraction, data.skip_malformed, setup_items)?;
        let loss = RewardLoss { center_rewards_coefficient: section.center_rewards_coefficient };
        let held_out = if trainer.accelerator().is_main_process() { items.eval.clone() } else { Vec::new() };
        let mut module = RewardModule::new(loss, pad_id, compute, hf_config, tokenizer.clone()).with_held_out(held_out);
        let summary = TrlSummary { trainer: RewardSection::NAME, reference: origin, ..Default::default() };
        let model_config = net.model.config.clone();
        let fitting = Fitting {
            items,
            item_tokens: RewardPair::tokens,
            shuffle: data.shuffle,
            max_length,
            summary,
            validation: true,
        };
        self.fit_items((trainer, &logging), &mut module, net, &model_config, fitting)
    }
}

impl<A: AutodiffKernels> Run<'_, A> {
    /// `[ppo]`: the policy as the method prepares it with a new value head, one slot per prompt, every step's
    /// slots repeated `num_ppo_epochs` times; the reference as for DPO, and the reward model.
    fn fit_ppo(self, accelerator: &mut Accelerator<A>) -> Result<TrlSummary> {
        let Started { trainer, section, logging, compute } = match self.start::<PpoSection>(accelerator)? {
            Ok(started) => started,
            Err(finished) => return Ok(finished),
        };
        let config = &self.config;
        let (tokenizer, model, hf_config) =
            run::tokenizer_and_model(config, self.method, trainer.accelerator(), self.device)?;
        let setup = Setup::new(config, trainer.accelerator(), &tokenizer, &model, compute, self.device)?;
        let per_step = config.data.batch_size * setup.accumulation * setup.world;
        let items = setup.items(|row| prompt_from_row(setup.tokenizer, row))?;
        let (train, eval) = slots(items.train, items.eval, per_step, 1, section.num_ppo_epochs, config)?;
        let (reference, described) = setup.reference(section.ref_model.as_deref())?;
        let reward_dir = section.reward_model_path.as_deref().map(|dir| config.resolve_path(dir));
        let reward_dir = reward_dir.ok_or_else(|| {
            TrlError::Invalid(format!("{}: [ppo] reward_model_path is required", config.path().display()))
        })?;
        let reward_model = load_reward_model(&setup, &reward_dir)?;
        let std = hf_config.raw.get("initializer_range").and_then(serde_json::Value::as_f64).unwrap_or(0.02);
        // Seeded after the model, so every rank draws the same head.
        A::seed(self.device, config.training.seed.wrapping_add(1));
        let score = burn::tensor::Tensor::random(
            [1, model.config.hidden_size],
            burn::tensor::Distribution::Normal(0.0, std),
            self.device,
        );
        let files = CausalLm::new(self.method, compute, self.device.clone()).with_files(hf_config, tokenizer.clone());
        let held_out = if trainer.accelerator().is_main_process() { eval.clone() } else { Vec::new() };
        let pad = setup.pad_id;
        let mut module = Ppo::new(section.clone(), files, tokenizer.clone(), pad, reference, reward_model)
            .with_stop_tokens(model.config.eos_token_ids.iter().copied())
            .with_held_out(held_out);
        let model_config = model.config.clone();
        let net = SequenceClassifier { model, score: burn::module::Param::from_tensor(score) };
        let noun = "prompt slots (prompts × num_ppo_epochs)";
        let summary = TrlSummary { trainer: PpoSection::NAME, reference: described, items: noun, ..Default::default() };
        let split = SplitItems { train, eval, skipped: items.skipped, dropped: items.dropped };
        let max_length = 2 * section.response_length;
        let fitting = Fitting {
            items: split,
            item_tokens: Slot::<PpoRollout>::tokens,
            shuffle: false,
            max_length,
            summary,
            validation: false,
        };
        self.fit_items((trainer, &logging), &mut module, net, &model_config, fitting)
    }
}

/// The slots of the online trainers: the prompts (shuffled once if `[data] shuffle`), cut to whole steps of
/// `per_step` completions, each prompt `group` times in consecutive slots (a group; TRL's `RepeatSampler`), and
/// every step's slots `repeat` times in a row (the steps that reuse one batch of rollouts); and one slot per
/// held-out prompt.
type SlotLists<R> = (Vec<Slot<R>>, Vec<Slot<R>>);

fn slots<R>(
    train: Vec<Prompt>,
    eval: Vec<Prompt>,
    per_step: usize,
    group: usize,
    repeat: usize,
    config: &RunConfig,
) -> Result<SlotLists<R>> {
    let prompts_per_step = per_step / group;
    let mut prompts: Vec<Arc<Prompt>> = train.into_iter().map(Arc::new).collect();
    if config.data.shuffle {
        use rand::seq::SliceRandom;
        prompts.shuffle(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(config.training.seed));
    }
    let whole = prompts.len() / prompts_per_step * prompts_per_step;
    if whole == 0 {
        return Err(TrlError::Invalid(format!(
            "{}: {} training prompt(s), but a step samples {prompts_per_step} prompt(s) × {group} completion(s): give more prompts or a smaller batch",
            config.path().display(),
            prompts.len()
        )));
    }
    // Whole steps only, so that epochs begin on a step and every group stays within one step.
    prompts.truncate(whole);
    let mut slots = Vec::with_capacity(whole * group * repeat);
    for (step, chunk) in prompts.chunks(prompts_per_step).enumerate() {
        for _ in 0..repeat {
            for (k, prompt) in chunk.iter().enumerate() {
                let id = (step * prompts_per_step + k) as u64;
                slots.extend((0..group).map(|_| Slot { prompt: prompt.clone(), group: id, rollout: None }));
            }
        }
    }
    let eval = eval
        .into_iter()
        .enumerate()
        .map(|(i, p)| Slot { prompt: Arc::new(p), group: i as u64, rollout: None })
        .collect();
    Ok((slots, eval))
}

/// `[dpo]`: the pairs, and the reference as the section and the method say.
fn dpo<A: AutodiffKernels>(
    section: DpoSection,
    setup: &Setup<'_, A>,
) -> Result<Built<Dpo<A::InnerBackend>, TokenizedPair>> {
    let loss = section.loss().map_err(|e| TrlError::Invalid(format!("[dpo] {}: {}", e.key, e.message)))?;
    let mut items = setup.items(|row| pair_from_row(setup.tokenizer, row, section.max_length))?;
    let max_length = Some(section.max_length);
    let (mut reference, mut described) = setup.reference(section.ref_model.as_deref())?;
    if section.precompute_ref_log_probs {
        let collate = |pairs: &[TokenizedPair]| PairBatch::collate(pairs, setup.pad_id, max_length);
        let store = |pair: &mut TokenizedPair, logps| pair.reference_logps = Some(logps);
        (reference, described) = setup.precompute(reference, described, &mut items, collate, store);
    }
    Ok(Built {
        objective: Dpo::new(loss, reference, setup.pad_id, max_length),
        items,
        item_tokens: TokenizedPair::tokens,
        max_length: section.max_length,
        reference: described,
        shuffle: setup.config.data.shuffle,
        validation: true,
    })
}

/// `[orpo]`: the pairs; no reference.
fn orpo<A: AutodiffKernels>(section: OrpoSection, setup: &Setup<'_, A>) -> Result<Built<Orpo, OrpoPair>> {
    let items = setup.items(|row| orpo_pair_from_row(setup.tokenizer, row, section.max_length))?;
    Ok(Built {
        objective: Orpo::new(OrpoLoss { beta: section.beta }, setup.pad_id),
        items,
        item_tokens: OrpoPair::tokens,
        max_length: section.max_length,
        reference: "none (ORPO)".into(),
        shuffle: setup.config.data.shuffle,
        validation: true,
    })
}

/// `[kto]`: the unpaired rows with their KL pairs (built per chunk of a micro-batch's size, in file order, as
/// TRL builds them), and the reference as for DPO. The items are served in order.
fn kto<A: AutodiffKernels>(section: KtoSection, setup: &Setup<'_, A>) -> Result<Built<Kto<A::InnerBackend>, KtoItem>> {
    let mut items = setup.items(|row| kto_item_from_row(setup.tokenizer, row, section.max_length))?;
    let batch = setup.config.data.batch_size;
    if section.loss_type == KtoLossType::Kto && batch < 2 {
        return Err(TrlError::Invalid(format!(
            "{}: key `data.batch_size`: KTO's KL estimate pairs rows within a micro-batch, so it needs at least 2 (got {batch})",
            setup.config.path().display()
        )));
    }
    assign_kl_completions(&mut items.train, batch);
    assign_kl_completions(&mut items.eval, batch);
    let max_length = Some(section.max_length);
    let (mut reference, mut described) = setup.reference(section.ref_model.as_deref())?;
    if section.precompute_ref_log_probs {
        let collate = |rows: &[KtoItem]| Kto::<A::InnerBackend>::collate(rows, setup.pad_id, max_length);
        let store = |item: &mut KtoItem, logps| item.reference_logps = Some(logps);
        (reference, described) = setup.precompute(reference, described, &mut items, collate, store);
    }
    let loss = KtoLoss {
        beta: section.beta,
        loss_type: section.loss_type,
        desirable_weight: section.desirable_weight,
        undesirable_weight: section.undesirable_weight,
    };
    Ok(Built {
        objective: Kto::new(loss, reference, setup.pad_id, max_length),
        items,
        item_tokens: KtoItem::tokens,
        max_length: section.max_length,
        reference: described,
        shuffle: false,
        validation: true,
    })
}

/// `[grpo]` / `[rloo]` (`name`): the prompts, each drawn `num_generations` times per step in consecutive slots (a
/// group; TRL's `RepeatSampler`), every step's slots repeated `num_iterations` times; the reference when `beta`
/// is not 0; the reward model when one is named.
fn online<A: AutodiffKernels>(
    section: OnlineSection,
    name: &'static str,
    setup: &Setup<'_, A>,
) -> Result<Built<Online<A::InnerBackend>, Slot>> {
    let config = setup.config;
    let path = config.path().display();
    let settings =
        section.settings(name).map_err(|e| TrlError::Invalid(format!("{path}: [{name}] {}: {}", e.key, e.message)))?;
    let group = settings.num_generations;
    let batch = config.data.batch_size;
    let completions = batch * setup.accumulation * setup.world;
    if !completions.is_multiple_of(group) {
        return Err(TrlError::Invalid(format!(
            "{path}: [{name}] num_generations = {group} does not divide the {completions} completions of a step \
             (data.batch_size {batch} × gradient_accumulation_steps {} × {} rank(s)): every prompt's group must fit in one step",
            setup.accumulation, setup.world
        )));
    }
    let items = setup.items(|row| prompt_from_row(setup.tokenizer, row))?;
    let (train, eval) = slots(items.train, items.eval, completions, group, settings.num_iterations, config)?;
    let (reference, described) = if settings.beta != 0.0 {
        let (reference, described) = setup.reference(settings.ref_model.as_deref())?;
        (Some(reference), described)
    } else {
        (None, "none (beta = 0)".to_string())
    };
    let reward_model = match &settings.rewards.reward_model {
        Some(dir) => Some(load_reward_model(setup, &config.resolve_path(dir))?),
        None => None,
    };
    let max_length = 2 * settings.max_completion_length;
    let objective = Online::new(settings, Some(setup.tokenizer.clone()), setup.pad_id, reference, reward_model)
        .with_stop_tokens(setup.model.config.eos_token_ids.iter().copied());
    Ok(Built {
        objective,
        items: SplitItems { train, eval, skipped: items.skipped, dropped: items.dropped },
        item_tokens: Slot::tokens,
        max_length,
        reference: described,
        shuffle: false,
        validation: false,
    })
}

/// A reward model for the online trainers: a one-label sequence classifier that reads the policy's tokens.
fn load_reward_model<A: AutodiffKernels>(
    setup: &Setup<'_, A>,
    dir: &Path,
) -> Result<SequenceClassifier<A::InnerBackend>> {
    let (mut model, score, _) = hf::load_sequence_classifier::<A::InnerBackend>(dir, setup.device)?;
    let config = dir.join("config.json");
    if model.config.vocab_size != setup.model.config.vocab_size {
        return Err(TrlError::Invalid(format!(
            "{}: vocab_size {} but the policy's is {}: the reward model must read the policy's tokens",
            config.display(),
            model.config.vocab_size,
            setup.model.config.vocab_size
        )));
    }
    if dir.join("tokenizer.json").is_file() {
        let theirs = TextTokenizer::load(dir)?;
        let probe = "The quick brown fox: 1 + 2 = 3.\n";
        if theirs.vocab_size() != setup.tokenizer.vocab_size()
            || theirs.encode(probe)? != setup.tokenizer.encode(probe)?
        {
            return Err(TrlError::Invalid(format!(
                "{}: another tokenizer than the policy's (it splits text differently): the reward model must read the policy's tokens",
                dir.join("tokenizer.json").display()
            )));
        }
    }
    model.compute = setup.compute;
    Ok(SequenceClassifier { model, score: burn::module::Param::from_tensor(score) })
}

/// The id sequences are padded with: the tokenizer's pad token, else its EOS (padding is never scored).
pub fn pad_id(tokenizer: &TextTokenizer) -> Result<u32> {
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
