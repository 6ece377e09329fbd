//! `[reward]`: TRL's `RewardConfig` names and defaults.

use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};

/// The `[reward]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSection {
    /// Pairs with a sequence longer than this are dropped.
    pub max_length: usize,
    /// Weight of the term pulling the rewards towards 0 (mean of (r_c + r_r)²); off when absent.
    pub center_rewards_coefficient: Option<f64>,
}

impl Default for RewardSection {
    fn default() -> Self {
        Self { max_length: 1024, center_rewards_coefficient: None }
    }
}

impl ConfigSection for RewardSection {
    const NAME: &'static str = "reward";

    fn validate(&self) -> Result<(), InvalidKey> {
        if self.max_length < 2 {
            return Err(InvalidKey::new("max_length", "must be at least 2 tokens"));
        }
        if let Some(c) = self.center_rewards_coefficient
            && !(c >= 0.0 && c.is_finite())
        {
            return Err(InvalidKey::new("center_rewards_coefficient", format!("must be a number ≥ 0, got {c}")));
        }
        Ok(())
    }
}
