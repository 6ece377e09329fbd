//! Plugging a new objective into the engine needs no change to it: a module written here, in a few dozen lines,
//! trains only a decoder's final norm against a squared-logit penalty, on a network type of its own and a data
//! source of its own, through `Trainer::fit` with data parallelism (2 in-process ranks), gradient accumulation,
//! checkpoints and resume. The run split by a resume ends bit-identical to the uninterrupted one, two ranks with
//! accumulation 2 match one rank with accumulation 4, and nothing but the norm moves.

use std::path::Path;

use burn::module::{AutodiffModule, Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use llmtrain_accel::{Accelerator, AcceleratorConfig, run_in_process};
use llmtrain_core::kernels::AutodiffKernels;
use llmtrain_core::model::{LlamaModel, ModelConfig};
use llmtrain_core::train::checkpoint::ResumeFrom;
use llmtrain_core::train::{AdamWConfig, Schedule};
use llmtrain_lightning::{
    DataModule, LightningError, LightningModule, LoggerKind, LossParts, ModelCheckpointSection, Result, StepContext,
    StepOutput, Trainer, TrainerSettings,
};
use serde_json::{Value, json};

use crate::common;
use common::{A, weights};

const VOCAB: usize = 32;
const SEQ: usize = 6;

// ---- The new objective: about forty lines. ----

/// A network of the objective's own: a decoder whose final norm alone trains.
#[derive(Module, Debug)]
struct NormOnly<B: Backend> {
    decoder: LlamaModel<B>,
}

/// Penalises the squared logits: the norm learns to shrink the head's inputs.
struct SquaredLogitPenalty;

impl<A: AutodiffKernels> LightningModule<A> for SquaredLogitPenalty {
    type Net = NormOnly<A>;
    type Batch = Vec<u32>;

    fn batch_weight(&self, batch: &Vec<u32>) -> f64 {
        (batch.len() * VOCAB) as f64
    }

    fn training_step<'n>(
        &self,
        net: &'n NormOnly<A>,
        batch: &Vec<u32>,
        ctx: &StepContext<'_, A>,
    ) -> Result<StepOutput<'n, A>> {
        let logits = net.decoder.forward(tokens::<A>(batch, ctx.device), None);
        Ok(StepOutput::loss(logits.powi_scalar(2).sum()))
    }

    fn validation_step(
        &self,
        net: &NormOnly<A::InnerBackend>,
        batch: &Vec<u32>,
        device: &A::Device,
    ) -> Result<LossParts> {
        let sum = net.decoder.forward(tokens(batch, device), None).powi_scalar(2).sum().into_scalar().elem::<f64>();
        Ok(LossParts { sum, weight: (batch.len() * VOCAB) as f64 })
    }

    fn save_checkpoint(&self, net: &NormOnly<A>, dir: &Path) -> Result<()> {
        let values =
            net.decoder.norm.weight.val().into_data().into_vec::<f32>().map_err(|e| invalid(format!("{e:?}")))?;
        std::fs::write(dir.join("norm.json"), json!(values).to_string()).map_err(|e| invalid(e.to_string()))
    }

    fn load_checkpoint(&self, mut net: NormOnly<A>, dir: &Path) -> Result<NormOnly<A>> {
        let text = std::fs::read_to_string(dir.join("norm.json")).map_err(|e| invalid(e.to_string()))?;
        let values: Vec<f32> = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let norm = &mut net.decoder.norm.weight;
        let device = norm.val().device();
        let n = values.len();
        *norm = Param::initialized(norm.id, Tensor::from_data(TensorData::new(values, [n]), &device).require_grad());
        Ok(net)
    }

    fn save_final(&self, net: &NormOnly<A>, dir: &Path) -> Result<()> {
        self.save_checkpoint(net, dir)
    }
}

/// Batches drawn from a counter: this rank's `position`-th micro-batch is example `step · ranks · acc + rank · acc + m`.
struct CountingData {
    drawn: u64,
    rank: u64,
    world: u64,
    accumulation: u64,
}

impl<N> DataModule<N> for CountingData {
    type Batch = Vec<u32>;

    fn train_batch(&mut self, _: &N) -> Result<Vec<u32>> {
        let (step, m) = (self.drawn / self.accumulation, self.drawn % self.accumulation);
        let example = step * self.world * self.accumulation + self.rank * self.accumulation + m;
        self.drawn += 1;
        Ok((0..2 * SEQ as u64).map(|i| ((example * 7 + i * 3) % VOCAB as u64) as u32).collect())
    }
    fn position(&self) -> Value {
        json!(self.drawn)
    }
    fn seek(&mut self, position: &Value) -> Result<()> {
        self.drawn = position.as_u64().ok_or_else(|| invalid("bad position".into()))?;
        Ok(())
    }
    fn batch_tokens(&self, batch: &Vec<u32>) -> usize {
        batch.len()
    }
    fn has_validation(&self) -> bool {
        false
    }
    fn validation_pass(&self, _: usize, _: &mut dyn FnMut(&Vec<u32>) -> Result<()>) -> Result<()> {
        Ok(())
    }
}

