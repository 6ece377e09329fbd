//! The library example (`examples/sine_regression.rs`, compiled here as a module): it trains, stops early, keeps
//! its two best checkpoints and logs to CSV and TensorBoard; a run of it that crashes mid-epoch resumes
//! bit-identically through its DataModule's position.

use std::path::Path;

use burn::tensor::backend::BackendTypes;
use llmtrain_accel::{Accelerator, AcceleratorConfig};
use llmtrain_core::train::checkpoint::ResumeFrom;
use llmtrain_core::train::{AdamWConfig, Schedule};
use llmtrain_lightning::loggers::tensorboard::{TENSORBOARD_DIR, read_scalars};
use llmtrain_lightning::{
    DataModule, Datasets, InnerNet, LightningError, LightningModule, LossParts, ModelCheckpointSection, NET_FILE,
    Optimizers, Result, StepContext, StepOutput, Trainer, TrainerSettings,
};
use serde_json::{Map, Value, json};

#[allow(dead_code)]
#[path = "../examples/sine_regression.rs"]
mod sine_regression;

use crate::common::weights;
use sine_regression::{A, Mlp, Point, SineRegression, fit, sine_points};

fn records(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn eval_losses(dir: &Path) -> Vec<(u64, f64)> {
    records(dir).iter().filter_map(|r| Some((r["step"].as_u64()?, r["eval_loss"].as_f64()?))).collect()
}

fn checkpoints(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    names.sort();
    names
}

#[test]
fn the_example_learns_stops_early_keeps_its_two_best_checkpoints_and_logs_csv_and_tensorboard() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, _) = fit(dir.path(), 2000, None, Mlp::new(&Default::default()), &mut sine_points()).unwrap();
    let reason = summary.stopped_early.expect("early stopping ends the run");
    assert!(summary.steps < 2000 && reason.contains("eval_loss"), "{} steps: {reason}", summary.steps);
    let evals = eval_losses(dir.path());
    let (first, last) = (evals[0].1, evals.last().unwrap().1);
    assert!(last < first / 4.0, "the network learns: eval loss {first} -> {last}");

    // The two lowest eval losses at checkpoint steps, and the last checkpoint, each named with its value.
    let mut ranked = evals.clone();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<u64> = vec![ranked[0].0, ranked[1].0, summary.steps];
    kept.sort();
    kept.dedup();
    let mut expected: Vec<String> = kept
        .iter()
        .map(|step| {
            let value = evals.iter().find(|(s, _)| s == step).unwrap().1;
            format!("checkpoint-{step}-eval_loss={value:.4}")
        })
        .collect();
    expected.sort();
    assert_eq!(checkpoints(dir.path()), expected);
    assert!(dir.path().join("final").join(NET_FILE).is_file());

    // CSV: Lightning's layout, one row per record; TensorBoard: the same eval losses.
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert!(header.contains(&"step") && header.contains(&"eval_loss") && header.is_sorted(), "{header:?}");
    assert_eq!(csv.lines().count() - 1, records(dir.path()).len());
    assert!(dir.path().join("hparams.yaml").is_file());
    let scalars = read_scalars(&dir.path().join(TENSORBOARD_DIR)).unwrap();
    let board: Vec<(u64, f64)> =
        scalars.iter().filter(|(_, tag, _)| tag == "eval_loss").map(|(s, _, v)| (*s as u64, *v as f64)).collect();
    assert_eq!(board.len(), evals.len());
    for ((step, value), (board_step, board_value)) in evals.iter().zip(&board) {
        // TensorBoard holds f32: the nearest one.
        assert!(step == board_step && (*value as f32) as f64 == *board_value, "{step} {value} vs {board_value}");
    }
}

/// The example's data, failing at a given draw: a run that crashes in the middle of an epoch.
struct CrashingData {
    inner: Datasets<Point>,
    draws_before_crash: u64,
}

impl<N> DataModule<N> for CrashingData {
    type Batch = Vec<Point>;

