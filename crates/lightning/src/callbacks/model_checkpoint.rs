//! Lightning's `ModelCheckpoint`: which checkpoints a run keeps. With a `monitor`, each checkpoint's name carries
//! the metric's value (`checkpoint-120-eval_loss=2.3456/`) and the `save_top_k` best are kept, plus the newest
//! (`save_last`, so a killed run resumes where it stopped); without one, the `save_top_k` newest. The best one is
//! what `--resume best` continues from. `[model_checkpoint]` configures it; without that section the run keeps
//! `[training] save_total_limit` newest checkpoints every `save_steps` (transformers' names).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llmtrain_core::config::{ConfigSection, InvalidKey};
use llmtrain_core::train::checkpoint::{Retention, SavePlan, TrainerState, latest_valid_checkpoint, verify_checkpoint};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Callback, Mode};
use crate::error::{LightningError, Result};

/// The key of this callback's state in `trainer_state.json`.
const NAME: &str = "model_checkpoint";

/// The `[model_checkpoint]` section, with Lightning's names, or Ray Train's `CheckpointConfig` names
/// (`num_to_keep`, `checkpoint_score_attribute`, `checkpoint_score_order`). Unlike Lightning, `save_last` defaults
/// to true: the newest checkpoint is what a killed run resumes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelCheckpointSection {
    /// The metric that ranks checkpoints (`eval_loss`, or any metric the run logs); none: the newest rank best.
    #[serde(alias = "checkpoint_score_attribute")]
    pub monitor: Option<String>,
    #[serde(alias = "checkpoint_score_order")]
    pub mode: Mode,
    /// How many of the best checkpoints to keep; -1 keeps all.
    #[serde(alias = "num_to_keep")]
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

/// The callback: its settings and what it wrote (saved in every checkpoint, so a resumed run ranks on where it
/// stopped). It removes only checkpoints it wrote and no longer needs; other directories are left alone.
#[derive(Debug, Clone)]
pub struct ModelCheckpoint {
    settings: ModelCheckpointSection,
    /// The kept best checkpoints' monitored values (as named; non-finite ones rank worst), by step.
    top: BTreeMap<u64, f64>,
    /// The newest checkpoint written, when it is not among the best: its step and the value in its name.
    last: Option<(u64, Option<f64>)>,
    /// The step and value of the latest record holding the monitored metric.
    logged: Option<(u64, f64)>,
}

impl ModelCheckpoint {
    pub fn new(settings: ModelCheckpointSection) -> Self {
        Self { settings, top: BTreeMap::new(), last: None, logged: None }
    }

    /// Steps between checkpoints (0: only at the end of the run).
    pub fn every_n_train_steps(&self) -> u64 {
        self.settings.every_n_train_steps.unwrap_or(0)
    }

    /// How to name the checkpoint of `step` and which checkpoints to remove once it is written. A checkpoint is
    /// ranked by the monitored value logged at its own step (a validation at a checkpoint step); one without is
    /// unranked, kept only as the last. An `interrupted` run's checkpoint is kept whatever it scores: the run
    /// resumes from it.
    pub fn plan(&mut self, step: u64, interrupted: bool) -> SavePlan {
        let keep_k = usize::try_from(self.settings.save_top_k).unwrap_or(usize::MAX);
        if self.settings.monitor.is_none() {
            return SavePlan::newest(keep_k);
        }
        let value = self.logged.filter(|(at, _)| *at == step).map(|(_, value)| value);
        let mut remove = Vec::new();
        // The previous last goes unless it is among the best, or is the directory being written again (a run that
        // ended on a checkpoint step saves that step once more).
        let target = self.dir_name(step, value);
        if let Some((last, last_value)) = self.last.take().filter(|(last, _)| !self.top.contains_key(last)) {
            let name = self.dir_name(last, last_value);
            if name != target {
                remove.push(name);
            }
        }
        if let Some(value) = value {
            self.top.insert(step, value);
            let mut ranked: Vec<(u64, f64)> = self.top.iter().map(|(s, v)| (*s, *v)).collect();
            // Best first; an equal value does not displace an earlier checkpoint (Lightning's strict rule).
            ranked.sort_by(|a, b| self.order(a.1, b.1).then(a.0.cmp(&b.0)));
            for (evicted, evicted_value) in ranked.split_off(keep_k.min(ranked.len())) {
                self.top.remove(&evicted);
                if evicted != step {
                    remove.push(self.dir_name(evicted, Some(evicted_value)));
                }
            }
        }
        if !self.top.contains_key(&step) {
            if self.settings.save_last || interrupted {
                self.last = Some((step, value));
            } else {
                remove.push(target);
            }
        }
        SavePlan { suffix: self.suffix(value), keep: Retention::Remove(remove) }
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
        let Some(name) = saved.and_then(|saved| saved["best_dir"].as_str()) else {
            return Err(LightningError::Invalid(format!(
                "--resume best: {} ranks no checkpoint by a metric (the run had no [model_checkpoint] monitor, or \
                 no checkpoint had its value yet); resume the newest with --resume",
                newest.display()
            )));
        };
        let dir = out.join(name);
        if !dir.is_dir() {
            return Err(LightningError::Invalid(format!(
                "--resume best: the best checkpoint, {name}, is no longer in {}",
                out.display()
            )));
        }
        match verify_checkpoint(&dir) {
            Ok(state) => Ok(Some((dir, state))),
            Err(err) => Err(LightningError::Invalid(format!("--resume best: the best checkpoint is damaged: {err}"))),
        }
    }

