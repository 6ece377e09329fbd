//! Lightning's `LearningRateMonitor`: the learning rate under Lightning's name for one AdamW optimizer,
//! `lr-AdamW`, in every training record.

use serde_json::{Map, Value};

use super::Callback;
use crate::error::Result;

pub const LR_METRIC: &str = "lr-AdamW";

/// Adds `lr-AdamW` (the rate of the step just logged) to each training record.
#[derive(Debug, Clone, Default)]
pub struct LearningRateMonitor;

impl Callback for LearningRateMonitor {
    fn name(&self) -> &'static str {
        "learning_rate_monitor"
    }

    fn metric_names(&self) -> Vec<&'static str> {
        vec![LR_METRIC]
    }

    fn on_log(&mut self, record: &mut Map<String, Value>) -> Result<()> {
        if let Some(lr) = record.get("lr").cloned() {
            record.insert(LR_METRIC.into(), lr);
        }
        Ok(())
    }
}