    fn train_batch(&mut self, net: &N) -> Result<Vec<Point>> {
        if self.draws_before_crash == 0 {
            return Err(LightningError::Invalid("the machine went down".into()));
        }
        self.draws_before_crash -= 1;
        self.inner.train_batch(net)
    }
    fn position(&self) -> Value {
        DataModule::<N>::position(&self.inner)
    }
    fn seek(&mut self, position: &Value) -> Result<()> {
        DataModule::<N>::seek(&mut self.inner, position)
    }
    fn epoch(&self) -> u64 {
        DataModule::<N>::epoch(&self.inner)
    }
    fn batch_tokens(&self, batch: &Vec<Point>) -> usize {
        batch.len()
    }
    fn has_validation(&self) -> bool {
        DataModule::<N>::has_validation(&self.inner)
    }
    fn validation_pass(&self, max: usize, visit: &mut dyn FnMut(&Vec<Point>) -> Result<()>) -> Result<()> {
        DataModule::<N>::validation_pass(&self.inner, max, visit)
    }
}

#[test]
fn a_run_of_the_example_that_crashes_mid_epoch_resumes_bit_identically() {
    // 320 training points in batches of 16: 20 steps an epoch. The crash comes at step 36, after the checkpoint
    // of step 30, ten batches into the second epoch.
    let net = Mlp::new(&Default::default());
    // burn initialises parameters lazily, and a clone of an uninitialised one draws its own values: draw them once.
    weights(&net);
    let straight = tempfile::tempdir().unwrap();
    let (_, straight_net) = fit(straight.path(), 45, None, net.clone(), &mut sine_points()).unwrap();

    let crashed = tempfile::tempdir().unwrap();
    let mut data = CrashingData { inner: sine_points(), draws_before_crash: 35 };
    let err = fit(crashed.path(), 45, None, net, &mut data).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("went down"), "{err}");
    let newest = checkpoints(crashed.path()).into_iter().find(|n| n.starts_with("checkpoint-30-")).unwrap();
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(crashed.path().join(&newest).join("trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["data_position"], serde_json::json!({"epoch": 1, "next": 160}), "mid-epoch");

    let untrained = Mlp::new(&Default::default());
    let (_, resumed_net) = fit(crashed.path(), 45, Some(ResumeFrom::Last), untrained, &mut sine_points()).unwrap();
    assert_eq!(eval_losses(crashed.path()), eval_losses(straight.path()));
    assert!(weights(&resumed_net) == weights(&straight_net), "resumed mid-epoch: bit-identical weights");
    assert_eq!(checkpoints(crashed.path()), checkpoints(straight.path()));
}

/// The example's objective with every hook a Lightning user reaches for: its own optimizer and schedule, counts
/// kept by the step hooks (its own checkpointed state), and a figure added to each validation record; or with a
/// validation that fails.
#[derive(Default)]
struct HookedSine {
    optimizer_steps: u64,
    batches: u64,
    last_grad_norm: f64,
    broken_validation: bool,
}

impl LightningModule<A> for HookedSine {
    type Net = Mlp<A>;
    type Batch = Vec<Point>;

    fn batch_weight(&self, batch: &Vec<Point>) -> f64 {
        LightningModule::<A>::batch_weight(&SineRegression, batch)
    }
    fn training_step<'n>(
        &self,
        net: &'n Mlp<A>,
        batch: &Vec<Point>,
        ctx: &StepContext<'_, A>,
    ) -> Result<StepOutput<'n, A>> {
        SineRegression.training_step(net, batch, ctx)
    }
    fn validation_step(
        &self,
        net: &InnerNet<A, Self>,
        batch: &Vec<Point>,
        device: &<A as BackendTypes>::Device,
    ) -> Result<LossParts> {
        if self.broken_validation {
            return Err(LightningError::Invalid("validation_step is broken".into()));
        }
        LightningModule::<A>::validation_step(&SineRegression, net, batch, device)
    }
    fn configure_optimizers(&self) -> Option<Optimizers> {
        Some(Optimizers { optimizer: AdamWConfig::default(), schedule: Schedule::constant(0.05) })
    }
    fn on_before_optimizer_step(&mut self, step: u64, grad_norm: f64) -> Result<()> {
        assert_eq!(step, self.optimizer_steps, "called before the step is counted done");
        (self.optimizer_steps, self.last_grad_norm) = (step + 1, grad_norm);
        Ok(())
    }
    fn on_train_batch_end(&mut self, step: u64, _loss: f64) -> Result<()> {
        assert_eq!(step, self.optimizer_steps);
        self.batches += 1;
        Ok(())
    }
    fn on_validation_epoch_end(&mut self, _step: u64, val_loss: f64) -> Result<Map<String, Value>> {
        Ok(Map::from_iter([("val_rmse".to_string(), json!(val_loss.sqrt()))]))
    }
    fn on_save_checkpoint(&self) -> Value {
        json!({"batches": self.batches, "optimizer_steps": self.optimizer_steps})
    }
    fn on_load_checkpoint(&mut self, state: &Value) -> Result<()> {
        (self.batches, self.optimizer_steps) =
            (state["batches"].as_u64().unwrap(), state["optimizer_steps"].as_u64().unwrap());
        Ok(())
    }
}

