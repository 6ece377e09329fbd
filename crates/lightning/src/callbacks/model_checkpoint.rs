//! Lightning's `ModelCheckpoint`: which checkpoints a run keeps. With a `monitor`, each checkpoint's name carries
//! the metric's value (`checkpoint-120-eval_loss=2.3456/`) and the `save_top_k` best are kept, plus the newest
//! (`save_last`, so a killed run resumes where it stopped); without one, the `save_top_k` newest. The best one is
//! what `--resume best` continues from. `[model_checkpoint]` configures it; without that section the run keeps
//! `[training] save_total_limit` newest checkpoints every `save_steps` (transformers' names).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use llmtrain_core::config::{ConfigSection, InvalidKey};
use llmtrain_core::train::checkpoint::{
    Retention, SavePlan, TrainerState, latest_valid_checkpoint, list_checkpoints, verify_checkpoint,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Callback, Mode};
use crate::error::{LightningError, Result};

/// The key of this callback's state in `trainer_state.json`.
const NAME: &str = "model_checkpoint";

/// The `[model_checkpoint]` section, with Lightning's names. Unlike Lightning, `save_last` defaults to true: the
/// newest checkpoint is what a killed run resumes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelCheckpointSection {
    /// The metric that ranks checkpoints (`eval_loss`, or any metric the run logs); none: the newest rank best.
    pub monitor: Option<String>,
    pub mode: Mode,
    /// How many of the best checkpoints to keep; -1 keeps all.
    pub save_top_k: i64,
    /// Also keep the newest checkpoint, ranked or not.
    pub save_last: bool,
    /// Checkpoint every this many steps (default: `[training] save_steps`; 0: only at the end).
    pub every_n_train_steps: Option<u64>,
}

impl Default for ModelCheckpointSection {
    fn default() -> Self {
        Self { monitor: None, mode: Mode::Min, save_top_k: 1, save_last: true, every_n_train_steps: None }
    }
}

impl ModelCheckpointSection {
    /// transformers' `save_steps` / `save_total_limit`: a checkpoint every `every` steps, the `keep` newest kept.
    pub fn newest(keep: usize, every: u64) -> Self {
        let save_top_k = i64::try_from(keep.max(1)).unwrap_or(i64::MAX);
        Self { save_top_k, every_n_train_steps: Some(every), ..Default::default() }
    }
}

impl ConfigSection for ModelCheckpointSection {
    const NAME: &'static str = NAME;

    fn validate(&self) -> std::result::Result<(), InvalidKey> {
        if self.save_top_k < -1 {
            return Err(InvalidKey::new("save_top_k", "must be -1 (keep all), 0 or more"));
        }
        if self.save_top_k == 0 && !self.save_last {
            return Err(InvalidKey::new("save_top_k", "is 0 and save_last is false: no checkpoint would be kept"));
        }
        Ok(())
    }
}

/// The callback: its settings and the monitored value of each checkpoint among the best (saved in every
/// checkpoint, so a resumed run ranks on where it stopped).
#[derive(Debug, Clone)]
pub struct ModelCheckpoint {
    settings: ModelCheckpointSection,
    /// The kept best checkpoints' monitored values, by step (non-finite values rank worst).
    top: BTreeMap<u64, f64>,
}

impl ModelCheckpoint {
    pub fn new(settings: ModelCheckpointSection) -> Self {
        Self { settings, top: BTreeMap::new() }
    }

    /// Steps between checkpoints (0: only at the end of the run).
    pub fn every_n_train_steps(&self) -> u64 {
        self.settings.every_n_train_steps.unwrap_or(0)
    }

