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

/// The `[logging]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    pub loggers: Vec<LoggerKind>,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self { loggers: vec![LoggerKind::Jsonl] }
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_is_required_and_duplicates_are_refused() {
        let ok = LoggingSection { loggers: vec![LoggerKind::Jsonl, LoggerKind::Csv, LoggerKind::Tensorboard] };
        assert_eq!(ok.validate(), Ok(()));
        let no_jsonl = LoggingSection { loggers: vec![LoggerKind::Csv] };
        assert!(no_jsonl.validate().unwrap_err().message.contains("must include \"jsonl\""));
        let twice = LoggingSection { loggers: vec![LoggerKind::Jsonl, LoggerKind::Csv, LoggerKind::Csv] };
        assert!(twice.validate().unwrap_err().message.contains("twice"));
    }
}