// ---- The test. ----

fn invalid(message: String) -> LightningError {
    LightningError::Invalid(message)
}

fn tokens<B: Backend>(batch: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = batch.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(ids, [batch.len() / SEQ, SEQ]), device)
}

fn network() -> NormOnly<A> {
    let decoder = LlamaModel::<A>::init(&ModelConfig::tiny_llama(VOCAB, 16, 2, 2, 1), &Default::default(), 5);
    let mut decoder = decoder.no_grad();
    decoder.norm.weight = decoder.norm.weight.set_require_grad(true);
    NormOnly { decoder }
}

/// Trains on `world` ranks with `accumulation` up to `max_steps`, resuming from `out` when asked; returns rank 0's
/// final norm weights and every weight of the network.
fn fit(out: &Path, world: usize, accumulation: usize, max_steps: u64, resume: bool) -> (Vec<f32>, Vec<f32>, f64) {
    let results = run_in_process(world, |comm| -> Result<_> {
        let device = Default::default();
        let config = AcceleratorConfig { gradient_accumulation_steps: accumulation, ..Default::default() };
        let mut accelerator = Accelerator::<A>::new(config, comm)?;
        let mut data = CountingData {
            drawn: 0,
            rank: accelerator.rank() as u64,
            world: world as u64,
            accumulation: accumulation as u64,
        };
        let settings = TrainerSettings {
            default_root_dir: out.to_path_buf(),
            max_steps,
            max_epochs: None,
            limit_train_batches: None,
            fast_dev_run: 0,
            num_sanity_val_steps: 0,
            strategy: Default::default(),
            optimizer: AdamWConfig::default(),
            schedule: Schedule::constant(2e-2),
            gradient_clip_val: Some(1.0),
            log_every_n_steps: 1,
            val_check_interval: 0,
            limit_val_batches: 1,
            model_checkpoint: ModelCheckpointSection::newest(2, 2),
            gradient_checkpointing: None,
            seed: 3,
            batch_size: None,
            resume: resume.then_some(ResumeFrom::Last),
            overwrite: false,
            loggers: vec![LoggerKind::Jsonl],
            hparams: serde_json::Value::Null,
            enable_progress_bar: true,
        };
        let mut trainer = Trainer::new(settings, &mut accelerator)?;
        let (summary, net) = trainer.fit(&mut SquaredLogitPenalty, network(), &mut data, &device)?;
        let norm = net.decoder.norm.weight.val().into_data().into_vec::<f32>().unwrap();
        Ok((norm, weights(&net.valid()), summary.final_train_loss))
    })
    .unwrap();
    results.into_iter().next().unwrap()
}

#[test]
fn a_new_objective_trains_data_parallel_with_accumulation_checkpoints_and_resume() {
    let straight = tempfile::tempdir().unwrap();
    let (norm, trained, loss) = fit(straight.path(), 2, 2, 6, false);
    assert!(
        straight.path().join("checkpoint-6/norm.json").is_file() && straight.path().join("final/norm.json").is_file()
    );
    assert!(straight.path().join("checkpoint-4").is_dir(), "checkpoints every 2 steps, the newest 2 kept");

    // Stopped after 4 steps, then resumed to 6: bit-identical.
    let split = tempfile::tempdir().unwrap();
    fit(split.path(), 2, 2, 4, false);
    let (resumed_norm, _, resumed_loss) = fit(split.path(), 2, 2, 6, true);
    assert_eq!(resumed_norm, norm, "resume continues exactly");
    assert_eq!(resumed_loss, loss);

    // One rank with accumulation 4 sees the same examples per step: the same training up to rounding.
    let single = tempfile::tempdir().unwrap();
    let (single_norm, _, _) = fit(single.path(), 1, 4, 6, false);
    let diff = norm.iter().zip(&single_norm).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-5, "2 ranks × accumulation 2 vs 1 rank × 4: {diff}");

    // Only the norm trained, and it learned to shrink the logits.
    let initial = weights(&network().valid());
    let moved: Vec<usize> = (0..initial.len()).filter(|&i| initial[i] != trained[i]).collect();
    assert!(!moved.is_empty() && moved.len() <= 16, "only the 16 norm weights move: {}", moved.len());
    let initial_norm = network().decoder.norm.weight.val().into_data().into_vec::<f32>().unwrap();
    let shrunk = norm.iter().map(|w| w.abs()).sum::<f32>() < initial_norm.iter().map(|w| w.abs()).sum::<f32>();
    assert!(shrunk, "the penalty shrinks the norm: {norm:?}");
}