    /// How to name the checkpoint of `step` and what to keep once it is written, given the latest value of every
    /// logged metric. An `interrupted` run's checkpoint is kept whatever it scores: the run resumes from it.
    pub fn plan(&mut self, step: u64, metrics: &Map<String, Value>, interrupted: bool) -> SavePlan {
        let keep_k = usize::try_from(self.settings.save_top_k).unwrap_or(usize::MAX);
        let Some(monitor) = &self.settings.monitor else {
            return SavePlan::newest(keep_k);
        };
        // A metric not logged yet (no validation so far) leaves the checkpoint unranked: kept only as the last.
        // A logged NaN is written as null, and ranks worst.
        let value = metrics.get(monitor).map(|v| v.as_f64().unwrap_or(f64::NAN));
        let mut suffix = String::new();
        if let Some(value) = value {
            suffix = format!("-{monitor}={value:.4}");
            self.top.insert(step, self.rankable(value));
            let mut ranked: Vec<(u64, f64)> = self.top.iter().map(|(s, v)| (*s, *v)).collect();
            // Best first; an equal value does not displace an earlier checkpoint (Lightning's strict rule).
            ranked.sort_by(|a, b| self.order(a.1, b.1).then(a.0.cmp(&b.0)));
            ranked.truncate(keep_k);
            self.top = ranked.into_iter().collect();
        }
        let mut kept: BTreeSet<u64> = self.top.keys().copied().collect();
        if self.settings.save_last || interrupted {
            kept.insert(step);
        }
        SavePlan { suffix, keep: Retention::Steps(kept) }
    }

    /// The best checkpoint so far: its step and monitored value.
    pub fn best(&self) -> Option<(u64, f64)> {
        self.top.iter().map(|(s, v)| (*s, *v)).min_by(|a, b| self.order(a.1, b.1).then(a.0.cmp(&b.0)))
    }

    /// The checkpoint of `out` whose monitored value was best, as its newest intact checkpoint records it
    /// (`--resume best`); `None` when `out` holds no intact checkpoint.
    pub fn best_checkpoint(out: &Path) -> Result<Option<(PathBuf, TrainerState)>> {
        let Some((newest, state)) = latest_valid_checkpoint(out)? else {
            return Ok(None);
        };
        let saved = state.callbacks.get(NAME);
        let best = saved.and_then(|s| Some((s["best_step"].as_u64()?, s["monitor"].as_str()?, &s["best_value"])));
        let Some((step, monitor, value)) = best else {
            return Err(LightningError::Invalid(format!(
                "--resume best: {} ranks no checkpoint by a metric (the run had no [model_checkpoint] monitor, or \
                 no checkpoint had its value yet); resume the newest with --resume",
                newest.display()
            )));
        };
        let found = list_checkpoints(out)?.into_iter().find(|(s, _)| *s == step);
        let Some((_, dir)) = found else {
            return Err(LightningError::Invalid(format!(
                "--resume best: the best checkpoint (step {step}, {monitor} = {value}) is no longer in {}",
                out.display()
            )));
        };
        match verify_checkpoint(&dir) {
            Ok(state) => Ok(Some((dir, state))),
            Err(err) => Err(LightningError::Invalid(format!("--resume best: the best checkpoint is damaged: {err}"))),
        }
    }

    /// A value as it ranks: NaN and infinities rank worst (Lightning turns NaN into ±inf).
    fn rankable(&self, value: f64) -> f64 {
        match (value.is_finite(), self.settings.mode) {
            (true, _) => value,
            (false, Mode::Min) => f64::INFINITY,
            (false, Mode::Max) => f64::NEG_INFINITY,
        }
    }

    /// Better values first.
    fn order(&self, a: f64, b: f64) -> std::cmp::Ordering {
        match self.settings.mode {
            Mode::Min => a.total_cmp(&b),
            Mode::Max => b.total_cmp(&a),
        }
    }
}

