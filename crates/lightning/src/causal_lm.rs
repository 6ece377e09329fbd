//! `llmtrain train`: causal-language-model training (pretraining, full finetuning, LoRA/QLoRA through a
//! [`Finetune`] method) as one [`LightningModule`], [`CausalLm`], on one [`DataModule`], [`LoaderData`], run by
//! the [`Trainer`]. [`train`] builds both from a run config and reports what a user reads at the end.

use std::path::Path;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use llmtrain_accel::{Accelerator, Finetune};
use llmtrain_core::config::RunConfig;
use llmtrain_core::data::{Batch, DataLoader, DataOptions, DataPosition, Split};
use llmtrain_core::hf::{self, HfConfig, SaveOptions};
use llmtrain_core::kernels::AutodiffKernels;
use llmtrain_core::model::{Compute, LayerSource, LlamaModel};
use llmtrain_core::setup::{TrainOverrides, data_options};
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_core::train::accuracy::{Accuracy, AccuracyExample, accuracy_examples, completion_accuracy};
use llmtrain_core::train::checkpoint::save_model_state_gathering;
use llmtrain_core::train::{
    batch_loss, batch_tensors, causal_lm_loss_parts, loss_from_hidden, sample_text, token_statistics, unigram_entropy,
};
use llmtrain_memopt::MemoptSection;
use serde_json::{Map, Value, json};

use crate::data::DataModule;
use crate::error::{LightningError, Result};
use crate::module::{LightningModule, LossParts, Recompute, StepContext, StepOutput};
use crate::run;
use crate::trainer::{FitSummary, Trainer};

/// The causal-LM objective: next-token cross-entropy over the scored tokens, on a [`LlamaModel`] that a
/// finetuning method may have adapted.
pub struct CausalLm<'a, A: AutodiffBackend> {
    method: &'a dyn Finetune<A>,
    compute: Compute,
    files: Option<ModelFiles>,
    accuracy: Option<Vec<AccuracyExample>>,
    token_metrics: bool,
    device: A::Device,
    /// Under ZeRO stage 3, on rank 0: where the saved network's released layers are gathered from.
    layers_from: Option<Arc<dyn LayerSource>>,
}

/// TRL's SFT metrics, logged with [`CausalLm::with_token_metrics`]: the share of scored tokens the top logit
/// predicts, and the mean entropy of the predicted distributions.
pub const TOKEN_METRICS: [&str; 2] = ["mean_token_accuracy", "entropy"];

/// What checkpoints and `final/` hold besides the weights: the model's HF config and its tokenizer.
struct ModelFiles {
    hf_config: HfConfig,
    tokenizer: TextTokenizer,
}

impl<'a, A: AutodiffKernels> CausalLm<'a, A> {
    /// The objective, computing as `compute` says (activation type, attention kernel, fused loss).
    pub fn new(method: &'a dyn Finetune<A>, compute: Compute, device: A::Device) -> Self {
        Self { method, compute, files: None, accuracy: None, token_metrics: false, device, layers_from: None }
    }

    /// Checkpoints and `final/` hold the model (or the method's adapter) as an HF directory described by
    /// `hf_config`, with `tokenizer`. Without files the objective trains but cannot save (benchmarks).
    pub fn with_files(mut self, hf_config: HfConfig, tokenizer: TextTokenizer) -> Self {
        self.files = Some(ModelFiles { hf_config, tokenizer });
        self
    }

    /// Greedy exact-match accuracy on these held-out examples before the first step and after the last.
    pub fn with_accuracy(mut self, examples: Vec<AccuracyExample>) -> Self {
        self.accuracy = Some(examples);
        self
    }

    /// Also logs [`TOKEN_METRICS`] for every step (from the full logits: not under the fused cross-entropy,
    /// which never builds them).
    pub fn with_token_metrics(mut self) -> Self {
        self.token_metrics = true;
        self
    }

    /// The tokenizer checkpoints and `final/` hold.
    pub fn tokenizer(&self) -> Option<&TextTokenizer> {
        self.files.as_ref().map(|f| &f.tokenizer)
    }

    fn files(&self) -> Result<&ModelFiles> {
        self.files
            .as_ref()
            .ok_or_else(|| LightningError::Invalid("the causal-LM objective has no files to save".into()))
    }