fn fit_hooked(
    dir: &Path,
    module: &mut HookedSine,
    net: Mlp<A>,
    data: &mut impl DataModule<Mlp<A>, Batch = Vec<Point>>,
    resume: bool,
) -> Result<()> {
    let settings = TrainerSettings {
        max_steps: 20,
        log_every_n_steps: 5,
        val_check_interval: 10,
        model_checkpoint: ModelCheckpointSection { every_n_train_steps: Some(10), ..Default::default() },
        resume: resume.then_some(ResumeFrom::Last),
        enable_progress_bar: false,
        ..TrainerSettings::new(dir)
    };
    let mut accelerator = Accelerator::<A>::single(AcceleratorConfig::default())?;
    Trainer::new(settings, &mut accelerator)?.fit(module, net, data, &Default::default()).map(|_| ())
}

#[test]
fn module_hooks_choose_the_optimizer_see_each_step_add_validation_figures_and_checkpoint_their_state() {
    let net = Mlp::new(&Default::default());
    weights(&net);
    let straight_dir = tempfile::tempdir().unwrap();
    let mut straight = HookedSine::default();
    fit_hooked(straight_dir.path(), &mut straight, net.clone(), &mut sine_points(), false).unwrap();
    assert_eq!((straight.batches, straight.optimizer_steps), (20, 20));
    assert!(straight.last_grad_norm > 0.0);
    let logged = records(straight_dir.path());
    assert!(logged.iter().filter(|r| r["loss"].is_f64()).all(|r| r["lr"] == json!(0.05)), "configure_optimizers' rate");
    for record in logged.iter().filter(|r| r["eval_loss"].is_f64()) {
        assert_eq!(record["val_rmse"].as_f64().unwrap(), record["eval_loss"].as_f64().unwrap().sqrt());
    }

    // Crashed after step 10's checkpoint, resumed by a fresh module: its counts come back from the checkpoint.
    let crashed_dir = tempfile::tempdir().unwrap();
    let mut crashing = CrashingData { inner: sine_points(), draws_before_crash: 15 };
    assert!(fit_hooked(crashed_dir.path(), &mut HookedSine::default(), net, &mut crashing, false).is_err());
    let mut resumed = HookedSine::default();
    fit_hooked(crashed_dir.path(), &mut resumed, Mlp::new(&Default::default()), &mut sine_points(), true).unwrap();
    assert_eq!((resumed.batches, resumed.optimizer_steps), (20, 20));
    assert_eq!(eval_losses(crashed_dir.path()), eval_losses(straight_dir.path()));
}

#[test]
fn the_sanity_check_fails_a_broken_validation_before_step_one_and_max_epochs_ends_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let settings =
        TrainerSettings { val_check_interval: 100, enable_progress_bar: false, ..TrainerSettings::new(dir.path()) };
    let mut accelerator = Accelerator::<A>::single(AcceleratorConfig::default()).unwrap();
    let mut trainer = Trainer::new(settings, &mut accelerator).unwrap();
    let mut broken = HookedSine { broken_validation: true, ..Default::default() };
    let err = trainer.fit(&mut broken, Mlp::new(&Default::default()), &mut sine_points(), &Default::default());
    assert!(err.map(|_| ()).unwrap_err().to_string().contains("validation_step is broken"));
    assert!(records(dir.path()).is_empty(), "no step ran");

    // 320 points in batches of 16, at most 5 batches an epoch: 3 epochs are 15 steps.
    let dir = tempfile::tempdir().unwrap();
    let settings = TrainerSettings {
        max_epochs: Some(3),
        limit_train_batches: Some(5),
        enable_progress_bar: false,
        ..TrainerSettings::new(dir.path())
    };
    let mut trainer = Trainer::new(settings, &mut accelerator).unwrap();
    let (summary, _) = trainer
        .fit(&mut SineRegression, Mlp::new(&Default::default()), &mut sine_points(), &Default::default())
        .unwrap();
    assert_eq!((summary.steps, summary.stopped_early.as_deref()), (15, Some("max_epochs = 3 reached")));
}