impl Callback for ModelCheckpoint {
    fn name(&self) -> &'static str {
        NAME
    }

    fn monitor(&self) -> Option<&str> {
        self.settings.monitor.as_deref()
    }

    fn state_dict(&self) -> Value {
        let Some(monitor) = &self.settings.monitor else {
            return Value::Null;
        };
        // Non-finite values are written as null (JSON has no infinity) and read back as the worst.
        let top: Vec<Value> = self.top.iter().map(|(step, value)| json!([step, value])).collect();
        let mut state = json!({"monitor": monitor, "mode": self.settings.mode, "top": top});
        if let Some((step, value)) = self.best() {
            state["best_step"] = json!(step);
            state["best_value"] = json!(value);
        }
        state
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<()> {
        let Some(monitor) = &self.settings.monitor else {
            return Ok(());
        };
        let saved = state["monitor"].as_str();
        if saved.is_some_and(|saved| saved != monitor) {
            return Err(LightningError::Invalid(format!(
                "model_checkpoint.monitor: the run being resumed ranked its checkpoints by `{}`, this config by \
                 `{monitor}`; keep `{0}`, or start a new run",
                saved.unwrap_or_default()
            )));
        }
        self.top = state["top"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pair| Some((pair[0].as_u64()?, self.rankable(pair[1].as_f64().unwrap_or(f64::NAN)))))
            .collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(monitor: Option<&str>, mode: Mode, save_top_k: i64, save_last: bool) -> ModelCheckpointSection {
        ModelCheckpointSection {
            monitor: monitor.map(String::from),
            mode,
            save_top_k,
            save_last,
            every_n_train_steps: Some(1),
        }
    }

    fn metrics(value: Value) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("eval_loss".into(), value);
        map
    }

    fn kept(plan: &SavePlan) -> Vec<u64> {
        match &plan.keep {
            Retention::Steps(steps) => steps.iter().copied().collect(),
            Retention::Newest(n) => panic!("expected steps, got the {n} newest"),
        }
    }

    #[test]
    fn keeps_the_k_best_and_the_last_and_names_the_value() {
        let mut callback = ModelCheckpoint::new(section(Some("eval_loss"), Mode::Min, 2, true));
        let plan = callback.plan(1, &metrics(json!(3.0)), false);
        assert_eq!(plan.suffix, "-eval_loss=3.0000");
        assert_eq!(kept(&plan), [1]);
        callback.plan(2, &metrics(json!(2.0)), false);
        // 4.0 is worse than both: kept only as the last.
        assert_eq!(kept(&callback.plan(3, &metrics(json!(4.0)), false)), [1, 2, 3]);
        // An equal value does not displace the earlier 2.0; 1.0 displaces 3.0.
        assert_eq!(kept(&callback.plan(4, &metrics(json!(2.0)), false)), [2, 4]);
        assert_eq!(kept(&callback.plan(5, &metrics(json!(1.0)), false)), [2, 5]);
        assert_eq!(callback.best(), Some((5, 1.0)));
    }

    #[test]
    fn max_mode_nan_and_an_unlogged_metric() {
        let mut callback = ModelCheckpoint::new(section(Some("eval_loss"), Mode::Max, 1, false));
        let plan = callback.plan(1, &Map::new(), false);
        assert_eq!((plan.suffix.as_str(), kept(&plan)), ("", vec![]), "nothing to rank by yet");
        assert_eq!(kept(&callback.plan(2, &metrics(json!(0.5)), false)), [2]);
        // NaN is logged as null and ranks worst, even in max mode.
        assert_eq!(kept(&callback.plan(3, &metrics(Value::Null), false)), [2]);
        assert_eq!(kept(&callback.plan(4, &metrics(json!(0.7)), false)), [4]);
        assert_eq!(kept(&callback.plan(5, &metrics(json!(0.1)), true)), [4, 5], "an interrupted run's is kept");
    }

    #[test]
    fn without_a_monitor_the_newest_are_kept_and_state_round_trips() {
        let mut newest = ModelCheckpoint::new(ModelCheckpointSection::newest(3, 10));
        assert_eq!(newest.plan(10, &Map::new(), false), SavePlan::newest(3));
        assert_eq!(newest.state_dict(), Value::Null);
        assert_eq!(newest.every_n_train_steps(), 10);

        let mut callback = ModelCheckpoint::new(section(Some("eval_loss"), Mode::Min, -1, true));
        for (step, value) in [(1, json!(2.0)), (2, Value::Null), (3, json!(1.5))] {
            callback.plan(step, &metrics(value), false);
        }
        let state = callback.state_dict();
        assert_eq!((state["best_step"].clone(), state["best_value"].clone()), (json!(3), json!(1.5)));
        let mut resumed = ModelCheckpoint::new(section(Some("eval_loss"), Mode::Min, -1, true));
        resumed.load_state_dict(&state).unwrap();
        assert_eq!(resumed.top, callback.top);
        let mut other = ModelCheckpoint::new(section(Some("loss"), Mode::Min, 1, true));
        let err = other.load_state_dict(&state).unwrap_err().to_string();
        assert!(err.contains("ranked its checkpoints by `eval_loss`"), "{err}");
    }

    #[test]
    fn a_section_that_keeps_nothing_is_refused() {
        assert!(section(None, Mode::Min, 0, false).validate().is_err());
        assert!(section(None, Mode::Min, -2, true).validate().is_err());
        assert!(section(None, Mode::Min, 0, true).validate().is_ok());
    }
}