    fn accuracy_figures(&self, net: &LlamaModel<A::InnerBackend>) -> Map<String, Value> {
        let (Some(examples), Some(tokenizer)) = (&self.accuracy, self.tokenizer()) else { return Map::new() };
        let acc = completion_accuracy(net, examples, tokenizer, &self.device);
        let record = json!({"accuracy": acc.fraction(), "accuracy_correct": acc.correct, "accuracy_total": acc.total});
        record.as_object().cloned().unwrap_or_default()
    }
}

impl<A: AutodiffKernels> LightningModule<A> for CausalLm<'_, A> {
    type Net = LlamaModel<A>;
    type Batch = Batch;

    fn batch_weight(&self, batch: &Batch) -> f64 {
        batch.scored_tokens() as f64
    }

    fn training_step<'n>(
        &self,
        net: &'n LlamaModel<A>,
        batch: &Batch,
        ctx: &StepContext<'_, A>,
    ) -> Result<StepOutput<'n, A>> {
        let (tokens, labels, positions) = batch_tensors::<A>(batch, ctx.device);
        let (hidden, deferred) = match (ctx.layer_source(), ctx.gradient_checkpointing) {
            // ZeRO stage 3: the layers are gathered one at a time, for the forward and again for the recompute.
            (Some(source), checkpointing) => {
                let offload = checkpointing.is_some_and(|c| c.offload);
                let (hidden, layers) = net.hidden_states_sharded(tokens, positions.as_ref(), offload, source)?;
                (hidden, Some(Box::new(layers) as _))
            }
            (None, Some(Recompute { offload })) => {
                let (hidden, layers) = net.hidden_states_recomputed(tokens, positions.as_ref(), offload);
                (hidden, Some(Box::new(layers) as _))
            }
            (None, None) => (net.hidden_states(tokens, positions.as_ref()), None),
        };
        if !self.token_metrics || net.compute.loss_chunk.is_some() {
            let (loss, _) = loss_from_hidden(net, hidden, batch, labels);
            return Ok(StepOutput { loss, metrics: Vec::new(), ratios: Vec::new(), deferred });
        }
        let logits = net.logits(hidden);
        let (correct, entropy) = token_statistics(logits.clone(), labels.clone());
        let (loss, _) = causal_lm_loss_parts(logits, labels);
        // Sums over the scored tokens, per scored token of each micro-batch (all ranks), as TRL logs them.
        let scored = batch.scored_tokens() as f64;
        let ratios = vec![
            (TOKEN_METRICS[0], correct.into_scalar().elem::<f64>(), scored),
            (TOKEN_METRICS[1], entropy.into_scalar().elem::<f64>(), scored),
        ];
        Ok(StepOutput { loss, metrics: Vec::new(), ratios, deferred })
    }

    fn metric_names(&self) -> Vec<&'static str> {
        if self.token_metrics { TOKEN_METRICS.to_vec() } else { Vec::new() }
    }

    fn validation_step(
        &self,
        net: &LlamaModel<A::InnerBackend>,
        batch: &Batch,
        device: &A::Device,
    ) -> Result<LossParts> {
        let (sum, count) = batch_loss(net, batch, device);
        Ok(LossParts { sum: sum.into_scalar().elem::<f64>(), weight: count.into_scalar().elem::<f64>() })
    }

    fn gather_layers_from(&mut self, layers: Option<Arc<dyn LayerSource>>) {
        self.layers_from = layers;
    }

    fn walks_sharded_layers(&self) -> bool {
        // An adapter's frozen base is not the strategy's to shard.
        !self.method.saves_adapter_only()
    }

    fn configure_net(&self, mut net: LlamaModel<A>) -> LlamaModel<A> {
        net.compute = self.compute;
        net
    }

    fn lr_scale(&self, path: &str) -> f64 {
        self.method.lr_scale(path)
    }

    fn save_checkpoint(&self, net: &LlamaModel<A>, dir: &Path) -> Result<()> {
        let files = self.files()?;
        if !self.method.saves_adapter_only() {
            save_model_state_gathering(net, self.layers_from.as_deref(), &files.hf_config, dir)?;
        }
        files.tokenizer.save(dir)?;
        self.method.save(net, dir).map_err(LightningError::Invalid)
    }

    fn load_checkpoint(&self, mut net: LlamaModel<A>, dir: &Path) -> Result<LlamaModel<A>> {
        // An adapter run rebuilt its frozen base from the run config as the first run built it; only the
        // adapter moves. Otherwise the whole model is the checkpoint's.
        if !self.method.saves_adapter_only() {
            net = hf::load_model::<A>(dir, &self.device)?.0;
        }
        self.method.load(&mut net, dir, &self.device).map_err(LightningError::Invalid)?;
        Ok(net)
    }

    fn save_final(&self, net: &LlamaModel<A>, dir: &Path) -> Result<()> {
        let files = self.files()?;
        if !self.method.saves_adapter_only() {
            let layers = self.layers_from.as_deref();
            hf::save_model_gathering(&net.valid(), layers, &files.hf_config, dir, &SaveOptions::default())?;
        }
        self.method.save(net, dir).map_err(LightningError::Invalid)?;
        Ok(files.tokenizer.save(dir)?)
    }

    fn has_fit_figures(&self) -> bool {
        self.accuracy.is_some()
    }

    fn on_fit_start(&self, net: &LlamaModel<A::InnerBackend>) -> Result<Map<String, Value>> {
        Ok(self.accuracy_figures(net))
    }

    fn on_fit_end(&self, net: &LlamaModel<A::InnerBackend>) -> Result<Map<String, Value>> {
        Ok(self.accuracy_figures(net))
    }
}

