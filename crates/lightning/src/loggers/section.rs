//! `[logging]`: which loggers a run writes. llmtrain-lightning owns the section.

use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};

/// A logger by its config name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoggerKind {
    /// `metrics.jsonl`, one JSON object per record (always on).
    Jsonl,
    /// Lightning's CSVLogger layout: `metrics.csv` and `hparams.yaml`.
    Csv,
    /// TensorBoard scalar event files under `tensorboard/`.
    Tensorboard,
}

impl LoggerKind {
    /// The name the config uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
            Self::Tensorboard => "tensorboard",
        }
    }
}

/// The `[logging]` section: the loggers, and the callbacks that add metrics to the records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    pub loggers: Vec<LoggerKind>,
    /// Lightning's `LearningRateMonitor`: `lr-AdamW` in every training record.
    pub learning_rate_monitor: bool,
    /// Lightning's `ThroughputMonitor`: `device/flops_per_sec`, and `device/mfu` with `peak_flops`.
    pub throughput_monitor: bool,
    /// One device's peak FLOP/s at the run's precision, for the MFU (no built-in table: CPUs vary too much).
    pub peak_flops: Option<f64>,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            loggers: vec![LoggerKind::Jsonl],
            learning_rate_monitor: false,
            throughput_monitor: false,
            peak_flops: None,
        }
    }
}

impl ConfigSection for LoggingSection {
    const NAME: &'static str = "logging";

    fn validate(&self) -> Result<(), InvalidKey> {
        if !self.loggers.contains(&LoggerKind::Jsonl) {
            // The loss curve, the run's summary and every tool that reads a run start from metrics.jsonl.
            return Err(InvalidKey::new("loggers", "must include \"jsonl\" (metrics.jsonl is the run's own record)"));
        }
        if let Some(twice) = self.loggers.iter().enumerate().find(|(i, k)| self.loggers[..*i].contains(k)) {
            return Err(InvalidKey::new("loggers", format!("names \"{}\" twice", twice.1.name())));
        }
        if self.peak_flops.is_some_and(|peak| !(peak.is_finite() && peak > 0.0)) {
            return Err(InvalidKey::new("peak_flops", "must be a positive number of FLOP/s"));
        }
        if self.peak_flops.is_some() && !self.throughput_monitor {
            return Err(InvalidKey::new("peak_flops", "is only used with throughput_monitor = true"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_is_required_and_duplicates_are_refused() {
        let with = |loggers: Vec<LoggerKind>| LoggingSection { loggers, ..Default::default() };
        assert_eq!(with(vec![LoggerKind::Jsonl, LoggerKind::Csv, LoggerKind::Tensorboard]).validate(), Ok(()));
        assert!(with(vec![LoggerKind::Csv]).validate().unwrap_err().message.contains("must include \"jsonl\""));
        let twice = with(vec![LoggerKind::Jsonl, LoggerKind::Csv, LoggerKind::Csv]);
        assert!(twice.validate().unwrap_err().message.contains("twice"));
        let peak =
            |peak_flops, throughput_monitor| LoggingSection { peak_flops, throughput_monitor, ..Default::default() };
        assert!(peak(Some(-1.0), true).validate().unwrap_err().message.contains("positive"));
        assert!(peak(Some(1e12), false).validate().unwrap_err().message.contains("throughput_monitor"));
        assert_eq!(peak(Some(1e12), true).validate(), Ok(()));
    }
}
