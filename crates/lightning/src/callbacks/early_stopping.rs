//! Lightning's `EarlyStopping`: stop when the monitored metric has not improved by more than `min_delta` for
//! `patience` validations in a row, or at once when it is not finite. `[early_stopping]` configures it.

use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Callback, Control};
use crate::error::{LightningError, Result};

/// Whether lower or higher values of the monitored metric are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Min,
    Max,
}

/// The `[early_stopping]` section, with Lightning's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStoppingSection {
    pub monitor: String,
    pub min_delta: f64,
    pub patience: u64,
    pub mode: Mode,
    pub check_finite: bool,
}

impl Default for EarlyStoppingSection {
    fn default() -> Self {
        Self { monitor: "eval_loss".into(), min_delta: 0.0, patience: 3, mode: Mode::Min, check_finite: true }
    }
}

impl ConfigSection for EarlyStoppingSection {
    const NAME: &'static str = "early_stopping";

    fn validate(&self) -> std::result::Result<(), InvalidKey> {
        if !self.min_delta.is_finite() {
            return Err(InvalidKey::new("min_delta", "must be a finite number"));
        }
        Ok(())
    }
}

/// The callback: its settings and what it has seen (saved in every checkpoint).
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    settings: EarlyStoppingSection,
    best: Option<f64>,
    /// Validations in a row without an improvement.
    wait: u64,
}

impl EarlyStopping {
    pub fn new(settings: EarlyStoppingSection) -> Self {
        Self { settings, best: None, wait: 0 }
    }

    /// Lightning's rule: strictly better than the best by more than |min_delta|.
    fn improves(&self, value: f64) -> bool {
        let delta = self.settings.min_delta.abs();
        match (self.best, self.settings.mode) {
            (None, _) => true,
            (Some(best), Mode::Min) => value < best - delta,
            (Some(best), Mode::Max) => value > best + delta,
        }
    }
}

impl Callback for EarlyStopping {
    fn name(&self) -> &'static str {
        "early_stopping"
    }

    fn monitor(&self) -> Option<&str> {
        Some(&self.settings.monitor)
    }

    fn on_validation_end(&mut self, _step: u64, metrics: &Map<String, Value>) -> Result<Control> {
        let name = &self.settings.monitor;
        // JSON has no NaN or infinity: serde_json records them as null.
        let Some(value) = metrics.get(name).map(|v| v.as_f64().unwrap_or(f64::NAN)) else {
            return Ok(Control::Continue);
        };
        if self.settings.check_finite && !value.is_finite() {
            return Ok(Control::Stop(format!("{name} = {value} is not finite")));
        }
        if self.improves(value) {
            self.best = Some(value);
            self.wait = 0;
            return Ok(Control::Continue);
        }
        self.wait += 1;
        if self.wait >= self.settings.patience {
            let best = self.best.unwrap_or(f64::NAN);
            return Ok(Control::Stop(format!(
                "{name} did not improve by more than {} over {} validations (best {best:.4})",
                self.settings.min_delta.abs(),
                self.wait
            )));
        }
        Ok(Control::Continue)
    }

    fn state_dict(&self) -> Value {
        json!({"best": self.best, "wait": self.wait})
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<()> {
        let bad = || LightningError::Invalid(format!("trainer_state.json: callbacks.early_stopping: {state}"));
        self.best = match &state["best"] {
            Value::Null => None,
            best => Some(best.as_f64().ok_or_else(bad)?),
        };
        self.wait = state["wait"].as_u64().ok_or_else(bad)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(value: f64) -> Map<String, Value> {
        let mut metrics = Map::new();
        metrics.insert("eval_loss".into(), json!(value));
        metrics
    }

    #[test]
    fn stops_after_patience_validations_without_a_min_delta_improvement_and_resumes_its_count() {
        let settings = EarlyStoppingSection { min_delta: 0.1, patience: 2, ..Default::default() };
        let mut callback = EarlyStopping::new(settings.clone());
        assert_eq!(callback.on_validation_end(1, &metrics(3.0)).unwrap(), Control::Continue);
        // 2.95 is better, but not by more than 0.1: no improvement.
        assert_eq!(callback.on_validation_end(2, &metrics(2.95)).unwrap(), Control::Continue);
        let mut resumed = EarlyStopping::new(settings);
        resumed.load_state_dict(&callback.state_dict()).unwrap();
        let Control::Stop(reason) = resumed.on_validation_end(3, &metrics(2.99)).unwrap() else { panic!() };
        assert!(reason.contains("eval_loss did not improve by more than 0.1 over 2 validations"), "{reason}");
        // An improvement resets the count; a NaN stops at once.
        let mut callback = EarlyStopping::new(EarlyStoppingSection { patience: 1, ..Default::default() });
        callback.on_validation_end(1, &metrics(3.0)).unwrap();
        assert_eq!(callback.on_validation_end(2, &metrics(2.0)).unwrap(), Control::Continue);
        assert!(
            matches!(callback.on_validation_end(3, &metrics(f64::NAN)).unwrap(), Control::Stop(r) if r.contains("not finite"))
        );
    }

    #[test]
    fn max_mode_wants_higher_values() {
        let mut callback =
            EarlyStopping::new(EarlyStoppingSection { mode: Mode::Max, patience: 1, ..Default::default() });
        callback.on_validation_end(1, &metrics(0.5)).unwrap();
        assert_eq!(callback.on_validation_end(2, &metrics(0.6)).unwrap(), Control::Continue);
        assert!(matches!(callback.on_validation_end(3, &metrics(0.55)).unwrap(), Control::Stop(_)));
    }
}