    /// `-<monitor>=<value>` (characters a directory name cannot hold, such as `/`, become `_`), or nothing.
    fn suffix(&self, value: Option<f64>) -> String {
        match (&self.settings.monitor, value) {
            (Some(monitor), Some(value)) => {
                let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
                let monitor: String = monitor.chars().map(|c| if safe(c) { c } else { '_' }).collect();
                format!("-{monitor}={value:.4}")
            }
            _ => String::new(),
        }
    }

    fn dir_name(&self, step: u64, value: Option<f64>) -> String {
        format!("checkpoint-{step}{}", self.suffix(value))
    }

    /// Better values first; NaN and infinities rank worst (Lightning turns NaN into ±inf).
    fn order(&self, a: f64, b: f64) -> std::cmp::Ordering {
        let rankable = |value: f64| match (value.is_finite(), self.settings.mode) {
            (true, _) => value,
            (false, Mode::Min) => f64::INFINITY,
            (false, Mode::Max) => f64::NEG_INFINITY,
        };
        match self.settings.mode {
            Mode::Min => rankable(a).total_cmp(&rankable(b)),
            Mode::Max => rankable(b).total_cmp(&rankable(a)),
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

    fn on_log(&mut self, record: &mut Map<String, Value>) -> Result<()> {
        let monitor = self.settings.monitor.as_deref();
        let logged = monitor.and_then(|m| record.get(m)).zip(record.get("step").and_then(Value::as_u64));
        if let Some((value, step)) = logged {
            // A logged NaN is written as null.
            self.logged = Some((step, value.as_f64().unwrap_or(f64::NAN)));
        }
        Ok(())
    }

    fn state_dict(&self) -> Value {
        let Some(monitor) = &self.settings.monitor else {
            return Value::Null;
        };
        // Non-finite values are written as null (JSON has no infinity) and read back as NaN: they rank worst.
        let top: Vec<Value> = self.top.iter().map(|(step, value)| json!([step, value])).collect();
        let last = self.last.map(|(step, value)| json!([step, value]));
        let mut state = json!({"monitor": monitor, "mode": self.settings.mode, "top": top, "last": last});
        if let Some((step, value)) = self.best() {
            state["best_dir"] = json!(self.dir_name(step, Some(value)));
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
        let pair = |pair: &Value| Some((pair[0].as_u64()?, pair[1].as_f64()));
        self.top = state["top"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(pair)
            .map(|(step, value)| (step, value.unwrap_or(f64::NAN)))
            .collect();
        self.last = pair(&state["last"]);
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

    /// Logs `eval_loss = value` at `step` (when given) and plans that step's checkpoint: its suffix and what goes.
    fn save(
        callback: &mut ModelCheckpoint,
        step: u64,
        value: Option<Value>,
        interrupted: bool,
    ) -> (String, Vec<String>) {
        if let Some(value) = value {
            let mut record = Map::new();
            record.insert("step".into(), json!(step));
            record.insert("eval_loss".into(), value);
            callback.on_log(&mut record).unwrap();
        }
        let plan = callback.plan(step, interrupted);
        let Retention::Remove(removed) = plan.keep else { panic!("a monitored run removes by name") };
        (plan.suffix, removed)
    }

    #[test]
    fn keeps_the_k_best_and_the_last_and_names_the_value() {
        let mut callback = ModelCheckpoint::new(section(Some("eval_loss"), Mode::Min, 2, true));
        assert_eq!(save(&mut callback, 1, Some(json!(3.0)), false), ("-eval_loss=3.0000".into(), vec![]));
        save(&mut callback, 2, Some(json!(2.0)), false);
        // 4.0 is worse than both: kept only as the last, until the next checkpoint.
        assert_eq!(save(&mut callback, 3, Some(json!(4.0)), false).1, Vec::<String>::new());
        // 1.0 displaces 3.0; the last (3) goes.
        let removed = save(&mut callback, 4, Some(json!(1.0)), false).1;
        assert_eq!(removed, ["checkpoint-3-eval_loss=4.0000", "checkpoint-1-eval_loss=3.0000"]);
        // An equal value does not displace the earlier 2.0 (Lightning's strict rule): 5 is only the last.
        assert_eq!(save(&mut callback, 5, Some(json!(2.0)), false).1, Vec::<String>::new());
        assert_eq!(callback.best(), Some((4, 1.0)));
        // A checkpoint at a step without its own validation is unranked: no value in its name.
        assert_eq!(save(&mut callback, 6, None, false), (String::new(), vec!["checkpoint-5-eval_loss=2.0000".into()]));
        assert_eq!(save(&mut callback, 7, None, false).1, ["checkpoint-6"]);
    }

    #[test]
    fn max_mode_nan_interrupts_and_names_a_directory_can_hold() {
        let mut callback = ModelCheckpoint::new(section(Some("eval_loss"), Mode::Max, 1, false));
        assert_eq!(save(&mut callback, 1, None, false), (String::new(), vec!["checkpoint-1".into()]));
        assert_eq!(save(&mut callback, 2, Some(json!(0.5)), false).1, Vec::<String>::new());
        // NaN is logged as null and ranks worst, even in max mode: without save_last it goes at once.
        assert_eq!(save(&mut callback, 3, Some(Value::Null), false).1, ["checkpoint-3-eval_loss=NaN"]);
        assert_eq!(save(&mut callback, 4, Some(json!(0.7)), false).1, ["checkpoint-2-eval_loss=0.5000"]);
        assert_eq!(save(&mut callback, 5, Some(json!(0.1)), true).1, Vec::<String>::new(), "kept: interrupted");
        assert_eq!(save(&mut callback, 6, None, false).1, ["checkpoint-5-eval_loss=0.1000", "checkpoint-6"]);
        let slash = ModelCheckpoint::new(section(Some("val/loss"), Mode::Min, 1, true));
        assert_eq!(slash.suffix(Some(1.0)), "-val_loss=1.0000");
    }

    #[test]
    fn without_a_monitor_the_newest_are_kept_and_state_round_trips() {
        let mut newest = ModelCheckpoint::new(ModelCheckpointSection::newest(3, 10));
        assert_eq!(newest.plan(10, false), SavePlan::newest(3));
        assert_eq!(newest.state_dict(), Value::Null);
        assert_eq!(newest.every_n_train_steps(), 10);

        let mut callback = ModelCheckpoint::new(section(Some("eval_loss"), Mode::Min, -1, true));
        for (step, value) in [(1, json!(2.0)), (2, Value::Null), (3, json!(1.5))] {
            save(&mut callback, step, Some(value), false);
        }
        save(&mut callback, 4, None, false);
        let state = callback.state_dict();
        assert_eq!(state["best_dir"], json!("checkpoint-3-eval_loss=1.5000"));
        let mut resumed = ModelCheckpoint::new(section(Some("eval_loss"), Mode::Min, -1, true));
        resumed.load_state_dict(&state).unwrap();
        assert_eq!((resumed.top.len(), resumed.last, resumed.best()), (3, Some((4, None)), Some((3, 1.5))));
        assert_eq!(save(&mut resumed, 5, None, false).1, ["checkpoint-4"], "the resumed run removes the old last");
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
