//! `[trainer]`: the Lightning `Trainer` arguments a run config sets beyond `[training]` (which keeps
//! transformers' names for what both have: `max_steps`, `eval_steps`, `logging_steps`...).

use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};

use crate::trainer::Strategy;

/// Lightning's `fast_dev_run`: `true` (one batch) or a number of batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FastDevRun {
    On(bool),
    Batches(u64),
}

impl FastDevRun {
    /// Steps (and validation batches) it runs; 0 when off.
    pub fn batches(self) -> u64 {
        match self {
            Self::On(on) => u64::from(on),
            Self::Batches(n) => n,
        }
    }
}

/// The `[trainer]` section, with Lightning's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerSection {
    /// Also end the run after this many epochs of the training data.
    pub max_epochs: Option<u64>,
    /// At most this many training batches (micro-batches) an epoch.
    pub limit_train_batches: Option<u64>,
    pub fast_dev_run: FastDevRun,
    /// Validation batches run before the first step (not logged).
    pub num_sanity_val_steps: usize,
    pub strategy: Strategy,
}

impl Default for TrainerSection {
    fn default() -> Self {
        Self {
            max_epochs: None,
            limit_train_batches: None,
            fast_dev_run: FastDevRun::On(false),
            num_sanity_val_steps: 2,
            strategy: Strategy::Auto,
        }
    }
}

impl ConfigSection for TrainerSection {
    const NAME: &'static str = "trainer";

    fn validate(&self) -> Result<(), InvalidKey> {
        if self.max_epochs == Some(0) {
            return Err(InvalidKey::new("max_epochs", "must be at least 1"));
        }
        if self.limit_train_batches == Some(0) {
            return Err(InvalidKey::new("limit_train_batches", "must be at least 1 (leave it out for whole epochs)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_dev_run_takes_a_flag_or_a_count_and_zero_limits_are_refused() {
        let parse = |text: &str| toml::from_str::<TrainerSection>(text).unwrap();
        assert_eq!(parse("fast_dev_run = true").fast_dev_run.batches(), 1);
        assert_eq!(parse("fast_dev_run = 3").fast_dev_run.batches(), 3);
        assert_eq!(parse("").fast_dev_run.batches(), 0);
        assert_eq!(parse("strategy = \"single_device\"").strategy, Strategy::SingleDevice);
        assert!(parse("max_epochs = 0").validate().is_err());
        assert!(parse("limit_train_batches = 0").validate().is_err());
    }
}
