//! `[lora]`: the adapter a run trains, in llmtrain's run-config names (PEFT's `LoraConfig` with `alpha` for
//! `lora_alpha`, `dropout` for `lora_dropout`, plus LoRA+'s ratio). llmtrain-fastlora owns the section.

use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};

use crate::config::TargetModules;

/// A LoRA adapter to train, in PEFT's terms (`LoraConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    #[serde(default = "lora_rank")]
    pub r: usize,
    /// PEFT's `lora_alpha`; scaling = alpha / r (rsLoRA: alpha / √r).
    #[serde(default = "lora_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// Module names matched at the end of each module's name (`["q_proj", "v_proj"]`), a regex matched against
    /// the whole name, or `"all-linear"`.
    #[serde(default = "all_linear")]
    pub target_modules: TargetModules,
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    /// LoRA+: B's learning rate is the run's times this ratio (e.g. 16).
    #[serde(default)]
    pub loraplus_lr_ratio: Option<f64>,
}

fn lora_rank() -> usize {
    8
}
fn lora_alpha() -> f64 {
    16.0
}
fn all_linear() -> TargetModules {
    TargetModules::Pattern("all-linear".into())
}

impl ConfigSection for LoraSection {
    const NAME: &'static str = "lora";

    fn validate(&self) -> Result<(), InvalidKey> {
        if self.r == 0 {
            return Err(InvalidKey::new("r", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(InvalidKey::new("dropout", "must be in [0, 1)"));
        }
        if self.loraplus_lr_ratio.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return Err(InvalidKey::new("loraplus_lr_ratio", "must be positive"));
        }
        Ok(())
    }
}
