//! `[orpo]`: TRL's `ORPOConfig` names and defaults.

use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};

/// The `[orpo]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrpoSection {
    /// The odds-ratio term's weight (the paper's λ).
    pub beta: f64,
    /// Tokens of prompt + answer kept: answers are cut to fit, pairs whose prompt alone fills it are dropped.
    pub max_length: usize,
}

impl Default for OrpoSection {
    fn default() -> Self {
        Self { beta: 0.1, max_length: 1024 }
    }
}

impl ConfigSection for OrpoSection {
    const NAME: &'static str = "orpo";

    fn validate(&self) -> Result<(), InvalidKey> {
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(InvalidKey::new("beta", format!("must be a number ≥ 0, got {}", self.beta)));
        }
        if self.max_length < 2 {
            return Err(InvalidKey::new("max_length", "must be at least 2 tokens"));
        }
        Ok(())
    }
}
