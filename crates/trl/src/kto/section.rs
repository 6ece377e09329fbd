//! `[kto]`: TRL's `KTOConfig` names and defaults.

use std::path::PathBuf;

use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};

use super::loss::KtoLossType;

/// The `[kto]` section. KTOTrainer reads its data in order (its KL pairs are built from consecutive rows), so
/// `[data] shuffle` is ignored under `[kto]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KtoSection {
    pub beta: f64,
    /// `kto`, or `apo_zero_unpaired` (no KL term).
    pub loss_type: KtoLossType,
    /// Weights of the desirable and undesirable rows' losses.
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    /// Tokens of prompt + completion kept; rows whose prompt alone reaches it are dropped.
    pub max_length: usize,
    /// Another HF checkpoint as the reference; default as for `[dpo]`.
    pub ref_model: Option<PathBuf>,
    pub precompute_ref_log_probs: bool,
}

impl Default for KtoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: KtoLossType::Kto,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            max_length: 1024,
            ref_model: None,
            precompute_ref_log_probs: false,
        }
    }
}

impl ConfigSection for KtoSection {
    const NAME: &'static str = "kto";

    fn validate(&self) -> Result<(), InvalidKey> {
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(InvalidKey::new("beta", format!("must be a positive number, got {}", self.beta)));
        }
        for (key, weight) in
            [("desirable_weight", self.desirable_weight), ("undesirable_weight", self.undesirable_weight)]
        {
            if !(weight >= 0.0 && weight.is_finite()) {
                return Err(InvalidKey::new(key, format!("must be a number ≥ 0, got {weight}")));
            }
        }
        if self.max_length < 2 {
            return Err(InvalidKey::new("max_length", "must be at least 2 tokens"));
        }
        Ok(())
    }
}
