//! The library example (`examples/sine_regression.rs`, compiled here as a module): it trains, stops early, keeps
//! its two best checkpoints and logs to CSV and TensorBoard; a run of it that crashes mid-epoch resumes
//! bit-identically through its DataModule's position.

use std::path::Path;

use llmtrain_core::train::checkpoint::ResumeFrom;
use llmtrain_lightning::loggers::tensorboard::{TENSORBOARD_DIR, read_scalars};
use llmtrain_lightning::{DataModule, Datasets, LightningError, NET_FILE, Result};
use serde_json::Value;

#[allow(dead_code)]
#[path = "../examples/sine_regression.rs"]
mod sine_regression;

use crate::common::weights;
use sine_regression::{Mlp, Point, fit, sine_points};

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