/// llmtrain's data loader as a [`DataModule`]: this rank's shard of the train split, and fresh passes over the
/// eval split.
pub struct LoaderData<'t> {
    train: DataLoader,
    options: DataOptions,
    tokenizer: &'t TextTokenizer,
}

impl<'t> LoaderData<'t> {
    pub fn new(options: DataOptions, tokenizer: &'t TextTokenizer) -> Result<Self> {
        Ok(Self { train: DataLoader::new(&options, tokenizer, Split::Train)?, options, tokenizer })
    }

    /// Rows of the training data skipped as malformed so far.
    pub fn skipped_rows(&self) -> u64 {
        self.train.skipped_rows()
    }
}

impl<N> DataModule<N> for LoaderData<'_> {
    type Batch = Batch;

    fn train_batch(&mut self, _: &N) -> Result<Batch> {
        self.train.next_batch()?.ok_or_else(|| LightningError::Invalid("the training data yielded no batch".into()))
    }

    fn position(&self) -> Value {
        serde_json::to_value(self.train.position()).unwrap_or(Value::Null)
    }

    fn seek(&mut self, position: &Value) -> Result<()> {
        Ok(self.train.seek(data_position(position)?)?)
    }

    /// The loader counts this rank's batches, each one of a group of one batch per rank: the groups of the saved
    /// size read so far, in groups of this run's size.
    fn rescale_position(&self, position: &Value, saved_rows: u64, rows: u64) -> Result<Value> {
        let mut position = data_position(position)?;
        let read = position.batch_in_epoch.checked_mul(saved_rows).filter(|read| rows > 0 && read.is_multiple_of(rows));
        position.batch_in_epoch = read.map(|read| read / rows).ok_or_else(|| {
            LightningError::Invalid(format!(
                "trainer_state.json: data_position: {} batches of {saved_rows} rows over all ranks are not a whole \
                 number of this run's {rows}-row batches",
                position.batch_in_epoch
            ))
        })?;
        Ok(serde_json::to_value(position).unwrap_or(Value::Null))
    }

    fn epoch(&self) -> u64 {
        self.train.position().epoch
    }

    fn epochs_completed(&mut self) -> Result<Option<u64>> {
        let complete = self.train.epoch_complete()?;
        Ok(Some(self.train.position().epoch + u64::from(complete)))
    }

    fn limit_train_batches(&mut self, batches: u64) -> Result<()> {
        self.train.limit_batches_per_epoch(batches);
        Ok(())
    }

    fn batch_tokens(&self, batch: &Batch) -> usize {
        batch.real_tokens(self.train.pad_id())
    }

    fn has_validation(&self) -> bool {
        self.options.eval_fraction > 0.0
    }

    fn validation_pass(&self, max_batches: usize, visit: &mut dyn FnMut(&Batch) -> Result<()>) -> Result<()> {
        DataLoader::visit_one_pass(&self.options, self.tokenizer, Split::Eval, max_batches, visit)
    }
}

/// What a finished `llmtrain train` reports.
#[derive(Debug, Clone, Default)]
pub struct TrainSummary {
    pub fit: FitSummary,
    /// Unigram entropy (nats/token) of the training data under the run's tokenizer: the loss of the best model
    /// that ignores context (rank 0).
    pub unigram_entropy: f64,
    pub skipped_rows: u64,
    /// Held-out exact-match accuracy before training (fresh runs only) and at the end, with `accuracy_file`.
    pub accuracy_before: Option<Accuracy>,
    pub accuracy_after: Option<Accuracy>,
    pub sample: Option<String>,
}

/// Runs `llmtrain train`'s job on backend `A` as one rank of `accelerator`'s world: `memopt` is the run's
/// `[memopt]` section and `method` the finetuning method (full, or llmtrain-fastlora's LoRA).
pub fn train<A: AutodiffKernels>(
    config: &RunConfig,
    memopt: &MemoptSection,
    overrides: &TrainOverrides,
    accelerator: &mut Accelerator<A>,
    method: &dyn Finetune<A>,
    device: &A::Device,
) -> Result<TrainSummary> {
    train_with(config, memopt, overrides, accelerator, method, device, false)
}

/// [`train`], also logging TRL's SFT token metrics ([`TOKEN_METRICS`]) with `token_metrics` (llmtrain-trl's
/// `[sft]`).
pub fn train_with<A: AutodiffKernels>(
    config: &RunConfig,
    memopt: &MemoptSection,
    overrides: &TrainOverrides,
    accelerator: &mut Accelerator<A>,
    method: &dyn Finetune<A>,
    device: &A::Device,
    token_metrics: bool,
) -> Result<TrainSummary> {
    let config = overrides.apply(config);
    let tr = &config.training;
    let (settings, logging) = run::trainer_settings(&config, memopt, overrides)?;
    let mixed_precision = accelerator.config().mixed_precision;
    let main = accelerator.is_main_process();
    let trainer = Trainer::new(settings, accelerator)?;
    if let Some(fit) = trainer.finished() {
        return Ok(TrainSummary { fit, ..Default::default() });
    }
    let (tokenizer, model, hf_config) = run::tokenizer_and_model(&config, method, trainer.accelerator(), device)?;
    let devices = trainer.accelerator().world_size();
    let callbacks = run::callbacks(&config, &logging, &model.config, config.data.seq_len, devices)?;
    let mut trainer = trainer.with_callbacks(callbacks);
    let compute = run::compute(memopt, mixed_precision);
    let single_options = data_options(&config)?;
    let options = trainer.accelerator().prepare_data(&single_options);
    let examples = match (&tr.accuracy_file, main) {
        (Some(file), true) => Some(accuracy_examples(file, &tokenizer, options.seq_len, tr.accuracy_samples)?),
        _ => None,
    };
    let mut module = CausalLm::new(method, compute, device.clone()).with_files(hf_config, tokenizer.clone());
    if token_metrics {
        module = module.with_token_metrics();
    }
    if let Some(examples) = examples {
        module = module.with_accuracy(examples);
    }
    let mut data = LoaderData::new(options, &tokenizer)?;
    let (fit, net) = trainer.fit(&mut module, model, &mut data, device)?;

    let accuracy = |figures: &Map<String, Value>| {
        Some(Accuracy {
            correct: figures.get("accuracy_correct")?.as_u64()? as usize,
            total: figures.get("accuracy_total")?.as_u64()? as usize,
        })
    };
    let mut summary = TrainSummary {
        accuracy_before: accuracy(&fit.start_metrics),
        accuracy_after: accuracy(&fit.end_metrics),
        skipped_rows: data.skipped_rows(),
        unigram_entropy: f64::NAN,
        fit,
        sample: None,
    };
    if main && summary.fit.interrupted_by.is_none() {
        if let Some(prompt) = &tr.sample_prompt {
            summary.sample = Some(sample_text(&net.valid(), &tokenizer, prompt, tr.sample_max_new_tokens, device)?);
        }
        summary.unigram_entropy = unigram_entropy(&single_options, &tokenizer)?;
    }
    Ok(summary)
}

/// A saved loader position.
fn data_position(position: &Value) -> Result<DataPosition> {
    serde_json::from_value(position.clone())
        .map_err(|e| LightningError::Invalid(format!("trainer_state.json: data_position: {e}")))
}
